"""``paydrop worker``: the shop's background process (its own container or service).

Every WORKER_POLL_SECONDS it delivers due mail from the outbox (retries with
back-off, dead letters), marks failed the orders left pending without a Stripe
payment for PENDING_ORDER_TTL_SECONDS (the buyer left before paying; a late
payment still turns such an order paid), and deletes accounts whose address
was not confirmed within UNVERIFIED_ACCOUNT_TTL_SECONDS. It stops cleanly on
SIGTERM/SIGINT after the current round. Any number of workers may run: every
step is safe to run concurrently.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext

from ..db import get_db
from . import fulfilment, outbox, users

log = logging.getLogger(__name__)
ABANDONED = "The payment was not completed."


def expire_pending_orders() -> int:
    """Fail orders pending without any Stripe payment for too long; how many."""
    with get_db().transaction() as cur:
        cur.execute(
            """SELECT id::text AS id FROM orders
               WHERE status = 'pending' AND stripe_payment_intent_id IS NULL
                 AND stripe_checkout_session_id IS NULL
                 AND created_at < now() - make_interval(secs => %s)
               ORDER BY created_at LIMIT 500""",
            (current_app.config["PENDING_ORDER_TTL_SECONDS"],),
        )
        stale = [row["id"] for row in cur.fetchall()]
    for order_id in stale:
        fulfilment.fail(order_id, ABANDONED)
    return len(stale)


def expire_unverified_accounts() -> int:
    with get_db().transaction() as cur:
        return users.expire_unverified(cur, current_app.config["UNVERIFIED_ACCOUNT_TTL_SECONDS"])


def run_once() -> dict[str, Any]:
    """One round of every job; what it did."""
    done: dict[str, Any] = {"mail": outbox.deliver_due()}
    done["orders_expired"] = expire_pending_orders()
    done["accounts_expired"] = expire_unverified_accounts()
    return done


@click.command("worker")
@click.option("--once", is_flag=True, help="run one round and exit (cron, tests)")
@with_appcontext
def worker_command(once: bool) -> None:
    """Deliver mail and sweep stale orders and accounts, until stopped."""
    stop = threading.Event()
    if not once:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        log.info("worker started")
    while True:
        try:
            done = run_once()
        except Exception:  # noqa: BLE001 - a database blip must not end the worker
            log.exception("worker round failed; trying again")
            done = {}
        if once:
            click.echo(" ".join(f"{key}={value}" for key, value in done.items()))
            return
        if any(done.values()):
            log.info("worker round: %s", done)
        if stop.wait(current_app.config["WORKER_POLL_SECONDS"]):
            log.info("worker stopped")
            return
