"""Buying: the card form on our page (default) or Stripe-hosted Checkout.

Card form ("finalize payments on the server"):
  0. GET /checkout/csrf-token -> the CSRF token for the next steps (the product
     page carries none, so a shared cache can keep it); never cached.
  1. POST /checkout/<slug>/setup-intent -> a SetupIntent's client secret; the page
     collects the card with Stripe.js (confirmCardSetup), which creates the
     PaymentMethod (and runs 3-D Secure if the card asks for it).
  2. POST /checkout/<slug>/pay {setup_intent_id, email} -> the server checks the
     SetupIntent with Stripe, creates the pending order at the price in the
     database, and creates a PaymentIntent with confirm=true. All of it fits in
     STRIPE_PAY_BUDGET_SECONDS; when Stripe's answer does not come in time the
     page says the outcome is unknown (never "nothing was charged"), and the
     same SetupIntent posted again resumes the same order and idempotency key.
  3. If the bank wants 3-D Secure the page runs confirmCardPayment with the
     client secret, then POST /checkout/orders/<id>/confirm makes the server
     re-check the PaymentIntent.
Hosted Checkout (CHECKOUT_MODE=checkout_session): POST /checkout/<slug>/session
creates the order and a Checkout Session and redirects to Stripe.

Either way GET /checkout/orders/<id> shows the outcome and reconciles with
Stripe, so an order is fulfilled even when the webhook is late. Amounts and
currencies only ever come from the products table; the browser sends ids.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

import redis
import stripe
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_wtf.csrf import generate_csrf
from werkzeug.wrappers import Response as BaseResponse

from .. import metrics
from ..db import get_db
from ..redis_store import get_redis
from . import (
    fulfilment,
    grants,
    orders,
    payment_events,
    products,
    ratelimit,
    stripe_client,
    users,
)
from .accounts import current_user, normalise_email
from .errors import error_response
from .stripe_client import get_stripe

log = logging.getLogger(__name__)
bp = Blueprint("checkout", __name__, url_prefix="/checkout")

SETUP_INTENT_ID = re.compile(r"^seti_[A-Za-z0-9_]{1,200}$")
REMEMBERED_ORDERS = 20
RECONCILE_INTERVAL_SECONDS = 10


class BadInput(Exception):
    pass


def _require_mode(mode: str) -> None:
    if current_app.config["CHECKOUT_MODE"] != mode:
        abort(404)


def _json_fields(allowed: set[str]) -> dict[str, Any]:
    """The JSON object body, refusing any field outside ``allowed`` (no price, no amount)."""
    data = request.get_json(silent=True)
    if data is None and not request.get_data():
        data = {}
    if not isinstance(data, dict):
        raise BadInput("Send a JSON object.")
    unexpected = sorted(set(data) - allowed)
    if unexpected:
        raise BadInput(f"Unexpected field(s): {', '.join(unexpected)}.")
    return data


def _form_fields(allowed: set[str]) -> dict[str, str]:
    unexpected = sorted(set(request.form) - allowed - {"csrf_token"})
    if unexpected:
        raise BadInput(f"Unexpected field(s): {', '.join(unexpected)}.")
    return {key: request.form[key] for key in allowed if key in request.form}


def _product_for_sale(slug: str) -> products.Product:
    """The product as the primary has it now: the price charged comes from here."""
    with get_db().transaction() as cur:
        product = products.get_by_slug(cur, slug)
    if product is None:
        abort(404, "There is no such product, or it is no longer for sale.")
    return product


def _buyer_email(value: object) -> str:
    user = current_user()
    if user is not None:
        return user.email
    email = normalise_email(value)
    if email is None:
        raise BadInput("Enter a valid e-mail address for your receipt.")
    return email


def _remember(order_id: str) -> None:
    seen = [o for o in session.get("orders", []) if o != order_id]
    session["orders"] = (seen + [order_id])[-REMEMBERED_ORDERS:]


def _may_view(order: orders.Order) -> bool:
    user = current_user()
    return order.id in session.get("orders", []) or (
        user is not None and order.user_id == user.id
    )


def _create_order(product: products.Product, email: str, mode: str,
                  setup_intent_id: str | None = None) -> orders.Order | None:
    user = current_user()
    with get_db().transaction() as cur:
        user_id = user.id if user else users.verified_user_id(cur, email)
        order = orders.create(
            cur, product_id=product.id, amount=product.price_amount, currency=product.currency,
            email=email, user_id=user_id, checkout_mode=mode, setup_intent_id=setup_intent_id,
        )
    if order is not None:
        _remember(order.id)
        metrics.ORDER_TRANSITIONS.labels(state="pending").inc()
    return order


def _order_url(order: orders.Order) -> str:
    return url_for("checkout.order_status", order_id=order.id)


def _payment_failed(order: orders.Order, message: str, reason: str) -> tuple[Response, int]:
    """A payment Stripe says did not happen (the page may say nothing was charged)."""
    metrics.PAYMENT_FAILURES.labels(reason=reason).inc()
    fulfilment.fail(order.id, message)
    return jsonify(error=message, order_url=_order_url(order), charged=False), 402


def _settle(order: orders.Order, intent: dict[str, Any]) -> tuple[Response, int]:
    """Act on a PaymentIntent's status and tell the page what to do next."""
    status = intent["status"]
    if status == "succeeded":
        payment_events.fulfil_from_intent(order.id, intent)
        return jsonify(status="paid", redirect=_order_url(order)), 200
    if status == "requires_action":
        return jsonify(
            status="requires_action",
            client_secret=intent["client_secret"],
            confirm_url=url_for("checkout.confirm", order_id=order.id),
        ), 200
    if status in ("requires_payment_method", "canceled"):
        error = intent.get("last_payment_error") or {}
        return _payment_failed(
            order,
            error.get("message") or "The payment was not completed. No money was taken.",
            error.get("decline_code") or error.get("code") or status,
        )
    return jsonify(status=status, redirect=_order_url(order)), 200


@bp.errorhandler(BadInput)
def _bad_input(exc: BadInput) -> tuple[Response | str, int]:
    return error_response(400, str(exc))


@bp.get("/csrf-token")
def csrf_token() -> Response:
    return jsonify(csrf_token=generate_csrf())


@bp.post("/<slug>/setup-intent")
def setup_intent(slug: str) -> tuple[Response, int]:
    _require_mode("payment_intent")
    _json_fields(set())
    product = _product_for_sale(slug)
    ratelimit.hit("checkout", ("ip", ratelimit.client_ip()))
    try:
        intent = get_stripe().create_setup_intent(product.slug)
    except stripe.StripeError as exc:
        log.error("could not create a SetupIntent: %s", exc)
        metrics.DEPENDENCY_ERRORS.labels(dependency="stripe").inc()
        return jsonify(error="The payment service is not answering. Please try again."), 502
    return jsonify(client_secret=intent["client_secret"]), 200


@bp.post("/<slug>/pay")
def pay(slug: str) -> tuple[Response, int]:
    """Charge the card of a confirmed SetupIntent, at most once per SetupIntent.

    A retry with the same SetupIntent (the buyer pressing Pay again after an
    answer that never came) resumes the order the first attempt created, with
    the same idempotency key, so Stripe returns the first PaymentIntent instead
    of charging again. All Stripe calls fit in STRIPE_PAY_BUDGET_SECONDS.
    """
    _require_mode("payment_intent")
    data = _json_fields({"setup_intent_id", "email"})
    setup_intent_id = data.get("setup_intent_id")
    if not isinstance(setup_intent_id, str) or not SETUP_INTENT_ID.match(setup_intent_id):
        raise BadInput("The card details are missing; enter them again.")
    product = _product_for_sale(slug)
    email = _buyer_email(data.get("email"))

    with get_db().transaction() as cur:
        order = orders.find_by_setup_intent(cur, setup_intent_id)
    if order is not None:
        if not _may_view(order) or order.product_slug != product.slug:
            abort(409, "This card confirmation was already used.")
        if order.status != "pending":
            return jsonify(status=order.status, redirect=_order_url(order)), 200

    with stripe_client.budget(current_app.config["STRIPE_PAY_BUDGET_SECONDS"]):
        if order is not None and order.stripe_payment_intent_id:
            return _resume_known_intent(order)
        payment_method = _confirmed_payment_method(setup_intent_id, product)
        if isinstance(payment_method, tuple):
            return payment_method
        if order is None:
            order = _create_order(product, email, "payment_intent", setup_intent_id)
            if order is None:
                abort(409, "This card confirmation was already used.")
        return _charge(order, product, payment_method)


def _confirmed_payment_method(setup_intent_id: str,
                              product: products.Product) -> str | tuple[Response, int]:
    """The card the SetupIntent confirmed, or the answer to give (nothing is charged yet)."""
    try:
        setup = get_stripe().retrieve_setup_intent(setup_intent_id)
    except stripe.InvalidRequestError:
        raise BadInput("The card details were not accepted; enter them again.") from None
    except stripe.StripeError as exc:
        log.error("could not read SetupIntent %s: %s", setup_intent_id, exc)
        metrics.DEPENDENCY_ERRORS.labels(dependency="stripe").inc()
        return jsonify(error="The payment service is not answering. Nothing was charged; "
                             "please try again.", charged=False), 502
    payment_method = setup.get("payment_method")
    if isinstance(payment_method, dict):
        payment_method = payment_method["id"]
    if (setup.get("status") != "succeeded" or not payment_method
            or (setup.get("metadata") or {}).get("product") != product.slug):
        raise BadInput("The card details were not confirmed; enter them again.")
    return str(payment_method)


def _charge(order: orders.Order, product: products.Product,
            payment_method: str) -> tuple[Response, int]:
    try:
        intent = get_stripe().create_payment_intent(
            order_id=order.id, amount=order.amount, currency=order.currency,
            payment_method=payment_method, product_slug=product.slug,
        )
    except stripe.CardError as exc:
        body: dict[str, Any] = exc.json_body if isinstance(exc.json_body, dict) else {}
        _link(order, (body.get("error") or {}).get("payment_intent"))
        return _payment_failed(order, exc.user_message or "Your card was declined.",
                               getattr(exc, "decline_code", None) or exc.code or "card_error")
    except (stripe.InvalidRequestError, stripe.AuthenticationError,
            stripe.PermissionError) as exc:
        # Stripe refused the request itself: no PaymentIntent, no charge.
        log.error("Stripe refused the PaymentIntent for order %s: %s", order.id, exc)
        metrics.DEPENDENCY_ERRORS.labels(dependency="stripe").inc()
        return _payment_failed(order, "The payment could not be started. No money was taken.",
                               "stripe_refused")
    except stripe.StripeError as exc:
        # No answer, or an answer that does not say what happened: the payment
        # may have gone through. The order stays pending; the webhook settles
        # it, and a retry resumes it with the same idempotency key.
        log.error("no clear answer from Stripe for order %s: %s", order.id, exc)
        metrics.DEPENDENCY_ERRORS.labels(dependency="stripe").inc()
        return _unknown_outcome(order)
    _link(order, intent)
    return _settle(order, intent)


def _resume_known_intent(order: orders.Order) -> tuple[Response, int]:
    assert order.stripe_payment_intent_id is not None  # noqa: S101 - checked by the caller
    try:
        intent = get_stripe().retrieve_payment_intent(order.stripe_payment_intent_id)
    except stripe.StripeError as exc:
        log.error("could not read PaymentIntent for order %s: %s", order.id, exc)
        return _unknown_outcome(order)
    return _settle(order, intent)


UNKNOWN_OUTCOME = ("We did not get an answer from the payment service in time, so we do not "
                   "know yet whether your card was charged. The order page shows the result as "
                   "soon as we know it. Pressing Pay again continues this same order and cannot "
                   "charge you twice.")


def _unknown_outcome(order: orders.Order) -> tuple[Response, int]:
    return jsonify(status="unknown", error=UNKNOWN_OUTCOME, order_url=_order_url(order)), 202


def _link(order: orders.Order, intent: dict[str, Any] | None) -> None:
    if not intent or not intent.get("id"):
        return
    with get_db().transaction() as cur:
        changes = payment_events.link_payment_intent(cur, order.id, intent["id"])
    fulfilment.after_commit(changes)


@bp.post("/orders/<order_id>/confirm")
def confirm(order_id: str) -> tuple[Response, int]:
    _require_mode("payment_intent")
    _json_fields(set())
    with get_db().transaction() as cur:
        order = orders.get(cur, order_id)
    if order is None or not _may_view(order) or not order.stripe_payment_intent_id:
        abort(404)
    if order.status != "pending":
        return jsonify(status=order.status, redirect=_order_url(order)), 200
    try:
        with stripe_client.budget(current_app.config["STRIPE_PAY_BUDGET_SECONDS"]):
            intent = get_stripe().retrieve_payment_intent(order.stripe_payment_intent_id)
    except stripe.StripeError as exc:
        log.error("could not read PaymentIntent for order %s: %s", order.id, exc)
        return _unknown_outcome(order)
    if intent["status"] == "requires_action":
        return jsonify(error="The bank has not confirmed the payment yet.",
                       order_url=_order_url(order)), 409
    return _settle(order, intent)


@bp.post("/<slug>/session")
def checkout_session(slug: str) -> BaseResponse | tuple[Response | str, int]:
    _require_mode("checkout_session")
    fields = _form_fields({"email"})
    product = _product_for_sale(slug)
    email = _buyer_email(fields.get("email"))
    ratelimit.hit("checkout", ("ip", ratelimit.client_ip()))
    order = _create_order(product, email, "checkout_session")
    assert order is not None  # noqa: S101 - no setup intent, no conflict
    base = current_app.config["PUBLIC_URL"].rstrip("/")
    try:
        checkout = get_stripe().create_checkout_session(
            order_id=order.id, amount=order.amount, currency=order.currency,
            product_title=product.title, product_slug=product.slug, email=email,
            success_url=f"{base}{_order_url(order)}?session_id={{CHECKOUT_SESSION_ID}}",
            cancel_url=f"{base}{url_for('catalog.product', slug=product.slug, canceled=1)}",
        )
    except stripe.StripeError as exc:
        log.error("could not create a Checkout Session for order %s: %s", order.id, exc)
        metrics.DEPENDENCY_ERRORS.labels(dependency="stripe").inc()
        fulfilment.fail(order.id, "could not reach the payment service")
        return error_response(502, "The payment service is not answering. Please try again.")
    with get_db().transaction() as cur:
        orders.set_checkout_session(cur, order.id, checkout["id"])
    return redirect(checkout["url"], code=303)


def _reconcile_due(order_id: str) -> bool:
    """True at most once per order per RECONCILE_INTERVAL_SECONDS (across workers).

    The pending page refreshes itself, and each load would otherwise call Stripe;
    when Stripe is slow that ties up a worker thread per open tab.
    """
    try:
        return bool(get_redis().set(f"paydrop:reconcile:{order_id}", "1", nx=True,
                                    ex=RECONCILE_INTERVAL_SECONDS))
    except redis.RedisError as exc:
        # Without the guard, skip: the webhook still fulfils the order.
        metrics.DEPENDENCY_ERRORS.labels(dependency="redis").inc()
        log.warning("not reconciling order %s, Redis unavailable: %s", order_id, exc)
        return False


def _refresh_seconds(order: orders.Order) -> int:
    """How soon the pending page reloads: quickly at first, then backing off."""
    waited = (datetime.now(UTC) - order.created_at).total_seconds()
    if waited < 30:
        return 3
    if waited < 300:
        return 10
    return 30


def _reconcile(order: orders.Order) -> None:
    """Ask Stripe about a pending order; fulfil it if it was paid (webhook late)."""
    if not _reconcile_due(order.id):
        return
    gateway = get_stripe()
    try:
        if order.stripe_payment_intent_id:
            intent = gateway.retrieve_payment_intent(order.stripe_payment_intent_id, quick=True)
            if intent["status"] == "succeeded":
                payment_events.fulfil_from_intent(order.id, intent)
        elif order.stripe_checkout_session_id:
            checkout = gateway.retrieve_checkout_session(order.stripe_checkout_session_id,
                                                         quick=True)
            with get_db().transaction() as cur:
                outcome = payment_events.checkout_session_paid(cur, checkout)
            fulfilment.after_commit(outcome.changes)
    except stripe.StripeError as exc:
        log.warning("could not reconcile order %s with Stripe: %s", order.id, exc)


@bp.get("/orders/<order_id>")
def order_status(order_id: str) -> str:
    with get_db().transaction() as cur:
        order = orders.get(cur, order_id)
    if order is None or not _may_view(order):
        abort(404)
    if order.status == "pending":
        _reconcile(order)
    with get_db().transaction() as cur:
        order = orders.get(cur, order_id)
        grant = grants.usable_for_order(cur, order_id) if order and order.status == "paid" else None
    assert order is not None  # noqa: S101 - orders are never deleted
    return render_template("checkout/order.html", order=order, grant=grant,
                           refresh_seconds=_refresh_seconds(order))
