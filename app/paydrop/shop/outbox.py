"""The mail outbox: SQL, and the delivery step the worker (and the web's fast path) run.

``enqueue`` writes a message inside the caller's transaction. Delivery claims a
due message with a lease (``next_attempt_at`` pushed forward, ``attempts`` + 1,
committed) before talking to SMTP, so any number of workers and web processes
can deliver concurrently and each message is sent by one of them; a process
that dies mid-send leaves the message to be retried when the lease ends (at
least once, never lost). A failure is retried with exponential back-off
(MAIL_RETRY_BASE_SECONDS x 2^(attempt-1), at most an hour) until
MAIL_MAX_ATTEMPTS, then the message is ``dead``: /metrics shows it
(``paydrop_outbox_messages{status="dead"}``) and an operator resends it with
``paydrop mail retry-dead``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app

from .. import metrics
from ..db import get_db
from . import mail

log = logging.getLogger(__name__)

LEASE_SECONDS = 120
MAX_BACKOFF_SECONDS = 3600
STATUSES = ("pending", "sent", "skipped", "dead")
_fast_path = ThreadPoolExecutor(max_workers=2, thread_name_prefix="paydrop-mail")


@dataclass(frozen=True)
class Message:
    id: int
    recipient: str
    subject: str
    body: str
    attempts: int


def enqueue(cur: Any, to: str, subject: str, body: str) -> int:
    """Queue a message in the caller's transaction; its id (for ``kick``)."""
    cur.execute(
        "INSERT INTO outbox (recipient, subject, body) VALUES (%s, %s, %s) RETURNING id",
        (to, subject, body),
    )
    return int(cur.fetchone()["id"])


def kick(message_ids: Iterable[int]) -> None:
    """After commit: try to deliver these now, off the request (the worker retries)."""
    ids = [i for i in message_ids if i]
    if not ids:
        return
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]

    def deliver() -> None:
        with app.app_context():
            for message_id in ids:
                try:
                    deliver_one(message_id)
                except Exception as exc:  # noqa: BLE001 - the worker retries whatever happened
                    log.warning("could not deliver message %s now; the worker retries: %s",
                                message_id, exc)

    _fast_path.submit(deliver)


def _claim(message_id: int | None = None) -> Message | None:
    """Lease one due message (this one, or the oldest due), committed before sending."""
    with get_db().transaction() as cur:
        cur.execute(
            """UPDATE outbox SET attempts = attempts + 1,
                   next_attempt_at = now() + make_interval(secs => %s)
               WHERE id = (SELECT id FROM outbox
                           WHERE status = 'pending' AND next_attempt_at <= now()
                             AND (%s::bigint IS NULL OR id = %s)
                           ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
               RETURNING id, recipient, subject, body, attempts""",
            (LEASE_SECONDS, message_id, message_id),
        )
        row = cur.fetchone()
    return Message(**row) if row else None


def _finish(message: Message, status: str, error: str | None = None) -> None:
    # A dead message keeps its body so that an operator can send it again.
    with get_db().transaction() as cur:
        cur.execute(
            """UPDATE outbox SET status = %s, last_error = %s, finished_at = now(),
                   body = CASE WHEN %s = 'dead' THEN body ELSE '' END
               WHERE id = %s""",
            (status, error and error[:500], status, message.id),
        )


def _retry_later(message: Message, error: str) -> bool:
    """Schedule the next attempt; False (and dead) when attempts are used up."""
    config = current_app.config
    if message.attempts >= config["MAIL_MAX_ATTEMPTS"]:
        _finish(message, "dead", error)
        log.error("gave up on message %s (%r to %s) after %d attempts: %s", message.id,
                  message.subject, message.recipient, message.attempts, error)
        return False
    delay = min(config["MAIL_RETRY_BASE_SECONDS"] * 2 ** (message.attempts - 1),
                MAX_BACKOFF_SECONDS)
    with get_db().transaction() as cur:
        cur.execute(
            """UPDATE outbox SET last_error = %s, next_attempt_at = now() + make_interval(secs => %s)
               WHERE id = %s""",
            (error[:500], delay, message.id),
        )
    log.warning("message %s to %s failed (attempt %d), retrying in %ss: %s", message.id,
                message.recipient, message.attempts, delay, error)
    return True


def _deliver(message: Message) -> str:
    settings = mail.SmtpSettings.from_app()
    if not settings.host:
        mail.log_skipped(message.recipient, message.subject)
        _finish(message, "skipped")
        return "skipped"
    try:
        mail.deliver(settings, message.recipient, message.subject, message.body)
    except mail.DeliveryError as exc:
        metrics.DEPENDENCY_ERRORS.labels(dependency="smtp").inc()
        return "retry" if _retry_later(message, str(exc)) else "dead"
    _finish(message, "sent")
    return "sent"


def deliver_one(message_id: int) -> str | None:
    message = _claim(message_id)
    return _deliver(message) if message else None


def deliver_due(limit: int = 100) -> dict[str, int]:
    """Deliver up to ``limit`` due messages; counts by outcome."""
    outcomes: dict[str, int] = {}
    for _ in range(limit):
        message = _claim()
        if message is None:
            break
        outcome = _deliver(message)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


def retry_dead() -> int:
    with get_db().transaction() as cur:
        cur.execute("""UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = now(),
                       finished_at = NULL WHERE status = 'dead'""")
        return int(cur.rowcount)


def counts() -> dict[str, int]:
    with get_db().transaction() as cur:
        cur.execute("SELECT status, count(*) AS n FROM outbox GROUP BY status")
        found = {row["status"]: int(row["n"]) for row in cur.fetchall()}
    return {status: found.get(status, 0) for status in STATUSES}
