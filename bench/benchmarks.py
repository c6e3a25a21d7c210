"""The six benchmarks of make bench (issue 12), each a function that returns a
dict of numbers for the run's JSON. Fixtures (bench products, orders, grants,
files, the baseline's container and nginx server) are created by `Fixtures`
and removed when the run ends, so the sandbox is left as make demo made it."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import re
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

from itsdangerous import URLSafeSerializer

from . import load
from .sandbox import (
    ASSETS_DIR,
    BASELINE_HOST,
    BENCH_DIR,
    HELLO_CONTAINER,
    HELLO_PORT,
    NGINX_BENCH_CONF,
    REPO,
    Sandbox,
)

MB = 1024 * 1024
BENCH_EMAIL = "@bench.invalid"


class Size:
    """How much load: the full run, or QUICK's tiny one (seconds, no goals)."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.page_seconds = 1 if quick else 8
        self.page_rounds = 1 if quick else 2
        self.page_connections = 4 if quick else 16
        self.webhook_events = 24 if quick else 600
        self.webhook_duplicated_events = 8 if quick else 200
        self.download_seconds = 1 if quick else 5
        self.download_rounds = 1 if quick else 2
        self.download_mb = 2 if quick else 10
        self.cpu_sizes_mb = (1, 4) if quick else (1, 100)
        self.cpu_downloads = 3 if quick else 10


# --- Fixtures ---------------------------------------------------------------------------------

class Fixtures:
    def __init__(self, sb: Sandbox, size: Size) -> None:
        self.sb, self.size = sb, size
        self.run_id = uuid.uuid4().hex[:8]
        self.secret_key = sb.secret("vault_app_secret_key")
        self.tmp = Path(tempfile.mkdtemp(prefix="paydrop-bench-"))

    def __enter__(self) -> Fixtures:
        self.remove_data()
        self.start_hello()
        self.add_baseline_server()
        self.add_products()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove_baseline()
        self.remove_data()

    # The bare "hello" app: the slot's own image, environment, mounts and
    # gunicorn.conf.py, on its own port of the host network.
    def start_hello(self) -> None:
        sb = self.sb
        slot = sb.slot_container()
        spec = json.loads(sb.sh(f"docker inspect {slot}"))[0]
        address = sb.slot_bind().rsplit(":", 1)[0]
        env = [e for e in spec["Config"]["Env"] if not e.startswith("GUNICORN_BIND=")]
        env.append(f"GUNICORN_BIND={address}:{HELLO_PORT}")
        mounts = [f"--mount type=bind,src={m['Source']},dst={m['Destination']}{'' if m['RW'] else ',readonly'}"
                  for m in spec["Mounts"] if m["Type"] == "bind"]
        sb.sh("install -d -m 0755 /opt/paydrop-bench && cat > /opt/paydrop-bench/hello.py "
              "&& chmod 0644 /opt/paydrop-bench/hello.py",
              stdin=(Path(__file__).parent / "hello.py").read_text())
        sb.sh("umask 077 && cat > /opt/paydrop-bench/hello.env", stdin="\n".join(env) + "\n")
        sb.sh(f"docker rm -f {HELLO_CONTAINER} >/dev/null 2>&1 || true; "
              f"docker run -d --name {HELLO_CONTAINER} --network host --user {spec['Config']['User']} "
              f"--read-only --tmpfs /tmp:rw,nosuid,nodev,size=64m --cap-drop ALL "
              f"--security-opt no-new-privileges --env-file /opt/paydrop-bench/hello.env "
              f"{' '.join(mounts)} --mount type=bind,src=/opt/paydrop-bench,dst=/opt/paydrop-bench,readonly "
              f"{spec['Config']['Image']} gunicorn --config /etc/paydrop/gunicorn.conf.py "
              f"--pythonpath /opt/paydrop-bench hello:app >/dev/null")
        self.wait_http(f"http://{address}:{HELLO_PORT}/", inside=True)

    def wait_http(self, url: str, inside: bool) -> None:
        probe = ("import sys, time, urllib.request\n"
                 "for _ in range(120):\n"
                 "    try:\n"
                 f"        urllib.request.urlopen('{url}', timeout=2); sys.exit(0)\n"
                 "    except Exception: time.sleep(0.5)\n"
                 "sys.exit(1)\n")
        if inside:
            self.sb.sh("python3 -", stdin=probe)

    # A server on the shop's nginx for the baselines: the hello app behind the
    # same TLS, headers, rate-limit check, access log and upstream keepalive,
    # and the bench files served by nginx directly.
    def add_baseline_server(self) -> None:
        sb = self.sb
        site = sb.sh("cat /etc/nginx/conf.d/paydrop.conf")
        upstream = sb.sh("cat /etc/nginx/conf.d/paydrop-upstream.conf")
        headers = list(dict.fromkeys(re.findall(r"^\s*(add_header .* always;)$", site, re.M)))
        shop_limit = re.search(r"location / \{\s*(limit_req [^;]*;)", site)
        keepalive = re.findall(r"^\s*(keepalive(?:_timeout)? [^;]*;)$", upstream, re.M)
        address = sb.slot_bind().rsplit(":", 1)[0]
        conf = "\n".join([
            "# make bench's baselines (bench/benchmarks.py); removed when the run ends.",
            "upstream paydrop_bench_hello {",
            "    zone paydrop_bench_hello 64k;",
            f"    server {address}:{HELLO_PORT};",
            *[f"    {k}" for k in keepalive],
            "}",
            "server {",
            "    listen 443 ssl http2;",
            f"    server_name {BASELINE_HOST};",
            *[f"    {h}" for h in headers],
            "    location / {",
            f"        {shop_limit.group(1) if shop_limit else ''}",
            "        proxy_pass http://paydrop_bench_hello;",
            "    }",
            "    location /direct/ {",
            f"        alias {BENCH_DIR}/;",
            "        sendfile on;",
            "    }",
            "}",
            "",
        ])
        sb.sh(f"cat > {NGINX_BENCH_CONF} && nginx -t -q && systemctl reload nginx", stdin=conf)
        time.sleep(1)

    def remove_baseline(self) -> None:
        self.sb.sh(f"rm -f {NGINX_BENCH_CONF}; nginx -t -q && systemctl reload nginx; "
                   f"docker rm -f {HELLO_CONTAINER} >/dev/null 2>&1 || true; rm -rf /opt/paydrop-bench")

    # Inactive products (never in the catalog) with files of known sizes.
    def add_products(self) -> None:
        sizes = sorted({self.size.download_mb, *self.size.cpu_sizes_mb})
        owner = self.sb.sh(f"stat -c '%u:%g' {ASSETS_DIR}").strip()
        self.sb.sh(f"install -d -o {owner.split(':')[0]} -g {owner.split(':')[1]} -m 0750 {BENCH_DIR}; "
                   + "; ".join(f"head -c {mb * MB} /dev/urandom > {BENCH_DIR}/bench-{mb}mb.bin" for mb in sizes)
                   + f"; chown {owner} {BENCH_DIR}/*.bin; chmod 0640 {BENCH_DIR}/*.bin", timeout=300)
        values = ",\n".join(
            f"('bench-{mb}mb', 'Bench {mb} MB', 100, 'eur', 'bench/bench-{mb}mb.bin', 'bench-{mb}mb.bin', "
            f"{mb * MB}, false)" for mb in sizes)
        self.sb.psql("INSERT INTO products (slug, title, price_amount, currency, asset_key, asset_filename, "
                     f"asset_size, active) VALUES {values};")

    def paid_grants(self, mb: int, count: int) -> list[str]:
        """Download paths for `count` paid orders of the bench-<mb>mb product."""
        rows = self.sb.psql(f"""
WITH o AS (
  INSERT INTO orders (email, product_id, amount, currency, status, checkout_mode, paid_at)
  SELECT 'dl-' || i || '-{self.run_id}{BENCH_EMAIL}', p.id, p.price_amount, p.currency, 'paid',
         'payment_intent', now()
  FROM generate_series(1, {count}) i, products p WHERE p.slug = 'bench-{mb}mb'
  RETURNING id)
INSERT INTO download_grants (order_id, expires_at, max_downloads)
SELECT id, now() + interval '1 day', 1000000000 FROM o RETURNING id;""")
        signer = URLSafeSerializer(self.secret_key, salt="paydrop.download")
        return [f"/downloads/{signer.dumps(r[0])}" for r in rows]

    def pending_orders(self, count: int, tag: str) -> list[tuple[str, str, int, str]]:
        """(order id, PaymentIntent id, amount, currency) of new pending orders."""
        rows = self.sb.psql(f"""
INSERT INTO orders (email, product_id, amount, currency, checkout_mode, stripe_payment_intent_id)
SELECT 'wh-' || i || '-{tag}-{self.run_id}{BENCH_EMAIL}', p.id, p.price_amount, p.currency,
       'payment_intent', 'pi_bench_{self.run_id}_{tag}_' || i
FROM generate_series(1, {count}) i, products p WHERE p.slug = 'bench-1mb'
RETURNING id, stripe_payment_intent_id, amount, currency;""")
        return [(r[0], r[1], int(r[2]), r[3]) for r in rows]

    def remove_data(self) -> None:
        self.sb.psql(f"""
BEGIN;
DELETE FROM download_grants WHERE order_id IN (SELECT id FROM orders WHERE email LIKE '%{BENCH_EMAIL}');
DELETE FROM orders WHERE email LIKE '%{BENCH_EMAIL}';
DELETE FROM stripe_events WHERE id LIKE 'evt_bench_%';
DELETE FROM products WHERE slug LIKE 'bench-%';
COMMIT;""")
        self.sb.sh(f"rm -rf {BENCH_DIR}")


# --- 1. Pages, and 6. memory under that load ---------------------------------------------------

class MemorySampler:
    """Peak memory while a load runs: the active slot (gunicorn master and
    workers: RSS and PSS summed) and the whole sandbox host (PSS summed, so
    shared pages count once)."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.peak = {"slot_rss_mb": 0.0, "slot_pss_mb": 0.0, "host_pss_mb": 0.0, "host_rss_mb": 0.0}
        self._stop = threading.Event()
        self.slot = set(sb.slot_pids())

    def sample(self) -> None:
        slot = self.slot
        procs = self.sb.processes()
        now = {
            "slot_rss_mb": sum(p.rss_kb for p in procs if p.pid in slot) / 1024,
            "slot_pss_mb": sum(p.pss_kb for p in procs if p.pid in slot) / 1024,
            "host_pss_mb": sum(p.pss_kb for p in procs) / 1024,
            "host_rss_mb": sum(p.rss_kb for p in procs) / 1024,
        }
        for key, value in now.items():
            self.peak[key] = round(max(self.peak[key], value), 1)

    def __enter__(self) -> MemorySampler:
        def loop() -> None:
            while not self._stop.wait(1.0):
                self.sample()
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _median(runs: list[dict], key: str) -> float:
    values = sorted(r[key] for r in runs)
    return values[len(values) // 2]


# A session cookie Redis does not know: nginx's page cache is bypassed, and the
# app does what it does for any visitor with a session (one Redis GET more than
# for a visitor without one), then renders the anonymous page.
SESSION_COOKIE = {"Cookie": "paydrop_session=make-bench-unknown-session"}


def _get(sb: Sandbox, path: str, headers: dict[str, str] | None = None) -> dict[str, str]:
    """One GET through the shop's nginx: its status and headers (lower-case names)."""
    conn = http.client.HTTPSConnection("localhost", sb.port, context=load.tls_context(sb.ca), timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        answer = {name.lower(): value for name, value in response.getheaders()}
        answer[":status"] = str(response.status)
        return answer
    finally:
        conn.close()


def page_cache_checks(sb: Sandbox, slug: str) -> dict[str, bool]:
    """What the page numbers rest on, checked against the sandbox: anonymous
    catalog and product pages come from nginx's page cache with the security
    headers and their own request id; a visitor with a session cookie, the CSRF
    token and anything that sets a cookie never do."""
    from_cache = {"HIT", "STALE", "UPDATING"}
    checks: dict[str, bool] = {}
    for name, path in (("catalog", "/"), ("product", f"/products/{slug}")):
        first, second = _get(sb, path), _get(sb, path)
        checks[f"{name}: anonymous GET answered from the cache"] = second.get("x-cache-status") in from_cache
        checks[f"{name}: marked public, no Set-Cookie"] = (
            second.get("cache-control", "").startswith("public") and "set-cookie" not in second)
        checks[f"{name}: security headers and a fresh X-Request-ID on a cached answer"] = (
            "content-security-policy" in second and "strict-transport-security" in second
            and second.get("x-request-id", "") not in ("", first.get("x-request-id")))
        with_session = [_get(sb, path, SESSION_COOKIE) for _ in range(2)]
        checks[f"{name}: with a session cookie never from the cache, private"] = all(
            a.get("x-cache-status") == "BYPASS" and a.get("cache-control") == "private, no-store"
            for a in with_session)
    token = [_get(sb, "/checkout/csrf-token") for _ in range(2)]
    checks["CSRF token: private, sets its cookie, never cached"] = all(
        t.get("cache-control") == "private, no-store" and "set-cookie" in t and "x-cache-status" not in t
        for t in token)
    return checks


def pages(sb: Sandbox, fx: Fixtures, size: Size) -> dict:
    slug = sb.psql("SELECT slug FROM products WHERE active ORDER BY id LIMIT 1")[0][0]
    checks = page_cache_checks(sb, slug)
    # catalog_uncached: what the app alone manages, for comparison (no goal).
    targets = {"hello": ("/", BASELINE_HOST, None), "catalog": ("/", None, None),
               "product": (f"/products/{slug}", None, None), "catalog_uncached": ("/", None, SESSION_COOKIE)}
    for path, host, headers in targets.values():  # warm caches and upstream connections
        load.wrk(sb.url + path, seconds=1, connections=2, host=host, headers=headers)
    runs: dict[str, list[dict]] = {k: [] for k in targets}
    memory = MemorySampler(sb)
    memory.sample()
    idle = dict(memory.peak)
    with memory:
        for _ in range(size.page_rounds):
            for name, (path, host, headers) in targets.items():
                runs[name].append(load.wrk(sb.url + path, seconds=size.page_seconds,
                                           connections=size.page_connections, host=host, headers=headers))
    result: dict = {"product_slug": slug, "runs": runs, "memory_idle": idle, "memory_peak": memory.peak,
                    "cache_checks": checks}
    for name in targets:
        result[name] = {k: _median(runs[name], k) for k in ("requests_per_s", "p50_ms", "p99_ms")}
        result[name]["failed"] = sum(r["failed"] for r in runs[name])
    for name in ("catalog", "product", "catalog_uncached"):
        result[name]["ratio"] = round(result[name]["requests_per_s"] / result["hello"]["requests_per_s"], 3)
    return result


# --- 2. Webhook ingest ---------------------------------------------------------------------------------

def _signed_events(fx: Fixtures, orders: list[tuple[str, str, int, str]], tag: str) -> list[load.Request]:
    secret = fx.sb.secret("vault_app_stripe_webhook_secret")
    now = int(time.time())
    requests = []
    for i, (order_id, intent_id, amount, currency) in enumerate(orders):
        payload = json.dumps({
            "id": f"evt_bench_{fx.run_id}_{tag}_{i}", "object": "event", "type": "payment_intent.succeeded",
            "api_version": "2025-03-31.basil", "created": now, "livemode": False,
            "data": {"object": {"id": intent_id, "object": "payment_intent", "amount": amount,
                                "currency": currency, "status": "succeeded",
                                "latest_charge": f"ch_bench_{fx.run_id}_{tag}_{i}",
                                "metadata": {"order_id": order_id}}},
        }, separators=(",", ":")).encode()
        signature = hmac.new(secret.encode(), f"{now}.".encode() + payload, hashlib.sha256).hexdigest()
        requests.append(load.Request("POST", "/api/webhooks/stripe", payload, {
            "Content-Type": "application/json", "Stripe-Signature": f"t={now},v1={signature}"}))
    return requests


def _fulfilment_check(fx: Fixtures, tag: str) -> dict:
    row = fx.sb.psql(f"""
SELECT count(*),
       count(*) FILTER (WHERE o.status = 'paid'),
       coalesce(sum(g.n), 0),
       coalesce(max(g.n), 0),
       (SELECT count(*) FROM stripe_events WHERE id LIKE 'evt_bench_{fx.run_id}_{tag}_%')
FROM orders o
LEFT JOIN (SELECT order_id, count(*) AS n FROM download_grants GROUP BY order_id) g ON g.order_id = o.id
WHERE o.stripe_payment_intent_id LIKE 'pi_bench_{fx.run_id}_{tag}_%';""")[0]
    orders, paid, grants, max_grants, events = map(int, row)
    return {"orders": orders, "paid": paid, "grants": grants, "max_grants_per_order": max_grants,
            "events_recorded": events,
            "exactly_once": orders == paid == grants == events and max_grants == 1}


def _host_cpu_rate(sb: Sandbox, seconds: float = 3.0) -> float | None:
    """CPU seconds per second the sandbox host spends with no load on it."""
    before = sb.host_cpu_seconds()
    time.sleep(seconds)
    after = sb.host_cpu_seconds()
    return None if before is None or after is None else (after - before) / seconds


def webhooks(sb: Sandbox, fx: Fixtures, size: Size) -> dict:
    """Signed events for distinct orders, then each event three times at once;
    the same distinct events posted to the hello baseline first say what this
    client, nginx and gunicorn manage on this machine right now."""
    result: dict = {}
    baseline = _signed_events(fx, [("", f"pi_bench_{fx.run_id}_hello_{i}", 100, "eur")
                                   for i in range(size.webhook_events)], "hello")
    for r in baseline:
        r.headers["Host"] = BASELINE_HOST
    result["hello"] = load.send_each(sb.port, sb.ca, baseline, connections=12)
    for tag, count, copies in (("once", size.webhook_events, 1), ("x3", size.webhook_duplicated_events, 3)):
        orders = fx.pending_orders(count, tag)
        requests = _signed_events(fx, orders, tag)
        idle = _host_cpu_rate(sb)
        cpu_before, started = sb.host_cpu_seconds(), time.monotonic()
        sent = load.send_each(sb.port, sb.ca, requests, copies=copies, connections=12)
        cpu_after, wall = sb.host_cpu_seconds(), time.monotonic() - started
        sent["events_per_s"] = round(count / sent["seconds"], 1)
        if idle is not None and cpu_before is not None and cpu_after is not None:
            # Less what the host spends idle (monitoring, timers) over the same time.
            sent["host_cpu_ms_per_event"] = round((cpu_after - cpu_before - idle * wall) / count * 1000, 2)
            sent["host_cpu_idle_per_s"] = round(idle, 3)
        sent["fulfilment"] = _fulfilment_check(fx, tag)
        result[tag] = sent
    result["ratio"] = round(result["once"]["events_per_s"] / result["hello"]["requests_per_s"], 3)
    return result


# --- 3. Downloads ---------------------------------------------------------------------------------------

def _download_cpu(sb: Sandbox, fx: Fixtures, mb: int, count: int, idle_seconds: float = 2.0) -> dict:
    """App CPU per download. The slot's processes spend some CPU with no request
    at all (gunicorn's worker loops and heartbeats, the mail thread pool): that
    grows with the wall time, which a 100 MB download has more of, so the idle
    rate measured just before is taken off (the raw figure is kept too)."""
    paths = fx.paid_grants(mb, 1) * count
    pids = sb.slot_pids()
    cmd = ["curl", "-sS", "--cacert", str(sb.ca), "-w", "%{http_code} %{size_download}\n"]
    for p in paths:
        cmd += ["-o", "/dev/null", sb.url + p]
    idle_before = sb.cpu_seconds(pids)
    idle_started = time.perf_counter()
    time.sleep(idle_seconds)
    before = sb.cpu_seconds(pids)
    idle_rate = (before - idle_before) / (time.perf_counter() - idle_started)
    started = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600).stdout.split()
    seconds = time.perf_counter() - started
    after = sb.cpu_seconds(pids)
    codes, sizes = out[0::2], out[1::2]
    if codes != ["200"] * count or any(int(s) != mb * MB for s in sizes):
        raise RuntimeError(f"downloads of {mb} MB answered {codes} with sizes {sizes}")
    raw = (after - before) * 1000 / count
    net = max(raw - idle_rate * seconds * 1000 / count, 0.0)
    return {"downloads": count, "app_cpu_ms_per_download": round(net, 2),
            "app_cpu_ms_per_download_raw": round(raw, 2),
            "idle_cpu_ms_per_s": round(idle_rate * 1000, 2), "seconds": round(seconds, 2)}


def downloads(sb: Sandbox, fx: Fixtures, size: Size) -> dict:
    mb = size.download_mb
    paths_file = fx.tmp / "downloads.txt"
    paths_file.write_text("\n".join(fx.paid_grants(mb, 4)) + "\n")
    direct_file = fx.tmp / "direct.txt"
    direct_file.write_text(f"/direct/bench-{mb}mb.bin\n")
    runs: dict[str, list[dict]] = {"direct": [], "accel": []}
    for _ in range(size.download_rounds):
        runs["direct"].append(load.wrk(sb.url, seconds=size.download_seconds, connections=4,
                                       host=BASELINE_HOST, paths_file=direct_file))
        runs["accel"].append(load.wrk(sb.url, seconds=size.download_seconds, connections=4,
                                      paths_file=paths_file))
    result: dict = {"file_mb": mb, "runs": runs}
    for name in runs:
        result[name] = {k: _median(runs[name], k) for k in ("bytes_per_s", "requests_per_s", "p50_ms", "p99_ms")}
        result[name]["failed"] = sum(r["failed"] for r in runs[name])
    result["ratio"] = round(result["accel"]["bytes_per_s"] / result["direct"]["bytes_per_s"], 3)
    small, large = size.cpu_sizes_mb
    result["cpu"] = {f"{mb}mb": _download_cpu(sb, fx, mb, size.cpu_downloads) for mb in (small, large)}
    result["cpu_ratio_large_to_small"] = round(
        result["cpu"][f"{large}mb"]["app_cpu_ms_per_download"]
        / max(result["cpu"][f"{small}mb"]["app_cpu_ms_per_download"], 0.01), 2)
    return result


# --- 4. Releases ----------------------------------------------------------------------------------------

def _playbook(sb: Sandbox, *args: str) -> tuple[float, str]:
    cmd = ["ansible-playbook", "-i", "inventories/sandbox/hosts.yml", *args,
           "-e", f"@{REPO / '.sandbox' / 'secrets.yml'}", "-e", f"app_image_archive_dir={REPO / 'build' / 'images'}"]
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def _bench_release(current: str) -> str:
    """An image that differs from the running one only in its release name
    (APP_VERSION, so X-Release tells them apart), saved where deploy.yml looks."""
    release = f"{current}-bench"
    archive = REPO / "build" / "images" / f"paydrop-{release}.tar"
    if not archive.exists():
        dockerfile = (f"FROM paydrop:{current}\nENV APP_VERSION={release}\n"
                      f"LABEL org.opencontainers.image.version={release}\n")
        subprocess.run(["docker", "build", "-q", "-t", f"paydrop:{release}", "-"], input=dockerfile,
                       text=True, check=True, capture_output=True, timeout=300)
        subprocess.run(["docker", "save", f"paydrop:{release}", "-o", f"{archive}.tmp"], check=True, timeout=300)
        Path(f"{archive}.tmp").rename(archive)
    return release


def _switch(sb: Sandbox, steady: load.SteadyLoad, to: str, args: list[str]) -> dict:
    start = time.monotonic()
    seconds, _ = _playbook(sb, *args)
    end = time.monotonic()
    time.sleep(3)  # answers that were in flight when the playbook returned
    samples = steady.between(start, end + 3)
    first_new = next((s.at for s in samples if s.release == to), None)
    last_other = max((s.at for s in samples if s.release != to and s.status == "200"), default=start)
    failed = [s for s in samples if s.status != "200"]
    return {
        "playbook_seconds": round(seconds, 1),
        "first_answer_s": round(first_new - start, 1) if first_new else None,
        "all_answers_s": round(last_other - start, 1) if first_new else None,
        "requests": len(samples),
        "failed": len(failed),
        "failures": sorted({s.status for s in failed}),
        "retried_after_close": sum(s.retried for s in samples),
    }


def releases(sb: Sandbox, fx: Fixtures, size: Size) -> dict:
    current = sb.active_version()
    release = _bench_release(current)
    with load.SteadyLoad(sb.port, sb.ca, "/", rate=50, max_seconds=900) as steady:
        time.sleep(2)
        deploy = _switch(sb, steady, release, ["playbooks/deploy.yml", "-e", f"app_version={release}"])
        rollback = _switch(sb, steady, current, ["playbooks/deploy.yml", "--tags", "rollback"])
    if sb.active_version() != current:
        raise RuntimeError(f"after the rollback the sandbox runs {sb.active_version()}, not {current}")
    return {"from": current, "to": release, "rate_per_s": 50, "deploy": deploy, "rollback": rollback}


# --- 5. Convergence ---------------------------------------------------------------------------------------

def convergence(sb: Sandbox, fx: Fixtures, size: Size) -> dict:
    """site.yml again on the sandbox make demo converged: nothing may change."""
    seconds, out = _playbook(sb, "playbooks/site.yml", "-e", f"app_version={sb.active_version()}")
    recap = re.search(r"^\S+\s*:\s*ok=(\d+)\s+changed=(\d+)", out, re.M)
    changed_tasks = re.findall(r"^changed: \[[^\]]+\].*$|^TASK \[(.*)\]", out, re.M)
    names, changed = [], []
    for task in changed_tasks:
        if task:
            names.append(task)
        elif names:
            changed.append(names[-1])
    return {"seconds": round(seconds, 1), "ok": int(recap.group(1)) if recap else None,
            "changed": int(recap.group(2)) if recap else None, "changed_tasks": changed}
