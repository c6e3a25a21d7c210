"""Health endpoints for load balancers, orchestration and people.

``/api/health/live``
    The process answers HTTP. No dependency is touched, so a database outage
    never gets healthy app containers restarted (Docker HEALTHCHECK uses this).
``/api/health/ready``
    PostgreSQL and Redis answer, and the schema is at least at the newest
    migration this release ships (">=", because during a blue-green deploy the
    old release keeps serving after the new release migrated). 200 or 503; the
    load balancer and the deploy gate use this.
``/api/health``
    Only for monitoring hosts and loopback (METRICS_ALLOWED_NETWORKS, judged
    on the TCP peer like /metrics; 404 for anyone else): it tells an attacker
    the release, uptime and dependencies. The seed's JSON shape: status,
    version, environment, uptime and checks for
    database, redis and stripe. 503 exactly when not ready. Stripe is reported
    but only ever makes the status "degraded" (still 200): a slow or broken
    Stripe must not take the shop out of the load balancer. The monitoring
    host's `checkout` probe reads it (roles/monitoring).

Each probe costs at most one query per dependency, run in parallel on a small
thread pool and bounded by HEALTH_CHECK_TIMEOUT_SECONDS. Stripe is checked by a
background thread every STRIPE_HEALTH_CACHE_SECONDS in each worker, started
with the worker under gunicorn; requests only ever read the cached result.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from typing import Any

import psycopg2
import psycopg2.errors
import stripe
from flask import Blueprint, Response, abort, current_app, jsonify
from flask.blueprints import BlueprintSetupState

from . import metrics, migrate
from .db import Database, get_db
from .redis_store import get_redis

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__, url_prefix="/api/health")

HEALTHY, UNHEALTHY, UNKNOWN = "healthy", "unhealthy", "unknown"
_STARTED = time.monotonic()
_STRIPE_PROBE = "paydrop.health.stripe"


class _Pool:
    """A per-process thread pool (a pool inherited across fork() has no threads)."""

    def __init__(self) -> None:
        self._pid = 0
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        with self._lock:
            if self._executor is None or self._pid != os.getpid():
                self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="health")
                self._pid = os.getpid()
            return self._executor.submit(fn, *args)


_POOL = _Pool()


def _database_schema_version(db: Database, timeout: int) -> int:
    """One round trip: reachable, and the schema version (0 before the first migration)."""
    # Wait for a pool slot no longer than the probe itself waits, so a busy pool
    # cannot pile up health threads that outlive their probes.
    with db.connection(wait=timeout) as conn, conn.cursor() as cur:
        try:
            cur.execute(
                "SET LOCAL statement_timeout = %s; "
                "SELECT coalesce(max(version), 0) AS version FROM schema_migrations",
                (f"{timeout}s",),
            )
        except psycopg2.errors.UndefinedTable:
            return 0
        row = cur.fetchone()
        return int(row["version"])


def _redis_ping(client: Any) -> bool:
    return bool(client.ping())


def _dependencies(timeout: int) -> dict[str, Any]:
    """Check PostgreSQL and Redis in parallel; never takes much longer than ``timeout``."""
    deadline = time.monotonic() + timeout
    futures = {
        "database": _POOL.submit(_database_schema_version, get_db(), timeout),
        "redis": _POOL.submit(_redis_ping, get_redis()),
    }
    results: dict[str, Any] = {}
    for name, future in futures.items():
        try:
            results[name] = future.result(timeout=max(deadline - time.monotonic(), 0.01))
        except FutureTimeout:
            results[name] = None
            metrics.DEPENDENCY_ERRORS.labels(name).inc()
            log.warning("health check of %s timed out after %ss", name, timeout)
        except Exception as exc:  # noqa: BLE001 - any failure means "unhealthy"
            results[name] = None
            # db.connection() counts database errors itself.
            if name != "database":
                metrics.DEPENDENCY_ERRORS.labels(name).inc()
            log.warning("health check of %s failed: %s: %s", name, type(exc).__name__, exc)
    return results


class StripeProbe:
    """Stripe's health, checked by a background thread of each worker process
    every ``ttl`` seconds, from the worker's start under gunicorn (see
    ``start_background_checks``), otherwise from the first time it is asked.

    On a timer rather than on request: a worker that /api/health reaches only
    now and then would otherwise answer with whatever it learnt long ago (the
    first request after a while gets the old result, and starts the refresh),
    and with many workers per slot the monitoring host would see an outage
    come and go. From the start rather than from the first request: a worker's
    first answer would otherwise be "unknown", and after each release or
    restart every worker's first probe would break the checkout alert's ``for``.
    Requests still only ever read the cached result.
    """

    def __init__(self, api_key: str, api_base: str, ttl: int, timeout: int) -> None:
        self._api_key = api_key
        self._api_base = api_base
        self._ttl = ttl
        self._timeout = timeout
        self._lock = threading.Lock()
        self._status = UNKNOWN
        self._checked_at = 0.0
        # The process whose thread checks (a thread does not survive fork()).
        self._pid = 0

    def _check(self) -> None:
        http_client = stripe.RequestsClient(timeout=self._timeout)
        client = stripe.StripeClient(
            self._api_key,
            base_addresses={"api": self._api_base},
            max_network_retries=0,
            http_client=http_client,
        )
        try:
            client.v1.products.list(params={"limit": 1})
            status = HEALTHY
        except Exception as exc:  # noqa: BLE001 - any failure means "unhealthy"
            status = UNHEALTHY
            metrics.DEPENDENCY_ERRORS.labels("stripe").inc()
            log.warning("health check of stripe failed: %s: %s", type(exc).__name__, exc)
        finally:
            http_client.close()
        with self._lock:
            self._status = status
            self._checked_at = time.monotonic()

    def _run(self) -> None:
        while True:
            started = time.monotonic()
            self._check()
            time.sleep(max(self._ttl - (time.monotonic() - started), 0.1))

    def _start_locked(self) -> None:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            threading.Thread(target=self._run, name="stripe-health", daemon=True).start()

    def start(self) -> None:
        """Start this process's checking thread (once per process)."""
        with self._lock:
            self._start_locked()

    def status(self) -> tuple[str, float | None]:
        """The last known status and its age in seconds (None before the first result)."""
        with self._lock:
            self._start_locked()
            age = time.monotonic() - self._checked_at if self._checked_at else None
            return self._status, age


def start_background_checks(app: Any) -> None:
    """Start the Stripe checks of this process, for a server that forks workers
    (gunicorn's ``post_worker_init``): then each worker knows Stripe's state
    from its start, not from the first /api/health that happens to reach it.
    Anything but a Paydrop app (e.g. the bench's bare WSGI app) is left alone.
    """
    probe = getattr(app, "extensions", {}).get(_STRIPE_PROBE)
    if probe is not None:
        probe.start()


@bp.record_once
def _setup(state: BlueprintSetupState) -> None:
    config = state.app.config
    state.app.extensions[_STRIPE_PROBE] = StripeProbe(
        config["STRIPE_SECRET_KEY"],
        config["STRIPE_API_BASE"],
        ttl=config["STRIPE_HEALTH_CACHE_SECONDS"],
        timeout=config["HEALTH_CHECK_TIMEOUT_SECONDS"],
    )


def _no_store(response: Response, status: int) -> tuple[Response, int]:
    response.headers["Cache-Control"] = "no-store"
    return response, status


def _readiness() -> tuple[dict[str, str], dict[str, Any], bool]:
    results = _dependencies(current_app.config["HEALTH_CHECK_TIMEOUT_SECONDS"])
    version = results["database"]
    expected = migrate.expected_version()
    schema = UNKNOWN if version is None else HEALTHY if version >= expected else UNHEALTHY
    checks = {
        "database": UNHEALTHY if version is None else HEALTHY,
        "redis": HEALTHY if results["redis"] else UNHEALTHY,
        "migrations": schema,
    }
    details = {"schema_version": version, "expected_schema_version": expected}
    ready = all(value == HEALTHY for value in checks.values())
    return checks, details, ready


@bp.get("/live")
def live() -> tuple[Response, int]:
    return _no_store(jsonify(status="ok", version=current_app.config["APP_VERSION"]), 200)


@bp.get("/ready")
def ready() -> tuple[Response, int]:
    checks, details, is_ready = _readiness()
    body = jsonify(status="ready" if is_ready else "unready", version=current_app.config["APP_VERSION"],
                   checks=checks, **details)
    return _no_store(body, 200 if is_ready else 503)


@bp.get("")
def health() -> tuple[Response, int]:
    if not metrics.peer_allowed():
        abort(404)
    checks, details, is_ready = _readiness()
    stripe_status, stripe_age = current_app.extensions[_STRIPE_PROBE].status()
    checks["stripe"] = stripe_status
    if not is_ready:
        status = "unhealthy"
    elif stripe_status != HEALTHY:
        status = "degraded"
    else:
        status = "ok"
    body = jsonify(
        timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
        status=status,
        version=current_app.config["APP_VERSION"],
        environment=current_app.config["APP_ENVIRONMENT"],
        uptime=round(time.monotonic() - _STARTED, 1),
        checks=checks,
        details={
            **details,
            "stripe_checked_seconds_ago": None if stripe_age is None else round(stripe_age, 1),
        },
    )
    return _no_store(body, 200 if is_ready else 503)
