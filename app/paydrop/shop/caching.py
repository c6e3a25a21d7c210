"""Which responses a shared cache (nginx's page cache) may keep and hand to others.

A view opts in with ``@shareable``; the answer is then marked
``public, max-age=0, s-maxage=N, stale-while-revalidate=N`` only if nothing in
it can belong to one visitor, checked here after the view ran:

* a GET or HEAD answered 200;
* the request carried no server-side session cookie (logged-in visitors and
  guests with orders have one; their pages name them);
* the session was not changed (no flash message, no log-in, no new CSRF
  token, hence no Set-Cookie from the session);
* no CSRF token was rendered into the page (a token belongs to one visitor's
  signed cookie);
* no other Set-Cookie.

Every other response that has not set its own Cache-Control (static files,
downloads and health checks do) gets ``private, no-store``. ``max-age=0``
keeps browsers from reusing a shared page without asking (a visitor who just
logged in must not see the page from before); ``s-maxage`` is what nginx keeps
it for, and ``stale-while-revalidate`` lets nginx answer from the expired copy
for that long while one request fetches the new one. ``Vary: Cookie`` says the
page depends on cookies. PUBLIC_PAGE_CACHE_SECONDS=0 marks nothing shareable.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import Response, current_app, g, request, session

_SHAREABLE = "paydrop_shareable"
# Where Flask-WTF keeps the token it rendered for this request.
_CSRF_RENDERED = "csrf_token"
PRIVATE = "private, no-store"

View = TypeVar("View", bound=Callable[..., Any])


def shareable(view: View) -> View:
    """The view's answer may be shared, if this request's checks allow it."""

    @wraps(view)
    def marked(*args: Any, **kwargs: Any) -> Any:
        g.setdefault(_SHAREABLE, True)
        return view(*args, **kwargs)

    return marked  # type: ignore[return-value]


def _may_share(response: Response) -> bool:
    return bool(
        g.get(_SHAREABLE)
        and current_app.config["PUBLIC_PAGE_CACHE_SECONDS"] > 0
        and request.method in ("GET", "HEAD")
        and response.status_code == 200
        and current_app.config["SESSION_COOKIE_NAME"] not in request.cookies
        and not getattr(session, "modified", True)
        and _CSRF_RENDERED not in g
        and "Set-Cookie" not in response.headers
    )


def mark_response(response: Response) -> Response:
    if _may_share(response):
        seconds = current_app.config["PUBLIC_PAGE_CACHE_SECONDS"]
        response.headers["Cache-Control"] = (
            f"public, max-age=0, s-maxage={seconds}, stale-while-revalidate={seconds}")
        response.vary.add("Cookie")
    elif "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = PRIVATE
    return response
