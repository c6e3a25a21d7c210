"""Orders' whole life after the sale: a won dispute restores access, a failed
refund is recorded and flags the order, support restores an order."""

from __future__ import annotations

import pytest

from tests.support.shop import (
    add_product,
    create_order,
    dispute,
    event,
    get_order,
    payment_intent,
    query,
    signed,
)

URL = "/api/webhooks/stripe"


def _post(client, evt):
    body, headers = signed(evt)
    return client.post(URL, data=body, headers=headers)


@pytest.fixture
def paid_order(app, client, tmp_path):
    product = add_product(app, tmp_path, price=900, currency="usd")
    order = create_order(app, product, payment_intent_id="pi_orderlife00001")
    assert _post(client, event("payment_intent.succeeded", payment_intent(order))).status_code == 200
    return order


def _usable_grants(app, order_id):
    return query(app, """SELECT id FROM download_grants WHERE order_id = %s
                         AND revoked_at IS NULL AND expires_at > now()""", (order_id,))


def test_a_won_dispute_restores_access(app, client, paid_order):
    opened = dispute(paid_order.stripe_payment_intent_id, 900)
    _post(client, event("charge.dispute.created", opened))
    assert get_order(app, paid_order.id).status == "disputed"
    assert _usable_grants(app, paid_order.id) == []

    _post(client, event("charge.dispute.closed", {**opened, "status": "won"}))
    current = get_order(app, paid_order.id)
    assert (current.status, current.revoked_at, current.flagged) == ("paid", None, False)
    assert len(_usable_grants(app, paid_order.id)) == 1


def test_a_lost_dispute_keeps_the_access_revoked(app, client, paid_order):
    opened = dispute(paid_order.stripe_payment_intent_id, 900)
    _post(client, event("charge.dispute.created", opened))
    _post(client, event("charge.dispute.closed", {**opened, "status": "lost"}))
    assert get_order(app, paid_order.id).status == "disputed"
    assert _usable_grants(app, paid_order.id) == []


@pytest.mark.parametrize("event_type", ["charge.refund.updated", "refund.failed"])
def test_a_failed_refund_is_recorded_and_flags_the_order(app, client, paid_order, event_type):
    refund = {"id": "re_failed000001", "object": "refund", "amount": 900, "status": "failed",
              "failure_reason": "expired_or_canceled_card",
              "payment_intent": paid_order.stripe_payment_intent_id}
    assert _post(client, event(event_type, refund)).status_code == 200
    current = get_order(app, paid_order.id)
    assert current.refund_failed_at is not None and current.flagged
    assert current.refund_failure_reason == "expired_or_canceled_card"
    assert current.status == "paid"

    shown = app.test_cli_runner().invoke(args=["orders", "show", paid_order.id])
    assert "expired_or_canceled_card" in shown.output


def test_support_restores_a_refunded_order(app, client, paid_order):
    query(app, "UPDATE orders SET status = 'refunded', revoked_at = now() WHERE id = %s",
          (paid_order.id,))
    query(app, "UPDATE download_grants SET revoked_at = now()")
    runner = app.test_cli_runner()
    result = runner.invoke(args=["orders", "restore", paid_order.id])
    assert result.exit_code == 0, result.output
    assert "new download link: " in result.output
    assert get_order(app, paid_order.id).status == "paid"
    assert len(_usable_grants(app, paid_order.id)) == 1
    link = result.output.rsplit("new download link: ", 1)[1].strip()
    path = link.split("://", 1)[1].split("/", 1)[1]
    assert client.get("/" + path).status_code == 200

    again = runner.invoke(args=["orders", "restore", paid_order.id])
    assert again.exit_code != 0 and "only refunded or disputed" in again.output
