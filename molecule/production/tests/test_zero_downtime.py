"""Releases and failures on the fleet, each under steady load through the load
balancer (about 50 requests/s from the control node to lb1's HTTPS port on
127.0.0.1: catalog page, product page, readiness, a download), with the counts
printed:

1. deploy.yml releases NEXT: no failed request; readiness flips to NEXT;
   migrations run once for the fleet.
2. --tags rollback: the same, back to FIRST; a second rollback changes nothing.
3. A release that never gets ready on app2 only: the playbook fails naming
   app2, the load balancer never switches, no failed request.
4. A release every app host reports ready but the load balancer cannot reach:
   deploy.yml switches, its check through the load balancer fails, and it
   switches back by itself; the old release answers.
5. A secret rotated through site.yml: the app hosts restart one at a time,
   no failed request.
6. app2's slot stopped under load: at most a handful of failed requests, none
   once nginx has marked it down; started again, app2 takes traffic again.

Destructive (releases, stops app2's slot): runs after the other modules
(conftest.py orders them).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support import fleet
from tests.support.load import READY_PATH, Load

NEXT = "0.1.0-molecule-next"
BROKEN_ON_APP2 = "0.1.0-molecule-broken-on-app2"
SLUG = "fleet-field-notes"
ROTATED = "whsec_rotated-test-only"


@pytest.fixture(scope="module")
def paths() -> list[str]:
    """The load's mix; the download needs the product test_fleet.py added."""
    products = fleet.sql(f"SELECT count(*) FROM products WHERE slug = '{SLUG}'")
    assert products == "1", "test_fleet.py adds the product the load downloads"
    token = fleet.download_token(SLUG)
    return ["/", f"/products/{SLUG}", READY_PATH, f"/downloads/{token}"]


@pytest.fixture(scope="module", autouse=True)
def releases() -> None:
    fleet.build_release(NEXT)
    fleet.build_release(BROKEN_ON_APP2, broken_on=("app2",))


class Notices:
    """A Slack-compatible webhook receiver on the control node (deploy.yml posts from there)."""

    def __init__(self) -> None:
        received: list[dict[str, str]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # the server binds its own port
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/deploys"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def arg(self) -> str:
        return f"deploy_notify_webhook_url={self.url}"

    def texts(self) -> list[str]:
        return [notice["text"] for notice in self.received]


@pytest.fixture(scope="module")
def notices() -> Iterator[Notices]:
    receiver = Notices()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def load(paths: list[str]) -> Load:
    return Load("127.0.0.1", fleet.published_https_port(), fleet.SERVER_NAME, str(fleet.CA_FILE), paths,
                rate=50, threads=10, max_seconds=900)


@pytest.fixture
def under_load(paths: list[str]) -> Iterator[Load]:
    generator = load(paths)
    with generator:
        time.sleep(3)  # the load is steady before the action starts
        yield generator
        time.sleep(3)  # and keeps going a little after it ended
    print(f"\nload: {generator.report()}")


def assert_switched(load: Load, old: str, new: str, done: float) -> None:
    """The old release answered first and the new one last; once the playbook had returned,
    only the new one (the two may alternate during nginx's graceful reload, never after)."""
    seen = load.versions()
    assert seen[0] == old and seen[-1] == new and set(seen) == {old, new}, seen
    assert load.versions(since=done) == [new], load.report()


# The README's commands ("Deploy to your own servers"), as an operator types them.
SITE, DEPLOY, ROLLBACK, ROLLBACK_TO = fleet.readme_commands()


def test_deploy_under_load_switches_without_a_failed_request(under_load: Load, notices: Notices) -> None:
    result = fleet.readme_playbook(DEPLOY, "-e", notices.arg(), **{"app_version=1.4.0": f"app_version={NEXT}"})
    assert result.returncode == 0, fleet.output(result)
    switched = under_load.elapsed()
    time.sleep(2)

    assert under_load.failures() == []
    assert_switched(under_load, fleet.FIRST, NEXT, switched)
    assert [fleet.state(name)["active"] for name in fleet.APP_HOSTS] == ["green", "green"]
    assert fleet.active_color() == "green"
    # Migrations run once for the fleet, not once per app host.
    assert len(fleet.task_hosts(result, "Apply the release's database migrations")) == 1
    # One notice, and the webhook's address (a credential) is not in the output.
    assert len(notices.texts()) == 1, notices.texts()
    assert f"deployed {fleet.FIRST} → {NEXT} on inventory: succeeded after " in notices.texts()[0]
    assert notices.url not in result.stdout + result.stderr


def test_rollback_under_load_switches_back_and_a_retry_changes_nothing(under_load: Load, notices: Notices) -> None:
    notices.received.clear()
    result = fleet.readme_playbook(ROLLBACK, "-e", notices.arg())
    assert result.returncode == 0, fleet.output(result)
    switched = under_load.elapsed()
    time.sleep(2)
    assert under_load.failures() == []
    assert_switched(under_load, NEXT, fleet.FIRST, switched)
    assert fleet.active_color() == "blue"
    expected = {"active": "blue", "previous": "green", "slots": {"blue": fleet.FIRST, "green": NEXT},
                "rolled_back_from": NEXT}
    assert [fleet.state(name) for name in fleet.APP_HOSTS] == [expected, expected]

    assert len(notices.texts()) == 1 and f"rolled back {NEXT} → {fleet.FIRST} on inventory: succeeded" \
        in notices.texts()[0], notices.texts()

    again = fleet.readme_playbook(ROLLBACK, "-e", notices.arg())
    assert again.returncode == 0, fleet.output(again)
    assert len(notices.texts()) == 1, "a rollback that changed nothing sent a notice"
    assert "Nothing to roll back" in fleet.output(again)
    assert all(c["changed"] == 0 for c in fleet.recap(again).values()), fleet.changed_tasks(again)
    assert fleet.active_color() == "blue"
    assert [fleet.state(name) for name in fleet.APP_HOSTS] == [expected, expected]


def test_a_rollback_to_a_release_that_is_not_kept_is_refused() -> None:
    before = [fleet.state(name) for name in fleet.APP_HOSTS]
    result = fleet.readme_playbook(ROLLBACK_TO)  # 1.3.2: no slot holds it
    assert result.returncode != 0
    assert "release 1.3.2 is not one of the two kept" in fleet.output(result)
    assert [fleet.state(name) for name in fleet.APP_HOSTS] == before
    assert fleet.active_color() == "blue"


def test_the_readmes_site_yml_after_the_rollback_keeps_it_and_changes_nothing() -> None:
    """The first-run command of the README, run again on a live fleet: its app_version is
    ignored (the app hosts' state decides), nothing changes."""
    result = fleet.readme_playbook(SITE + ["--tags", "app,lb"], **{"app_version=1.4.0": f"app_version={NEXT}"})
    assert result.returncode == 0, fleet.output(result)
    assert all(c["changed"] == 0 for c in fleet.recap(result).values()), fleet.changed_tasks(result)
    assert fleet.active_color() == "blue"
    assert [fleet.state(name)["active"] for name in fleet.APP_HOSTS] == ["blue", "blue"]


def test_a_release_unready_on_app2_only_never_switches(under_load: Load, notices: Notices) -> None:
    before = fleet.host("lb1").file(fleet.UPSTREAM).content_string
    states = [fleet.state(name) for name in fleet.APP_HOSTS]
    notices.received.clear()

    result = fleet.playbook("deploy.yml", "-e", f"app_version={BROKEN_ON_APP2}", "-e", "app_ready_timeout=20",
                            "-e", notices.arg())
    assert result.returncode != 0
    text = fleet.output(result, tail=50000)
    assert f"app2: paydrop-green (release {BROKEN_ON_APP2}) did not answer 200" in text
    # Nothing shared changed: the upstream, the colour, every host's state.
    assert fleet.host("lb1").file(fleet.UPSTREAM).content_string == before
    assert fleet.active_color() == "blue"
    assert [fleet.state(name) for name in fleet.APP_HOSTS] == states
    assert "Point the upstream at the new colour" not in result.stdout
    assert under_load.failures() == []
    assert under_load.versions() == [fleet.FIRST]
    assert len(notices.texts()) == 1, notices.texts()
    assert f"deployed {fleet.FIRST} → {BROKEN_ON_APP2} on inventory: FAILED before the switch" \
        in notices.texts()[0]


BLOCK = "paydrop-test-lb-blocked"


def block_lb_to(port: int) -> None:
    """On every app host: refuse lb1's connections to `port` (the slot itself stays ready)."""
    lb1 = fleet.private_address("lb1")
    for name in fleet.APP_HOSTS:
        fleet.host(name).check_output(
            f"nft insert rule inet paydrop input ip saddr {lb1} tcp dport {port} reject with tcp reset "
            f"comment '\"{BLOCK}\"'")


def unblock_lb() -> None:
    for name in fleet.APP_HOSTS:
        app = fleet.host(name)
        for line in app.check_output("nft -a list chain inet paydrop input").splitlines():
            if BLOCK in line:
                app.check_output(f"nft delete rule inet paydrop input handle {line.rsplit('handle', 1)[1].strip()}")


def test_a_release_the_load_balancer_cannot_reach_is_switched_back(notices: Notices) -> None:
    """Every new slot is ready on its own host, but lb1 cannot reach them: the switch happens,
    the check through the load balancer fails, and deploy.yml switches back by itself."""
    before = fleet.host("lb1").file(fleet.UPSTREAM).content_string
    states = [fleet.state(name) for name in fleet.APP_HOSTS]
    assert fleet.active_color() == "blue"
    block_lb_to(8002)  # green
    try:
        notices.received.clear()
        result = fleet.playbook("deploy.yml", "-e", f"app_version={NEXT}", "-e", "deploy_verify_retries=3",
                                "-e", notices.arg())
        lb_after = fleet.host("lb1").file(fleet.UPSTREAM).content_string
        color_after = fleet.active_color()
    finally:
        unblock_lb()
    text = fleet.output(result, tail=50000)
    assert result.returncode != 0
    # It did switch (the readiness gate passed on both hosts), then switched back.
    assert "Point the upstream at the new colour" in result.stdout, text
    assert f"{NEXT} did not answer through the load balancer; switched back to blue ({fleet.FIRST})" in text
    assert lb_after == before and color_after == "blue"
    assert len(notices.texts()) == 1 and f"deployed {fleet.FIRST} → {NEXT} on inventory: FAILED: it did not answer " \
        f"through the load balancer, which was switched back to {fleet.FIRST}" in notices.texts()[0], notices.texts()
    assert [fleet.state(name) for name in fleet.APP_HOSTS] == states
    # The new slots were left running for inspection; the shop answers with the old release.
    assert [fleet.running_release(name, "green") for name in fleet.APP_HOSTS] == [f"true {NEXT}"] * 2
    with load(["/api/health/ready"]) as probe:
        time.sleep(3)
    assert probe.failures() == [] and probe.versions() == [fleet.FIRST], probe.report()


def test_a_rotated_secret_restarts_one_app_host_at_a_time_without_a_failed_request(under_load: Load) -> None:
    started = {name: fleet.host(name).check_output("docker inspect -f '{{.State.StartedAt}}' paydrop-blue")
               for name in fleet.APP_HOSTS}
    result = fleet.playbook("site.yml", "--tags", "app", "-e", f"vault_app_stripe_webhook_secret={ROTATED}")
    assert result.returncode == 0, fleet.output(result)
    time.sleep(2)
    assert under_load.failures() == []
    restarted = {name: fleet.host(name).check_output("docker inspect -f '{{.State.StartedAt}}' paydrop-blue")
                 for name in fleet.APP_HOSTS}
    assert all(restarted[name] != started[name] for name in fleet.APP_HOSTS), (started, restarted)
    # One host at a time: app2's slot started after app1's was ready again.
    assert restarted["app1"] < restarted["app2"]
    secret = fleet.host("app2").check_output("cat /etc/paydrop/secrets/stripe-webhook-secret")
    assert secret == ROTATED


def upstream_of(name: str) -> str:
    return f"{fleet.private_address(name)}:8001"


def test_app2_stopped_under_load_costs_a_handful_of_requests_and_it_returns(paths: list[str]) -> None:
    app2 = fleet.host("app2")
    with load(paths) as generator:
        time.sleep(3)
        stopped_at = generator.elapsed()
        app2.check_output("docker stop paydrop-blue")
        # nginx marks it down after max_fails (3) within fail_timeout (10 s).
        time.sleep(15)
        marked_down_by = stopped_at + 12
        during = generator.failures(since=stopped_at)
        app2.check_output("docker start paydrop-blue")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if app2.run("curl -sf http://%s/api/health/ready", upstream_of("app2")).rc == 0:
                break
            time.sleep(1)
        back_at = generator.elapsed()
        time.sleep(20)  # past fail_timeout: nginx tries app2 again
    print(f"\nload: {generator.report()}; failed while app2 was down: {len(during)}")

    assert len(during) <= 5, during[:10]
    assert generator.failures(since=marked_down_by) == [], generator.failures(since=marked_down_by)[:10]
    log = fleet.host("lb1").check_output("tail -n 400 /var/log/nginx/access.log")
    recent = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(entry["upstream_addr"] == upstream_of("app2") and entry["status"] == 200 for entry in recent[-200:]), \
        f"app2 ({upstream_of('app2')}) took no traffic after it came back at {back_at:.0f} s"


def test_a_restart_only_setting_restarts_primary_then_replica_never_both() -> None:
    """shared_buffers applies at start-up only: both servers restart, the replica only
    after the primary is up again."""
    def started(name: str) -> tuple[int, int]:
        out = fleet.host(name).check_output(
            "systemctl show -p ExecMainStartTimestampMonotonic -p ActiveEnterTimestampMonotonic postgresql@15-main")
        values = dict(line.split("=", 1) for line in out.splitlines())
        return int(values["ExecMainStartTimestampMonotonic"]), int(values["ActiveEnterTimestampMonotonic"])

    before = {name: started(name) for name in ("db1", "db2")}
    result = fleet.playbook("site.yml", "--tags", "db", "-e", "postgres_shared_buffers_mb=1000")
    assert result.returncode == 0, fleet.output(result)
    after = {name: started(name) for name in ("db1", "db2")}
    assert all(after[name] != before[name] for name in after), (before, after)
    # Same kernel (containers of one machine): monotonic clocks compare.
    assert after["db2"][0] >= after["db1"][1], after
    assert fleet.sql("SHOW shared_buffers") == "1000MB"
