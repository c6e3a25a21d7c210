"""Account recovery: password reset links (signed, expiring, single use, bound
to the current password, same answer for unknown addresses, throttled), and
unverified accounts that expire or give way to the address's owner."""

from __future__ import annotations

import re

import pytest

from tests.support.shop import csrf_from, query
from tests.support.smtp import FakeSmtpServer

PASSWORD = "correct horse battery"
NEW_PASSWORD = "a whole new password"


@pytest.fixture
def smtp():
    server = FakeSmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def mail_app(make_app, smtp):
    return make_app({"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port),
                     "SMTP_STARTTLS": "false", "PUBLIC_URL": "https://shop.example"})


def _form(client, path, **fields):
    token = csrf_from(client.get(path).get_data(as_text=True))
    return client.post(path, data={"csrf_token": token, **fields})


def _register(client, email="reader@example.com"):
    return _form(client, "/account/register", email=email, password=PASSWORD,
                 password_confirm=PASSWORD)


def _login(client, email="reader@example.com", password=PASSWORD):
    return _form(client, "/account/login", email=email, password=password)


def _reset_link(smtp, count, to="reader@example.com"):
    """The link in the newest reset mail to `to` once `count` messages arrived.

    The outbox sends on two threads, so a sign-up's confirmation and a reset
    asked for right after it may arrive in either order (as they may from any
    mail server); the test picks its message by subject and recipient."""
    resets = [message for message in smtp.wait_for(count)
              if message["Subject"] == "Choose a new password" and message["To"] == to]
    assert resets, f"no reset mail to {to} among the first {count} messages"
    return re.search(r"https://shop\.example(/account/password/reset/\S+)",
                     resets[-1].get_content()).group(1)


def test_a_reset_link_changes_the_password_once(mail_app, smtp):
    app = mail_app
    _register(app.test_client())
    smtp.wait_for(1)  # the verification mail
    client = app.test_client()
    response = _form(client, "/account/password/forgot", email="Reader@Example.com")
    assert response.status_code == 302
    link = _reset_link(smtp, 2)

    assert client.get(link).status_code == 200
    response = _form(client, link, password=NEW_PASSWORD, password_confirm=NEW_PASSWORD)
    assert response.status_code == 302 and response.headers["Location"] == "/account/orders"
    assert client.get("/account/orders").status_code == 200  # logged in
    assert query(app, "SELECT email_verified_at IS NOT NULL AS v FROM users") == [{"v": True}]

    assert client.get(link).status_code == 410  # used: the password it was bound to is gone
    assert _login(app.test_client(), password=PASSWORD).status_code == 401
    assert _login(app.test_client(), password=NEW_PASSWORD).status_code == 302


def test_a_reset_logs_out_every_session_that_logged_in_before_it(mail_app, smtp):
    """A thief who logged in with the stolen password loses the session when the
    owner resets it; the owner's new session, and other accounts', carry on."""
    app = mail_app
    _register(app.test_client())
    _register(app.test_client(), email="bystander@example.com")
    smtp.wait_for(2)
    thief, owner, bystander = app.test_client(), app.test_client(), app.test_client()
    assert _login(thief).status_code == 302
    assert _login(bystander, email="bystander@example.com").status_code == 302
    assert thief.get("/account/orders").status_code == 200

    _form(owner, "/account/password/forgot", email="reader@example.com")
    link = _reset_link(smtp, 3)
    assert _form(owner, link, password=NEW_PASSWORD,
                 password_confirm=NEW_PASSWORD).status_code == 302

    response = thief.get("/account/orders")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/account/login")
    assert "Log out" not in thief.get("/").get_data(as_text=True)
    assert thief.get("/account/orders").status_code == 302  # stays logged out
    for _ in range(2):  # the resetting session is logged in, and stays so
        assert owner.get("/account/orders").status_code == 200
    assert bystander.get("/account/orders").status_code == 200
    assert _login(thief, password=PASSWORD).status_code == 401
    assert _login(thief, password=NEW_PASSWORD).status_code == 302
    assert thief.get("/account/orders").status_code == 200


def test_unknown_addresses_get_the_same_answer_and_no_mail(mail_app, smtp):
    app = mail_app
    _register(app.test_client())
    smtp.wait_for(1)
    known = _form(app.test_client(), "/account/password/forgot", email="reader@example.com")
    unknown = _form(app.test_client(), "/account/password/forgot", email="nobody@example.com")
    assert known.status_code == unknown.status_code == 302
    assert known.headers["Location"] == unknown.headers["Location"]
    smtp.wait_for(2)
    with pytest.raises(TimeoutError):
        smtp.wait_for(3, timeout=1.5)


def test_a_reset_link_dies_when_the_password_changes_and_when_it_expires(make_app, mail_app,
                                                                           smtp):
    app = mail_app
    _register(app.test_client())
    client = app.test_client()
    _form(client, "/account/password/forgot", email="reader@example.com")
    first = _reset_link(smtp, 2)
    _form(client, "/account/password/forgot", email="reader@example.com")
    second = _reset_link(smtp, 3)
    assert _form(client, second, password=NEW_PASSWORD,
                 password_confirm=NEW_PASSWORD).status_code == 302
    assert app.test_client().get(first).status_code == 410

    expired = make_app({"SMTP_HOST": app.config["SMTP_HOST"], "SMTP_PORT": str(smtp.port),
                        "SMTP_STARTTLS": "false", "PUBLIC_URL": "https://shop.example",
                        "PASSWORD_RESET_TTL_SECONDS": "1"})
    _register(expired.test_client(), email="other@example.com")
    _form(expired.test_client(), "/account/password/forgot", email="other@example.com")
    link = _reset_link(smtp, 5, to="other@example.com")
    import time

    time.sleep(2.1)
    assert expired.test_client().get(link).status_code == 410
    tampered = link[:-4] + ("AAAA" if not link.endswith("AAAA") else "BBBB")
    assert expired.test_client().get(tampered).status_code == 410


def test_reset_requests_are_throttled_per_address(make_app, smtp):
    app = make_app({"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port),
                    "SMTP_STARTTLS": "false", "PASSWORD_RESET_RATE_LIMIT": "2/3600"})
    statuses = []
    for i in range(3):
        client = app.test_client()
        token = csrf_from(client.get("/account/password/forgot").get_data(as_text=True))
        statuses.append(client.post("/account/password/forgot",
                                    data={"csrf_token": token, "email": "victim@example.com"},
                                    environ_base={"REMOTE_ADDR": f"192.0.2.{i + 1}"}).status_code)
    assert statuses == [302, 302, 429]


def _age_users(app, seconds):
    query(app, "UPDATE users SET created_at = now() - make_interval(secs => %s)", (seconds,))


def test_a_stale_unverified_account_gives_way_to_a_new_sign_up(make_app):
    app = make_app({"UNVERIFIED_ACCOUNT_TTL_SECONDS": "3600"})
    assert _register(app.test_client()).status_code == 302
    assert _register(app.test_client()).status_code == 400  # fresh: still taken
    _age_users(app, 7200)
    assert _register(app.test_client()).status_code == 302
    [user] = query(app, "SELECT created_at > now() - interval '1 minute' AS fresh FROM users")
    assert user["fresh"]


def test_a_verified_account_is_never_replaced(make_app):
    app = make_app({"UNVERIFIED_ACCOUNT_TTL_SECONDS": "3600"})
    _register(app.test_client())
    query(app, "UPDATE users SET email_verified_at = now()")
    _age_users(app, 7200)
    assert _register(app.test_client()).status_code == 400


def test_unverified_accounts_expire(make_app):
    from paydrop.db import get_db
    from paydrop.shop import users

    app = make_app({"UNVERIFIED_ACCOUNT_TTL_SECONDS": "3600"})
    _register(app.test_client(), email="stale@example.com")
    _age_users(app, 7200)
    _register(app.test_client(), email="fresh@example.com")
    with app.app_context(), get_db().transaction() as cur:
        assert users.expire_unverified(cur, app.config["UNVERIFIED_ACCOUNT_TTL_SECONDS"]) == 1
    assert query(app, "SELECT email FROM users") == [{"email": "fresh@example.com"}]
