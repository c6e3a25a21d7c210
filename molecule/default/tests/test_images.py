"""Old release images pruned on staging1 (the app role's `prune`, run by deploy.yml).

The module gives the host more images than app_images_keep (3), each created a
second after the one before, in this order: one the release state records
(temporarily, as green's release and the previous colour), one a stopped
container uses, two that are neither, and three newer ones. After
`deploy.yml --tags prune` the newest three, the recorded one, the used one and
the scenario's release (active) remain, and the two others are gone; a second
run changes nothing. Check mode and refused settings remove nothing. The state
file, the extra images and the container are put back as they were.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import testinfra.host

from tests.support import scenario

testinfra_hosts = scenario.hosts_of("app")

VERSION = "0.1.0-molecule"
STATE_FILE = "/etc/ansible/facts.d/paydrop_release.fact"
SCENARIO_DIR = Path(__file__).resolve().parent.parent
ENTRY_POINTS = SCENARIO_DIR / "entry_points.yml"
DEPLOY = SCENARIO_DIR.parent.parent / "playbooks" / "deploy.yml"
# The task that removes images (in the role) and the play's task that runs it (in deploy.yml).
REMOVE_TASK = "paydrop.stack.app : Remove the release images beyond the newest app_images_keep"
DEPLOY_TASK = "Prune the release images"

# Oldest first. app_images_keep defaults to 3.
RECORDED = "prune-test-recorded"
USED = "prune-test-used"
OLD = ["prune-test-old-1", "prune-test-old-2"]
NEWEST = ["prune-test-new-1", "prune-test-new-2", "prune-test-new-3"]
EXTRA = [RECORDED, USED, *OLD, *NEWEST]
CONTAINER = "prune-test-stopped"


def release_tags(host: testinfra.host.Host) -> set[str]:
    """The tags of the `paydrop` images on the host."""
    out = host.check_output("docker images --format '{{.Tag}}' paydrop")
    return set(out.split())


def prune(*args: str) -> subprocess.CompletedProcess[str]:
    return scenario.playbook(DEPLOY, "--tags", "prune", *args, timeout=600)


def entry_point(name: str, **extra: Any) -> subprocess.CompletedProcess[str]:
    return scenario.playbook(ENTRY_POINTS, "-e", json.dumps({"paydrop_entry_point": name, **extra}),
                             timeout=600)


@pytest.fixture(scope="module")
def extra_images(host: testinfra.host.Host) -> Iterator[set[str]]:
    """The images above, RECORDED as green's release in the state, USED by a stopped container;
    yields the tags on the host before any pruning."""
    assert not release_tags(host) & set(EXTRA), "a previous run left test images behind"
    backup = "/root/paydrop_release.fact.before-test"
    host.check_output("cp -p %s %s", STATE_FILE, backup)
    state = json.loads(host.file(STATE_FILE).content_string)
    assert state["active"] == "blue" and state["slots"]["green"] is None, state
    try:
        for tag in EXTRA:
            # An empty image of its own: `docker tag` would copy another image's creation time.
            host.check_output("tar -cf - -T /dev/null | docker import -c 'LABEL org.paydrop.test=%s' - paydrop:%s",
                              tag, tag)
            time.sleep(1.1)  # Docker lists creation times in whole seconds
        host.check_output("docker create --name %s paydrop:%s true", CONTAINER, USED)
        recorded = {**state, "previous": "green", "slots": {**state["slots"], "green": RECORDED}}
        encoded = base64.b64encode(json.dumps(recorded).encode()).decode()
        host.check_output(f"echo {encoded} | base64 -d > {STATE_FILE}")
        yield release_tags(host)
    finally:
        host.run("docker rm -f %s", CONTAINER)
        for tag in EXTRA:
            host.run("docker rmi paydrop:%s", tag)
        host.check_output("cp -p %s %s && rm -f %s", backup, STATE_FILE, backup)


@dataclass
class Runs:
    before: set[str]
    check: subprocess.CompletedProcess[str]
    after_check: set[str]
    refused: dict[str, subprocess.CompletedProcess[str]]
    after_refused: set[str]
    first: subprocess.CompletedProcess[str]
    after_first: set[str]
    second: subprocess.CompletedProcess[str]
    after_second: set[str]


@pytest.fixture(scope="module")
def runs(host: testinfra.host.Host, extra_images: set[str]) -> Runs:
    """Every run of the module, in the order that matters: check mode and the refusals while
    every image is still there, then the pruning twice."""
    check = prune("--check")
    after_check = release_tags(host)
    refused = {
        "prune": entry_point("prune", app_images_keep=1),
        "assert": entry_point("assert", app_images_keep=1),
        "not an integer": entry_point("prune", app_images_keep="three"),
    }
    after_refused = release_tags(host)
    first = prune()
    after_first = release_tags(host)
    second = prune()
    return Runs(extra_images, check, after_check, refused, after_refused, first, after_first, second,
                release_tags(host))


def test_the_newest_and_the_recorded_and_used_releases_remain(runs: Runs) -> None:
    assert runs.first.returncode == 0, scenario.output(runs.first)[-3000:]
    assert runs.before == {VERSION, *EXTRA}
    assert runs.after_first == {VERSION, RECORDED, USED, *NEWEST}
    assert sorted(scenario.changed_tasks(runs.first)) == [REMOVE_TASK] * len(OLD)
    for tag in OLD:
        assert f"changed: [staging1] => (item=paydrop:{tag})" in runs.first.stdout


def test_a_second_run_changes_nothing(runs: Runs) -> None:
    assert runs.second.returncode == 0, scenario.output(runs.second)[-3000:]
    assert scenario.recap_changed(runs.second, "staging1") == 0, scenario.changed_tasks(runs.second)
    assert runs.after_second == runs.after_first


def test_check_mode_says_what_it_would_remove_and_removes_nothing(runs: Runs) -> None:
    assert runs.check.returncode == 0, scenario.output(runs.check)[-3000:]
    assert runs.after_check == runs.before
    for tag in OLD:
        assert f"changed: [staging1] => (item=paydrop:{tag})" in runs.check.stdout


@pytest.mark.parametrize("entry", ["prune", "assert"])
def test_keeping_fewer_than_two_is_refused(runs: Runs, entry: str) -> None:
    result = runs.refused[entry]
    assert result.returncode != 0
    assert "staging1: app_images_keep must be at least 2 (got '1')" in scenario.output(result)
    assert runs.after_refused == runs.before


def test_a_keep_that_is_not_a_number_fails_the_argument_spec(runs: Runs) -> None:
    text = scenario.output(runs.refused["not an integer"])
    assert runs.refused["not an integer"].returncode != 0
    assert "Validating arguments against arg spec 'prune'" in text
    assert "app_images_keep" in text and "unable to convert to int" in text
    assert runs.after_refused == runs.before


def test_only_a_release_prunes_a_rollback_does_not() -> None:
    def tasks(*args: str) -> str:
        result = scenario.playbook(DEPLOY, "--list-tasks", *args)
        assert result.returncode == 0, scenario.output(result)[-3000:]
        return result.stdout
    assert DEPLOY_TASK in tasks()
    assert DEPLOY_TASK in tasks("--tags", "prune")
    assert DEPLOY_TASK not in tasks("--tags", "rollback")
