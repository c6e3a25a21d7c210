"""Abuse at scale: anonymous floods cost no server-side state, and the limits
cannot be turned against the users they protect."""

from __future__ import annotations

import secrets

from tests.support.shop import Shopper, add_product, csrf_from, query

PASSWORD = "correct horse battery staple"


def test_a_thousand_cookieless_product_page_gets_add_no_redis_keys(app, tmp_path, redis_client):
    add_product(app, tmp_path, slug="field-guide")
    add_product(app, tmp_path, slug="synth-loop")
    client = app.test_client()
    for slug in ("field-guide", "synth-loop"):  # warm the catalog cache (bounded: one per product)
        assert client.get(f"/products/{slug}").status_code == 200
    before = set(redis_client.keys("*"))

    for i in range(1000):
        cookieless = app.test_client()
        slug = ("field-guide", "synth-loop", f"no-such-{i}")[i % 3]
        response = cookieless.get(f"/products/{slug}")
        assert response.status_code in (200, 404)
        if response.status_code == 200:
            assert 'id="card-element"' in response.get_data(as_text=True)
        if i % 10 == 0:  # the token checkout.js fetches: a signed cookie, nothing in Redis
            assert cookieless.get("/checkout/csrf-token").status_code == 200

    assert set(redis_client.keys("*")) == before


def test_a_visitors_form_works_with_only_the_signed_csrf_cookie(app, tmp_path, redis_client,
                                                                  stripe_server):
    add_product(app, tmp_path, slug="field-guide")
    shopper = Shopper(app.test_client(), stripe_server.url)
    shopper.open("field-guide")
    assert redis_client.keys("paydrop:session:*") == []
    assert shopper.post("/checkout/field-guide/setup-intent").status_code == 200

    # A forged cookie (not signed by us) carries no token: the form is refused.
    forger = app.test_client()
    forger.set_cookie("paydrop_csrf", "forged." + secrets.token_urlsafe(20))
    response = forger.post("/checkout/field-guide/setup-intent", json={},
                           headers={"X-CSRFToken": shopper.csrf})
    assert response.status_code == 400


def test_a_csrf_cookie_not_signed_by_the_shop_is_refused(app, tmp_path):
    """The double-submit cookie only counts when the shop signed it: a cookie
    planted with a token of the attacker's choosing (and the form token that
    matches it) is refused; the same pair with the shop's signature passes."""
    from itsdangerous import URLSafeTimedSerializer
    from paydrop.shop import sessions, signing

    add_product(app, tmp_path, slug="field-guide")
    chosen = secrets.token_hex(20)
    form_token = URLSafeTimedSerializer(app.config["SECRET_KEY"],
                                        salt="wtf-csrf-token").dumps(chosen)
    with app.test_request_context():
        ours = signing.timed_serializer(sessions._CSRF_SALT).dumps(chosen)
    theirs = URLSafeTimedSerializer("not-the-shops-key", salt=sessions._CSRF_SALT).dumps(chosen)

    def post_with(cookie):
        client = app.test_client()
        client.set_cookie(sessions.CSRF_COOKIE, cookie)
        return client.post("/checkout/field-guide/setup-intent", json={},
                           headers={"X-CSRFToken": form_token, "Accept": "application/json"})

    assert post_with(theirs).status_code == 400
    assert post_with(ours).status_code == 200  # the control: the pair itself is right


def test_a_guest_order_moves_the_session_to_redis(app, tmp_path, redis_client, stripe_server):
    add_product(app, tmp_path, slug="field-guide")
    shopper = Shopper(app.test_client(), stripe_server.url)
    response = shopper.buy("field-guide")
    assert response.status_code == 200, response.get_json()
    [key] = redis_client.keys("paydrop:session:*")
    assert redis_client.ttl(key) > app.config["ANONYMOUS_SESSION_TTL_SECONDS"]
    assert shopper.client.get(response.get_json()["redirect"]).status_code == 200
    # Same CSRF token before and after the move: the open page keeps working.
    assert shopper.post("/checkout/field-guide/setup-intent").status_code == 200


def _login(client, email, password, ip):
    token = csrf_from(client.get("/account/login", environ_base={"REMOTE_ADDR": ip})
                      .get_data(as_text=True))
    return client.post("/account/login", data={"csrf_token": token, "email": email,
                                               "password": password},
                       environ_base={"REMOTE_ADDR": ip})


def _register(app, email="victim@example.com"):
    client = app.test_client()
    token = csrf_from(client.get("/account/register", environ_base={"REMOTE_ADDR": "10.99.0.1"})
                      .get_data(as_text=True))
    response = client.post("/account/register", data={
        "csrf_token": token, "email": email, "password": PASSWORD, "password_confirm": PASSWORD},
        environ_base={"REMOTE_ADDR": "10.99.0.1"})
    assert response.status_code == 302


def test_a_stranger_cannot_lock_an_account_from_one_address(make_app):
    """Once the stranger's address is throttled, their attempts stop counting
    against the account: the owner, elsewhere, still logs in. The account's own
    limit (5) is under the stranger's 12 attempts, so counting them all would
    lock the owner out (with the default 20 this test could not tell)."""
    app = make_app({"LOGIN_RATE_LIMIT": "3/300", "LOGIN_ACCOUNT_RATE_LIMIT": "5/300"})
    _register(app)
    stranger = app.test_client()
    statuses = [_login(stranger, "victim@example.com", "guess guess guess", "203.0.113.7")
                .status_code for _ in range(12)]
    assert statuses[:3] == [401] * 3 and set(statuses[3:]) == {429}
    owner = app.test_client()
    assert _login(owner, "victim@example.com", PASSWORD, "198.51.100.20").status_code == 302


def test_successful_logins_never_count_against_the_account(make_app):
    """Six good logins against an account limit of 3: only failures count."""
    app = make_app({"LOGIN_RATE_LIMIT": "3/300", "LOGIN_ACCOUNT_RATE_LIMIT": "3/300"})
    _register(app)
    for i in range(6):
        client = app.test_client()
        assert _login(client, "victim@example.com", PASSWORD, f"198.51.100.{i}").status_code == 302


def test_ipv6_clients_are_limited_per_64(make_app):
    app = make_app({"LOGIN_RATE_LIMIT": "3/300"})
    client = app.test_client()
    same_64 = [f"2001:db8:1:2::{i:x}" for i in range(1, 5)]
    statuses = [_login(client, f"u{i}@example.com", "wrong wrong wrong", ip).status_code
                for i, ip in enumerate(same_64)]
    assert statuses == [401, 401, 401, 429]
    other_64 = app.test_client()
    assert _login(other_64, "u9@example.com", "wrong wrong wrong",
                  "2001:db8:1:3::1").status_code == 401


def _reader_with_an_order(app, tmp_path, stripe_server):
    """A logged-in account that bought field-guide: its client and the order's id."""
    add_product(app, tmp_path, slug="field-guide")
    _register(app, "reader@example.com")
    client = app.test_client()
    assert _login(client, "reader@example.com", PASSWORD, "10.0.0.5").status_code == 302
    response = Shopper(client, stripe_server.url).buy("field-guide", email=None)
    return client, response.get_json()["redirect"].rsplit("/", 1)[1]


def test_link_reissue_is_capped_per_order(make_app, tmp_path, stripe_server):
    app = make_app({"LINK_REISSUE_LIMIT": "2"})
    client, order_id = _reader_with_an_order(app, tmp_path, stripe_server)
    messages = []
    for _ in range(4):
        token = csrf_from(client.get("/account/orders").get_data(as_text=True))
        client.post(f"/account/orders/{order_id}/link", data={"csrf_token": token})
        messages.append(client.get("/account/orders").get_data(as_text=True))
    grants = query(app, "SELECT count(*) AS n FROM download_grants WHERE order_id = %s",
                   (order_id,))
    assert grants == [{"n": 3}]  # the first link and two reissues
    assert "no more new links" in messages[-1]


def test_link_reissue_is_rate_limited_per_account(make_app, tmp_path, stripe_server):
    """Under the per-order cap, an account still cannot ask for links faster than
    LINK_REISSUE_RATE_LIMIT: the request over it is a 429 and mints nothing."""
    app = make_app({"LINK_REISSUE_LIMIT": "50", "LINK_REISSUE_RATE_LIMIT": "2/3600"})
    client, order_id = _reader_with_an_order(app, tmp_path, stripe_server)
    statuses = []
    for _ in range(3):
        token = csrf_from(client.get("/account/orders").get_data(as_text=True))
        statuses.append(client.post(f"/account/orders/{order_id}/link",
                                    data={"csrf_token": token}).status_code)
    assert statuses == [302, 302, 429]
    grants = query(app, "SELECT count(*) AS n FROM download_grants WHERE order_id = %s",
                   (order_id,))
    assert grants == [{"n": 3}]  # the first link and two reissues, none for the refused one


def test_a_session_over_its_memory_budget_is_never_stored(app, redis_client):
    from flask import session
    from paydrop.shop.sessions import MAX_SESSION_BYTES

    @app.get("/_test/session/<int:size>")
    def grow(size: int) -> str:
        session["user_id"] = 1
        session["note"] = "x" * size
        return "ok"

    small = app.test_client()
    small.get("/_test/session/100")
    assert len(redis_client.keys("paydrop:session:*")) == 1
    big = app.test_client()
    big.get(f"/_test/session/{MAX_SESSION_BYTES}")
    assert len(redis_client.keys("paydrop:session:*")) == 1
    assert big.get_cookie("paydrop_session") is None
