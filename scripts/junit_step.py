"""Run one command as a named check and record its outcome as a JUnit test case.

`make test` runs lint, unit tests and Molecule scenarios as separate steps and
keeps going after a failure, so the closing summary covers everything that ran.
Usage: python scripts/junit_step.py JUNIT_DIR NAME -- COMMAND [ARG ...]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    junit_dir, name, command = Path(argv[0]), argv[1], argv[3:]
    junit_dir.mkdir(parents=True, exist_ok=True)
    print(f"==> {name}: {' '.join(command)}", flush=True)
    started = time.monotonic()
    returncode = subprocess.call(command)  # noqa: S603 - the command is ours, from the Makefile
    elapsed = time.monotonic() - started
    failure = ""
    if returncode != 0:
        failure = f'<failure message={quoteattr(f"exit status {returncode}")}/>'
    xml = (
        f'<testsuite name="steps" tests="1" failures="{int(returncode != 0)}">'
        f'<testcase classname="make.test" name={quoteattr(name)} time="{elapsed:.1f}">'
        f"{failure}</testcase></testsuite>\n"
    )
    (junit_dir / f"step-{escape(name).replace('/', '_')}.xml").write_text(xml)
    verdict = "passed" if returncode == 0 else f"FAILED (exit {returncode})"
    print(f"<== {name}: {verdict} in {elapsed:.0f}s", flush=True)
    return returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
