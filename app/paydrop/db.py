"""PostgreSQL access: one pool for the primary, one for the read replica.

Writes and anything that must see its own writes use ``transaction()``.
Catalog reads use ``read()``, which goes to the replica when one is configured
and falls back to the primary when the replica is down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import psycopg2.pool
from flask import Flask, current_app
from psycopg2 import sql

from . import metrics

log = logging.getLogger(__name__)

_EXTENSION = "paydrop.db"
# How long a request waits for a pooled connection before giving up.
POOL_WAIT_SECONDS = 10
# A pooled connection idle longer than this is checked (SELECT 1) before use.
PING_AFTER_IDLE_SECONDS = 2.0


class _Connection(psycopg2.extensions.connection):
    """A pooled connection that remembers which statements its session has
    prepared (``execute_prepared``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prepared: set[str] = set()


def execute_prepared(cur: Any, name: str, query: str | sql.Composable,
                     params: Sequence[Any], *, first: bytes = b"") -> None:
    """``cur.execute(query, params)``, with ``query`` parsed and planned once per
    database session instead of for every call.

    For the statements a webhook runs per event: PostgreSQL spends about as much
    CPU parsing and planning each of them as executing it (#12). psycopg2 has no
    server-side prepared statements of its own, so the first call on a connection
    sends ``PREPARE name AS query`` (``%s`` become ``$1``, ``$2``, ...: the server
    infers their types from the query, so write a cast where it cannot), and every
    call sends ``EXECUTE name(params)``, with the parameters quoted by psycopg2 as
    for ``execute``. A prepared statement lasts as long as the session, whatever
    becomes of the transaction that prepared it; a connection the pool replaces
    prepares again. Only for queries whose result columns are listed (no ``*``
    of a table): a migration that adds a column must not change a prepared
    statement's result. One that changes the type of a column it returns
    (while the previous release still serves) makes PostgreSQL refuse the
    prepared plan: that call fails, and its connection is closed so that the
    pool replaces it and the next call prepares afresh. ``first``: a statement
    (``cur.mogrify``'d) to run before this one in the same round trip.
    """
    prepared: set[str] | None = getattr(cur.connection, "prepared", None)
    if prepared is None:  # a connection from elsewhere (migrations, tests): plain
        statement = cur.mogrify(query, params)
    else:
        if name not in prepared:
            text = query if isinstance(query, str) else query.as_string(cur)
            parts = text.split("%s")
            if len(parts) - 1 != len(params) or "%%" in text:
                raise ValueError(f"{name}: {len(parts) - 1} placeholders for {len(params)} "
                                 "values, or a %% (not rewritten for PREPARE)")
            numbered = parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], 1))
            cur.execute(f"PREPARE {name} AS {numbered}")
            prepared.add(name)
        statement = cur.mogrify(f"EXECUTE {name}({', '.join(['%s'] * len(params))})", params)
    try:
        cur.execute(first + b";\n" + statement if first else statement)
    except psycopg2.errors.FeatureNotSupported:  # "cached plan must not change result type"
        if prepared is not None:
            cur.connection.close()
        raise


class Database:
    def __init__(self, primary_url: str, replica_url: str, pool_size: int, connect_timeout: int):
        self._urls = {"primary": primary_url, "replica": replica_url}
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._pools: dict[str, psycopg2.pool.ThreadedConnectionPool] = {}
        self._lock = threading.Lock()
        # When each idle connection went back to its pool (by id), for the ping.
        self._returned: dict[int, float] = {}
        # psycopg2's pool raises when exhausted; a semaphore per pool makes a
        # busy thread wait (bounded) for a free connection instead.
        self._slots = {name: threading.BoundedSemaphore(pool_size) for name in self._urls}

    def _pool(self, name: str) -> psycopg2.pool.ThreadedConnectionPool:
        pool = self._pools.get(name)
        if pool is None:
            with self._lock:
                pool = self._pools.get(name)
                if pool is None:
                    pool = psycopg2.pool.ThreadedConnectionPool(
                        0,
                        self._pool_size,
                        self._urls[name],
                        connect_timeout=self._connect_timeout,
                        application_name="paydrop",
                        connection_factory=_Connection,
                        cursor_factory=psycopg2.extras.RealDictCursor,
                    )
                    # Keep up to pool_size idle connections for reuse. The pool
                    # opens `minconn` connections only when it is built (0 here:
                    # nothing at start-up) and afterwards closes every returned
                    # connection beyond `minconn`; left at 0, each request paid
                    # a new TLS + SCRAM handshake (webhook ingest: 3x slower).
                    pool.minconn = self._pool_size
                    self._pools[name] = pool
        return pool

    @contextmanager
    def connection(self, name: str = "primary", *, wait: float | None = None) -> Iterator[Any]:
        """A pooled connection; broken connections are discarded, not reused.

        ``wait``: seconds to wait for a free slot (POOL_WAIT_SECONDS by default);
        callers with their own deadline, like the health probe, pass theirs.
        """
        slots = self._slots[name]
        wait = POOL_WAIT_SECONDS if wait is None else wait
        if not slots.acquire(timeout=wait):
            metrics.DEPENDENCY_ERRORS.labels("database").inc()
            raise psycopg2.pool.PoolError(f"no free {name} database connection after {wait}s")
        try:
            pool = self._pool(name)
            try:
                conn = self._checkout(pool)
            except psycopg2.Error:
                metrics.DEPENDENCY_ERRORS.labels("database").inc()
                raise
            broken = False
            try:
                yield conn
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                broken = True
                metrics.DEPENDENCY_ERRORS.labels("database").inc()
                raise
            finally:
                if not broken and not conn.closed:
                    try:
                        conn.rollback()
                    except psycopg2.Error:
                        broken = True
                close = broken or bool(conn.closed)
                pool.putconn(conn, close=close)
                if not close:
                    self._returned[id(conn)] = time.monotonic()
        finally:
            slots.release()

    def _checkout(self, pool: psycopg2.pool.ThreadedConnectionPool) -> Any:
        """A connection from the pool; one that sat idle for a while is pinged first, and
        discarded for a new one if the server closed it (a restart, a failover, an idle
        timeout), so a request never gets a dead connection."""
        for _ in range(self._pool_size + 1):
            conn = pool.getconn()
            idle_since = self._returned.pop(id(conn), None)
            if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
                return conn
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                conn.rollback()
                return conn
            except psycopg2.Error:
                log.info("discarding a pooled database connection the server closed")
                pool.putconn(conn, close=True)
        return pool.getconn()

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor on the primary inside one transaction: commit on success, else roll back."""
        with self.connection("primary") as conn:
            try:
                with conn.cursor() as cur:
                    yield cur
                conn.commit()
            except BaseException:
                if not conn.closed:
                    conn.rollback()
                raise

    @contextmanager
    def read(self) -> Iterator[Any]:
        """A cursor on the replica if configured and reachable, else on the primary."""
        with ExitStack() as stack:
            conn = None
            if self._urls["replica"]:
                try:
                    conn = stack.enter_context(self.connection("replica"))
                except psycopg2.OperationalError as exc:
                    log.warning("read replica unavailable, reading from the primary: %s", exc)
            if conn is None:
                conn = stack.enter_context(self.connection("primary"))
            with conn.cursor() as cur:
                yield cur

    def close(self) -> None:
        for pool in self._pools.values():
            pool.closeall()
        self._pools.clear()


def init_app(app: Flask) -> None:
    app.extensions[_EXTENSION] = Database(
        app.config["DATABASE_URL"],
        app.config["DATABASE_REPLICA_URL"],
        app.config["DATABASE_POOL_SIZE"],
        app.config["DATABASE_CONNECT_TIMEOUT"],
    )


def get_db() -> Database:
    db: Database = current_app.extensions[_EXTENSION]
    return db
