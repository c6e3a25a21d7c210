#!/usr/bin/env python3
"""Shows that the suite's checks fail when the behaviour they name is broken.

For each entry below, against a running Molecule scenario: run the test (it
must pass), break the behaviour on the test hosts, run the test again (it must
FAIL, and the first assertion line is recorded), put the behaviour back, run
the test a third time (it must pass again). A check that still passes on the
broken host is reported as HOLLOW and the script exits non-zero.

Not part of `make test` (it takes minutes per entry and needs live hosts);
run it after `molecule converge`, from the checkout that converged:

    E=$(ls -td ~/.ansible/tmp/molecule.*.production | head -1)
    MOLECULE_PROJECT_DIRECTORY=$PWD MOLECULE_SCENARIO_NAME=production MOLECULE_EPHEMERAL_DIRECTORY=$E \\
      MOLECULE_INVENTORY_FILE=$E/inventory/ansible_inventory.yml ANSIBLE_CONFIG=$E/ansible.cfg \\
      .venv/bin/python scripts/show-checks-fail.py production [name ...]

The table it prints (and writes to build/shown-to-fail-<scenario>.md) is the
record issue #14 asks for: how each check was shown to fail.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import testhosts  # noqa: E402

PSQL = "runuser -u postgres -- psql -X -At -v ON_ERROR_STOP=1"
RELOAD = f"{PSQL} -c 'SELECT pg_reload_conf()'"
APP_PASSWORD = "test-only-app-password"  # noqa: S105 - molecule/production/group_vars/all/test-only.yml
DROPIN = "/etc/systemd/system/postgresql@15-main.service.d/paydrop-network.conf"
NFT_MARK = "paydrop-show-checks-fail"


@dataclass
class Mutation:
    name: str
    test: str                      # pytest node id, relative to the checkout
    broken: str                    # what is broken, in words
    # (inventory host, shell) pairs; or ("", "site.yml <args>") for a playbook run
    breaks: list[tuple[str, str]]
    restores: list[tuple[str, str]]
    settle: float = 0.0            # seconds to wait after breaking / restoring
    result: dict[str, str] = field(default_factory=dict)


PRODUCTION = [
    Mutation(
        "wal-archiving", "molecule/production/tests/test_postgres.py::test_wal_is_archived_continuously",
        "archiving off: archive_command = /bin/false on db1 (ALTER SYSTEM, reload)",
        [("db1", f"{PSQL} -c \"ALTER SYSTEM SET archive_command = '/bin/false'\" && {RELOAD}")],
        [("db1", f"{PSQL} -c 'ALTER SYSTEM RESET archive_command' && {RELOAD}")], settle=2),
    Mutation(
        "heartbeat-timer", "molecule/production/tests/test_postgres.py::test_the_heartbeat_keeps_writing",
        "the heartbeat timer stopped on db1 (the service itself left as it is)",
        [("db1", "systemctl stop postgres-heartbeat.timer")],
        [("db1", "systemctl start postgres-heartbeat.timer")]),
    Mutation(
        "pg-stat-statements",
        "molecule/production/tests/test_postgres.py::test_memory_settings_follow_the_declared_size",
        "pg_stat_statements loaded but recording nothing: pg_stat_statements.track = none on db1",
        [("db1", f"{PSQL} -c \"ALTER SYSTEM SET pg_stat_statements.track = 'none'\" && {RELOAD}")],
        [("db1", f"{PSQL} -c 'ALTER SYSTEM RESET pg_stat_statements.track' && {RELOAD}")], settle=1),
    Mutation(
        "postgres-listen",
        "molecule/production/tests/test_postgres.py::test_listens_only_on_loopback_and_the_private_address",
        "PostgreSQL on db2 (the replica) listening on every address: listen_addresses = '*', restarted",
        [("db2", f"{PSQL} -c \"ALTER SYSTEM SET listen_addresses = '*'\" && systemctl restart postgresql@15-main")],
        [("db2", f"{PSQL} -c 'ALTER SYSTEM RESET listen_addresses' && systemctl restart postgresql@15-main")],
        settle=3),
    Mutation(
        "network-online-wants",
        "molecule/production/tests/test_postgres.py::test_postgres_and_redis_start_after_the_network_is_up",
        "the drop-in keeps After=network-online.target but loses Wants= (db1, daemon-reload)",
        [("db1", f"cp -p {DROPIN} /root/dropin.bak && sed -i '/^Wants=/d' {DROPIN} && systemctl daemon-reload")],
        [("db1", f"mv /root/dropin.bak {DROPIN} && systemctl daemon-reload")]),
    Mutation(
        "scram-stored",
        "molecule/production/tests/test_postgres.py::test_the_app_host_connects_with_tls_and_scram",
        "the app role's password stored as md5 instead of SCRAM on db1",
        [("db1", f"{PSQL} -c \"SET password_encryption = 'md5'\" "
                 f"-c \"ALTER ROLE paydrop PASSWORD '{APP_PASSWORD}'\"")],
        [("db1", f"{PSQL} -c \"SET password_encryption = 'scram-sha-256'\" "
                 f"-c \"ALTER ROLE paydrop PASSWORD '{APP_PASSWORD}'\"")]),
    Mutation(
        "hba-md5",
        "molecule/production/tests/test_postgres.py::test_pg_hba_allows_only_tls_and_scram_over_the_network",
        "one extra pg_hba.conf rule 'host all all 10.99.0.0/16 md5' on db1, reloaded",
        [("db1", "cp -p /etc/postgresql/15/main/pg_hba.conf /root/hba.bak && "
                 "echo 'host all all 10.99.0.0/16 md5' >> /etc/postgresql/15/main/pg_hba.conf && " + RELOAD)],
        [("db1", "mv /root/hba.bak /etc/postgresql/15/main/pg_hba.conf && " + RELOAD)]),
    Mutation(
        "redis-listen",
        "molecule/production/tests/test_redis.py::test_listens_only_on_loopback_and_the_private_address",
        "Redis on redis1 bound to every address (bind 0.0.0.0 -::1 in the config, restarted)",
        [("redis1", "cp -p /etc/redis/redis.conf /root/redis.bak && sed -i 's/^bind .*/bind 0.0.0.0 -::1/' "
                    "/etc/redis/redis.conf && systemctl restart redis-server")],
        [("redis1", "mv /root/redis.bak /etc/redis/redis.conf "
                    "&& systemctl restart redis-server")], settle=2),
    Mutation(
        "port-scan",
        "molecule/production/tests/test_scans.py::test_from_outside_only_ssh_and_the_shop_answer",
        "app1's firewall opens TCP 9999 to everyone and a server listens there",
        [("app1", f"nft insert rule inet paydrop input tcp dport 9999 accept comment {NFT_MARK} && "
                  "(setsid nohup python3 -m http.server 9999 >/dev/null 2>&1 &)")],
        [("app1", f"pkill -f 'http[.]server 9999'; nft -a list chain inet paydrop input | "
                  f"awk '/{NFT_MARK}/ {{print $NF}}' | xargs -r -n1 nft delete rule inet paydrop input handle")],
        settle=1),
]

STAGING = "staging1"
NGINX_SITE = "$(grep -rl '_protected' /etc/nginx/conf.d /etc/nginx/sites-enabled 2>/dev/null | head -1)"

DEFAULT = [
    Mutation(
        "unattended-origins",
        "molecule/default/tests/test_default.py::test_unattended_upgrades_take_security_updates_only",
        "a second origin (bookworm-updates) allowed in /etc/apt/apt.conf.d/99-show-checks-fail",
        [(STAGING, "echo 'Unattended-Upgrade::Origins-Pattern { \"origin=Debian,codename=bookworm-updates\"; };' "
                   "> /etc/apt/apt.conf.d/99-show-checks-fail")],
        [(STAGING, "rm -f /etc/apt/apt.conf.d/99-show-checks-fail")]),
    Mutation(
        "sysctl-override",
        "molecule/default/tests/test_default.py::test_kernel_settings_take_effect_and_leave_ip_forward_to_docker",
        "a later sysctl file overriding one of ours: /etc/sysctl.d/99-show-checks-fail.conf, tcp_syncookies = 0",
        [(STAGING, "echo 'net.ipv4.tcp_syncookies = 0' > /etc/sysctl.d/99-show-checks-fail.conf")],
        [(STAGING, "rm -f /etc/sysctl.d/99-show-checks-fail.conf")]),
    Mutation(
        "edge-ports",
        "molecule/default/tests/test_edge.py::test_only_the_edge_ports_are_public",
        "nginx also listening on 0.0.0.0:8444 (an extra server in conf.d, reloaded)",
        [(STAGING, "echo 'server { listen 8444; return 204; }' > /etc/nginx/conf.d/zz-show-checks-fail.conf "
                   "&& nginx -t -q && systemctl reload nginx")],
        [(STAGING, "rm -f /etc/nginx/conf.d/zz-show-checks-fail.conf && systemctl reload nginx")], settle=1),
    Mutation(
        "x-accel",
        "molecule/default/tests/test_app.py::test_a_file_the_app_stored_is_handed_to_nginx_and_served_by_it",
        "nginx's /_protected/ alias pointed at an empty directory instead of the app's assets",
        [(STAGING, f"f={NGINX_SITE} && cp $f /root/site.bak && mkdir -p /var/empty-assets && "
                   "sed -i '/location \\^~ \\/_protected\\//,/}/ s#alias .*#alias /var/empty-assets/;#' $f "
                   "&& nginx -t -q && systemctl reload nginx")],
        [(STAGING, f"f={NGINX_SITE} && cp /root/site.bak $f && nginx -t -q && systemctl reload nginx")],
        settle=1),
    Mutation(
        "metrics-refusal",
        "molecule/default/tests/test_app.py::test_metrics_refuse_a_source_outside_the_monitoring_networks",
        "the app's metrics allowed from anywhere: site.yml --tags app -e app_metrics_allowed_networks=[0.0.0.0/0]",
        [("", "--tags app -e '{\"app_metrics_allowed_networks\": [\"0.0.0.0/0\"]}'")],
        [("", "--tags app")]),
]

SCENARIOS = {"production": PRODUCTION, "default": DEFAULT}


def sh(host: str, command: str) -> None:
    if host == "":
        inventory = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "inventory"
        argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
                str(ROOT / "playbooks" / "site.yml"), *shlex.split(command)]
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1200)  # noqa: S603
    else:
        done = subprocess.run(["docker", "exec", testhosts.container(host), "bash", "-c", command],  # noqa: S603,S607
                              capture_output=True, text=True, check=False, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{host or 'site.yml'}: {command!r} exited {done.returncode}: "
                           f"{(done.stdout + done.stderr)[-1500:]}")


def pytest(test: str) -> tuple[bool, str, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest",  # noqa: S603 "-p", "no:cacheprovider", "-q", "--no-header",
                           "-x", test], capture_output=True, text=True, check=False, cwd=ROOT, timeout=1800)
    elapsed = time.monotonic() - started
    lines = done.stdout.splitlines()
    first = next((line[1:].strip() for line in lines if line.startswith("E ")), "")
    return done.returncode == 0, first[:220], elapsed


def run(mutation: Mutation) -> bool:
    before, _, _ = pytest(mutation.test)
    if not before:
        mutation.result = {"verdict": "NOT GREEN BEFORE"}
        return False
    try:
        for host, command in mutation.breaks:
            sh(host, command)
        time.sleep(mutation.settle)
        passed, why, elapsed = pytest(mutation.test)
    finally:
        for host, command in mutation.restores:
            sh(host, command)
        time.sleep(mutation.settle)
    after, _, _ = pytest(mutation.test)
    verdict = "HOLLOW: passed on the broken host" if passed else ("failed" if after else "failed, NOT GREEN AFTER")
    mutation.result = {"verdict": verdict, "why": why, "seconds": f"{elapsed:.0f}"}
    return not passed and after


def main(argv: list[str]) -> int:
    scenario, wanted = argv[0], set(argv[1:])
    chosen = [m for m in SCENARIOS[scenario] if not wanted or m.name in wanted]
    ok = True
    for mutation in chosen:
        print(f"--> {mutation.name}: {mutation.broken}", flush=True)
        ok = run(mutation) and ok
        print(f"    {mutation.result}", flush=True)
    rows = ["| check | broken how | result | first failing line | s |", "|---|---|---|---|---|"]
    for m in chosen:
        r = m.result
        rows.append(f"| `{m.test.split('/')[-1]}` | {m.broken} | {r.get('verdict', '')} | "
                    f"`{r.get('why', '').replace('|', '/')}` | {r.get('seconds', '')} |")
    table = "\n".join(rows) + "\n"
    out = ROOT / "build" / f"shown-to-fail-{scenario}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(table)
    print(table)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
