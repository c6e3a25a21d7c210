"""The common role's preflight refuses a host smaller than its declared size.

Runs the role's `preflight` entry point with ansible-playbook against this
machine (connection local), declaring sizes from a test-only catalogue: one far
bigger than any build machine, one that any machine meets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
HOST = "undersized-test-host"

CATALOGUE = {
    "test_huge": {"label": "Test XXL", "vcpus": 512, "memory_gb": 65536, "disk_gb": 1048576},
    "test_tiny": {"label": "Test XS", "vcpus": 1, "memory_gb": 1, "disk_gb": 1},
}

PLAYBOOK = """\
- name: Preflight only
  hosts: all
  gather_facts: false
  tasks:
    - name: Check the host against its declared size
      ansible.builtin.include_role:
        name: paydrop.stack.common
        tasks_from: preflight
"""


CASES: dict[str, dict[str, object]] = {
    "undersized": {"paydrop_server_size": "test_huge"},
    "fits": {"paydrop_server_size": "test_tiny"},
    "override": {"paydrop_server_size": "test_huge", "common_preflight_enforce": False},
    "unknown": {"paydrop_server_size": "vps_tiny"},
}


Results = dict[str, subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Results:
    """Runs every case at once (each is an ansible-playbook run of a few seconds)."""
    workdir = tmp_path_factory.mktemp("preflight")
    (workdir / "preflight.yml").write_text(PLAYBOOK)
    (workdir / "hosts.ini").write_text(
        f"{HOST} ansible_connection=local ansible_python_interpreter={sys.executable}\n"
    )
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PATH=f"{ANSIBLE_PLAYBOOK.parent}{os.pathsep}{env.get('PATH', '')}",
    )
    running = {
        name: subprocess.Popen(
            [
                str(ANSIBLE_PLAYBOOK),
                "-i",
                str(workdir / "hosts.ini"),
                str(workdir / "preflight.yml"),
                "-e",
                json.dumps({"paydrop_server_sizes": CATALOGUE, **extra_vars}),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, extra_vars in CASES.items()
    }
    finished = {}
    for name, process in running.items():
        stdout, stderr = process.communicate(timeout=120)
        finished[name] = subprocess.CompletedProcess(
            process.args, process.returncode, stdout, stderr
        )
    return finished


def squashed(result: subprocess.CompletedProcess[str]) -> str:
    """Output with line wrapping undone, so messages can be matched whole."""
    return " ".join((result.stdout + result.stderr).split())


def test_undersized_host_fails_naming_host_and_shortfall(results: Results) -> None:
    result = results["undersized"]
    output = squashed(result)
    assert result.returncode != 0, output
    assert f"Preflight failed on {HOST}" in output
    vcpus = os.cpu_count()
    assert f"vCPUs: has {vcpus}, Test XXL needs 512 ({512 - vcpus} short)" in output
    assert "Test XXL needs 65536 GB" in output
    assert "Test XXL needs 1048576 GB" in output


def test_host_meeting_its_size_passes(results: Results) -> None:
    result = results["fits"]
    assert result.returncode == 0, squashed(result)
    assert "failed=0" in result.stdout


def test_operator_can_override_with_a_warning(results: Results) -> None:
    result = results["override"]
    output = squashed(result)
    assert result.returncode == 0, output
    assert f"WARNING: {HOST} is smaller than its declared test_huge" in output


def test_unknown_size_is_refused(results: Results) -> None:
    result = results["unknown"]
    output = squashed(result)
    assert result.returncode != 0, output
    assert f"Preflight failed on {HOST}: it must declare paydrop_server_size" in output
    assert "it declares vps_tiny" in output
