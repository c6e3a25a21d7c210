"""A real Chromium (Debian's, driven by Playwright) buys on localstripe's Stripe.js."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.shop import CARDS, add_product, query

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
SAMPLE = Path(__file__).resolve().parents[2] / "files" / "sample-assets" / "field-guide.pdf"


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/install-system-deps.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def shop(live_app, tmp_path, browser):
    app, server = live_app
    add_product(app, tmp_path, slug="field-guide", title="Field Guide", price=500,
                content=SAMPLE.read_bytes(), filename="field-guide.pdf")
    context = browser.new_context(viewport={"width": 390, "height": 844},  # a phone
                                  accept_downloads=True)
    context.set_default_timeout(15_000)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    yield app, server, page
    context.close()


def _fill_card(page, card: str) -> None:
    number = CARDS[card]
    for placeholder, value in (("number", number), ("exp_month", "12"), ("exp_year", "34"),
                               ("cvc", "123"), ("postal_code", "75001")):
        page.get_by_placeholder(placeholder, exact=True).fill(value)


def _orders(app):
    return query(app, "SELECT status, failure_message FROM orders")


def test_registered_customer_buys_sees_the_order_and_downloads(shop, tmp_path):
    app, server, page = shop
    page.goto(f"{server.url}/account/register")
    page.get_by_label("E-mail address").fill("reader@example.com")
    page.get_by_label("Password", exact=True).fill("correct horse battery")
    page.get_by_label("Password again").fill("correct horse battery")
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url(re.compile(r"/account/orders$"))

    page.goto(f"{server.url}/")
    page.get_by_role("link", name="Field Guide").click()
    assert page.get_by_text("The receipt goes to reader@example.com").is_visible()
    _fill_card(page, "visa")
    page.get_by_role("button", name=re.compile(r"^Pay 5\.00 EUR")).click()
    page.wait_for_url(re.compile(r"/checkout/orders/[0-9a-f-]{36}$"))
    assert page.get_by_role("heading", name="Thank you! Your order is paid.").is_visible()

    page.get_by_role("link", name="My orders").click()
    order = page.locator(".order").first
    assert "Field Guide" in order.inner_text() and "paid" in order.inner_text()
    with page.expect_download() as info:
        order.get_by_role("link", name="Download").click()
    download = info.value
    assert download.suggested_filename == "field-guide.pdf"
    assert Path(download.path()).read_bytes() == SAMPLE.read_bytes()
    assert _orders(app) == [{"status": "paid", "failure_message": None}]


def test_guest_buys_with_an_email_address(shop):
    app, server, page = shop
    page.goto(f"{server.url}/products/field-guide")
    page.get_by_label("E-mail address for your receipt").fill("guest@example.com")
    _fill_card(page, "visa")
    page.get_by_role("button", name=re.compile("^Pay")).click()
    page.wait_for_url(re.compile(r"/checkout/orders/"))
    with page.expect_download() as info:
        page.get_by_role("link", name="Download Field Guide").click()
    assert Path(info.value.path()).read_bytes() == SAMPLE.read_bytes()
    assert query(app, "SELECT email, status FROM orders") == [
        {"email": "guest@example.com", "status": "paid"}]


def test_card_declined_at_charge_time_shows_an_error_and_grants_nothing(shop):
    app, server, page = shop
    page.goto(f"{server.url}/products/field-guide")
    page.get_by_label("E-mail address for your receipt").fill("guest@example.com")
    _fill_card(page, "declined_at_charge")
    page.get_by_role("button", name=re.compile("^Pay")).click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "Your card was declined." in alert.inner_text()
    assert page.url.endswith("/products/field-guide")
    assert _orders(app) == [{"status": "failed", "failure_message": "Your card was declined."}]
    assert query(app, "SELECT id FROM download_grants") == []


def test_three_d_secure_card_succeeds_after_authentication(shop):
    app, server, page = shop
    page.goto(f"{server.url}/products/field-guide")
    page.get_by_label("E-mail address for your receipt").fill("guest@example.com")
    _fill_card(page, "three_d_secure")
    page.get_by_role("button", name=re.compile("^Pay")).click()
    # localstripe asks once when the card is set up and once for the payment.
    for _ in range(2):
        page.get_by_role("button", name="Complete authentication").click()
    page.wait_for_url(re.compile(r"/checkout/orders/"))
    assert page.get_by_role("heading", name="Thank you! Your order is paid.").is_visible()
    assert _orders(app) == [{"status": "paid", "failure_message": None}]


def test_three_d_secure_refused_fails_cleanly(shop):
    app, server, page = shop
    page.goto(f"{server.url}/products/field-guide")
    page.get_by_label("E-mail address for your receipt").fill("guest@example.com")
    _fill_card(page, "three_d_secure")
    page.get_by_role("button", name=re.compile("^Pay")).click()
    page.get_by_role("button", name="Complete authentication").click()
    page.get_by_role("button", name="Fail authentication").click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "failed authentication" in alert.inner_text()
    assert page.get_by_role("button", name=re.compile("^Pay")).is_enabled()
    [order] = _orders(app)
    assert order["status"] == "failed"
    assert query(app, "SELECT id FROM download_grants") == []


def test_three_d_secure_refused_when_the_card_is_set_up_creates_no_order(shop):
    app, server, page = shop
    page.goto(f"{server.url}/products/field-guide")
    page.get_by_label("E-mail address for your receipt").fill("guest@example.com")
    _fill_card(page, "three_d_secure")
    page.get_by_role("button", name=re.compile("^Pay")).click()
    page.get_by_role("button", name="Fail authentication").click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "authentication failed" in alert.inner_text()
    assert _orders(app) == []


@pytest.fixture
def smtp():
    from tests.support.smtp import FakeSmtpServer

    server = FakeSmtpServer().start()
    yield server
    server.stop()


def test_a_customer_resets_a_forgotten_password(make_app, smtp, browser):
    from tests.support.live import LiveServer
    from tests.support.servers import free_port

    port = free_port()
    app = make_app({"PUBLIC_URL": f"http://127.0.0.1:{port}", "SMTP_HOST": "127.0.0.1",
                    "SMTP_PORT": str(smtp.port), "SMTP_STARTTLS": "false"})
    server = LiveServer(app, port).start()
    context = browser.new_context()
    context.set_default_timeout(15_000)
    page = context.new_page()
    try:
        page.goto(f"{server.url}/account/register")
        page.get_by_label("E-mail address").fill("reader@example.com")
        page.get_by_label("Password", exact=True).fill("the forgotten password")
        page.get_by_label("Password again").fill("the forgotten password")
        page.get_by_role("button", name="Create account").click()
        page.wait_for_url(re.compile(r"/account/orders$"))
        page.get_by_role("button", name="Log out").click()

        page.goto(f"{server.url}/account/login")
        page.get_by_role("link", name="Forgot your password?").click()
        page.get_by_label("E-mail address").fill("reader@example.com")
        page.get_by_role("button", name="Send the link").click()
        page.wait_for_url(re.compile(r"/account/login$"))
        assert page.get_by_text("If an account exists for that address").is_visible()

        # the confirmation and the reset may arrive in either order (the outbox
        # sends on two threads): take the reset by its subject
        mail = next(message for message in smtp.wait_for(2)
                    if message["Subject"] == "Choose a new password").get_content()
        link = re.search(r"http://127\.0\.0\.1:\d+/account/password/reset/\S+", mail).group(0)
        page.goto(link)
        page.get_by_label("New password", exact=True).fill("my brand new password")
        page.get_by_label("New password again").fill("my brand new password")
        page.get_by_role("button", name="Change the password").click()
        page.wait_for_url(re.compile(r"/account/orders$"))
        assert page.get_by_text("Your password is changed").is_visible()

        page.get_by_role("button", name="Log out").click()
        page.goto(f"{server.url}/account/login")
        page.get_by_label("E-mail address").fill("reader@example.com")
        page.get_by_label("Password").fill("my brand new password")
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(re.compile(r"/account/orders$"))
        page.goto(link)
        assert page.get_by_text("expired or was already used").is_visible()
    finally:
        context.close()
        server.stop()


def test_a_slow_stripe_gets_an_honest_message_and_pay_again_charges_once(make_app, stripe_server,
                                                                         browser, tmp_path):
    """The server gives up on Stripe inside its budget; the page says the outcome
    is unknown (never "no money was taken"), and Pay again resumes the same order."""
    from tests.support.live import LiveServer
    from tests.support.servers import free_port
    from tests.support.slow_stripe import SlowStripe

    with SlowStripe(stripe_server.url) as slow:
        port = free_port()
        app = make_app({"PUBLIC_URL": f"http://127.0.0.1:{port}", "STRIPE_API_BASE": slow.url,
                        "STRIPE_TIMEOUT_SECONDS": "2", "STRIPE_PAY_BUDGET_SECONDS": "3"})
        add_product(app, tmp_path, slug="field-guide", title="Field Guide", price=500)
        server = LiveServer(app, port).start()
        context = browser.new_context()
        context.set_default_timeout(15_000)
        page = context.new_page()
        try:
            slow.delay("POST", "/v1/payment_intents", 6)
            page.goto(f"{server.url}/products/field-guide")
            page.get_by_label("E-mail address for your receipt").fill("guest@example.com")
            _fill_card(page, "visa")
            page.get_by_role("button", name=re.compile("^Pay")).click()
            alert = page.get_by_role("alert")
            alert.wait_for()
            message = alert.inner_text()
            assert "do not know yet whether your card was charged" in message
            assert "No money was taken" not in message
            assert alert.get_by_role("link", name="See the order.").is_visible()
            assert _orders(app) == [{"status": "pending", "failure_message": None}]

            slow.wait_idle()
            slow.delay("POST", "/v1/payment_intents", 0)
            page.get_by_role("button", name=re.compile("^Pay")).click()
            page.wait_for_url(re.compile(r"/checkout/orders/"))
            assert page.get_by_role("heading", name="Thank you! Your order is paid.").is_visible()
            assert _orders(app) == [{"status": "paid", "failure_message": None}]
            creates = slow.calls("POST", "/v1/payment_intents")
            assert [c.forwarded for c in creates].count(True) == 1
            assert len({c.idempotency_key for c in creates}) == 1
        finally:
            context.close()
            server.stop()
