"""PostgreSQL: replication, client access rules, TLS and SCRAM, backups and restore."""

from __future__ import annotations

import json
import shlex
import uuid
from pathlib import Path

import pytest
import testinfra
from conftest import APP_PASSWORD, CA_ON_CLIENT, MONITORING_PASSWORD, TCP_DROPPED, sql, tcp_probe

from tests.support import scenario

Host = testinfra.host.Host
SITE = Path(__file__).resolve().parents[3] / "playbooks" / "site.yml"
DATA_DIR = "/var/lib/postgresql/15/main"
HBA = "/etc/postgresql/15/main/pg_hba.conf"


def client_psql(app1: Host, conninfo: str, query: str, password: str = APP_PASSWORD):
    return app1.run(
        f"PGPASSWORD={shlex.quote(password)} PGCONNECT_TIMEOUT=5 "
        f"psql -X -At -v ON_ERROR_STOP=1 {shlex.quote(conninfo)} -c {shlex.quote(query)}"
    )


def app_conninfo(host: str = "db1", sslmode: str = "verify-full", user: str = "paydrop", db: str = "paydrop") -> str:
    return f"host={host} port=5432 dbname={db} user={user} sslmode={sslmode} sslrootcert={CA_ON_CLIENT}"


def test_primary_streams_to_the_replica(db1: Host, db2: Host) -> None:
    assert sql(db1, "SELECT application_name, state FROM pg_stat_replication") == "db2|streaming"
    assert sql(db1, "SELECT active FROM pg_replication_slots WHERE slot_name = 'db2'") == "t"
    assert sql(db2, "SELECT pg_is_in_recovery()") == "t"
    assert sql(db2, "SELECT status FROM pg_stat_wal_receiver") == "streaming"


def test_a_row_written_on_the_primary_reaches_the_replica(db1: Host, db2: Host) -> None:
    token = uuid.uuid4().hex
    sql(db1, "CREATE TABLE IF NOT EXISTS molecule_replication (token text PRIMARY KEY, written timestamptz)", "paydrop")
    sql(db1, f"INSERT INTO molecule_replication VALUES ('{token}', clock_timestamp())", db="paydrop")
    # Poll on the replica itself and let it measure: the containers share one
    # clock, so clock_timestamp() - written is the time until the row was visible.
    # The deadline is generous (a loaded build machine); the lag is printed.
    visible_after = (
        f"SELECT extract(epoch FROM clock_timestamp() - written) FROM molecule_replication WHERE token = '{token}'"
    )
    poll = (
        "for i in $(seq 1000); do "
        f"r=$(runuser -u postgres -- psql -X -At -d paydrop -c {shlex.quote(visible_after)}); "
        '[ -n "$r" ] && { echo "$r"; exit 0; }; sleep 0.01; done; exit 1'
    )
    result = db2.run(poll)
    assert result.rc == 0, "the row never reached the replica"
    print(f"replication lag: {float(result.stdout):.3f} s")


def test_the_replica_has_the_recommended_safety_settings(db1: Host, db2: Host) -> None:
    assert sql(db1, "SHOW max_slot_wal_keep_size") == "32GB"
    assert sql(db2, "SHOW hot_standby") == "on"
    assert sql(db2, "SHOW primary_slot_name") == "db2"


def test_memory_settings_follow_the_declared_size(db1: Host) -> None:
    # vps_xl: 16 GB of RAM.
    assert sql(db1, "SHOW shared_buffers") == "4GB"
    assert sql(db1, "SHOW effective_cache_size") == "12GB"
    assert sql(db1, "SHOW shared_preload_libraries") == "pg_stat_statements"
    # pg_stat_statements records what runs: one more call of a probe query.
    # (Constants and aliases are normalised away: the probe is a shape of
    # query nothing else runs, and its calls are counted before and after.)
    calls = ("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
             "WHERE query LIKE '%quote_nullable(reverse(initcap(%'")
    before = int(sql(db1, calls))
    sql(db1, f"SELECT quote_nullable(reverse(initcap('{uuid.uuid4().hex}')))")
    assert int(sql(db1, calls)) == before + 1


def test_listens_only_on_loopback_and_the_private_address(db1: Host, db2: Host) -> None:
    for host in (db1, db2):
        private = scenario.private_address(host)
        assert sql(host, "SHOW listen_addresses") == f"127.0.0.1,{private}", host.backend.hostname
        listening = host.check_output("ss -Hltn 'sport = :5432' | awk '{print $4}'").split()
        assert sorted(listening) == sorted(["127.0.0.1:5432", f"{private}:5432"]), host.backend.hostname


def test_the_app_host_connects_with_tls_and_scram(app1: Host, db1: Host) -> None:
    result = client_psql(app1, app_conninfo(), "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    assert result.rc == 0, result.stderr
    ssl, version = result.stdout.strip().split("|")
    assert ssl == "t" and version in {"TLSv1.2", "TLSv1.3"}
    assert sql(db1, "SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'paydrop'") == "SCRAM-SHA-256$"


def test_the_replica_serves_reads_to_the_app_host(app1: Host) -> None:
    result = client_psql(app1, app_conninfo(host="db2"), "SELECT pg_is_in_recovery()")
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == "t"


def test_a_connection_without_tls_is_refused(app1: Host) -> None:
    result = client_psql(app1, app_conninfo(sslmode="disable"), "SELECT 1")
    assert result.rc != 0
    assert "no pg_hba.conf entry" in result.stderr and "no encryption" in result.stderr


def test_a_wrong_password_is_refused(app1: Host) -> None:
    result = client_psql(app1, app_conninfo(), "SELECT 1", password="not-the-password")
    assert result.rc != 0
    assert "password authentication failed" in result.stderr


def test_the_app_host_cannot_log_in_as_the_monitoring_user(app1: Host) -> None:
    conninfo = app_conninfo(user="postgres_exporter", db="postgres")
    result = client_psql(app1, conninfo, "SELECT 1", password=MONITORING_PASSWORD)
    assert result.rc != 0
    assert "no pg_hba.conf entry" in result.stderr


def test_a_host_outside_the_app_group_cannot_reach_postgres(redis1: Host, app1: Host) -> None:
    # The firewall drops it before PostgreSQL sees it (no reply, so a timeout),
    # while the same probe from an app host connects.
    assert tcp_probe(app1, "db1", 5432) == 0
    assert tcp_probe(redis1, "db1", 5432) == TCP_DROPPED


def test_postgres_and_redis_start_after_the_network_is_up(db1: Host, db2: Host, redis1: Host) -> None:
    for host, unit in ((db1, "postgresql@15-main"), (db2, "postgresql@15-main"), (redis1, "redis-server")):
        # After= alone orders nothing unless something pulls the target in: Wants= does.
        after = host.check_output(f"systemctl show --property=After --value {unit}.service").split()
        wants = host.check_output(f"systemctl show --property=Wants --value {unit}.service").split()
        assert "network-online.target" in after, f"{unit} on {host.backend.hostname}"
        assert "network-online.target" in wants, f"{unit} on {host.backend.hostname}"


def test_no_pg_hba_backups_pile_up(db1: Host) -> None:
    leftovers = db1.check_output("find /etc/postgresql/15/main -name 'pg_hba.conf.*' -print")
    assert leftovers == ""


def test_pgbackrest_check_passes(db1: Host) -> None:
    db1.check_output("runuser -u postgres -- pgbackrest --stanza=paydrop check")
    for timer in ("pgbackrest-full", "pgbackrest-diff", "pgbackrest-incr", "pgbackrest-check", "postgres-heartbeat"):
        assert db1.service(f"{timer}.timer").is_enabled
        assert db1.service(f"{timer}.timer").is_running


def test_replica_was_not_recloned_and_streams_again(db1: Host, db2: Host) -> None:
    """side_effect.yml stopped the replica, wrote on the primary and ran the playbook again."""
    assert db2.file("/var/lib/postgresql/15/main/molecule-replica-marker").exists
    scenario.wait_until(
        lambda: sql(db1, "SELECT state FROM pg_stat_replication WHERE application_name = 'db2'") == "streaming",
        "db2 streaming again", timeout=30, interval=1)
    assert sql(db2, "SELECT count(*) FROM molecule_while_down", db="paydrop") == "1000"


CHECKSUM = "SELECT md5(string_agg(t::text, ',' ORDER BY t.id)) FROM molecule_restore t"
SCRATCH = "/var/lib/postgresql/molecule-restore"
SCRATCH_PORT = 5499


def test_a_full_backup_restores_to_identical_data(db1: Host) -> None:
    sql(db1, "DROP TABLE IF EXISTS molecule_restore", db="paydrop")
    sql(
        db1,
        "CREATE TABLE molecule_restore AS SELECT g AS id, md5(g::text) AS payload, now() AS at "
        "FROM generate_series(1, 20000) g",
        db="paydrop",
    )
    expected = sql(db1, CHECKSUM, db="paydrop")
    db1.check_output("runuser -u postgres -- pgbackrest --stanza=paydrop --type=full backup")

    db1.run(f"runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D {SCRATCH} -m immediate stop")
    db1.check_output(f"rm -rf {SCRATCH} && install -d -o postgres -g postgres -m 0700 {SCRATCH}")
    # Recover to the end of the backup (consistent) and pause there: read-only,
    # no new timeline, nothing pushed to the real archive.
    db1.check_output(
        f"runuser -u postgres -- pgbackrest --stanza=paydrop --pg1-path={SCRATCH} "
        "--type=immediate --target-action=pause restore"
    )
    db1.check_output(
        f"printf 'local all postgres peer\\n' > {SCRATCH}/pg_hba.conf && "
        f": > {SCRATCH}/postgresql.conf && chown postgres: {SCRATCH}/pg_hba.conf {SCRATCH}/postgresql.conf"
    )
    options = (
        f"-c port={SCRATCH_PORT} -c listen_addresses='' -c unix_socket_directories=/var/run/postgresql "
        "-c archive_mode=off -c shared_buffers=128MB -c hot_standby=on "
        # A hot standby needs at least the primary's max_connections.
        "-c max_connections=200"
    )
    try:
        db1.check_output(
            f"runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D {SCRATCH} -w -t 120 "
            f"-l {SCRATCH}.log -o {shlex.quote(options)} start"
        )
        # Paused at the end of the backup: what it reads now is what the backup holds.
        scenario.wait_until(lambda: sql(db1, "SELECT pg_is_wal_replay_paused()", port=SCRATCH_PORT) == "t",
                            "the restored copy pausing at the end of the backup", timeout=60, interval=0.5)
        assert sql(db1, CHECKSUM, db="paydrop", port=SCRATCH_PORT) == expected
    finally:
        db1.run(f"runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D {SCRATCH} -m fast stop")
        db1.run(f"rm -rf {SCRATCH} {SCRATCH}.log")


def test_pg_hba_allows_only_tls_and_scram_over_the_network(db1: Host) -> None:
    rules = sql(db1, "SELECT type, auth_method, coalesce(error, '') FROM pg_hba_file_rules WHERE type <> 'local'")
    assert rules, "no network rules at all"
    for line in rules.splitlines():
        assert line == "hostssl|scram-sha-256|", line


def test_the_configuration_check_refuses_bad_settings(db1: Host) -> None:
    check = "/usr/local/libexec/paydrop/postgres-validate-conf"
    db1.check_output(
        "printf 'work_mem = 64MB\\n' > /tmp/good.conf && printf 'shared_buffers = lots\\n' > /tmp/bad.conf"
    )
    assert db1.run(f"{check} /tmp/good.conf").rc == 0
    refused = db1.run(f"{check} /tmp/bad.conf")
    assert refused.rc != 0 and "invalid value" in refused.stderr


def beat(host: Host) -> str:
    return sql(host, "SELECT beat FROM paydrop_monitoring.heartbeat WHERE id = 1")


@pytest.fixture(scope="module")
def left_alone(db1: Host) -> dict[str, str]:
    """The primary's heartbeat and WAL archiver as the two tests below first found them.
    Both watch timers at work over the same minute, so they wait once, not twice.
    Nothing between them may force a WAL switch (a backup, `pgbackrest check`,
    pg_switch_wal()): they come after the backup tests."""
    return {"beat": beat(db1), "since": sql(db1, "SELECT now()"),
            "failed": sql(db1, "SELECT failed_count FROM pg_stat_archiver")}


def test_the_heartbeat_keeps_writing(db1: Host, db2: Host, left_alone: dict[str, str]) -> None:
    # Observe the timer at work (nobody starts the service here): within one
    # period (every minute, postgres_heartbeat_schedule) the beat moves on the
    # primary, and replication carries it to the replica.
    def moved() -> str:
        now = beat(db1)
        return now if now != left_alone["beat"] else ""
    later = scenario.wait_until(moved, "the heartbeat timer writing a new beat", timeout=75, interval=2)
    scenario.wait_until(lambda: beat(db2) == later, "the new beat on the replica", timeout=10)
    assert db1.service("postgres-heartbeat.timer").is_running


def test_wal_is_archived_continuously(db1: Host, left_alone: dict[str, str]) -> None:
    # Nothing here forces a WAL switch (no backup, no check, no
    # pg_switch_wal()): only archive_timeout and the heartbeat's writes can make
    # a new segment reach the archive, within archive_timeout plus one beat.
    assert sql(db1, "SHOW archive_timeout") == "1min"
    since = left_alone["since"]
    scenario.wait_until(
        lambda: sql(db1, f"SELECT coalesce(last_archived_time > '{since}', false) FROM pg_stat_archiver") == "t",
        "a WAL segment archived without anything forcing it", timeout=150, interval=5)
    assert sql(db1, "SELECT failed_count FROM pg_stat_archiver") == left_alone["failed"]


def site(*args: str) -> tuple[int, str]:
    result = scenario.playbook(SITE, "--tags", "db", *args, timeout=900)
    return result.returncode, scenario.output(result)


def test_a_pg_hba_conf_postgres_refuses_is_put_back(db1: Host, app1: Host) -> None:
    before = db1.file(HBA).sha256sum
    # A databases entry with a space renders a line whose "address" is the
    # user name: PostgreSQL cannot parse it.
    users = [{"name": "paydrop", "password": "{{ postgres_app_password }}", "from_groups": ["app"],
              "databases": ["paydrop molecule-not-an-address"]}]
    rc, output = site("--limit", "db1", "-e", json.dumps({"postgres_users": users}))
    assert rc != 0
    assert "db1: PostgreSQL rejected the new pg_hba.conf" in output
    assert "the previous file is back and still loaded" in output
    assert db1.file(HBA).sha256sum == before
    assert sql(db1, "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") == "0"
    assert db1.check_output("find /etc/postgresql/15/main -name 'pg_hba.conf.*' -print") == ""
    result = client_psql(app1, app_conninfo(), "SELECT 1")
    assert (result.rc, result.stdout.strip()) == (0, "1"), result.stderr


def test_a_replica_without_standby_signal_is_left_alone(db1: Host, db2: Host) -> None:
    """A db_replica host whose data is not a standby (promoted, or an interrupted clone) is never touched."""
    db2.check_output("systemctl stop postgresql@15-main")
    control = db2.check_output(f"sha256sum {DATA_DIR}/global/pg_control")
    db2.check_output(f"mv {DATA_DIR}/standby.signal /root/standby.signal.molecule")
    try:
        rc, output = site("--limit", "db2")
        assert rc != 0
        # Refused by the preflight, before any host changed, naming the way out.
        assert "db2 is in db_replica but its cluster is not a standby: it was promoted" in output
        assert "failover.yml -e rejoin=db1" in output
        # Not started (it would run as a second primary), not cloned over.
        assert not db2.service("postgresql@15-main").is_running
        assert db2.check_output(f"sha256sum {DATA_DIR}/global/pg_control") == control
        assert not db2.file(f"{DATA_DIR}/standby.signal").exists
    finally:
        db2.run(f"mv /root/standby.signal.molecule {DATA_DIR}/standby.signal")
        db2.run("systemctl start postgresql@15-main")
    scenario.wait_until(
        lambda: sql(db1, "SELECT state FROM pg_stat_replication WHERE application_name = 'db2'") == "streaming",
        "db2 streaming again", timeout=60, interval=1)
