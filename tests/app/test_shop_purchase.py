"""The card purchase path against localstripe: order, PaymentIntent, localstripe's
own signed webhook, fulfilment, download, limit and expiry."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.shop import Shopper, add_product, get_order, query


def _wait(predicate, timeout: float = 10.0, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("timed out waiting")


def _order_id(response) -> str:
    return response.get_json()["redirect"].rsplit("/", 1)[1]


def test_card_purchase_pays_once_and_the_file_downloads(live_app, stripe_server, tmp_path,
                                                        redis_client):
    app, _server = live_app
    content = b"%PDF-1.4 the real bytes \x00\xff" * 100
    add_product(app, tmp_path, slug="field-guide", price=1250, currency="eur", content=content)
    pubsub = redis_client.pubsub()
    pubsub.subscribe("paydrop:orders")
    client = app.test_client()
    shopper = Shopper(client, stripe_server.url)

    response = shopper.buy("field-guide", "visa", email="Buyer@Example.com")

    assert response.status_code == 200, response.get_json()
    order_id = _order_id(response)
    order = get_order(app, order_id)
    assert (order.status, order.amount, order.currency, order.email) == (
        "paid", 1250, "eur", "buyer@example.com")
    assert order.stripe_payment_intent_id.startswith("pi_")
    assert order.stripe_charge_id.startswith("ch_")

    # localstripe signs and sends payment_intent.succeeded about a second later;
    # it is recorded and changes nothing.
    _wait(lambda: query(app, "SELECT 1 FROM stripe_events WHERE type = "
                             "'payment_intent.succeeded' AND payment_intent_id = %s "
                             "AND processed_at IS NOT NULL", (order.stripe_payment_intent_id,)))
    assert len(query(app, "SELECT id FROM download_grants WHERE order_id = %s", (order_id,))) == 1

    messages = []
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message and message["type"] == "message":
            messages.append(json.loads(message["data"]))
    assert [(m["event"], m["order_id"], m["amount"]) for m in messages] == [
        ("order.paid", order_id, 1250)]

    page = client.get(f"/checkout/orders/{order_id}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Your order is paid" in html
    link = html.split('id="download-link" href="')[1].split('"')[0]
    download = client.get(link)
    assert download.status_code == 200
    assert download.data == content
    assert download.headers["Content-Disposition"].startswith('attachment; filename="guide.pdf"')
    assert download.headers["Cache-Control"] == "private, no-store"


def test_webhook_alone_fulfils_an_order(live_app, tmp_path):
    """The PaymentIntent is created but the page never reports back: localstripe's
    signed payment_intent.succeeded fulfils the order."""
    from paydrop.db import get_db
    from paydrop.shop import orders
    from paydrop.shop.stripe_client import get_stripe

    app, _server = live_app
    product = add_product(app, tmp_path, price=700)
    with app.app_context():
        with get_db().transaction() as cur:
            order = orders.create(cur, product_id=product.id, amount=700, currency="eur",
                                  email="late@example.com", user_id=None,
                                  checkout_mode="payment_intent")
        intent = get_stripe().create_payment_intent(
            order_id=order.id, amount=order.amount, currency=order.currency,
            payment_method="pm_card_visa", product_slug=product.slug)
    assert intent["status"] == "succeeded"

    paid = _wait(lambda: get_order(app, order.id).status == "paid")
    assert paid
    order = get_order(app, order.id)
    assert order.stripe_payment_intent_id == intent["id"]
    assert len(query(app, "SELECT id FROM download_grants WHERE order_id = %s", (order.id,))) == 1


@pytest.fixture
def paid_link(make_app, stripe_server, tmp_path):
    def buy(**overrides):
        app = make_app(**overrides)
        add_product(app, tmp_path, slug="tiny", content=b"tiny file")
        client = app.test_client()
        response = Shopper(client, stripe_server.url).buy("tiny")
        assert response.status_code == 200, response.get_json()
        order_id = _order_id(response)
        html = client.get(f"/checkout/orders/{order_id}").get_data(as_text=True)
        return app, client, order_id, html.split('id="download-link" href="')[1].split('"')[0]

    return buy


def test_download_limit_is_enforced(paid_link):
    app, client, order_id, link = paid_link(DOWNLOAD_LIMIT=2)
    assert client.get(link).data == b"tiny file"
    assert client.head(link).status_code == 200  # a HEAD does not count
    assert client.get(link).status_code == 200
    third = client.get(link)
    assert third.status_code == 410
    assert "maximum number of times" in third.get_data(as_text=True)
    rows = query(app, "SELECT download_count FROM download_grants WHERE order_id = %s",
                 (order_id,))
    assert rows == [{"download_count": 2}]


def test_download_expiry_is_enforced(paid_link):
    app, client, order_id, link = paid_link(DOWNLOAD_TTL_SECONDS=1)
    rows = query(app, "SELECT expires_at - created_at AS ttl FROM download_grants "
                      "WHERE order_id = %s", (order_id,))
    assert rows[0]["ttl"].total_seconds() == pytest.approx(1, abs=0.5)
    time.sleep(1.2)
    response = client.get(link)
    assert response.status_code == 410
    assert "expired" in response.get_data(as_text=True)
    assert query(app, "SELECT download_count FROM download_grants")[0]["download_count"] == 0


def test_grant_defaults_are_24_hours_and_5_downloads(paid_link):
    app, _client, order_id, _link = paid_link()
    row = query(app, "SELECT expires_at - created_at AS ttl, max_downloads FROM download_grants "
                     "WHERE order_id = %s", (order_id,))[0]
    assert row["max_downloads"] == 5
    assert row["ttl"].total_seconds() == pytest.approx(24 * 3600, abs=5)
