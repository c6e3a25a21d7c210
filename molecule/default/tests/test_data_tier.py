"""Staging all-in-one: PostgreSQL and Redis on staging1 next to the app.

The multi-host details (replication, refusals from other hosts, restore) are
checked by the `production` scenario; here: the same roles work on one host."""

from __future__ import annotations

import shlex

import testinfra.host

from tests.support import scenario
from tests.support.scenario import private_address

testinfra_hosts = scenario.hosts_of("db_primary")

APP_PASSWORD = "test-only-app-password"
REDIS_APP_PASSWORD = "test-only-redis-app-password"
CA = "/etc/postgresql/15/main/tls/ca.crt"


def sql(host: testinfra.host.Host, query: str) -> str:
    return host.check_output(f"runuser -u postgres -- psql -X -At -d paydrop -c {shlex.quote(query)}").strip()


def test_postgres_listens_only_on_private_address_and_loopback(host: testinfra.host.Host) -> None:
    listening = set(host.check_output("ss -Hltn 'sport = :5432' | awk '{print $4}'").split())
    assert listening == {f"{private_address(host)}:5432", "127.0.0.1:5432"}


def test_app_logs_in_with_tls_and_scram(host: testinfra.host.Host) -> None:
    conninfo = (f"host={private_address(host)} dbname=paydrop user=paydrop "
                f"sslmode=verify-ca sslrootcert={CA}")
    result = host.run(f"PGPASSWORD={APP_PASSWORD} psql -X -At {shlex.quote(conninfo)} "
                      "-c 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()'")
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == "t"
    # SCRAM: the stored verifier, and the rule that admitted this address.
    assert sql(host, "SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'paydrop'") == "SCRAM-SHA-256$"
    rule = sql(host, "SELECT type, auth_method FROM pg_hba_file_rules "
                     f"WHERE 'paydrop' = ANY(user_name) AND address = '{private_address(host)}'")
    assert rule == "hostssl|scram-sha-256"


def test_plain_connection_is_refused(host: testinfra.host.Host) -> None:
    conninfo = f"host={private_address(host)} dbname=paydrop user=paydrop sslmode=disable"
    result = host.run(f"PGPASSWORD={APP_PASSWORD} psql -X -At {shlex.quote(conninfo)} -c 'SELECT 1'")
    assert result.rc != 0
    assert "no pg_hba.conf entry" in result.stderr


def test_backups_are_configured(host: testinfra.host.Host) -> None:
    result = host.run("runuser -u postgres -- pgbackrest --stanza=paydrop check")
    assert result.rc == 0, result.stdout + result.stderr


def test_redis_requires_a_password_and_denies_flushall(host: testinfra.host.Host) -> None:
    address = private_address(host)
    anonymous = host.run(f"redis-cli -h {address} PING")
    assert "NOAUTH" in anonymous.stdout + anonymous.stderr
    as_app = f"REDISCLI_AUTH={REDIS_APP_PASSWORD} redis-cli --user paydrop -h {address}"
    assert host.check_output(f"{as_app} PING").strip() == "PONG"
    flush = host.run(f"{as_app} FLUSHALL")
    assert "NOPERM" in flush.stdout + flush.stderr
