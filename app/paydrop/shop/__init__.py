"""The shop: catalog, accounts, checkout, Stripe webhooks, downloads.

``init_app`` wires it into the app built by ``paydrop.create_app``: server-side
sessions, CSRF protection on every form (the webhook is exempt: Stripe signs
it), which answers a shared cache may keep (``caching``), one blueprint per
feature, error pages and the operator commands.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from flask import Flask, abort, current_app, request
from flask_wtf.csrf import CSRFProtect

from . import (
    accounts,
    caching,
    catalog,
    checkout,
    cli,
    downloads,
    errors,
    ratelimit,
    sessions,
    storage,
    stripe_client,
    webhooks,
)
from .money import format_money

csrf = CSRFProtect()


def init_app(app: Flask) -> None:
    app.config.update(
        SESSION_COOKIE_NAME="paydrop_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=app.config["SESSION_TTL_SECONDS"]),
        # The raw token lives in the session (or, for visitors, the signed CSRF
        # cookie, which expires); the form's copy is signed with every accepted key.
        WTF_CSRF_TIME_LIMIT=None,
        WTF_CSRF_SECRET_KEY=[*app.config["SECRET_KEY_FALLBACKS"], app.config["SECRET_KEY"]],
    )
    app.session_interface = sessions.RedisSessionInterface()
    csrf.init_app(app)
    csrf.exempt(webhooks.bp)

    stripe_client.init_app(app)
    storage.init_app(app)
    ratelimit.init_app(app)

    app.before_request(_refuse_control_characters)
    app.after_request(caching.mark_response)
    for blueprint in (catalog.bp, accounts.bp, checkout.bp, downloads.bp, webhooks.bp):
        app.register_blueprint(blueprint)
    errors.init_app(app)
    cli.init_app(app)

    app.add_template_filter(format_money, "money")
    app.add_template_filter(_file_size, "filesize")
    app.add_template_global(downloads.download_path, "download_path")
    app.context_processor(_template_context)


# C0 controls and DEL, except tab, line feed and carriage return (text areas).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _refuse_control_characters() -> None:
    """NUL or another control character in any field is a 400, before any view
    (PostgreSQL refuses NUL in text, which would otherwise surface as a 500).
    The Stripe webhook is exempt: its raw body is verified, never parsed here."""
    if request.blueprint == "webhooks":
        return
    fields = [*request.args.items(multi=True)]
    if request.method in ("POST", "PUT", "PATCH"):
        fields += request.form.items(multi=True)
    values = [text for pair in fields for text in pair]
    if request.is_json:
        values += _strings(request.get_json(silent=True))
    if any(_CONTROL.search(value) for value in values):
        abort(400, "A field contains characters that are not allowed (control characters).")


def _file_size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    value = size / 1024
    for unit in ("KB", "MB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _template_context() -> dict[str, Any]:
    config = current_app.config
    return {
        "current_user": accounts.current_user(),
        "stripe_js_url": config["STRIPE_JS_URL"],
        "stripe_publishable_key": config["STRIPE_PUBLISHABLE_KEY"],
    }
