"""What the staging host must look like after common and docker converged.

The test host is reached by its container name (the linked staging inventory's
ansible_host names a server, not a container). Network checks connect from
this machine to the test host's address on the scenario's Docker network.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import testinfra.host

from tests.support import scenario
from tests.support.scenario import can_connect, private_address, wait_until

testinfra_hosts = scenario.hosts_of("all")

BUSYBOX_TAR = "/usr/local/share/paydrop-testhost/busybox-rootfs.tar"
BUSYBOX_IMAGE = "paydrop-test/busybox:latest"
UNDECLARED_PORT = 8099
LOOPBACK_PUBLISHED_PORT = 18080
WIDE_PUBLISHED_PORT = 18081
DECLARED_PUBLISHED_PORT = 18082


SCENARIO_DIR = Path(__file__).resolve().parent.parent
ADMIN_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKekivA0NfWgmrNKnkpXjpFsaJ5kr5nicLqnmssnHBaO "
             "molecule-test-key (throwaway)")


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
    # The scenario declares an admin (ops): root may not log in at all.
    assert effective["permitrootlogin"] == "no"
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


def test_sshd_offers_only_keys(host: testinfra.host.Host) -> None:
    # Asked by a client that has no key, sshd names the methods it would
    # accept: publickey only (no password, no keyboard-interactive).
    result = subprocess.run(
        ["ssh", "-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10", f"root@{private_address(host)}", "true"],
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 255
    assert "Permission denied (publickey)." in result.stderr, result.stderr


def test_fail2ban_bans_an_address_that_keeps_failing_ssh_logins(host: testinfra.host.Host) -> None:
    status = host.check_output("fail2ban-client status sshd")
    assert "Journal matches:" in status or "File list:" in status, status
    control = host.check_output("ip -4 route show default | awk '{print $3}'")

    def banned() -> bool:
        return control in host.check_output("fail2ban-client get sshd banip")

    try:
        # Failed logins until fail2ban bans the control node (maxretry 5; an attempt may count
        # twice). The ban can land mid-handshake, which then hangs: that attempt is cut short.
        for _ in range(8):
            if banned():
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(
                    ["ssh", "-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no", "-o", "StrictHostKeyChecking=no",
                     "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5",
                     f"no-such-user-{uuid.uuid4().hex[:6]}@{private_address(host)}", "true"],
                    capture_output=True, timeout=10, check=False)
        assert wait_until(banned, "fail2ban banning the control node", timeout=30, interval=1)
        # The ban is a drop in fail2ban's own nftables table: a new connection now hangs.
        assert not can_connect(private_address(host), 22, timeout=3)
        assert "f2b" in host.check_output("nft list tables")
    finally:
        host.run("fail2ban-client set sshd unbanip %s", control)
    assert can_connect(private_address(host), 22)


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
    # exporters for the monitoring group (node 9100, nginx 9113); journal-remote
    # (19532) for the fleet's hosts (staging1 is its own log server); and the
    # test-only extra rules of molecule/default/host_vars: 5433 names a group
    # without hosts (db_replica), so it stays closed.
    assert accepted_input_ports(host) == {22, 80, 443, 5432, 6379, 8001, 8002, 8098, 9100, 9109, 9113, 19532}


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
    assert f"tcp dport 9109 ip saddr {{ {private_address(host)} }} accept" in rules
    assert "tcp dport 5433" not in rules


@contextmanager
def listener(host: testinfra.host.Host, port: int) -> Iterator[int]:
    """A server of our own on `port`: the checks below talk to it, never to a foreign listener."""
    assert not scenario.listener_pids(host, port), f"something already listens on {port}"
    unit = f"paydrop-probe-{port}"
    host.run("systemctl reset-failed %s", unit)
    host.check_output(
        "systemd-run --unit %s python3 -m http.server %s --bind 0.0.0.0", unit, str(port)
    )
    try:
        scenario.wait_for_unit_listening(host, unit, port)
        yield port
    finally:
        host.run("systemctl stop %s", unit)


def test_declared_port_admits_its_sources(host: testinfra.host.Host) -> None:
    with listener(host, 8098) as port:
        assert can_connect(private_address(host), port)


def test_port_for_a_group_admits_no_one_else(host: testinfra.host.Host) -> None:
    with listener(host, 9109) as port:
        assert host.run("curl -fsS -o /dev/null http://127.0.0.1:%s/", str(port)).rc == 0
        assert not can_connect(private_address(host), port)


def test_undeclared_port_is_dropped(host: testinfra.host.Host) -> None:
    with listener(host, UNDECLARED_PORT) as port:
        assert host.run("curl -fsS -o /dev/null http://127.0.0.1:%s/", str(port)).rc == 0
        assert not can_connect(private_address(host), port)
    assert can_connect(private_address(host), 22)


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


def test_admin_user_has_exactly_its_keys_and_sudo(host: testinfra.host.Host) -> None:
    ops = host.user("ops")
    assert ops.exists
    assert "paydrop-admins" in ops.groups
    keys = host.file("/home/ops/.ssh/authorized_keys")
    assert (keys.user, keys.mode) == ("ops", 0o600)
    # Exactly the listed key: a key added by hand is removed by the next run.
    assert [line for line in keys.content_string.splitlines() if line.strip()] == [ADMIN_KEY]
    sudoers = host.file("/etc/sudoers.d/paydrop-admins")
    assert sudoers.mode == 0o440
    assert host.run("visudo -c").rc == 0
    assert "(ALL : ALL) NOPASSWD: ALL" in host.check_output("sudo -l -U ops")


def test_a_sudoers_file_visudo_refuses_never_lands(host: testinfra.host.Host) -> None:
    before = host.file("/etc/sudoers.d/paydrop-admins").sha256sum
    # A group name that renders a line sudo cannot parse (groupadd is skipped:
    # the run starts at the sudoers task).
    bad = json.dumps({"common_admin_group": "paydrop-admins ALL=(ALL) ALL\nnot sudoers syntax ("})
    run = scenario.playbook(SCENARIO_DIR / "common-users.yml", "-e", bad,
                            "--start-at-task", "Let the admin group use sudo", timeout=300)
    assert run.returncode != 0
    assert "failed to validate" in scenario.output(run)
    assert host.file("/etc/sudoers.d/paydrop-admins").sha256sum == before
    assert host.run("visudo -c").rc == 0
    assert "NOPASSWD: ALL" in host.check_output("sudo -l -U ops")


def test_unattended_upgrades_take_security_updates_only(host: testinfra.host.Host) -> None:
    config = host.check_output("apt-config dump").splitlines()
    origins = [line for line in config if line.startswith("Unattended-Upgrade::Origins-Pattern::")]
    assert len(origins) == 1
    assert "-security" in origins[0]
    # The role's own switches (Debian ships none: without them nothing runs).
    assert 'APT::Periodic::Update-Package-Lists "1";' in config
    assert 'APT::Periodic::Unattended-Upgrade "1";' in config
    # What unattended-upgrade itself will take, in its own words.
    dry_run = host.run("unattended-upgrade --dry-run --debug 2>&1 | grep -m1 'Allowed origins are'")
    assert dry_run.stdout.strip() == (
        "Allowed origins are: origin=Debian,codename=bookworm-security,label=Debian-Security"), dry_run.stdout


def test_time_sync_is_enabled(host: testinfra.host.Host) -> None:
    # In a container the unit skips itself (ConditionVirtualization=!container).
    assert host.service("systemd-timesyncd").is_enabled


def test_kernel_settings_take_effect_and_leave_ip_forward_to_docker(host: testinfra.host.Host) -> None:
    lines = host.file("/etc/sysctl.d/90-paydrop.conf").content_string.splitlines()
    settings = dict(line.split(" = ", 1) for line in lines if " = " in line and not line.startswith("#"))
    assert settings["net.ipv4.tcp_syncookies"] == "1"
    assert "net.ipv4.ip_forward" not in settings
    net = {key: value for key, value in settings.items() if key.startswith("net.")}
    # What systemd-sysctl applies at boot: no later file overrides ours.
    last: dict[str, str] = {}
    for line in host.check_output("/lib/systemd/systemd-sysctl --cat-config").splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, _, value = line.partition("=")
            last[key.strip().lstrip("-")] = value.strip()
    assert {key: last.get(key) for key in settings} == settings
    # Live values. A test container's /proc/sys is read-only (systemd-sysctl
    # skips itself there), so apply the file the way systemd-sysctl does in a
    # fresh network namespace with its own /proc and read what the kernel holds.
    read_only = "ro" in host.check_output("findmnt -no OPTIONS /proc/sys").split(",")
    read = "sysctl -n %s" if not read_only else (
        "unshare -f -p -n -m --mount-proc sh -c 'sysctl -q -p /etc/sysctl.d/90-paydrop.conf && sysctl -n %s'")
    live = {key: host.check_output(read, key) for key in net}
    assert live == net
    assert host.check_output("sysctl -n net.ipv4.ip_forward") == "1"


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
    assert not can_connect(private_address(host), LOOPBACK_PUBLISHED_PORT)


def test_published_ports_pass_the_firewall_only_when_declared(
    host: testinfra.host.Host, published: None
) -> None:
    # Docker's DNAT sends these past the input chain; the forward guard of
    # table inet paydrop lets through only the port declared `published: true`.
    address = private_address(host)
    assert not can_connect(address, WIDE_PUBLISHED_PORT)
    assert can_connect(address, DECLARED_PUBLISHED_PORT)
