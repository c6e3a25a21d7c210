"""Static files under content-hashed names, so nginx can cache them for a year.

``url_for('static', filename='js/checkout.js')`` gives
``/static/js/checkout.3f2a1b9c0d.js``: the name changes whenever the content
does, so a new release never meets a stale copy in a browser or a CDN, and the
old release's files keep their own names during a blue-green switch.

The app serves these URLs itself; in production nginx caches each file on the
load balancer the first time it is asked for, and serves it from there from
then on, every release's names side by side (roles/nginx/README.md, "Static
files").
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from flask import Flask, abort, send_from_directory
from werkzeug.wrappers import Response

STATIC_DIR = Path(__file__).parent / "static"
HASH_LENGTH = 10
LONG_CACHE = "public, max-age=31536000, immutable"


def hashed_name(relative: str, content: bytes) -> str:
    digest = hashlib.sha256(content).hexdigest()[:HASH_LENGTH]
    path = Path(relative)
    return str(path.with_name(f"{path.stem}.{digest}{path.suffix}"))


def manifest(directory: Path = STATIC_DIR) -> dict[str, str]:
    """{"js/checkout.js": "js/checkout.<hash>.js", ...} for every file under ``directory``."""
    return {
        str(path.relative_to(directory)): hashed_name(str(path.relative_to(directory)),
                                                      path.read_bytes())
        for path in sorted(directory.rglob("*")) if path.is_file()
    }


def init_app(app: Flask) -> None:
    """Replace Flask's static route with one that knows the hashed names."""
    names = manifest(STATIC_DIR)
    originals = {hashed: original for original, hashed in names.items()}

    def hashed_url(endpoint: str, values: dict[str, Any]) -> None:
        if endpoint == "static" and values.get("filename") in names:
            values["filename"] = names[values["filename"]]

    def static(filename: str) -> Response:
        original = originals.get(filename)
        if original is None:
            abort(404)
        response = send_from_directory(STATIC_DIR, original, max_age=31536000)
        response.headers["Cache-Control"] = LONG_CACHE
        return response

    app.url_defaults(hashed_url)
    app.add_url_rule("/static/<path:filename>", endpoint="static", view_func=static)
