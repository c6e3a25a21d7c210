"""POST /api/webhooks/stripe: verify, record once, apply, answer.

The signature is checked on the raw bytes before anything is parsed. The event
id is recorded and the order changed in ONE transaction, so a duplicate
delivery (even a concurrent one) finds the id and changes nothing, and a
failure rolls both back so Stripe's retry starts clean. Slow work (e-mail)
happens off the request.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import stripe
from flask import Blueprint, Response, jsonify, request

from .. import metrics, observability
from ..db import get_db
from . import fulfilment, payment_events, stripe_events
from .stripe_client import get_stripe

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)


def _answer(status: int, event_type: str, outcome: str, **body: Any) -> tuple[Response, int]:
    metrics.WEBHOOK_EVENTS.labels(type=event_type, outcome=outcome).inc()
    return jsonify(body), status


def _log_event(event_id: str, event_type: str, outcome: str) -> None:
    """On the request's log line, beside the orders it changed (``order_changes``)."""
    observability.add_to_request_line("stripe_events", f"{event_id} {event_type} {outcome}")


@bp.post("/api/webhooks/stripe")
def stripe_webhook() -> tuple[Response, int]:
    payload = request.get_data(cache=False)
    try:
        get_stripe().verify_webhook(payload, request.headers.get("Stripe-Signature"))
    except stripe.SignatureVerificationError as exc:
        log.warning("rejected a webhook with a bad signature: %s", exc)
        return _answer(400, "unknown", "invalid_signature", error="invalid signature")

    try:
        event = json.loads(payload)
        event_id, event_type = event["id"], event["type"]
        obj = event["data"]["object"]
        if not (isinstance(event_id, str) and isinstance(event_type, str)
                and isinstance(obj, dict)):
            raise TypeError("unexpected event shape")
    except (ValueError, KeyError, TypeError):
        return _answer(400, "unknown", "invalid_payload", error="malformed event")

    if event_type not in payment_events.HANDLERS:
        _log_event(event_id, event_type, "ignored")
        return _answer(200, "other", "ignored", received=True)

    try:
        with get_db().transaction() as cur:
            if not stripe_events.record(cur, event_id, event_type,
                                        payment_events.intent_id_of(obj)):
                outcome = None
            else:
                outcome = payment_events.apply(cur, event_id, event_type, obj)
    except Exception:
        metrics.WEBHOOK_EVENTS.labels(type=event_type, outcome="error").inc()
        raise
    if outcome is None:
        _log_event(event_id, event_type, "duplicate")
        return _answer(200, event_type, "duplicate", received=True)
    fulfilment.after_commit(outcome.changes)
    result = "parked" if outcome.parked else "processed"
    _log_event(event_id, event_type, result)
    return _answer(200, event_type, result, received=True)
