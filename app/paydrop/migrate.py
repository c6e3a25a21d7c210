"""Versioned SQL migrations (stub: interface only, implementation follows)."""

from __future__ import annotations

from flask import Flask


def expected_version() -> int:
    return 0


def current(database_url: str) -> int:
    raise NotImplementedError


def upgrade(database_url: str) -> list[str]:
    raise NotImplementedError


def init_app(app: Flask) -> None:
    return None
