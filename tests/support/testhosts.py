"""Names of the Molecule test hosts' containers, as .config/molecule/create.yml makes them.

A container is named `<inventory name>-<checkout id>`, the checkout id being the
first 8 hex digits of the SHA-1 of the checkout's path (MOLECULE_PROJECT_DIRECTORY),
so two clones testing on one Docker engine never collide, and hosts a killed
run left behind never block the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time


def checkout_id(project_dir: str | None = None) -> str:
    directory = project_dir or os.environ["MOLECULE_PROJECT_DIRECTORY"]
    return hashlib.sha1(directory.encode(), usedforsecurity=False).hexdigest()[:8]


def container(inventory_name: str) -> str:
    """The container of an inventory host."""
    return f"{inventory_name}-{checkout_id()}"


def spec(inventory_name: str) -> str:
    """A testinfra host spec (docker backend) for an inventory host."""
    return f"docker://{container(inventory_name)}"


def replace_with_fresh(inventory_name: str, boot_timeout: int = 180) -> None:
    """Replace a test host by a new one from the same image, with the same name, network alias,
    capabilities and mounts (a server rebuilt on new disks): everything on the old one is gone,
    its anonymous volumes included, and Docker gives it a new address."""
    name = container(inventory_name)
    info = json.loads(subprocess.run(["docker", "inspect", name], check=True, capture_output=True,
                                     text=True).stdout)[0]
    config, host = info["Config"], info["HostConfig"]
    ((network, settings),) = info["NetworkSettings"]["Networks"].items()
    args = ["docker", "run", "--detach", "--name", name, "--hostname", config["Hostname"],
            "--network", network, "--cgroupns", host["CgroupnsMode"]]
    args += [f"--network-alias={alias}" for alias in settings.get("Aliases") or []
             if alias not in (config["Hostname"], info["Id"][:12])]
    args += [f"--cap-add={cap}" for cap in host.get("CapAdd") or []]
    args += [f"--security-opt={opt}" for opt in host.get("SecurityOpt") or []]
    args += [f"--volume={bind}" for bind in host.get("Binds") or []]
    bound = {bind.split(":")[1] for bind in host.get("Binds") or []}
    args += [f"--volume={path}" for path in config.get("Volumes") or {} if path not in bound]
    tmpfs = host.get("Tmpfs") or {}
    args += [f"--tmpfs={path}" + (f":{options}" if options else "") for path, options in tmpfs.items()]
    args += [f"--label={key}={value}" for key, value in (config.get("Labels") or {}).items()]
    args += [config["Image"], *(config.get("Cmd") or [])]
    subprocess.run(["docker", "rm", "--force", "--volumes", name], check=True, capture_output=True)
    subprocess.run(args, check=True, capture_output=True)
    # As create.yml: until systemd (PID 1) has its bus up, systemctl cannot even ask ("Failed to connect to bus").
    deadline = time.monotonic() + boot_timeout
    while True:
        booted = subprocess.run(["timeout", "60", "docker", "exec", name, "systemctl", "is-system-running", "--wait"],
                                capture_output=True, text=True)
        if booted.stdout.strip() in ("running", "degraded"):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not boot: {booted.stdout.strip()} {booted.stderr.strip()}")
        time.sleep(2)
