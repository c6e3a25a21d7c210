"""scripts/check_lockfiles.py (in make lint) passes the real locks and names each kind of drift.

Each case breaks a temporary copy of pyproject.toml and the locks, runs the
script as make lint does, and expects exactly one problem, worded exactly.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_lockfiles.py"
LOCK = "requirements.lock"
BUILD_LOCK = "requirements-build.lock"


@pytest.fixture
def copies(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copy(ROOT / "app" / LOCK, tmp_path / LOCK)
    shutil.copy(ROOT / "app" / BUILD_LOCK, tmp_path / BUILD_LOCK)
    return tmp_path


def run(where: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--pyproject", str(where / "pyproject.toml"),
         str(where / LOCK), str(where / BUILD_LOCK)],
        capture_output=True, text=True, timeout=60, check=False)


def entry(text: str, name: str) -> re.Match[str]:
    """The lock's entry for `name`: its pin line and the --hash lines after it."""
    found = re.search(rf"^{re.escape(name)}==\S+(?: \\\n {{4}}--hash=\S+)*\n", text, re.MULTILINE)
    assert found, f"{name} is not in the lock"
    return found


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def edit(path: Path, name: str, replacement: str) -> int:
    """Replace `name`'s whole entry; returns the line it started on."""
    text = path.read_text()
    found = entry(text, name)
    path.write_text(text[:found.start()] + replacement + text[found.end():])
    return line_of(text, found.start())


def test_the_real_locks_pass() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                            timeout=60, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("check_lockfiles: app/requirements.lock, app/requirements-build.lock: "
                             "hash-pinned and matching pyproject.toml\n")


def test_unchanged_copies_pass(copies: Path) -> None:
    result = run(copies)
    assert (result.returncode, result.stderr) == (0, "")


def test_a_pin_without_a_hash_fails(copies: Path) -> None:
    line = edit(copies / LOCK, "flask", "flask==3.1.3\n")
    result = run(copies)
    assert result.returncode == 1
    assert result.stderr == f"check_lockfiles: {copies / LOCK}:{line}: flask has no --hash\n"


def test_a_requirement_not_pinned_with_double_equals_fails(copies: Path) -> None:
    text = (copies / LOCK).read_text()
    old = entry(text, "redis")[0]
    line = edit(copies / LOCK, "redis", old.replace("redis==8.1.0", "redis>=8.1.0", 1))
    result = run(copies)
    assert result.returncode == 1
    assert result.stderr == (f"check_lockfiles: {copies / LOCK}:{line}: "
                             "redis is not pinned to one version with ==: redis>=8.1.0\n")


def test_a_version_outside_the_specifier_fails(copies: Path) -> None:
    text = (copies / LOCK).read_text()
    old = entry(text, "flask")[0]
    line = edit(copies / LOCK, "flask", old.replace("flask==3.1.3", "flask==3.2.0", 1))
    result = run(copies)
    assert result.returncode == 1
    assert result.stderr == (f"check_lockfiles: {copies / LOCK}:{line}: flask==3.2.0 is outside "
                             "pyproject.toml [project] dependencies: flask>=3.1,<3.2\n")


def test_a_dependency_missing_from_the_lock_fails(copies: Path) -> None:
    edit(copies / LOCK, "stripe", "")
    result = run(copies)
    assert result.returncode == 1
    assert result.stderr == (f"check_lockfiles: {copies / LOCK}: stripe is missing; "
                             "pyproject.toml [project] dependencies lists stripe>=16,<17\n")


def test_a_new_dependency_in_pyproject_needs_a_new_lock(copies: Path) -> None:
    """Names are compared normalised: Flask_WTF in pyproject.toml is the lock's flask-wtf."""
    pyproject = copies / "pyproject.toml"
    text = pyproject.read_text()
    assert '  "flask-wtf>=1.2,<1.4",\n' in text
    pyproject.write_text(text.replace('  "flask-wtf>=1.2,<1.4",\n',
                                      '  "Flask_WTF>=1.2,<1.4",\n  "attrs>=23",\n', 1))
    result = run(copies)
    assert result.returncode == 1
    assert result.stderr == (f"check_lockfiles: {copies / LOCK}: attrs is missing; "
                             "pyproject.toml [project] dependencies lists attrs>=23\n")


def test_the_build_lock_is_checked_against_build_system_requires(copies: Path) -> None:
    """Its header says --only-build-deps: [build-system] requires is what it must hold."""
    edit(copies / BUILD_LOCK, "wheel", "")
    result = run(copies)
    assert result.returncode == 1
    assert result.stderr == (f"check_lockfiles: {copies / BUILD_LOCK}: wheel is missing; "
                             "pyproject.toml [build-system] requires lists wheel\n")
