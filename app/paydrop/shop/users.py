"""SQL for the users aggregate. E-mail addresses are stored lower-cased."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg2.errors
from psycopg2 import sql


@dataclass(frozen=True)
class User:
    id: int
    email: str
    password_hash: str
    email_verified: bool


_COLUMNS = sql.SQL("id, email, password_hash, email_verified_at IS NOT NULL AS email_verified")


def _user(row: dict[str, Any] | None) -> User | None:
    return User(**row) if row else None


def create(cur: Any, email: str, password_hash: str,
           replace_unverified_after: int | None = None) -> User | None:
    """The new user, or None when the address is taken.

    With ``replace_unverified_after`` (seconds), an account for the address that
    was never verified and is older than that is replaced: whoever registered it
    never proved the address, so it cannot keep it from its owner. Its orders
    go back to being guest orders of the address (they join an account again
    once someone proves the address).
    """
    if replace_unverified_after is not None:
        _delete_unverified(cur, replace_unverified_after, email=email.lower())
    cur.execute("SAVEPOINT create_user")
    try:
        cur.execute(
            sql.SQL("INSERT INTO users (email, password_hash) VALUES (%s, %s) RETURNING {}").format(
                _COLUMNS),
            (email.lower(), password_hash),
        )
    except psycopg2.errors.UniqueViolation:
        cur.execute("ROLLBACK TO SAVEPOINT create_user")
        return None
    return _user(cur.fetchone())


def get_by_email(cur: Any, email: str) -> User | None:
    cur.execute(sql.SQL("SELECT {} FROM users WHERE email = %s").format(_COLUMNS),
                (email.lower(),))
    return _user(cur.fetchone())


def get(cur: Any, user_id: int) -> User | None:
    cur.execute(sql.SQL("SELECT {} FROM users WHERE id = %s").format(_COLUMNS), (user_id,))
    return _user(cur.fetchone())


def set_password_hash(cur: Any, user_id: int, password_hash: str) -> None:
    cur.execute("UPDATE users SET password_hash = %s WHERE id = %s", (password_hash, user_id))


def replace_password_hash(cur: Any, user_id: int, old_hash: str, new_hash: str) -> bool:
    """Set a new hash only if the old one is still current; True when it changed."""
    cur.execute(
        "UPDATE users SET password_hash = %s WHERE id = %s AND password_hash = %s RETURNING id",
        (new_hash, user_id, old_hash),
    )
    return cur.fetchone() is not None


def mark_email_verified(cur: Any, user_id: int, email: str) -> bool:
    """True when the address still belongs to the user (and is now verified)."""
    cur.execute(
        """UPDATE users SET email_verified_at = coalesce(email_verified_at, now())
           WHERE id = %s AND email = %s RETURNING id""",
        (user_id, email.lower()),
    )
    return cur.fetchone() is not None


def verified_user_id(cur: Any, email: str) -> int | None:
    cur.execute(
        "SELECT id FROM users WHERE email = %s AND email_verified_at IS NOT NULL",
        (email.lower(),),
    )
    row = cur.fetchone()
    return int(row["id"]) if row else None


def _delete_unverified(cur: Any, older_than_seconds: int, email: str | None = None) -> int:
    where: sql.Composable = sql.SQL("""email_verified_at IS NULL
        AND created_at < now() - make_interval(secs => %s)""")
    params: list[Any] = [older_than_seconds]
    if email is not None:
        where = sql.SQL("{} AND email = %s").format(where)
        params.append(email)
    cur.execute(sql.SQL("""UPDATE orders SET user_id = NULL, updated_at = now()
        WHERE user_id IN (SELECT id FROM users WHERE {})""").format(where), params)
    cur.execute(sql.SQL("DELETE FROM users WHERE {}").format(where), params)
    return int(cur.rowcount)


def expire_unverified(cur: Any, older_than_seconds: int) -> int:
    """Delete accounts never verified within ``older_than_seconds``; how many."""
    return _delete_unverified(cur, older_than_seconds)
