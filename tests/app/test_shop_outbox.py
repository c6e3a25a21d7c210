"""Mail that survives: receipts and confirmation links go through an outbox
written with the state change, delivered by `paydrop worker` with retries,
back-off and a dead-letter state that /metrics shows; the same worker fails
abandoned orders and expires unverified accounts."""

from __future__ import annotations

import re
import time

import pytest

from tests.support.shop import (
    Shopper,
    add_product,
    create_order,
    csrf_from,
    event,
    payment_intent,
    query,
    signed,
)
from tests.support.smtp import FakeSmtpServer

PASSWORD = "correct horse battery"


@pytest.fixture
def smtp():
    server = FakeSmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def mail_env(smtp):
    return {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port), "SMTP_STARTTLS": "false",
            "MAIL_RETRY_BASE_SECONDS": "1", "PUBLIC_URL": "https://shop.example"}


def _worker(app):
    result = app.test_cli_runner().invoke(args=["worker", "--once"])
    assert result.exit_code == 0, result.output
    return result.output


def _outbox(app):
    return query(app, "SELECT status, attempts, last_error IS NOT NULL AS erred, body = '' AS "
                      "emptied FROM outbox ORDER BY id")


def _settled(app, timeout=10.0):
    """Wait until the web's immediate delivery attempt is over (nothing leased)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = query(app, "SELECT status, attempts, next_attempt_at > now() + interval '60 s' "
                          "AS leased FROM outbox")
        if rows and not any(row["leased"] for row in rows) and all(
                row["status"] != "pending" or row["attempts"] > 0 for row in rows):
            return
        time.sleep(0.05)
    raise AssertionError(f"outbox never settled: {rows}")


def _make_due(app):
    query(app, "UPDATE outbox SET next_attempt_at = now() WHERE status = 'pending'")


def _metric(app, status):
    text = app.test_client().get("/metrics").get_data(as_text=True)
    match = re.search(rf'^paydrop_outbox_messages{{status="{status}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else None


def test_a_receipt_survives_a_mail_server_that_refuses_the_first_attempts(
        make_app, mail_env, smtp, stripe_server, tmp_path):
    app = make_app(mail_env)
    add_product(app, tmp_path, slug="field-guide")
    smtp.fail_next(3)
    started = time.monotonic()
    response = Shopper(app.test_client(), stripe_server.url).buy("field-guide")
    assert response.status_code == 200
    assert time.monotonic() - started < 5  # the page never waits for SMTP
    # Written with the payment: the order is paid and its receipt is queued.
    assert query(app, "SELECT status FROM orders") == [{"status": "paid"}]
    _settled(app)
    assert _outbox(app) == [{"status": "pending", "attempts": 1, "erred": True,
                             "emptied": False}]
    for attempts in (2, 3):
        _make_due(app)
        _worker(app)
        assert _outbox(app)[0]["attempts"] == attempts
    assert smtp.messages == []
    # Back-off: not due yet, so a worker round does not touch it.
    _worker(app)
    assert _outbox(app)[0]["attempts"] == 3
    _make_due(app)
    assert "sent" in _worker(app)
    assert _outbox(app) == [{"status": "sent", "attempts": 4, "erred": False, "emptied": True}]
    [receipt] = smtp.messages
    assert receipt["Subject"].startswith("Your receipt") and smtp.refused == 3
    assert _metric(app, "sent") == 1 and _metric(app, "dead") == 0


def test_a_message_that_keeps_failing_is_dead_visible_in_metrics_and_can_be_retried(
        make_app, mail_env, smtp):
    app = make_app({**mail_env, "MAIL_MAX_ATTEMPTS": "2"})
    smtp.fail_next(2)
    client = app.test_client()
    token = csrf_from(client.get("/account/register").get_data(as_text=True))
    client.post("/account/register", data={"csrf_token": token, "email": "reader@example.com",
                                           "password": PASSWORD, "password_confirm": PASSWORD})
    _settled(app)
    _make_due(app)
    _worker(app)
    assert _outbox(app) == [{"status": "dead", "attempts": 2, "erred": True, "emptied": False}]
    assert _metric(app, "dead") == 1
    assert smtp.messages == []

    result = app.test_cli_runner().invoke(args=["mail", "retry-dead"])
    assert "1 message(s) queued again" in result.output
    _worker(app)
    assert _outbox(app)[0]["status"] == "sent"
    assert smtp.messages[0]["Subject"] == "Confirm your e-mail address"
    assert _metric(app, "dead") == 0


def test_the_worker_fails_abandoned_orders_and_expires_unverified_accounts(make_app, tmp_path):
    app = make_app({"PENDING_ORDER_TTL_SECONDS": "600", "UNVERIFIED_ACCOUNT_TTL_SECONDS": "600"})
    product = add_product(app, tmp_path, slug="field-guide")
    old = create_order(app, product)
    fresh = create_order(app, product)
    with_payment = create_order(app, product, payment_intent_id="pi_stillwaiting01")
    query(app, "UPDATE orders SET created_at = now() - interval '1 hour' WHERE id IN (%s, %s)",
          (old.id, with_payment.id))
    client = app.test_client()
    token = csrf_from(client.get("/account/register").get_data(as_text=True))
    client.post("/account/register", data={"csrf_token": token, "email": "stale@example.com",
                                           "password": PASSWORD, "password_confirm": PASSWORD})
    query(app, "UPDATE users SET created_at = now() - interval '1 hour'")

    output = _worker(app)
    assert "orders_expired=1" in output and "accounts_expired=1" in output
    states = {row["id"]: row["status"] for row in
              query(app, "SELECT id::text AS id, status FROM orders")}
    assert states == {old.id: "failed", fresh.id: "pending", with_payment.id: "pending"}
    assert query(app, "SELECT id FROM users") == []


def test_pages_and_webhooks_never_wait_for_a_slow_mail_server(make_app, mail_env, smtp, tmp_path):
    """The mail server takes seconds to answer: a sign-up (confirmation mail)
    and a paying webhook (receipt) answer at once, and both mails still go out
    off the request. Sending inline, each request would wait for SMTP."""
    smtp.stall(4)
    app = make_app(mail_env)
    product = add_product(app, tmp_path, price=900, currency="usd")
    order = create_order(app, product, payment_intent_id="pi_slowsmtp000001")
    client = app.test_client()
    token = csrf_from(client.get("/account/register").get_data(as_text=True))
    started = time.monotonic()
    response = client.post("/account/register", data={
        "csrf_token": token, "email": "reader@example.com", "password": PASSWORD,
        "password_confirm": PASSWORD})
    assert response.status_code == 302
    assert time.monotonic() - started < 2, "the sign-up waited for the mail server"

    body, headers = signed(event("payment_intent.succeeded", payment_intent(order)))
    started = time.monotonic()
    assert app.test_client().post("/api/webhooks/stripe", data=body,
                                  headers=headers).status_code == 200
    assert time.monotonic() - started < 2, "the webhook waited for the mail server"
    assert query(app, "SELECT status FROM orders") == [{"status": "paid"}]

    subjects = sorted(message["Subject"] for message in smtp.wait_for(2, timeout=20))
    assert subjects[0] == "Confirm your e-mail address"
    assert subjects[1].startswith("Your receipt")


def test_the_receipt_is_written_in_the_paying_transaction(make_app, mail_env, tmp_path,
                                                          monkeypatch):
    """When the receipt cannot be queued, the payment is not recorded either
    (the webhook is a 500 and Stripe retries): an order is never paid without
    its receipt in the outbox, nor the other way round."""
    from paydrop.shop import outbox

    app = make_app(mail_env)
    product = add_product(app, tmp_path, price=900, currency="usd")
    order = create_order(app, product, payment_intent_id="pi_sametxn0000001")
    original = outbox.enqueue

    def failing(cur, *args, **kwargs):
        raise RuntimeError("the outbox insert failed")

    monkeypatch.setattr(outbox, "enqueue", failing)
    body, headers = signed(event("payment_intent.succeeded", payment_intent(order),
                                 event_id="evt_sametxn_1"))
    client = app.test_client()
    assert client.post("/api/webhooks/stripe", data=body, headers=headers).status_code == 500
    assert query(app, "SELECT status FROM orders") == [{"status": "pending"}]
    assert query(app, "SELECT id FROM download_grants") == []
    assert query(app, "SELECT id FROM outbox") == []

    monkeypatch.setattr(outbox, "enqueue", original)
    assert client.post("/api/webhooks/stripe", data=body, headers=headers).status_code == 200
    assert query(app, "SELECT status FROM orders") == [{"status": "paid"}]
    assert [row["subject"] for row in query(app, "SELECT subject FROM outbox")] == [
        f"Your receipt for {product.title}"]
