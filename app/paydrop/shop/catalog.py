"""The catalog pages, and the product cache in front of the read replica.

Product data is cached in Redis under a version number; any change to the
catalog bumps the version (``invalidate``), so every cached entry is replaced
at once and stale ones simply expire. Each app process also keeps the entries
it read under their versioned key (``_LocalEntries``): a page view then asks
Redis for the version only, one round trip instead of two, and a catalog
change (a new version, a new key) shows at once in every process, as before. Reads go through ``get_db().read()``:
the replica when configured, else (or when it is down) the primary. Prices
shown here are for display only; checkout reads the price from the primary.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import redis
from flask import Blueprint, abort, current_app, render_template, request

from .. import metrics
from ..db import get_db
from ..redis_store import get_redis
from . import products
from .caching import shareable
from .products import Product

log = logging.getLogger(__name__)
bp = Blueprint("catalog", __name__)

_VERSION_KEY = "paydrop:catalog:version"
_LOCAL = "paydrop.catalog.local"


class _LocalEntries:
    """This process's copy of the entries it read from Redis, by versioned key, each
    until it would expire in Redis. Bounded: emptied when full (a version change
    leaves the old keys unused; they go at the next emptying)."""

    MAX_ENTRIES = 2048

    def __init__(self) -> None:
        self.entries: dict[str, tuple[float, Any]] = {}
        self.lock = threading.Lock()

    def get(self, key: str) -> Any:
        entry = self.entries.get(key)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]

    def put(self, key: str, value: Any, seconds: int) -> None:
        with self.lock:
            if len(self.entries) >= self.MAX_ENTRIES:
                self.entries.clear()
            self.entries[key] = (time.monotonic() + seconds, value)


def _local() -> _LocalEntries:
    entries: _LocalEntries | None = current_app.extensions.get(_LOCAL)
    if entries is None:
        entries = current_app.extensions.setdefault(_LOCAL, _LocalEntries())
    return entries


def _cache_key(name: str) -> str | None:
    try:
        version = get_redis().get(_VERSION_KEY)
    except redis.RedisError as exc:
        metrics.DEPENDENCY_ERRORS.labels(dependency="redis").inc()
        log.warning("catalog cache unavailable: %s", exc)
        return None
    return f"paydrop:catalog:{(version or b'0').decode()}:{name}"


def _cached(name: str, load: Any) -> Any:
    """JSON value of ``load()``, from the cache when possible."""
    key = _cache_key(name)
    seconds = current_app.config["CATALOG_CACHE_SECONDS"]
    if key is not None:
        local = _local().get(key)
        if local is not None:
            return local
        try:
            raw = get_redis().get(key)
            if raw is not None:
                value = json.loads(raw)
                _local().put(key, value, seconds)
                return value
        except redis.RedisError as exc:
            log.warning("catalog cache read failed: %s", exc)
    value = load()
    if key is not None and value is not None:
        try:
            get_redis().set(key, json.dumps(value), ex=seconds)
        except redis.RedisError as exc:
            log.warning("catalog cache write failed: %s", exc)
        else:
            _local().put(key, value, seconds)
    return value


def active_products() -> list[Product]:
    def load() -> list[dict[str, Any]]:
        with get_db().read() as cur:
            return [p.to_dict() for p in products.list_active(cur)]

    return [Product(**row) for row in _cached("active", load)]


def active_product(slug: str) -> Product | None:
    def load() -> dict[str, Any] | None:
        with get_db().read() as cur:
            product = products.get_by_slug(cur, slug)
        return product.to_dict() if product else None

    # Only slugs that can exist reach the cache (no cache entries for junk URLs).
    if len(slug) > 80 or not products.SLUG.match(slug):
        return None
    row = _cached(f"product:{slug}", load)
    return Product(**row) if row else None


def invalidate() -> None:
    """Call after committing any change to products."""
    try:
        get_redis().incr(_VERSION_KEY)
    except redis.RedisError as exc:
        # Entries expire after CATALOG_CACHE_SECONDS anyway.
        log.error("could not invalidate the catalog cache: %s", exc)


@bp.get("/")
@shareable
def index() -> str:
    return render_template("catalog/index.html", products=active_products())


# The card form carries no CSRF token (checkout.js fetches one when the buyer
# pays), so a visitor's product page can be shared; the hosted-checkout form
# posts without JavaScript and keeps its token (that page is then not shared).
@bp.get("/products/<slug>")
@shareable
def product(slug: str) -> str:
    item = active_product(slug)
    if item is None:
        abort(404, "There is no such product, or it is no longer for sale.")
    return render_template(
        "catalog/product.html",
        product=item,
        checkout_mode=current_app.config["CHECKOUT_MODE"],
        canceled=request.args.get("canceled") == "1",
    )
