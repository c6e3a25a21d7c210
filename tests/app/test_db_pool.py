"""The database pool reuses its connections, and never hands out one the server closed.

Real PostgreSQL (the session's test server); the backend's process id tells
connections apart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
from paydrop import db


def backend_pid(database: db.Database) -> int:
    with database.transaction() as cur:
        cur.execute("SELECT pg_backend_pid() AS pid")
        pid: int = cur.fetchone()["pid"]
        return pid


def test_a_connection_is_reused_from_one_request_to_the_next(make_app: Callable[..., Any]) -> None:
    """Before the fix every returned connection was closed (psycopg2 keeps only `minconn`
    idle ones), so each request paid a new connection's handshake."""
    app = make_app({"DATABASE_POOL_SIZE": "2"})
    with app.app_context():
        database = db.get_db()
        pids = {backend_pid(database) for _ in range(20)}
    assert len(pids) == 1, pids


def test_the_pool_keeps_at_most_its_size_and_hands_each_thread_its_own(make_app: Callable[..., Any],
                                                                       database_url: str) -> None:
    app = make_app({"DATABASE_POOL_SIZE": "3"})
    with app.app_context():
        database = db.get_db()
        barrier = threading.Barrier(3)
        seen: list[int] = []

        def hold() -> None:
            with database.transaction() as cur:
                cur.execute("SELECT pg_backend_pid() AS pid")
                seen.append(cur.fetchone()["pid"])
                barrier.wait(timeout=10)  # all three connections open at once

        threads = [threading.Thread(target=hold) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
        assert len(set(seen)) == 3, seen
        # All three went back to the pool and are reused, no fourth is opened.
        again = {backend_pid(database) for _ in range(10)}
        assert again <= set(seen), (again, seen)
        with psycopg2.connect(database_url) as admin, admin.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'paydrop'"
                        " AND pid = ANY(%s)", (seen,))
            assert cur.fetchone()[0] == 3
        admin.close()


def test_a_connection_the_server_closed_is_replaced_not_handed_out(make_app: Callable[..., Any],
                                                                    database_url: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart or failover closes pooled connections server-side: the next request
    must get a working connection, not an error."""
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)
    app = make_app({"DATABASE_POOL_SIZE": "2"})
    with app.app_context():
        database = db.get_db()
        first = backend_pid(database)
        with psycopg2.connect(database_url) as admin, admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (first,))
            assert cur.fetchone()[0] is True
        admin.close()
        second = backend_pid(database)  # no OperationalError
        assert second != first
        assert backend_pid(database) == second


def test_a_prepared_statement_is_prepared_once_per_connection(make_app: Callable[..., Any],
                                                              database_url: str) -> None:
    """execute_prepared: PREPARE once per session (it outlives the transaction that
    prepared it, even one rolled back), EXECUTE with the values every time, and a
    replaced connection prepares again."""
    app = make_app({"DATABASE_POOL_SIZE": "1"})
    query = "SELECT %s::integer + %s AS sum, %s::text AS text"

    def run(*values: Any) -> dict[str, Any]:
        with database.transaction() as cur:
            db.execute_prepared(cur, "paydrop_test_sum", query, values)
            row: dict[str, Any] = cur.fetchone()
            return row

    def prepared_now() -> list[str]:
        with database.transaction() as cur:
            cur.execute("SELECT name FROM pg_prepared_statements")
            return [row["name"] for row in cur.fetchall()]

    with app.app_context():
        database = db.get_db()
        with pytest.raises(RuntimeError), database.transaction() as cur:
            db.execute_prepared(cur, "paydrop_test_sum", query, (1, 2, "it's"))
            raise RuntimeError("roll the preparing transaction back")
        assert prepared_now() == ["paydrop_test_sum"]
        assert run(2, 3, "it's; DROP TABLE orders") == {"sum": 5,
                                                       "text": "it's; DROP TABLE orders"}
        assert run(40, 2, None) == {"sum": 42, "text": None}

        pid = backend_pid(database)
        with psycopg2.connect(database_url) as admin, admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
        admin.close()
        for attempt in range(3):  # the pool finds out that the server closed it
            try:
                assert run(1, 1, "again") == {"sum": 2, "text": "again"}
                break
            except psycopg2.OperationalError:
                assert attempt < 2
        assert backend_pid(database) != pid


def test_a_prepared_statement_whose_result_a_migration_changed_costs_one_call(
        make_app: Callable[..., Any]) -> None:
    """A column's type changed under a running release: PostgreSQL refuses the
    prepared plan, that call fails, and the connection is replaced instead of
    failing every call it serves from then on."""
    app = make_app({"DATABASE_POOL_SIZE": "1"})
    query = "SELECT note FROM paydrop_test_migrated WHERE id = %s"
    with app.app_context():
        database = db.get_db()
        with database.transaction() as cur:
            cur.execute("DROP TABLE IF EXISTS paydrop_test_migrated")
            cur.execute("CREATE TABLE paydrop_test_migrated (id int PRIMARY KEY, note varchar(10))")
            cur.execute("INSERT INTO paydrop_test_migrated VALUES (1, 'before')")
        try:
            with database.transaction() as cur:
                db.execute_prepared(cur, "paydrop_test_migrated", query, (1,))
                assert cur.fetchone() == {"note": "before"}
            with database.transaction() as cur:
                cur.execute("ALTER TABLE paydrop_test_migrated ALTER COLUMN note TYPE text")
            pid = backend_pid(database)
            with pytest.raises(psycopg2.errors.FeatureNotSupported), \
                    database.transaction() as cur:
                db.execute_prepared(cur, "paydrop_test_migrated", query, (1,))
            with database.transaction() as cur:
                db.execute_prepared(cur, "paydrop_test_migrated", query, (1,))
                assert cur.fetchone() == {"note": "before"}
            assert backend_pid(database) != pid
        finally:
            with database.transaction() as cur:
                cur.execute("DROP TABLE paydrop_test_migrated")
