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
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app

from .. import metrics
from ..db import execute_prepared, get_db
from . import mail

log = logging.getLogger(__name__)

LEASE_SECONDS = 120
MAX_BACKOFF_SECONDS = 3600
STATUSES = ("pending", "sent", "skipped", "dead")
# The web's fast path (``kick``): ids to deliver now, per app, and how many threads drain them.
FAST_BATCH = 20
_MAX_SENDERS = 2
_fast_path = ThreadPoolExecutor(max_workers=_MAX_SENDERS, thread_name_prefix="paydrop-mail")
_kicked: dict[Flask, list[int]] = {}
_kicked_lock = threading.Lock()
_senders = 0


@dataclass(frozen=True)
class Message:
    id: int
    recipient: str
    subject: str
    body: str
    attempts: int


def enqueue(cur: Any, to: str, subject: str, body: str) -> int:
    """Queue a message in the caller's transaction; its id (for ``kick``)."""
    execute_prepared(
        cur, "paydrop_enqueue_mail",
        "INSERT INTO outbox (recipient, subject, body) VALUES (%s, %s, %s) RETURNING id",
        (to, subject, body),
    )
    return int(cur.fetchone()["id"])


def kick(message_ids: Iterable[int]) -> None:
    """After commit: try to deliver these now, off the request (the worker retries).

    Kicked ids queue up per process; at most two threads drain the queue, each
    taking up to FAST_BATCH ids at a time and claiming and finishing them in
    one transaction each (``deliver_batch``). A lone message goes out at once,
    as before; under a burst of payments the bookkeeping is shared by a batch
    instead of costing two transactions per message (webhook ingest, #12).
    """
    ids = [i for i in message_ids if i]
    if not ids:
        return
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    global _senders
    with _kicked_lock:
        _kicked.setdefault(app, []).extend(ids)
        if _senders >= _MAX_SENDERS:
            return  # a running sender takes them with its next batch
        _senders += 1
    try:
        _fast_path.submit(_drain)
    except RuntimeError:  # the interpreter is shutting down: the worker delivers them
        with _kicked_lock:
            _senders -= 1


def _next_batch() -> tuple[Flask, list[int]] | None:
    """The oldest kicked ids of one app (called with _kicked_lock held)."""
    for app, ids in _kicked.items():
        batch = ids[:FAST_BATCH]
        del ids[:FAST_BATCH]
        if not ids:
            del _kicked[app]
        return app, batch
    return None


def _drain() -> None:
    global _senders
    while True:
        with _kicked_lock:
            taken = _next_batch()
            if taken is None:
                _senders -= 1
                return
        app, ids = taken
        with app.app_context():
            try:
                deliver_batch(ids)
            except Exception as exc:  # noqa: BLE001 - the worker retries whatever happened
                log.warning("could not deliver messages %s now; the worker retries: %s", ids, exc)


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


def _claim_batch(message_ids: list[int]) -> list[Message]:
    """Lease these messages (those still due and not leased elsewhere), committed before sending."""
    with get_db().transaction() as cur:
        cur.execute(
            """UPDATE outbox SET attempts = attempts + 1,
                   next_attempt_at = now() + make_interval(secs => %s)
               WHERE id IN (SELECT id FROM outbox
                            WHERE id = ANY(%s) AND status = 'pending' AND next_attempt_at <= now()
                            ORDER BY id FOR UPDATE SKIP LOCKED)
               RETURNING id, recipient, subject, body, attempts""",
            (LEASE_SECONDS, list(message_ids)),
        )
        rows = cur.fetchall()
    return sorted((Message(**row) for row in rows), key=lambda m: m.id)


def _finish_all(message_ids: list[int], status: str) -> None:
    """Sent or skipped: the same UPDATE as ``_finish``, for many messages at once."""
    if not message_ids:
        return
    with get_db().transaction() as cur:
        cur.execute(
            """UPDATE outbox SET status = %s, last_error = NULL, finished_at = now(), body = ''
               WHERE id = ANY(%s)""",
            (status, list(message_ids)),
        )


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


def deliver_batch(message_ids: list[int]) -> dict[str, int]:
    """Deliver these messages if still due: one transaction leases them all, each is
    sent (or skipped when SMTP_HOST is empty), one transaction records those that
    went out; a failed one is retried or dead on its own, as in ``_deliver``. A
    process that dies mid-batch leaves the batch to the worker when the lease ends
    (at least once, never lost, as for one message). Counts by outcome."""
    messages = _claim_batch(message_ids)
    if not messages:
        return {}
    settings = mail.SmtpSettings.from_app()
    finished: dict[str, list[int]] = {"sent": [], "skipped": []}
    outcomes: dict[str, int] = {}
    try:
        for message in messages:
            if not settings.host:
                mail.log_skipped(message.recipient, message.subject)
                outcome = "skipped"
            else:
                try:
                    mail.deliver(settings, message.recipient, message.subject, message.body)
                    outcome = "sent"
                except mail.DeliveryError as exc:
                    metrics.DEPENDENCY_ERRORS.labels(dependency="smtp").inc()
                    outcome = "retry" if _retry_later(message, str(exc)) else "dead"
            if outcome in finished:
                finished[outcome].append(message.id)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    finally:
        for status, ids in finished.items():
            _finish_all(ids, status)
    return outcomes


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
