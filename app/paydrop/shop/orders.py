"""SQL for the orders aggregate.

State changes (paid, failed, refunded, disputed) live in ``fulfilment``; this
module only reads, creates and records Stripe ids.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2.errors

from ..db import execute_prepared


@dataclass(frozen=True)
class Order:
    id: str
    user_id: int | None
    email: str
    product_id: int
    product_slug: str
    product_title: str
    amount: int
    currency: str
    status: str
    checkout_mode: str
    stripe_setup_intent_id: str | None
    stripe_payment_intent_id: str | None
    stripe_checkout_session_id: str | None
    stripe_charge_id: str | None
    failure_message: str | None
    amount_refunded: int
    flagged: bool
    created_at: datetime
    paid_at: datetime | None
    revoked_at: datetime | None
    refund_failed_at: datetime | None
    refund_failure_reason: str | None


# An Order's fields from ``orders o`` and its ``products p``; also what fulfilment's
# payment UPDATE returns, so that it need not read the order first.
COLUMNS = """o.id::text AS id, o.user_id, o.email, o.product_id, p.slug AS product_slug,
        p.title AS product_title, o.amount, o.currency, o.status, o.checkout_mode,
        o.stripe_setup_intent_id, o.stripe_payment_intent_id, o.stripe_checkout_session_id,
        o.stripe_charge_id, o.failure_message, o.amount_refunded, o.flagged, o.created_at,
        o.paid_at, o.revoked_at, o.refund_failed_at, o.refund_failure_reason"""
# Constants only, so neither ruff's nor bandit's SQL-injection warning applies.
_SELECT = f"SELECT {COLUMNS} FROM orders o JOIN products p ON p.id = o.product_id"  # noqa: S608 # nosec B608


def _order(row: dict[str, Any] | None) -> Order | None:
    return Order(**row) if row else None


def is_uuid(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def create(
    cur: Any,
    *,
    product_id: int,
    amount: int,
    currency: str,
    email: str,
    user_id: int | None,
    checkout_mode: str,
    setup_intent_id: str | None = None,
) -> Order | None:
    """A pending order; None when ``setup_intent_id`` already paid for another order."""
    cur.execute("SAVEPOINT create_order")
    try:
        cur.execute(
            """INSERT INTO orders (product_id, amount, currency, email, user_id, checkout_mode,
                   stripe_setup_intent_id)
               VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id::text""",
            (product_id, amount, currency, email.lower(), user_id, checkout_mode, setup_intent_id),
        )
    except psycopg2.errors.UniqueViolation:
        cur.execute("ROLLBACK TO SAVEPOINT create_order")
        return None
    return get(cur, cur.fetchone()["id"])


def get(cur: Any, order_id: str) -> Order | None:
    if not is_uuid(order_id):
        return None
    execute_prepared(cur, "paydrop_order", f"{_SELECT} WHERE o.id = %s", (order_id,))
    return _order(cur.fetchone())


def lock(cur: Any, order_id: str) -> Order | None:
    """The order, row-locked until the transaction ends (serialises state changes)."""
    if not is_uuid(order_id):
        return None
    cur.execute(f"{_SELECT} WHERE o.id = %s FOR UPDATE OF o", (order_id,))
    return _order(cur.fetchone())


def find_by_setup_intent(cur: Any, setup_intent_id: str) -> Order | None:
    cur.execute(f"{_SELECT} WHERE o.stripe_setup_intent_id = %s", (setup_intent_id,))
    return _order(cur.fetchone())


def id_by_payment_intent(cur: Any, payment_intent_id: str) -> str | None:
    cur.execute(
        "SELECT id::text AS id FROM orders WHERE stripe_payment_intent_id = %s",
        (payment_intent_id,),
    )
    row = cur.fetchone()
    return row["id"] if row else None


def id_by_checkout_session(cur: Any, session_id: str) -> str | None:
    cur.execute(
        "SELECT id::text AS id FROM orders WHERE stripe_checkout_session_id = %s",
        (session_id,),
    )
    row = cur.fetchone()
    return row["id"] if row else None


def set_checkout_session(cur: Any, order_id: str, session_id: str) -> None:
    cur.execute(
        """UPDATE orders SET stripe_checkout_session_id = %s, updated_at = now()
           WHERE id = %s""",
        (session_id, order_id),
    )


def list_for_user(cur: Any, user_id: int) -> list[Order]:
    cur.execute(f"{_SELECT} WHERE o.user_id = %s ORDER BY o.created_at DESC", (user_id,))
    return [Order(**row) for row in cur.fetchall()]


def attach_guest_orders(cur: Any, email: str, user_id: int) -> int:
    """Give the user every guest order placed with their (verified) address."""
    cur.execute(
        "UPDATE orders SET user_id = %s, updated_at = now() WHERE email = %s AND user_id IS NULL",
        (user_id, email.lower()),
    )
    return int(cur.rowcount)
