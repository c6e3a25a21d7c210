"""Request logging (JSON lines), request ids, metrics and the X-Release header."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    from . import metrics

    app.register_blueprint(metrics.bp)
