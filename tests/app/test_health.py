"""Health endpoints against real PostgreSQL, Redis and localstripe: liveness
never depends on anything, readiness follows the database, Redis and the
schema version, and Stripe trouble is reported without making the app unready."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest
from paydrop import migrate

from tests.support.servers import HOST, LocalStripeServer, PostgresServer, RedisServer

FAILURE_DEADLINE = 5.0  # seconds from a dependency stopping to readiness saying 503


def _poll(check: Callable[[], bool], timeout: float, step: float = 0.1) -> float:
    """Seconds until ``check()`` is true; fails after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL this test may stop and start (never the shared one)."""
    with PostgresServer() as server:
        migrate.upgrade(server.url)
        yield server


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts TCP connections and never answers: a hung dependency."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(2)
    for conn in accepted:
        conn.close()
    listener.close()


def test_liveness_touches_nothing(make_app: Callable[..., Any]) -> None:
    # Nothing listens at these addresses: liveness must not care.
    app = make_app({"DATABASE_URL": f"postgresql://nobody@{HOST}:1/none",
                    "REDIS_URL": f"redis://{HOST}:1/0"})
    response = app.test_client().get("/api/health/live")
    assert response.status_code == 200
    assert response.get_json()["status"] == "ok"
    assert response.headers["Cache-Control"] == "no-store"


def test_health_has_the_seed_shape(make_app: Callable[..., Any]) -> None:
    client = make_app({"APP_VERSION": "1.2.3-test"}).test_client()
    _poll(lambda: client.get("/api/health").get_json()["checks"]["stripe"] == "healthy", 10)

    response = client.get("/api/health")

    assert response.status_code == 200
    body = response.get_json()
    assert {"timestamp", "status", "version", "environment", "uptime", "checks"} <= set(body)
    assert body["status"] == "ok"
    assert body["environment"] == "test"
    assert body["checks"] == {"database": "healthy", "redis": "healthy",
                              "migrations": "healthy", "stripe": "healthy"}
    ready = client.get("/api/health/ready")
    assert ready.status_code == 200
    # The deploy playbook reads which release answered from here.
    assert ready.get_json()["version"] == body["version"] == "1.2.3-test"


def test_ready_needs_every_migration_this_release_ships(
        make_app: Callable[..., Any], pg_server: PostgresServer) -> None:
    url = pg_server.create_database("paydrop_health_unmigrated", exist_ok=True)
    client = make_app({"DATABASE_URL": url}).test_client()

    response = client.get("/api/health/ready")
    assert response.status_code == 503
    assert response.get_json()["checks"]["migrations"] == "unhealthy"
    assert client.get("/api/health").status_code == 503

    migrate.upgrade(url)
    assert client.get("/api/health/ready").status_code == 200


def test_old_release_stays_ready_after_a_newer_release_migrated(
        make_app: Callable[..., Any], pg_server: PostgresServer) -> None:
    """Blue-green: the new colour's migrations run while the old colour serves."""
    url = pg_server.create_database("paydrop_health_newer", exist_ok=True)
    migrate.upgrade(url)
    newer = migrate.expected_version() + 1
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO schema_migrations (version, name, checksum) "
                    "VALUES (%s, 'from_a_newer_release', 'x') ON CONFLICT DO NOTHING", (newer,))
    conn.close()

    response = make_app({"DATABASE_URL": url}).test_client().get("/api/health/ready")

    assert response.status_code == 200
    assert response.get_json()["schema_version"] == newer


def test_readiness_follows_postgres(make_app: Callable[..., Any],
                                    own_postgres: PostgresServer) -> None:
    client = make_app({"DATABASE_URL": own_postgres.url}).test_client()
    assert client.get("/api/health/ready").status_code == 200

    own_postgres.stop()
    took = _poll(lambda: client.get("/api/health/ready").status_code == 503, FAILURE_DEADLINE)
    assert took < FAILURE_DEADLINE
    body = client.get("/api/health/ready").get_json()
    assert body["checks"]["database"] == "unhealthy"
    assert client.get("/api/health").status_code == 503
    assert client.get("/api/health").get_json()["status"] == "unhealthy"
    assert client.get("/api/health/live").status_code == 200

    own_postgres.start()
    _poll(lambda: client.get("/api/health/ready").status_code == 200, 10)
    assert client.get("/api/health/live").status_code == 200


def test_readiness_follows_redis(make_app: Callable[..., Any], own_redis: RedisServer) -> None:
    client = make_app({"REDIS_URL": own_redis.url}).test_client()
    assert client.get("/api/health/ready").status_code == 200

    own_redis.stop()
    took = _poll(lambda: client.get("/api/health/ready").status_code == 503, FAILURE_DEADLINE)
    assert took < FAILURE_DEADLINE
    assert client.get("/api/health/ready").get_json()["checks"]["redis"] == "unhealthy"
    assert client.get("/api/health/live").status_code == 200

    own_redis.start()
    _poll(lambda: client.get("/api/health/ready").status_code == 200, 10)


def test_stripe_outage_degrades_health_but_not_readiness(make_app: Callable[..., Any]) -> None:
    with LocalStripeServer() as stripe_server:
        client = make_app({"STRIPE_API_BASE": stripe_server.url,
                           "STRIPE_HEALTH_CACHE_SECONDS": "1"}).test_client()
        _poll(lambda: client.get("/api/health").get_json()["checks"]["stripe"] == "healthy", 10)

        stripe_server.stop()
        _poll(lambda: client.get("/api/health").get_json()["checks"]["stripe"] == "unhealthy", 10)

        response = client.get("/api/health")
        assert response.status_code == 200
        assert response.get_json()["status"] == "degraded"
        assert client.get("/api/health/ready").status_code == 200


def test_a_worker_asked_rarely_still_answers_with_a_fresh_stripe_status(make_app: Callable[..., Any]) -> None:
    """Checked on a timer, not on request: the first request after a quiet spell
    already knows Stripe went away (a slot has many workers, and the monitoring
    host reaches each one only now and then)."""
    with LocalStripeServer() as stripe_server:
        client = make_app({"STRIPE_API_BASE": stripe_server.url,
                           "STRIPE_HEALTH_CACHE_SECONDS": "1",
                           "HEALTH_CHECK_TIMEOUT_SECONDS": "1"}).test_client()
        _poll(lambda: client.get("/api/health").get_json()["checks"]["stripe"] == "healthy", 10)

        stripe_server.stop()
        time.sleep(3)  # no request meanwhile: ttl 1 s, plus the 1 s timeout, plus a margin
        body = client.get("/api/health").get_json()
        assert body["checks"]["stripe"] == "unhealthy", body
        assert body["details"]["stripe_checked_seconds_ago"] < 2.5, body


def test_a_hung_stripe_never_slows_a_probe(make_app: Callable[..., Any], black_hole: int) -> None:
    client = make_app({"STRIPE_API_BASE": f"http://{HOST}:{black_hole}",
                       "STRIPE_HEALTH_CACHE_SECONDS": "1",
                       "HEALTH_CHECK_TIMEOUT_SECONDS": "5"}).test_client()
    for _ in range(5):
        started = time.monotonic()
        response = client.get("/api/health")
        assert time.monotonic() - started < 1.0
        assert response.status_code == 200
        assert response.get_json()["checks"]["stripe"] in {"unknown", "unhealthy"}
        time.sleep(0.3)


def test_a_hung_database_is_bounded_by_the_health_timeout(make_app: Callable[..., Any],
                                                          black_hole: int) -> None:
    client = make_app({"DATABASE_URL": f"postgresql://nobody@{HOST}:{black_hole}/x",
                       "DATABASE_CONNECT_TIMEOUT": "30",
                       "HEALTH_CHECK_TIMEOUT_SECONDS": "1"}).test_client()
    started = time.monotonic()
    response = client.get("/api/health/ready")
    assert response.status_code == 503
    assert time.monotonic() - started < 2.0
    assert response.get_json()["checks"]["database"] == "unhealthy"


@pytest.mark.parametrize("enabled", [True, False])
def test_every_response_carries_x_release_when_enabled(make_app: Callable[..., Any],
                                                       enabled: bool) -> None:
    client = make_app({"APP_EXPOSE_RELEASE_HEADER": str(enabled).lower(),
                       "APP_VERSION": "2.7.1"}).test_client()
    for path in ("/api/health/live", "/no/such/page", "/metrics"):
        response = client.get(path)
        assert response.headers.get("X-Release") == ("2.7.1" if enabled else None), path
    assert client.get("/api/health").get_json()["version"] == "2.7.1"


def test_a_busy_pool_is_waited_on_no_longer_than_the_health_timeout(
        make_app: Callable[..., Any]) -> None:
    from paydrop import health
    from paydrop.db import get_db

    app = make_app({"DATABASE_POOL_SIZE": "1", "HEALTH_CHECK_TIMEOUT_SECONDS": "1"})
    with app.app_context(), get_db().connection():  # the only slot is taken
        started = time.monotonic()
        response = app.test_client().get("/api/health/ready")
        assert response.status_code == 503
        assert response.get_json()["checks"]["database"] == "unhealthy"
        # The probe's worker thread gives up on the slot too, not after POOL_WAIT_SECONDS.
        with pytest.raises(psycopg2.pool.PoolError):
            health._database_schema_version(get_db(), 1)
        assert time.monotonic() - started < 4.0


def test_full_health_answers_only_monitoring_and_loopback(make_app) -> None:
    """The details (release, uptime, dependencies) are for monitoring; readiness
    and liveness stay public (load balancers and orchestration use them)."""
    client = make_app({"TRUSTED_PROXY_COUNT": "1",
                       "METRICS_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128,10.20.0.5/32"}).test_client()
    public = {"REMOTE_ADDR": "203.0.113.50"}
    assert client.get("/api/health", environ_base=public).status_code == 404
    forged = client.get("/api/health", environ_base=public,
                        headers={"X-Forwarded-For": "127.0.0.1"})
    assert forged.status_code == 404
    for allowed in ("127.0.0.1", "10.20.0.5", "::1"):
        assert client.get("/api/health", environ_base={"REMOTE_ADDR": allowed}).status_code == 200
    assert client.get("/api/health/ready", environ_base=public).status_code == 200
    assert client.get("/api/health/live", environ_base=public).status_code == 200
