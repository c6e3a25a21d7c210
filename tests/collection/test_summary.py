"""`make test`'s closing summary cannot lie: each broken step below makes it fail with a line saying which.

The steps are run through the real wrapper (scripts/junit_step.py) and the
real summary (scripts/test_summary.py); the last tests drive `make test`
itself with stand-in steps.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STEP = [sys.executable, str(REPO / "scripts" / "junit_step.py")]
SUMMARY = [sys.executable, str(REPO / "scripts" / "test_summary.py")]
NO_WAIVERS = ""
PASSING_REPORT = (
    '<testsuites><testsuite name="pytest" tests="2">'
    '<testcase classname="test_default" name="test_a[docker://staging1-x]" time="0.1"/>'
    '<testcase classname="test_default" name="test_b[docker://staging1-x]" time="0.1"/>'
    "</testsuite></testsuites>"
)
SKIPPING_REPORT = (
    '<testsuites><testsuite name="pytest" tests="2">'
    '<testcase classname="tests.app.test_x" name="test_ok" time="0.1"/>'
    '<testcase classname="tests.app.test_x" name="test_skipped" time="0.0">'
    '<skipped type="pytest.skip" message="no chromium"/></testcase>'
    "</testsuite></testsuites>"
)
FAILING_REPORT = (
    '<testsuites><testsuite name="pytest" tests="2">'
    '<testcase classname="tests.test_disaster_recovery" name="test_ok" time="0.1"/>'
    '<testcase classname="tests.test_disaster_recovery" name="test_failover" time="9.0">'
    '<failure message="AssertionError: 3 acknowledged payments missing on db2&#10;assert ...">tb</failure>'
    "</testcase></testsuite></testsuites>"
)
EMPTY_REPORT = '<testsuites><testsuite name="pytest" tests="0"/></testsuites>'


def step(junit: Path, name: str, *command: str, report: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [*STEP, str(junit), name, *(["--report", report] if report else []), "--", *command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def summary(junit: Path, *expected: str, waivers: str = NO_WAIVERS) -> subprocess.CompletedProcess[str]:
    waiver_file = junit.parent / "allowed-skips.toml"
    waiver_file.write_text(waivers)
    argv = [*SUMMARY, str(junit), "--waivers", str(waiver_file), "--expect", *expected]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def last_line(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture
def junit(tmp_path: Path) -> Path:
    path = tmp_path / "junit"
    path.mkdir()
    return path


def test_every_step_and_report_present_passes(junit: Path) -> None:
    step(junit, "lint", "true")
    step(junit, "molecule-default", "sh", "-c", f"printf '%s' '{PASSING_REPORT}' > {junit}/molecule-default.xml",
         report="molecule-default.xml")
    done = summary(junit, "lint", "molecule-default")
    assert done.returncode == 0, done.stdout
    assert last_line(done) == "4 passed, 0 failed, 0 skipped"
    # Per-step times are printed.
    assert any(line.split()[:2] == ["step", "lint"] and line.split()[2].endswith("s")
               for line in done.stdout.splitlines())


def test_a_failed_test_is_named_with_its_message(junit: Path) -> None:
    """A CI log may show only the tail: the summary names each failed test, first line of its message."""
    step(junit, "molecule-production", "sh", "-c",
         f"printf '%s' '{FAILING_REPORT}' > {junit}/molecule-production.xml; exit 1", report="molecule-production.xml")
    done = summary(junit, "molecule-production")
    assert done.returncode == 1
    assert ("      failed tests.test_disaster_recovery::test_failover: "
            "AssertionError: 3 acknowledged payments missing on db2") in done.stdout.splitlines()
    assert "test_ok" not in done.stdout
    assert last_line(done) == "1 passed, 2 failed, 0 skipped"


def test_a_missing_step_fails(junit: Path) -> None:
    step(junit, "lint", "true")
    done = summary(junit, "lint", "molecule-default")
    assert done.returncode == 1
    assert "FAILED step molecule-default: no record in" in done.stdout
    assert last_line(done) == "1 passed, 1 failed, 0 skipped"


def test_a_step_whose_command_cannot_start_fails(junit: Path) -> None:
    ran = step(junit, "test-hosts", str(junit / "no-such-command"))
    assert ran.returncode != 0
    not_executable = junit / "not-executable.sh"
    not_executable.write_text("#!/bin/sh\nexit 0\n")
    step(junit, "lint", str(not_executable))
    done = summary(junit, "lint", "test-hosts")
    assert done.returncode == 1
    assert "FAILED step test-hosts: command could not start: No such file or directory" in done.stdout
    assert "FAILED step lint: command could not start: Permission denied" in done.stdout
    assert last_line(done) == "0 passed, 2 failed, 0 skipped"


def test_a_command_killed_by_a_signal_fails(junit: Path) -> None:
    step(junit, "lint", "sh", "-c", "kill -KILL $$")
    done = summary(junit, "lint")
    assert done.returncode == 1
    assert "FAILED step lint: killed by signal SIGKILL" in done.stdout


@pytest.mark.parametrize(("signum", "expected"), [
    (signal.SIGTERM, "stopped by signal SIGTERM before the command ended"),
    (signal.SIGKILL, "did not finish: the step's wrapper was stopped before the command ended"),
])
def test_a_killed_wrapper_leaves_a_failure_not_nothing(junit: Path, signum: int, expected: str) -> None:
    marker = junit.parent / "started"
    argv = [*STEP, str(junit), "molecule-default", "--", "sh", "-c", f"touch {marker}; exec sleep 30"]
    wrapper = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)  # noqa: S603
    deadline = time.monotonic() + 20
    while not marker.exists():
        assert time.monotonic() < deadline, "the step's command never started"
        time.sleep(0.05)
    try:
        wrapper.send_signal(signum)
        wrapper.wait(timeout=40)
    finally:
        # The command itself (`sleep 30`), orphaned when the wrapper got SIGKILL.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(wrapper.pid, signal.SIGKILL)
    done = summary(junit, "molecule-default")
    assert done.returncode == 1
    assert f"FAILED step molecule-default: {expected}" in done.stdout


def test_a_scenario_whose_verifier_ran_zero_tests_fails(junit: Path) -> None:
    step(junit, "molecule-default", "sh", "-c", f"printf '%s' '{EMPTY_REPORT}' > {junit}/molecule-default.xml",
         report="molecule-default.xml")
    done = summary(junit, "molecule-default")
    assert done.returncode == 1
    assert "FAILED step molecule-default: its report molecule-default.xml holds zero tests" in done.stdout


def test_a_scenario_without_a_report_fails(junit: Path) -> None:
    step(junit, "molecule-default", "true", report="molecule-default.xml")
    done = summary(junit, "molecule-default")
    assert done.returncode == 1
    assert "FAILED step molecule-default: its report molecule-default.xml is missing or unreadable" in done.stdout


def test_an_unlisted_skip_fails(junit: Path) -> None:
    step(junit, "pytest", "sh", "-c", f"printf '%s' '{SKIPPING_REPORT}' > {junit}/pytest.xml", report="pytest.xml")
    done = summary(junit, "pytest")
    assert done.returncode == 1
    assert "FAILED skipped and not in allowed-skips.toml: tests.app.test_x::test_skipped" in done.stdout
    assert last_line(done) == "2 passed, 0 failed, 1 skipped"


def test_a_listed_skip_passes_and_is_printed_with_its_reason(junit: Path) -> None:
    step(junit, "pytest", "sh", "-c", f"printf '%s' '{SKIPPING_REPORT}' > {junit}/pytest.xml", report="pytest.xml")
    waivers = '[[skip]]\ntest = "tests.app.test_x::test_skip*"\nreason = "no browser on this machine"\n'
    done = summary(junit, "pytest", waivers=waivers)
    assert done.returncode == 0, done.stdout
    assert "tests.app.test_x::test_skip*  [1 skipped]  reason: no browser on this machine" in done.stdout


def test_a_waiver_without_a_reason_is_refused(junit: Path) -> None:
    step(junit, "lint", "true")
    done = summary(junit, "lint", waivers='[[skip]]\ntest = "x::y"\nreason = " "\n')
    assert done.returncode != 0
    assert "needs both `test` and a non-empty `reason`" in done.stderr


def test_pytest_collecting_nothing_fails(junit: Path, tmp_path: Path) -> None:
    empty = tmp_path / "no-tests"
    empty.mkdir()
    ran = step(junit, "pytest", sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(empty),
               f"--junitxml={junit}/pytest.xml", report="pytest.xml")
    assert ran.returncode != 0
    done = summary(junit, "pytest")
    assert done.returncode == 1
    assert "FAILED step pytest: no tests were collected (pytest exit status 5)" in done.stdout
    assert "FAILED step pytest: its report pytest.xml holds zero tests" in done.stdout


def test_an_empty_host_group_is_a_collection_error(tmp_path: Path) -> None:
    """What a `testinfra_hosts = [...get_hosts("lb")]` module does when the group is empty."""
    module = tmp_path / "test_empty_group.py"
    module.write_text(
        "import pytest\n\n"
        "@pytest.mark.parametrize('host', [])\n"
        "def test_something(host):\n    pass\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c", str(REPO / "pyproject.toml"),
         "--rootdir", str(tmp_path), str(module)],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stdout
    assert "Empty parameter set in 'test_something'" in done.stdout


def make_test(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    """`make test` with stand-in steps, its reports in tmp_path (never the checkout's build/)."""
    argv = ["make", "--no-print-directory", "-C", str(REPO), "-o", ".venv/.installed", "test",
            f"JUNIT={tmp_path / 'junit'}", f"SKIP_WAIVERS={tmp_path / 'allowed-skips.toml'}", *overrides]
    (tmp_path / "allowed-skips.toml").write_text("")
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_make_test_fails_on_a_step_that_cannot_start_and_one_left_undefined(tmp_path: Path) -> None:
    done = make_test(tmp_path, "TEST_STEPS=fine broken undefined", "step.fine=true",
                     "step.broken=/nonexistent/command")
    assert done.returncode != 0
    assert "FAILED step broken: command could not start: No such file or directory" in done.stdout
    assert "FAILED step undefined: no record in" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "1 passed, 2 failed, 0 skipped"


def test_make_test_passes_when_every_step_passes(tmp_path: Path) -> None:
    done = make_test(tmp_path, "TEST_STEPS=one two", "step.one=true", "step.two=true")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == "2 passed, 0 failed, 0 skipped"
