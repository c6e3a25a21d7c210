"""Fixtures for the production scenario: the test hosts by name, over `docker exec`.

Commands go straight to the containers (testinfra's docker backend) rather than
through Ansible, so the many small SQL checks stay fast.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import testinfra

from tests.support import testhosts

# TEST-ONLY credentials, the same as molecule/production/group_vars/all/test-only.yml.
APP_PASSWORD = "test-only-app-password"
MONITORING_PASSWORD = "test-only-monitoring-password"
REDIS_APP_PASSWORD = "test-only-redis-app-password"
REDIS_MONITORING_PASSWORD = "test-only-redis-monitoring-password"
CA_ON_CLIENT = "/tmp/paydrop-postgres-ca.crt"


def _host(name: str) -> testinfra.host.Host:
    return testinfra.get_host(testhosts.spec(name))


@pytest.fixture(scope="session")
def db1() -> testinfra.host.Host:
    return _host("db1")


@pytest.fixture(scope="session")
def db2() -> testinfra.host.Host:
    return _host("db2")


@pytest.fixture(scope="session")
def redis1() -> testinfra.host.Host:
    return _host("redis1")


@pytest.fixture(scope="session")
def app1(db1: testinfra.host.Host) -> testinfra.host.Host:
    """The client host, holding the CA certificate the data hosts publish."""
    host = _host("app1")
    ca = db1.file("/etc/postgresql/15/main/tls/ca.crt").content_string
    host.check_output(f"printf '%s' {shlex.quote(ca)} > {CA_ON_CLIENT}")
    return host


def sql(host: testinfra.host.Host, query: str, db: str = "postgres", port: int = 5432) -> str:
    """Run one query as the postgres superuser over the local socket; return unaligned output."""
    cmd = f"runuser -u postgres -- psql -X -At -v ON_ERROR_STOP=1 -p {port} -d {db} -c {shlex.quote(query)}"
    return host.check_output(cmd).strip()


@pytest.fixture(scope="session")
def psql() -> Callable[..., str]:
    return sql


# `timeout` exits 124 when the connection attempt hangs: what a firewall drop
# looks like (a refused or unresolvable target fails at once with 1 instead).
TCP_DROPPED = 124


def tcp_probe(client: testinfra.host.Host, target: str, port: int) -> int:
    """Exit status of a TCP connect from `client` to target:port (0 = connected)."""
    return client.run(f"timeout 3 bash -c 'exec 3<>/dev/tcp/{target}/{port}'").rc


# Modules that change what the others look at (releases, stopped slots, a restored database) run
# last, whatever their names; the rest keep pytest's order.
LAST_MODULES = ("test_zero_downtime.py", "test_disaster_recovery.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: LAST_MODULES.index(item.path.name) + 1 if item.path.name in LAST_MODULES else 0)


# `make test` starts the one-host default scenario in the background once the fleet is prepared
# (scripts/run-molecule.sh --overlap): it shares the CPU with the checks above, which mostly wait.
# The releases under load and the drill measure failed requests and seconds: they start once it
# is done, so its converge never counts against them.
_BACKGROUND = Path(__file__).resolve().parents[3] / "build"
_waited = False


def pytest_runtest_setup(item: pytest.Item) -> None:
    global _waited  # noqa: PLW0603 - once per session
    if _waited or item.path.name not in LAST_MODULES:
        return
    _waited = True
    for started in _BACKGROUND.glob("molecule-*.started"):
        status = started.with_suffix(".status")
        pid = started.read_text().strip()
        deadline = time.monotonic() + 40 * 60
        while (not status.exists() and pid.isdigit() and Path(f"/proc/{pid}").exists()
               and time.monotonic() < deadline):
            time.sleep(5)
