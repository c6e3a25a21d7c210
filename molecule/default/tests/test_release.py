"""Blue-green releases on staging1 with the real playbooks/deploy.yml.

Runs after the role checks (file name order): blue serves the scenario's
release. Two more releases are built inside the test host from that image
(offline: `FROM` a local image), each reporting its own version:
  NEXT    a good release
  BROKEN  one that never gets ready (its server never starts)
Then, in order: deploy NEXT (switch to green), roll back (blue again),
site.yml afterwards keeps the release that serves, a
failed deploy of BROKEN leaves blue serving and the state untouched, a release
whose image exists nowhere is refused before anything changes.
Each answer is read through nginx on the host (HTTPS, by the server name).
The module puts the host back as it found it (release state, slots, images),
so the other modules do not depend on running before or after it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import testinfra.host

from tests.support import scenario
from tests.support.scenario import changed_tasks, output

testinfra_hosts = scenario.hosts_of("lb")

PLAYBOOKS = Path(__file__).resolve().parents[3] / "playbooks"
FIRST = "0.1.0-molecule"
NEXT = "0.1.0-molecule-next"
BROKEN = "0.1.0-molecule-broken"
STATE_FILE = "/etc/ansible/facts.d/paydrop_release.fact"
SERVER_NAME = "staging.paydrop.example"
UPSTREAM = "/etc/nginx/conf.d/paydrop-upstream.conf"


def playbook(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return scenario.playbook(PLAYBOOKS / name, *args)


def through_nginx(host: testinfra.host.Host) -> tuple[int, dict[str, str], dict[str, Any]]:
    """GET /api/health/ready the way a client does: HTTPS to nginx by its server name."""
    raw = host.check_output(
        "curl -sk -D - --max-time 10 --resolve %s:443:127.0.0.1 https://%s/api/health/ready",
        SERVER_NAME, SERVER_NAME)
    head, _, body = raw.replace("\r\n", "\n").partition("\n\n")
    status = int(head.split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head.splitlines()[1:])}
    return status, headers, json.loads(body)


def state(host: testinfra.host.Host) -> dict[str, Any]:
    return json.loads(host.file(STATE_FILE).content_string)


def running_release(host: testinfra.host.Host, color: str) -> str:
    out = host.run("docker inspect --format '{{.State.Running}} {{index .Config.Labels \"org.paydrop.release\"}}' "
                   "paydrop-%s", color)
    return out.stdout.strip() if out.rc == 0 else ""


@pytest.fixture(scope="module", autouse=True)
def releases(host: testinfra.host.Host) -> Iterator[None]:
    """NEXT and BROKEN, built in the test host's own engine from the scenario's image.

    Afterwards the host is put back as the module found it: the recorded
    state, the slots that ran, no extra images.
    """
    saved_state = "/root/paydrop_release.fact.before-test-release"
    host.check_output("cp -p %s %s", STATE_FILE, saved_state)
    slots_before = set(host.check_output(
        "docker ps -a --filter label=org.paydrop.slot --format '{{.Names}}'").split())
    for version, extra in ((NEXT, ""), (BROKEN, 'CMD ["sleep", "infinity"]')):
        dockerfile = f"FROM paydrop:{FIRST}\nENV APP_VERSION={version}\n{extra}\n"
        host.check_output("printf %s | docker build -q -t paydrop:%s -", dockerfile, version)
    try:
        yield
    finally:
        slots_after = set(host.check_output(
            "docker ps -a --filter label=org.paydrop.slot --format '{{.Names}}'").split())
        for extra_slot in sorted(slots_after - slots_before):
            host.run("docker rm -f %s", extra_slot)
        host.check_output("cp -p %s %s && rm -f %s", saved_state, STATE_FILE, saved_state)
        host.run("docker rmi paydrop:%s paydrop:%s", NEXT, BROKEN)


def test_the_first_release_serves_from_blue(host: testinfra.host.Host) -> None:
    status, headers, body = through_nginx(host)
    assert (status, body["version"], headers["x-release"]) == (200, FIRST, FIRST)
    assert state(host) == {"active": "blue", "previous": None, "slots": {"blue": FIRST, "green": None}}


def test_deploy_starts_the_idle_colour_and_switches_to_it(host: testinfra.host.Host) -> None:
    result = playbook("deploy.yml", "-e", f"app_version={NEXT}")
    assert result.returncode == 0, output(result)[-3000:]

    status, headers, body = through_nginx(host)
    assert (status, body["version"], headers["x-release"]) == (200, NEXT, NEXT)
    assert state(host) == {"active": "green", "previous": "blue", "slots": {"blue": FIRST, "green": NEXT}}
    assert ":8002" in host.file(UPSTREAM).content_string
    # The previous release stays up, idle, for an instant rollback.
    assert running_release(host, "blue") == f"true {FIRST}"
    assert running_release(host, "green") == f"true {NEXT}"


def test_rollback_switches_back_to_the_previous_release(host: testinfra.host.Host) -> None:
    result = playbook("deploy.yml", "--tags", "rollback")
    assert result.returncode == 0, output(result)[-3000:]

    status, headers, body = through_nginx(host)
    assert (status, body["version"], headers["x-release"]) == (200, FIRST, FIRST)
    assert state(host) == {"active": "blue", "previous": "green", "slots": {"blue": FIRST, "green": NEXT}}
    assert ":8001" in host.file(UPSTREAM).content_string


def test_site_yml_after_a_rollback_keeps_the_release(host: testinfra.host.Host) -> None:
    # site.yml never switches colours: the rolled-back release keeps serving,
    # and finds nothing to change (it runs against the scenario's inventory
    # directory, as Molecule's converge does: with the staging group_vars).
    result = playbook("site.yml", "--tags", "app,lb")
    assert result.returncode == 0, output(result)[-3000:]
    assert changed_tasks(result) == []
    assert scenario.recap_changed(result, "staging1") == 0
    status, _, body = through_nginx(host)
    assert (status, body["version"]) == (200, FIRST)
    assert state(host)["active"] == "blue"
    assert ":8001" in host.file(UPSTREAM).content_string


def test_a_release_that_never_gets_ready_leaves_the_old_one_serving(host: testinfra.host.Host) -> None:
    before = state(host)
    upstream = host.file(UPSTREAM).content_string

    result = playbook("deploy.yml", "-e", f"app_version={BROKEN}", "-e", "app_ready_timeout=20")

    assert result.returncode != 0
    idle = "green" if before["active"] == "blue" else "blue"
    # Refused for the reason under test (never ready), not any other failure.
    assert f"staging1: paydrop-{idle} (release {BROKEN}) did not answer 200 on" in output(result)
    assert "within 20 s" in output(result)
    status, _, body = through_nginx(host)
    assert (status, body["version"]) == (200, FIRST)
    assert state(host) == before
    assert host.file(UPSTREAM).content_string == upstream


def test_a_release_without_an_image_is_refused_before_anything_changes(host: testinfra.host.Host) -> None:
    before = state(host)

    result = playbook("deploy.yml", "-e", "app_version=0.0.0-nowhere")

    assert result.returncode != 0
    assert "make image-archive" in output(result)
    status, _, body = through_nginx(host)
    assert (status, body["version"]) == (200, FIRST)
    assert state(host) == before
    assert running_release(host, "blue") == f"true {FIRST}"


def test_deploy_refuses_an_empty_version(host: testinfra.host.Host) -> None:
    # (staging1's test inventory names app_version for site.yml's first deploy,
    # so "no -e at all" would deploy that one.)
    result = playbook("deploy.yml", "-e", "app_version=")
    assert result.returncode != 0
    assert "-e app_version=" in output(result)
