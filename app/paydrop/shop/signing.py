"""Signed tokens, in one place: every signer accepts SECRET_KEY_FALLBACKS.

itsdangerous signs with the last key of the list and accepts a signature made
with any of them, so rotating SECRET_KEY (old key moved to the fallbacks) keeps
links already sent (address confirmation, downloads, password resets) and the
CSRF cookies of open pages working until they expire on their own.
"""

from __future__ import annotations

from flask import current_app
from itsdangerous import URLSafeSerializer, URLSafeTimedSerializer


def _keys() -> list[str]:
    config = current_app.config
    return [*config.get("SECRET_KEY_FALLBACKS", ()), config["SECRET_KEY"]]


def serializer(salt: str) -> URLSafeSerializer:
    return URLSafeSerializer(_keys(), salt=salt)


def timed_serializer(salt: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(_keys(), salt=salt)
