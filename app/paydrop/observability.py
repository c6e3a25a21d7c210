"""What operators see of a running app: JSON logs, request ids, metrics, X-Release.

* Logs: one JSON object per line on stdout (timestamp, level, logger, message,
  request_id, and per request: method, route, path, status, duration_ms). The
  app writes the one access line per request itself; gunicorn's access log stays
  off so nothing is logged twice. What a request changed (an order that is now
  paid, the Stripe event a webhook applied) goes on that line as fields
  (``add_to_request_line``), not on lines of its own: every line costs the
  host's log path (Docker, journald, the upload to the log server) about as
  much CPU as a webhook's database statements, and the request id already
  ties it all together.
* Redaction happens in a logging filter on the handler, so it covers every
  logger (ours, Flask's, psycopg2's error texts, gunicorn's): the values of the
  secret settings (``settings.SECRET_NAMES``), Stripe-key-looking strings,
  card-number-like digit runs, and tokens in ``/downloads/...``,
  ``/account/verify/...`` and ``/account/password/reset/...`` paths. Query
  strings are never logged, and a request
  that matched a route logs the route template as its path, never the raw path
  (which may carry a token); only unmatched requests log their (redacted) path.
* Request ids: a sane ``X-Request-ID`` from the client (nginx sets one) is kept,
  anything else is replaced by a fresh UUID; it is returned in the response.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from flask import Flask, Response, current_app, g, has_request_context, request

from . import settings

log = logging.getLogger("paydrop.request")

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

REDACTED = "[REDACTED]"
# Secret values shorter than this are not redacted: replacing every "abc" in
# every line would hide more than it protects. Real secrets are much longer.
_MIN_SECRET_LENGTH = 6
# 13-19 consecutive digits, or the usual card groupings 4-4-4-x / 4-6-5 with one
# space or dash between groups. Canonical UUIDs (8-4-4-4-12) never match.
_CARD_NUMBER = re.compile(
    r"(?<!\d)(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}|\d{4}([ -])\d{6}\2\d{5})(?!\d)"
)
_STRIPE_KEY = re.compile(r"\b(?:sk|rk|whsec)_[A-Za-z0-9_]{8,}")
# The token and anything after it (a query string can carry a token too), but
# not a route template such as /downloads/<token>. Download links and
# address-confirmation links both carry bearer tokens in the path.
_DOWNLOAD_TOKEN = re.compile(r"(/(?:downloads|account/verify|account/password/reset)/)(?!<\w+>)[^\s\"']+")

# Attributes every LogRecord has; anything else was passed with ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class Redactor:
    """Knows the secret values of this process and scrubs them from text."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add_secrets(self, values: Iterable[str]) -> None:
        found = set()
        for value in values:
            if not isinstance(value, str) or not value:
                continue
            found.add(value)
            # A database or Redis URL's password can show up on its own.
            if "://" in value:
                password = urlparse(value).password
                if password:
                    found.add(password)
        with self._lock:
            self._secrets |= {v for v in found if len(v) >= _MIN_SECRET_LENGTH}

    def redact(self, text: str) -> str:
        # Longest first, so a secret that contains another is removed whole.
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, REDACTED)
        text = _STRIPE_KEY.sub(REDACTED, text)
        text = _CARD_NUMBER.sub(REDACTED, text)
        return _DOWNLOAD_TOKEN.sub(r"\1" + REDACTED, text)


REDACTOR = Redactor()


class RedactingFilter(logging.Filter):
    """Renders message and traceback to text and scrubs them before any formatter sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = REDACTOR.redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info))
            record.exc_info = None
        if record.exc_text:
            record.exc_text = REDACTOR.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = REDACTOR.redact(record.stack_info)
        for key, value in vars(record).items():
            if key in _STANDARD_ATTRS:
                continue
            if isinstance(value, str):
                setattr(record, key, REDACTOR.redact(value))
            elif isinstance(value, list):
                setattr(record, key, [REDACTOR.redact(v) if isinstance(v, str) else v
                                      for v in value])
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record; extras passed with ``extra=`` become fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if has_request_context() and "request_id" in g:
            entry["request_id"] = g.request_id
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str, ensure_ascii=False)


class StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (pytest swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def json_handler() -> logging.Handler:
    handler = StdoutHandler()
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    return handler


def configure_logging(level: str) -> None:
    """Route every logger through one redacting JSON handler on stdout (idempotent)."""
    root = logging.getLogger()
    # gunicorn.conf.py may have installed it already (dictConfig renames handlers).
    if not any(isinstance(h, StdoutHandler) for h in root.handlers):
        root.addHandler(json_handler())
    root.setLevel(level)
    # Werkzeug's development-server access log would duplicate ours; stripe-python
    # logs every request URL (with query parameters) at INFO.
    for noisy in ("werkzeug", "stripe"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_to_request_line(field: str, value: str) -> bool:
    """Append ``value`` to the list ``field`` on this request's log line (redacted as
    the message is).

    False outside a request (the worker, the CLI): the caller logs a line of its own.
    """
    if not has_request_context():
        return False
    g.setdefault("log_fields", {}).setdefault(field, []).append(value)
    return True


def _request_id() -> str:
    supplied = request.headers.get(REQUEST_ID_HEADER, "")
    if _SANE_REQUEST_ID.fullmatch(supplied):
        return supplied
    return str(uuid.uuid4())


def _before_request() -> None:
    g.request_started = time.perf_counter()
    g.request_id = _request_id()


def _after_request(response: Response) -> Response:
    from . import metrics

    started = g.get("request_started")
    duration = time.perf_counter() - started if started is not None else 0.0
    endpoint = request.endpoint or "unmatched"
    status = response.status_code

    metrics.REQUESTS.labels(endpoint, request.method, str(status)).inc()
    metrics.REQUEST_LATENCY.labels(endpoint).observe(duration)

    response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
    if current_app.config.get("APP_EXPOSE_RELEASE_HEADER"):
        response.headers["X-Release"] = current_app.config["APP_VERSION"]

    # Unhandled exceptions are logged at ERROR (with traceback) by Flask itself;
    # a 503 from a readiness probe during an outage is not worth an ERROR per probe.
    level = logging.WARNING if status >= 500 else logging.INFO
    route = request.url_rule.rule if request.url_rule else None
    fields = {
        "method": request.method,
        "route": route,
        "path": route or request.path,
        "status": status,
        "duration_ms": round(duration * 1000, 2),
        "remote_addr": request.remote_addr,
        "user_agent": request.user_agent.string[:200],
    }
    fields.update(g.pop("log_fields", {}))
    log.log(level, "%s %s %s", request.method, route or request.path, status, extra=fields)
    return response


def init_app(app: Flask) -> None:
    from . import metrics

    values: list[str] = []
    for name in settings.SECRET_NAMES:
        value = app.config.get(name) or ""
        # Lists of secrets (key fallbacks, webhook secrets) are redacted one by one.
        values.extend(value if isinstance(value, tuple) else [str(value)])
    REDACTOR.add_secrets(values)
    configure_logging(app.config["LOG_LEVEL"])
    app.before_request(_before_request)
    app.after_request(_after_request)
    app.register_blueprint(metrics.bp)
