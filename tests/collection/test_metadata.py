"""The collection's metadata agrees with itself and with the checker's rules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import check_argument_specs  # noqa: E402


def test_galaxy_dependencies_match_requirements() -> None:
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    requirements = yaml.safe_load((ROOT / "requirements.yml").read_text())
    assert galaxy["namespace"] == "paydrop" and galaxy["name"] == "stack"
    listed = {c["name"]: c["version"] for c in requirements["collections"]}
    assert listed == galaxy["dependencies"]


def _role(tmp_path: Path, defaults: str, spec: str) -> Path:
    role = tmp_path / "roles" / "demo"
    (role / "defaults").mkdir(parents=True)
    (role / "meta").mkdir()
    (role / "defaults" / "main.yml").write_text(defaults)
    (role / "meta" / "argument_specs.yml").write_text(spec)
    (role / "README.md").write_text("| `demo_port` | 80 | port |\n")
    return role


SPEC = """
argument_specs:
  main:
    short_description: demo
    options:
      demo_port: {type: int, default: 80, description: port}
"""


def test_checker_accepts_matching_role(tmp_path: Path) -> None:
    role = _role(tmp_path, "demo_port: 80\n", SPEC)
    assert check_argument_specs.check_role(role) == []


def test_checker_reports_drift(tmp_path: Path) -> None:
    role = _role(tmp_path, "demo_port: 8080\ndemo_extra: 1\n", SPEC)
    problems = check_argument_specs.check_role(role)
    assert any("demo_extra" in p and "does not list" in p for p in problems)
    assert any("demo_port" in p and "default differs" in p for p in problems)


def test_checker_reports_undocumented_variables(tmp_path: Path) -> None:
    role = _role(tmp_path, "demo_port: 80\n", SPEC)
    (role / "README.md").write_text("# demo\nNo variables listed.\n")
    problems = check_argument_specs.check_role(role)
    assert problems == ["demo: README.md does not document `demo_port` (main entry point)"]


def test_every_role_in_the_tree_passes() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_argument_specs.py")],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
