"""What the staging host must look like after common and docker converged.

The test host is reached by its container name (the linked staging inventory's
ansible_host names a server, not a container). Network checks connect from
this machine to the test host's address on the scenario's Docker network.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import testinfra.host
from testinfra.utils.ansible_runner import AnsibleRunner

from tests.support import testhosts

testinfra_hosts = [
    testhosts.spec(name)
    for name in AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts("all")
]

BUSYBOX_TAR = "/usr/local/share/paydrop-testhost/busybox-rootfs.tar"
BUSYBOX_IMAGE = "paydrop-test/busybox:latest"
UNDECLARED_PORT = 8099
LOOPBACK_PUBLISHED_PORT = 18080
WIDE_PUBLISHED_PORT = 18081
DECLARED_PUBLISHED_PORT = 18082


def ipv4_address(host: testinfra.host.Host) -> str:
    addresses = [a for a in host.interface("eth0").addresses if ":" not in a]
    assert addresses, "the test host has no IPv4 address on eth0"
    return addresses[0]


def can_connect(address: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def nft_json(host: testinfra.host.Host, *what: str) -> list[dict]:
    out = host.check_output("nft -j list " + " ".join(what))
    return json.loads(out)["nftables"]


def accepted_input_ports(host: testinfra.host.Host) -> set[int]:
    """TCP ports the input path of table inet paydrop accepts."""
    ports: set[int] = set()
    for item in nft_json(host, "table", "inet", "paydrop"):
        rule = item.get("rule")
        if not rule or rule["chain"] not in ("input", "services_in"):
            continue
        if not any("accept" in statement for statement in rule["expr"]):
            continue
        for statement in rule["expr"]:
            match = statement.get("match", {})
            left = match.get("left", {}).get("payload", {})
            if left.get("protocol") == "tcp" and left.get("field") == "dport":
                right = match["right"]
                ports.update(right["set"] if isinstance(right, dict) else [right])
    return ports


# --- sshd --------------------------------------------------------------------


def test_sshd_hardening_is_in_effect(host: testinfra.host.Host) -> None:
    effective = dict(
        line.split(" ", 1) for line in host.check_output("sshd -T").splitlines() if " " in line
    )
    assert effective["permitrootlogin"] == "without-password"
    assert effective["passwordauthentication"] == "no"
    assert effective["kbdinteractiveauthentication"] == "no"
    assert effective["permitemptypasswords"] == "no"
    assert effective["pubkeyauthentication"] == "yes"
    assert effective["authenticationmethods"] == "publickey"
    assert effective["x11forwarding"] == "no"
    assert effective["allowagentforwarding"] == "no"
    assert effective["allowtcpforwarding"] == "no"
    assert effective["maxauthtries"] == "3"


def test_sshd_runs(host: testinfra.host.Host) -> None:
    ssh = host.service("ssh")
    assert ssh.is_running
    assert ssh.is_enabled


# --- firewall ----------------------------------------------------------------


def test_firewall_denies_inbound_by_default(host: testinfra.host.Host) -> None:
    chain = next(
        item["chain"]
        for item in nft_json(host, "chain", "inet", "paydrop", "input")
        if "chain" in item
    )
    assert chain["hook"] == "input"
    assert chain["policy"] == "drop"
    assert host.service("nftables").is_enabled


def test_firewall_opens_only_declared_ports(host: testinfra.host.Host) -> None:
    # SSH; nginx's 80 and 443 (from anywhere); PostgreSQL and Redis, declared
    # by their roles for the app and monitoring groups, and the app's slots for
    # the lb and monitoring groups (staging1 itself on the all-in-one); and the
    # test-only extra rules of molecule/default/host_vars: 5433 names a group
    # without hosts (db_replica), so it stays closed.
    assert accepted_input_ports(host) == {22, 80, 443, 5432, 6379, 8001, 8002, 8098, 9100}


def test_every_public_listener_is_declared(host: testinfra.host.Host) -> None:
    listening = set()
    for line in host.check_output("ss -Hltn").splitlines():
        local = line.split()[3]
        address, port = local.rsplit(":", 1)
        if not address.startswith(("127.", "[::1]")):
            listening.add(int(port))
    assert listening <= accepted_input_ports(host)


def test_group_sources_resolve_to_private_addresses(host: testinfra.host.Host) -> None:
    rules = host.file("/etc/nftables.d/local.nft").content_string
    assert f"tcp dport 9100 ip saddr {{ {ipv4_address(host)} }} accept" in rules
    assert "tcp dport 5433" not in rules


@contextmanager
def listener(host: testinfra.host.Host, port: int) -> Iterator[int]:
    unit = f"paydrop-probe-{port}"
    host.check_output(
        "systemd-run --unit %s python3 -m http.server %s --bind 0.0.0.0", unit, str(port)
    )
    try:
        for _ in range(50):
            if host.socket(f"tcp://0.0.0.0:{port}").is_listening:
                break
            time.sleep(0.1)
        yield port
    finally:
        host.run("systemctl stop %s", unit)


def test_declared_port_admits_its_sources(host: testinfra.host.Host) -> None:
    with listener(host, 8098) as port:
        assert can_connect(ipv4_address(host), port)


def test_port_for_a_group_admits_no_one_else(host: testinfra.host.Host) -> None:
    with listener(host, 9100) as port:
        assert host.run("curl -fsS -o /dev/null http://127.0.0.1:%s/", str(port)).rc == 0
        assert not can_connect(ipv4_address(host), port)


def test_undeclared_port_is_dropped(host: testinfra.host.Host) -> None:
    with listener(host, UNDECLARED_PORT) as port:
        assert host.run("curl -fsS -o /dev/null http://127.0.0.1:%s/", str(port)).rc == 0
        assert not can_connect(ipv4_address(host), port)
    assert can_connect(ipv4_address(host), 22)


def test_firewall_reload_and_stop_leave_docker_tables(host: testinfra.host.Host) -> None:
    assert host.run("systemctl reload nftables").rc == 0
    assert host.run("nft list table ip nat").rc == 0
    assert host.run("systemctl stop nftables").rc == 0
    try:
        assert host.run("nft list table inet paydrop").rc != 0
        assert host.run("nft list table ip nat").rc == 0
    finally:
        host.check_output("systemctl start nftables")
    assert host.run("nft list table inet paydrop").rc == 0


# --- base system -------------------------------------------------------------


def test_admin_user_has_key_and_sudo(host: testinfra.host.Host) -> None:
    ops = host.user("ops")
    assert ops.exists
    assert "paydrop-admins" in ops.groups
    keys = host.file("/home/ops/.ssh/authorized_keys")
    assert keys.user == "ops"
    assert keys.contains("molecule-test-key")
    sudoers = host.file("/etc/sudoers.d/paydrop-admins")
    assert sudoers.mode == 0o440
    assert host.run("visudo -c").rc == 0
    assert host.check_output("sudo -l -U ops").find("NOPASSWD: ALL") >= 0


def test_unattended_upgrades_take_security_updates_only(host: testinfra.host.Host) -> None:
    origins = [
        line
        for line in host.check_output("apt-config dump").splitlines()
        if line.startswith("Unattended-Upgrade::Origins-Pattern::")
    ]
    assert len(origins) == 1
    assert "-security" in origins[0]
    assert host.service("apt-daily-upgrade.timer").is_enabled


def test_time_sync_is_enabled(host: testinfra.host.Host) -> None:
    # In a container the unit skips itself (ConditionVirtualization=!container).
    assert host.service("systemd-timesyncd").is_enabled


def test_kernel_settings_leave_ip_forward_to_docker(host: testinfra.host.Host) -> None:
    lines = host.file("/etc/sysctl.d/90-paydrop.conf").content_string.splitlines()
    assert "net.ipv4.tcp_syncookies = 1" in lines
    assert not [line for line in lines if line.startswith("net.ipv4.ip_forward")]


def test_local_facts_record_the_size(host: testinfra.host.Host) -> None:
    facts = json.loads(host.file("/etc/ansible/facts.d/common.fact").content_string)
    assert facts["server_size"] == "vps_m"
    assert facts["preflight_shortfalls"] == []
    assert facts["admin_users"] == ["ops"]


# --- docker --------------------------------------------------------------------


def test_docker_daemon_settings(host: testinfra.host.Host) -> None:
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config["log-driver"] == "json-file"
    assert config["log-opts"] == {"max-size": "10m", "max-file": "5"}
    assert config["live-restore"] is True
    assert config["ip"] == "127.0.0.1"
    info = json.loads(host.check_output("docker info --format '{{json .}}'"))
    assert info["LiveRestoreEnabled"] is True
    assert info["LoggingDriver"] == "json-file"


@pytest.fixture(scope="module")
def busybox(host: testinfra.host.Host) -> str:
    # No registry: import a static busybox the test-host image carries.
    if host.run("docker image inspect %s", BUSYBOX_IMAGE).rc != 0:
        host.check_output("docker import %s %s", BUSYBOX_TAR, BUSYBOX_IMAGE)
    return BUSYBOX_IMAGE


def test_docker_runs_a_container(host: testinfra.host.Host, busybox: str) -> None:
    out = host.check_output("docker run --rm %s /bin/busybox echo hello-from-container", busybox)
    assert out == "hello-from-container"


@pytest.fixture(scope="module")
def published(host: testinfra.host.Host, busybox: str) -> Iterator[None]:
    """Three containers serving a page, published in the three ways that matter."""
    serve = "/bin/busybox httpd -f -p 8080 -h /www"
    probes = {
        "probe-default": f"{LOOPBACK_PUBLISHED_PORT}:8080",
        "probe-wide": f"0.0.0.0:{WIDE_PUBLISHED_PORT}:8080",
        "probe-declared": f"0.0.0.0:{DECLARED_PUBLISHED_PORT}:8080",
    }
    for name, publish in probes.items():
        host.check_output(f"docker run -d --name {name} -p {publish} {busybox} {serve}")
    try:
        for port in (LOOPBACK_PUBLISHED_PORT, WIDE_PUBLISHED_PORT, DECLARED_PUBLISHED_PORT):
            page = host.check_output(
                "curl -fsS --retry 10 --retry-connrefused --retry-delay 1 http://127.0.0.1:%s/",
                str(port),
            )
            assert page == "paydrop testhost"
        yield
    finally:
        host.run("docker rm -f " + " ".join(probes))


def test_published_port_defaults_to_loopback(host: testinfra.host.Host, published: None) -> None:
    ports = host.check_output("docker port probe-default 8080")
    assert ports.splitlines() == [f"127.0.0.1:{LOOPBACK_PUBLISHED_PORT}"]
    assert not can_connect(ipv4_address(host), LOOPBACK_PUBLISHED_PORT)


def test_published_ports_pass_the_firewall_only_when_declared(
    host: testinfra.host.Host, published: None
) -> None:
    # Docker's DNAT sends these past the input chain; the forward guard of
    # table inet paydrop lets through only the port declared `published: true`.
    address = ipv4_address(host)
    assert not can_connect(address, WIDE_PUBLISHED_PORT)
    assert can_connect(address, DECLARED_PUBLISHED_PORT)
