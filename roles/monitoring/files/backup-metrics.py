#!/usr/bin/python3
"""Write pgBackRest's backup times as Prometheus metrics (textfile collector).

Usage: backup-metrics STANZA TEXTFILE_DIR

Runs `pgbackrest info` as postgres and writes, atomically, <dir>/pgbackrest.prom:

  paydrop_backup_last_success_timestamp_seconds{stanza,repo,type}
                                      end of the newest backup of each type in each repository
                                      (repo1 on this host, repo2 off-site; 0: none of that type there)
  paydrop_backup_info_success                                  1 when pgbackrest info answered, else 0
  paydrop_backup_metrics_timestamp_seconds                     when this ran

A failing `pgbackrest info` keeps the metric names (info_success 0, no times),
so the alerts see an answer instead of stale numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

TYPES = ("full", "diff", "incr")


def backup_times(stanza: str) -> dict[tuple[str, str], float] | None:
    try:
        out = subprocess.run(
            ["runuser", "-u", "postgres", "--", "pgbackrest", f"--stanza={stanza}", "--output=json", "info"],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        info = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    times: dict[tuple[str, str], float] = {}
    for entry in info:
        if entry.get("name") != stanza:
            continue
        for repo in entry.get("repo", []):
            for kind in TYPES:
                times[(str(repo.get("key", 1)), kind)] = 0.0
        for backup in entry.get("backup", []):
            key = (str(backup.get("database", {}).get("repo-key", 1)), backup.get("type"))
            stop = float(backup.get("timestamp", {}).get("stop", 0))
            if key[1] in TYPES and backup.get("error") is not True:
                times[key] = max(times.get(key, 0.0), stop)
    return times


def render(stanza: str, times: dict[tuple[str, str], float] | None) -> str:
    lines = [
        "# HELP paydrop_backup_last_success_timestamp_seconds End of the newest pgBackRest backup of each type.",
        "# TYPE paydrop_backup_last_success_timestamp_seconds gauge",
    ]
    for (repo, kind), stop in sorted((times or {}).items()):
        lines.append(f'paydrop_backup_last_success_timestamp_seconds{{stanza="{stanza}",repo="{repo}",type="{kind}"}}'
                     f" {stop:.0f}")
    lines += [
        "# HELP paydrop_backup_info_success Whether pgbackrest info answered.",
        "# TYPE paydrop_backup_info_success gauge",
        f'paydrop_backup_info_success{{stanza="{stanza}"}} {0 if times is None else 1}',
        "# HELP paydrop_backup_metrics_timestamp_seconds When these backup metrics were written.",
        "# TYPE paydrop_backup_metrics_timestamp_seconds gauge",
        f"paydrop_backup_metrics_timestamp_seconds {time.time():.0f}",
    ]
    return "\n".join(lines) + "\n"


def main(stanza: str, directory: str) -> int:
    times = backup_times(stanza)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".pgbackrest.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(render(stanza, times))
    os.chmod(tmp, 0o644)
    os.replace(tmp, os.path.join(directory, "pgbackrest.prom"))
    return 0 if times is not None else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
