"""What a failed playbook run's check says first: CI's summary keeps only the start of a
test's message, and the end of a run's output rarely names the task that failed."""

from __future__ import annotations

import subprocess

from tests.support import fleet, scenario

RUN = """PLAY [Restore the primary] ***
TASK [Stop the old one] ***
fatal: [db1]: FAILED! => {"changed": false, "msg": "not there"}
...ignoring
TASK [Start PostgreSQL] ***
fatal: [db1]: FAILED! => {"changed": false, "msg": "Unable to start service postgresql@15-main"}
PLAY RECAP ***
db1 : ok=3 changed=1 unreachable=0 failed=1 skipped=0 rescued=0 ignored=1
"""


def run(returncode: int) -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(["ansible-playbook"], returncode, RUN, "")


def test_a_failed_run_names_the_failed_task_first_and_not_an_ignored_one() -> None:
    for said in (scenario.output(run(2)), fleet.output(run(2), tail=40)):
        assert said.startswith("FAILED TASKS: TASK [Start PostgreSQL] fatal: [db1]: FAILED! "), said
        assert "Unable to start service postgresql@15-main" in said.split(" ... ")[0]
        assert "not there" not in said.split(" ... ")[0]


def test_a_run_that_passed_is_left_as_it_printed() -> None:
    assert scenario.output(run(0)) == " ".join(RUN.split())
    assert fleet.output(run(0), tail=40) == " ".join(RUN.split())[-40:]
