"""Monitoring on the fleet: Prometheus on mon1 scrapes every target the
inventory holds, alerts fire and reach a receiver through Alertmanager, and
nobody but mon1 reaches the exporters, Prometheus or Alertmanager.

Destructive checks (app2's slots stopped, Redis filled past its alert
threshold) put everything back in `finally` blocks and wait until it is ready
again, so the modules after this one (test_zero_downtime.py last) find the
fleet as converge left it. The scenario's short intervals and `for` values are
in molecule/production/group_vars/all/monitoring.yml.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import testinfra
from conftest import TCP_DROPPED, tcp_probe
from testinfra.utils.ansible_runner import AnsibleRunner

from tests.support import fleet, scenario, testhosts

Host = testinfra.host.Host

PROMETHEUS = "http://127.0.0.1:9090"
ALERTMANAGER = "http://127.0.0.1:9093"
# The test receiver: monitoring_alertmanager_webhook_urls in the scenario's group_vars.
RECEIVER_PORT = 9799
RECEIVER_UNIT = "paydrop-test-alert-receiver"
RECEIVED = "/tmp/paydrop-test-alerts.jsonl"
# `for` of the alerts the scenario shortens (group_vars/all/monitoring.yml).
ALERT_FOR = 10
# Scrape and evaluation intervals (5 s each), group_wait, and the time a stopped
# slot takes to fail its scrape: what may pass on top of `for`.
MARGIN = 30
# TEST-ONLY, as in molecule/production/group_vars/all/test-only.yml.
REDIS_ADMIN_PASSWORD = "test-only-redis-admin-password"
REDIS_SOCKET = "/run/redis/redis-server.sock"
FILL_KEYS = "molecule:monitoring:fill:"
SLOTS = ("paydrop-blue", "paydrop-green")
SLOT_PORTS = {"blue": 8001, "green": 8002}

RECEIVER = f"""
import http.server, sys

class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open({RECEIVED!r}, "ab") as out:
            out.write(body.replace(b"\\n", b" ") + b"\\n")
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", {RECEIVER_PORT}), Receiver).serve_forever()
"""


def name_of(spec: str) -> str:
    """The inventory name of a testinfra spec from scenario.hosts_of()."""
    return spec.removeprefix("docker://").removesuffix(f"-{testhosts.checkout_id()}")


def names_of(group: str) -> list[str]:
    return [name_of(spec) for spec in scenario.hosts_of(group)]


@pytest.fixture(scope="module")
def mon() -> Host:
    return testinfra.get_host(scenario.hosts_of("monitoring")[0])


def api(mon: Host, url: str) -> Any:
    """GET an API of Prometheus or Alertmanager on mon1 (they listen on its loopback only)."""
    return json.loads(mon.check_output(f"curl -sSf --max-time 10 {shlex.quote(url)}"))


def query(mon: Host, promql: str) -> list[dict[str, Any]]:
    body = api(mon, f"{PROMETHEUS}/api/v1/query?query={quote(promql, safe='')}")
    assert body["status"] == "success", body
    return body["data"]["result"]


def firing(mon: Host, alert: str) -> list[dict[str, str]]:
    """Labels of the alerts with this name that Prometheus has firing."""
    alerts = api(mon, f"{PROMETHEUS}/api/v1/alerts")["data"]["alerts"]
    return [a["labels"] for a in alerts if a["labels"]["alertname"] == alert and a["state"] == "firing"]


def delivered(mon: Host, alert: str, instance: str, status: str) -> list[dict[str, Any]]:
    """Notifications the test receiver got that carry `alert` for `instance` in `status`."""
    found = []
    for line in mon.run(f"cat {RECEIVED}").stdout.splitlines():
        payload = json.loads(line)
        for item in payload["alerts"]:
            labels = item["labels"]
            if labels.get("alertname") == alert and labels.get("instance") == instance and item["status"] == status:
                found.append(item)
    return found


@pytest.fixture(scope="module")
def receiver(mon: Host) -> Iterator[None]:
    """A webhook receiver on mon1's loopback (where Alertmanager sends), for this module only."""
    mon.check_output(f"rm -f {RECEIVED}")
    mon.check_output(f"systemd-run --unit {RECEIVER_UNIT} --collect python3 -c {shlex.quote(RECEIVER)}")
    try:
        scenario.wait_until(lambda: tcp_probe(mon, "127.0.0.1", RECEIVER_PORT) == 0, "the test receiver listens")
        yield
    finally:
        mon.run(f"systemctl stop {RECEIVER_UNIT}")
        mon.run(f"rm -f {RECEIVED}")


def expected_targets() -> dict[str, set[str]]:
    """Targets that must be up, by job: `instance` (and the colour of app slots)."""
    everyone = AnsibleRunner(str(scenario.inventory_dir())).get_hosts("all")
    monitoring = names_of("monitoring")
    app = {f"{name}/{fleet.state(name)['active']}" for name in names_of("app")}
    url = "https://" + fleet.SERVER_NAME
    return {
        "prometheus": set(monitoring),
        "alertmanager": set(monitoring),
        "node": set(everyone),
        "nginx": set(names_of("lb")),
        "app": app,
        "postgres": set(names_of("db_primary") + names_of("db_replica")),
        "redis": set(names_of("redis")),
        "blackbox": {f"{url}/", f"{url}/api/health/ready"},
        # The exporter answers for each slot (the probe's result is probe_success).
        "checkout": {f"{name}/{colour}" for name in names_of("app") for colour in SLOT_PORTS},
    }


def up_by_job(mon: Host) -> dict[str, dict[str, float]]:
    jobs: dict[str, dict[str, float]] = {}
    for series in query(mon, "up"):
        labels = series["metric"]
        target = labels["instance"] + (f"/{labels['colour']}" if "colour" in labels else "")
        jobs.setdefault(labels["job"], {})[target] = float(series["value"][1])
    return jobs


def test_prometheus_scrapes_every_expected_target(mon: Host) -> None:
    expected = expected_targets()

    def missing() -> dict[str, set[str]]:
        up = up_by_job(mon)
        return {job: {t for t in targets if up.get(job, {}).get(t) != 1.0} for job, targets in expected.items()}

    try:
        scenario.wait_until(lambda: not any(missing().values()), "every expected target up", timeout=120, interval=2)
    finally:
        for job, targets in sorted(up_by_job(mon).items()):
            print(f"\n{job}: " + ", ".join(f"{t}={v:g}" for t, v in sorted(targets.items())), end="")
        print()
    assert not any(missing().values()), missing()


def test_the_exporters_report_what_the_alerts_read(mon: Host) -> None:
    """Not just `up`: the queries and probes the rules use return real values."""
    replica = names_of("db_replica")[0]
    primary = names_of("db_primary")[0]

    def value(promql: str) -> float | None:
        result = query(mon, promql)
        return float(result[0]["value"][1]) if result else None

    checks = {
        f'paydrop_pg_replication_wal_receiver_streaming{{instance="{replica}"}}': lambda v: v == 1,
        f'paydrop_pg_replication_is_replica{{instance="{primary}"}}': lambda v: v == 0,
        f'time() - paydrop_pg_archiver_last_archived_timestamp_seconds{{instance="{primary}"}}': lambda v: v < 600,
        f'paydrop_backup_info_success{{instance="{primary}"}}': lambda v: v == 1,
        'redis_memory_max_bytes{job="redis"}': lambda v: v > 0,
        'min(probe_success{job="blackbox"})': lambda v: v == 1,
        'min(probe_ssl_earliest_cert_expiry{job="blackbox"}) - time()': lambda v: v > 20 * 86400,
        'sum(nginx_connections_accepted{job="nginx"})': lambda v: v > 0,
        'count(paydrop_http_requests_total{job="app"})': lambda v: v > 0,
        f'count(node_textfile_scrape_error{{instance="{primary}"}} == 0)': lambda v: v == 1,
    }
    # The product files' first off-site copy, started in the background by converge.
    checks[f'time() - paydrop_assets_backup_last_success_timestamp_seconds{{instance="{names_of("app")[0]}"}}'] = \
        lambda v: v < 6 * 3600
    # Every app host can take a payment: its live slot reports Stripe healthy.
    for name in names_of("app"):
        checks[f'max(probe_success{{job="checkout", instance="{name}"}})'] = lambda v: v == 1
    for promql, ok in checks.items():
        scenario.wait_until(lambda q=promql, good=ok: (v := value(q)) is not None and good(v),
                            promql, timeout=90, interval=2)


def test_prometheus_and_alertmanager_listen_on_loopback_only(mon: Host) -> None:
    for port in (9090, 9093, 9115, 9121, 9187, 9188):
        listening = set(mon.check_output(f"ss -Hltn 'sport = :{port}' | awk '{{print $4}}'").split())
        assert listening == {f"127.0.0.1:{port}"}, (port, listening)
    # No Alertmanager cluster listener.
    assert mon.check_output("ss -Hltn 'sport = :9094'") == ""
    assert api(mon, f"{ALERTMANAGER}/api/v2/status")["cluster"]["status"] == "disabled"


def slots_running(host: Host) -> list[str]:
    names = host.check_output("docker ps --format '{{.Names}}'").split()
    return [name for name in SLOTS if name in names]


def slot_ready(host: Host, slot: str) -> bool:
    port = SLOT_PORTS[slot.removeprefix("paydrop-")]
    address = scenario.private_address(host)
    return host.run(f"curl -sf --max-time 3 http://{address}:{port}/api/health/ready").rc == 0


def test_stopping_the_app_on_a_host_fires_and_resolves_its_alert_at_the_receiver(mon: Host, receiver: None) -> None:
    spec = scenario.hosts_of("app")[-1]
    name, app = name_of(spec), testinfra.get_host(spec)
    slots = slots_running(app)
    assert slots, f"no app slot runs on {name}"
    try:
        stopped = time.monotonic()
        for slot in slots:
            app.check_output(f"docker stop {slot}")
        scenario.wait_until(lambda: delivered(mon, "AppHostDown", name, "firing"),
                            f"AppHostDown for {name} delivered to the receiver", timeout=ALERT_FOR + MARGIN)
        print(f"\nAppHostDown for {name} delivered {time.monotonic() - stopped:.0f} s after its slots stopped")
    finally:
        for slot in slots:
            app.run(f"docker start {slot}")
        for slot in slots:
            scenario.wait_until(lambda s=slot: slot_ready(app, s), f"{slot} on {name} ready again",
                                timeout=120, interval=1)
    scenario.wait_until(lambda: delivered(mon, "AppHostDown", name, "resolved"),
                        f"AppHostDown for {name} resolved at the receiver", timeout=60 + MARGIN)


def test_stripe_unreachable_fires_the_checkout_alert_while_the_shop_still_serves(mon: Host) -> None:
    """Stripe (the scenario's emulator) paused: every app host's checkout alert
    fires, and the public probes stay green, because a slow Stripe must not take
    the shop out of the load balancer."""
    stripe = f"stripe-{testhosts.checkout_id()}"
    apps = set(names_of("app"))

    def checkout_firing() -> set[str]:
        return {labels["instance"] for labels in firing(mon, "CheckoutUnavailable")}

    # The test before restarts app2's slots: wait out anything that left.
    scenario.wait_until(lambda: not checkout_firing(), "no CheckoutUnavailable before Stripe is paused",
                        timeout=90, interval=1)
    # Stripe re-checked every 10 s (app_extra_env), its 2 s timeout, the alert's `for`. app2's
    # slots restarted in the test before: their workers check Stripe from their start (gunicorn's
    # post_worker_init), so none answers "unknown" to the probe mid-outage and resets the `for`.
    subprocess.run(["docker", "pause", stripe], check=True, capture_output=True)
    try:
        paused = time.monotonic()
        scenario.wait_until(lambda: checkout_firing() >= apps, f"CheckoutUnavailable firing for {sorted(apps)}",
                            timeout=12 + ALERT_FOR + MARGIN, interval=1)
        print(f"\nCheckoutUnavailable firing for every app host {time.monotonic() - paused:.0f} s after Stripe paused")
        public = query(mon, 'probe_success{job="blackbox"}')
        assert public and all(float(series["value"][1]) == 1 for series in public), public
        assert not firing(mon, "SiteDown")
    finally:
        subprocess.run(["docker", "unpause", stripe], check=True, capture_output=True)
    scenario.wait_until(lambda: not checkout_firing(), "CheckoutUnavailable resolved", timeout=60, interval=1)


def redis_admin(redis: Host, *command: str) -> str:
    args = " ".join(shlex.quote(part) for part in command)
    return redis.check_output(f"REDISCLI_AUTH={shlex.quote(REDIS_ADMIN_PASSWORD)} "
                              f"redis-cli -s {REDIS_SOCKET} --user admin --no-auth-warning {args}")


def used_ratio(redis: Host) -> float:
    info = dict(line.split(":", 1) for line in redis_admin(redis, "INFO", "memory").split() if ":" in line)
    return int(info["used_memory"]) / int(info["maxmemory"])


def test_filling_redis_past_the_threshold_fires_the_memory_alert(mon: Host) -> None:
    spec = scenario.hosts_of("redis")[0]
    name, redis = name_of(spec), testinfra.get_host(spec)
    original = redis_admin(redis, "CONFIG", "GET", "maxmemory").split()[1]
    used = int(dict(line.split(":", 1) for line in redis_admin(redis, "INFO", "memory").split()
                    if ":" in line)["used_memory"])
    # A ceiling 16 MiB above what Redis holds now, then 1 MiB values until
    # more than 85 % of it is used: the alert's threshold is 80 %.
    keys = []
    try:
        redis_admin(redis, "CONFIG", "SET", "maxmemory", str(used + 16 * 1024 * 1024))
        while used_ratio(redis) <= 0.85:
            key = f"{FILL_KEYS}{len(keys)}"
            keys.append(key)
            redis_admin(redis, "SETRANGE", key, str(1024 * 1024 - 1), "x")
            assert len(keys) < 32, "Redis does not fill up"
        scenario.wait_until(lambda: any(a["instance"] == name for a in firing(mon, "RedisMemoryHigh")),
                            f"RedisMemoryHigh firing for {name}", timeout=ALERT_FOR + MARGIN, interval=1)
    finally:
        if keys:
            redis_admin(redis, "DEL", *keys)
        redis_admin(redis, "CONFIG", "SET", "maxmemory", original)
    assert redis_admin(redis, "CONFIG", "GET", "maxmemory").split()[1] == original
    scenario.wait_until(lambda: not any(a["instance"] == name for a in firing(mon, "RedisMemoryHigh")),
                        "RedisMemoryHigh resolved", timeout=60, interval=1)


def monitoring_ports() -> list[tuple[str, int]]:
    """(host, port) of every exporter and of Prometheus/Alertmanager, where they run."""
    ports = [(host, 9100) for host in AnsibleRunner(str(scenario.inventory_dir())).get_hosts("all")]
    ports += [(host, 9113) for host in names_of("lb")]
    ports += [(host, port) for host in names_of("monitoring") for port in (9090, 9093, 9115, 9121, 9187)]
    return ports


def probe_all(client: Host, targets: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """tcp_probe's exit status for every (host, port), all at once from `client` (a drop costs its timeout once)."""
    probes = " ".join(
        f"(timeout 3 bash -c 'exec 3<>/dev/tcp/{target}/{port}' 2>/dev/null; echo \"{target} {port} $?\") &"
        for target, port in targets)
    out = client.check_output(f"{probes} wait")
    results = {(target, int(port)): int(rc) for target, port, rc in (line.split() for line in out.splitlines())}
    assert set(results) == set(targets), out
    return results


@pytest.mark.parametrize("client", ["lb", "app"])
def test_other_hosts_cannot_reach_exporters_or_prometheus(client: str) -> None:
    spec = scenario.hosts_of(client)[0]
    name, host = name_of(spec), testinfra.get_host(spec)
    reached = probe_all(host, [(target, port) for target, port in monitoring_ports() if target != name])
    assert all(rc == TCP_DROPPED for rc in reached.values()), \
        {k: rc for k, rc in reached.items() if rc != TCP_DROPPED}


def test_the_monitoring_host_reaches_every_exporter(mon: Host) -> None:
    targets = [(target, port) for target, port in monitoring_ports() if port in (9100, 9113)]
    targets += [(name, SLOT_PORTS[fleet.state(name)["active"]]) for name in names_of("app")]
    # Prometheus and Alertmanager on mon1's own loopback.
    targets += [("127.0.0.1", 9090), ("127.0.0.1", 9093)]
    reached = probe_all(mon, targets)
    assert all(rc == 0 for rc in reached.values()), {k: rc for k, rc in reached.items() if rc != 0}
