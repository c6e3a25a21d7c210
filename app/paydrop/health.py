"""Health endpoints: /api/health (seed shape), /api/health/live, /api/health/ready."""

from __future__ import annotations

from flask import Blueprint, jsonify

bp = Blueprint("health", __name__, url_prefix="/api/health")


@bp.get("/live")
def live():  # type: ignore[no-untyped-def]
    return jsonify(status="ok")
