"""GET /downloads/<token>: check the grant, count the download, send the file.

How the bytes leave:
* DOWNLOAD_ACCEL_PREFIX empty (development, tests): the app streams them.
* local storage + prefix: ``X-Accel-Redirect: <prefix><key>`` and nginx sends
  the file from an ``internal`` location (never reachable from outside).
* S3 storage + prefix: a 302 to a presigned GET URL valid for
  PRESIGNED_URL_SECONDS, so the bytes come straight from the bucket and the
  URL is useless a minute later.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from flask import Blueprint, Response, abort, current_app, redirect, request, url_for
from werkzeug.exceptions import Forbidden, Gone, HTTPException, NotFound
from werkzeug.wrappers import Response as BaseResponse

from .. import metrics
from ..db import get_db
from . import grants
from .storage import S3Storage, StorageError, content_disposition, get_storage

log = logging.getLogger(__name__)
bp = Blueprint("downloads", __name__)

PRESIGNED_URL_SECONDS = 60


def _token(grant_id: str) -> str:
    return grants.make_token(grant_id)


def download_path(grant_id: str) -> str:
    return url_for("downloads.download", token=_token(grant_id))


def download_url(grant_id: str) -> str:
    """The absolute link, for e-mails (built from PUBLIC_URL, not the request)."""
    return f"{current_app.config['PUBLIC_URL'].rstrip('/')}/downloads/{_token(grant_id)}"


REFUSALS: dict[str, tuple[type[HTTPException], str]] = {
    "superseded": (Forbidden, "This download link was replaced by a newer link. Use the "
                              "newest link on 'My orders'."),
    "revoked": (Forbidden, "This download is no longer available: the order was refunded "
                           "or disputed."),
    "expired": (Gone, "This download link has expired. Ask for a new one on 'My orders'."),
    "exhausted": (Gone, "This download link has been used the maximum number of times. "
                        "Ask for a new one on 'My orders'."),
}


@bp.get("/downloads/<token>")
def download(token: str) -> BaseResponse:
    grant_id = grants.grant_id_from_token(token)
    if grant_id is None:
        abort(404, "This download link is not valid.")
    storage = get_storage()
    accel = current_app.config["DOWNLOAD_ACCEL_PREFIX"]
    with get_db().transaction() as cur:
        asset = grants.consume(cur, grant_id)
        if asset is None:
            error, message = REFUSALS.get(grants.refusal_reason(cur, grant_id),
                                          (NotFound, "This download link is not valid."))
            raise error(message)
        head = request.method == "HEAD"
        if head:
            # Link checkers and mail scanners do not use up downloads.
            cur.connection.rollback()
        body = None
        if not head:
            # Before the count commits: a missing file must not use up a
            # download, whoever sends the bytes (the app, or nginx after the
            # hand-off, which would answer 404 after the count was spent).
            try:
                if accel:
                    if not storage.exists(asset.key):
                        raise StorageError(f"missing object {asset.key!r}")
                else:
                    body = storage.open_stream(asset.key)
            except StorageError as exc:
                # Rolling back un-counts the download.
                log.error("asset for grant %s is missing: %s", grant_id, exc)
                metrics.DEPENDENCY_ERRORS.labels(dependency="storage").inc()
                abort(503, "The file is temporarily unavailable. Please try again later.")

    headers = {
        "Content-Disposition": content_disposition(asset.filename),
        "Cache-Control": "private, no-store",
        "X-Content-Type-Options": "nosniff",
    }
    if head:
        # Answer before any hand-off: a presigned URL or an X-Accel-Redirect
        # would give the bytes away without the download having been counted.
        answer = Response(b"", headers=headers, mimetype=asset.content_type)
        answer.content_length = asset.size
        return answer
    metrics.DOWNLOAD_BYTES.inc(asset.size)
    if accel and isinstance(storage, S3Storage):
        url = storage.presigned_url(asset.key, asset.filename, asset.content_type,
                                    PRESIGNED_URL_SECONDS)
        response = redirect(url, code=302)
        response.headers["Cache-Control"] = "private, no-store"
        return response
    if accel:
        headers["X-Accel-Redirect"] = accel + quote(asset.key)
        return Response(b"", headers=headers, mimetype=asset.content_type)
    headers["Content-Length"] = str(asset.size)
    return Response(body or b"", headers=headers, mimetype=asset.content_type,
                    direct_passthrough=True)
