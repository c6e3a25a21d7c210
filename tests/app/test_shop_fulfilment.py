"""One idempotent fulfilment function shared by the checkout, the success page
and the webhook: whichever comes first fulfils, the others change nothing."""

from __future__ import annotations

import threading

from tests.support.shop import (
    Shopper,
    add_product,
    authenticate_like_stripe_js,
    charge,
    event,
    get_order,
    payment_intent,
    query,
    signed,
)


def _order_with_paid_intent(app, product):
    """An order whose PaymentIntent succeeded at Stripe while our page and webhook
    never reported back (browser closed, webhook delayed)."""
    from paydrop.db import get_db
    from paydrop.shop import orders, payment_events
    from paydrop.shop.stripe_client import get_stripe

    with app.app_context():
        with get_db().transaction() as cur:
            order = orders.create(cur, product_id=product.id, amount=product.price_amount,
                                  currency=product.currency, email="a@example.com", user_id=None,
                                  checkout_mode="payment_intent")
        intent = get_stripe().create_payment_intent(
            order_id=order.id, amount=order.amount, currency=order.currency,
            payment_method="pm_card_visa", product_slug=product.slug)
        with get_db().transaction() as cur:
            payment_events.link_payment_intent(cur, order.id, intent["id"])
    return order, intent


def test_a_refund_parked_before_the_page_learns_the_payment_wins(app, tmp_path):
    """The page path records the PaymentIntent through link_payment_intent, which
    replays the parked refund; mark_paid never records it behind that back."""
    from paydrop.db import get_db
    from paydrop.shop import orders, payment_events
    from paydrop.shop.stripe_client import get_stripe

    product = add_product(app, tmp_path)
    with app.app_context():
        with get_db().transaction() as cur:
            order = orders.create(cur, product_id=product.id, amount=product.price_amount,
                                  currency=product.currency, email="a@example.com", user_id=None,
                                  checkout_mode="payment_intent")
        intent = get_stripe().create_payment_intent(
            order_id=order.id, amount=order.amount, currency=order.currency,
            payment_method="pm_card_visa", product_slug=product.slug)
    body, headers = signed(event("charge.refunded", charge(intent["id"], order.amount)))
    assert app.test_client().post("/api/webhooks/stripe", data=body,
                                  headers=headers).status_code == 200
    with app.app_context():
        payment_events.fulfil_from_intent(order.id, intent)
    final = get_order(app, order.id)
    assert (final.status, final.stripe_payment_intent_id) == ("refunded", intent["id"])
    assert query(app, "SELECT id FROM download_grants WHERE revoked_at IS NULL") == []


def test_success_page_fulfils_when_the_webhook_is_late(app, tmp_path):
    product = add_product(app, tmp_path)
    order, _intent = _order_with_paid_intent(app, product)
    assert get_order(app, order.id).status == "pending"
    client = app.test_client()
    with client.session_transaction() as session:
        session["orders"] = [order.id]
    page = client.get(f"/checkout/orders/{order.id}")
    assert "Your order is paid" in page.get_data(as_text=True)
    assert get_order(app, order.id).status == "paid"


def test_page_and_webhooks_racing_fulfil_once(live_app, tmp_path):
    import requests
    from paydrop.shop import payment_events

    app, server = live_app
    product = add_product(app, tmp_path)
    order, intent = _order_with_paid_intent(app, product)
    current = get_order(app, order.id)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def page():
        try:
            barrier.wait()
            with app.app_context():
                payment_events.fulfil_from_intent(order.id, intent)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def webhook(n):
        body, headers = signed(event("payment_intent.succeeded", payment_intent(current),
                                     event_id=f"evt_race_{n}"))
        barrier.wait()
        response = requests.post(f"{server.url}/api/webhooks/stripe", data=body,
                                 headers=headers, timeout=30)
        if response.status_code != 200:
            errors.append(AssertionError(response.text))

    threads = [threading.Thread(target=page) for _ in range(4)]
    threads += [threading.Thread(target=webhook, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert get_order(app, order.id).status == "paid"
    assert len(query(app, "SELECT id FROM download_grants WHERE order_id = %s", (order.id,))) == 1


def test_three_d_secure_through_the_api(app, tmp_path, stripe_server):
    add_product(app, tmp_path, slug="field-guide")
    shopper = Shopper(app.test_client(), stripe_server.url)
    shopper.open("field-guide")
    response = shopper.post("/checkout/field-guide/pay",
                            {"setup_intent_id": shopper.card_setup("field-guide", "three_d_secure"),
                             "email": "a@example.com"})
    data = response.get_json()
    assert data["status"] == "requires_action" and data["client_secret"].startswith("pi_")
    order_id = data["confirm_url"].split("/")[3]
    assert get_order(app, order_id).status == "pending"

    early = shopper.post(data["confirm_url"])
    assert early.status_code == 409  # not authenticated yet
    authenticate_like_stripe_js(stripe_server.url, data["client_secret"], True)
    done = shopper.post(data["confirm_url"])
    assert done.status_code == 200 and done.get_json()["status"] == "paid"
    assert get_order(app, order_id).status == "paid"
    # A second confirm is harmless.
    assert shopper.post(data["confirm_url"]).get_json()["status"] == "paid"


def test_declined_card_through_the_api(app, tmp_path, stripe_server):
    add_product(app, tmp_path, slug="field-guide")
    response = Shopper(app.test_client(), stripe_server.url).buy("field-guide",
                                                                 "declined_at_charge")
    assert response.status_code == 402
    assert response.get_json()["error"] == "Your card was declined."
    assert query(app, "SELECT status FROM orders") == [{"status": "failed"}]
    assert query(app, "SELECT id FROM download_grants") == []
