"""The order state machine and what happens when an order changes state.

    pending -> paid -> refunded | disputed
    pending -> failed -> paid        (the same payment succeeded after all)
    pending | failed -> refunded | disputed   (events that arrived out of order)
    disputed -> paid                 (the dispute was won: access comes back)
    refunded | disputed -> paid      (support restores it: ``paydrop orders restore``)

Stripe's events never take a refunded order back to paid.

Each ``mark_*`` function runs inside the caller's transaction, locks the order
row, and changes it with an UPDATE guarded by the allowed source states, so
the checkout page, the success page and any number of concurrent webhook
deliveries can call it and the change happens exactly once. It returns a
``Change`` (or None when nothing changed); the caller passes the changes to
``after_commit`` once the transaction has committed: metrics, the
``paydrop:orders`` message, a nudge to deliver the receipt, which
``mark_paid`` wrote to the mail outbox in the same transaction as the payment,
and the log: ``order_changes: ["<order id> paid"]`` on the request's line, or
"order <id> is now paid" outside a request.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from flask import current_app
from psycopg2 import sql

from .. import metrics, observability
from ..db import execute_prepared, get_db
from . import grants, order_events, orders, outbox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    order: orders.Order
    grant: grants.Grant | None = None
    mail_id: int | None = None


def _transition(cur: Any, order_id: str, sets: str, allowed: tuple[str, ...],
                params: tuple[Any, ...] = ()) -> bool:
    """UPDATE guarded by the allowed source states; True when the row changed.
    ``sets`` is always a constant from this module."""
    cur.execute(
        sql.SQL("""UPDATE orders SET {}, updated_at = now()
            WHERE id = %s AND status = ANY(%s) RETURNING id""").format(sql.SQL(sets)),
        (*params, order_id, list(allowed)),
    )
    return cur.fetchone() is not None


def mark_paid(
    cur: Any,
    order_id: str,
    *,
    amount: int,
    currency: str,
    charge_id: str | None = None,
) -> Change | None:
    """The one fulfilment function: pending/failed -> paid, plus a download grant.

    ``amount`` and ``currency`` are what Stripe says was paid; an order is only
    fulfilled when they equal the price recorded on the order. The order's
    PaymentIntent is recorded before this, by ``payment_events.link_payment_intent``
    (which also replays events parked for it), never here.
    """
    if not orders.is_uuid(order_id):
        return None
    config = current_app.config
    paid = _pay_and_grant(cur, order_id, amount, currency.lower(), charge_id,
                          config["DOWNLOAD_TTL_SECONDS"], config["DOWNLOAD_LIMIT"])
    if paid is not None:
        return Change(paid[0], paid[1], _queue_receipt(cur, *paid))
    # Not paid by this call: already paid (or refunded, ...), or another price.
    order = orders.lock(cur, order_id)
    if order is None or order.status not in ("pending", "failed"):
        return None
    log.error("order %s: Stripe reports %s %s paid, the order says %s %s; not fulfilling",
              order_id, amount, currency, order.amount, order.currency)
    cur.execute("UPDATE orders SET flagged = true WHERE id = %s", (order_id,))
    return None


def _pay_and_grant(cur: Any, order_id: str, amount: int, currency: str, charge_id: str | None,
                   ttl_seconds: int, max_downloads: int) -> tuple[orders.Order, grants.Grant] | None:
    """pending/failed -> paid at the order's own price, and the download grant, in one
    statement that returns both (the grant exists only if the guarded UPDATE changed
    the row, which it locks as it does). One round trip instead of four (lock and
    read, update, insert, re-read): a webhook's time is mostly round trips (#12)."""
    execute_prepared(
        cur, "paydrop_pay_and_grant",
        sql.SQL("""WITH paid AS (
                UPDATE orders o SET status = 'paid', paid_at = now(), failure_message = NULL,
                    stripe_charge_id = coalesce(%s, o.stripe_charge_id), updated_at = now()
                FROM products p
                WHERE o.id = %s AND o.status = ANY(%s) AND o.amount = %s AND o.currency = %s
                    AND p.id = o.product_id
                RETURNING {}),
            granted AS (
                INSERT INTO download_grants (order_id, expires_at, max_downloads)
                SELECT %s::uuid, now() + make_interval(secs => %s), %s::integer FROM paid
                RETURNING id::text AS grant_id, expires_at AS grant_expires_at,
                    max_downloads AS grant_max_downloads,
                    download_count AS grant_download_count, revoked_at AS grant_revoked_at)
            SELECT * FROM paid, granted""").format(sql.SQL(orders.COLUMNS)),
        (charge_id, order_id, ["pending", "failed"], amount, currency, order_id, ttl_seconds,
         max_downloads),
    )
    row = cur.fetchone()
    if row is None:
        return None
    grant = grants.Grant(order_id=row["id"], **{
        name: row.pop(f"grant_{name}") for name in ("id", "expires_at", "max_downloads",
                                                     "download_count", "revoked_at")})
    return orders.Order(**row), grant


def mark_failed(cur: Any, order_id: str, message: str) -> Change | None:
    """pending -> failed (a payment that has succeeded is never failed afterwards)."""
    if orders.lock(cur, order_id) is None:
        return None
    if not _transition(cur, order_id, "status = 'failed', failure_message = %s", ("pending",),
                       (message[:500],)):
        return None
    return Change(_reload(cur, order_id))


def mark_refunded(cur: Any, order_id: str, *, amount_refunded: int, fully: bool) -> Change | None:
    """Record a refund; a full refund revokes the downloads and ends the order."""
    if orders.lock(cur, order_id) is None:
        return None
    cur.execute(
        "UPDATE orders SET amount_refunded = greatest(amount_refunded, %s) WHERE id = %s",
        (amount_refunded, order_id),
    )
    if not fully or not _transition(
        cur, order_id, "status = 'refunded', revoked_at = now()", ("pending", "paid", "failed")
    ):
        return None
    grants.revoke_for_order(cur, order_id)
    return Change(_reload(cur, order_id))


def mark_disputed(cur: Any, order_id: str) -> Change | None:
    """A dispute revokes the downloads and flags the order for a human."""
    if orders.lock(cur, order_id) is None:
        return None
    cur.execute("UPDATE orders SET flagged = true WHERE id = %s", (order_id,))
    grants.revoke_for_order(cur, order_id)
    if not _transition(
        cur, order_id, "status = 'disputed', revoked_at = now()", ("pending", "paid", "failed")
    ):
        return None
    return Change(_reload(cur, order_id))


def _restore(cur: Any, order_id: str, allowed: tuple[str, ...]) -> Change | None:
    """Back to paid with a fresh download link (earlier links stay revoked)."""
    if orders.lock(cur, order_id) is None:
        return None
    if not _transition(cur, order_id, "status = 'paid', revoked_at = NULL, flagged = false",
                       allowed):
        return None
    config = current_app.config
    grant = grants.create(cur, order_id, config["DOWNLOAD_TTL_SECONDS"], config["DOWNLOAD_LIMIT"])
    return Change(_reload(cur, order_id), grant)


def mark_dispute_won(cur: Any, order_id: str) -> Change | None:
    """disputed -> paid: the bank sided with us, so the buyer keeps what they paid for."""
    return _restore(cur, order_id, ("disputed",))


def restore(cur: Any, order_id: str) -> Change | None:
    """Support's decision: a refunded or disputed order is paid again."""
    return _restore(cur, order_id, ("refunded", "disputed"))


def record_refund_failure(cur: Any, order_id: str, reason: str) -> bool:
    """Note that a refund did not go through (flags the order); True when recorded."""
    cur.execute(
        """UPDATE orders SET refund_failed_at = now(), refund_failure_reason = %s, flagged = true,
               updated_at = now() WHERE id = %s RETURNING id""",
        (reason[:500], order_id),
    )
    return cur.fetchone() is not None


def _reload(cur: Any, order_id: str) -> orders.Order:
    order = orders.get(cur, order_id)
    assert order is not None  # noqa: S101 - locked by this transaction
    return order


def after_commit(changes: Iterable[Change | None]) -> None:
    """Side effects of committed changes; never raises for a dependency outage."""
    for change in changes:
        if change is None:
            continue
        order = change.order
        metrics.ORDER_TRANSITIONS.labels(state=order.status).inc()
        order_events.publish(
            f"order.{order.status}",
            {
                "order_id": order.id,
                "status": order.status,
                "product": order.product_slug,
                "amount": order.amount,
                "currency": order.currency,
            },
        )
        if change.mail_id is not None:
            outbox.kick([change.mail_id])
        # In a request (a webhook, the checkout), on the request's own line.
        if not observability.add_to_request_line("order_changes", f"{order.id} {order.status}"):
            log.info("order %s is now %s", order.id, order.status)


def _queue_receipt(cur: Any, order: orders.Order, grant: grants.Grant) -> int:
    from .downloads import download_url
    from .money import format_money

    link = download_url(grant.id)
    body = (
        f"Thank you for your purchase.\n\n"
        f"Order: {order.id}\n"
        f"Item: {order.product_title}\n"
        f"Paid: {format_money(order.amount, order.currency)}\n\n"
        f"Download: {link}\n"
        f"The link works {grant.max_downloads} times until "
        f"{grant.expires_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC. A new link can be requested from "
        f"'My orders' after you create an account with this address.\n"
    )
    return outbox.enqueue(cur, order.email, f"Your receipt for {order.product_title}", body)


def fail(order_id: str, message: str) -> None:
    with get_db().transaction() as cur:
        change = mark_failed(cur, order_id, message)
    after_commit([change])


REISSUE_LIMIT_REACHED = object()


def reissue_link(order_id: str, limit: int) -> grants.Grant | object | None:
    """A fresh download grant for a paid order; earlier links stop working.

    None when the order has no downloads; REISSUE_LIMIT_REACHED once it has had
    ``limit`` new links after the first (a stolen login cannot mint links forever).
    """
    config = current_app.config
    with get_db().transaction() as cur:
        order = orders.lock(cur, order_id)
        if order is None or order.status != "paid":
            return None
        if grants.count_for_order(cur, order_id) > limit:
            return REISSUE_LIMIT_REACHED
        grants.revoke_for_order(cur, order_id)
        return grants.create(cur, order_id, config["DOWNLOAD_TTL_SECONDS"],
                             config["DOWNLOAD_LIMIT"])
