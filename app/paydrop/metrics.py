"""Prometheus metrics: defined once here, incremented anywhere, served at /metrics.

Under gunicorn every worker is its own process, so the counters live in
prometheus_client's multiprocess mode: each process writes its values to files
in ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` adds them up across all of
them, whichever worker answers. ``gunicorn.conf.py`` empties that directory at
start-up and marks dead workers in ``child_exit``. Without the variable (tests,
``flask run``) the default in-process registry is used.

Labels stay low-cardinality: ``endpoint`` is the Flask endpoint name (never the
raw path, which holds slugs and download tokens).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator

from flask import Blueprint, Response, abort, current_app, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

REQUESTS = Counter(
    "paydrop_http_requests_total",
    "HTTP requests answered, by Flask endpoint, method and status code.",
    ["endpoint", "method", "status"],
)
REQUEST_LATENCY = Histogram(
    "paydrop_http_request_duration_seconds",
    "Time from request start to response, by Flask endpoint.",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
WEBHOOK_EVENTS = Counter(
    "paydrop_webhook_events_total",
    "Stripe webhook events received, by event type and outcome "
    "(processed, duplicate, ignored, invalid_signature, error).",
    ["type", "outcome"],
)
ORDER_TRANSITIONS = Counter(
    "paydrop_order_transitions_total",
    "Orders entering a state (pending, paid, failed, refunded, ...).",
    ["state"],
)
PAYMENT_FAILURES = Counter(
    "paydrop_payment_failures_total",
    "Failed payments, by reason (Stripe decline code or error class).",
    ["reason"],
)
DOWNLOAD_BYTES = Counter(
    "paydrop_download_bytes_total",
    "Bytes of digital goods served (or handed to nginx via X-Accel-Redirect).",
)
DEPENDENCY_ERRORS = Counter(
    "paydrop_dependency_errors_total",
    "Errors talking to a dependency (database, redis, stripe, storage, smtp).",
    ["dependency"],
)

bp = Blueprint("metrics", __name__)


def _registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def client_allowed(address: str | None) -> bool:
    """True when ``address`` is inside one of METRICS_ALLOWED_NETWORKS."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in current_app.config["METRICS_ALLOWED_NETWORKS"])


def peer_allowed() -> bool:
    """True when the TCP peer is in METRICS_ALLOWED_NETWORKS (monitoring hosts, loopback).

    Judges the TCP peer, not the address ProxyFix derived from X-Forwarded-For:
    nginx never proxies these endpoints, Prometheus scrapes the slot port
    directly, and a forged X-Forwarded-For must change nothing.
    """
    original = request.environ.get("werkzeug.proxy_fix.orig", {})
    return client_allowed(original.get("REMOTE_ADDR", request.remote_addr))


@bp.get("/metrics")
def metrics() -> Response:
    if not peer_allowed():
        abort(404)
    return Response(generate_latest(_registry()) + _outbox_metrics(), content_type=CONTENT_TYPE_LATEST)


class _OutboxCollector:
    """Outbox messages by status, read from the database at scrape time (the
    worker is a separate process that nothing scrapes; the table is the truth)."""

    def __init__(self, counts: dict[str, int]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "paydrop_outbox_messages",
            "Mail outbox messages by status (pending, sent, skipped, dead: gave up).",
            labels=["status"],
        )
        for status, count in self._counts.items():
            family.add_metric([status], count)
        yield family


def _outbox_metrics() -> bytes:
    from .shop import outbox

    try:
        counts = outbox.counts()
    except Exception:  # noqa: BLE001 - the other metrics still matter when the database is down
        DEPENDENCY_ERRORS.labels(dependency="database").inc()
        return b""
    registry = CollectorRegistry()
    registry.register(_OutboxCollector(counts))
    return generate_latest(registry)
