"""PostgreSQL: replication, client access rules, TLS and SCRAM, backups and restore."""

from __future__ import annotations

import shlex
import time
import uuid

import testinfra
from conftest import APP_PASSWORD, CA_ON_CLIENT, MONITORING_PASSWORD, TCP_DROPPED, sql, tcp_probe

Host = testinfra.host.Host


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


def test_a_row_written_on_the_primary_is_on_the_replica_within_a_second(db1: Host, db2: Host) -> None:
    token = uuid.uuid4().hex
    sql(db1, "CREATE TABLE IF NOT EXISTS molecule_replication (token text PRIMARY KEY, written timestamptz)", "paydrop")
    sql(db1, f"INSERT INTO molecule_replication VALUES ('{token}', clock_timestamp())", db="paydrop")
    # Poll on the replica itself and let it measure: the containers share one
    # clock, so clock_timestamp() - written is the time until the row was visible.
    visible_after = (
        f"SELECT extract(epoch FROM clock_timestamp() - written) FROM molecule_replication WHERE token = '{token}'"
    )
    poll = (
        "for i in $(seq 200); do "
        f"r=$(runuser -u postgres -- psql -X -At -d paydrop -c {shlex.quote(visible_after)}); "
        '[ -n "$r" ] && { echo "$r"; exit 0; }; sleep 0.01; done; exit 1'
    )
    seconds = float(db2.check_output(poll))
    assert seconds < 1.0, f"the row reached the replica after {seconds:.3f} s"


def test_the_replica_has_the_recommended_safety_settings(db1: Host, db2: Host) -> None:
    assert sql(db1, "SHOW max_slot_wal_keep_size") == "32GB"
    assert sql(db2, "SHOW hot_standby") == "on"
    assert sql(db2, "SHOW primary_slot_name") == "db2"


def test_memory_settings_follow_the_declared_size(db1: Host) -> None:
    # vps_xl: 16 GB of RAM.
    assert sql(db1, "SHOW shared_buffers") == "4GB"
    assert sql(db1, "SHOW effective_cache_size") == "12GB"
    assert sql(db1, "SHOW shared_preload_libraries") == "pg_stat_statements"
    assert int(sql(db1, "SELECT count(*) FROM pg_stat_statements")) >= 0


def test_listens_only_on_loopback_and_the_private_address(db1: Host) -> None:
    addresses = sql(db1, "SHOW listen_addresses").split(",")
    assert addresses[0] == "127.0.0.1"
    assert len(addresses) == 2
    listening = db1.check_output("ss -Hltn 'sport = :5432' | awk '{print $4}'").split()
    assert sorted(a.rsplit(":", 1)[0] for a in listening) == sorted(addresses)


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
        after = host.check_output(f"systemctl show --property=After --value {unit}.service").split()
        assert "network-online.target" in after, f"{unit} on {host.backend.hostname}"


def test_no_pg_hba_backups_pile_up(db1: Host) -> None:
    leftovers = db1.check_output("find /etc/postgresql/15/main -name 'pg_hba.conf.*' -print")
    assert leftovers == ""


def test_pgbackrest_check_passes(db1: Host) -> None:
    db1.check_output("runuser -u postgres -- pgbackrest --stanza=paydrop check")
    for timer in ("pgbackrest-full", "pgbackrest-diff", "pgbackrest-incr", "pgbackrest-check", "postgres-heartbeat"):
        assert db1.service(f"{timer}.timer").is_enabled
        assert db1.service(f"{timer}.timer").is_running


def test_the_heartbeat_keeps_writing(db1: Host, db2: Host) -> None:
    db1.check_output("systemctl start postgres-heartbeat.service")
    age = float(sql(db1, "SELECT extract(epoch FROM now() - beat) FROM paydrop_monitoring.heartbeat WHERE id = 1"))
    assert age < 5
    assert sql(db1, "SHOW archive_timeout") == "1min"


def test_replica_was_not_recloned_and_streams_again(db1: Host, db2: Host) -> None:
    """side_effect.yml stopped the replica, wrote on the primary and ran the playbook again."""
    assert db2.file("/var/lib/postgresql/15/main/molecule-replica-marker").exists
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sql(db1, "SELECT state FROM pg_stat_replication WHERE application_name = 'db2'") == "streaming":
            break
        time.sleep(1)
    assert sql(db1, "SELECT state FROM pg_stat_replication WHERE application_name = 'db2'") == "streaming"
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
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sql(db1, "SELECT pg_is_wal_replay_paused()", port=SCRATCH_PORT) == "t":
                break
            time.sleep(0.5)
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


def test_wal_is_archived_continuously(db1: Host) -> None:
    age = sql(db1, "SELECT extract(epoch FROM now() - last_archived_time)::int FROM pg_stat_archiver")
    assert int(age) < 180, f"newest archived WAL is {age} s old"
