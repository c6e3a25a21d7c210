"""Claims the shop made without a test: concurrent downloads against the limit,
/confirm on someone else's order, a currency mismatch, a signature header with
several v1 entries, a parked dispute replayed; and key rotation (old keys and
webhook secrets keep working while listed)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from tests.support.live import LiveServer
from tests.support.shop import (
    WEBHOOK_SECRET,
    Shopper,
    add_product,
    create_order,
    dispute,
    event,
    get_order,
    payment_intent,
    query,
    sign,
    signed,
)

URL = "/api/webhooks/stripe"


def _post(client, evt, **kwargs):
    body, headers = signed(evt, **kwargs)
    return client.post(URL, data=body, headers=headers)


def test_concurrent_downloads_never_exceed_the_limit(make_app, stripe_server, tmp_path):
    app = make_app(DOWNLOAD_LIMIT=3)
    add_product(app, tmp_path, slug="tiny", content=b"tiny file")
    client = app.test_client()
    response = Shopper(client, stripe_server.url).buy("tiny")
    html = client.get(response.get_json()["redirect"]).get_data(as_text=True)
    link = html.split('id="download-link" href="')[1].split('"')[0]

    server = LiveServer(app).start()
    statuses: list[int] = []
    barrier = threading.Barrier(12)

    def download() -> None:
        barrier.wait()
        statuses.append(requests.get(server.url + link, timeout=30).status_code)

    try:
        threads = [threading.Thread(target=download) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        server.stop()
    assert sorted(statuses) == [200] * 3 + [410] * 9
    assert query(app, "SELECT download_count FROM download_grants") == [{"download_count": 3}]


def test_confirm_on_someone_elses_order_is_404_and_changes_nothing(app, tmp_path, stripe_server):
    add_product(app, tmp_path, slug="field-guide")
    buyer = Shopper(app.test_client(), stripe_server.url)
    response = buyer.buy("field-guide", card="three_d_secure", authenticate=None)
    assert response.get_json()["status"] == "requires_action"
    confirm_url = response.get_json()["confirm_url"]

    stranger = Shopper(app.test_client(), stripe_server.url)
    stranger.open("field-guide")
    assert stranger.post(confirm_url).status_code == 404
    assert query(app, "SELECT status FROM orders") == [{"status": "pending"}]
    assert buyer.post(confirm_url).status_code == 409  # the owner gets an answer (control)


def test_a_payment_in_another_currency_does_not_fulfil(app, client, tmp_path):
    product = add_product(app, tmp_path, price=900, currency="eur")
    order = create_order(app, product, payment_intent_id="pi_currency0001")
    response = _post(client, event("payment_intent.succeeded",
                                   payment_intent(order, currency="usd")))
    assert response.status_code == 200
    current = get_order(app, order.id)
    assert (current.status, current.flagged) == ("pending", True)
    assert query(app, "SELECT id FROM download_grants") == []
    # The same amount in the order's currency does fulfil (the control).
    _post(client, event("payment_intent.succeeded", payment_intent(order)))
    assert get_order(app, order.id).status == "paid"


def test_a_signature_header_with_several_v1_entries(app, client, tmp_path):
    product = add_product(app, tmp_path, price=900, currency="usd")
    order = create_order(app, product, payment_intent_id="pi_multisig0001")
    now = int(time.time())

    def header(body, *secrets):
        entries = [sign(body, secret, now).split(",")[1] for secret in secrets]
        return {"Stripe-Signature": ",".join([f"t={now}", *entries]),
                "Content-Type": "application/json"}

    body = json.dumps(event("payment_intent.payment_failed",
                            payment_intent(order, status="requires_payment_method")))
    refused = client.post(URL, data=body, headers=header(body, "whsec_a", "whsec_b"))
    assert refused.status_code == 400
    assert get_order(app, order.id).status == "pending"
    accepted = client.post(URL, data=body, headers=header(body, "whsec_a", WEBHOOK_SECRET))
    assert accepted.status_code == 200
    assert get_order(app, order.id).status == "failed"


def test_a_parked_dispute_is_replayed_when_the_order_learns_its_payment(app, client, tmp_path):
    product = add_product(app, tmp_path, price=900, currency="usd")
    order = create_order(app, product)  # no PaymentIntent recorded yet
    intent_id = "pi_parkeddispute01"
    parked = event("charge.dispute.created", dispute(intent_id, 900))
    assert _post(client, parked).status_code == 200
    assert query(app, "SELECT processed_at IS NULL AS parked FROM stripe_events") == [
        {"parked": True}]

    paid = payment_intent(order, id=intent_id)
    assert _post(client, event("payment_intent.succeeded", paid)).status_code == 200
    current = get_order(app, order.id)
    assert (current.status, current.flagged) == ("disputed", True)
    assert query(app, "SELECT id FROM download_grants WHERE revoked_at IS NULL") == []
    assert query(app, "SELECT processed_at IS NULL AS parked FROM stripe_events "
                      "WHERE id = %s", (parked["id"],)) == [{"parked": False}]


# -- key rotation ----------------------------------------------------------------------------

OLD_KEY = "the-previous-secret-key-of-this-shop-0001"


def test_links_signed_with_a_fallback_key_still_work(make_app, stripe_server, tmp_path):
    old = make_app({"SECRET_KEY": OLD_KEY})
    add_product(old, tmp_path, slug="tiny", content=b"tiny file")
    client = old.test_client()
    response = Shopper(client, stripe_server.url).buy("tiny")
    html = client.get(response.get_json()["redirect"]).get_data(as_text=True)
    link = html.split('id="download-link" href="')[1].split('"')[0]

    rotated = make_app({"SECRET_KEY_FALLBACKS": OLD_KEY})
    assert rotated.test_client().get(link).data == b"tiny file"
    forgotten = make_app()  # the old key dropped from the list: its links stop working
    assert forgotten.test_client().get(link).status_code == 404


def test_an_open_page_keeps_its_csrf_token_across_a_key_rotation(make_app, tmp_path,
                                                                  stripe_server):
    old = make_app({"SECRET_KEY": OLD_KEY})
    add_product(old, tmp_path, slug="field-guide")
    shopper = Shopper(old.test_client(), stripe_server.url)
    shopper.open("field-guide")
    rotated = make_app({"SECRET_KEY_FALLBACKS": OLD_KEY})
    shopper.client.application = rotated
    assert shopper.post("/checkout/field-guide/setup-intent").status_code == 200


@pytest.mark.parametrize("secret", ["whsec_new_one_000001", WEBHOOK_SECRET])
def test_every_listed_webhook_secret_is_accepted(make_app, tmp_path, secret):
    app = make_app({"STRIPE_WEBHOOK_SECRET": f"whsec_new_one_000001, {WEBHOOK_SECRET}"})
    product = add_product(app, tmp_path, price=900, currency="usd")
    order = create_order(app, product, payment_intent_id="pi_rotation00001")
    client = app.test_client()
    assert _post(client, event("payment_intent.succeeded", payment_intent(order)),
                 secret="whsec_someone_else").status_code == 400
    assert _post(client, event("payment_intent.succeeded", payment_intent(order)),
                 secret=secret).status_code == 200
    assert get_order(app, order.id).status == "paid"
