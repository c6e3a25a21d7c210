"""The migration runner against a real PostgreSQL, through the real `paydrop` command."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from paydrop import migrate

from tests.support.servers import PostgresServer

PAYDROP = str(Path(sys.executable).with_name("paydrop"))


@pytest.fixture
def fresh_db(pg_server: PostgresServer) -> Iterator[str]:
    name = f"paydrop_migrate_{uuid.uuid4().hex[:10]}"
    url = pg_server.create_database(name)
    yield url
    pg_server.drop_database(name)


def _env(database_url: str) -> dict[str, str]:
    """The settings a deploy gives the migrate container (nothing else from this process)."""
    return {
        "PATH": os.environ["PATH"],
        "SECRET_KEY": "test-secret-key-at-least-32-characters",
        "DATABASE_URL": database_url,
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "STRIPE_SECRET_KEY": "sk_test_x",
        "STRIPE_PUBLISHABLE_KEY": "pk_test_x",
        "STRIPE_WEBHOOK_SECRET": "whsec_x",
    }


def _paydrop(database_url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([PAYDROP, "db", *args], env=_env(database_url), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _run(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PAYDROP, "db", *args], env=_env(database_url), text=True,
                          capture_output=True, timeout=60)


def _tables(url: str) -> set[str]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return {row[0] for row in cur.fetchall()}
    finally:
        conn.close()


def _waiting_for_the_lock(url: str) -> int:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def test_upgrade_applies_every_shipped_file_once(fresh_db: str) -> None:
    shipped = [m.filename for m in migrate.load()]
    assert shipped, "the release ships migrations"

    assert migrate.current(fresh_db) == 0
    assert migrate.upgrade(fresh_db) == shipped
    assert migrate.current(fresh_db) == migrate.expected_version()
    assert migrate.upgrade(fresh_db) == []
    assert migrate.check(fresh_db) == []


def test_two_concurrent_upgrades_one_applies_the_other_waits(fresh_db: str) -> None:
    # Hold the runners' lock so both start and queue behind it, as when two
    # hosts start the deploy's migrate step at the same moment.
    holder = psycopg2.connect(fresh_db)
    holder.autocommit = True
    with holder.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (migrate.ADVISORY_LOCK_KEY,))
    first, second = _paydrop(fresh_db, "upgrade"), _paydrop(fresh_db, "upgrade")
    try:
        deadline = time.monotonic() + 20
        while _waiting_for_the_lock(fresh_db) < 2:
            assert time.monotonic() < deadline, "both runs should be waiting on the lock"
            assert first.poll() is None and second.poll() is None
            time.sleep(0.1)
        assert migrate.current(fresh_db) == 0
    finally:
        holder.close()  # releases the lock
    outputs = [proc.communicate(timeout=60) for proc in (first, second)]

    assert [first.returncode, second.returncode] == [0, 0], outputs
    stdouts = sorted(out for out, _err in outputs)
    applied = [out for out in stdouts if "applied " in out]
    idle = [out for out in stdouts if "nothing to do" in out]
    assert len(applied) == 1 and len(idle) == 1, stdouts
    for filename in (m.filename for m in migrate.load()):
        assert f"applied {filename}" in applied[0]
    assert migrate.current(fresh_db) == migrate.expected_version()


def test_a_run_gives_up_waiting_with_a_clear_message(fresh_db: str) -> None:
    holder = psycopg2.connect(fresh_db)
    holder.autocommit = True
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (migrate.ADVISORY_LOCK_KEY,))
        result = _run(fresh_db, "upgrade", "--wait", "1")
    finally:
        holder.close()
    assert result.returncode != 0
    assert "another migration run held the lock" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_broken_migration_leaves_the_previous_version(fresh_db: str, tmp_path: Path) -> None:
    (tmp_path / "0001_gadgets.sql").write_text("CREATE TABLE gadgets (id int PRIMARY KEY);\n")
    (tmp_path / "0002_widgets.sql").write_text(
        "CREATE TABLE widgets (id int PRIMARY KEY);\n"
        "ALTER TABLE gadgets ADD COLUMN name text;\n"
        "INSERT INTO widgets VALUES ('not a number');\n"
    )
    (tmp_path / "0003_never_reached.sql").write_text("CREATE TABLE reached (id int);\n")

    result = _run(fresh_db, "upgrade", "--directory", str(tmp_path))

    assert result.returncode == 1
    assert "0002_widgets.sql failed and was rolled back" in result.stderr
    assert "schema stays at version 1" in result.stderr
    assert "invalid input syntax for type integer" in result.stderr
    assert "Traceback" not in result.stderr
    assert "applied 0001_gadgets.sql" not in result.stderr
    assert migrate.current(fresh_db) == 1
    assert _tables(fresh_db) == {"schema_migrations", "gadgets"}
    conn = psycopg2.connect(fresh_db)
    with conn.cursor() as cur:
        cur.execute("SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'gadgets'")
        assert [row[0] for row in cur.fetchall()] == ["id"]
    conn.close()

    # Fixed, it applies from where it stopped.
    (tmp_path / "0002_widgets.sql").write_text("CREATE TABLE widgets (id int PRIMARY KEY);\n")
    result = _run(fresh_db, "upgrade", "--directory", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == ["applied 0002_widgets.sql",
                                              "applied 0003_never_reached.sql"]
    assert migrate.current(fresh_db) == 3


def test_check_reports_pending_and_edited_files(fresh_db: str, tmp_path: Path) -> None:
    (tmp_path / "0001_gadgets.sql").write_text("CREATE TABLE gadgets (id int);\n")
    migrate.upgrade(fresh_db, tmp_path)
    (tmp_path / "0001_gadgets.sql").write_text("CREATE TABLE gadgets (id bigint);\n")
    (tmp_path / "0002_widgets.sql").write_text("CREATE TABLE widgets (id int);\n")

    result = _run(fresh_db, "check", "--directory", str(tmp_path))

    assert result.returncode == 1
    assert "changed after it was applied: 0001_gadgets.sql" in result.stderr
    assert "pending: 0002_widgets.sql" in result.stderr
    current = _run(fresh_db, "current", "--directory", str(tmp_path))
    assert current.stdout.strip() == "schema version 1 (this release ships up to 2)"


def test_badly_named_or_duplicate_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 1;")
    with pytest.raises(migrate.MigrationError, match="version 1 is also used"):
        migrate.load(tmp_path)
    (tmp_path / "0001_b.sql").unlink()
    (tmp_path / "2-Bad Name.sql").write_text("SELECT 1;")
    with pytest.raises(migrate.MigrationError, match="NNNN_lower_snake.sql"):
        migrate.load(tmp_path)


def test_an_unreachable_database_is_a_clear_error() -> None:
    result = _run("postgresql://nobody@127.0.0.1:1/none", "upgrade")
    assert result.returncode == 1
    assert "cannot connect to the database" in result.stderr
    assert "Traceback" not in result.stderr
