"""Fixed-window throttles in Redis, per client IP and per account.

``LOGIN_RATE_LIMIT`` ("attempts/seconds", e.g. "10/300") covers log-in and
registration; ``CHECKOUT_RATE_LIMIT`` covers starting a card payment (card
testing). Exceeding a limit raises ``Throttled``, which the error handlers
turn into a 429 page with Retry-After. If Redis cannot count (down, full,
erroring) the throttle fails closed: ``ThrottleUnavailable``, a 503 page with
Retry-After, because a limiter that lets everything through when its store is
full is exactly what a password-guessing or card-testing run wants.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass

import redis
from flask import Flask, current_app, request
from werkzeug.exceptions import ServiceUnavailable, TooManyRequests

from .. import metrics
from ..redis_store import get_redis
from ..settings import SettingsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limit:
    attempts: int
    seconds: int

    @classmethod
    def parse(cls, name: str, text: str) -> Limit:
        try:
            attempts, seconds = (int(part) for part in text.split("/"))
        except ValueError:
            attempts = seconds = 0
        if attempts <= 0 or seconds <= 0:
            raise SettingsError([f"{name}: invalid value {text!r}: must be attempts/seconds, "
                                 "e.g. 10/300"])
        return cls(attempts, seconds)


class Throttled(TooManyRequests):
    description = "Too many attempts. Please wait a few minutes and try again."


class ThrottleUnavailable(ServiceUnavailable):
    description = ("This is temporarily unavailable because we cannot check for abuse right "
                   "now. Please try again in a minute.")


def client_ip() -> str:
    # remote_addr is the client's address once ProxyFix has read nginx's
    # X-Forwarded-For (see wsgi.py); without a proxy it is the TCP peer.
    return request.remote_addr or "unknown"


def hit(scope: str, *identities: tuple[str, str]) -> None:
    """Count one attempt for each (kind, value) identity; raise Throttled when any is over."""
    limit: Limit = current_app.extensions["paydrop.ratelimits"][scope]
    now = time.time()
    window = int(now // limit.seconds)
    keys = [
        f"paydrop:ratelimit:{scope}:{kind}:"
        f"{hashlib.sha256(value.lower().encode()).hexdigest()[:32]}:{window}"
        for kind, value in identities
    ]
    try:
        pipe = get_redis().pipeline()
        for key in keys:
            pipe.incr(key)
            pipe.expire(key, limit.seconds * 2)
        counts = pipe.execute()[0::2]
    except redis.RedisError as exc:
        metrics.DEPENDENCY_ERRORS.labels(dependency="redis").inc()
        log.warning("rate limiter unavailable, refusing %s: %s", scope, exc)
        raise ThrottleUnavailable(retry_after=60) from exc
    if any(count > limit.attempts for count in counts):
        raise Throttled(retry_after=max(1, math.ceil((window + 1) * limit.seconds - now)))


def init_app(app: Flask) -> None:
    app.extensions["paydrop.ratelimits"] = {
        "login": Limit.parse("LOGIN_RATE_LIMIT", app.config["LOGIN_RATE_LIMIT"]),
        "checkout": Limit.parse("CHECKOUT_RATE_LIMIT", app.config["CHECKOUT_RATE_LIMIT"]),
    }
