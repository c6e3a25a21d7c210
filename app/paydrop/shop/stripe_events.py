"""SQL for the Stripe events ledger (one row per event id ever processed)."""

from __future__ import annotations

from typing import Any

import psycopg2.extras

from ..db import execute_prepared


def record(cur: Any, event_id: str, event_type: str, payment_intent_id: str | None) -> bool:
    """Claim the event; False when it was already recorded (a duplicate delivery).

    A concurrent delivery of the same id waits on the primary key until the
    first transaction ends, then sees the row and gets False.

    The row is written processed (``processed_at`` is the transaction's time,
    as ``mark_processed`` would write it later in the same transaction): nearly
    every event is, and ``park`` undoes it for one that is not. One statement
    less per event than marking it afterwards (webhook ingest, #12); nobody
    sees the row before the transaction commits.
    """
    execute_prepared(
        cur, "paydrop_record_event",
        """INSERT INTO stripe_events (id, type, payment_intent_id, processed_at)
           VALUES (%s, %s, %s, now())
           ON CONFLICT (id) DO NOTHING RETURNING id""",
        (event_id, event_type, payment_intent_id),
    )
    return cur.fetchone() is not None


def mark_processed(cur: Any, event_id: str) -> None:
    cur.execute(
        "UPDATE stripe_events SET processed_at = now(), payload = NULL WHERE id = %s",
        (event_id,),
    )


def park(cur: Any, event_id: str, obj: dict[str, Any]) -> None:
    """Keep an event about a payment no order knows yet, to replay later."""
    cur.execute(
        "UPDATE stripe_events SET payload = %s, processed_at = NULL WHERE id = %s",
        (psycopg2.extras.Json(obj), event_id),
    )


def parked_for_new_link(cur: Any, order_id: str, payment_intent_id: str, *,
                        first: bytes = b"") -> list[tuple[str, str, dict[str, Any]]]:
    """Record the order's PaymentIntent (if it has none yet) and, when that was new,
    return (id, type, object) of the events parked for the payment, oldest first,
    row-locked. Once the order knows its PaymentIntent, no event for it is parked
    any more, so there is nothing to look for when it already knew it.

    ``first``: a statement (``cur.mogrify``'d) for the server to run before this one,
    in the same round trip: psycopg2 sends both in one message, PostgreSQL runs them
    in order (this one with a snapshot taken after the first ended), and the cursor
    holds the result of the last one.
    """
    execute_prepared(
        cur, "paydrop_link_payment",
        """WITH linked AS (
               UPDATE orders SET stripe_payment_intent_id = %s, updated_at = now()
               WHERE id = %s AND stripe_payment_intent_id IS NULL RETURNING id)
           SELECT id, type, payload FROM stripe_events
           WHERE EXISTS (SELECT FROM linked)
               AND payment_intent_id = %s AND processed_at IS NULL AND payload IS NOT NULL
           ORDER BY received_at, id FOR UPDATE""",
        (payment_intent_id, order_id, payment_intent_id), first=first,
    )
    return [(row["id"], row["type"], row["payload"]) for row in cur.fetchall()]
