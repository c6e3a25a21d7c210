"""Accounts: argon2 hashes, server-side sessions in Redis, throttling, "my orders",
and guest orders that join an account once its address is confirmed."""

from __future__ import annotations

import re

import pytest

from tests.support.shop import Shopper, add_product, csrf_from, query, wait_for_outbox
from tests.support.smtp import FakeSmtpServer

PASSWORD = "correct horse battery"


@pytest.fixture
def smtp():
    server = FakeSmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def mail_app(make_app, smtp):
    return make_app({"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port),
                     "SMTP_STARTTLS": "false", "PUBLIC_URL": "https://shop.example"})


def _form(client, path, environ_base=None, **fields):
    environ_base = environ_base or {}
    token = csrf_from(client.get(path, environ_base=environ_base).get_data(as_text=True))
    return client.post(path, data={"csrf_token": token, **fields}, environ_base=environ_base)


def register(client, email="reader@example.com", password=PASSWORD, confirm=None):
    return _form(client, "/account/register", email=email, password=password,
                 password_confirm=confirm if confirm is not None else password)


def login(client, email="reader@example.com", password=PASSWORD, environ_base=None, **extra):
    return _form(client, "/account/login", environ_base=environ_base, email=email,
                 password=password, **extra)


def test_register_stores_an_argon2_hash_and_logs_in(app, client):
    response = register(client, email="Reader@Example.com")
    assert response.status_code == 302
    assert response.headers["Location"] == "/account/orders"
    [user] = query(app, "SELECT email, password_hash FROM users")
    assert user["email"] == "reader@example.com"
    assert user["password_hash"].startswith("$argon2id$")
    assert PASSWORD not in user["password_hash"]
    assert "My orders" in client.get("/account/orders").get_data(as_text=True)


def test_registration_errors(app, client):
    register(client)
    for kwargs, message in (({"email": "nope"}, "valid e-mail"),
                            ({"email": "b@example.com", "password": "short"}, "at least 10"),
                            ({"email": "b@example.com", "confirm": "different pass"},
                             "do not match"),
                            ({"email": "reader@example.com"}, "exists")):
        client.delete_cookie("paydrop_session")
        response = register(client, **kwargs)
        assert response.status_code == 400
        assert message in response.get_data(as_text=True)
    assert len(query(app, "SELECT id FROM users")) == 1


def test_sessions_live_in_redis_and_rotate_on_login_and_logout(app, client, redis_client):
    register(client)
    client.post("/account/logout", data={"csrf_token": csrf_from(
        client.get("/account/orders").get_data(as_text=True))})
    assert client.get("/account/orders").status_code == 302

    token = csrf_from(client.get("/account/login").get_data(as_text=True))
    assert client.get_cookie("paydrop_session") is None  # a visitor has no server session
    planted = "planted-by-someone-else-" + "x" * 30
    client.set_cookie("paydrop_session", planted)
    response = client.post("/account/login", data={"csrf_token": token,
                                                   "email": "reader@example.com",
                                                   "password": PASSWORD})
    assert response.status_code == 302
    cookie = client.get_cookie("paydrop_session")
    assert cookie.value != planted  # no session fixation
    assert cookie.http_only and cookie.same_site == "Lax"
    assert len(cookie.value) >= 40 and "reader" not in cookie.value
    keys = redis_client.keys("paydrop:session:*")
    assert keys and all(cookie.value not in key.decode() for key in keys)
    assert 0 < redis_client.ttl(keys[0]) <= app.config["SESSION_TTL_SECONDS"]

    token = csrf_from(client.get("/account/orders").get_data(as_text=True))
    client.post("/account/logout", data={"csrf_token": token})
    assert client.get("/account/orders").status_code == 302
    # The old cookie no longer works after logging out.
    client.set_cookie("paydrop_session", cookie.value)
    assert client.get("/account/orders").status_code == 302


def test_a_visitor_gets_a_signed_csrf_cookie_and_a_redis_session_only_at_log_in(
        app, client, redis_client):
    register(client)
    client.delete_cookie("paydrop_session")
    client.delete_cookie("paydrop_csrf")
    redis_client.flushdb()
    client.get("/account/login")
    assert redis_client.keys("paydrop:session:*") == []
    assert client.get_cookie("paydrop_session") is None
    csrf_cookie = client.get_cookie("paydrop_csrf")
    assert csrf_cookie.http_only and csrf_cookie.expires is not None

    assert login(client).status_code == 302
    [key] = redis_client.keys("paydrop:session:*")
    assert redis_client.ttl(key) > 3600
    assert redis_client.ttl(key) <= app.config["SESSION_TTL_SECONDS"]


class _FullRedis:
    """A Redis that refuses writes, as one at maxmemory with noeviction does."""

    def pipeline(self):
        return self

    def incr(self, key):
        return self

    def expire(self, key, seconds):
        return self

    def execute(self):
        import redis
        raise redis.exceptions.ResponseError("OOM command not allowed when used memory > "
                                             "'maxmemory'.")


def test_login_and_registration_fail_closed_when_the_throttle_cannot_count(app, client,
                                                                          monkeypatch):
    register(client)
    client.delete_cookie("paydrop_session")
    login_token = csrf_from(client.get("/account/login").get_data(as_text=True))
    monkeypatch.setattr("paydrop.shop.ratelimit.get_redis", lambda: _FullRedis())
    response = client.post("/account/login", data={"csrf_token": login_token,
                                                   "email": "reader@example.com",
                                                   "password": PASSWORD})
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0
    assert "try again" in response.get_data(as_text=True)
    assert client.get("/account/orders").status_code == 302  # not logged in

    response = client.post("/account/register", data={"csrf_token": login_token,
                                                      "email": "new@example.com",
                                                      "password": PASSWORD,
                                                      "password_confirm": PASSWORD})
    assert response.status_code == 503
    assert len(query(app, "SELECT id FROM users")) == 1


def test_secure_cookie_setting(make_app):
    app = make_app({"SESSION_COOKIE_SECURE": "true"})
    client = app.test_client()
    client.get("/account/login")
    assert client.get_cookie("paydrop_csrf").secure
    assert register(client).status_code == 302
    assert client.get_cookie("paydrop_session").secure


def test_wrong_password_and_unknown_account_look_the_same(client):
    register(client)
    client.delete_cookie("paydrop_session")
    wrong = login(client, password="not the password")
    unknown = login(client, email="nobody@example.com")
    assert wrong.status_code == unknown.status_code == 401
    message = "The e-mail address or password is not right."
    assert message in wrong.get_data(as_text=True) and message in unknown.get_data(as_text=True)


def test_login_redirects_only_to_local_paths(make_app):
    client = make_app(LOGIN_RATE_LIMIT="100/300").test_client()
    register(client)
    for target, expected in (("/account/orders", "/account/orders"),
                             ("https://evil.example/", "/account/orders"),
                             ("//evil.example/", "/account/orders"),
                             ("/\t/evil.example", "/account/orders"),
                             ("/\n/evil.example", "/account/orders"),
                             ("/\\evil", "/account/orders"),
                             ("\\/evil", "/account/orders"),
                             ("//evil", "/account/orders"),
                             ("https://evil", "/account/orders"),
                             ("/ /evil", "/account/orders"),
                             ("/account/orders?page=2", "/account/orders?page=2")):
        client.delete_cookie("paydrop_session")
        response = login(client, next=target)
        assert response.headers["Location"] == expected


def test_orders_page_needs_login(client):
    response = client.get("/account/orders")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/account/login?next=/account/orders")


def test_login_is_throttled_per_account(make_app):
    """Failed passwords from many addresses (each far under the per-IP limit)
    pause the account's log-in, even for the right password."""
    app = make_app(LOGIN_RATE_LIMIT="3/300", LOGIN_ACCOUNT_RATE_LIMIT="3/300")
    register(app.test_client(), email="victim@example.com")
    for i in range(3):
        response = login(app.test_client(), email="victim@example.com",
                         password="guess guess guess",
                         environ_base={"REMOTE_ADDR": f"203.0.113.{i + 1}"})
        assert response.status_code == 401
    response = login(app.test_client(), email="victim@example.com",
                     environ_base={"REMOTE_ADDR": "198.51.100.77"})
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    assert "Too many attempts" in response.get_data(as_text=True)


def test_login_is_throttled_per_ip_across_accounts(make_app):
    app = make_app(LOGIN_RATE_LIMIT="4/300")
    client = app.test_client()
    statuses = [login(client, email=f"user{i}@example.com").status_code for i in range(6)]
    assert statuses[:4] == [401] * 4
    assert statuses[4:] == [429, 429]
    other_ip = app.test_client()
    token = csrf_from(other_ip.get("/account/login").get_data(as_text=True))
    response = other_ip.post("/account/login", data={"csrf_token": token,
                                                     "email": "user9@example.com",
                                                     "password": PASSWORD},
                             environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert response.status_code == 401


def test_registration_is_throttled(make_app):
    app = make_app(LOGIN_RATE_LIMIT="2/300")
    client = app.test_client()
    assert register(client, email="a1@example.com").status_code == 302
    client.delete_cookie("paydrop_session")
    assert register(client, email="a2@example.com").status_code == 302
    client.delete_cookie("paydrop_session")
    assert register(client, email="a3@example.com").status_code == 429
    assert len(query(app, "SELECT id FROM users")) == 2


def test_guest_orders_join_the_account_after_the_address_is_confirmed(mail_app, smtp,
                                                                     stripe_server, tmp_path):
    app = mail_app
    add_product(app, tmp_path, slug="field-guide", title="Field Guide")
    guest = Shopper(app.test_client(), stripe_server.url)
    assert guest.buy("field-guide", email="reader@example.com").status_code == 200
    smtp.wait_for(1)  # the receipt

    client = app.test_client()
    register(client, email="Reader@example.com")
    page = client.get("/account/orders").get_data(as_text=True)
    assert "Field Guide" not in page  # not before the address is proven
    assert "Confirm your e-mail address" in page

    messages = smtp.wait_for(2)
    verification = messages[1]
    assert verification["To"] == "reader@example.com"
    link = re.search(r"https://shop\.example(/account/verify/\S+)",
                     verification.get_content()).group(1)
    assert client.get(link).status_code == 302
    page = client.get("/account/orders").get_data(as_text=True)
    assert "Field Guide" in page and "Download" in page

    # A tampered link is refused.
    assert client.get(link[:-3] + "xyz").status_code == 404
    # Someone else following the owner's link confirms the owner's address, not theirs.
    stranger = app.test_client()
    register(stranger, email="stranger@example.com")
    assert stranger.get(link).status_code == 302
    assert "Field Guide" not in stranger.get("/account/orders").get_data(as_text=True)


def test_my_orders_reissues_a_link_and_the_old_one_stops(mail_app, smtp, stripe_server, tmp_path):
    app = mail_app
    add_product(app, tmp_path, slug="field-guide", content=b"bytes")
    client = app.test_client()
    register(client)
    assert Shopper(client, stripe_server.url).buy("field-guide", email=None).status_code == 200
    page = client.get("/account/orders").get_data(as_text=True)
    old_link = re.search(r'href="(/downloads/[^"]+)"', page).group(1)
    order_id = re.search(r'id="order-([0-9a-f-]{36})"', page).group(1)

    response = client.post(f"/account/orders/{order_id}/link",
                           data={"csrf_token": csrf_from(page)})
    assert response.status_code == 302
    page = client.get("/account/orders").get_data(as_text=True)
    new_link = re.search(r'href="(/downloads/[^"]+)"', page).group(1)
    assert new_link != old_link
    old = client.get(old_link)
    assert old.status_code == 403
    assert "replaced by a newer link" in old.get_data(as_text=True)
    assert "refunded" not in old.get_data(as_text=True)
    assert client.get(new_link).data == b"bytes"

    stranger = app.test_client()
    register(stranger, email="stranger@example.com")
    token = csrf_from(stranger.get("/account/orders").get_data(as_text=True))
    assert stranger.post(f"/account/orders/{order_id}/link",
                         data={"csrf_token": token}).status_code == 404


def test_receipt_email_carries_the_download_link(mail_app, smtp, stripe_server, tmp_path):
    app = mail_app
    add_product(app, tmp_path, slug="field-guide", title="Field Guide", content=b"pdf bytes")
    client = app.test_client()
    assert Shopper(client, stripe_server.url).buy("field-guide",
                                                  email="buyer@example.com").status_code == 200
    [receipt] = smtp.wait_for(1)
    assert receipt["To"] == "buyer@example.com"
    assert receipt["Subject"] == "Your receipt for Field Guide"
    body = receipt.get_content()
    assert "5.00 EUR" in body
    link = re.search(r"https://shop\.example(/downloads/\S+)", body).group(1)
    assert client.get(link).data == b"pdf bytes"


def test_without_smtp_host_the_receipt_is_logged_and_skipped(app, stripe_server, tmp_path, caplog):
    add_product(app, tmp_path, slug="field-guide")
    with caplog.at_level("INFO", logger="paydrop.shop.mail"):
        assert Shopper(app.test_client(), stripe_server.url).buy("field-guide").status_code == 200
        wait_for_outbox(app, "skipped")
    assert any("SMTP_HOST is empty" in r.getMessage() for r in caplog.records)
    assert not any("/downloads/" in r.getMessage() for r in caplog.records)


def test_without_smtp_host_mail_bodies_and_links_are_not_logged(make_app, caplog):
    app = make_app({"APP_ENVIRONMENT": "development"})
    client = app.test_client()
    with caplog.at_level("DEBUG", logger="paydrop.shop.mail"):
        assert register(client, email="reader@example.com").status_code == 302
        wait_for_outbox(app, "skipped")
    note, record = [r for r in caplog.records if r.name == "paydrop.shop.mail"]
    assert "not logged" in note.getMessage()
    message = record.getMessage()
    assert "'Confirm your e-mail address'" in message and "reader@example.com" in message
    for logged in (note.getMessage(), message):
        assert "/account/verify/" not in logged and "three days" not in logged


def test_without_smtp_host_the_log_says_so_once_not_per_message(make_app, caplog):
    """A line per receipt told nobody anything new and cost a log line per payment;
    the outbox keeps each message as skipped."""
    app = make_app()
    with caplog.at_level("INFO", logger="paydrop.shop.mail"):
        for n in range(3):
            assert register(app.test_client(), email=f"reader{n}@example.com").status_code == 302
            wait_for_outbox(app, "skipped", count=n + 1)
    [record] = [r for r in caplog.records if r.name == "paydrop.shop.mail"]
    assert record.levelname == "WARNING" and "SMTP_HOST is empty" in record.getMessage()
    assert "reader" not in record.getMessage()
