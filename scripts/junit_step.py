"""Run one command as a named step of `make test` and record its outcome as a JUnit test case.

`make test` runs lint, the collection build, pytest, the test hosts and each
Molecule scenario as separate steps and keeps going after a failure, so the
closing summary (scripts/test_summary.py) covers everything that ran.

Usage: python scripts/junit_step.py JUNIT_DIR NAME [--report FILE] -- COMMAND [ARG ...]

  --report FILE  the step's own JUnit report (pytest's, testinfra's), relative
                 to JUNIT_DIR: the summary fails the step when that report is
                 missing or holds no test at all.

The step's record (JUNIT_DIR/step-NAME.xml) is written before the command
starts, saying the step did not finish, and replaced when it ends: a wrapper
that is killed leaves a failure behind, never nothing. A command that cannot
start (missing, not executable) or dies from a signal is a failure with a
message that says so; pytest's exit status 5 (nothing collected) is named.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from xml.sax.saxutils import quoteattr

# Exit statuses whose meaning the summary line should spell out.
KNOWN_EXITS = {5: "no tests were collected (pytest exit status 5)"}


def record_path(junit_dir: Path, name: str) -> Path:
    return junit_dir / f"step-{name.replace('/', '_')}.xml"


def write_record(path: Path, name: str, seconds: float, failure: str | None, report: str | None) -> None:
    properties = ""
    if report:
        properties = f'<properties><property name="report" value={quoteattr(report)}/></properties>'
    verdict = f"<failure message={quoteattr(failure)}/>" if failure is not None else ""
    xml = (
        f'<testsuite name="steps" tests="1" failures="{int(failure is not None)}">'
        f'<testcase classname="make.test" name={quoteattr(name)} time="{seconds:.1f}">'
        f"{properties}{verdict}</testcase></testsuite>\n"
    )
    # Write then rename: a reader never sees half a record.
    partial = path.with_suffix(".xml.partial")
    partial.write_text(xml)
    partial.replace(path)


def failure_of(returncode: int) -> str | None:
    if returncode == 0:
        return None
    if returncode < 0:
        return f"killed by signal {signal.Signals(-returncode).name}"
    return KNOWN_EXITS.get(returncode, f"exit status {returncode}")


def parse(argv: list[str]) -> tuple[Path, str, str | None, list[str]] | None:
    if "--" not in argv:
        return None
    split = argv.index("--")
    head, command = argv[:split], argv[split + 1:]
    report = None
    if len(head) == 4 and head[2] == "--report":
        report = head[3]
        head = head[:2]
    if len(head) != 2 or not command:
        return None
    return Path(head[0]), head[1], report, command


def main(argv: list[str]) -> int:
    parsed = parse(argv)
    if parsed is None:
        print(__doc__, file=sys.stderr)
        return 2
    junit_dir, name, report, command = parsed
    junit_dir.mkdir(parents=True, exist_ok=True)
    path = record_path(junit_dir, name)
    started = time.monotonic()
    write_record(path, name, 0.0, "did not finish: the step's wrapper was stopped before the command ended", report)
    print(f"==> {name}: {' '.join(command)}", flush=True)

    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, _frame: FrameType | None) -> None:
        # Make/CI stopping the wrapper: stop the command too and record why.
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
        failure = f"stopped by signal {signal.Signals(signum).name} before the command ended"
        write_record(path, name, time.monotonic() - started, failure, report)
        print(f"<== {name}: FAILED ({failure})", flush=True)
        sys.exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)

    try:
        child = subprocess.Popen(command)  # noqa: S603 - the command is ours, from the Makefile
        failure = failure_of(child.wait())
    except OSError as error:
        failure = f"command could not start: {error.strerror}: {command[0]}"
    elapsed = time.monotonic() - started
    write_record(path, name, elapsed, failure, report)
    verdict = "passed" if failure is None else f"FAILED ({failure})"
    print(f"<== {name}: {verdict} in {elapsed:.0f}s", flush=True)
    return 0 if failure is None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
