"""Outgoing e-mail (receipts, address verification) over SMTP.

Messages are handed to a small thread pool so a slow mail server never delays a
webhook answer or a page. With SMTP_HOST empty (development) a message is
logged (recipient and subject only: bodies carry download and confirmation
links, which are bearer tokens) and not sent.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid

from flask import current_app

from .. import metrics

log = logging.getLogger(__name__)
_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="paydrop-mail")


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


def send(to: str, subject: str, body: str) -> Future[None] | None:
    """Queue a plain-text message; returns its future (None when SMTP is off)."""
    settings = SmtpSettings.from_app()
    message = EmailMessage()
    message["From"] = settings.sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain=settings.sender.rpartition("@")[2] or None)
    message.set_content(body)
    if not settings.host:
        note = ""
        if current_app.config["APP_ENVIRONMENT"] != "production":
            note = (" (the body and its links are not logged; point SMTP_HOST at a local "
                    "mail catcher to read them)")
        log.info("SMTP_HOST is empty; not sending %r to %s%s", subject, to, note)
        return None
    return _pool.submit(_deliver, settings, message)


def _deliver(settings: SmtpSettings, message: EmailMessage) -> None:
    try:
        with smtplib.SMTP(settings.host, settings.port, timeout=15) as smtp:
            if settings.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.user:
                smtp.login(settings.user, settings.password)
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        metrics.DEPENDENCY_ERRORS.labels(dependency="smtp").inc()
        log.error("could not send %r to %s: %s", message["Subject"], message["To"], exc)

