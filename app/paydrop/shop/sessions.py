"""Server-side sessions in Redis.

The cookie holds only a random 256-bit id; Redis holds the data under the id's
SHA-256 (so a leaked Redis dump holds no usable cookie values) with a sliding
TTL: SESSION_TTL_SECONDS once someone has logged in (or, as a guest, placed an
order), ANONYMOUS_SESSION_TTL_SECONDS otherwise. Every form page writes a
session for its CSRF token, so cookieless GETs (crawlers, floods) must not
each pin a key in Redis for two weeks. ``rotate()`` gives the session a new id, for log in
and log out (no session fixation). When Redis is down pages still render with
an empty session; anything that needs one (forms, checkout) fails its CSRF check.
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
from werkzeug.datastructures import CallbackDict

from .. import metrics
from ..redis_store import get_redis

log = logging.getLogger(__name__)
_PREFIX = "paydrop:session:"
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


class RedisSessionInterface(SessionInterface):
    def open_session(self, app: Flask, request: Request) -> RedisSession:
        sid = request.cookies.get(self.get_cookie_name(app))
        if not sid or len(sid) > 100:
            return RedisSession()
        try:
            raw = get_redis().get(_redis_key(sid))
        except redis.RedisError as exc:
            metrics.DEPENDENCY_ERRORS.labels(dependency="redis").inc()
            log.warning("session store unavailable: %s", exc)
            return RedisSession(available=False)
        if raw is None:
            return RedisSession()
        try:
            data = _serializer.loads(raw.decode())
        except ValueError:
            return RedisSession()
        return RedisSession(data, sid=sid)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        assert isinstance(session, RedisSession)  # noqa: S101 - set by open_session
        if not session.available:
            return
        name = self.get_cookie_name(app)
        domain = self.get_cookie_domain(app)
        path = self.get_cookie_path(app)
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
                return
            new = session.sid is None
            sid = session.sid = session.sid or secrets.token_urlsafe(32)
            if new or session.modified:
                store.set(_redis_key(sid), _serializer.dumps(dict(session)), ex=ttl)
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
