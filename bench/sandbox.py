"""The running `make demo` sandbox as the benchmarks see it: its public URL on
127.0.0.1, and what they need inside the host (SQL, files, processes, nginx),
all through `docker exec`. Names and ports come from the same environment
variables scripts/sandbox reads."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ASSETS_DIR = "/var/lib/paydrop/assets"
BENCH_DIR = "/var/lib/paydrop/assets/bench"
NGINX_BENCH_CONF = "/etc/nginx/conf.d/zz-paydrop-bench.conf"
HELLO_CONTAINER = "paydrop-bench-hello"
HELLO_PORT = 8009
# The baseline's virtual host on the shop's nginx (Host header and SNI).
BASELINE_HOST = "bench-baseline"


_PROCESSES = """
import os


def field(name, text):
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        status = open(f"/proc/{pid}/status").read()
        rollup = open(f"/proc/{pid}/smaps_rollup").read() if "VmRSS" in status else ""
    except OSError:
        continue
    print(pid, field("PPid", status), field("VmRSS", status), field("Pss", rollup))
"""


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    rss_kb: int
    pss_kb: int


class Sandbox:
    def __init__(self) -> None:
        self.name = os.environ.get("PAYDROP_DEMO_NAME", "paydrop-sandbox")
        self.port = int(os.environ.get("PAYDROP_DEMO_HTTPS_PORT", "8443"))
        self.url = f"https://localhost:{self.port}"
        self.ca = REPO / ".sandbox" / "tls" / "sandbox.crt"

    # --- outside -------------------------------------------------------------------
    def running(self) -> bool:
        state = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", self.name],
                               capture_output=True, text=True, check=False)
        return state.stdout.strip() == "true"

    def secret(self, name: str) -> str:
        text = (REPO / ".sandbox" / "secrets.yml").read_text()
        match = re.search(rf'^{name}: "(.*)"$', text, re.M)
        if not match:
            raise RuntimeError(f"{name} is not in .sandbox/secrets.yml")
        return match.group(1)

    def host_cpu_seconds(self) -> float | None:
        """CPU time the whole sandbox host has used so far: its container's cgroup
        plus those of the containers its own Docker engine runs (the slots, the
        worker), which that engine puts beside it, not inside it. Everything a
        request costs there: nginx, gunicorn, PostgreSQL, Redis, the log path
        (dockerd, containerd-shim, journald). None where the cgroup files are not
        where cgroup v1 or v2 keeps them."""
        inner = self.sh("docker ps -q --no-trunc").split()
        outer = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", self.name], capture_output=True,
                               text=True, check=True).stdout.strip()
        total = 0.0
        for cid in [outer, *inner]:
            v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage")
            v2 = [Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat"),
                  Path(f"/sys/fs/cgroup/docker/{cid}/cpu.stat")]
            if v1.exists():
                total += int(v1.read_text()) / 1e9
            elif found := next((f for f in v2 if f.exists()), None):
                usage = next(line for line in found.read_text().splitlines() if line.startswith("usage_usec"))
                total += int(usage.split()[1]) / 1e6
            else:
                return None
        return total

    # --- inside --------------------------------------------------------------------
    def sh(self, script: str, stdin: str | None = None, timeout: float = 120) -> str:
        done = subprocess.run(["docker", "exec", "-i", self.name, "sh", "-ec", script],
                              input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"in {self.name}: {script[:200]}\n{done.stderr.strip()}")
        return done.stdout

    def psql(self, sql: str) -> list[list[str]]:
        out = self.sh("cd / && runuser -u postgres -- psql -d paydrop -XAtq -F '\t' -v ON_ERROR_STOP=1",
                      stdin=sql)
        return [line.split("\t") for line in out.splitlines() if line]

    def release_state(self) -> dict:
        return json.loads(self.sh("cat /etc/ansible/facts.d/paydrop_release.fact"))

    def active_version(self) -> str:
        state = self.release_state()
        return str(state["slots"][state["active"]])

    def slot_container(self) -> str:
        return f"paydrop-{self.release_state()['active']}"

    def slot_bind(self) -> str:
        """Where the active slot's gunicorn listens (the host's private address:port)."""
        env = json.loads(self.sh(f"docker inspect -f '{{{{json .Config.Env}}}}' {self.slot_container()}"))
        return next(e.split("=", 1)[1] for e in env if e.startswith("GUNICORN_BIND="))

    def slot_pids(self) -> list[int]:
        """The active slot's gunicorn master and workers, as the host numbers them."""
        master = int(self.sh(f"docker inspect -f '{{{{.State.Pid}}}}' {self.slot_container()}").strip())
        return [p.pid for p in self.processes() if p.pid == master or p.ppid == master]

    def processes(self) -> list[Proc]:
        """Every process of the sandbox host (its slots' containers included),
        read by one Python process there, so sampling costs little."""
        out = self.sh("python3 -", stdin=_PROCESSES)
        return [Proc(*map(int, line.split())) for line in out.splitlines()]

    def cpu_seconds(self, pids: list[int]) -> float:
        """CPU time of these processes, all their threads, from the scheduler's
        nanosecond counters (/proc/<pid>/task/*/schedstat): utime/stime tick
        at 10 ms, too coarse for a few milliseconds per request."""
        out = self.sh("cat " + " ".join(f"/proc/{p}/task/*/schedstat" for p in pids))
        return sum(int(line.split()[0]) for line in out.splitlines() if line) / 1e9
