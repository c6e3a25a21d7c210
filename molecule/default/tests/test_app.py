"""The app role on staging1: blue runs the scenario's release, green is idle.

Checks go through `docker exec` into the test host (testinfra's docker
backend), and from this machine for the firewall. The entry points that
playbooks/deploy.yml uses are driven with ansible-playbook against Molecule's
inventory (molecule/default/entry_points.yml).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shlex
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import testinfra.host

from tests.support import scenario
from tests.support.scenario import private_address

testinfra_hosts = scenario.hosts_of("app")

VERSION = "0.1.0-molecule"
BLUE, GREEN = 8001, 8002
APP_UID = 10001
SECRETS_DIR = "/etc/paydrop/secrets"
ENV_FILE = "/etc/paydrop/app.env"
STATE_FILE = "/etc/ansible/facts.d/paydrop_release.fact"
ASSETS_DIR = "/var/lib/paydrop/assets"
ACCEL_PREFIX = "/_protected/"
SERVER_NAME = "staging.paydrop.example"
SECRET_KEY = "test-only-secret-key-for-molecule-0123456789"
# TEST-ONLY values from molecule/default/host_vars/staging1.yml.
SECRET_VALUES = [
    "test-only-app-password",
    "test-only-redis-app-password",
    "test-only-secret-key-for-molecule-0123456789",
    "sk_test_test-only",
    "whsec_test-only",
]
SECRET_SETTINGS = [
    "SECRET_KEY", "DATABASE_URL", "DATABASE_REPLICA_URL", "REDIS_URL", "STRIPE_SECRET_KEY",
    "STRIPE_WEBHOOK_SECRET", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY", "SMTP_PASSWORD",
]
SCENARIO_DIR = Path(__file__).resolve().parent.parent
ENTRY_POINTS = SCENARIO_DIR / "entry_points.yml"


def inspect(host: testinfra.host.Host, container: str) -> dict[str, Any]:
    return json.loads(host.check_output("docker inspect %s", container))[0]


def get(host: testinfra.host.Host, port: int, path: str) -> tuple[int, dict[str, str], Any]:
    """GET from inside the host (its own address: admitted as a monitoring host)."""
    out = host.check_output("curl -sS -i --max-time 10 http://%s:%s%s", private_address(host), str(port), path)
    head, _, body = out.replace("\r\n", "\n").partition("\n\n")
    status = int(head.split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head.splitlines()[1:])}
    try:
        return status, headers, json.loads(body)
    except ValueError:
        return status, headers, body


def entry_point(name: str, *args: str, **extra: Any) -> tuple[int, str]:
    """Run one entry point; its exit code and its output (stdout and stderr) on one line."""
    extra_vars = {"paydrop_entry_point": name, **extra}
    result = scenario.playbook(ENTRY_POINTS, "-e", json.dumps(extra_vars), *args, timeout=600)
    return result.returncode, scenario.output(result)


# --- the blue slot ----------------------------------------------------------------------------


def test_blue_runs_the_release_on_the_host_network(host: testinfra.host.Host) -> None:
    blue = inspect(host, "paydrop-blue")
    assert blue["State"]["Running"]
    assert blue["Config"]["Image"] == f"paydrop:{VERSION}"
    assert blue["Config"]["Labels"]["org.paydrop.release"] == VERSION
    assert blue["HostConfig"]["NetworkMode"] == "host"
    assert blue["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert blue["HostConfig"]["ReadonlyRootfs"] is True
    assert blue["HostConfig"]["CapDrop"] == ["ALL"]
    assert blue["Config"]["User"] == f"{APP_UID}:{APP_UID}"
    assert f"GUNICORN_BIND={private_address(host)}:{BLUE}" in blue["Config"]["Env"]
    # The processes themselves, not just the configuration.
    assert host.check_output("docker exec paydrop-blue id -u") == str(APP_UID)
    listening = host.check_output("ss -Hltn 'sport = :%s' | awk '{print $4}'", str(BLUE)).split()
    assert listening == [f"{private_address(host)}:{BLUE}"]


def test_blue_is_healthy_for_docker(host: testinfra.host.Host) -> None:
    def settled() -> str:
        status = inspect(host, "paydrop-blue")["State"]["Health"]["Status"]
        return "" if status == "starting" else status
    assert scenario.wait_until(settled, "paydrop-blue's health check", timeout=60, interval=2) == "healthy"


def test_slots_are_hardened(host: testinfra.host.Host) -> None:
    blue = inspect(host, "paydrop-blue")
    assert blue["HostConfig"]["SecurityOpt"] == ["no-new-privileges"]
    assert blue["HostConfig"]["Tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=64m"}
    # gunicorn's graceful timeout fits in it: `docker stop` drains, then kills.
    assert blue["Config"]["StopTimeout"] == 35
    # In effect for the process itself, not only in the configuration.
    status = host.check_output("docker exec paydrop-blue cat /proc/1/status")
    assert "NoNewPrivs:\t1" in status
    assert "CapEff:\t0000000000000000" in status
    mounts = host.check_output("docker exec paydrop-blue cat /proc/mounts").splitlines()
    tmp = [line.split() for line in mounts if line.split()[1] == "/tmp"]
    assert tmp and tmp[0][2] == "tmpfs" and {"nosuid", "nodev"} <= set(tmp[0][3].split(","))
    root = [line.split() for line in mounts if line.split()[1] == "/"]
    assert "ro" in root[0][3].split(",")


def test_green_does_not_run(host: testinfra.host.Host) -> None:
    assert host.run("docker inspect paydrop-green").rc != 0


def test_release_state_names_blue_active(host: testinfra.host.Host) -> None:
    state = host.file(STATE_FILE)
    assert (state.user, state.group, state.mode) == ("root", "root", 0o644)
    assert json.loads(state.content_string) == {
        "active": "blue", "previous": None, "slots": {"blue": VERSION, "green": None}}


# --- settings and secrets ----------------------------------------------------------------------


def test_secrets_are_files_for_the_app_only(host: testinfra.host.Host) -> None:
    directory = host.file(SECRETS_DIR)
    assert (directory.user, directory.gid, directory.mode) == ("root", APP_UID, 0o750)
    names = host.check_output("ls %s", SECRETS_DIR).split()
    assert "postgres-ca.crt" in names and "secret-key" in names and "database-url" in names
    for name in names:
        secret = host.file(f"{SECRETS_DIR}/{name}")
        assert (secret.user, secret.gid, secret.mode) == ("root", APP_UID, 0o440), name


def test_secrets_stay_out_of_the_environment(host: testinfra.host.Host) -> None:
    env_file = host.file(ENV_FILE)
    assert (env_file.user, env_file.group, env_file.mode) == ("root", "root", 0o600)
    inspected = host.check_output("docker inspect paydrop-blue")
    process_env = host.check_output("docker exec paydrop-blue cat /proc/1/environ | tr '\\0' '\\n'")
    for text in (env_file.content_string, inspected, process_env):
        for value in SECRET_VALUES:
            assert value not in text
    env = dict(line.split("=", 1) for line in process_env.splitlines() if "=" in line)
    for setting in SECRET_SETTINGS:
        assert setting not in env
        assert env[f"{setting}_FILE"].startswith("/run/secrets/paydrop/")
    mounts = {m["Destination"]: m for m in inspect(host, "paydrop-blue")["Mounts"]}
    assert mounts["/run/secrets/paydrop"]["RW"] is False


def test_database_url_verifies_the_server_by_its_address(host: testinfra.host.Host) -> None:
    url = host.check_output("cat %s/database-url", SECRETS_DIR)
    assert f"@{private_address(host)}:5432/paydrop?" in url
    assert "sslmode=verify-full" in url
    assert "sslrootcert=/run/secrets/paydrop/postgres-ca.crt" in url


def test_assets_directory_is_shared_with_nginx(host: testinfra.host.Host) -> None:
    # staging1 is also a load balancer: nginx (www-data) serves X-Accel-Redirect files.
    assets = host.file("/var/lib/paydrop/assets")
    assert (assets.uid, assets.group, assets.mode) == (APP_UID, "www-data", 0o2750)
    env = host.file(ENV_FILE).content_string.splitlines()
    assert "DOWNLOAD_ACCEL_PREFIX=/_protected/" in env
    assert "STORAGE_LOCAL_DIR=/var/lib/paydrop/assets" in env


def psql(host: testinfra.host.Host, query: str) -> str:
    """One statement on staging1's own database (it is the primary too); the first row."""
    return host.check_output(
        "runuser -u postgres -- psql -X -At -v ON_ERROR_STOP=1 -d paydrop -c %s", query).splitlines()[0]


def test_a_file_the_app_stored_is_handed_to_nginx_and_served_by_it(host: testinfra.host.Host) -> None:
    """Local storage end to end: `paydrop products add` stores the file; for a paid order's
    link the slot answers with an empty body and X-Accel-Redirect naming the stored key, and
    through the load balancer the shopper gets exactly the stored bytes (nginx read them from
    the assets directory the app wrote), never the internal header; /_protected/ is not public."""
    from itsdangerous import URLSafeSerializer
    from paydrop.shop import grants

    slug = f"accel-probe-{uuid.uuid4().hex[:8]}"
    upload = f"{ASSETS_DIR}/upload-{slug}.bin"
    host.check_output(f"head -c 300000 /dev/urandom > {upload} && chown {APP_UID} {upload}")
    stored = ""
    try:
        host.check_output(f"docker exec paydrop-blue paydrop products add --slug {slug} "
                          f"--title 'X-Accel probe' --price 1.00 --file {upload}")
        key = psql(host, f"SELECT asset_key FROM products WHERE slug = '{slug}'")  # noqa: S608
        stored = f"{ASSETS_DIR}/{key}"
        assert host.file(stored).exists, f"the app stored nothing at {stored}"
        order_id = psql(host, (
            "INSERT INTO orders (product_id, amount, currency, email, checkout_mode, status, paid_at) "  # noqa: S608
            "SELECT id, price_amount, currency, 'accel@paydrop.test', 'payment_intent', 'paid', now() "
            f"FROM products WHERE slug = '{slug}' RETURNING id"))
        grant_id = psql(host, (
            "INSERT INTO download_grants (order_id, expires_at, max_downloads) "  # noqa: S608
            f"VALUES ('{order_id}', now() + interval '1 day', 5) RETURNING id"))
        token = URLSafeSerializer(SECRET_KEY, salt=grants._SALT).dumps(grant_id)

        direct = host.check_output(
            "curl -sS -D - -o /tmp/accel-direct.bin -H 'Host: %s' -H 'X-Forwarded-Proto: https' "
            "http://%s:%s/downloads/%s", SERVER_NAME, private_address(host), str(BLUE), token)
        assert direct.split()[1] == "200", direct
        assert f"x-accel-redirect: {ACCEL_PREFIX}{quote(key)}" in direct.lower().replace("\r", "")
        assert host.file("/tmp/accel-direct.bin").size == 0

        edge = host.check_output(
            "curl -sS -k -D - -o /tmp/accel-edge.bin --resolve %s:443:127.0.0.1 https://%s/downloads/%s",
            SERVER_NAME, SERVER_NAME, token)
        assert edge.split()[1] == "200", edge
        assert "x-accel-redirect" not in edge.lower()
        assert "x-frame-options: deny" in edge.lower()
        assert host.check_output("sha256sum < /tmp/accel-edge.bin") == host.check_output(f"sha256sum < {stored}")
        assert host.check_output("sha256sum < /tmp/accel-edge.bin") == host.check_output(f"sha256sum < {upload}")
        assert psql(host, f"SELECT download_count FROM download_grants WHERE id = '{grant_id}'") == "2"  # noqa: S608

        hidden = host.check_output(
            "curl -sS -k -o /dev/null -w '%%{http_code}' --resolve %s:443:127.0.0.1 https://%s%s%s",
            SERVER_NAME, SERVER_NAME, ACCEL_PREFIX, quote(key))
        assert hidden == "404"
    finally:
        host.run(f"rm -f {upload} /tmp/accel-direct.bin /tmp/accel-edge.bin")
        host.run("runuser -u postgres -- psql -X -q -d paydrop -c %s",
                 "DELETE FROM download_grants WHERE order_id IN (SELECT o.id FROM orders o JOIN products p "
                 f"ON p.id = o.product_id WHERE p.slug = '{slug}'); "
                 f"DELETE FROM orders WHERE product_id IN (SELECT id FROM products WHERE slug = '{slug}'); "
                 f"DELETE FROM products WHERE slug = '{slug}'")
        if stored:
            host.run(f"rm -f {stored}")


STATIC_CACHE = "/var/cache/nginx/paydrop-static"
LONG_CACHE = "public, max-age=31536000, immutable"
STANDIN_BODY = "/* the other release's stylesheet */"
STATIC_STANDIN = r'''
import http.server, sys
bind, port, names = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        # A cookie reaching the app for a static file would be a leak: not found then.
        known = self.path in names and "Cookie" not in self.headers
        body = b"/* the other release's stylesheet */\n" if known else b""
        self.send_response(200 if known else 404)
        if known:
            self.send_header("Cache-Control", "public, max-age=31536000, immutable")
        self.send_header("Content-Type", "text/css")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((bind, port), Handler).serve_forever()
'''


@dataclass
class EdgeAnswer:
    status: int
    headers: dict[str, str]
    body: str
    log: dict[str, Any]  # the request's line in nginx's access log


def through_the_edge(host: testinfra.host.Host, path: str, *headers: str) -> EdgeAnswer:
    """GET through the load balancer (from inside the host), with its access-log line."""
    request_id = f"static-probe-{uuid.uuid4().hex}"
    argv = ["curl", "-sS", "-k", "-i", "--max-time", "15", "--resolve", f"{SERVER_NAME}:443:127.0.0.1",
            "-H", f"X-Request-ID: {request_id}"]
    for header in headers:
        argv += ["-H", header]
    argv.append(f"https://{SERVER_NAME}{path}")
    out = host.check_output(" ".join(shlex.quote(arg) for arg in argv))
    head, _, body = out.replace("\r\n", "\n").partition("\n\n")
    answer_headers = {k.strip().lower(): v.strip()
                      for k, _, v in (line.partition(":") for line in head.splitlines()[1:])}
    line = host.check_output("grep -F %s /var/log/nginx/access.log", f'"request_id":"{request_id}"')
    return EdgeAnswer(int(head.split()[1]), answer_headers, body, json.loads(line))


@contextmanager
def other_release_on_green(host: testinfra.host.Host, names: list[str]) -> Iterator[None]:
    """A stand-in for another release in the green slot: it knows the static files `names`."""
    assert not scenario.listener_pids(host, GREEN), "the green slot port is taken"
    script = "/tmp/paydrop-static-standin.py"  # noqa: S108 - inside the throwaway test host
    host.check_output(f"echo {base64.b64encode(STATIC_STANDIN.encode()).decode()} | base64 -d > {script}")
    unit = "paydrop-static-standin"
    host.run("systemctl reset-failed %s", unit)
    host.check_output("systemd-run --unit %s python3 %s %s %s %s",
                      unit, script, private_address(host), str(GREEN), ",".join(names))
    try:
        scenario.wait_for_unit_listening(host, unit, GREEN)
        yield
    finally:
        host.run("systemctl stop %s", unit)


def cache_file(path: str) -> str:
    """Where nginx keeps `path` (proxy_cache_key $uri, levels=1:2)."""
    digest = hashlib.md5(path.encode()).hexdigest()  # noqa: S324 - nginx's cache file name
    return f"{STATIC_CACHE}/{digest[-1]}/{digest[-3:-1]}/{digest}"


def switch_to(color: str) -> None:
    run = scenario.playbook(SCENARIO_DIR / "edge-switch.yml", "-e", f"nginx_switch_color={color}", timeout=600)
    assert run.returncode == 0, scenario.output(run)[-3000:]


def test_static_files_come_from_nginxs_cache_for_both_releases_across_a_switch(
        host: testinfra.host.Host) -> None:
    """/static/ through the load balancer: the app serves each content-hashed file once and
    nginx's cache from then on, with a year of immutable caching and no cookie either way;
    a name only the other colour knows (another release's page, open across a switch or a
    rollback) is fetched from that colour, before and after switching, and stays cached."""
    names = json.loads(host.check_output(
        "docker exec paydrop-blue python -c %s",
        "import json; from paydrop import static_files; print(json.dumps(static_files.manifest()))"))
    css, js = f"/static/{names['css/shop.css']}", f"/static/{names['js/checkout.js']}"
    # What earlier runs cached is forgotten: each name's first fetch below is a miss.
    host.check_output(f"find {STATIC_CACHE} -type f -delete")

    cookie = "Cookie: paydrop_session=a-shoppers-session"
    first, *again = [through_the_edge(host, css, cookie) for _ in range(3)]
    assert (first.status, first.log["cache"]) == (200, "MISS"), first.log
    assert first.body == get(host, BLUE, css)[2]
    for answer in (first, *again):
        assert answer.headers["cache-control"] == LONG_CACHE
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert "set-cookie" not in answer.headers
    for answer in again:  # from nginx's cache; gunicorn is not asked
        assert (answer.status, answer.log["cache"], answer.log["upstream_addr"]) in {
            (200, "HIT", ""), (200, "HIT", "-")}, answer.log
        assert answer.body == first.body
    unknown = "/static/css/shop.0000000000.css"
    assert through_the_edge(host, unknown).status == 404  # green stopped: still a 404

    # nginx takes turns between the colours: of several names, some are asked of the colour
    # that does not know them first (upstream_status "404, 200"), and must still be found.
    others = [f"/static/css/shop.{uuid.uuid4().hex[:10]}.css" for _ in range(6)]
    with other_release_on_green(host, others):
        assert through_the_edge(host, unknown).status == 404  # neither colour knows it
        # Blue active: blue does not know these names, green (the other release) does.
        before = [through_the_edge(host, other, cookie) for other in others]
        for answer in before:
            assert (answer.status, answer.body, answer.log["cache"]) == (200, STANDIN_BODY, "MISS"), answer
            assert answer.log["upstream_addr"].endswith(f":{GREEN}"), answer.log
        assert "404, 200" in {answer.log["upstream_status"] for answer in before}, [a.log for a in before]
        switch_to("green")
        try:
            # Green active: a name of blue's release, not in the cache, comes from blue.
            old = []
            for _ in range(4):
                host.check_output("rm -f %s", cache_file(js))
                old.append(through_the_edge(host, js))
            for answer in old:
                assert (answer.status, answer.log["cache"]) == (200, "MISS"), answer.log
                assert answer.body == get(host, BLUE, js)[2]
                assert answer.log["upstream_addr"].endswith(f":{BLUE}"), answer.log
            assert "404, 200" in {answer.log["upstream_status"] for answer in old}, [a.log for a in old]
            assert {through_the_edge(host, other).log["cache"] for other in others} == {"HIT"}
        finally:
            switch_to("blue")
    # Rolled back, with the other release gone: its files are still served from the cache.
    for other in others:
        after = through_the_edge(host, other)
        assert (after.status, after.body, after.log["cache"]) == (200, STANDIN_BODY, "HIT"), after.log


# --- what the app answers ----------------------------------------------------------------------


def test_blue_is_ready(host: testinfra.host.Host) -> None:
    status, headers, body = get(host, BLUE, "/api/health/ready")
    assert status == 200, body
    assert body["status"] == "ready"
    assert headers["x-release"] == VERSION


def test_health_reports_stripe_down_without_losing_readiness(host: testinfra.host.Host) -> None:
    # Stripe points at a port nothing answers (host_vars): reported, never fatal.
    status, _, body = get(host, BLUE, "/api/health")
    assert status == 200, body
    assert body["status"] == "degraded"
    assert body["version"] == VERSION
    assert body["environment"] == "staging"
    assert body["checks"]["database"] == "healthy"
    assert body["checks"]["redis"] == "healthy"
    assert body["checks"]["migrations"] == "healthy"
    assert body["checks"]["stripe"] in ("unhealthy", "unknown")


def test_metrics_answer_the_monitoring_host(host: testinfra.host.Host) -> None:
    # staging1 is the monitoring host too: its address is in METRICS_ALLOWED_NETWORKS.
    get(host, BLUE, "/api/health/ready")
    status, headers, body = get(host, BLUE, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=")
    assert "# TYPE paydrop_http_requests_total counter" in body
    assert 'paydrop_http_requests_total{endpoint="health.ready",method="GET",status="200"}' in body


def test_metrics_refuse_a_source_outside_the_monitoring_networks(host: testinfra.host.Host) -> None:
    # Another loopback address of the same host: not in METRICS_ALLOWED_NETWORKS
    # (the host's own address and 127.0.0.1). Docker's bridge address would not
    # do: its masquerade rule rewrites the source to an allowed one.
    curl = "curl -sS -o /dev/null -w '%%{http_code}' --max-time 10 --interface %s http://%s:%s/metrics"
    assert host.check_output(curl, "127.0.0.9", private_address(host), str(BLUE)) == "404"
    assert host.check_output(curl, private_address(host), private_address(host), str(BLUE)) == "200"


def test_migrations_ran(host: testinfra.host.Host) -> None:
    out = host.check_output("docker exec paydrop-blue paydrop db current")
    # "schema version N (this release ships up to N)"
    words = out.replace("(", " ").replace(")", " ").split()
    current, shipped = int(words[2]), int(words[-1])
    assert current == shipped > 0, out


# --- firewall ---------------------------------------------------------------------------------


def test_slot_ports_admit_only_load_balancers_and_monitoring(host: testinfra.host.Host) -> None:
    rules = host.file("/etc/nftables.d/app.nft").content_string
    for port in (BLUE, GREEN):
        assert f"tcp dport {port} ip saddr {{ {private_address(host)} }} accept" in rules
    # This machine is in no inventory group: its packets are dropped (a timeout,
    # not a refusal), while SSH on the same address answers.
    with pytest.raises(TimeoutError), socket.create_connection((private_address(host), BLUE), timeout=3):
        pass
    with socket.create_connection((private_address(host), 22), timeout=3):
        pass


# --- entry points of playbooks/deploy.yml -----------------------------------------------------


@pytest.fixture(scope="module")
def green_started(host: testinfra.host.Host) -> Iterator[dict[str, Any]]:
    """Starts green with `slot`; yields blue as it was before (it must stay so)."""
    blue_before = inspect(host, "paydrop-blue")
    rc, output = entry_point("slot", app_slot_color="green", app_slot_version=VERSION)
    assert rc == 0, output[-3000:]
    yield blue_before
    host.run("docker rm -f paydrop-green")


def test_slot_starts_the_idle_colour_and_leaves_the_other(
    host: testinfra.host.Host, green_started: dict[str, Any]
) -> None:
    green = inspect(host, "paydrop-green")
    assert green["Config"]["Image"] == f"paydrop:{VERSION}"
    status, headers, _ = get(host, GREEN, "/api/health/ready")
    assert (status, headers["x-release"]) == (200, VERSION)
    blue = inspect(host, "paydrop-blue")
    assert blue["Id"] == green_started["Id"]
    assert blue["State"]["StartedAt"] == green_started["State"]["StartedAt"]
    # `slot` does not record anything: the deploy playbook writes the state.
    assert json.loads(host.file(STATE_FILE).content_string)["active"] == "blue"


def test_slot_recreates_a_slot_whose_secrets_changed(
    host: testinfra.host.Host, green_started: dict[str, Any]
) -> None:
    secret = f"{SECRETS_DIR}/smtp-password"
    # A byte-exact copy to put back (the file may be empty: no trailing newline
    # may be added, or the next run of the role would see a changed secret).
    backup = "/root/smtp-password.before-test"
    host.check_output("cp -p %s %s", secret, backup)
    green_before = inspect(host, "paydrop-green")
    host.check_output("chmod u+w %s && echo test-only-changed > %s && chmod u-w %s", secret, secret, secret)
    try:
        rc, output = entry_point("slot", app_slot_color="green", app_slot_version=VERSION)
    finally:
        host.check_output("cp -p %s %s && rm -f %s", backup, secret, backup)
    assert rc == 0, output[-3000:]
    green = inspect(host, "paydrop-green")
    assert green["Id"] != green_before["Id"]
    assert green["Config"]["Labels"]["org.paydrop.config"] != green_before["Config"]["Labels"]["org.paydrop.config"]
    # The restored file gives back the fingerprint blue was started with.
    assert inspect(host, "paydrop-blue")["Id"] == green_started["Id"]


def test_stop_slot_refuses_the_active_colour(host: testinfra.host.Host, green_started: dict[str, Any]) -> None:
    rc, output = entry_point("stop_slot", app_slot_color="blue")
    assert rc != 0
    assert "blue is the active colour" in output
    assert inspect(host, "paydrop-blue")["State"]["Running"]


def test_stop_slot_removes_the_idle_colour(host: testinfra.host.Host, green_started: dict[str, Any]) -> None:
    rc, output = entry_point("stop_slot", app_slot_color="green")
    assert rc == 0, output[-3000:]
    assert host.run("docker inspect paydrop-green").rc != 0
    assert get(host, BLUE, "/api/health/ready")[0] == 200


def test_slot_that_never_gets_ready_fails_with_its_logs(host: testinfra.host.Host) -> None:
    # An address the host does not have: gunicorn cannot bind and exits.
    blue_before = inspect(host, "paydrop-blue")
    try:
        rc, output = entry_point("slot", app_slot_color="green", app_slot_version=VERSION,
                                 app_bind_address="192.0.2.1", app_ready_timeout="10")
    finally:
        host.run("docker rm -f paydrop-green")
    assert rc != 0
    assert "paydrop-green (release 0.1.0-molecule) did not answer 200" in output
    assert "Cannot assign requested address" in output  # gunicorn's own words, from the log lines
    assert inspect(host, "paydrop-blue")["Id"] == blue_before["Id"]
    assert get(host, BLUE, "/api/health/ready")[0] == 200


def test_missing_image_names_the_archive_to_build(host: testinfra.host.Host) -> None:
    rc, output = entry_point("slot", app_slot_color="green", app_slot_version="0.0.0-nowhere")
    assert rc != 0
    assert "build/images/paydrop-0.0.0-nowhere.tar" in output
    assert "make image-archive VERSION=0.0.0-nowhere" in output
    assert host.run("docker inspect paydrop-green").rc != 0


# --- refusals before anything changes ---------------------------------------------------------


# The role's first tasks (tasks/assert.yml, which site.yml runs before anything
# else) are driven on their own, with the one setting under test changed.


def test_slots_that_would_exhaust_the_database_connections_are_refused() -> None:
    rc, output = entry_point("assert", app_database_pool_size=100)
    assert rc != 0
    assert ("staging1: 2 slots × 2 workers × pool 100 × 1 app hosts = 400 connections, "
            "more than max_connections 100 minus the reserve of 20 (80)") in output
    # The staging settings themselves fit.
    rc, output = entry_point("assert")
    assert rc == 0, output[-3000:]


@pytest.mark.parametrize("name", ["STRIPE_SECRET_KEY", "DATABASE_URL_FILE", "GUNICORN_BIND", "lower_case"])
def test_secret_and_reserved_names_are_refused_in_app_extra_env(name: str) -> None:
    rc, output = entry_point("assert", app_extra_env={name: "x"})
    assert rc != 0
    assert "staging1: app_extra_env names must be upper-case environment variables" in output
    assert f"Got ['{name}']" in output


def test_no_secret_reaches_ansibles_output(host: testinfra.host.Host) -> None:
    # Verbose, as an operator debugging a run would be: every task that handles
    # a secret must still hide it.
    rc, output = entry_point("slot", "-vv", app_slot_color="green", app_slot_version=VERSION)
    try:
        assert rc == 0, output[-3000:]
        for value in SECRET_VALUES:
            assert value not in output
    finally:
        host.run("docker rm -f paydrop-green")
