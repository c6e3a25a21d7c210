"""Which answers a shared cache (nginx's page cache) may keep: only anonymous
catalog and product pages with nothing of one visitor in them; everything else
is private and never stored."""

from __future__ import annotations

import pytest

from tests.support.shop import add_product, csrf_from

PUBLIC = "public, max-age=0, s-maxage=3, stale-while-revalidate=3"
PRIVATE = "private, no-store"
PASSWORD = "correct horse battery staple"


def _shared(response) -> bool:
    return response.headers.get("Cache-Control", "").startswith("public")


@pytest.fixture
def shop(app, tmp_path):
    add_product(app, tmp_path, slug="field-guide", title="Field Guide", price=1250)
    return app


def test_anonymous_catalog_and_product_pages_are_public(shop):
    client = shop.test_client()
    for method, path in (("GET", "/"), ("HEAD", "/"), ("GET", "/products/field-guide"),
                         ("HEAD", "/products/field-guide"), ("GET", "/products/field-guide?canceled=1")):
        response = client.open(path, method=method)
        assert response.status_code == 200, path
        assert response.headers["Cache-Control"] == PUBLIC, (method, path)
        assert "Cookie" in response.vary
        assert "Set-Cookie" not in response.headers
    page = client.get("/products/field-guide").get_data(as_text=True)
    assert 'name="csrf_token"' not in page  # checkout.js fetches it
    assert 'data-csrf-url="/checkout/csrf-token"' in page
    assert client.get_cookie("paydrop_csrf") is None


def test_the_csrf_token_is_private_and_does_not_make_the_pages_private(shop):
    client = shop.test_client()
    token = client.get("/checkout/csrf-token")
    assert token.headers["Cache-Control"] == PRIVATE
    assert "paydrop_csrf=" in token.headers["Set-Cookie"]
    # A visitor holding only the signed CSRF cookie sees the same page as anyone.
    assert client.get("/products/field-guide").headers["Cache-Control"] == PUBLIC
    # The token still works with the cookie it came with.
    response = client.post("/checkout/field-guide/setup-intent", json={},
                           headers={"X-CSRFToken": token.get_json()["csrf_token"]})
    assert response.status_code != 400


def test_pages_of_a_logged_in_visitor_and_flash_messages_are_private(shop):
    client = shop.test_client()
    register = csrf_from(client.get("/account/register").get_data(as_text=True))
    response = client.post("/account/register", data={
        "csrf_token": register, "email": "reader@example.com", "password": PASSWORD,
        "password_confirm": PASSWORD})
    assert response.status_code == 302
    # The welcome message waits in the session for the next page, whichever it is.
    welcome = client.get("/")
    assert "Welcome!" in welcome.get_data(as_text=True)
    assert welcome.headers["Cache-Control"] == PRIVATE
    for path in ("/", "/products/field-guide", "/account/orders"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.headers["Cache-Control"] == PRIVATE, path
    assert "reader@example.com" in client.get("/products/field-guide").get_data(as_text=True)
    # Any session cookie makes the answer private, even one Redis no longer knows.
    stranger = shop.test_client()
    stranger.set_cookie("paydrop_session", "expired-or-forged")
    assert stranger.get("/").headers["Cache-Control"] == PRIVATE


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/products/no-such-thing", 404),
    ("GET", "/products/" + "x" * 200, 404),
    ("POST", "/", 405),
    ("POST", "/products/field-guide", 405),
    ("GET", "/account/login", 200),
    ("GET", "/nowhere", 404),
])
def test_errors_posts_and_form_pages_are_private(shop, method, path, status):
    response = shop.test_client().open(path, method=method)
    assert response.status_code == status
    assert response.headers["Cache-Control"] == PRIVATE


def test_answers_with_their_own_cache_control_keep_it(shop):
    client = shop.test_client()
    assert client.get("/api/health/live").headers["Cache-Control"] == "no-store"
    stylesheet = client.get("/").get_data(as_text=True).split('rel="stylesheet" href="')[1].split('"')[0]
    assert "immutable" in client.get(stylesheet).headers["Cache-Control"]


def test_a_page_with_a_csrf_token_in_it_is_private(make_app, tmp_path):
    """The hosted-checkout form posts without JavaScript, so its page carries a
    token of this visitor's: never shared, and it sets the visitor's cookie."""
    app = make_app(CHECKOUT_MODE="checkout_session")
    add_product(app, tmp_path, slug="field-guide")
    client = app.test_client()
    response = client.get("/products/field-guide")
    assert csrf_from(response.get_data(as_text=True))
    assert response.headers["Cache-Control"] == PRIVATE
    assert client.get_cookie("paydrop_csrf") is not None
    # Once the visitor has the cookie, the page still carries their token.
    assert client.get("/products/field-guide").headers["Cache-Control"] == PRIVATE
    assert client.get("/").headers["Cache-Control"] == PUBLIC


def test_no_page_is_shared_when_turned_off(make_app, tmp_path):
    app = make_app(PUBLIC_PAGE_CACHE_SECONDS=0)
    add_product(app, tmp_path, slug="field-guide")
    client = app.test_client()
    for path in ("/", "/products/field-guide"):
        assert client.get(path).headers["Cache-Control"] == PRIVATE

