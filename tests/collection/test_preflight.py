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
import yaml

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


def test_a_missing_size_is_refused_naming_the_host(tmp_path: Path) -> None:
    """No paydrop_server_size at all: refused, never tuned from the machine's own facts."""
    result = _run(tmp_path, PLAYBOOK, f"{HOST} ansible_connection=local ansible_python_interpreter={sys.executable}\n",
                  {"paydrop_server_sizes": CATALOGUE})
    output = squashed(result)
    assert result.returncode != 0, output
    assert f"Preflight failed on {HOST}: it must declare paydrop_server_size" in output
    assert "it declares nothing" in output


def test_one_undersized_host_stops_every_host_before_any_change(tmp_path: Path) -> None:
    """site.yml's own preflight play (any_errors_fatal), then a play that would change
    something: with one of two hosts too small, neither host reaches the change."""
    site = yaml.safe_load((REPO / "playbooks" / "site.yml").read_text())
    preflight = next(play for play in site if play["name"] == "Preflight on every host")
    preflight = {**preflight, "become": False}
    marker = tmp_path / "changed-{{ inventory_hostname }}"
    change = {"name": "A change after the preflight", "hosts": "all", "gather_facts": False,
              "tasks": [{"name": "Leave a marker", "ansible.builtin.file": {"path": str(marker), "state": "touch",
                                                                            "mode": "0644"}}]}
    inventory = "".join(
        f"{name} ansible_connection=local ansible_python_interpreter={sys.executable} paydrop_server_size={size}\n"
        for name, size in (("fits-host", "test_tiny"), ("too-small-host", "test_huge")))
    result = _run(tmp_path, yaml.safe_dump([preflight, change]), inventory, {"paydrop_server_sizes": CATALOGUE})
    output = squashed(result)
    assert result.returncode != 0, output
    assert "Preflight failed on too-small-host" in output
    assert sorted(p.name for p in tmp_path.glob("changed-*")) == []


def _run(workdir: Path, playbook: str, inventory: str, extra_vars: dict[str, object],
         inventory_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    (workdir / "playbook.yml").write_text(playbook)
    inventory_dir = inventory_dir or workdir
    (inventory_dir / "hosts.ini").write_text(inventory)
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               PATH=f"{ANSIBLE_PLAYBOOK.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(inventory_dir / "hosts.ini"), str(workdir / "playbook.yml"),
         "-e", json.dumps(extra_vars)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False)


PRODUCTION_GROUP_VARS = REPO / "inventories" / "production" / "group_vars"
TEST_ONLY_VARS = REPO / "molecule" / "production" / "group_vars" / "all" / "test-only.yml"


def _production_preflight(tmp_path: Path, overrides: dict[str, object]) -> str:
    """site.yml's preflight play on one db_primary host with the production inventory's
    group_vars (placeholders included) and the scenario's test-only vault values."""
    site = yaml.safe_load((REPO / "playbooks" / "site.yml").read_text())
    preflight = {**next(play for play in site if play["name"] == "Preflight on every host"), "become": False}
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "group_vars").symlink_to(PRODUCTION_GROUP_VARS)
    vault = {key: value for key, value in yaml.safe_load(TEST_ONLY_VARS.read_text()).items()
             if key.startswith("vault_")}
    hosts = (f"[db_primary]\ndb-host ansible_connection=local ansible_python_interpreter={sys.executable} "
             "paydrop_server_size=test_tiny\n")
    result = _run(tmp_path, yaml.safe_dump([preflight]), hosts,
                  {"paydrop_server_sizes": CATALOGUE, "common_preflight_enforce": False, **vault, **overrides},
                  inventory_dir=inventory)
    output = squashed(result)
    return output if result.returncode == 0 else f"FAILED {output}"


def test_a_production_inventory_without_off_site_backups_is_refused(tmp_path: Path) -> None:
    output = _production_preflight(tmp_path, {"postgres_pgbackrest_s3_enabled": False})
    assert output.startswith("FAILED"), output
    assert "this inventory requires off-site backups (postgres_backup_offsite_required)" in output
    assert "pgBackRest's S3 repository is off" in output
    assert "opt out explicitly with postgres_backup_offsite_required: false" in output


def test_an_explicit_opt_out_of_off_site_backups_passes(tmp_path: Path) -> None:
    output = _production_preflight(tmp_path, {"postgres_pgbackrest_s3_enabled": False,
                                              "postgres_backup_offsite_required": False})
    assert not output.startswith("FAILED"), output
    assert "failed=0" in output


def test_the_production_inventorys_backup_placeholders_are_refused(tmp_path: Path) -> None:
    output = _production_preflight(tmp_path, {})
    assert output.startswith("FAILED"), output
    assert "not the inventory's REPLACE-WITH placeholders" in output
