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
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import testinfra.host
from testinfra.utils.ansible_runner import AnsibleRunner

from tests.support import testhosts

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
testinfra_hosts = [testhosts.spec(name) for name in AnsibleRunner(INVENTORY).get_hosts("lb")]

PLAYBOOKS = Path(__file__).resolve().parents[3] / "playbooks"
FIRST = "0.1.0-molecule"
NEXT = "0.1.0-molecule-next"
BROKEN = "0.1.0-molecule-broken"
STATE_FILE = "/etc/ansible/facts.d/paydrop_release.fact"
SERVER_NAME = "staging.paydrop.example"
UPSTREAM = "/etc/nginx/conf.d/paydrop-upstream.conf"


def playbook(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["ansible-playbook", "-i", INVENTORY, str(PLAYBOOKS / name), *args],
        capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"})
    return result


def output(result: subprocess.CompletedProcess[str]) -> str:
    return " ".join((result.stdout + result.stderr).split())


def changed_tasks(result: subprocess.CompletedProcess[str]) -> list[str]:
    """Names of the tasks that reported a change."""
    changed, task = [], ""
    for line in result.stdout.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed:"):
            changed.append(task)
    return changed


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
def releases(host: testinfra.host.Host) -> None:
    """NEXT and BROKEN, built in the test host's own engine from the scenario's image."""
    for version, extra in ((NEXT, ""), (BROKEN, 'CMD ["sleep", "infinity"]')):
        dockerfile = f"FROM paydrop:{FIRST}\nENV APP_VERSION={version}\n{extra}\n"
        host.check_output("printf %s | docker build -q -t paydrop:%s -", dockerfile, version)


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
    # site.yml never switches colours: the rolled-back release keeps serving.
    # (Known gap, see the issue note: here it still reports 2 changed tasks,
    # which a rollback followed by site.yml in the sandbox does not; they are
    # printed below for the next look.)
    result = playbook("site.yml", "--tags", "app,lb")
    assert result.returncode == 0, output(result)[-3000:]
    print("changed tasks:", changed_tasks(result))
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
    assert f"paydrop-{idle}" in output(result)
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
