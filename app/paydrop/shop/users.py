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


def create(cur: Any, email: str, password_hash: str) -> User | None:
    """The new user, or None when the address is taken."""
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
