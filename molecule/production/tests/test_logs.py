"""Central logs on the fleet: every host's journal reaches mon1 over HTTPS
(systemd-journal-upload -> systemd-journal-remote, certificates of the
collection's journal CA), so one request id can be followed across hosts on
mon1 alone (docs/runbook.md, "Follow one request across hosts").
"""

from __future__ import annotations

import json
import shlex
import uuid
from typing import Any

import pytest
import testinfra
from conftest import tcp_probe

from tests.support import fleet, scenario, testhosts

Host = testinfra.host.Host

REMOTE_DIR = "/var/log/journal/remote"
PORT = 19532
TLS_DIR = "/etc/ssl/paydrop-journal"
FLEET = ("lb1", "app1", "app2", "db1", "db2", "redis1", "mon1")
# A request reaches mon1 after nginx and the app have logged it and journal-upload
# has posted it: seconds normally; generous for a busy test machine.
DEADLINE = 90


def name_of(spec: str) -> str:
    return spec.removeprefix("docker://").removesuffix(f"-{testhosts.checkout_id()}")


@pytest.fixture(scope="module")
def mon() -> Host:
    return testinfra.get_host(scenario.hosts_of("monitoring")[0])


def senders() -> list[str]:
    """Every host of the fleet but the log server (the first monitoring host)."""
    server = name_of(scenario.hosts_of("monitoring")[0])
    return [name for name in FLEET if name != server]


def remote_entries(mon: Host, pattern: str) -> list[dict[str, Any]]:
    """Entries of the received journals whose message matches `pattern`."""
    out = mon.run(f"journalctl -D {REMOTE_DIR} -o json --no-pager -g {shlex.quote(pattern)}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def message(entry: dict[str, Any]) -> str:
    """MESSAGE as text (journald gives bytes as a list of numbers when not UTF-8)."""
    value = entry.get("MESSAGE", "")
    return bytes(value).decode(errors="replace") if isinstance(value, list) else str(value)


def test_a_request_id_is_found_on_mon1_from_lb1_and_the_app_host(mon: Host) -> None:
    request_id = f"molecule-logs-{uuid.uuid4().hex}"
    lb1 = fleet.host("lb1")
    # With a session cookie, as a signed-in shopper: the load balancer's page
    # cache never answers for one, so the request reaches an app slot.
    status = lb1.check_output(
        "curl -sk -o /dev/null -w '%%{http_code}' --max-time 20 "
        "--resolve %s:443:127.0.0.1 -H %s -H %s https://%s/",
        fleet.SERVER_NAME, f"X-Request-ID: {request_id}", "Cookie: paydrop_session=molecule-logs",
        fleet.SERVER_NAME)
    assert status == "200", status
    hostnames = {name: fleet.host(name).check_output("hostname") for name in ("lb1", *fleet.APP_HOSTS)}

    def both() -> dict[str, list[dict[str, Any]]] | None:
        found: dict[str, list[dict[str, Any]]] = {}
        for entry in remote_entries(mon, request_id):
            found.setdefault(entry.get("SYSLOG_IDENTIFIER", ""), []).append(entry)
        return found if "nginx_access" in found and any(k.startswith("paydrop-") for k in found) else None

    found = scenario.wait_until(both, f"request {request_id} from lb1's nginx and an app slot on mon1",
                                timeout=DEADLINE, interval=2)

    (access,) = found["nginx_access"]
    assert access["_HOSTNAME"] == hostnames["lb1"], access["_HOSTNAME"]
    line = json.loads(message(access))
    assert line["request_id"] == request_id and line["status"] == 200, line
    # The app host that answered: the access line's upstream address.
    upstream = line["upstream_addr"].split(":")[0]
    served_by = next(name for name in fleet.APP_HOSTS if fleet.private_address(name) == upstream)
    slot_entries = [e for k, v in found.items() if k.startswith("paydrop-") for e in v]
    assert {e["_HOSTNAME"] for e in slot_entries} == {hostnames[served_by]}, (served_by, slot_entries)
    app_line = json.loads(message(slot_entries[0]))
    assert app_line["request_id"] == request_id and app_line["status"] == 200, app_line
    assert slot_entries[0]["CONTAINER_NAME"] == slot_entries[0]["SYSLOG_IDENTIFIER"]
    print(f"\n{request_id}: lb1 (nginx_access) and {served_by} ({slot_entries[0]['CONTAINER_NAME']}) on mon1")


def test_every_other_host_sends_and_mon1_receives(mon: Host) -> None:
    assert mon.service("systemd-journal-remote.socket").is_running
    assert not mon.service("systemd-journal-upload").is_enabled
    for name in senders():
        sender = fleet.host(name)
        assert sender.service("systemd-journal-upload").is_running, name
        assert sender.service("systemd-journal-upload").is_enabled, name
    # One journal file set per sender, named after its address (remote-<address>.journal).
    files = mon.check_output(f"ls {REMOTE_DIR}").split()
    missing = [name for name in senders() if f"remote-{fleet.private_address(name)}.journal" not in files]
    assert not missing, (missing, files)


def test_keys_are_the_services_own_and_the_certificates_come_from_the_journal_ca(mon: Host) -> None:
    for name in ("mon1", *senders()):
        host = fleet.host(name)
        key = host.file(f"{TLS_DIR}/host.key")
        user = "systemd-journal-remote" if name == "mon1" else "systemd-journal-upload"
        assert (key.user, key.mode) == (user, 0o600), name
        host.check_output(f"openssl verify -CAfile {TLS_DIR}/ca.crt {TLS_DIR}/host.crt")
    ca_key = mon.file("/etc/paydrop-pki/journal-ca/ca.key")
    assert (ca_key.user, ca_key.mode) == ("root", 0o600)
    # The CA key never leaves the log server.
    assert not fleet.host("app1").file("/etc/paydrop-pki/journal-ca").exists


def test_the_journal_port_is_open_to_the_fleet_only_and_speaks_tls_with_the_journal_ca(mon: Host) -> None:
    address = fleet.private_address("mon1")
    listening = set(mon.check_output(f"ss -Hltn 'sport = :{PORT}' | awk '{{print $4}}'").split())
    assert listening == {f"{address}:{PORT}"}, listening
    app1 = fleet.host("app1")
    assert tcp_probe(app1, address, PORT) == 0
    # The senders verify mon1: its certificate chains to the journal CA and names its address;
    # with the system's CAs only, the same connection fails verification (curl: 60).
    assert app1.run(f"curl -s -o /dev/null --max-time 10 --cacert {TLS_DIR}/ca.crt https://{address}:{PORT}/").rc == 0
    assert app1.run(f"curl -s -o /dev/null --max-time 10 https://{address}:{PORT}/").rc == 60
    # No plain HTTP.
    assert app1.run(f"curl -s -o /dev/null --max-time 10 http://{address}:{PORT}/upload").rc != 0
    # Debian 12's journal-remote is built without GnuTLS: it cannot check client
    # certificates and says so (roles/monitoring/README.md, "Known limits"). The
    # firewall is what keeps everyone but the fleet out: its rule names exactly
    # the fleet's addresses. When a Debian release checks them, this line fails
    # and the README's limit can go.
    assert "Certificate checking disabled." in mon.check_output("journalctl -u systemd-journal-remote -o cat")
    rules = mon.check_output("nft list table inet paydrop")
    (rule,) = [line for line in rules.splitlines() if f"tcp dport {PORT} " in line]
    sources = set(rule.split("{", 1)[1].split("}", 1)[0].replace(",", " ").split())
    assert sources == {fleet.private_address(name) for name in FLEET}, rule


def test_retention_timer_keeps_the_received_journals_bounded(mon: Host) -> None:
    assert mon.service("paydrop-journal-remote-vacuum.timer").is_enabled
    unit = mon.check_output("systemctl cat paydrop-journal-remote-vacuum.service")
    assert f"--directory={REMOTE_DIR}" in unit and "--vacuum-size=" in unit and "--vacuum-time=" in unit, unit
    run = mon.run("systemctl start paydrop-journal-remote-vacuum.service")
    assert run.rc == 0, run.stderr
