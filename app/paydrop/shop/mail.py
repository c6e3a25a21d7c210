"""Outgoing e-mail (receipts, address confirmation, password resets) over SMTP.

Views never send mail themselves: they ``outbox.enqueue`` it in the transaction
that makes the change the mail announces, and the outbox delivers it (see
outbox.py). This module builds and sends one message. With SMTP_HOST empty
(development) a message is logged (recipient and subject only: bodies carry
download, confirmation and reset links, which are bearer tokens) and not sent.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid

from flask import current_app

log = logging.getLogger(__name__)
SMTP_TIMEOUT_SECONDS = 15


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
    note = ""
    if current_app.config["APP_ENVIRONMENT"] != "production":
        note = (" (the body and its links are not logged; point SMTP_HOST at a local "
                "mail catcher to read them)")
    log.info("SMTP_HOST is empty; not sending %r to %s%s", subject, to, note)


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
