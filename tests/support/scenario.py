"""Helpers shared by the Molecule scenarios' testinfra modules.

One place for: which test hosts a module runs on (an empty inventory group is
an error, never a module that silently skips), the address a host's services
bind (its route's source address), connecting from this machine, running a
playbook the way Molecule does (against the scenario's inventory DIRECTORY, so
its group_vars and host_vars apply), and polling with a deadline.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import testinfra.host
from testinfra.utils.ansible_runner import AnsibleRunner

from tests.support import testhosts

T = TypeVar("T")


def inventory_dir() -> Path:
    """Molecule's inventory: a directory holding the hosts file and the linked group_vars/host_vars.

    Passing only the hosts file (MOLECULE_INVENTORY_FILE) to ansible-playbook
    drops the group_vars next to it: the hosts then lose their declared sizes
    and settings, and the run differs from Molecule's own converge.
    """
    return Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent


def hosts_of(group: str) -> list[str]:
    """testinfra specs of the hosts in an inventory group; an empty group is an error."""
    names = AnsibleRunner(str(inventory_dir())).get_hosts(group)
    if not names:
        raise RuntimeError(f"inventory group {group!r} has no hosts in {inventory_dir()}: "
                           "the module's checks would not run anywhere")
    return [testhosts.spec(name) for name in names]


def private_address(host: testinfra.host.Host) -> str:
    """The address the host uses toward its peers: the source address of its route out."""
    route = host.check_output("ip -4 route get 1.1.1.1")
    match = re.search(r"\bsrc (\d+\.\d+\.\d+\.\d+)", route)
    assert match, f"no source address in {route!r}"
    return match.group(1)


def can_connect(address: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], T], what: str, timeout: float = 30.0, interval: float = 0.2) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not true after {timeout:.0f} s (last: {result!r})")
        time.sleep(interval)


def listener_pids(host: testinfra.host.Host, port: int) -> set[int]:
    """PIDs of the processes listening on TCP `port` on the host."""
    out = host.check_output("ss -Hltnp 'sport = :%s'", str(port))
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


def main_pid(host: testinfra.host.Host, unit: str) -> int:
    return int(host.check_output("systemctl show --property=MainPID --value %s", unit) or 0)


def wait_for_unit_listening(host: testinfra.host.Host, unit: str, port: int, timeout: float = 15.0) -> None:
    """Wait until `port` is held by the main process of `unit`: a foreign listener does not count."""
    def ours() -> bool:
        pid = main_pid(host, unit)
        return pid != 0 and listener_pids(host, port) == {pid}
    wait_until(ours, f"{unit} listening on port {port} (listeners: {listener_pids(host, port)})",
               timeout=timeout)


def playbook(path: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    """ansible-playbook against the scenario's inventory directory, as Molecule runs it."""
    env = dict(os.environ)
    ephemeral = env.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if ephemeral:
        env.setdefault("ANSIBLE_CONFIG", str(Path(ephemeral) / "ansible.cfg"))
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory_dir()), str(path), *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)


def failures(result: subprocess.CompletedProcess[str], limit: int = 600) -> str:
    """Each failed task of a playbook run and its first words (`TASK [name] fatal: [host]: FAILED! ...`),
    on one line: the start of a test's message, which is what CI's summary shows of it."""
    found, task = [], ""
    for line in result.stdout.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith(("fatal: [", "failed: [")):
            found.append(f"TASK [{task}] " + " ".join(line.split())[:limit])
        elif line.strip() == "...ignoring" and found:
            found.pop()
    return " | ".join(found)


def output(result: subprocess.CompletedProcess[str], tail: int | None = None) -> str:
    """What a playbook printed (its last `tail` characters), on one line; the failed tasks
    first when it failed."""
    text = " ".join((result.stdout + result.stderr).split())[-tail if tail else None:]
    failed = failures(result) if result.returncode else ""
    return f"FAILED TASKS: {failed} ... {text}" if failed else text


def changed_tasks(result: subprocess.CompletedProcess[str]) -> list[str]:
    """Names of the tasks (and handlers) that reported a change."""
    changed, task = [], ""
    for line in result.stdout.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed:"):
            changed.append(task)
    return changed


def recap_changed(result: subprocess.CompletedProcess[str], host: str) -> int:
    """`changed=N` of one host in the play recap."""
    match = re.search(rf"^{re.escape(host)}\s+:\s+ok=\d+\s+changed=(\d+)", result.stdout, re.MULTILINE)
    assert match, result.stdout[-3000:]
    return int(match.group(1))
