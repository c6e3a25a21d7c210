"""Redis: ACL users, protected network access, memory and persistence settings."""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

import testinfra
from conftest import REDIS_APP_PASSWORD, REDIS_MONITORING_PASSWORD, TCP_DROPPED, tcp_probe

from tests.support import scenario

Host = testinfra.host.Host
SITE = Path(__file__).resolve().parents[3] / "playbooks" / "site.yml"
ACL_FILE = "/etc/redis/users.acl"
# TEST-ONLY, the same as molecule/production/group_vars/all/test-only.yml.
REDIS_ADMIN_PASSWORD = "test-only-redis-admin-password"


def redis(client: Host, *command: str, user: str | None = None, password: str | None = None):
    auth = f"REDISCLI_AUTH={shlex.quote(password)} " if password else ""
    who = f"--user {user} " if user else ""
    args = " ".join(shlex.quote(part) for part in command)
    return client.run(f"{auth}timeout 5 redis-cli -h redis1 -p 6379 {who}--no-auth-warning {args}")


def as_app(app1: Host, *command: str):
    return redis(app1, *command, user="paydrop", password=REDIS_APP_PASSWORD)


def test_unauthenticated_commands_are_rejected(app1: Host) -> None:
    result = redis(app1, "PING")
    assert "NOAUTH" in result.stdout + result.stderr


def test_the_default_user_is_disabled(app1: Host) -> None:
    result = redis(app1, "AUTH", "default", "")
    assert "WRONGPASS" in result.stdout + result.stderr


def test_the_app_user_can_do_what_the_app_needs(app1: Host) -> None:
    assert as_app(app1, "PING").stdout.strip() == "PONG"
    assert as_app(app1, "SET", "session:molecule", "x", "EX", "60").stdout.strip() == "OK"
    assert as_app(app1, "GET", "session:molecule").stdout.strip() == "x"
    assert as_app(app1, "INCR", "ratelimit:molecule").stdout.strip().isdigit()
    assert as_app(app1, "PUBLISH", "events", "hello").stdout.strip().isdigit()
    assert "redis_version:7." in as_app(app1, "INFO", "server").stdout


def test_the_app_user_cannot_run_dangerous_commands(app1: Host) -> None:
    dangerous = (["FLUSHALL"], ["FLUSHDB"], ["CONFIG", "GET", "maxmemory"], ["KEYS", "*"], ["SHUTDOWN"], ["MONITOR"])
    for command in dangerous:
        result = as_app(app1, *command)
        assert "NOPERM" in result.stdout + result.stderr, command
    # DEBUG is refused even before the ACL check (enable-debug-command is off).
    result = as_app(app1, "DEBUG", "SLEEP", "0")
    assert "NOPERM" in result.stdout + result.stderr or "not allowed" in result.stdout + result.stderr
    assert as_app(app1, "GET", "session:molecule").stdout.strip() == "x"


def test_the_monitoring_user_reads_but_cannot_write(app1: Host) -> None:
    info = redis(app1, "INFO", "memory", user="redis_exporter", password=REDIS_MONITORING_PASSWORD)
    assert "used_memory:" in info.stdout
    result = redis(app1, "SET", "x", "y", user="redis_exporter", password=REDIS_MONITORING_PASSWORD)
    assert "NOPERM" in result.stdout + result.stderr
    clients = redis(app1, "CLIENT", "LIST", user="redis_exporter", password=REDIS_MONITORING_PASSWORD)
    assert "addr=" in clients.stdout
    for command in (["CLIENT", "PAUSE", "100", "WRITE"], ["CLIENT", "KILL", "USER", "paydrop"]):
        refused = redis(app1, *command, user="redis_exporter", password=REDIS_MONITORING_PASSWORD)
        assert "NOPERM" in refused.stdout + refused.stderr, command


def test_memory_and_persistence_settings(redis1: Host) -> None:
    conf = redis1.file("/etc/redis/redis.conf").content_string
    # vps_m: 4 GB of RAM, half of it for data.
    assert "maxmemory 2048mb" in conf
    assert "maxmemory-policy noeviction" in conf
    assert "appendonly yes" in conf and "appendfsync everysec" in conf
    assert "save 300 100" in conf
    assert "protected-mode yes" in conf


def test_listens_only_on_loopback_and_the_private_address(redis1: Host) -> None:
    listening = set(redis1.check_output("ss -Hltn 'sport = :6379' | awk '{print $4}'").split())
    private = scenario.private_address(redis1)
    assert {f"{private}:6379", "127.0.0.1:6379"} <= listening <= {f"{private}:6379", "127.0.0.1:6379", "[::1]:6379"}


def test_hosts_outside_app_and_monitoring_cannot_reach_redis(db1: Host, app1: Host) -> None:
    assert tcp_probe(app1, "redis1", 6379) == 0
    assert tcp_probe(db1, "redis1", 6379) == TCP_DROPPED


def test_the_configuration_check_refuses_a_bad_acl(redis1: Host) -> None:
    check = "/usr/local/libexec/paydrop/redis-validate-conf"
    redis1.check_output("printf 'user x on +nosuchcommand\\n' > /tmp/bad.acl")
    refused = redis1.run(f"{check} --acl /tmp/bad.acl")
    assert refused.rc != 0 and "nosuchcommand" in refused.stderr
    assert redis1.run(f"{check} /etc/redis/redis.conf").rc == 0


def test_acl_file_holds_only_password_hashes(redis1: Host) -> None:
    acl = redis1.file(ACL_FILE)
    assert (acl.user, acl.mode) == ("redis", 0o640)
    text = acl.content_string
    for user, password in (("admin", REDIS_ADMIN_PASSWORD), ("paydrop", REDIS_APP_PASSWORD),
                           ("redis_exporter", REDIS_MONITORING_PASSWORD)):
        assert password not in text
        line = next(line for line in text.splitlines() if line.startswith(f"user {user} "))
        assert f" #{hashlib.sha256(password.encode()).hexdigest()} " in line, line
    # What Redis loaded is the same hash (ACL GETUSER shows the hashes it holds).
    loaded = redis1.check_output(
        f"REDISCLI_AUTH={REDIS_ADMIN_PASSWORD} redis-cli -s /run/redis/redis-server.sock --user admin "
        "--no-auth-warning ACL GETUSER paydrop")
    assert hashlib.sha256(REDIS_APP_PASSWORD.encode()).hexdigest() in loaded


def run_id(app1: Host) -> str:
    info = as_app(app1, "INFO", "server").stdout
    return next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("run_id:"))


def redis_play(password: str) -> tuple[int, str]:
    result = scenario.playbook(SITE, "--tags", "redis", "--limit", "redis1",
                               "-e", json.dumps({"redis_monitoring_password": password}), timeout=600)
    return result.returncode, scenario.output(result)


def test_a_changed_password_is_loaded_without_a_restart(app1: Host) -> None:
    before = run_id(app1)
    new_password = "test-only-rotated-monitoring-password"
    try:
        rc, output = redis_play(new_password)
        assert rc == 0, output[-3000:]
        assert "RUNNING HANDLER [paydrop.stack.redis : Load the new ACL file]" in output
        rotated = redis(app1, "PING", user="redis_exporter", password=new_password)
        assert rotated.stdout.strip() == "PONG", rotated.stdout + rotated.stderr
        old = redis(app1, "PING", user="redis_exporter", password=REDIS_MONITORING_PASSWORD)
        assert "WRONGPASS" in old.stdout + old.stderr
        # Same server process: ACL LOAD, no restart (clients stay connected).
        assert run_id(app1) == before
    finally:
        rc, output = redis_play(REDIS_MONITORING_PASSWORD)
    assert rc == 0, output[-3000:]
    assert redis(app1, "PING", user="redis_exporter", password=REDIS_MONITORING_PASSWORD).stdout.strip() == "PONG"
    assert run_id(app1) == before
