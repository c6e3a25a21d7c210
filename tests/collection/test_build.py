"""`ansible-galaxy collection build` gives a tarball that installs and whose
roles run by FQCN, without this checkout on the collections path."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=300)


def test_built_collection_installs_and_runs_a_role_by_fqcn(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["ANSIBLE_LOCAL_TEMP"] = str(tmp_path / "tmp")
    built = run(str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(tmp_path), str(REPO),
                cwd=REPO, env=env)
    assert built.returncode == 0, built.stderr
    tarball = next(tmp_path.glob("paydrop-stack-*.tar.gz"))
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
    assert "roles/common/meta/argument_specs.yml" in names
    assert "playbooks/site.yml" in names
    assert "group_vars/all/sizes.yml" in names
    assert not any(n.startswith((".venv", "tests/", "molecule/", ".collections")) for n in names)

    collections = tmp_path / "collections"
    installed = run(str(BIN / "ansible-galaxy"), "collection", "install", "--offline", "--no-deps",
                    "-p", str(collections), str(tarball), cwd=tmp_path, env=env)
    assert installed.returncode == 0, installed.stderr
    assert (collections / "ansible_collections/paydrop/stack/roles/docker/tasks/main.yml").exists()

    # Run a role from the installed copy, from a directory with no ansible.cfg,
    # so nothing can resolve against this checkout. The preflight entry point
    # only reads facts, so it is safe on the build machine.
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        "- name: Preflight by FQCN from the installed collection\n"
        "  hosts: all\n"
        "  gather_facts: false\n"
        "  tasks:\n"
        "    - name: Run it\n"
        "      ansible.builtin.include_role:\n"
        "        name: paydrop.stack.common\n"
        "        tasks_from: preflight\n"
    )
    (tmp_path / "hosts.ini").write_text(
        f"fqcn-test ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    env["ANSIBLE_COLLECTIONS_PATH"] = str(collections)
    # A consumer's inventory takes the size catalogue from the collection, as
    # this repository's inventories do (they link group_vars/all/sizes.yml).
    sizes = collections / "ansible_collections/paydrop/stack/group_vars/all/sizes.yml"
    played = run(str(BIN / "ansible-playbook"), "-i", "hosts.ini", "play.yml", "-e", f"@{sizes}",
                 "-e", "paydrop_server_size=vps_m", "-e", "common_preflight_enforce=false",
                 cwd=tmp_path, env=env)
    assert played.returncode == 0, played.stdout + played.stderr
    assert "paydrop.stack.common" in played.stdout or "common :" in played.stdout
    assert "ok=" in played.stdout and "failed=0" in played.stdout
