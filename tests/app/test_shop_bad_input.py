"""Bad input gets the right 4xx and changes nothing: unknown products, amounts
in posts, forged JSON, CSRF-less posts, oversized bodies, bad download tokens."""

from __future__ import annotations

import pytest

from tests.support.shop import Shopper, add_product, csrf_from, query

COUNTS = """SELECT (SELECT count(*) FROM orders) AS orders,
    (SELECT count(*) FROM download_grants) AS download_grants,
    (SELECT count(*) FROM stripe_events) AS stripe_events,
    (SELECT count(*) FROM users) AS users"""


def _counts(app):
    return query(app, COUNTS)[0]


@pytest.fixture
def shop(app, tmp_path, stripe_server):
    add_product(app, tmp_path, slug="field-guide", price=500)
    shopper = Shopper(app.test_client(), stripe_server.url)
    shopper.open("field-guide")
    return app, shopper


def test_unknown_and_inactive_products_are_404(shop, tmp_path):
    app, shopper = shop
    add_product(app, tmp_path, slug="retired")
    with app.app_context():
        from paydrop.db import get_db
        from paydrop.shop import catalog, products

        with get_db().transaction() as cur:
            products.set_active(cur, "retired", False)
        catalog.invalidate()
    before = _counts(app)
    for slug in ("nope", "retired", "UPPER", "../etc", "a" * 500):
        assert shopper.client.get(f"/products/{slug}").status_code == 404, slug
        assert shopper.post(f"/checkout/{slug}/setup-intent").status_code == 404, slug
        assert shopper.post(f"/checkout/{slug}/pay",
                            {"setup_intent_id": "seti_x", "email": "a@b.co"}).status_code == 404
    assert _counts(app) == before


@pytest.mark.parametrize("extra", [
    {"amount": -500},
    {"amount": 1},
    {"price": "0.01"},
    {"currency": "jpy"},
    {"price_amount": 1, "amount": 1},
])
def test_amounts_in_the_request_are_refused(shop, extra):
    app, shopper = shop
    setup_id = shopper.card_setup("field-guide", "visa")
    before = _counts(app)
    response = shopper.post("/checkout/field-guide/pay",
                            {"setup_intent_id": setup_id, "email": "a@example.com", **extra})
    assert response.status_code == 400
    assert "Unexpected field" in response.get_json()["error"]
    assert _counts(app) == before


def test_amount_fields_in_the_hosted_checkout_form_are_refused(make_app, tmp_path):
    app = make_app(CHECKOUT_MODE="checkout_session")
    add_product(app, tmp_path, slug="field-guide")
    client = app.test_client()
    token = csrf_from(client.get("/products/field-guide").get_data(as_text=True))
    before = _counts(app)
    response = client.post("/checkout/field-guide/session",
                           data={"csrf_token": token, "email": "a@example.com", "amount": "-1"})
    assert response.status_code == 400
    assert _counts(app) == before


@pytest.mark.parametrize("body", [
    "[]", '"seti_x"', "{", '{"setup_intent_id": 5}', '{"setup_intent_id": "pi_123"}',
    '{"setup_intent_id": "seti_bad id"}',
])
def test_malformed_pay_requests_are_400(shop, body):
    app, shopper = shop
    before = _counts(app)
    response = shopper.client.post("/checkout/field-guide/pay", data=body,
                                   content_type="application/json",
                                   headers={"X-CSRFToken": shopper.csrf})
    assert response.status_code == 400
    assert _counts(app) == before


def test_a_setup_intent_that_stripe_does_not_know_is_400(shop):
    app, shopper = shop
    before = _counts(app)
    response = shopper.post("/checkout/field-guide/pay",
                            {"setup_intent_id": "seti_doesnotexist", "email": "a@example.com"})
    assert response.status_code == 400
    assert _counts(app) == before


def test_guest_needs_a_valid_email(shop):
    app, shopper = shop
    setup_id = shopper.card_setup("field-guide", "visa")
    for email in (None, "", "not-an-email", "a@b", "x" * 300 + "@example.com", 42):
        body = {"setup_intent_id": setup_id}
        if email is not None:
            body["email"] = email
        assert shopper.post("/checkout/field-guide/pay", body).status_code == 400
    assert _counts(app)["orders"] == 0


def test_a_setup_intent_is_used_for_one_order_only(shop, stripe_server, app):
    _app, shopper = shop
    setup_id = shopper.card_setup("field-guide", "visa")
    body = {"setup_intent_id": setup_id, "email": "a@example.com"}
    first = shopper.post("/checkout/field-guide/pay", body)
    assert first.status_code == 200
    again = shopper.post("/checkout/field-guide/pay", body)
    assert again.status_code == 200 and again.get_json()["redirect"] == first.get_json()["redirect"]
    stranger = Shopper(app.test_client(), stripe_server.url)
    stranger.open("field-guide")
    assert stranger.post("/checkout/field-guide/pay", body).status_code == 409
    assert _counts(app)["orders"] == 1


def test_posts_without_csrf_token_are_refused(shop):
    app, shopper = shop
    client = shopper.client
    before = _counts(app)
    assert client.post("/checkout/field-guide/setup-intent", json={}).status_code == 400
    assert client.post("/checkout/field-guide/pay", json={"setup_intent_id": "seti_x"},
                       headers={"X-CSRFToken": "forged"}).status_code == 400
    for path, data in (("/account/register", {"email": "a@example.com", "password": "x" * 12,
                                              "password_confirm": "x" * 12}),
                       ("/account/login", {"email": "a@example.com", "password": "x" * 12}),
                       ("/account/logout", {})):
        response = client.post(path, data=data)
        assert response.status_code == 400, path
        assert "expired" in response.get_data(as_text=True)
    assert _counts(app) == before


def test_a_csrf_token_from_another_session_is_refused(shop, app):
    """The other client has a CSRF token of its own (its own page view), so the
    server really compares two tokens; its own token passes (the control)."""
    _app, shopper = shop
    other = Shopper(app.test_client(), shopper.stripe_url)
    other.open("field-guide")
    assert other.csrf and other.client.get_cookie("paydrop_csrf") is not None
    assert other.csrf != shopper.csrf
    response = other.client.post("/checkout/field-guide/setup-intent", json={},
                                 headers={"X-CSRFToken": shopper.csrf})
    assert response.status_code == 400
    assert "expired" in response.get_json()["error"]
    assert other.post("/checkout/field-guide/setup-intent").status_code == 200


def test_oversized_bodies_are_413(make_app, tmp_path, stripe_server):
    app = make_app(MAX_CONTENT_LENGTH=4096)
    add_product(app, tmp_path, slug="field-guide")
    shopper = Shopper(app.test_client(), stripe_server.url)
    shopper.open("field-guide")
    before = _counts(app)
    response = shopper.post("/checkout/field-guide/pay",
                            {"setup_intent_id": "seti_x", "email": "a" * 10000})
    assert response.status_code == 413
    response = shopper.client.post("/account/register", data={"email": "a" * 10000},
                                   headers={"X-CSRFToken": shopper.csrf})
    assert response.status_code == 413
    assert _counts(app) == before


def test_wrong_methods_are_405(client):
    response = client.get("/api/webhooks/stripe")
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]
    assert client.get("/checkout/field-guide/pay").status_code == 405
    assert client.post("/").status_code == 405


def test_tampered_and_forged_download_tokens_are_404(shop):
    app, shopper = shop
    response = shopper.buy("field-guide")
    order_id = response.get_json()["redirect"].rsplit("/", 1)[1]
    html = shopper.client.get(f"/checkout/orders/{order_id}").get_data(as_text=True)
    link = html.split('id="download-link" href="')[1].split('"')[0]
    token = link.rsplit("/", 1)[1]
    payload, signature = token.split(".")

    from itsdangerous import URLSafeSerializer

    forged_other_key = URLSafeSerializer("not-our-key", salt="paydrop.download").dumps(
        query(app, "SELECT id::text FROM download_grants")[0]["id"])
    unknown_grant = URLSafeSerializer(app.config["SECRET_KEY"], salt="paydrop.download").dumps(
        "00000000-0000-0000-0000-000000000000")
    for bad in (payload + "." + signature[:-2] + "AA", payload[:-1] + "." + signature,
                "garbage", payload, forged_other_key, unknown_grant):
        assert shopper.client.get(f"/downloads/{bad}").status_code == 404, bad
    assert query(app, "SELECT download_count FROM download_grants")[0]["download_count"] == 0
    assert shopper.client.get(link).status_code == 200


def test_someone_elses_order_page_is_404(shop, app, stripe_server):
    _app, shopper = shop
    response = shopper.buy("field-guide")
    order_url = response.get_json()["redirect"]
    assert shopper.client.get(order_url).status_code == 200
    assert app.test_client().get(order_url).status_code == 404
    assert app.test_client().get("/checkout/orders/not-a-uuid").status_code == 404


@pytest.mark.parametrize("bad", ["\x00", "\x07", "\x1b[2J", "\x7f"])
def test_control_characters_in_any_field_are_400_never_500(shop, bad):
    app, shopper = shop
    client = shopper.client
    before = _counts(app)
    token = csrf_from(client.get("/account/register").get_data(as_text=True))
    posts = [
        ("/account/register", {"email": f"a{bad}b@example.com", "password": "x" * 12,
                               "password_confirm": "x" * 12}),
        ("/account/register", {"email": "ok@example.com", "password": f"x{bad}" * 6,
                               "password_confirm": f"x{bad}" * 6}),
        ("/account/login", {"email": f"a{bad}@example.com", "password": "x" * 12}),
        ("/account/login", {"email": "a@example.com", "password": "x" * 12,
                            "next": f"/account/orders{bad}"}),
    ]
    for path, data in posts:
        response = client.post(path, data={"csrf_token": token, **data})
        assert response.status_code == 400, (path, data)
    response = shopper.post("/checkout/field-guide/pay",
                            {"setup_intent_id": "seti_x", "email": f"a{bad}@example.com"})
    assert response.status_code == 400
    assert client.get(f"/products/field-guide?canceled={bad}").status_code == 400
    assert _counts(app) == before


@pytest.mark.parametrize("address", ["a..b@example.com", "user@localhost", "a@b", "@example.com",
                                     "user@exa mple.com", "user@example.test"])
def test_invalid_addresses_are_refused_by_a_real_validator(client, address):
    token = csrf_from(client.get("/account/register").get_data(as_text=True))
    response = client.post("/account/register", data={
        "csrf_token": token, "email": address, "password": "x" * 12, "password_confirm": "x" * 12})
    assert response.status_code == 400
    assert "Enter a valid e-mail address." in response.get_data(as_text=True)
