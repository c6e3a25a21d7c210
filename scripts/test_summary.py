"""Add up every JUnit report `make test` wrote, check nothing is missing, print one closing line.

  python scripts/test_summary.py JUNIT_DIR --expect STEP [STEP ...] [--waivers FILE]

Reports come from scripts/junit_step.py (one `step-NAME.xml` per step: lint,
the collection build, pytest, the test hosts, each Molecule scenario), and
from the tests those steps ran (pytest's `pytest.xml`, testinfra's
`molecule-<scenario>.xml`). A step counts as one test; the tests in its report
count on top.

The run fails, with one line per reason, when
  - an expected step has no record (it never ran, or its wrapper crashed),
  - a step failed (non-zero exit, could not start, killed; pytest's exit 5),
  - a step's report is missing, unreadable, or holds zero tests,
  - any test failed or errored,
  - a test was skipped that no entry of the waiver file allows.
The waiver file (TOML, `[[skip]]` entries with `test` and `reason`) is printed
with every run, so an allowed skip is never silent.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
import tomllib
import xml.etree.ElementTree as ET  # noqa: S405 - parses our own reports
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_WAIVERS = Path(__file__).resolve().parent.parent / "tests" / "allowed-skips.toml"


@dataclass
class Counts:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    skipped_ids: list[str] = field(default_factory=list)
    # Each failed test and the first line of its message: the closing lines are all
    # that a CI log's tail may show, so they name what failed.
    failed_ids: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.skipped


@dataclass
class Waiver:
    test: str
    reason: str
    used: int = 0


def case_id(case: ET.Element) -> str:
    return f"{case.get('classname', '')}::{case.get('name', '')}"


def count(root: ET.Element) -> Counts:
    counts = Counts()
    for case in root.iter("testcase"):
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is not None:
            counts.failed += 1
            message = (problem.get("message") or problem.text or "").strip().splitlines()
            counts.failed_ids.append(f"{case_id(case)}: {message[0][:300] if message else '(no message)'}")
        elif case.find("skipped") is not None:
            counts.skipped += 1
            counts.skipped_ids.append(case_id(case))
        else:
            counts.passed += 1
    return counts


def load_waivers(path: Path) -> list[Waiver]:
    entries = tomllib.loads(path.read_text()).get("skip", [])
    waivers = []
    for number, entry in enumerate(entries, 1):
        test, reason = entry.get("test", ""), entry.get("reason", "")
        if not test.strip() or not reason.strip():
            raise ValueError(f"{path}: entry {number} needs both `test` and a non-empty `reason`")
        waivers.append(Waiver(test, " ".join(reason.split())))
    return waivers


def waived(test: str, waivers: list[Waiver]) -> bool:
    for waiver in waivers:
        if fnmatch.fnmatchcase(test, waiver.test):
            waiver.used += 1
            return True
    return False


def parse(path: Path) -> ET.Element | None:
    try:
        return ET.parse(path).getroot()  # noqa: S314 - our own file
    except (ET.ParseError, OSError):
        return None


def step_record(root: ET.Element) -> tuple[str | None, float, str | None]:
    """(failure message or None, seconds, declared report) of a junit_step record."""
    case = next(root.iter("testcase"))
    failure = case.find("failure")
    if failure is None:
        failure = case.find("error")
    message = None if failure is None else (failure.get("message") or "failed")
    report = None
    for prop in case.iter("property"):
        if prop.get("name") == "report":
            report = prop.get("value")
    return message, float(case.get("time") or 0), report


def summarise(junit_dir: Path, expected: list[str], waivers_file: Path) -> int:
    problems: list[str] = []
    totals = Counts()
    waivers = load_waivers(waivers_file)
    seen_reports: set[str] = set()

    def add(counts: Counts) -> None:
        totals.passed += counts.passed
        totals.failed += counts.failed
        totals.skipped += counts.skipped
        for test in counts.skipped_ids:
            if not waived(test, waivers):
                problems.append(f"skipped and not in {waivers_file.name}: {test}")

    records = {p.name[len("step-"):-len(".xml")]: p for p in junit_dir.glob("step-*.xml")}
    for name in expected + sorted(set(records) - set(expected)):
        if name not in expected:
            problems.append(f"step {name}: ran but is not in the expected steps (add it to TEST_STEPS)")
        if name not in records:
            print(f"  step {name:<34} MISSING")
            problems.append(f"step {name}: no record in {junit_dir}: it never ran, or its wrapper died")
            totals.failed += 1
            continue
        root = parse(records[name])
        if root is None or root.find(".//testcase") is None:
            print(f"  step {name:<34} UNREADABLE")
            problems.append(f"step {name}: its record {records[name].name} is unreadable")
            totals.failed += 1
            continue
        failure, seconds, report = step_record(root)
        verdict = "passed" if failure is None else f"FAILED: {failure}"
        print(f"  step {name:<34} {seconds:>7.0f}s  {verdict}")
        if failure is None:
            totals.passed += 1
        else:
            totals.failed += 1
            problems.append(f"step {name}: {failure}")
        if report is None:
            continue
        seen_reports.add(report)
        report_root = parse(junit_dir / report)
        if report_root is None:
            print(f"    report {report:<32} MISSING")
            problems.append(f"step {name}: its report {report} is missing or unreadable")
            totals.failed += 1
            continue
        counts = count(report_root)
        print(f"    report {report:<32} {counts.passed:>5} passed {counts.failed:>3} failed "
              f"{counts.skipped:>3} skipped")
        for failed in counts.failed_ids:
            print(f"      failed {failed}")
        if counts.total == 0:
            problems.append(f"step {name}: its report {report} holds zero tests")
            totals.failed += 1
        add(counts)

    for other in sorted(junit_dir.glob("*.xml")):
        if other.name.startswith("step-") or other.name in seen_reports:
            continue
        root = parse(other)
        if root is None:
            problems.append(f"report {other.name} is unreadable")
            totals.failed += 1
            continue
        counts = count(root)
        print(f"    report {other.name:<32} {counts.passed:>5} passed {counts.failed:>3} failed "
              f"{counts.skipped:>3} skipped (no step claims it)")
        for failed in counts.failed_ids:
            print(f"      failed {failed}")
        add(counts)

    print(f"Allowed skips ({waivers_file}):" + ("" if waivers else " none"))
    for waiver in waivers:
        print(f"  {waiver.test}  [{waiver.used} skipped]  reason: {waiver.reason}")
    for problem in problems:
        print(f"FAILED {problem}")
    print(f"{totals.passed} passed, {totals.failed} failed, {totals.skipped} skipped")
    return 1 if problems or totals.failed else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("junit_dir", type=Path)
    parser.add_argument("--expect", nargs="+", required=True, metavar="STEP",
                        help="the steps `make test` runs (Makefile: TEST_STEPS)")
    parser.add_argument("--waivers", type=Path, default=DEFAULT_WAIVERS)
    args = parser.parse_args(argv)
    return summarise(args.junit_dir, args.expect, args.waivers)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
