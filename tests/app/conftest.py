"""Fixtures for the app tests: one PostgreSQL, Redis and localstripe per test
session (per xdist worker), a migrated database, and a fresh app per test with
clean tables and an empty Redis.

``make_app(**overrides)`` builds an app with test settings; ``app`` is the
default one; ``live_app`` also serves it from a real HTTP server on 127.0.0.1
that localstripe's webhooks can reach.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from tests.support.live import LiveServer
from tests.support.servers import LocalStripeServer, PostgresServer, RedisServer, free_port
from tests.support.shop import WEBHOOK_SECRET

TEST_DATABASE = "paydrop_test"
SHOP_TABLES = "outbox, stripe_events, download_grants, orders, users, products"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def stripe_server() -> Iterator[LocalStripeServer]:
    with LocalStripeServer() as server:
        yield server


@pytest.fixture(scope="session")
def database_url(pg_server: PostgresServer) -> str:
    from paydrop import migrate

    url = pg_server.create_database(TEST_DATABASE, exist_ok=True)
    migrate.upgrade(url)
    return url


def _reset(database_url: str, redis_url: str) -> None:
    import psycopg2

    conn = psycopg2.connect(database_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(f"TRUNCATE {SHOP_TABLES} RESTART IDENTITY CASCADE")
    finally:
        conn.close()
    redis_lib.Redis.from_url(redis_url).flushdb()


@pytest.fixture
def app_env(database_url: str, redis_server: RedisServer, stripe_server: LocalStripeServer,
            tmp_path: Path) -> dict[str, str]:
    """Settings for a test app (the environment a deployment would give it)."""
    return {
        "SECRET_KEY": "test-secret-key-not-for-production",
        "APP_ENVIRONMENT": "test",
        "PUBLIC_URL": "http://127.0.0.1",
        "DATABASE_URL": database_url,
        "DATABASE_POOL_SIZE": "20",
        "REDIS_URL": redis_server.url,
        "STRIPE_SECRET_KEY": "sk_test_paydrop",
        "STRIPE_PUBLISHABLE_KEY": "pk_test_paydrop",
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": stripe_server.url,
        "STRIPE_JS_URL": stripe_server.js_url,
        "SESSION_COOKIE_SECURE": "false",
        "STORAGE_LOCAL_DIR": str(tmp_path / "assets"),
        "LOG_LEVEL": "WARNING",
    }


@pytest.fixture
def make_app(app_env: dict[str, str], database_url: str,
             redis_server: RedisServer) -> Iterator[Callable[..., Any]]:
    """Build apps with the test settings; ``env`` entries override settings as
    strings, keyword arguments override parsed config values."""
    from paydrop import create_app

    _reset(database_url, redis_server.url)
    made: list[Any] = []

    def build(env: dict[str, str] | None = None, **overrides: Any) -> Any:
        flask_app = create_app({**app_env, **(env or {})}, **overrides)
        made.append(flask_app)
        return flask_app

    yield build
    for flask_app in made:
        flask_app.extensions["paydrop.db"].close()


@pytest.fixture
def app(make_app: Callable[..., Any]) -> Any:
    return make_app()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def live_app(make_app: Callable[..., Any],
             stripe_server: LocalStripeServer) -> Iterator[tuple[Any, LiveServer]]:
    """(app, server): the app on a real HTTP server, registered as localstripe's webhook."""
    port = free_port()
    flask_app = make_app({"PUBLIC_URL": f"http://127.0.0.1:{port}"})
    server = LiveServer(flask_app, port).start()
    stripe_server.register_webhook("paydrop-tests", f"{server.url}/api/webhooks/stripe",
                                   WEBHOOK_SECRET)
    yield flask_app, server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> redis_lib.Redis:
    return redis_lib.Redis.from_url(redis_server.url)
