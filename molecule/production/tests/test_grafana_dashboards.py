"""Grafana's provisioning on mon1, without Grafana: its apt repository is out
of reach here, so the scenario does not install it (host_vars/mon1.yml), but
the role renders the datasource, the dashboard provider and every dashboard.
Each panel's PromQL is run on mon1's Prometheus, the datasource the dashboards
name: it must parse and return series (roles/monitoring/README.md, "Grafana").
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import testinfra
import yaml

from tests.support import fleet, scenario

Host = testinfra.host.Host

PROMETHEUS = "http://127.0.0.1:9090"
PROVISIONING = "/etc/grafana/provisioning"
DASHBOARDS_DIR = "/etc/grafana/dashboards/paydrop"
DATASOURCE_UID = "paydrop-prometheus"
ROLE = Path(__file__).resolve().parents[3] / "roles" / "monitoring"
EXPECTED = {"app", "payments", "postgres", "redis", "nginx", "hosts", "backups"}
# Labelled counters appear with their first event, which this scenario does not
# cause: it has no Stripe (the app's API base is a closed port) and healthy
# dependencies. Their panels must parse and name metrics the app defines.
EVENT_ONLY = {
    "paydrop_payment_failures_total": "a declined payment",
    "paydrop_order_transitions_total": "a checkout creating an order",
    "paydrop_dependency_errors_total": "a failing database, Redis, Stripe, storage or SMTP call",
}
APP_METRICS = Path(__file__).resolve().parents[3] / "app" / "paydrop" / "metrics.py"
METRIC_NAME = re.compile(r"\b(?:paydrop|pg|redis|nginx|node|probe)_[a-zA-Z0-9_]+")


@pytest.fixture(scope="module")
def mon() -> Host:
    return testinfra.get_host(scenario.hosts_of("monitoring")[0])


@pytest.fixture(scope="module")
def dashboards(mon: Host) -> dict[str, dict[str, Any]]:
    names = mon.check_output(f"ls {DASHBOARDS_DIR}").split()
    return {name.removesuffix(".json"): json.loads(mon.file(f"{DASHBOARDS_DIR}/{name}").content_string)
            for name in names}


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def query(mon: Host, promql: str) -> dict[str, Any]:
    out = mon.run(f"curl -s --max-time 10 {shlex.quote(PROMETHEUS + '/api/v1/query?query=' + quote(promql, safe=''))}")
    assert out.rc == 0, out.stderr
    body: dict[str, Any] = json.loads(out.stdout)
    return body


@pytest.fixture(scope="module")
def traffic() -> None:
    """What the dashboards count: pages, and a webhook with a bad signature (through lb1)."""
    lb1 = fleet.host("lb1")
    curl = f"curl -sk -o /dev/null -w '%{{http_code}}' --max-time 20 --resolve {fleet.SERVER_NAME}:443:127.0.0.1"
    for path in ("/", "/api/health/ready", "/no-such-page"):
        lb1.run(f"{curl} https://{fleet.SERVER_NAME}{path}")
    status = lb1.check_output(
        f"{curl} -X POST -H 'Content-Type: application/json' -H 'Stripe-Signature: t=1,v1=bad' "
        f"--data '{{\"id\": \"evt_molecule\", \"type\": \"molecule.test\"}}' https://{fleet.SERVER_NAME}/api/webhooks/stripe")
    assert status == "400", status


def test_the_datasource_and_the_provider_are_provisioned(mon: Host) -> None:
    datasources = yaml.safe_load(mon.file(f"{PROVISIONING}/datasources/paydrop.yml").content_string)
    (source,) = datasources["datasources"]
    assert (source["uid"], source["type"], source["url"]) == (DATASOURCE_UID, "prometheus", PROMETHEUS)
    assert source["editable"] is False
    providers = yaml.safe_load(mon.file(f"{PROVISIONING}/dashboards/paydrop.yml").content_string)
    (provider,) = providers["providers"]
    assert provider["options"]["path"] == DASHBOARDS_DIR and provider["allowUiUpdates"] is False
    # Grafana itself is not installed here (its repository is out of reach).
    assert not mon.package("grafana").is_installed


def test_every_dashboard_is_rendered_and_names_the_datasource(dashboards: dict[str, dict[str, Any]]) -> None:
    assert set(dashboards) == EXPECTED
    assert {path.stem for path in (ROLE / "files" / "dashboards").glob("*.yml")} == EXPECTED
    uids = {d["uid"] for d in dashboards.values()}
    assert len(uids) == len(EXPECTED)
    for name, dashboard in dashboards.items():
        assert dashboard["panels"], name
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == DATASOURCE_UID, (name, panel["title"])
            assert panel["targets"], (name, panel["title"])
            assert all(t["datasource"]["uid"] == DATASOURCE_UID for t in panel["targets"]), (name, panel["title"])
        # Panels do not overlap on Grafana's 24-column grid.
        cells = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in dashboard["panels"]]
        assert len(set(cells)) == len(cells) and all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
                                                     for p in dashboard["panels"]), name


def test_every_panel_query_parses_and_returns_series(mon: Host, dashboards: dict[str, dict[str, Any]],
                                                     traffic: None) -> None:
    defined = APP_METRICS.read_text()
    empty: dict[str, str] = {}
    count = 0
    for name, dashboard in sorted(dashboards.items()):
        for title, promql in queries(dashboard):
            count += 1
            event_only = set(EVENT_ONLY) & set(METRIC_NAME.findall(promql))
            if event_only:
                body = query(mon, promql)
                assert body["status"] == "success", (name, title, promql, body)
                assert all(f'"{metric}"' in defined for metric in event_only), (promql, event_only)
                print(f"\n{name} / {title}: parses; series need {', '.join(EVENT_ONLY[m] for m in event_only)}", end="")
                continue

            def series(q: str = promql) -> list[Any]:
                body = query(mon, q)
                assert body["status"] == "success", (q, body)
                result: list[Any] = body["data"]["result"]
                return result

            try:
                # New series (the webhook's) need two scrapes before rate() sees them.
                found = scenario.wait_until(series, promql, timeout=60, interval=3)
                print(f"\n{name} / {title}: {len(found)} series", end="")
            except AssertionError:
                empty[f"{name} / {title}"] = promql
    print(f"\n{count} queries")
    assert not empty, empty
