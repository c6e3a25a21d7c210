"""Outgoing e-mail (receipts, address confirmation, password resets) over SMTP.

Views never send mail themselves: they ``outbox.enqueue`` it in the transaction
that makes the change the mail announces, and the outbox delivers it (see
outbox.py). This module builds and sends one message. With SMTP_HOST empty
(development) messages are not sent: the first one says so at WARNING, each
is logged at DEBUG (recipient and subject only: bodies carry download,
confirmation and reset links, which are bearer tokens).
"""

from __future__ import annotations

import logging
import smtplib
import ssl
import threading
import weakref
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid

from flask import Flask, current_app

log = logging.getLogger(__name__)
SMTP_TIMEOUT_SECONDS = 15
# Apps that have said their SMTP_HOST is empty (``log_skipped``).
_skip_noted: weakref.WeakSet[Flask] = weakref.WeakSet()
_skip_noted_lock = threading.Lock()


class DeliveryError(Exception):
    """The mail server refused the message or could not be reached."""


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    user: str
    password: str
    sender: str
    starttls: bool

    @classmethod
    def from_app(cls) -> SmtpSettings:
        config = current_app.config
        return cls(
            host=config["SMTP_HOST"],
            port=config["SMTP_PORT"],
            user=config["SMTP_USER"],
            password=config["SMTP_PASSWORD"],
            sender=config["SMTP_FROM"],
            starttls=config["SMTP_STARTTLS"],
        )


def log_skipped(to: str, subject: str) -> None:
    """Say once per app (process) that mail is not sent; each message only at DEBUG.

    A line per receipt told the operator nothing new after the first and cost a
    log line per payment (webhook ingest, #12); the outbox keeps every skipped
    message (status ``skipped``) and /metrics counts them.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    with _skip_noted_lock:
        first = app not in _skip_noted
        _skip_noted.add(app)
    if first:
        note = ""
        if current_app.config["APP_ENVIRONMENT"] != "production":
            note = (" Bodies and their links are not logged; point SMTP_HOST at a local "
                    "mail catcher to read them.")
        log.warning("SMTP_HOST is empty: mail is not sent, each message is marked skipped in "
                    "the outbox (paydrop_outbox_messages{status=\"skipped\"}); this is said "
                    "once per process, the messages themselves at DEBUG.%s", note)
    log.debug("SMTP_HOST is empty; not sending %r to %s", subject, to)


def deliver(settings: SmtpSettings, to: str, subject: str, body: str) -> None:
    """Send one plain-text message now; raise DeliveryError on any failure."""
    message = EmailMessage()
    message["From"] = settings.sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain=settings.sender.rpartition("@")[2] or None)
    message.set_content(body)
    try:
        with smtplib.SMTP(settings.host, settings.port, timeout=SMTP_TIMEOUT_SECONDS) as smtp:
            if settings.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.user:
                smtp.login(settings.user, settings.password)
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
