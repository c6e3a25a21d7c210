"""make bench: python -m bench [--quick] [--only NAME ...]

Against the running `make demo` sandbox (scripts/sandbox; PAYDROP_DEMO_NAME
and PAYDROP_DEMO_HTTPS_PORT pick which one). Writes bench/results/<time>.json
and .png, prints a Markdown table. --quick: tiny loads, no releases or
convergence, goals not judged; with no sandbox up it runs the local self-check
(bench/selfcheck.py) instead. Exits non-zero when a benchmark fails to run,
never because a goal is missed."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from . import benchmarks, load, report, selfcheck
from .sandbox import Sandbox

RESULTS = Path(__file__).resolve().parent / "results"
ALL = ("pages", "webhooks", "downloads", "convergence", "releases")
QUICK = ("pages", "webhooks", "downloads")


def machine() -> dict:
    with open("/proc/meminfo") as meminfo:
        mem_kb = int(meminfo.readline().split()[1])
    with open("/proc/cpuinfo") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gb": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(), "load_avg_at_start": os.getloadavg()}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny loads, seconds; no goals judged")
    parser.add_argument("--only", nargs="+", choices=ALL, help="run only these benchmarks")
    args = parser.parse_args()
    load.need_wrk()
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    started = time.monotonic()
    results: dict = {"run": {"started": stamp, "quick": args.quick, "machine": machine()}, "benchmarks": {},
                     "errors": {}}
    sb = Sandbox()
    if not sb.running():
        if not args.quick:
            print(f"make bench: no sandbox {sb.name} is running; start it with make demo", file=sys.stderr)
            return 2
        print(f"make bench: no sandbox {sb.name}: QUICK runs the local self-check of the harness instead")
        table = selfcheck.run(results)
    else:
        size = benchmarks.Size(args.quick)
        chosen = [b for b in (QUICK if args.quick else ALL) if not args.only or b in args.only]
        results["run"]["sandbox"] = {"name": sb.name, "url": sb.url, "release": sb.active_version()}
        with benchmarks.Fixtures(sb, size) as fixtures:
            for name in chosen:
                if name == "convergence":
                    fixtures.remove_baseline()  # only what make demo made may be on the host
                print(f"make bench: {name} ...", flush=True)
                t0 = time.monotonic()
                try:
                    results["benchmarks"][name] = getattr(benchmarks, name)(sb, fixtures, size)
                except Exception as exc:  # noqa: BLE001 - reported, the others still run
                    traceback.print_exc()
                    results["errors"][name] = f"{type(exc).__name__}: {exc}"
                print(f"make bench: {name} took {time.monotonic() - t0:.0f} s", flush=True)
        table = report.rows(results)
    results["run"]["seconds"] = round(time.monotonic() - started, 1)
    results["summary"] = table
    out = RESULTS / f"{stamp}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    title = (f"make bench {'QUICK ' if args.quick else ''}{stamp}, "
             f"{results['run'].get('sandbox', {}).get('release', 'self-check')}: "
             f"{results['run']['machine']['cpus']} CPUs, load {results['run']['machine']['load_avg_at_start'][0]:.1f}")
    report.chart(table, out.with_suffix(".png"), title)
    print()
    print(report.markdown(table, args.quick))
    print(f"\n{out} and {out.with_suffix('.png').name}; {results['run']['seconds']:.0f} s")
    for name, error in results["errors"].items():
        print(f"make bench: {name} FAILED: {error}", file=sys.stderr)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
