"""CHECKOUT_MODE=checkout_session: the app creates a Stripe Checkout Session at the
database price and redirects; the success page reconciles. localstripe has no
Checkout, so a small fake answers the two Checkout calls."""

from __future__ import annotations

import pytest

from tests.support.fake_checkout import FakeCheckoutStripe
from tests.support.live import LiveServer
from tests.support.shop import add_product, csrf_from, get_order, query


@pytest.fixture
def hosted(make_app, tmp_path):
    fake = FakeCheckoutStripe()
    server = LiveServer(fake).start()
    app = make_app({"CHECKOUT_MODE": "checkout_session", "STRIPE_API_BASE": server.url,
                    "PUBLIC_URL": "https://shop.example"})
    add_product(app, tmp_path, slug="icon-set", title="Icon Set", price=900, currency="usd")
    yield app, fake
    server.stop()


def _start(client, email="buyer@example.com"):
    page = client.get("/products/icon-set")
    html = page.get_data(as_text=True)
    assert "Pay 9.00 USD with Stripe" in html
    assert "checkout.js" not in html
    return client.post("/checkout/icon-set/session",
                       data={"csrf_token": csrf_from(html), "email": email})


def test_checkout_session_is_created_at_the_database_price(hosted):
    app, fake = hosted
    client = app.test_client()
    response = _start(client)

    assert response.status_code == 303
    [order] = query(app, "SELECT id::text, status, stripe_checkout_session_id FROM orders")
    session = fake.sessions[order["stripe_checkout_session_id"]]
    assert response.headers["Location"] == session["url"]
    assert order["status"] == "pending"
    [create] = [r for r in fake.requests if r["method"] == "POST"]
    form = create["form"]
    assert form["line_items[0][price_data][unit_amount]"] == "900"
    assert form["line_items[0][price_data][currency]"] == "usd"
    assert form["metadata[order_id]"] == order["id"]
    assert form["payment_intent_data[metadata][order_id]"] == order["id"]
    assert form["success_url"] == (f"https://shop.example/checkout/orders/{order['id']}"
                                   "?session_id={CHECKOUT_SESSION_ID}")
    assert form["cancel_url"] == "https://shop.example/products/icon-set?canceled=1"
    assert create["headers"]["Idempotency-Key"] == f"paydrop-order-{order['id']}-checkout-session"
    assert create["headers"]["Stripe-Version"] == "2025-03-31.basil"


def _retrievals(fake):
    return [r for r in fake.requests
            if r["method"] == "GET" and r["path"].startswith("/v1/checkout/sessions/")]


def test_success_page_reconciles_when_the_webhook_is_late(hosted, redis_client):
    app, fake = hosted
    client = app.test_client()
    _start(client)
    [order] = query(app, "SELECT id::text, stripe_checkout_session_id FROM orders")

    pending = client.get(f"/checkout/orders/{order['id']}")
    assert "Waiting for the payment" in pending.get_data(as_text=True)
    assert get_order(app, order["id"]).status == "pending"

    fake.pay(order["stripe_checkout_session_id"], payment_intent="pi_hosted0001")
    redis_client.delete(f"paydrop:reconcile:{order['id']}")  # the reconcile interval passed
    page = client.get(f"/checkout/orders/{order['id']}?session_id=whatever")
    assert "Your order is paid" in page.get_data(as_text=True)
    paid = get_order(app, order["id"])
    assert (paid.status, paid.stripe_payment_intent_id) == ("paid", "pi_hosted0001")
    # Reloading (or the webhook arriving now) changes nothing.
    client.get(f"/checkout/orders/{order['id']}")
    assert len(query(app, "SELECT id FROM download_grants")) == 1


def test_card_form_endpoints_are_off_in_hosted_mode(hosted):
    app, _fake = hosted
    client = app.test_client()
    page = client.get("/products/icon-set").get_data(as_text=True)
    headers = {"X-CSRFToken": csrf_from(page)}  # so a 404 is the mode, not the CSRF check
    for path in ("/checkout/icon-set/setup-intent", "/checkout/icon-set/pay"):
        assert client.post(path, json={}, headers=headers).status_code == 404, path


def test_hosted_checkout_when_stripe_is_down_fails_the_order(make_app, tmp_path):
    from tests.support.servers import free_port

    app = make_app({"CHECKOUT_MODE": "checkout_session",
                    "STRIPE_API_BASE": f"http://127.0.0.1:{free_port()}"})
    add_product(app, tmp_path, slug="icon-set", price=900, currency="usd")
    response = _start(app.test_client())
    assert response.status_code == 502
    assert "not answering" in response.get_data(as_text=True)
    assert query(app, "SELECT status FROM orders") == [{"status": "failed"}]


def test_pending_page_asks_stripe_at_most_once_per_interval(hosted, redis_client):
    app, fake = hosted
    client = app.test_client()
    _start(client)
    [order] = query(app, "SELECT id::text FROM orders")
    for _ in range(3):
        page = client.get(f"/checkout/orders/{order['id']}").get_data(as_text=True)
        assert "Waiting for the payment" in page
        assert '<meta http-equiv="refresh" content="3">' in page
    assert len(_retrievals(fake)) == 1
    ttl = redis_client.ttl(f"paydrop:reconcile:{order['id']}")
    assert 0 < ttl <= 10


def test_pending_page_refreshes_less_often_as_time_passes(hosted):
    app, _fake = hosted
    client = app.test_client()
    _start(client)
    [order] = query(app, "SELECT id::text FROM orders")
    for age, refresh in (("1 minute", 10), ("1 hour", 30)):
        query(app, "UPDATE orders SET created_at = now() - %s::interval RETURNING id", (age,))
        page = client.get(f"/checkout/orders/{order['id']}").get_data(as_text=True)
        assert f'<meta http-equiv="refresh" content="{refresh}">' in page


def test_page_load_reads_from_stripe_are_quick_and_not_retried(hosted):
    app, fake = hosted
    client = app.test_client()
    _start(client)
    [order] = query(app, "SELECT id::text FROM orders")
    fake.read_status = 500  # the SDK retries a 500 when retries are on
    page = client.get(f"/checkout/orders/{order['id']}")
    assert page.status_code == 200
    assert "Waiting for the payment" in page.get_data(as_text=True)
    assert len(_retrievals(fake)) == 1

    from paydrop.shop.stripe_client import get_stripe

    with app.app_context():
        # Internal, but the timeout is the point: a slow Stripe holds a thread 3 s at most.
        assert get_stripe()._reader(quick=True)._requestor._client._timeout == 3
