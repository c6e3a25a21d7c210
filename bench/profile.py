"""Profile the sandbox's active slot with py-spy while a benchmark loads it:

    .venv/bin/python -m bench.profile --seconds 30 -- --only webhooks

records every gunicorn worker of the active slot (py-spy --subprocesses on its
master, found on this machine through the sandbox container's process tree),
runs `python -m bench <args after -->` meanwhile, writes the collapsed stacks
to bench/results/profile-<time>.txt (`flamegraph.pl` or speedscope.app draw
them) and prints the frames most samples pass through."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from .sandbox import Sandbox

RESULTS = Path(__file__).resolve().parent / "results"


def slot_master_pid(sb: Sandbox) -> int:
    """The active slot's gunicorn master as this machine numbers it."""
    root = int(subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", sb.name], capture_output=True,
                              text=True, check=True).stdout)
    inner = int(sb.sh(f"docker inspect -f '{{{{.State.Pid}}}}' {sb.slot_container()}").strip())
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(proc.name))
    stack = [root]
    while stack:
        pid = stack.pop()
        try:
            nspids = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                          if line.startswith("NSpid:")).split()[1:]
        except (OSError, StopIteration):
            continue
        # NSpid lists the pid in each namespace, outermost first: the sandbox's view is second.
        if len(nspids) >= 2 and int(nspids[1]) == inner:
            return pid
        stack.extend(children.get(pid, []))
    raise RuntimeError(f"no process of {sb.name} is its slot's master (pid {inner} inside)")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("bench_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    sb = Sandbox()
    master = slot_master_pid(sb)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"profile-{stamp}.txt"
    py_spy = Path(sys.executable).parent / "py-spy"
    record = subprocess.Popen([str(py_spy), "record", "--pid", str(master), "--subprocesses", "--nonblocking",
                               "--duration", str(args.seconds), "--format", "raw", "-o", str(out)])
    time.sleep(1)
    bench_args = [a for a in args.bench_args if a != "--"]
    subprocess.run([sys.executable, "-m", "bench", *bench_args], check=False)
    if record.wait() != 0:
        return 1
    summarise(out)
    return 0


def summarise(collapsed: Path, top: int = 30) -> None:
    """Frames by the share of busy samples that pass through them (idle waits left out)."""
    inclusive: Counter[str] = Counter()
    busy = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        if any(idle in frames[-1] for idle in ("select (selectors", "wait (threading", "_worker (concurrent")):
            continue
        busy += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    print(f"{collapsed}: {busy} busy samples")
    for frame, count in inclusive.most_common(top):
        print(f"{100 * count / max(busy, 1):5.1f}%  {frame}")


if __name__ == "__main__":
    sys.exit(main())
