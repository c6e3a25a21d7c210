"""The monitoring role's alert rules: every rule is valid, every alert has a
`promtool test rules` unit test that sees it fire, the unit tests pass, and
they are strict enough that changing a rule's threshold, `for` or expression
makes them fail (mutation tests on a temporary copy).

Rules: roles/monitoring/files/alerts/<name>.yml; their unit tests:
tests/collection/alerts/<name>.test.yml. promtool comes from Debian's
`prometheus` package (scripts/install-system-deps.sh).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES_DIR = REPO / "roles/monitoring/files/alerts"
TESTS_DIR = Path(__file__).resolve().parent / "alerts"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
TEST_FILES = sorted(TESTS_DIR.glob("*.test.yml"))


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: run scripts/install-system-deps.sh (Debian's prometheus package)"
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alerts_of(rule_file: Path) -> list[str]:
    return [rule["alert"] for group in load(rule_file)["groups"] for rule in group["rules"] if "alert" in rule]


def alerts_seen_firing(test_file: Path) -> set[str]:
    """Alert names some case of the file expects to fire (non-empty exp_alerts)."""
    return {
        case["alertname"]
        for test in load(test_file)["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }


def test_rule_files_and_unit_test_files_pair_up() -> None:
    assert RULE_FILES, f"no rule files in {RULES_DIR}"
    assert {p.stem for p in RULE_FILES} == {p.name.removesuffix(".test.yml") for p in TEST_FILES}


def test_the_role_ships_every_rule_file() -> None:
    shipped = load(REPO / "roles/monitoring/defaults/main.yml")["monitoring_alert_rule_files"]
    assert sorted(shipped) == sorted(p.name for p in RULE_FILES)


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=lambda p: p.name)
def test_rule_file_is_valid(rule_file: Path) -> None:
    result = promtool("check", "rules", str(rule_file), cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=lambda p: p.name)
def test_every_alert_has_a_unit_test_that_sees_it_fire(rule_file: Path) -> None:
    alerts = alerts_of(rule_file)
    assert len(alerts) == len(set(alerts)), f"duplicate alert names in {rule_file.name}"
    test_file = TESTS_DIR / f"{rule_file.stem}.test.yml"
    assert load(test_file)["rule_files"] == [f"../../../roles/monitoring/files/alerts/{rule_file.name}"]
    untested = set(alerts) - alerts_seen_firing(test_file)
    assert not untested, f"{rule_file.name}: no unit test expects these to fire: {sorted(untested)}"


def test_every_alert_has_a_severity_and_a_summary() -> None:
    for rule_file in RULE_FILES:
        for group in load(rule_file)["groups"]:
            for rule in group["rules"]:
                assert rule["labels"]["severity"] in {"none", "warning", "critical"}, rule["alert"]
                assert rule["annotations"]["summary"], rule["alert"]


@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_unit_tests_pass(test_file: Path) -> None:
    result = promtool("test", "rules", test_file.name, cwd=TESTS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# (rule file, alert, text in the rule, its replacement): a weaker threshold, a
# longer `for`, a wrong label or aggregation. Each must make the unit tests fail.
MUTATIONS = [
    ("redis.yml", "RedisMemoryHigh", "> 0.8", "> 0.9"),
    ("availability.yml", "HostDown", "for: 2m", "for: 5m"),
    ("availability.yml", "AppHostDown", "max by (instance)", "min by (instance)"),
    ("postgres.yml", "PostgresReplicationLag", "> 30", "> 60"),
    ("postgres.yml", "PostgresWalArchiveStalled", "> 600", "> 1200"),
    ("backups.yml", "BackupTooOld", "> 3 * 3600", "> 4 * 3600"),
    ("hosts.yml", "DiskFillingUp", "24 * 3600", "12 * 3600"),
    ("app.yml", "AppHighErrorRate", "> 0.05", "> 0.1"),
    ("availability.yml", "CertificateExpiringSoon", "< 20", "< 14"),
    ("availability.yml", "CheckoutUnavailable", "max by (instance)", "min by (instance)"),
    ("backups.yml", "AssetsBackupTooOld", "> 9 * 3600", "> 10 * 3600"),
]


def mutate(rule_file: Path, alert: str, old: str, new: str) -> str:
    """The file's text with `old` replaced by `new` inside the one rule named `alert`."""
    text = rule_file.read_text()
    start = text.index(f"- alert: {alert}\n")
    following = text.find("- alert: ", start + 1)
    end = len(text) if following == -1 else following
    rule = text[start:end]
    assert rule.count(old) == 1, f"{alert}: {old!r} must occur once in the rule"
    return text[:start] + rule.replace(old, new) + text[end:]


@pytest.mark.parametrize(("file_name", "alert", "old", "new"), MUTATIONS, ids=[m[1] for m in MUTATIONS])
def test_a_mutated_rule_fails_its_unit_test(tmp_path: Path, file_name: str, alert: str, old: str, new: str) -> None:
    # The same layout as the repository, so the test files' relative rule_files paths hold.
    rules = tmp_path / "roles/monitoring/files/alerts"
    tests = tmp_path / "tests/collection/alerts"
    shutil.copytree(RULES_DIR, rules)
    shutil.copytree(TESTS_DIR, tests)
    test_name = f"{Path(file_name).stem}.test.yml"

    unchanged = promtool("test", "rules", test_name, cwd=tests)
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr

    (rules / file_name).write_text(mutate(RULES_DIR / file_name, alert, old, new))
    assert promtool("check", "rules", str(rules / file_name), cwd=tmp_path).returncode == 0, "the mutant must be valid"
    mutated = promtool("test", "rules", test_name, cwd=tests)
    assert mutated.returncode != 0, f"{alert} with {new!r} instead of {old!r} still passes its unit tests"
    assert f"alertname: {alert}" in mutated.stdout + mutated.stderr
