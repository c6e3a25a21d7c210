"""Sessions: a signed CSRF cookie for visitors, server-side sessions in Redis after that.

A visitor who only reads pages gets no server-side state at all: the one thing
their session holds, the CSRF token's raw value, travels in the signed
``paydrop_csrf`` cookie (double submit: the form's token must match the
cookie's, and only this site can sign either). So a flood of cookieless GETs
costs Redis nothing, and anonymous forms keep working while Redis is down.

As soon as a request puts anything else into the session (logging in,
registering, placing an order), the session moves to Redis: the cookie then
holds only a random 256-bit id, and Redis holds the data under the id's
SHA-256 (so a leaked Redis dump holds no usable cookie values) with a sliding
TTL: SESSION_TTL_SECONDS once someone has logged in (or, as a guest, placed an
order), ANONYMOUS_SESSION_TTL_SECONDS otherwise. ``rotate()`` gives the
session a new id, for log in and log out (no session fixation).

Memory budget: only POSTs that passed the CSRF check and a rate limit (log-in,
registration, checkout) create Redis sessions, each at most MAX_SESSION_BYTES
(a larger one is refused and logged, never stored), so sessions need at most
(allowed POSTs per TTL) x MAX_SESSION_BYTES of Redis. When Redis is down pages
still render with an empty session; forms that need a logged-in session fail.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from typing import Any

import redis
from flask import Flask, Request, Response, session
from flask.json.tag import TaggedJSONSerializer
from flask.sessions import SessionInterface, SessionMixin
from itsdangerous import BadSignature
from werkzeug.datastructures import CallbackDict

from .. import metrics
from ..redis_store import get_redis
from . import signing

log = logging.getLogger(__name__)
_PREFIX = "paydrop:session:"
CSRF_COOKIE = "paydrop_csrf"
_CSRF_SALT = "paydrop.csrf-cookie"
# Flask-WTF keeps the raw token under this session key.
_CSRF_KEY = "csrf_token"
MAX_SESSION_BYTES = 8192
_serializer = TaggedJSONSerializer()


class RedisSession(CallbackDict[str, Any], SessionMixin):
    def __init__(self, initial: dict[str, Any] | None = None, sid: str | None = None,
                 available: bool = True) -> None:
        def on_update(self: RedisSession) -> None:
            self.modified = True
            self.accessed = True

        super().__init__(initial, on_update)
        self.sid = sid
        self.available = available
        self.modified = False
        self.accessed = False
        self.rotate_requested = False

    def __getitem__(self, key: str) -> Any:
        self.accessed = True
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.accessed = True
        return super().get(key, default)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self.accessed = True
        return super().setdefault(key, default)


def rotate() -> None:
    """Issue a new session id at the end of this request, keeping the data."""
    current: Any = session
    current.rotate_requested = True
    current.modified = True


def _redis_key(sid: str) -> str:
    return _PREFIX + hashlib.sha256(sid.encode()).hexdigest()


def _ttl(app: Flask, session: RedisSession) -> int:
    # dict.get, not session.get: looking must not mark the session accessed.
    if dict.get(session, "user_id") or dict.get(session, "orders"):
        ttl: int = app.config["SESSION_TTL_SECONDS"]
    else:
        ttl = app.config["ANONYMOUS_SESSION_TTL_SECONDS"]
    return ttl


def _csrf_only(session: RedisSession) -> bool:
    return set(session) <= {_CSRF_KEY}


def _csrf_from_cookie(app: Flask, request: Request) -> RedisSession:
    """A session holding only the CSRF token of the signed cookie (or nothing)."""
    value = request.cookies.get(CSRF_COOKIE)
    if not value or len(value) > 300:
        return RedisSession()
    try:
        token = signing.timed_serializer(_CSRF_SALT).loads(
            value, max_age=app.config["ANONYMOUS_SESSION_TTL_SECONDS"])
    except BadSignature:
        return RedisSession()
    return RedisSession({_CSRF_KEY: token}) if isinstance(token, str) else RedisSession()


class RedisSessionInterface(SessionInterface):
    def open_session(self, app: Flask, request: Request) -> RedisSession:
        sid = request.cookies.get(self.get_cookie_name(app))
        if not sid or len(sid) > 100:
            return _csrf_from_cookie(app, request)
        try:
            raw = get_redis().get(_redis_key(sid))
        except redis.RedisError as exc:
            metrics.DEPENDENCY_ERRORS.labels(dependency="redis").inc()
            log.warning("session store unavailable: %s", exc)
            return RedisSession(available=False)
        if raw is None:
            return _csrf_from_cookie(app, request)
        try:
            data = _serializer.loads(raw.decode())
        except ValueError:
            return _csrf_from_cookie(app, request)
        return RedisSession(data, sid=sid)

    def _save_csrf_cookie(self, app: Flask, session: RedisSession, response: Response) -> None:
        if session.modified:
            response.set_cookie(
                CSRF_COOKIE,
                signing.timed_serializer(_CSRF_SALT).dumps(session[_CSRF_KEY]),
                max_age=app.config["ANONYMOUS_SESSION_TTL_SECONDS"],
                domain=self.get_cookie_domain(app),
                path=self.get_cookie_path(app),
                secure=self.get_cookie_secure(app),
                httponly=True,
                samesite=self.get_cookie_samesite(app),
            )
        response.vary.add("Cookie")

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        assert isinstance(session, RedisSession)  # noqa: S101 - set by open_session
        if not session.available:
            return
        name = self.get_cookie_name(app)
        domain = self.get_cookie_domain(app)
        path = self.get_cookie_path(app)
        if session and session.sid is None and not session.rotate_requested \
                and _csrf_only(session):
            # A visitor: no server-side state, only the signed CSRF cookie.
            self._save_csrf_cookie(app, session, response)
            return
        ttl = _ttl(app, session)
        store = get_redis()
        try:
            if session.rotate_requested and session.sid:
                store.delete(_redis_key(session.sid))
                session.sid = None
            if not session:
                if session.sid:
                    store.delete(_redis_key(session.sid))
                    response.delete_cookie(name, domain=domain, path=path)
                elif session.rotate_requested:
                    response.delete_cookie(name, domain=domain, path=path)
                if session.modified:
                    response.delete_cookie(CSRF_COOKIE, domain=domain, path=path)
                return
            new = session.sid is None
            data = _serializer.dumps(dict(session)) if new or session.modified else ""
            if len(data) > MAX_SESSION_BYTES:
                log.error("refusing to store a session of %d bytes (limit %d)", len(data),
                          MAX_SESSION_BYTES)
                return
            sid = session.sid = session.sid or secrets.token_urlsafe(32)
            if data:
                store.set(_redis_key(sid), data, ex=ttl)
            else:
                store.expire(_redis_key(sid), ttl)
        except redis.RedisError as exc:
            metrics.DEPENDENCY_ERRORS.labels(dependency="redis").inc()
            log.warning("could not save the session: %s", exc)
            return
        if session.accessed:
            response.vary.add("Cookie")
        response.set_cookie(
            name,
            sid,
            max_age=ttl,
            domain=domain,
            path=path,
            secure=self.get_cookie_secure(app),
            httponly=self.get_cookie_httponly(app),
            samesite=self.get_cookie_samesite(app),
        )
