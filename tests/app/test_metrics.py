"""/metrics in one process: who may read it and what a request adds.

The multi-worker case (real gunicorn, prometheus_client multiprocess mode) is
in test_gunicorn.py."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY


def _get(client: Any, path: str, remote_addr: str) -> Any:
    return client.get(path, environ_base={"REMOTE_ADDR": remote_addr})


@pytest.mark.parametrize(("remote_addr", "allowed"), [
    ("127.0.0.1", True),
    ("::1", True),
    ("::ffff:127.0.0.1", True),
    ("10.0.0.5", False),
    ("203.0.113.9", False),
    ("not-an-address", False),
])
def test_metrics_only_for_allowed_networks(make_app: Callable[..., Any], remote_addr: str,
                                           allowed: bool) -> None:
    response = _get(make_app().test_client(), "/metrics", remote_addr)
    assert response.status_code == (200 if allowed else 404)
    if allowed:
        assert response.mimetype == "text/plain"
        assert b"# TYPE paydrop_http_requests_total counter" in response.data


def test_the_allowed_networks_come_from_settings(make_app: Callable[..., Any]) -> None:
    client = make_app({"METRICS_ALLOWED_NETWORKS": "10.20.0.0/16"}).test_client()
    assert _get(client, "/metrics", "10.20.3.4").status_code == 200
    assert _get(client, "/metrics", "127.0.0.1").status_code == 404


def test_a_forwarded_header_does_not_open_metrics(make_app: Callable[..., Any]) -> None:
    response = make_app().test_client().get(
        "/metrics", environ_base={"REMOTE_ADDR": "198.51.100.7"},
        headers={"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1"})
    assert response.status_code == 404


def test_requests_are_counted_by_endpoint_method_and_status(make_app: Callable[..., Any]) -> None:
    client = make_app().test_client()

    def count(endpoint: str, status: str) -> float:
        labels = {"endpoint": endpoint, "method": "GET", "status": status}
        return REGISTRY.get_sample_value("paydrop_http_requests_total", labels) or 0.0

    def observations(endpoint: str) -> float:
        return REGISTRY.get_sample_value("paydrop_http_request_duration_seconds_count",
                                         {"endpoint": endpoint}) or 0.0

    live, missing, latency = count("health.live", "200"), count("unmatched", "404"), \
        observations("health.live")
    for _ in range(3):
        client.get("/api/health/live")
    client.get("/no/such/page")

    assert count("health.live", "200") == live + 3
    assert count("unmatched", "404") == missing + 1
    assert observations("health.live") == latency + 3


STABLE_NAMES = {
    # Dashboards and alert rules query these names: renaming one breaks them.
    "paydrop_http_requests_total": "counter",
    "paydrop_http_request_duration_seconds": "histogram",
    "paydrop_webhook_events_total": "counter",
    "paydrop_order_transitions_total": "counter",
    "paydrop_payment_failures_total": "counter",
    "paydrop_download_bytes_total": "counter",
    "paydrop_dependency_errors_total": "counter",
}


def test_the_shop_metrics_are_exported_under_stable_names(make_app: Callable[..., Any]) -> None:
    """Written-out names, read from what /metrics serves (not from the code's own objects)."""
    text = make_app().test_client().get("/metrics").get_data(as_text=True)
    exported = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.MULTILINE))
    for name, kind in STABLE_NAMES.items():
        family = name.removesuffix("_total") if kind == "counter" else name
        assert exported.get(family) == kind or exported.get(name) == kind, name


def test_database_and_redis_errors_are_counted(make_app: Callable[..., Any]) -> None:
    client = make_app({"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
                       "REDIS_URL": "redis://127.0.0.1:1/0"}).test_client()

    def errors(dependency: str) -> float:
        return REGISTRY.get_sample_value("paydrop_dependency_errors_total",
                                         {"dependency": dependency}) or 0.0

    database, redis = errors("database"), errors("redis")
    assert client.get("/api/health/ready").status_code == 503
    assert errors("database") == database + 1
    assert errors("redis") == redis + 1


def test_behind_the_load_balancer_metrics_still_judge_the_tcp_peer(
        make_app: Callable[..., Any]) -> None:
    """With ProxyFix on, remote_addr becomes the forwarded client, but /metrics
    looks at the real peer: nginx (a public client behind it) is refused, a
    direct scrape from an allowed network passes even with a forged header."""
    client = make_app({"TRUSTED_PROXY_COUNT": "1"}).test_client()
    via_nginx = client.get("/metrics", environ_base={"REMOTE_ADDR": "10.9.9.9"},
                           headers={"X-Forwarded-For": "127.0.0.1"})
    assert via_nginx.status_code == 404
    direct = client.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"},
                        headers={"X-Forwarded-For": "203.0.113.9"})
    assert direct.status_code == 200


def test_trusted_proxy_gives_the_app_the_client_address(make_app: Callable[..., Any]) -> None:
    flask_app = make_app({"TRUSTED_PROXY_COUNT": "1"})
    seen: list[str | None] = []

    @flask_app.get("/_test/whoami")
    def whoami() -> str:
        from flask import request
        seen.append(request.remote_addr)
        return "ok"

    flask_app.test_client().get("/_test/whoami", environ_base={"REMOTE_ADDR": "10.9.9.9"},
                                headers={"X-Forwarded-For": "198.51.100.4"})
    assert seen == ["198.51.100.4"]


def test_metrics_carry_prometheus_content_type_exactly_once(make_app: Callable[..., Any]) -> None:
    from prometheus_client import CONTENT_TYPE_LATEST

    response = _get(make_app().test_client(), "/metrics", "127.0.0.1")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
