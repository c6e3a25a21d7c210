"""Redis: ACL users, protected network access, memory and persistence settings."""

from __future__ import annotations

import shlex

import testinfra
from conftest import REDIS_APP_PASSWORD, REDIS_MONITORING_PASSWORD, TCP_DROPPED, tcp_probe

Host = testinfra.host.Host


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
    private = redis1.check_output("ip -4 route get 1.1.1.1 | grep -o 'src [0-9.]*' | cut -d' ' -f2").strip()
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
