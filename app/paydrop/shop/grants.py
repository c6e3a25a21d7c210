"""SQL for download grants, and the signed tokens that name them in URLs.

A token is the grant's id signed with SECRET_KEY (or a fallback key), so a forged or altered token
is rejected before the database is asked. The row holds what can change: the
expiry, the limit, the counter and the revocation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from itsdangerous import BadSignature
from psycopg2 import sql

from . import orders, signing

_SALT = "paydrop.download"


@dataclass(frozen=True)
class Grant:
    id: str
    order_id: str
    expires_at: datetime
    max_downloads: int
    download_count: int
    revoked_at: datetime | None

    @property
    def remaining(self) -> int:
        return self.max_downloads - self.download_count


@dataclass(frozen=True)
class Asset:
    """What a successful download sends."""

    key: str
    filename: str
    content_type: str
    size: int


COLUMNS = sql.SQL("""id::text AS id, order_id::text AS order_id, expires_at, max_downloads,
    download_count, revoked_at""")


def make_token(grant_id: str) -> str:
    return signing.serializer(_SALT).dumps(grant_id)


def grant_id_from_token(token: str) -> str | None:
    """The grant id, or None for a token this app did not sign."""
    try:
        grant_id = signing.serializer(_SALT).loads(token)
    except BadSignature:
        return None
    return grant_id if orders.is_uuid(grant_id) else None


def create(cur: Any, order_id: str, ttl_seconds: int, max_downloads: int) -> Grant:
    cur.execute(
        sql.SQL("""INSERT INTO download_grants (order_id, expires_at, max_downloads)
            VALUES (%s, now() + make_interval(secs => %s), %s) RETURNING {}""").format(COLUMNS),
        (order_id, ttl_seconds, max_downloads),
    )
    return Grant(**cur.fetchone())


def revoke_for_order(cur: Any, order_id: str) -> int:
    cur.execute(
        "UPDATE download_grants SET revoked_at = now() WHERE order_id = %s AND revoked_at IS NULL",
        (order_id,),
    )
    return int(cur.rowcount)


def count_for_order(cur: Any, order_id: str) -> int:
    cur.execute("SELECT count(*) AS n FROM download_grants WHERE order_id = %s", (order_id,))
    return int(cur.fetchone()["n"])


def usable_for_order(cur: Any, order_id: str) -> Grant | None:
    """The newest grant that still works, if any."""
    cur.execute(
        sql.SQL("""SELECT {} FROM download_grants
            WHERE order_id = %s AND revoked_at IS NULL AND expires_at > now()
              AND download_count < max_downloads
            ORDER BY created_at DESC LIMIT 1""").format(COLUMNS),
        (order_id,),
    )
    row = cur.fetchone()
    return Grant(**row) if row else None


def consume(cur: Any, grant_id: str) -> Asset | None:
    """Count one download and return the asset, or None when the grant may not be used.

    One UPDATE checks everything (order paid, not revoked, not expired, under the
    limit), so concurrent downloads can never exceed the limit.
    """
    cur.execute(
        """UPDATE download_grants g SET download_count = g.download_count + 1
           FROM orders o JOIN products p ON p.id = o.product_id
           WHERE g.id = %s AND o.id = g.order_id AND o.status = 'paid'
             AND g.revoked_at IS NULL AND g.expires_at > now()
             AND g.download_count < g.max_downloads
           RETURNING p.asset_key AS key, p.asset_filename AS filename,
                     p.asset_content_type AS content_type, p.asset_size AS size""",
        (grant_id,),
    )
    row = cur.fetchone()
    return Asset(**row) if row else None


def refusal_reason(cur: Any, grant_id: str) -> str:
    """Why ``consume`` said no: unknown, superseded, revoked, expired or exhausted.

    A paid order's grants are revoked only when "My orders" issues a newer link,
    so a revoked grant of a still-paid order was superseded, not refunded.
    """
    cur.execute(
        """SELECT g.revoked_at IS NOT NULL AND o.status = 'paid' AS superseded,
                  g.revoked_at IS NOT NULL OR o.status <> 'paid' AS revoked,
                  g.expires_at <= now() AS expired,
                  g.download_count >= g.max_downloads AS exhausted
           FROM download_grants g JOIN orders o ON o.id = g.order_id WHERE g.id = %s""",
        (grant_id,),
    )
    row = cur.fetchone()
    if row is None:
        return "unknown"
    for reason in ("superseded", "revoked", "expired", "exhausted"):
        if row[reason]:
            return reason
    return "unknown"
