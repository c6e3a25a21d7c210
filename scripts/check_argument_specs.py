"""Fail when a role's meta/argument_specs.yml and defaults/main.yml disagree.

For every role: the `main` entry point's options must list exactly the keys of
defaults/main.yml, and each option that has a default there must declare the
same `default` in the spec when it declares one. Every option of every entry
point must appear (as `name`) in the role's README.md, so operators find each
variable documented.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml


def _load(path: Path) -> Any:
    with path.open() as handle:
        return yaml.safe_load(handle) or {}


def check_role(role: Path) -> list[str]:
    problems: list[str] = []
    defaults_file = role / "defaults" / "main.yml"
    spec_file = role / "meta" / "argument_specs.yml"
    if not spec_file.exists():
        return [f"{role.name}: missing meta/argument_specs.yml"]
    defaults = _load(defaults_file) if defaults_file.exists() else {}
    specs = _load(spec_file).get("argument_specs") or {}
    main = specs.get("main")
    if main is None:
        return [f"{role.name}: argument_specs.yml has no `main` entry point"]
    options = main.get("options") or {}
    for name in sorted(set(defaults) - set(options)):
        problems.append(f"{role.name}: defaults/main.yml sets `{name}` but argument_specs does not list it")
    for name in sorted(set(options) - set(defaults)):
        if options[name].get("required"):
            continue
        problems.append(f"{role.name}: argument_specs lists `{name}` but defaults/main.yml does not set it")
    for name in sorted(set(options) & set(defaults)):
        spec = options[name] or {}
        if "description" not in spec:
            problems.append(f"{role.name}: option `{name}` has no description")
        if "default" in spec and spec["default"] != defaults[name]:
            problems.append(f"{role.name}: option `{name}` default differs from defaults/main.yml")
    readme = role / "README.md"
    readme_text = readme.read_text() if readme.exists() else ""
    if not readme_text:
        problems.append(f"{role.name}: missing README.md")
    for entry, spec in specs.items():
        if not isinstance(spec, dict) or "short_description" not in spec:
            problems.append(f"{role.name}: entry point `{entry}` needs a short_description")
            continue
        for name in spec.get("options") or {}:
            if readme_text and f"`{name}`" not in readme_text:
                problems.append(f"{role.name}: README.md does not document `{name}` ({entry} entry point)")
    return problems


def main(root: str = "roles") -> int:
    roles = sorted(p for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []
    problems = [problem for role in roles for problem in check_role(role)]
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"argument specs: {len(roles)} roles checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
