"""The public edge on staging1: nginx from the `Load balancer` play.

The app's real slots are stopped while these run (app_slots_stopped), so the upstream answers 502
unless a test starts the small stand-in below on a slot port. HTTP and TLS
checks connect from this machine to the test host's address on the scenario's
Docker network, naming the host by --resolve/-servername as a browser would.
The rate-limit check runs inside the host from a fresh loopback address, so a
second run within a minute starts from an empty counter.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra.host

from tests.support import scenario
from tests.support.scenario import can_connect
from tests.support.scenario import private_address as address

testinfra_hosts = scenario.hosts_of("lb")

SERVER_NAME = "staging.paydrop.example"
SCENARIO_DIR = Path(__file__).resolve().parent.parent
UPSTREAM_CONF = "/etc/nginx/conf.d/paydrop-upstream.conf"
SITE_CONF = "/etc/nginx/conf.d/paydrop.conf"
ACCESS_LOG = "/var/log/nginx/access.log"
ERROR_LOG = "/var/log/nginx/error.log"
SLOT_PORTS = {"blue": 8001, "green": 8002}
CSP = (
    "default-src 'self'; script-src 'self' https://js.stripe.com; "
    "frame-src https://js.stripe.com https://hooks.stripe.com; "
    "connect-src 'self' https://api.stripe.com; img-src 'self' data:; style-src 'self'; "
    "object-src 'none'; base-uri 'self'; form-action 'self' https://checkout.stripe.com; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "strict-transport-security": "max-age=63072000",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "strict-origin-when-cross-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=(self)",
    "cross-origin-opener-policy": "same-origin",
    "content-security-policy": CSP,
}


# --- helpers -------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, list[str]]
    body: str

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower(), [])
        assert len(values) == 1, f"{name}: {values}"
        return values[0]


def parse_curl(output: str) -> Answer:
    """`curl -i` output of one response (no redirects followed)."""
    head, _, body = output.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    status = int(lines[0].split()[1])
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return Answer(status, headers, body)


@pytest.fixture(scope="module")
def ca_file(host: testinfra.host.Host, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The self-signed certificate, so curl verifies it instead of skipping checks."""
    path = tmp_path_factory.mktemp("edge") / "staging.crt"
    path.write_text(host.file("/etc/nginx/tls/paydrop.crt").content_string)
    return path


class Edge:
    """curl from this machine to the test host, naming it as a browser would."""

    def __init__(self, addr: str, ca_file: Path) -> None:
        self.addr = addr
        self.ca_file = ca_file

    def __call__(self, method: str, path: str, scheme: str = "https", host_header: str | None = None,
                 headers: dict[str, str] | None = None, data: bytes | None = None) -> Answer:
        port = 443 if scheme == "https" else 80
        argv = ["curl", "-sS", "-i", "--max-time", "15", "-X", method,
                "--resolve", f"{SERVER_NAME}:{port}:{self.addr}", "--cacert", str(self.ca_file)]
        for name, value in (headers or {}).items():
            argv += ["-H", f"{name}: {value}"]
        if host_header:
            argv += ["-H", f"Host: {host_header}"]
        if data is not None:
            argv += ["--data-binary", "@-"]
        argv.append(f"{scheme}://{SERVER_NAME}{path}")
        done = subprocess.run(argv, input=data, capture_output=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr.decode()
        return parse_curl(done.stdout.decode(errors="replace"))


@pytest.fixture(scope="module")
def edge(host: testinfra.host.Host, ca_file: Path) -> Edge:
    return Edge(address(host), ca_file)


def s_client(host: testinfra.host.Host, *options: str) -> subprocess.CompletedProcess[str]:
    """One TLS handshake from this machine; SECLEVEL=0 so the client offers what it is told."""
    argv = ["openssl", "s_client", "-connect", f"{address(host)}:443", "-servername", SERVER_NAME,
            *options]
    return subprocess.run(argv, input="", capture_output=True, text=True, timeout=20, check=False)


def playbook(name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run one of this scenario's playbooks against its inventory, as molecule would."""
    return scenario.playbook(SCENARIO_DIR / name, *extra, timeout=600)


def recap_changed(run: subprocess.CompletedProcess[str]) -> int:
    return scenario.recap_changed(run, "staging1")


def master_and_workers(host: testinfra.host.Host) -> tuple[str, set[str]]:
    master = host.file("/run/nginx.pid").content_string.strip()
    workers = set(host.check_output("pgrep -P %s", master).split())
    return master, workers


def etc_nginx_checksums(host: testinfra.host.Host) -> dict[str, str]:
    out = host.check_output("find /etc/nginx -type f -exec sha256sum {} +")
    return {path: digest for digest, path in (line.split(None, 1) for line in out.splitlines())}


FAKE_APP = r'''
import hashlib, http.server, json, sys, time
color, bind, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if color == "blue" and self.path.startswith("/blue-refuses/"):
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/slow/"):
            time.sleep(float(self.path.rsplit("/", 1)[1]))
        out = json.dumps({"color": color, "path": self.path,
                          "headers": {k.lower(): v for k, v in self.headers.items()},
                          "body_sha256": hashlib.sha256(body).hexdigest()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.send_header("X-Frame-Options", "SAMEORIGIN")
        self.send_header("X-Request-ID", "from-the-app")
        if self.path.startswith("/public/"):  # what the app says of an anonymous catalog page
            self.send_header("Cache-Control", "public, max-age=0, s-maxage=60")
            if self.path.endswith("/sets-cookie"):
                self.send_header("Set-Cookie", "paydrop_csrf=x; Secure; HttpOnly")
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = answer
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((bind, port), Handler).serve_forever()
'''


@contextmanager
def fake_app(host: testinfra.host.Host) -> Iterator[None]:
    """Stand-ins for both slots on staging1's private address: JSON echo of what arrived."""
    script = "/tmp/paydrop-fake-app.py"  # noqa: S108 - inside the throwaway test host
    encoded = base64.b64encode(FAKE_APP.encode()).decode()
    host.check_output(f"echo {encoded} | base64 -d > {script}")
    units = []
    for color, port in SLOT_PORTS.items():
        assert not scenario.listener_pids(host, port), f"slot port {port} is already taken"
        unit = f"paydrop-fake-app-{color}"
        host.run("systemctl reset-failed %s", unit)
        host.check_output("systemd-run --unit %s python3 %s %s %s %s",
                          unit, script, color, address(host), str(port))
        units.append(unit)
    try:
        for unit, port in zip(units, SLOT_PORTS.values(), strict=True):
            scenario.wait_for_unit_listening(host, unit, port)
        yield
    finally:
        for unit in units:
            host.run("systemctl stop %s", unit)


@pytest.fixture(scope="module", autouse=True)
def app_slots_stopped(host: testinfra.host.Host) -> Iterator[None]:
    """These checks are about nginx alone: the app role's real slots (which hold
    the slot ports) stop for this module and start again after it, ready."""
    slots = host.check_output("docker ps --filter label=org.paydrop.slot --format '{{.Names}}'").split()
    for slot in slots:
        host.check_output("docker stop -t 35 %s", slot)
    try:
        yield
    finally:
        for slot in slots:
            host.check_output("docker start %s", slot)
        for color, port in SLOT_PORTS.items():
            if f"paydrop-{color}" in slots:
                host.check_output("curl -sf --retry 60 --retry-all-errors --retry-delay 1 -o /dev/null "
                                  "http://%s:%s/api/health/ready", address(host), str(port))


# --- service and configuration -------------------------------------------------


def test_nginx_runs_with_a_valid_configuration(host: testinfra.host.Host) -> None:
    nginx = host.service("nginx")
    assert nginx.is_running
    assert nginx.is_enabled
    assert host.run("nginx -t").rc == 0


def test_workers_follow_the_declared_size(host: testinfra.host.Host) -> None:
    conf = host.file("/etc/nginx/nginx.conf").content_string
    assert "worker_processes auto;" in conf
    # staging1 declares a VPS M (4 GB): one connection per MB.
    assert "worker_connections 4096;" in conf
    assert "server_tokens off;" in conf


def test_server_header_has_no_version(edge: Edge) -> None:
    assert edge("GET", "/nginx-health").header("server") == "nginx"


def test_only_the_edge_ports_are_public(host: testinfra.host.Host) -> None:
    addr = address(host)
    assert can_connect(addr, 80)
    assert can_connect(addr, 443)
    # Every port nginx listens on beyond loopback: 80 and 443, nothing else.
    public = set()
    for line in host.check_output("ss -Hltnp").splitlines():
        if '"nginx"' not in line:
            continue
        local_address, port = line.split()[3].rsplit(":", 1)
        if not local_address.startswith(("127.", "[::1]")):
            public.add(int(port))
    assert public == {80, 443}
    # stub_status: loopback only.
    assert not can_connect(addr, 8080)
    status = host.check_output("curl -fsS http://127.0.0.1:8080/stub_status")
    assert status.startswith("Active connections:")


# --- TLS -------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_tls12_and_tls13_are_accepted(host: testinfra.host.Host, version: str) -> None:
    done = s_client(host, version)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"New, TLSv1.{version[-1]}, Cipher is " in done.stdout


def test_tls11_is_refused_by_the_server(host: testinfra.host.Host) -> None:
    done = s_client(host, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert done.returncode != 0
    assert "alert protocol version" in done.stdout + done.stderr
    assert "Cipher is (NONE)" in done.stdout


def test_weak_cipher_is_refused(host: testinfra.host.Host) -> None:
    done = s_client(host, "-tls1_2", "-cipher", "AES128-SHA@SECLEVEL=0")
    assert done.returncode != 0
    assert "alert handshake failure" in done.stdout + done.stderr


def test_tls12_gets_a_forward_secret_aead_cipher_and_no_session_ticket(host: testinfra.host.Host) -> None:
    done = s_client(host, "-tls1_2")
    assert re.search(r"Cipher is ECDHE-ECDSA-(AES\d+-GCM-SHA\d+|CHACHA20-POLY1305)", done.stdout)
    assert "TLS session ticket:" not in done.stdout


def test_self_signed_certificate_names_the_shop_and_the_host(host: testinfra.host.Host) -> None:
    sans = host.check_output("openssl x509 -in /etc/nginx/tls/paydrop.crt -noout -ext subjectAltName")
    assert f"DNS:{SERVER_NAME}" in sans
    assert f"IP Address:{address(host)}" in sans
    key = host.file("/etc/nginx/tls/paydrop.key")
    assert (key.user, key.group, key.mode) == ("root", "root", 0o600)


def test_dh_parameters_are_mozillas_ffdhe2048(host: testinfra.host.Host) -> None:
    params = host.check_output("openssl pkeyparam -in /etc/nginx/tls/ffdhe2048.pem -noout -text")
    assert "GROUP: ffdhe2048" in params


# --- HTTP --------------------------------------------------------------------------


def test_http_redirects_to_https_keeping_path_and_query(edge: Edge) -> None:
    answer = edge("GET", "/products/some-file?ref=a%20b&x=1", scheme="http")
    assert answer.status == 301
    assert answer.header("location") == f"https://{SERVER_NAME}/products/some-file?ref=a%20b&x=1"


def test_redirect_target_ignores_the_host_header(edge: Edge) -> None:
    answer = edge("GET", "/x", scheme="http", host_header="evil.example")
    assert answer.header("location") == f"https://{SERVER_NAME}/x"


def test_acme_challenge_is_served_on_port_80(host: testinfra.host.Host, edge: Edge) -> None:
    token = uuid.uuid4().hex
    path = f"/var/www/acme/.well-known/acme-challenge/{token}"
    host.check_output(f"echo {token}.key-authorization > {path}")
    try:
        answer = edge("GET", f"/.well-known/acme-challenge/{token}", scheme="http")
    finally:
        host.run(f"rm -f {path}")
    assert answer.status == 200
    assert answer.body.strip() == f"{token}.key-authorization"
    assert "location" not in answer.headers


def test_security_headers_on_the_upstream_error_page(edge: Edge) -> None:
    # No app in this scenario: nginx's own 502 page must carry them too.
    answer = edge("GET", "/")
    assert answer.status == 502
    for name, value in SECURITY_HEADERS.items():
        assert answer.header(name) == value


@pytest.mark.parametrize(("path", "status"), [
    ("/metrics", 404),
    ("/metrics/", 404),
    ("/%6Detrics", 404),
    ("/_protected/x", 404),
])
def test_internal_paths_are_404_from_nginx(edge: Edge, path: str, status: int) -> None:
    answer = edge("GET", path)
    assert answer.status == status
    for name, value in SECURITY_HEADERS.items():
        assert answer.header(name) == value


def test_unknown_host_is_misdirected(edge: Edge) -> None:
    answer = edge("GET", "/", host_header="evil.example")
    assert answer.status == 421
    assert answer.header("x-frame-options") == "DENY"


def test_nginx_health_answers_without_the_app(edge: Edge) -> None:
    answer = edge("GET", "/nginx-health")
    assert (answer.status, answer.body.strip()) == (200, "ok")


def test_request_id_is_kept_when_sane_and_replaced_otherwise(edge: Edge) -> None:
    kept = edge("GET", "/nginx-health", headers={"X-Request-ID": "edge-test.1:abc"})
    assert kept.header("x-request-id") == "edge-test.1:abc"
    replaced = edge("GET", "/nginx-health", headers={"X-Request-ID": "-bad id\tx"})
    assert re.fullmatch(r"[0-9a-f]{32}", replaced.header("x-request-id"))
    fresh = edge("GET", "/nginx-health")
    assert re.fullmatch(r"[0-9a-f]{32}", fresh.header("x-request-id"))


def test_only_pages_the_app_marks_public_are_cached_and_never_for_a_session(
        host: testinfra.host.Host, edge: Edge) -> None:
    page = f"/public/{uuid.uuid4().hex}"
    with fake_app(host):
        first, second = edge("GET", page), edge("GET", page)
        assert (first.header("x-cache-status"), second.header("x-cache-status")) == ("MISS", "HIT")
        assert second.body == first.body
        assert second.header("x-request-id") != first.header("x-request-id")
        for name, value in SECURITY_HEADERS.items():
            assert second.header(name) == value
        # A visitor with a session neither reads nor fills the cache.
        for _ in range(2):
            mine = edge("GET", page, headers={"Cookie": "paydrop_session=s1"})
            assert mine.header("x-cache-status") == "BYPASS"
            assert json.loads(mine.body)["headers"]["cookie"] == "paydrop_session=s1"
        other = f"/public/{uuid.uuid4().hex}"
        edge("GET", other, headers={"Cookie": "paydrop_session=s1"})
        assert edge("GET", other).header("x-cache-status") == "MISS"
        # An answer that sets a cookie, one not marked public, a POST: never from the cache.
        for path in (f"{page}/sets-cookie", f"/private/{uuid.uuid4().hex}"):
            assert [edge("GET", path).header("x-cache-status") for _ in range(2)] == ["MISS", "MISS"]
        posted = edge("POST", page, data=b"{}")
        assert "x-cache-status" not in posted.headers
        assert json.loads(posted.body)["body_sha256"] == hashlib.sha256(b"{}").hexdigest()


LOGIN_BURST = 10
LOGIN_REFILL_SECONDS = 6  # nginx_rate_limit_login: 10r/m


def test_login_posts_are_rate_limited(host: testinfra.host.Host) -> None:
    source = f"127.{random.randint(1, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"  # noqa: S311
    curl = (f"curl -s -o /dev/null -w '%{{http_code}}\\n' --interface {source} "
            f"--resolve {SERVER_NAME}:443:127.0.0.1 -k")
    started = time.monotonic()
    posts = host.check_output(
        f"for i in $(seq 20); do {curl} -X POST -d x=1 https://{SERVER_NAME}/account/login; done"
    ).split()
    elapsed = time.monotonic() - started
    # burst 10 (nodelay): the first 11 reach the upstream (502: no app here),
    # then 429, except for one more per token refilled while the loop ran.
    admitted = [status for status in posts if status != "429"]
    assert set(admitted) == {"502"}, posts
    assert "429" not in posts[:LOGIN_BURST + 1], posts
    assert LOGIN_BURST + 1 <= len(admitted) <= LOGIN_BURST + 2 + int(elapsed // LOGIN_REFILL_SECONDS), (elapsed, posts)
    assert posts[-1] == "429", posts
    after = {
        "GET /account/login": host.check_output(f"{curl} https://{SERVER_NAME}/account/login"),
        "POST /api/webhooks/stripe": host.check_output(
            f"{curl} -X POST -d '{{}}' https://{SERVER_NAME}/api/webhooks/stripe"),
    }
    # GETs and the webhook are not counted in the log-in zone.
    assert after == {"GET /account/login": "502", "POST /api/webhooks/stripe": "502"}
    # The same zone guards registration; a token may have refilled meanwhile,
    # so spend it first: the answer after it is nginx's 429, with the headers.
    limited = ""
    for _ in range(3):
        limited = host.check_output(f"curl -s -i --interface {source} --resolve {SERVER_NAME}:443:127.0.0.1 "
                                    f"-k -X POST -d x=1 https://{SERVER_NAME}/account/register")
        if parse_curl(limited).status == 429:
            break
    answer = parse_curl(limited)
    assert answer.status == 429
    for name, value in SECURITY_HEADERS.items():
        assert answer.header(name) == value


KEY_PROBE = "/tmp/paydrop-key-probe"  # noqa: S108 - inside the throwaway test host
KEY_PROBE_PORTS = (18180, 18181)


def deployed_rate_limits(host: testinfra.host.Host) -> str:
    """The deployed site's rate-limit section: client key, exemptions, zones."""
    conf = host.file(SITE_CONF).content_string
    start = conf.index("# --- Rate limits per client")
    return conf[start:conf.index("limit_req_status", start)]


@contextmanager
def key_probe(host: testinfra.host.Host, exempt: str) -> Iterator[None]:
    """A second nginx on staging1 built from the deployed rate-limit section, in front of a
    stub, that takes the client's address from X-Real-IP: the edge's own clients here are
    IPv4 only (the test host has no IPv6), so this is how an IPv6 client is played.
    `exempt` joins the deployed nginx_rate_limit_exempt networks."""
    section, added = re.subn(r"(geo \$paydrop_rate_limited \{\n\s*default 1;\n)", rf"\g<1>    {exempt} 0;\n",
                             deployed_rate_limits(host))
    assert added == 1, "the exemption list is the geo $paydrop_rate_limited"
    front, back = KEY_PROBE_PORTS
    conf = f"""daemon off;
master_process off;
pid {KEY_PROBE}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {KEY_PROBE}/body;
    proxy_temp_path {KEY_PROBE}/proxy;
{section}
    limit_req_status 429;
    server {{
        listen 127.0.0.1:{front};
        set_real_ip_from 127.0.0.1;
        real_ip_header X-Real-IP;
        location = /account/login {{
            limit_req zone=paydrop_login burst={LOGIN_BURST} nodelay;
            proxy_pass http://127.0.0.1:{back};
        }}
    }}
    server {{
        listen 127.0.0.1:{back};
        return 200;
    }}
}}
"""
    encoded = base64.b64encode(conf.encode()).decode()
    host.check_output(f"mkdir -p {KEY_PROBE} && echo {encoded} | base64 -d > {KEY_PROBE}/nginx.conf")
    unit = "paydrop-key-probe"
    host.run("systemctl reset-failed %s", unit)
    host.check_output("systemd-run --unit %s nginx -p %s -c %s/nginx.conf -e %s/error.log",
                      unit, KEY_PROBE, KEY_PROBE, KEY_PROBE)
    try:
        scenario.wait_for_unit_listening(host, unit, front)
        yield
    finally:
        host.run("systemctl stop %s", unit)
        host.run("rm -rf %s", KEY_PROBE)


def login_posts_from(host: testinfra.host.Host, *clients: str) -> list[str]:
    """One log-in POST per client address, in order, through the key probe; the statuses."""
    curl = (f"curl -s -o /dev/null -w '%{{http_code}}\\n' -X POST -d x=1 "
            f"http://127.0.0.1:{KEY_PROBE_PORTS[0]}/account/login -H")
    script = "; ".join(f"{curl} 'X-Real-IP: {client}'" for client in clients)
    return host.check_output(script).split()


def test_an_ipv6_client_is_limited_per_64(host: testinfra.host.Host) -> None:
    """The deployed zones count an IPv6 /64 as one client (another address in it, written any
    way, meets the same limit; the next /64 does not), IPv4 per address, and the operator's
    exemptions still exempt."""
    burst = LOGIN_BURST + 1
    with key_probe(host, exempt="2001:db8:e::/64"):
        # One script each, so no token refills (one per 6 s) between the posts compared.
        statuses = login_posts_from(
            host, *["2001:db8:1:2::1"] * burst,
            "2001:db8:1:2::2", "2001:db8:1:2:ffff:ffff:ffff:fffe", "2001:0DB8:0001:0002:0:0:0:a",
            "2001:db8:1:3::1", "2001:db8:1::1", "2001:db8:1:2:3::", "2001:db8::1:2:3:4:5")
        assert statuses[:burst] == ["200"] * burst, statuses
        assert statuses[burst:burst + 3] == ["429"] * 3, statuses  # the same /64
        assert statuses[burst + 3:burst + 5] == ["200"] * 2, statuses  # other /64s
        assert statuses[burst + 5] == "429", statuses  # 2001:db8:1:2:3:: is in it too
        assert statuses[burst + 6] == "200", statuses  # 2001:db8:0:1::/64

        ipv4 = login_posts_from(host, *["192.0.2.7"] * burst, "192.0.2.7", "192.0.2.8")
        assert ipv4 == ["200"] * burst + ["429", "200"], ipv4

        exempt = login_posts_from(host, *["2001:db8:e::5"] * burst, "2001:db8:e:0:ffff::9")
        assert exempt == ["200"] * (burst + 1), exempt


def test_download_tokens_and_query_strings_never_reach_the_logs(
    host: testinfra.host.Host, edge: Edge
) -> None:
    token = "SECRETTOKEN" + uuid.uuid4().hex
    query = "SECRETQUERY" + uuid.uuid4().hex
    request_id = "edge-log-" + uuid.uuid4().hex
    edge("GET", f"/downloads/{token}?session_id={query}", headers={"X-Request-ID": request_id})
    edge("GET", f"/account/verify/{token}", headers={"X-Request-ID": request_id + "-verify"})
    edge("GET", f"/account/password/reset/{token}", headers={"X-Request-ID": request_id + "-reset"})
    edge("GET", f"/products/x?session_id={query}", headers={
        "X-Request-ID": request_id + "-query", "Referer": f"https://{SERVER_NAME}/downloads/{token}?q={query}"})
    # nginx writes the access log line when the request ends: wait for the last one.
    scenario.wait_until(lambda: host.run("grep -qF %s %s", request_id + "-query", ACCESS_LOG).rc == 0,
                        "the access log line of the last request", timeout=10)
    for log in (ACCESS_LOG, ERROR_LOG):
        for secret in (token, query):
            assert host.run("grep -c %s %s", secret, log).stdout.strip() == "0", f"{secret} in {log}"
    lines = host.check_output("grep -F %s %s", request_id, ACCESS_LOG).splitlines()
    entries = {entry["request_id"]: entry for entry in map(json.loads, lines)}
    assert entries[request_id]["path"] == "/downloads/[redacted]"
    assert entries[request_id]["status"] == 502
    assert entries[request_id + "-verify"]["path"] == "/account/verify/[redacted]"
    assert entries[request_id + "-reset"]["path"] == "/account/password/reset/[redacted]"
    assert entries[request_id + "-query"]["path"] == "/products/x"
    assert entries[request_id + "-query"]["referer"] == f"https://{SERVER_NAME}"


# --- with stand-ins for the app's slots ----------------------------------------------


def test_proxy_headers_replace_what_the_client_sent(host: testinfra.host.Host, edge: Edge) -> None:
    with fake_app(host):
        answer = edge("GET", "/products/x?y=1", headers={
            "X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "http",
            "X-Forwarded-Host": "evil.example", "Forwarded": "for=203.0.113.7",
            "X-Request-ID": "edge-proxy-1"})
    assert answer.status == 200
    seen = json.loads(answer.body)
    sent = seen["headers"]
    control_node = sent["x-forwarded-for"]
    assert "203.0.113.7" not in control_node and "," not in control_node
    assert sent["x-forwarded-proto"] == "https"
    assert sent["x-forwarded-host"] == SERVER_NAME
    assert sent["host"] == SERVER_NAME
    assert "forwarded" not in sent
    assert sent["x-request-id"] == "edge-proxy-1"
    assert seen["path"] == "/products/x?y=1"
    # nginx's values win over the app's, and nothing is doubled.
    assert answer.header("x-frame-options") == "DENY"
    assert answer.header("x-request-id") == "edge-proxy-1"


def test_webhook_body_passes_untouched(host: testinfra.host.Host, edge: Edge) -> None:
    payload = b'{"id": "evt_1", "type": "payment_intent.succeeded",\r\n "data": {"object": {}}}  \n'
    with fake_app(host):
        answer = edge("POST", "/api/webhooks/stripe", data=payload,
                      headers={"Content-Type": "application/json", "Stripe-Signature": "t=1,v1=x"})
    assert answer.status == 200
    seen = json.loads(answer.body)
    assert seen["body_sha256"] == hashlib.sha256(payload).hexdigest()
    assert seen["headers"]["stripe-signature"] == "t=1,v1=x"


def test_a_body_over_the_limit_is_refused_and_nothing_is_compressed(host: testinfra.host.Host, edge: Edge) -> None:
    """nginx_client_max_body_size (1 MB): a 2 MB body is nginx's 413 and never reaches the app,
    while a small one passes. gzip is off (BREACH: secrets in compressed HTTPS pages leak through
    their length): asked for gzip, the answer comes uncompressed."""
    octets = {"Content-Type": "application/octet-stream"}
    with fake_app(host):
        big = edge("POST", "/edge-probe/body", data=b"x" * (2 * 1024 * 1024), headers=octets)
        small = edge("POST", "/edge-probe/body", data=b"x" * 1000, headers=octets)
        asked = edge("GET", "/edge-probe/page", headers={"Accept-Encoding": "gzip, deflate, br"})
    assert big.status == 413
    assert "color" not in big.body
    assert small.status == 200
    assert json.loads(small.body)["body_sha256"] == hashlib.sha256(b"x" * 1000).hexdigest()
    assert asked.status == 200
    assert "content-encoding" not in asked.headers
    assert json.loads(asked.body)["path"] == "/edge-probe/page"


# --- blue-green switch ---------------------------------------------------------------------


def test_switch_rewrites_only_the_upstream_and_reloads(host: testinfra.host.Host, edge: Edge) -> None:
    assert f":{SLOT_PORTS['blue']} " in host.file(UPSTREAM_CONF).content_string
    before = etc_nginx_checksums(host)
    master, workers = master_and_workers(host)
    try:
        green = playbook("edge-switch.yml", "-e", "nginx_switch_color=green")
        assert green.returncode == 0, green.stdout[-3000:]
        after = etc_nginx_checksums(host)
        assert {path for path in before if before[path] != after.get(path)} == {UPSTREAM_CONF}
        assert set(after) == set(before)
        upstream = host.file(UPSTREAM_CONF).content_string
        assert f"{address(host)}:{SLOT_PORTS['green']} " in upstream
        assert f":{SLOT_PORTS['blue']} " not in upstream
        # A reload: same master, new workers.
        new_master, new_workers = master_and_workers(host)
        assert new_master == master
        assert not new_workers & workers
        assert host.check_output("curl -s http://127.0.0.1:8080/active-color") == "green"
        with fake_app(host):
            assert json.loads(edge("GET", "/").body)["color"] == "green"

        again = playbook("edge-switch.yml", "-e", "nginx_switch_color=green")
        assert again.returncode == 0, again.stdout[-3000:]
        assert recap_changed(again) == 0
        assert master_and_workers(host) == (new_master, new_workers)
    finally:
        blue = playbook("edge-switch.yml", "-e", "nginx_switch_color=blue")
    assert blue.returncode == 0, blue.stdout[-3000:]
    assert f"{address(host)}:{SLOT_PORTS['blue']} " in host.file(UPSTREAM_CONF).content_string
    assert etc_nginx_checksums(host) == before
    assert master_and_workers(host)[0] == master
    with fake_app(host):
        assert json.loads(edge("GET", "/").body)["color"] == "blue"


def test_rejected_switch_keeps_the_previous_upstream(host: testinfra.host.Host) -> None:
    before = host.file(UPSTREAM_CONF).content_string
    master = master_and_workers(host)[0]
    bad = playbook("edge-switch.yml", "-e", "nginx_switch_color=green",
                   "-e", '{"nginx_app_slot_ports": {"blue": 8001, "green": 99999}}')
    assert bad.returncode != 0
    output = bad.stdout + bad.stderr
    assert "nginx rejected the upstream for green" in output
    assert 'invalid port in upstream "' in output
    assert host.file(UPSTREAM_CONF).content_string == before
    assert master_and_workers(host)[0] == master
    assert host.check_output("curl -s http://127.0.0.1:8080/active-color") == "blue"


def test_bad_configuration_fails_and_the_old_one_keeps_serving(host: testinfra.host.Host, edge: Edge) -> None:
    site = host.file(SITE_CONF).content_string
    master = master_and_workers(host)[0]
    bad = playbook("edge.yml", "-e", "nginx_extra_http_config='paydrop_no_such_directive on;'")
    assert bad.returncode != 0
    assert 'unknown directive "paydrop_no_such_directive" in /etc/nginx/conf.d/paydrop.conf' in bad.stdout + bad.stderr
    assert host.file(SITE_CONF).content_string == site
    assert host.run("nginx -t").rc == 0
    assert master_and_workers(host)[0] == master
    assert edge("GET", "/nginx-health").status == 200
    assert edge("GET", "/").header("content-security-policy") == CSP


def test_a_request_in_flight_survives_a_reload(host: testinfra.host.Host, edge: Edge) -> None:
    """A reload (every switch, every config change) lets running requests finish on the old workers."""
    master, workers = master_and_workers(host)
    with fake_app(host):
        argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30",
                "--resolve", f"{SERVER_NAME}:443:{address(host)}", "--cacert", str(edge.ca_file),
                f"https://{SERVER_NAME}/slow/4"]
        in_flight = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # noqa: S603
        try:
            # The request has reached the stand-in: an upstream connection is open.
            scenario.wait_until(
                lambda: host.run("ss -Htn state established '( dport = :%s )'",
                                 str(SLOT_PORTS["blue"])).stdout.strip(),
                "the slow request reaching the upstream", timeout=10, interval=0.1)
            host.check_output("systemctl reload nginx")
            # New workers start; the old ones stay until their requests end.
            scenario.wait_until(lambda: master_and_workers(host)[1] - workers,
                                "new nginx workers after the reload", timeout=10)
            assert in_flight.poll() is None, "the request ended before the reload was under way"
            stdout, stderr = in_flight.communicate(timeout=30)
        finally:
            in_flight.kill()
    assert (in_flight.returncode, stdout) == (0, "200"), stderr
    assert master_and_workers(host)[0] == master


def test_only_idempotent_requests_go_to_the_next_server_after_a_503(host: testinfra.host.Host,
                                                                       edge: Edge) -> None:
    """proxy_next_upstream: a GET that one server answers 503 is retried on the next (the shopper
    never sees it), a POST never is (nginx does not repeat non-idempotent requests: a payment
    must not be sent twice). Both stand-ins go in the upstream for this check; blue refuses.
    The access log's upstream_status shows each attempt."""
    original = host.file(UPSTREAM_CONF).content_string
    both = re.sub(r"(\n\s*server [^:]+):(\d+)( [^;]*;.*)",
                  lambda m: "".join(f"{m[1]}:{port}{m[3]}" for port in SLOT_PORTS.values()), original, count=1)
    assert both.count(f":{SLOT_PORTS['blue']} ") == 1 and both.count(f":{SLOT_PORTS['green']} ") == 1, both
    run = uuid.uuid4().hex[:12]
    try:
        host.check_output("printf %s %s > %s && nginx -t -q && systemctl reload nginx", "%s", both, UPSTREAM_CONF)
        with fake_app(host):
            scenario.wait_until(lambda: edge("GET", "/ready").status == 200, "the reloaded workers", timeout=10)
            # POSTs first: round robin sends one of two to blue; then GETs, while blue is not yet
            # out of rotation (max_fails), so one of them meets blue's 503 too.
            posts = [edge("POST", f"/blue-refuses/{n}", data=b"pay=once",
                          headers={"X-Request-ID": f"{run}-post-{n}"}) for n in range(2)]
            gets = [edge("GET", f"/blue-refuses/{n}", headers={"X-Request-ID": f"{run}-get-{n}"})
                    for n in range(2)]
    finally:
        host.check_output("printf %s %s > %s && systemctl reload nginx", "%s", original, UPSTREAM_CONF)
    scenario.wait_until(lambda: host.run("grep -c %s %s", run, ACCESS_LOG).stdout.strip() == "4",
                        "the four requests in the access log", timeout=10)
    attempts = {entry["request_id"]: entry["upstream_status"] for entry in
                map(json.loads, host.check_output("grep -F %s %s", run, ACCESS_LOG).splitlines())}
    assert [(a.status, json.loads(a.body)["color"]) for a in gets] == [(200, "green")] * 2
    get_attempts = [attempts[f"{run}-get-{n}"] for n in range(2)]
    assert set(get_attempts) <= {"200", "503, 200"} and "503, 200" in get_attempts, attempts
    post_attempts = [attempts[f"{run}-post-{n}"] for n in range(2)]
    assert post_attempts == [str(a.status) for a in posts], attempts
    assert "503" in post_attempts, attempts


# --- certificates (last: they replace the certificate the tests above trust) -------------


def openssl(*argv: str, cwd: Path) -> None:
    subprocess.run(["openssl", *argv], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificate(work: Path, name: str) -> None:
    """A P-256 key and a certificate for SERVER_NAME signed by a throwaway CA: <name>.key/.crt."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    if not (work / "ca.crt").exists():
        openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "30",
                "-subj", "/CN=Paydrop Edge Test CA", cwd=work)
    (work / "san.ext").write_text(f"subjectAltName=DNS:{SERVER_NAME}\n")
    openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={SERVER_NAME}",
            cwd=work)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "30", "-extfile", "san.ext", cwd=work)


def serial(host: testinfra.host.Host) -> str:
    return host.check_output("openssl x509 -in /etc/nginx/tls/paydrop.crt -noout -serial")


def test_operator_certificate_then_self_signed_again(
    host: testinfra.host.Host, tmp_path: Path
) -> None:
    make_certificate(tmp_path, "leaf")
    make_certificate(tmp_path, "other")
    key = (tmp_path / "leaf.key").read_text()
    chain = (tmp_path / "leaf.crt").read_text() + (tmp_path / "ca.crt").read_text()
    provided = tmp_path / "provided.yml"
    provided.write_text(json.dumps({"nginx_tls_certificate": chain, "nginx_tls_certificate_key": key}))
    key_body = key.splitlines()[1]

    # A key that is not the certificate's: refused before anything is written.
    before = (serial(host), host.file("/etc/nginx/tls/paydrop.key").sha256sum)
    mismatched = tmp_path / "mismatched.yml"
    mismatched.write_text(json.dumps({"nginx_tls_certificate": chain,
                                      "nginx_tls_certificate_key": (tmp_path / "other.key").read_text()}))
    refused = playbook("edge.yml", "-e", f"@{mismatched}")
    assert refused.returncode != 0
    assert "is not the private key of the" in refused.stdout + refused.stderr
    assert (serial(host), host.file("/etc/nginx/tls/paydrop.key").sha256sum) == before

    run = playbook("edge.yml", "-e", f"@{provided}")
    assert run.returncode == 0, run.stdout[-3000:]
    assert key_body not in run.stdout + run.stderr
    written = host.file("/etc/nginx/tls/paydrop.key")
    assert (written.user, written.mode, written.content_string.strip()) == ("root", 0o600, key.strip())
    site = host.file(SITE_CONF).content_string
    assert "ssl_stapling on;" in site
    assert "ssl_stapling_verify on;" in site
    # Served with its chain: curl trusts only the throwaway CA.
    verified = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(tmp_path / "ca.crt"),
         "--resolve", f"{SERVER_NAME}:443:{address(host)}", f"https://{SERVER_NAME}/nginx-health"],
        capture_output=True, text=True, timeout=30, check=False)
    assert verified.stdout == "200", verified.stderr

    # Back to self-signed; renew_days beyond its lifetime makes the next run renew it.
    back = playbook("edge.yml")
    assert back.returncode == 0, back.stdout[-3000:]
    assert "ssl_stapling" not in host.file(SITE_CONF).content_string
    sans = host.check_output("openssl x509 -in /etc/nginx/tls/paydrop.crt -noout -ext subjectAltName")
    assert f"IP Address:{address(host)}" in sans
    first = serial(host)
    renewed = playbook("edge.yml", "-e", "nginx_tls_selfsigned_renew_days=400")
    assert renewed.returncode == 0, renewed.stdout[-3000:]
    assert serial(host) != first
