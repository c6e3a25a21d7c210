"""Add up every JUnit report `make test` wrote and print one closing line.

Reports come from pytest (unit, app and browser tests), from testinfra inside
Molecule's verify step, and from scripts/junit_step.py (lint, each Molecule
scenario). Exits non-zero when anything failed or nothing ran at all.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET  # noqa: S405 - parses our own reports
from pathlib import Path


def count(report: Path) -> tuple[int, int, int]:
    passed = failed = skipped = 0
    root = ET.parse(report).getroot()  # noqa: S314 - our own file
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
        elif case.find("skipped") is not None:
            skipped += 1
        else:
            passed += 1
    return passed, failed, skipped


def main(junit_dir: str) -> int:
    totals = [0, 0, 0]
    reports = sorted(Path(junit_dir).glob("*.xml"))
    for report in reports:
        p, f, s = count(report)
        print(f"  {report.stem:<40} {p:>4} passed {f:>3} failed {s:>3} skipped")
        totals = [totals[0] + p, totals[1] + f, totals[2] + s]
    passed, failed, skipped = totals
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    if not reports or passed + failed == 0:
        print("no test ran", file=sys.stderr)
        return 1
    if not (Path(junit_dir) / "pytest.xml").exists():
        # pytest writes its report even when tests fail; no report means it
        # crashed (e.g. a conftest that does not import): that is a failure.
        print("pytest wrote no report (build/junit/pytest.xml): it did not run to the end", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "build/junit"))
