"""The converged fleet: one release truth, the edge serving the real name with
a certificate certbot got from an ACME CA (and renews), product files shared through S3, and a dry run
(--check --diff) of site.yml that changes nothing.

Non-destructive: runs before the release and failure checks (test_zero_downtime.py).
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

import pytest
import urllib3

from tests.support import fleet

SLUG = "fleet-field-notes"
PAYLOAD_BYTES = 300_000


def test_every_app_host_records_the_same_first_release_and_the_lb_none() -> None:
    expected = {"active": "blue", "previous": None, "slots": {"blue": fleet.FIRST, "green": None}}
    assert [fleet.state(name) for name in fleet.APP_HOSTS] == [expected, expected]
    # The load balancer keeps no opinion of its own about the live colour.
    assert not fleet.host("lb1").file(fleet.STATE_FILE).exists
    assert fleet.active_color() == "blue"


def test_the_upstream_names_every_app_host_in_the_active_colour() -> None:
    upstream = fleet.host("lb1").file(fleet.UPSTREAM).content_string
    servers = [line.split()[1] for line in upstream.splitlines() if line.strip().startswith("server ")]
    assert servers == [f"{fleet.private_address(name)}:8001" for name in fleet.APP_HOSTS]


def served_certificate() -> dict[str, Any]:
    """The certificate lb1 serves for the shop's name, verified against the ACME server's root."""
    with socket.create_connection(("127.0.0.1", fleet.published_https_port()), timeout=10) as raw, \
            ssl.create_default_context(cafile=str(fleet.CA_FILE)).wrap_socket(
                raw, server_hostname=fleet.SERVER_NAME) as tls:
        cert: dict[str, Any] = tls.getpeercert()
    return cert


def test_the_shop_answers_by_its_name_with_a_certificate_from_the_acme_ca() -> None:
    """SNI and the certificate check name the shop; the connection goes to loopback. The
    certificate chains to the scenario's ACME server (pebble), which checked HTTP-01 on lb1."""
    pool = urllib3.HTTPSConnectionPool(
        "127.0.0.1", fleet.published_https_port(), server_hostname=fleet.SERVER_NAME,
        assert_hostname=fleet.SERVER_NAME, cert_reqs="CERT_REQUIRED", ca_certs=str(fleet.CA_FILE), retries=False)
    answer = pool.request("GET", "/", headers={"Host": fleet.SERVER_NAME})
    assert answer.status == 200
    assert "strict-transport-security" in {k.lower() for k in answer.headers}
    cert = served_certificate()
    assert [value for kind, value in cert["subjectAltName"] if kind == "DNS"] == [fleet.SERVER_NAME]
    issuer = dict(pair[0] for pair in cert["issuer"])
    assert issuer["commonName"].startswith("Pebble Intermediate CA"), issuer


def test_certbot_renews_the_certificate_and_nginx_serves_the_new_one() -> None:
    """nginx's files are links into certbot's lineage; certbot.timer is on and its runs trust the
    ACME server's CA; a renewal (forced: the certificate is not due) is served at once, through
    the deploy hook's reload."""
    lb1 = fleet.host("lb1")
    live = f"/etc/letsencrypt/live/{fleet.SERVER_NAME}"
    assert lb1.check_output("readlink /etc/nginx/tls/paydrop.crt") == f"{live}/fullchain.pem"
    assert lb1.check_output("readlink /etc/nginx/tls/paydrop.key") == f"{live}/privkey.pem"
    assert lb1.service("certbot.timer").is_enabled and lb1.service("certbot.timer").is_running
    environment = lb1.check_output("systemctl show -p Environment certbot.service")
    assert "REQUESTS_CA_BUNDLE=/etc/letsencrypt/paydrop-acme-ca.pem" in environment
    before = served_certificate()["serialNumber"]
    # Without --no-random-sleep-on-renew a renewal not started from a terminal first sleeps up to
    # 8 minutes (certbot spreads the load on Let's Encrypt): 474 s of one quiet run.
    lb1.check_output(f"REQUESTS_CA_BUNDLE=/etc/letsencrypt/paydrop-acme-ca.pem certbot renew --non-interactive "
                     f"--no-random-sleep-on-renew "
                     f"--force-renewal --cert-name {fleet.SERVER_NAME}")
    deadline = time.monotonic() + 30
    while (after := served_certificate()["serialNumber"]) == before and time.monotonic() < deadline:
        time.sleep(1)
    assert after != before, "nginx still serves the certificate from before the renewal"


def test_plain_http_redirects_to_the_shops_name() -> None:
    headers = fleet.host("lb1").check_output(
        "curl -s -o /dev/null -D - -H 'Host: lb1' http://127.0.0.1/products/x?y=1")
    assert "301" in headers.splitlines()[0]
    assert f"location: https://{fleet.SERVER_NAME}/products/x?y=1" in headers.lower()


def test_a_name_the_shop_does_not_serve_gets_421() -> None:
    status = fleet.host("lb1").check_output(
        "curl -sk -o /dev/null -w '%{http_code}' --resolve evil.test:443:127.0.0.1 https://evil.test/")
    assert status == "421"


@pytest.fixture(scope="module")
def product() -> tuple[str, str]:
    """A product added on app1 (its file goes to S3): a token of a paid order for it, and the file's sha256."""
    digest = fleet.add_product(SLUG, PAYLOAD_BYTES)
    return fleet.download_token(SLUG), digest


@pytest.mark.parametrize("name", fleet.APP_HOSTS)
def test_a_product_file_downloads_through_either_app_host(name: str, product: tuple[str, str]) -> None:
    """Asked from the load balancer, each app host serves the file app1 stored:
    it is in the bucket, not on app1's disk."""
    token, digest = product
    assert fleet.download(token, through=name) == (f"200 {PAYLOAD_BYTES}", digest)
    # Nothing of it on app2's disk: the bytes came from S3.
    assert not fleet.host("app2").file(f"/var/lib/paydrop/assets/{SLUG}.bin").exists


def test_a_dry_run_of_site_yml_changes_nothing_and_fails_nowhere() -> None:
    """The app and edge plays, where the release probes live (a whole-fleet dry run passed too,
    in 5 minutes: more than the suite's budget allows on every run). Verbose, with diffs: not one
    vault value shows in what an operator's terminal (or a CI log) would keep."""
    result = fleet.playbook("site.yml", "--check", "--diff", "-v", "--tags", "app,lb")
    assert result.returncode == 0, fleet.output(result)
    counts = fleet.recap(result)
    assert set(counts) >= {"lb1", "app1", "app2"}, counts
    assert {h: c["changed"] for h, c in counts.items() if c["changed"]} == {}, fleet.changed_tasks(result)
    shown = result.stdout + result.stderr
    assert [secret for secret in fleet.vault_values() if secret in shown] == []


@pytest.mark.parametrize(("extra", "message"), [
    ("app_public_url=https://shop.example.com", "production needs the shop's public name in nginx_server_name"),
    ("app_stripe_publishable_key=pk_live_REPLACE-WITH-THE-ACCOUNT-KEY",
     "still hold the example inventory's placeholders"),
])
def test_a_placeholder_left_in_the_inventory_stops_every_host_before_any_change(extra: str, message: str) -> None:
    result = fleet.playbook("site.yml", "-e", extra)
    assert result.returncode != 0
    assert message in fleet.output(result, tail=50000)
    counts = fleet.recap(result)
    assert set(counts) >= {"lb1", "app1", "app2", "db1", "db2", "redis1"}, counts
    assert {h: c["changed"] for h, c in counts.items()} == {h: 0 for h in counts}, fleet.changed_tasks(result)


def test_deploy_refuses_a_limit_that_leaves_out_fleet_hosts() -> None:
    before = [fleet.state(name) for name in fleet.APP_HOSTS]
    result = fleet.playbook("deploy.yml", "-e", "app_version=0.1.0-anything", "--limit", "app1,lb1")
    assert result.returncode != 0
    assert "app2 is left out of this run (--limit, or unreachable)" in fleet.output(result)
    assert [fleet.state(name) for name in fleet.APP_HOSTS] == before
    assert all(c["changed"] == 0 for c in fleet.recap(result).values()), fleet.changed_tasks(result)


def test_deploy_refuses_an_empty_version() -> None:
    result = fleet.playbook("deploy.yml", "-e", "app_version=")
    assert result.returncode != 0
    assert "Say which release to deploy: -e app_version=<version>" in fleet.output(result)


def test_a_release_without_an_image_is_refused_before_anything_changes() -> None:
    before = [fleet.state(name) for name in fleet.APP_HOSTS]
    upstream = fleet.host("lb1").file(fleet.UPSTREAM).content_string

    result = fleet.playbook("deploy.yml", "-e", "app_version=0.0.0-nowhere")

    assert result.returncode != 0
    assert "make image-archive" in fleet.output(result)
    assert [fleet.state(name) for name in fleet.APP_HOSTS] == before
    assert fleet.host("lb1").file(fleet.UPSTREAM).content_string == upstream
    assert [fleet.running_release(name, before[0]["active"]) for name in fleet.APP_HOSTS] == \
        [f"true {fleet.FIRST}"] * 2


@pytest.mark.parametrize("name", fleet.APP_HOSTS)
def test_every_app_host_runs_the_worker_with_the_active_release(name: str) -> None:
    app = fleet.host(name)
    state = fleet.state(name)
    fmt = ("'{{.State.Running}} {{.Config.User}} {{.HostConfig.ReadonlyRootfs}} "
           "{{index .Config.Labels \"org.paydrop.release\"}} {{json .Config.Cmd}}'")
    assert app.check_output(f"docker inspect --format {fmt} paydrop-worker") == \
        f'true 10001:10001 true {state["slots"][state["active"]]} ["paydrop","worker"]'
    assert "worker started" in app.check_output("docker logs paydrop-worker 2>&1")
