"""The one place that talks to Stripe.

The API version is pinned; every POST carries an idempotency key derived from
what it is for, so a retry after a timeout can never charge twice. Responses
come back as plain dicts, the same shape as webhook payloads, so one set of
handlers reads both.

``budget(seconds)`` bounds all Stripe calls made inside it, retries and their
back-off included: each request's timeout is cut to what is left, and no retry
starts that could not finish in time. A buyer's payment request runs inside
one, so it always answers before the load balancer gives up on it (a 504
would leave the buyer not knowing whether they paid).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, cast

import requests
import stripe
from flask import Flask, current_app

# Pinned on purpose, and older than the SDK's default (2026-10-28.endive): from
# endive on, PaymentIntents and SetupIntents no longer accept
# ``payment_method_types``, and without it a server-side confirm needs a
# ``return_url`` or ``automatic_payment_methods`` -- none of which localstripe
# (the sandbox's and the tests' Stripe) understands. Basil has the card-only
# "finalize on the server" flow both speak. Create the webhook endpoint in the
# Stripe dashboard with this same version so events have the shape the handlers
# read; move the pin, the endpoint and the tests together.
API_VERSION = "2025-03-31.basil"
WEBHOOK_TOLERANCE_SECONDS = 300
QUICK_TIMEOUT_SECONDS = 3

_EXTENSION = "paydrop.stripe"
# A request with less time than this left is not started at all.
MIN_REQUEST_SECONDS = 0.5

_deadline: ContextVar[float | None] = ContextVar("paydrop_stripe_deadline", default=None)


def _remaining() -> float | None:
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


@contextmanager
def budget(seconds: float) -> Iterator[None]:
    """Every Stripe call inside finishes (or gives up) within ``seconds`` in total."""
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


class _BudgetedSession(requests.Session):
    """Cuts each request's timeout to the time left in the current budget."""

    def request(self, method: str | bytes, url: str | bytes, *args: Any,
                **kwargs: Any) -> requests.Response:
        remaining = _remaining()
        if remaining is not None:
            if remaining < MIN_REQUEST_SECONDS:
                raise requests.exceptions.Timeout("the time allowed for Stripe calls is used up")
            timeout = kwargs.get("timeout")
            kwargs["timeout"] = min(timeout, remaining) if timeout else remaining
        return super().request(method, url, *args, **kwargs)  # type: ignore[arg-type]


class _BudgetedRequestsClient(stripe.RequestsClient):
    """The SDK's client, but no retry is started that the budget could not fit."""

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout=timeout, session=_BudgetedSession())

    def _should_retry(self, response: Any, api_connection_error: Any, num_retries: int,
                      max_network_retries: int | None) -> bool:
        remaining = _remaining()
        if remaining is not None and remaining < (
                self._sleep_time_seconds(num_retries + 1) + 2 * MIN_REQUEST_SECONDS):
            return False
        return bool(super()._should_retry(response, api_connection_error, num_retries,
                                          max_network_retries))


def _plain(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if isinstance(obj, stripe.StripeObject) else dict(obj)


def _post(method: Any, params: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
    # The SDK's parameter TypedDicts describe its default API version, not the pinned one.
    return _plain(method(params=cast(Any, params),
                         options={"idempotency_key": idempotency_key}))


class StripeGateway:
    def __init__(self, secret_key: str, api_base: str, timeout: int,
                 webhook_secrets: tuple[str, ...]):
        self._client = stripe.StripeClient(
            secret_key,
            stripe_version=API_VERSION,
            base_addresses={"api": api_base},
            max_network_retries=2,
            http_client=_BudgetedRequestsClient(timeout),
        )
        # For reads made while a person waits on a page that refreshes anyway: a
        # short timeout and no retries, so a slow Stripe cannot hold worker
        # threads for 3 x timeout each.
        self._quick_client = stripe.StripeClient(
            secret_key,
            stripe_version=API_VERSION,
            base_addresses={"api": api_base},
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=min(timeout, QUICK_TIMEOUT_SECONDS)),
        )
        self._webhook_secrets = webhook_secrets

    def _reader(self, quick: bool) -> stripe.StripeClient:
        return self._quick_client if quick else self._client

    # -- payments on our own page ("finalize payments on the server") ------------------

    def create_setup_intent(self, product_slug: str) -> dict[str, Any]:
        """Collects the card in the browser (Stripe.js creates the PaymentMethod)."""
        return _post(
            self._client.v1.setup_intents.create,
            {
                "payment_method_types": ["card"],
                "usage": "on_session",
                "metadata": {"product": product_slug},
            },
            f"paydrop-setup-{uuid.uuid4()}",
        )

    def retrieve_setup_intent(self, setup_intent_id: str) -> dict[str, Any]:
        return _plain(self._client.v1.setup_intents.retrieve(setup_intent_id))

    def create_payment_intent(
        self, *, order_id: str, amount: int, currency: str, payment_method: str, product_slug: str
    ) -> dict[str, Any]:
        """Create and confirm the order's PaymentIntent; raises stripe.CardError on decline."""
        return _post(
            self._client.v1.payment_intents.create,
            {
                "amount": amount,
                "currency": currency,
                "payment_method": payment_method,
                "payment_method_types": ["card"],
                "confirm": True,
                "metadata": {"order_id": order_id, "product": product_slug},
            },
            f"paydrop-order-{order_id}-payment-intent",
        )

    def retrieve_payment_intent(self, payment_intent_id: str, *,
                                quick: bool = False) -> dict[str, Any]:
        return _plain(self._reader(quick).v1.payment_intents.retrieve(payment_intent_id))

    # -- Stripe-hosted Checkout ---------------------------------------------------------

    def create_checkout_session(
        self,
        *,
        order_id: str,
        amount: int,
        currency: str,
        product_title: str,
        product_slug: str,
        email: str,
        success_url: str,
        cancel_url: str,
    ) -> dict[str, Any]:
        metadata = {"order_id": order_id, "product": product_slug}
        return _post(
            self._client.v1.checkout.sessions.create,
            {
                "mode": "payment",
                "line_items": [
                    {
                        "quantity": 1,
                        "price_data": {
                            "currency": currency,
                            "unit_amount": amount,
                            "product_data": {"name": product_title},
                        },
                    }
                ],
                "customer_email": email,
                "client_reference_id": order_id,
                "metadata": metadata,
                "payment_intent_data": {"metadata": metadata},
                "success_url": success_url,
                "cancel_url": cancel_url,
            },
            f"paydrop-order-{order_id}-checkout-session",
        )

    def retrieve_checkout_session(self, session_id: str, *, quick: bool = False) -> dict[str, Any]:
        return _plain(self._reader(quick).v1.checkout.sessions.retrieve(session_id))

    # -- after the sale -----------------------------------------------------------------

    def refund(self, *, order_id: str, payment_intent_id: str) -> dict[str, Any]:
        return _post(
            self._client.v1.refunds.create,
            {"payment_intent": payment_intent_id, "metadata": {"order_id": order_id}},
            f"paydrop-order-{order_id}-refund",
        )

    # -- webhooks -----------------------------------------------------------------------

    def verify_webhook(self, payload: bytes, signature_header: str | None) -> None:
        """Raise stripe.SignatureVerificationError unless Stripe signed ``payload``
        with one of our endpoint secrets within the last five minutes.

        Several secrets are accepted while one is rolled (Stripe signs with the
        new and the old one for a while, one ``v1`` entry each)."""
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if not signature_header or text is None:
            raise stripe.SignatureVerificationError("unsigned or undecodable payload", "")
        error: stripe.SignatureVerificationError | None = None
        for secret in self._webhook_secrets:
            try:
                stripe.WebhookSignature.verify_header(
                    text, signature_header, secret, tolerance=WEBHOOK_TOLERANCE_SECONDS)
            except stripe.SignatureVerificationError as exc:
                error = exc
                continue
            return
        assert error is not None  # noqa: S101 - settings require one secret
        raise error


def init_app(app: Flask) -> None:
    app.extensions[_EXTENSION] = StripeGateway(
        app.config["STRIPE_SECRET_KEY"],
        app.config["STRIPE_API_BASE"],
        app.config["STRIPE_TIMEOUT_SECONDS"],
        app.config["STRIPE_WEBHOOK_SECRET"],
    )


def get_stripe() -> StripeGateway:
    gateway: StripeGateway = current_app.extensions[_EXTENSION]
    return gateway


def charge_id(payment_intent: dict[str, Any]) -> str | None:
    """The id of the PaymentIntent's latest charge (an id, or an expanded object)."""
    charge = payment_intent.get("latest_charge")
    if charge is None or isinstance(charge, str):
        return charge
    return str(charge["id"])
