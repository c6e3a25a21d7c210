"""Error pages: HTML for people, JSON for /api/ and fetch() callers."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, make_response, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, InternalServerError

log = logging.getLogger(__name__)

TITLES = {
    400: "Bad request",
    402: "Payment failed",
    403: "Not allowed",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    410: "Gone",
    413: "Too large",
    429: "Too many attempts",
    500: "Something went wrong",
    502: "Payment service unavailable",
    503: "Temporarily unavailable",
}


def wants_json() -> bool:
    return (
        request.path.startswith("/api/")
        or request.is_json
        or request.accept_mimetypes.best == "application/json"
    )


def error_response(code: int, message: str) -> tuple[Response | str, int]:
    if wants_json():
        return jsonify(error=message), code
    title = TITLES.get(code, "Error")
    return render_template("error.html", code=code, title=title, message=message), code


def _http_error(exc: HTTPException) -> Response | HTTPException:
    if exc.code is None or exc.code < 400:
        return exc
    response = make_response(
        error_response(exc.code, exc.description or TITLES.get(exc.code, "Error")))
    # Keep what the exception says beyond its body: Allow (405), Retry-After (429).
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _csrf_error(exc: CSRFError) -> tuple[Response | str, int]:
    return error_response(
        400, "This form has expired or was not sent by this site. Reload the page and try again."
    )


def _server_error(exc: InternalServerError) -> tuple[Response | str, int]:
    return error_response(500, "Something went wrong on our side. Please try again in a moment.")


def init_app(app: Flask) -> None:
    app.register_error_handler(CSRFError, _csrf_error)
    app.register_error_handler(InternalServerError, _server_error)
    app.register_error_handler(HTTPException, _http_error)
