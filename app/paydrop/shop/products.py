"""SQL for the products aggregate. Every function takes a cursor from
``get_db().transaction()`` or ``get_db().read()``."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from psycopg2 import sql

SLUG = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")

# Composed with psycopg2.sql (not string formatting): every piece is a constant.
_COLUMNS = sql.SQL("""id, slug, title, description, price_amount, currency, asset_key,
    asset_filename, asset_content_type, asset_size, active""")


@dataclass(frozen=True)
class Product:
    id: int
    slug: str
    title: str
    description: str
    price_amount: int
    currency: str
    asset_key: str
    asset_filename: str
    asset_content_type: str
    asset_size: int
    active: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Product:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


def list_active(cur: Any) -> list[Product]:
    cur.execute(sql.SQL("SELECT {} FROM products WHERE active ORDER BY title, id").format(_COLUMNS))
    return [Product.from_row(row) for row in cur.fetchall()]


def list_all(cur: Any) -> list[Product]:
    cur.execute(sql.SQL("SELECT {} FROM products ORDER BY slug").format(_COLUMNS))
    return [Product.from_row(row) for row in cur.fetchall()]


def get_by_slug(cur: Any, slug: str, *, active_only: bool = True) -> Product | None:
    cur.execute(
        sql.SQL("SELECT {} FROM products WHERE slug = %s AND (active OR NOT %s)").format(_COLUMNS),
        (slug, active_only),
    )
    row = cur.fetchone()
    return Product.from_row(row) if row else None


def create(
    cur: Any,
    *,
    slug: str,
    title: str,
    description: str,
    price_amount: int,
    currency: str,
    asset_key: str,
    asset_filename: str,
    asset_content_type: str,
    asset_size: int,
) -> Product:
    cur.execute(
        sql.SQL("""INSERT INTO products (slug, title, description, price_amount, currency,
                asset_key, asset_filename, asset_content_type, asset_size)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
            RETURNING {}""").format(_COLUMNS),
        (slug, title, description, price_amount, currency.lower(), asset_key, asset_filename,
         asset_content_type, asset_size),
    )
    return Product.from_row(cur.fetchone())


def set_active(cur: Any, slug: str, active: bool) -> Product | None:
    cur.execute(
        sql.SQL("""UPDATE products SET active = %s, updated_at = now() WHERE slug = %s
            RETURNING {}""").format(_COLUMNS),
        (active, slug),
    )
    row = cur.fetchone()
    return Product.from_row(row) if row else None
