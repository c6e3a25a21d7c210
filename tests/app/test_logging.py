"""Logs: one JSON object per line on stdout, with the client's request id, and
never a secret, a card number, a download token or a webhook body."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from paydrop.observability import REDACTOR

from tests.support.shop import (
    WEBHOOK_SECRET,
    add_product,
    create_order,
    event,
    payment_intent,
    signed,
    wait_for_outbox,
)

CARD = "4242424242424242"


def _lines(out: str) -> list[dict[str, Any]]:
    """Every stdout line must be one JSON object."""
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture
def logging_app(make_app: Callable[..., Any]) -> Any:
    return make_app({"LOG_LEVEL": "INFO"})


def test_each_request_logs_one_json_line_with_the_clients_request_id(
        logging_app: Any, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    response = logging_app.test_client().get(
        "/api/health/live", headers={"X-Request-ID": "lb-7f3a.42:1"})

    assert response.headers["X-Request-ID"] == "lb-7f3a.42:1"
    lines = [line for line in _lines(capsys.readouterr().out)
             if line.get("request_id") == "lb-7f3a.42:1"]
    assert len(lines) == 1
    line = lines[0]
    assert line["level"] == "INFO"
    assert line["route"] == "/api/health/live"
    assert line["method"] == "GET"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["timestamp"])


@pytest.mark.parametrize("supplied", ["", "has spaces", "x" * 200, "<script>", "id;rm -rf",
                                      "-leading-dash"])
def test_an_insane_request_id_is_replaced(logging_app: Any, supplied: str) -> None:
    response = logging_app.test_client().get("/api/health/live",
                                             headers={"X-Request-ID": supplied})
    assert str(uuid.UUID(response.headers["X-Request-ID"])) == response.headers["X-Request-ID"]


def test_routes_are_logged_as_templates_and_query_strings_never(
        logging_app: Any, capsys: pytest.CaptureFixture[str]) -> None:
    token = "Zm9yZ2VkLWRvd25sb2FkLXRva2Vu.c2lnbmF0dXJl"
    capsys.readouterr()
    logging_app.test_client().get(f"/downloads/{token}?sig=querysecret")
    logging_app.test_client().get(f"/no/such/page?email=someone@example.com&token={token}")

    out = capsys.readouterr().out
    assert token not in out
    assert "querysecret" not in out and "someone@example.com" not in out
    routes = {line.get("route") for line in _lines(out) if "status" in line}
    assert "/downloads/<token>" in routes


def test_webhook_secret_and_card_numbers_never_reach_the_log(
        logging_app: Any, capsys: pytest.CaptureFixture[str]) -> None:
    client = logging_app.test_client()
    capsys.readouterr()

    # A forged webhook (bad signature) whose body carries card data, and a
    # correctly signed one: the shop logs about both, never their bodies.
    forged = event("payment_intent.succeeded", {"id": "pi_x", "object": "payment_intent",
                                                "card": {"number": CARD}})
    body, headers = signed(forged, secret="whsec_not_ours")
    # The forged header carries card data too, in case anything logs headers.
    headers["Stripe-Signature"] += f",card={CARD},secret={WEBHOOK_SECRET}"
    assert client.post("/api/webhooks/stripe", data=body, headers=headers).status_code == 400
    rejected = [line for line in _lines(capsys.readouterr().out)
                if "bad signature" in line.get("message", "")]
    # The rejection is logged (so this half checks a line that exists) ...
    assert len(rejected) == 1 and rejected[0]["level"] == "WARNING", rejected
    # ... without the body, the header or anything they carry.
    assert CARD not in json.dumps(rejected) and "pi_x" not in json.dumps(rejected)
    assert WEBHOOK_SECRET not in json.dumps(rejected)
    assert headers["Stripe-Signature"].split(",")[1] not in json.dumps(rejected)
    body, headers = signed(event("customer.created", {"id": "cus_x", "object": "customer",
                                                      "description": f"card {CARD}"}))
    assert client.post("/api/webhooks/stripe", data=body, headers=headers).status_code < 300

    # Careless code elsewhere: the filter must still catch it.
    careless = logging.getLogger("paydrop.careless")
    careless.warning("verifying with %s for card %s", WEBHOOK_SECRET, "4242 4242 4242 4242")
    careless.warning("charge failed", extra={"card": "4000-0000-0000-0341",
                                             "stripe_key": "sk_test_paydrop"})
    try:
        raise ValueError(f"bad signature for secret {WEBHOOK_SECRET}, card {CARD}")
    except ValueError:
        careless.exception("webhook verification blew up")

    out = capsys.readouterr().out
    assert WEBHOOK_SECRET not in out
    assert "sk_test_paydrop" not in out
    assert "test-secret-key-not-for-production" not in out  # SECRET_KEY
    for line in _lines(out):
        for value in line.values():
            digits = re.sub(r"[^0-9]", "", str(value))
            assert CARD not in digits and "4000000000000341" not in digits, line
    assert "[REDACTED]" in out


def test_redactor_leaves_ordinary_values_alone() -> None:
    text = ("request 2f1c6f5e-3b5a-4a8e-9c1d-123456789012 took 12.5 ms at "
            "2026-01-02T03:04:05.678+00:00 for order 123456 and pi_3NxYzAbCdEf")
    assert REDACTOR.redact(text) == text


def test_address_confirmation_tokens_never_reach_the_log(
        logging_app: Any, capsys: pytest.CaptureFixture[str]) -> None:
    token = "eyJ1c2VyIjoxLCJlbWFpbCI6ImFAZXhhbXBsZS5jb20ifQ.Zm9yZ2Vk.c2lnbmF0dXJl"
    capsys.readouterr()
    logging_app.test_client().get(f"/account/verify/{token}")
    logging_app.test_client().get(f"/account/verify/{token}/extra")  # unmatched: raw path
    logging.getLogger("paydrop.careless").warning("see https://shop/account/verify/%s", token)

    out = capsys.readouterr().out
    assert token not in out
    lines = [line for line in _lines(out) if "status" in line]
    assert {line["path"] for line in lines} == {"/account/verify/<token>",
                                                "/account/verify/[REDACTED]"}


def test_a_paid_webhook_logs_one_line_with_its_event_and_the_order_it_paid(
        logging_app: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """The request's line says what it did, findable by the order id: no separate
    "order ... is now paid" line and no "SMTP_HOST is empty" per receipt (each
    line costs the host's log path as much CPU as a webhook's SQL)."""
    product = add_product(logging_app, tmp_path, price=900, currency="usd")
    order = create_order(logging_app, product)
    evt = event("payment_intent.succeeded", payment_intent(order), event_id="evt_logged_1")
    body, headers = signed(evt)
    capsys.readouterr()

    response = logging_app.test_client().post("/api/webhooks/stripe", data=body, headers={
        **headers, "X-Request-ID": "wh-logged-1"})
    assert response.status_code == 200
    wait_for_outbox(logging_app, "skipped")
    lines = _lines(capsys.readouterr().out)

    [line] = [line for line in lines if order.id in json.dumps(line)]
    assert line["request_id"] == "wh-logged-1" and line["status"] == 200
    assert line["order_changes"] == [f"{order.id} paid"]
    assert line["stripe_events"] == ["evt_logged_1 payment_intent.succeeded processed"]
    assert not [line for line in lines if "is now" in line["message"]]

    # The same event again: a duplicate, said on its own request line.
    response = logging_app.test_client().post("/api/webhooks/stripe", data=body, headers=headers)
    assert response.status_code == 200
    [line] = [line for line in _lines(capsys.readouterr().out) if "stripe_events" in line]
    assert line["stripe_events"] == ["evt_logged_1 payment_intent.succeeded duplicate"]
    assert "order_changes" not in line


def test_an_order_change_outside_a_request_logs_its_own_line(
        logging_app: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """The worker and the CLI have no request line to put it on."""
    from paydrop.shop import fulfilment

    order = create_order(logging_app, add_product(logging_app, tmp_path))
    capsys.readouterr()
    with logging_app.app_context():
        fulfilment.fail(order.id, "abandoned")
    [line] = [line for line in _lines(capsys.readouterr().out) if order.id in line["message"]]
    assert line["message"] == f"order {order.id} is now failed"
