#!/usr/bin/env python3
"""Check the app's lock files against pyproject.toml (make lint).

The image installs exactly what the locks name (pip --require-hashes, from a
wheelhouse), so a lock that drifts from pyproject.toml, or that names a
package without a hash, ships something nobody reviewed. For each lock:

- every requirement is pinned with ``==`` to one version and carries at least
  one ``--hash``;
- every requirement pyproject.toml declares for what the lock covers is in it,
  at a version its specifier allows. What a lock covers is read from the
  pip-compile command in its header: ``--only-build-deps`` means
  ``[build-system] requires``, otherwise ``[project] dependencies`` (plus the
  optional groups named by ``--extra``, or all of them with ``--all-extras``).

Names are compared normalised (PEP 503). Each problem is printed on its own
line naming the lock and the package; the exit status is 1 if there is any.

    scripts/check_lockfiles.py [--pyproject pyproject.toml] [LOCK ...]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LOCKS = ("app/requirements.lock", "app/requirements-build.lock")


@dataclass
class Pin:
    """One requirement of a lock file, its continuation lines joined."""

    line: int
    name: str = ""
    version: Version | None = None
    hashes: list[str] = field(default_factory=list)


@dataclass
class Lock:
    command: list[str]
    pins: list[Pin]


def read_lock(path: Path, shown: str) -> tuple[Lock, list[str]]:
    """The lock's pins and its pip-compile command; problems with single lines."""
    problems: list[str] = []
    command: list[str] = []
    entries: list[tuple[int, str]] = []  # (first line, the entry with its continuations joined)
    joining = False
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        text = raw.strip()
        if not joining and text.startswith("#"):
            said = text.lstrip("#").strip()
            if said.startswith("pip-compile ") and not command:
                command = shlex.split(said)
            continue
        text = text.split(" #", 1)[0].strip()
        if not joining and not text:
            continue
        part = text.rstrip("\\").strip()
        if joining:
            entries[-1] = (entries[-1][0], f"{entries[-1][1]} {part}")
        else:
            entries.append((number, part))
        joining = text.endswith("\\")

    pins: list[Pin] = []
    for number, text in entries:
        words = text.split()
        if not words:
            continue
        if words[0] in ("-e", "--editable"):
            problems.append(f"{shown}:{number}: {text!r} is not pinned with == and hashed (editable)")
            continue
        if words[0].startswith("-"):
            continue  # a global option such as --index-url
        pin = Pin(line=number)
        pin.hashes = [w.split("=", 1)[1] for w in words[1:] if w.startswith("--hash=")]
        try:
            requirement = Requirement(words[0])
        except InvalidRequirement as error:
            problems.append(f"{shown}:{number}: cannot read {words[0]!r}: {error}")
            continue
        pin.name = canonicalize_name(requirement.name)
        specs = list(requirement.specifier)
        if requirement.url or len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            problems.append(f"{shown}:{number}: {pin.name} is not pinned to one version with ==: {words[0]}")
        else:
            try:
                pin.version = Version(specs[0].version)
            except InvalidVersion:
                problems.append(f"{shown}:{number}: {pin.name} has an invalid version: {words[0]}")
        if not pin.hashes:
            problems.append(f"{shown}:{number}: {pin.name} has no --hash")
        pins.append(pin)
    return Lock(command=command, pins=pins), problems


def declared(pyproject: dict, command: list[str]) -> tuple[str, list[str]]:
    """What the lock was compiled from: a label for messages and the requirement strings."""
    if "--only-build-deps" in command:
        return "[build-system] requires", list(pyproject.get("build-system", {}).get("requires", []))
    project = pyproject.get("project", {})
    requirements = list(project.get("dependencies", []))
    label = "[project] dependencies"
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    extras = list(optional) if "--all-extras" in command else [
        value for option, value in zip(command, command[1:], strict=False) if option == "--extra"
    ] + [word.split("=", 1)[1] for word in command if word.startswith("--extra=")]
    for extra in extras:
        requirements += optional.get(extra, [])
        label += f" + [project.optional-dependencies] {extra}"
    return label, requirements


def check(pyproject_path: Path, lock_paths: list[Path], shown: list[str]) -> list[str]:
    pyproject = tomllib.loads(pyproject_path.read_text())
    problems: list[str] = []
    for path, name in zip(lock_paths, shown, strict=True):
        if not path.is_file():
            problems.append(f"{name}: no such lock file")
            continue
        lock, line_problems = read_lock(path, name)
        problems += line_problems
        if not lock.command:
            problems.append(f"{name}: no pip-compile command in its header, so what it covers is unknown")
            continue
        label, wanted = declared(pyproject, lock.command)
        pinned = {pin.name: pin for pin in lock.pins}
        for text in wanted:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate():
                continue
            key = canonicalize_name(requirement.name)
            pin = pinned.get(key)
            if pin is None:
                problems.append(f"{name}: {key} is missing; {pyproject_path.name} {label} lists {text}")
            elif pin.version is not None and not requirement.specifier.contains(pin.version, prereleases=True):
                problems.append(f"{name}:{pin.line}: {key}=={pin.version} is outside "
                                f"{pyproject_path.name} {label}: {text}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", default=str(ROOT / "pyproject.toml"))
    parser.add_argument("locks", nargs="*", help=f"lock files (default: {' '.join(DEFAULT_LOCKS)})")
    args = parser.parse_args(argv)
    shown = args.locks or list(DEFAULT_LOCKS)
    paths = [Path(p) if args.locks else ROOT / p for p in shown]
    problems = check(Path(args.pyproject), paths, shown)
    for problem in problems:
        print(f"check_lockfiles: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"check_lockfiles: {', '.join(shown)}: hash-pinned and matching pyproject.toml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
