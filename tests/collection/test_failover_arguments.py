"""failover.yml refuses unclear arguments before it reaches any host.

Runs the playbook with the real production inventory (its addresses are
placeholders nobody answers at): a refusal must come from the first play, on
the control node, so no server is ever contacted, let alone changed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")

CASES = {
    "nothing": [],
    "promote the primary": ["-e", "promote=db1"],
    "promote a host that is not a database": ["-e", "promote=app1"],
    "promote and rejoin at once": ["-e", "promote=db2", "-e", "rejoin=db1"],
    "rejoin the primary": ["-e", "rejoin=db1"],
}


@pytest.fixture(scope="module")
def results() -> dict[str, subprocess.CompletedProcess[str]]:
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_FORCE_COLOR": "0", "PATH": f"{ANSIBLE_PLAYBOOK.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    running = {
        name: subprocess.Popen(
            [str(ANSIBLE_PLAYBOOK), "-i", "inventories/production/hosts.yml", "playbooks/failover.yml", *args],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, args in CASES.items()
    }
    finished = {}
    for name, process in running.items():
        stdout, stderr = process.communicate(timeout=120)
        finished[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return finished


@pytest.mark.parametrize("case", list(CASES))
def test_unclear_arguments_are_refused_on_the_control_node(
        results: dict[str, subprocess.CompletedProcess[str]], case: str) -> None:
    result = results[case]
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, output[-2000:]
    assert "failover.yml takes exactly one of -e promote=<a host of db_replica>" in output
    assert "db_primary: ['db1'], db_replica: ['db2']" in output
    assert "Nothing was changed." in output
    # The first play stopped the run: no server was contacted.
    assert "Learn the facts of every host that answers" not in output
