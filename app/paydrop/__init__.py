"""Paydrop: a Flask shop that sells digital goods through Stripe."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from . import settings

__version__ = "0.1.0"


def create_app(environ: Mapping[str, str] | None = None, **overrides: Any) -> Flask:
    """Application factory.

    ``environ`` defaults to ``os.environ``; tests pass their own mapping.
    Raises ``settings.SettingsError`` listing every bad setting.
    """
    config = settings.load(os.environ if environ is None else environ)
    config.update(overrides)
    if not config.get("APP_VERSION"):
        config["APP_VERSION"] = __version__

    # static_folder=None: static_files serves /static/ under content-hashed names.
    app = Flask(__name__, static_folder=None)
    app.config.update(config)
    if config["TRUSTED_PROXY_COUNT"]:
        # Behind the load balancer the client's address and scheme come from
        # the proxy's headers; rate limits per IP depend on it.
        proxies = config["TRUSTED_PROXY_COUNT"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=0)  # type: ignore[method-assign]

    # Extensions first, then observability (so it wraps every blueprint),
    # then the features.
    from . import db, redis_store

    db.init_app(app)
    redis_store.init_app(app)

    from . import observability

    observability.init_app(app)

    from . import health, migrate, static_files

    static_files.init_app(app)
    app.register_blueprint(health.bp)
    migrate.init_app(app)

    from . import shop

    shop.init_app(app)
    return app
