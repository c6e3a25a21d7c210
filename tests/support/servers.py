"""Throw-away real servers for tests: PostgreSQL 15, Redis and localstripe.

Each server gets a free port on 127.0.0.1 and its own temporary directory. They
can be stopped and started again on the same port with the same data, so a
test can take a dependency down and bring it back::

    pg = PostgresServer().start()
    pg.url                      # postgresql://postgres@127.0.0.1:PORT/paydrop
    pg.stop(); pg.start()       # same port, same data
    pg.cleanup()                # stop and delete the directory

All classes are context managers (``with RedisServer() as redis: ...``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

PG_BIN = Path(os.environ.get("PAYDROP_PG_BIN", "/usr/lib/postgresql/15/bin"))
REDIS_SERVER = os.environ.get("PAYDROP_REDIS_SERVER", "/usr/bin/redis-server")
HOST = "127.0.0.1"
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = START_TIMEOUT, proc: subprocess.Popen | None = None,
                  log: Path | None = None) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {_tail(log)}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {HOST}:{port} after {timeout}s: {_tail(log)}")


def _tail(log: Path | None, lines: int = 20) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


class _Server:
    """A child process bound to a fixed port and a private directory."""

    name = "server"

    def __init__(self, port: int | None = None, workdir: str | Path | None = None) -> None:
        self.port = port or free_port()
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix=f"paydrop-{self.name}-"))
        self.log = self.dir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None

    # Subclasses implement these.
    def _prepare(self) -> None:  # first start only
        pass

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _popen_kwargs(self) -> dict:
        return {}

    def _wait_ready(self) -> None:
        wait_for_port(self.port, proc=self.proc, log=self.log)

    _stop_signal = signal.SIGTERM

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Self:
        if self.running:
            return self
        self._prepare()
        log = self.log.open("ab")
        try:
            self.proc = subprocess.Popen(
                self._command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in pytest must not kill it mid-test
                **self._popen_kwargs(),
            )
        finally:
            log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Shut down cleanly (SIGKILL after ``timeout``); the data stays for ``start()``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(self._stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Crash it (SIGKILL): what a dying host looks like to the app."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class PostgresServer(_Server):
    """PostgreSQL 15 with trust authentication, tuned for speed, not durability.

    ``url`` points at the database ``paydrop`` (created on first start);
    ``create_database(name)`` makes more and returns their URL.
    """

    name = "postgres"
    _stop_signal = signal.SIGINT  # "fast" shutdown
    user = "postgres"
    database = "paydrop"

    def __init__(self, port: int | None = None, workdir: str | Path | None = None) -> None:
        super().__init__(port, workdir)
        self.data = self.dir / "data"
        self.sockets = self.dir / "sockets"
        self._created = False

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        return f"postgresql://{self.user}@{HOST}:{self.port}/{database}"

    def _run_as(self) -> dict:
        # initdb and postgres refuse to run as root; the Debian package made a user.
        if os.geteuid() == 0:
            return {"user": "postgres", "group": "postgres"}
        return {}

    def _prepare(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        self.sockets.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(self.sockets, "postgres", "postgres")
        subprocess.run(
            [str(PG_BIN / "initdb"), "-D", str(self.data), "-U", self.user, "-A", "trust",
             "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
            check=True, capture_output=True, **self._run_as(),
        )

    def _command(self) -> list[str]:
        return [
            str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port),
            "-c", f"listen_addresses={HOST}", "-c", f"unix_socket_directories={self.sockets}",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=200", "-c", "shared_buffers=32MB",
        ]

    def _popen_kwargs(self) -> dict:
        return self._run_as()

    def _wait_ready(self) -> None:
        import psycopg2

        wait_for_port(self.port, proc=self.proc, log=self.log)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                psycopg2.connect(self.url_for("postgres"), connect_timeout=2).close()
                break
            except psycopg2.OperationalError:  # "the database system is starting up"
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if not self._created:
            self.create_database(self.database, exist_ok=True)
            self._created = True

    def create_database(self, name: str, exist_ok: bool = False) -> str:
        import psycopg2
        from psycopg2 import sql

        conn = psycopg2.connect(self.url_for("postgres"))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                elif not exist_ok:
                    raise ValueError(f"database {name} exists")
        finally:
            conn.close()
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        import psycopg2
        from psycopg2 import sql

        conn = psycopg2.connect(self.url_for("postgres"))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)))
        finally:
            conn.close()


class RedisServer(_Server):
    """Redis on 127.0.0.1 without persistence (a restart starts empty)."""

    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def _command(self) -> list[str]:
        return [
            REDIS_SERVER, "--port", str(self.port), "--bind", HOST, "--dir", str(self.dir),
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes",
        ]


# localstripe hard-codes /tmp/localstripe.pickle for its state; this launcher
# points it at a file in the instance's own directory so instances never share
# state and a restart on the same directory keeps it.
_LOCALSTRIPE_LAUNCHER = """
import pickle, sys
from localstripe import resources, server
state = sys.argv.pop(1)

def load(store):
    try:
        with open(state, "rb") as f:
            old = pickle.load(f)
    except FileNotFoundError:
        return
    store.clear()
    store.update(old)

def dump(store):
    with open(state + ".tmp", "wb") as f:
        pickle.dump(dict(store), f, protocol=pickle.HIGHEST_PROTOCOL)
    import os
    os.replace(state + ".tmp", state)

resources.Store.try_load_from_disk = load
resources.Store.dump_to_disk = dump
server.start()
"""


class LocalStripeServer(_Server):
    """localstripe (a fake Stripe API and Stripe.js) with private state.

    Note: localstripe binds every interface (it has no host option); tests only
    talk to it on 127.0.0.1. Webhook registrations live in memory: call
    ``register_webhook`` again after a restart.
    """

    name = "localstripe"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def js_url(self) -> str:
        return f"{self.url}/js.stripe.com/v3/"

    def _command(self) -> list[str]:
        return [sys.executable, "-c", _LOCALSTRIPE_LAUNCHER, str(self.dir / "state.pickle"),
                "--port", str(self.port)]

    def register_webhook(self, webhook_id: str, url: str, secret: str,
                         events: list[str] | None = None) -> None:
        import requests

        data: list[tuple[str, str]] = [("url", url), ("secret", secret)]
        for event in events or []:
            data.append(("events[]", event))
        response = requests.post(f"{self.url}/_config/webhooks/{webhook_id}", data=data,
                                 timeout=10)
        response.raise_for_status()

    def wipe(self) -> None:
        """Delete every object (webhook registrations stay)."""
        import requests

        requests.delete(f"{self.url}/_config/data", timeout=10).raise_for_status()


class MotoS3Server(_Server):
    """moto's S3 (in memory: a restart starts empty). It does not check
    presigned-URL signatures or expiry; the app's own tests cover those."""

    name = "moto"
    region = "us-east-1"
    access_key = "testing"
    secret_key = "testing"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _command(self) -> list[str]:
        moto_server = Path(sys.executable).with_name("moto_server")
        return [str(moto_server), "-H", HOST, "-p", str(self.port)]

    def create_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.url, region_name=self.region,
                     aws_access_key_id=self.access_key,
                     aws_secret_access_key=self.secret_key).create_bucket(Bucket=name)
