"""The app under real gunicorn with app/gunicorn.conf.py, on 127.0.0.1:
metrics add up across workers, logs are one JSON line per request, and SIGTERM
lets an in-flight request finish."""

from __future__ import annotations

import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from gunicorn import glogging
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import HOST, LocalStripeServer, RedisServer, free_port, wait_for_port

GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
CONFIG = Path(__file__).resolve().parents[2] / "app" / "gunicorn.conf.py"
LIVE = {"endpoint": "health.live", "method": "GET", "status": "200"}


class Gunicorn:
    """gunicorn with our config file, its stdout (the JSON log) kept in a file."""

    def __init__(self, app_spec: str, env: dict[str, str], workdir: Path, workers: int = 2,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.workers = workers
        self.metrics_dir = workdir / "metrics"
        self.log = workdir / "gunicorn.out"
        self.env = {**env, "PATH": os.environ["PATH"], "GUNICORN_BIND": f"{HOST}:{self.port}",
                    "GUNICORN_WORKERS": str(workers),
                    "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}
        self.args = [GUNICORN, "--config", str(CONFIG), *extra_args, app_spec]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> Gunicorn:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.port, timeout=30, proc=self.proc, log=self.log)
        deadline = time.monotonic() + 30
        while len(self.worker_pids()) < self.workers:
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)
        return self

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def worker_pids(self) -> set[int]:
        booted = {int(line["message"].rsplit(" ", 1)[1]) for line in self.lines()
                  if line["message"].startswith("Booting worker with pid:")}
        return {pid for pid in booted if _alive(pid)}

    def stop(self, timeout: float = 40) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _request(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
    assert url.startswith(f"http://{HOST}:")
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - loopback http
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    status, body, _headers = _request(url, headers)
    return status, body


def _scrape(server: Gunicorn, labels: dict[str, str]) -> float:
    status, body = _get(f"{server.url}/metrics")
    assert status == 200
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "paydrop_http_requests_total" and sample.labels == labels:
                return sample.value
    return 0.0


def _per_process(metrics_dir: Path, labels: dict[str, str],
                 metric: str = "paydrop_http_requests_total") -> dict[int, float]:
    """A counter's value in each process, read from its own multiprocess file."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        alone = metrics_dir.parent / f"alone-{path.stem}"
        alone.mkdir(exist_ok=True)
        shutil.copy(path, alone / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        value = registry.get_sample_value(metric, labels)
        counts[int(path.stem.split("_")[1])] = value or 0.0
        shutil.rmtree(alone)
    return counts


@pytest.fixture
def app_server_env(app_env: dict[str, str]) -> dict[str, str]:
    return {**app_env, "LOG_LEVEL": "INFO", "APP_EXPOSE_RELEASE_HEADER": "true",
            "APP_VERSION": "9.9.9-test"}


@pytest.fixture
def app_server(app_server_env: dict[str, str], tmp_path: Path) -> Any:
    server = Gunicorn("paydrop.wsgi:app", app_server_env, tmp_path, workers=2).start()
    yield server
    server.stop()


def test_metrics_add_up_across_workers(app_server: Gunicorn) -> None:
    sent = 0
    with ThreadPoolExecutor(max_workers=8) as pool:
        # Bounded: keep sending until both workers served some, at most 2000 requests.
        while sent < 2000:
            statuses = list(pool.map(lambda _: _get(f"{app_server.url}/api/health/live")[0],
                                     range(100)))
            assert statuses == [200] * 100
            sent += 100
            per_worker = _per_process(app_server.metrics_dir, LIVE)
            if len([n for n in per_worker.values() if n > 0]) >= 2:
                break
    assert len([n for n in per_worker.values() if n > 0]) >= 2, per_worker
    assert sum(per_worker.values()) == sent

    # Whichever worker answers the scrape, it reports the total of all of them.
    assert {_scrape(app_server, LIVE) for _ in range(10)} == {sent}

    # A worker that dies takes nothing with it: its counts stay in the total.
    victim = max(per_worker, key=lambda pid: per_worker[pid])
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while victim in app_server.worker_pids() or len(app_server.worker_pids()) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert _scrape(app_server, LIVE) == sent


def test_one_json_log_line_per_request_through_gunicorn(app_server: Gunicorn) -> None:
    for index in range(20):
        status, _ = _get(f"{app_server.url}/api/health/live",
                         headers={"X-Request-ID": f"probe-{index}"})
        assert status == 200
    time.sleep(0.5)

    lines = app_server.lines()  # every line parses as JSON
    for index in range(20):
        mine = [line for line in lines if line.get("request_id") == f"probe-{index}"]
        assert len(mine) == 1, mine
        assert mine[0]["route"] == "/api/health/live" and mine[0]["status"] == 200
    assert not [line for line in lines if line["logger"] == "gunicorn.access"]


def test_release_header_and_request_id_come_back(app_server: Gunicorn) -> None:
    status, _body, headers = _request(f"{app_server.url}/api/health/ready",
                                      headers={"X-Request-ID": "from-nginx-1"})
    assert status == 200
    assert headers["X-Release"] == "9.9.9-test"
    assert headers["X-Request-ID"] == "from-nginx-1"


SLOW_APP = '''
import os, pathlib, time

def app(environ, start_response):
    pathlib.Path(os.environ["SLOW_MARKER"]).write_text("started")
    time.sleep(float(environ["QUERY_STRING"]))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"finished"]
'''


def test_sigterm_lets_the_in_flight_request_finish(app_server_env: dict[str, str],
                                                   tmp_path: Path) -> None:
    (tmp_path / "slowapp.py").write_text(SLOW_APP)
    marker = tmp_path / "started"
    server = Gunicorn("slowapp:app", {**app_server_env, "SLOW_MARKER": str(marker)}, tmp_path,
                      workers=1, extra_args=("--pythonpath", str(tmp_path))).start()
    result: dict[str, Any] = {}

    def slow_request() -> None:
        result["response"] = _get(f"{server.url}/?4")
        result["finished_at"] = time.monotonic()

    client = threading.Thread(target=slow_request)
    client.start()
    deadline = time.monotonic() + 10
    while not marker.exists():
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.05)

    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    term_at = time.monotonic()

    client.join(30)
    assert result["response"] == (200, b"finished")
    assert server.proc.wait(40) == 0
    assert result["finished_at"] - term_at > 2  # it really was in flight at SIGTERM


def test_config_sizes_workers_from_cpus_and_tunes_for_nginx(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.delenv("GUNICORN_WORKERS", raising=False)
    monkeypatch.delenv("GUNICORN_BIND", raising=False)
    config = runpy.run_path(str(CONFIG))

    cpus = len(os.sched_getaffinity(0))
    assert 1 <= config["workers"] <= min(2 * cpus + 1, 8)
    assert config["bind"] == ["0.0.0.0:8000"]
    assert config["worker_class"] == "gthread"
    assert config["graceful_timeout"] == 30
    assert config["keepalive"] > 60  # nginx's upstream keepalive_timeout
    assert config["accesslog"] is None
    # Nor are the access line's fields built, only to be dropped (logconfig_dict
    # makes gunicorn's own logger think its access log is on).
    assert issubclass(config["logger_class"], glogging.Logger)
    logger = object.__new__(config["logger_class"])  # nothing set up: any work would fail
    assert logger.access(None, None, None, 0.1) is None

    monkeypatch.setenv("GUNICORN_WORKERS", "3")
    monkeypatch.setenv("GUNICORN_BIND", "127.0.0.1:9001")
    config = runpy.run_path(str(CONFIG))
    assert config["workers"] == 3
    assert config["bind"] == ["127.0.0.1:9001"]


def test_readiness_under_gunicorn_follows_redis(app_server_env: dict[str, str],
                                                tmp_path: Path) -> None:
    with RedisServer() as redis_server, LocalStripeServer() as stripe_server:
        env = {**app_server_env, "REDIS_URL": redis_server.url,
               "STRIPE_API_BASE": stripe_server.url}
        server = Gunicorn("paydrop.wsgi:app", env, tmp_path, workers=2).start()
        try:
            assert _get(f"{server.url}/api/health/ready")[0] == 200
            redis_server.stop()
            deadline = time.monotonic() + 5
            while _get(f"{server.url}/api/health/ready")[0] != 503:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert _get(f"{server.url}/api/health/live")[0] == 200
            redis_server.start()
            deadline = time.monotonic() + 10
            while _get(f"{server.url}/api/health/ready")[0] != 200:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        finally:
            server.stop()


def test_every_worker_checks_stripe_from_its_start(app_server_env: dict[str, str],
                                                   tmp_path: Path) -> None:
    """No request reaches the workers, yet each one checks Stripe on its own timer.

    Stripe here is a closed port, so each check fails and the failing worker
    counts it in its own metrics file: the count is per worker pid. Before the
    checks started with the worker, a worker only began checking when the first
    /api/health reached it, and answered "unknown" until then.
    """
    closed = free_port()
    env = {**app_server_env, "STRIPE_API_BASE": f"http://{HOST}:{closed}",
           "STRIPE_HEALTH_CACHE_SECONDS": "1"}
    server = Gunicorn("paydrop.wsgi:app", env, tmp_path, workers=2).start()
    labels = {"dependency": "stripe"}
    try:
        pids = server.worker_pids()
        assert len(pids) == 2
        deadline = time.monotonic() + 15
        while True:
            failed = _per_process(server.metrics_dir, labels, "paydrop_dependency_errors_total")
            if all(failed.get(pid, 0) >= 2 for pid in pids):
                break
            assert time.monotonic() < deadline, (pids, failed)
            time.sleep(0.2)
        assert not any("/api/health" in str(line.get("path", "")) for line in server.lines())
    finally:
        server.stop()
