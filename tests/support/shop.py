"""Helpers for shop tests: products, CSRF tokens, signed Stripe events."""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path
from typing import Any

import stripe

WEBHOOK_SECRET = "whsec_paydrop_tests"
SAMPLE_ASSETS = Path(__file__).resolve().parents[2] / "files" / "sample-assets"

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_from(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def csrf_token(client: Any) -> str:
    """The token checkout.js fetches before its first POST (the card form carries none)."""
    response = client.get("/checkout/csrf-token")
    assert response.status_code == 200, response.get_data(as_text=True)
    return str(response.get_json()["csrf_token"])


def add_product(app: Any, tmp_path: Path, *, slug: str = "field-guide", title: str = "Field Guide",
                price: int = 500, currency: str = "eur", content: bytes | None = None,
                filename: str = "guide.pdf") -> Any:
    """Create a product with a file through the same code path as the CLI."""
    from paydrop.shop.cli import add_product as create

    path = tmp_path / f"{slug}-{secrets.token_hex(4)}" / filename
    path.parent.mkdir(parents=True)
    path.write_bytes(content if content is not None else b"%PDF-1.4 sample " + slug.encode())
    with app.app_context():
        return create(slug, title, f"About {title}.", price, currency, path)


def event(event_type: str, obj: dict[str, Any], event_id: str | None = None,
          created: int | None = None) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "type": event_type,
        "created": created or int(time.time()),
        "livemode": False,
        "data": {"object": obj},
    }


def sign(payload: str, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    return stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp)


def signed(evt: dict[str, Any], secret: str = WEBHOOK_SECRET,
           timestamp: int | None = None) -> tuple[str, dict[str, str]]:
    """(body, headers) for posting ``evt`` to the webhook endpoint."""
    body = json.dumps(evt)
    return body, {"Stripe-Signature": sign(body, secret, timestamp),
                  "Content-Type": "application/json"}


def payment_intent(order: Any, status: str = "succeeded", **extra: Any) -> dict[str, Any]:
    """A PaymentIntent object for ``order`` as Stripe would put it in an event."""
    obj = {
        "id": order.stripe_payment_intent_id or f"pi_{secrets.token_hex(12)}",
        "object": "payment_intent",
        "amount": order.amount,
        "currency": order.currency,
        "status": status,
        "metadata": {"order_id": order.id},
        "latest_charge": f"ch_{secrets.token_hex(12)}",
    }
    obj.update(extra)
    return obj


def charge(payment_intent_id: str, amount: int, refunded: bool = True) -> dict[str, Any]:
    return {
        "id": f"ch_{secrets.token_hex(12)}",
        "object": "charge",
        "amount": amount,
        "amount_refunded": amount if refunded else 0,
        "refunded": refunded,
        "payment_intent": payment_intent_id,
    }


def dispute(payment_intent_id: str, amount: int) -> dict[str, Any]:
    return {
        "id": f"dp_{secrets.token_hex(12)}",
        "object": "dispute",
        "amount": amount,
        "charge": f"ch_{secrets.token_hex(12)}",
        "payment_intent": payment_intent_id,
        "reason": "fraudulent",
        "status": "needs_response",
    }


def create_order(app: Any, product: Any, *, email: str = "buyer@example.com",
                 mode: str = "payment_intent", payment_intent_id: str | None = None) -> Any:
    """A pending order straight in the database (as checkout would create it)."""
    from paydrop.db import get_db
    from paydrop.shop import orders, payment_events

    with app.app_context(), get_db().transaction() as cur:
        order = orders.create(cur, product_id=product.id, amount=product.price_amount,
                              currency=product.currency, email=email, user_id=None,
                              checkout_mode=mode)
        if payment_intent_id:
            payment_events.link_payment_intent(cur, order.id, payment_intent_id)
        return orders.get(cur, order.id)


def get_order(app: Any, order_id: str) -> Any:
    from paydrop.db import get_db
    from paydrop.shop import orders

    with app.app_context(), get_db().transaction() as cur:
        return orders.get(cur, order_id)


def query(app: Any, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    from paydrop.db import get_db

    with app.app_context(), get_db().transaction() as cur:
        cur.execute(sql, params)
        return [dict(row) for row in cur.fetchall()] if cur.description else []


def wait_for_outbox(app: Any, status: str, count: int = 1, timeout: float = 10.0) -> None:
    """Until ``count`` outbox messages have ``status`` (delivery runs in the background)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(query(app, "SELECT id FROM outbox WHERE status = %s", (status,))) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} outbox messages became {status}")


CARDS = {
    "visa": "4242424242424242",
    "declined_at_charge": "4000000000000341",
    "declined_at_attach": "4000000000000002",
    "three_d_secure": "4000002500003155",
}


def confirm_setup_like_stripe_js(stripe_url: str, client_secret: str, number: str) -> Any:
    """What Stripe.js's confirmCardSetup sends to localstripe for a card element."""
    import requests

    setup_id = client_secret.split("_secret_")[0]
    response = requests.post(
        f"{stripe_url}/v1/setup_intents/{setup_id}/confirm",
        json={
            "key": "pk_test_paydrop",
            "use_stripe_sdk": True,
            "client_secret": client_secret,
            "payment_method_data": {
                "type": "card",
                "card": {"number": number, "exp_month": "12", "exp_year": "2034", "cvc": "123"},
            },
        },
        timeout=10,
    )
    body = response.json()
    if body.get("status") == "requires_action":
        response = requests.post(
            f"{stripe_url}/v1/setup_intents/{setup_id}/confirm",
            json={"key": "pk_test_paydrop", "use_stripe_sdk": True,
                  "client_secret": client_secret},
            timeout=10,
        )
        body = response.json()
    return response.status_code, body


def authenticate_like_stripe_js(stripe_url: str, client_secret: str, success: bool) -> Any:
    """localstripe's fake 3-D Secure answer (what confirmCardPayment does)."""
    import requests

    intent_id = client_secret.split("_secret_")[0]
    response = requests.post(
        f"{stripe_url}/v1/payment_intents/{intent_id}/_authenticate"
        f"?success={'true' if success else 'false'}",
        json={"key": "pk_test_paydrop", "client_secret": client_secret},
        timeout=10,
    )
    return response.status_code, response.json()


class Shopper:
    """A customer driving the card flow through the app's JSON endpoints, doing the
    Stripe.js part against localstripe the way the fake Stripe.js does."""

    def __init__(self, client: Any, stripe_url: str) -> None:
        self.client = client
        self.stripe_url = stripe_url
        self.csrf = ""

    def open(self, slug: str) -> Any:
        """The product page, then the CSRF token as checkout.js fetches it."""
        page = self.client.get(f"/products/{slug}")
        if page.status_code == 200:
            self.csrf = csrf_token(self.client)
        return page

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        headers = {"X-CSRFToken": self.csrf, "Accept": "application/json"}
        headers.update(kwargs.pop("headers", {}))
        return self.client.post(path, json=body if body is not None else {}, headers=headers,
                                **kwargs)

    def card_setup(self, slug: str, card: str) -> str:
        """The id of a SetupIntent confirmed with ``card``."""
        response = self.post(f"/checkout/{slug}/setup-intent")
        assert response.status_code == 200, response.get_data(as_text=True)
        status, setup = confirm_setup_like_stripe_js(
            self.stripe_url, response.get_json()["client_secret"], CARDS.get(card, card))
        assert status == 200, setup
        return str(setup["id"])

    def buy(self, slug: str, card: str = "visa", email: str | None = "buyer@example.com",
            authenticate: bool | None = True) -> Any:
        """Returns the final JSON response of /pay (or /confirm after 3-D Secure)."""
        if not self.csrf:
            self.open(slug)
        body: dict[str, Any] = {"setup_intent_id": self.card_setup(slug, card)}
        if email is not None:
            body["email"] = email
        response = self.post(f"/checkout/{slug}/pay", body)
        data = response.get_json() or {}
        if data.get("status") == "requires_action" and authenticate is not None:
            authenticate_like_stripe_js(self.stripe_url, data["client_secret"], authenticate)
            response = self.post(data["confirm_url"])
        return response
