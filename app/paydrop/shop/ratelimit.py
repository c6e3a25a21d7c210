"""Fixed-window throttles in Redis, per client IP and per account.

``LOGIN_RATE_LIMIT`` ("attempts/seconds", e.g. "10/300") counts every log-in
and registration attempt per client IP. ``LOGIN_ACCOUNT_RATE_LIMIT`` counts
only *failed passwords* per account, and only from clients the IP limit still
lets through: so one stranger can add at most LOGIN_RATE_LIMIT failures per
window to someone else's account, and the owner logging in never counts.
``CHECKOUT_RATE_LIMIT`` covers starting a card payment (what it does and does
not stop: app/README.md, "Abuse limits"); ``LINK_REISSUE_RATE_LIMIT`` new
download links per account; ``PASSWORD_RESET_RATE_LIMIT`` reset mails per address.

A client IP is the IPv4 address, or the IPv6 /64 it sits in: one IPv6 host
usually holds a whole /64 and could otherwise take a fresh address per request.
Exceeding a limit raises ``Throttled``, which the error handlers
turn into a 429 page with Retry-After. If Redis cannot count (down, full,
erroring) the throttle fails closed: ``ThrottleUnavailable``, a 503 page with
Retry-After, because a limiter that lets everything through when its store is
full is exactly what a password-guessing or card-testing run wants.
"""

from __future__ import annotations

import hashlib
import ipaddress
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
    """The client as the limits see it: an IPv4 address or an IPv6 /64 network."""
    # remote_addr is the client's address once ProxyFix has read nginx's
    # X-Forwarded-For (see wsgi.py); without a proxy it is the TCP peer.
    address = request.remote_addr or "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _window(scope: str) -> tuple[Limit, float, int]:
    limit: Limit = current_app.extensions["paydrop.ratelimits"][scope]
    now = time.time()
    return limit, now, int(now // limit.seconds)


def _key(scope: str, kind: str, value: str, window: int) -> str:
    return (f"paydrop:ratelimit:{scope}:{kind}:"
            f"{hashlib.sha256(value.lower().encode()).hexdigest()[:32]}:{window}")


def _throttled(limit: Limit, now: float, window: int) -> Throttled:
    return Throttled(retry_after=max(1, math.ceil((window + 1) * limit.seconds - now)))


def _unavailable(scope: str, exc: redis.RedisError) -> ThrottleUnavailable:
    metrics.DEPENDENCY_ERRORS.labels(dependency="redis").inc()
    log.warning("rate limiter unavailable, refusing %s: %s", scope, exc)
    return ThrottleUnavailable(retry_after=60)


def check(scope: str, identity: tuple[str, str]) -> None:
    """Raise Throttled when ``identity`` has used up its attempts, without counting one."""
    limit, now, window = _window(scope)
    try:
        count = int(get_redis().get(_key(scope, *identity, window)) or 0)
    except redis.RedisError as exc:
        raise _unavailable(scope, exc) from exc
    if count >= limit.attempts:
        raise _throttled(limit, now, window)


def hit(scope: str, *identities: tuple[str, str]) -> None:
    """Count one attempt for each (kind, value) identity; raise Throttled when any is over."""
    limit, now, window = _window(scope)
    keys = [_key(scope, kind, value, window) for kind, value in identities]
    try:
        pipe = get_redis().pipeline()
        for key in keys:
            pipe.incr(key)
            pipe.expire(key, limit.seconds * 2)
        counts = pipe.execute()[0::2]
    except redis.RedisError as exc:
        raise _unavailable(scope, exc) from exc
    if any(count > limit.attempts for count in counts):
        raise _throttled(limit, now, window)


def init_app(app: Flask) -> None:
    app.extensions["paydrop.ratelimits"] = {
        "login": Limit.parse("LOGIN_RATE_LIMIT", app.config["LOGIN_RATE_LIMIT"]),
        "login-failures": Limit.parse("LOGIN_ACCOUNT_RATE_LIMIT",
                                      app.config["LOGIN_ACCOUNT_RATE_LIMIT"]),
        "password-reset": Limit.parse("PASSWORD_RESET_RATE_LIMIT",
                                      app.config["PASSWORD_RESET_RATE_LIMIT"]),
        "link-reissue": Limit.parse("LINK_REISSUE_RATE_LIMIT",
                                    app.config["LINK_REISSUE_RATE_LIMIT"]),
        "checkout": Limit.parse("CHECKOUT_RATE_LIMIT", app.config["CHECKOUT_RATE_LIMIT"]),
    }
