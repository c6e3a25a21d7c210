"""What each Stripe event means for an order.

``apply`` runs inside the webhook's transaction, right after the event id was
recorded. Handlers look the order up by the ``order_id`` metadata we put on
every PaymentIntent and Checkout Session, else by the Stripe ids stored on the
order. An event about a charge whose PaymentIntent no order knows yet (possible
with Checkout when ``charge.refunded`` overtakes ``checkout.session.completed``)
is parked and replayed as soon as an order learns that PaymentIntent, so events
converge to the right state in any order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..db import get_db
from . import fulfilment, orders, stripe_events
from .fulfilment import Change
from .stripe_client import charge_id

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    changes: list[Change | None] = field(default_factory=list)
    parked: bool = False


Handler = Callable[[Any, dict[str, Any]], Outcome]


def _metadata_order_id(obj: dict[str, Any]) -> str | None:
    order_id = (obj.get("metadata") or {}).get("order_id") or obj.get("client_reference_id")
    return order_id if orders.is_uuid(order_id) else None


def _lock_payment_sql(cur: Any, payment_intent_id: str) -> bytes:
    """Serialise "park an event for this payment" with "an order learns this payment",
    so an event is never parked just after the replay looked for it."""
    sql: bytes = cur.mogrify("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                             (payment_intent_id,))
    return sql


def _lock_payment(cur: Any, payment_intent_id: str) -> None:
    cur.execute(_lock_payment_sql(cur, payment_intent_id))


def link_payment_intent(
    cur: Any, order_id: str, payment_intent_id: str | None
) -> list[Change | None]:
    """Record the order's PaymentIntent and replay events that were waiting for it."""
    if not payment_intent_id:
        return []
    # The lock, the UPDATE and the look-up of parked events in one round trip (a
    # webhook's time is mostly round trips).
    parked = stripe_events.parked_for_new_link(cur, order_id, payment_intent_id,
                                               first=_lock_payment_sql(cur, payment_intent_id))
    changes: list[Change | None] = []
    for event_id, event_type, obj in parked:
        log.info("replaying parked %s %s for order %s", event_type, event_id, order_id)
        changes.extend(HANDLERS[event_type](cur, obj).changes)
        stripe_events.mark_processed(cur, event_id)
    return changes


# -- PaymentIntents (card form on our page) ------------------------------------------------

def _order_for_payment_intent(cur: Any, intent: dict[str, Any]) -> str | None:
    order_id = _metadata_order_id(intent)
    if order_id and orders.get(cur, order_id) is not None:
        return order_id
    return orders.id_by_payment_intent(cur, intent["id"])


def intent_succeeded(cur: Any, order_id: str, intent: dict[str, Any]) -> list[Change | None]:
    """A succeeded PaymentIntent fulfils its order: link it (replaying parked
    events), then mark the order paid. The webhook, the checkout and the order
    page all come through here."""
    changes = link_payment_intent(cur, order_id, intent["id"])
    changes.append(fulfilment.mark_paid(
        cur, order_id, amount=intent["amount"], currency=intent["currency"],
        charge_id=charge_id(intent),
    ))
    return changes


def fulfil_from_intent(order_id: str, intent: dict[str, Any]) -> None:
    """``intent_succeeded`` in its own transaction, then its side effects (for the pages)."""
    with get_db().transaction() as cur:
        changes = intent_succeeded(cur, order_id, intent)
    fulfilment.after_commit(changes)


def _payment_intent_succeeded(cur: Any, intent: dict[str, Any]) -> Outcome:
    order_id = _order_for_payment_intent(cur, intent)
    if order_id is None:
        return Outcome()
    return Outcome(intent_succeeded(cur, order_id, intent))


def _payment_intent_failed(cur: Any, intent: dict[str, Any]) -> Outcome:
    order_id = _order_for_payment_intent(cur, intent)
    if order_id is None:
        return Outcome()
    changes = link_payment_intent(cur, order_id, intent["id"])
    error = intent.get("last_payment_error") or {}
    changes.append(fulfilment.mark_failed(cur, order_id, error.get("message") or "payment failed"))
    return Outcome(changes)


# -- Checkout Sessions (Stripe-hosted page) ------------------------------------------------

def _order_for_session(cur: Any, session: dict[str, Any]) -> str | None:
    order_id = orders.id_by_checkout_session(cur, session["id"])
    return order_id or _metadata_order_id(session)


def intent_id_of(obj: dict[str, Any]) -> str | None:
    """The PaymentIntent an event's object is about (the object itself, or a reference)."""
    if obj.get("object") == "payment_intent":
        return str(obj["id"])
    intent = obj.get("payment_intent")
    if intent is None or isinstance(intent, str):
        return intent
    return str(intent["id"])


def checkout_session_paid(cur: Any, session: dict[str, Any]) -> Outcome:
    """checkout.session.completed (fulfils only once payment_status is 'paid') and
    checkout.session.async_payment_succeeded; also used by the success page."""
    order_id = _order_for_session(cur, session)
    if order_id is None:
        return Outcome()
    changes = link_payment_intent(cur, order_id, intent_id_of(session))
    if session.get("payment_status") in ("paid", "no_payment_required"):
        changes.append(fulfilment.mark_paid(
            cur, order_id, amount=session["amount_total"], currency=session["currency"],
        ))
    return Outcome(changes)


def _checkout_session_failed(cur: Any, session: dict[str, Any]) -> Outcome:
    order_id = _order_for_session(cur, session)
    if order_id is None:
        return Outcome()
    changes = link_payment_intent(cur, order_id, intent_id_of(session))
    changes.append(fulfilment.mark_failed(cur, order_id, "the payment did not go through"))
    return Outcome(changes)


def _checkout_session_expired(cur: Any, session: dict[str, Any]) -> Outcome:
    order_id = _order_for_session(cur, session)
    if order_id is None:
        return Outcome()
    return Outcome([fulfilment.mark_failed(cur, order_id, "the checkout page expired")])


# -- After the sale: refunds and disputes --------------------------------------------------

def _order_for_payment(cur: Any, payment_intent_id: str | None) -> str | None:
    if not payment_intent_id:
        return None
    _lock_payment(cur, payment_intent_id)
    return orders.id_by_payment_intent(cur, payment_intent_id)


def _charge_refunded(cur: Any, charge: dict[str, Any]) -> Outcome:
    intent_id = intent_id_of(charge)
    order_id = _order_for_payment(cur, intent_id)
    if order_id is None:
        return Outcome(parked=bool(intent_id))
    fully = bool(charge.get("refunded")) or charge.get("amount_refunded", 0) >= charge["amount"]
    return Outcome([fulfilment.mark_refunded(
        cur, order_id, amount_refunded=int(charge.get("amount_refunded", 0)), fully=fully)])


def _dispute_created(cur: Any, dispute: dict[str, Any]) -> Outcome:
    intent_id = intent_id_of(dispute)
    order_id = _order_for_payment(cur, intent_id)
    if order_id is None:
        return Outcome(parked=bool(intent_id))
    log.warning("order %s is disputed (%s); downloads revoked", order_id, dispute.get("reason"))
    return Outcome([fulfilment.mark_disputed(cur, order_id)])


def _dispute_closed(cur: Any, dispute: dict[str, Any]) -> Outcome:
    """A won dispute gives the buyer their access back; a lost one changes nothing."""
    intent_id = intent_id_of(dispute)
    order_id = _order_for_payment(cur, intent_id)
    if order_id is None:
        return Outcome(parked=bool(intent_id))
    if dispute.get("status") not in ("won", "warning_closed"):
        log.warning("order %s: dispute closed as %s", order_id, dispute.get("status"))
        return Outcome()
    log.info("order %s: dispute won; downloads restored", order_id)
    return Outcome([fulfilment.mark_dispute_won(cur, order_id)])


def _refund_updated(cur: Any, refund: dict[str, Any]) -> Outcome:
    """Only a failed refund matters here (a successful one arrives as charge.refunded)."""
    if refund.get("status") != "failed":
        return Outcome()
    intent_id = intent_id_of(refund)
    order_id = _order_for_payment(cur, intent_id)
    if order_id is None:
        return Outcome(parked=bool(intent_id))
    reason = str(refund.get("failure_reason") or "unknown")
    log.error("order %s: refund %s failed (%s); the buyer was not paid back", order_id,
              refund.get("id"), reason)
    fulfilment.record_refund_failure(cur, order_id, reason)
    return Outcome()


HANDLERS: dict[str, Handler] = {
    "payment_intent.succeeded": _payment_intent_succeeded,
    "payment_intent.payment_failed": _payment_intent_failed,
    "checkout.session.completed": checkout_session_paid,
    "checkout.session.async_payment_succeeded": checkout_session_paid,
    "checkout.session.async_payment_failed": _checkout_session_failed,
    "checkout.session.expired": _checkout_session_expired,
    "charge.refunded": _charge_refunded,
    "charge.dispute.created": _dispute_created,
    "charge.dispute.closed": _dispute_closed,
    "charge.refund.updated": _refund_updated,
    "refund.updated": _refund_updated,
    "refund.failed": _refund_updated,
}


def apply(cur: Any, event_id: str, event_type: str, obj: dict[str, Any]) -> Outcome:
    """Run the handler; park the event if it must wait (``stripe_events.record``
    wrote it processed)."""
    outcome = HANDLERS[event_type](cur, obj)
    if outcome.parked:
        stripe_events.park(cur, event_id, obj)
    return outcome
