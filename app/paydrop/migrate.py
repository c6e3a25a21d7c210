"""Versioned SQL migrations: ``migrations/NNNN_name.sql``, applied in order, once.

Commands (registered on the app's CLI by ``init_app``)::

    paydrop db upgrade    # or: flask --app paydrop db upgrade
    paydrop db current    # the database's schema version
    paydrop db check      # exit 1 unless the database has every migration this release ships

How a run works
---------------
* A session-level ``pg_advisory_lock`` serialises runs: when two hosts start
  ``db upgrade`` together, one applies the pending files while the other waits
  on the lock, then finds nothing left to do.
* Each file runs in its own transaction together with the insert of its
  ``schema_migrations`` row, so a file is either applied and recorded or not at
  all. A failing file rolls back, the run stops, the database stays at the
  previous version, and the command exits non-zero naming the file and the
  PostgreSQL error.
* The checksum of each applied file is recorded; ``db check`` reports a file
  that was edited after it was applied.

The expand/contract rule (blue-green with one database)
-------------------------------------------------------
During a deploy the new release's migrations run while the old release is
still serving, and after a rollback the old release serves a schema that the
new one already migrated. So every migration must leave a schema that BOTH the
previous and the new release work with:

* Expand (release N): only additive, backwards-compatible changes -- new
  tables, new nullable columns or columns with a default, new indexes, new
  enum values, relaxed constraints. Release N writes both the old and the new
  shape when it has to.
* Contract (release N+1 or later, once no running release reads the old shape):
  drop columns and tables, add NOT NULL after backfilling, tighten constraints.
* Never rename or retype a column in one step: add the new one (expand), copy
  and dual-write, switch reads, drop the old one (contract) a release later.

Because the old release may run against a newer schema, readiness asks for
"schema version >= the newest migration this release ships", never equality.
See app/MIGRATIONS.md for examples.
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import click
import psycopg2
import psycopg2.errors
import psycopg2.extensions
from flask import Flask, current_app
from flask.cli import AppGroup

# Any fixed 64-bit number works; every paydrop release must use the same one.
ADVISORY_LOCK_KEY = 0x7061796472_6F70  # "paydrop"
_FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(click.ClickException):
    """A migration could not be applied; the message says which and why."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def default_directory() -> Path:
    return Path(str(resources.files("paydrop") / "migrations"))


def load(directory: Path | None = None) -> list[Migration]:
    """The migrations shipped in ``directory``, oldest first."""
    directory = default_directory() if directory is None else directory
    found: dict[int, Migration] = {}
    if not directory.is_dir():
        return []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.fullmatch(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_lower_snake.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(
                f"{path.name}: version {version} is also used by {found[version].filename}"
            )
        found[version] = Migration(version, match.group(2), path.read_text())
    return [found[v] for v in sorted(found)]


def expected_version(directory: Path | None = None) -> int:
    """The newest migration this release ships (0 when it ships none)."""
    migrations = load(directory)
    return migrations[-1].version if migrations else 0


def _connect(database_url: str, connect_timeout: int = 10) -> psycopg2.extensions.connection:
    try:
        return psycopg2.connect(
            database_url, connect_timeout=connect_timeout, application_name="paydrop-migrate"
        )
    except psycopg2.OperationalError as exc:
        raise MigrationError(f"cannot connect to the database: {str(exc).strip()}") from exc


def _applied(cur: psycopg2.extensions.cursor) -> dict[int, str]:
    cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
    row = cur.fetchone()
    if not row or not row[0]:
        return {}
    cur.execute("SELECT version, checksum FROM schema_migrations")
    return {version: checksum for version, checksum in cur.fetchall()}


def current(database_url: str) -> int:
    """The database's schema version: the newest applied migration, 0 for none."""
    conn = _connect(database_url)
    try:
        with conn.cursor() as cur:
            applied = _applied(cur)
        return max(applied, default=0)
    finally:
        conn.close()


def check(database_url: str, directory: Path | None = None) -> list[str]:
    """Problems that make this release unsafe to serve: pending or edited migrations."""
    conn = _connect(database_url)
    try:
        with conn.cursor() as cur:
            applied = _applied(cur)
    finally:
        conn.close()
    problems = []
    for migration in load(directory):
        checksum = applied.get(migration.version)
        if checksum is None:
            problems.append(f"pending: {migration.filename}")
        elif checksum != migration.checksum:
            problems.append(f"changed after it was applied: {migration.filename}")
    return problems


def upgrade(
    database_url: str,
    directory: Path | None = None,
    *,
    wait_seconds: int = 600,
    lock_timeout: str = "30s",
) -> list[str]:
    """Apply every pending migration; return the file names applied (empty: nothing to do).

    ``wait_seconds`` bounds the wait for another run's advisory lock.
    ``lock_timeout`` bounds how long one statement waits for a table lock, so a
    migration queued behind a long query fails (and can be retried) instead of
    stalling every request that queues up behind it.
    """
    migrations = load(directory)
    conn = _connect(database_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SET lock_timeout = %s", (f"{wait_seconds}s",))
            try:
                cur.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
            except psycopg2.errors.LockNotAvailable as exc:
                raise MigrationError(
                    f"another migration run held the lock for more than {wait_seconds}s"
                ) from exc
            cur.execute("SET lock_timeout = %s", (lock_timeout,))
            cur.execute(_CREATE_TABLE)
            applied = _applied(cur)

        done: list[str] = []
        conn.autocommit = False
        for migration in migrations:
            if migration.version in applied:
                continue
            try:
                with conn.cursor() as cur:
                    cur.execute(migration.sql)
                    cur.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                conn.commit()
            except psycopg2.Error as exc:
                conn.rollback()
                reason = (exc.pgerror or str(exc)).strip()
                version = max([*applied, *(int(name[:4]) for name in done)], default=0)
                raise MigrationError(
                    f"{migration.filename} failed and was rolled back; "
                    f"the schema stays at version {version}"
                    + (f" (applied now: {', '.join(done)})" if done else "")
                    + f":\n{reason}"
                ) from exc
            done.append(migration.filename)
        return done
    finally:
        # Closing the session releases the advisory lock as well.
        conn.close()


db_cli = AppGroup("db", help="Database schema migrations.")

# Tests point the real commands at their own migration files; operators never need it.
_directory_option = click.option(
    "--directory", type=click.Path(exists=True, file_okay=False, path_type=Path), hidden=True
)


@db_cli.command("upgrade")
@click.option(
    "--wait", "wait_seconds", default=600, show_default=True,
    help="Seconds to wait for another run's lock.",
)
@_directory_option
def upgrade_command(wait_seconds: int, directory: Path | None) -> None:
    """Apply pending migrations (safe to run from several hosts at once)."""
    url = current_app.config["DATABASE_URL"]
    done = upgrade(url, directory, wait_seconds=wait_seconds)
    for name in done:
        click.echo(f"applied {name}")
    if not done:
        click.echo("nothing to do: the database is up to date")
    click.echo(f"schema version {current(url)}")


@db_cli.command("current")
@_directory_option
def current_command(directory: Path | None) -> None:
    """Print the database's schema version and the newest one this release ships."""
    click.echo(
        f"schema version {current(current_app.config['DATABASE_URL'])} "
        f"(this release ships up to {expected_version(directory)})"
    )


@db_cli.command("check")
@_directory_option
def check_command(directory: Path | None) -> None:
    """Exit 1 if a migration is pending or an applied file was edited since."""
    problems = check(current_app.config["DATABASE_URL"], directory)
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        sys.exit(1)
    click.echo("ok: every migration this release ships is applied")


def init_app(app: Flask) -> None:
    app.cli.add_command(db_cli)
