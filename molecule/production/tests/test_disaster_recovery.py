"""Disaster recovery on the fleet: backups to both repositories (repo2 is the
off-site S3 copy), restore points before releases, and the drill's first
incident, a table dropped at a known time, undone by restore.yml.

The drill: a writer commits paid orders on db1 at a steady rate; backup.yml;
keep writing; note T; keep writing; drop `orders` (the incident); restore.yml
to T with the shop in maintenance. Every order committed before T is back,
none committed after it; the replica is cloned again and streams; the shop
serves. It prints the figures (orders lost, seconds the restore took).

The drill's fourth incident, db1's server lost with its disks: a fresh host
under the same name, restored by restore.yml from the off-site copy alone.

The drill's second incident, the primary lost: Stripe's webhooks pay pending
orders through the load balancer; db1 is killed (its container, as a power
cut); failover.yml promotes db2 and points the app hosts at it. Every payment
the shop acknowledged before the kill is on db2 (or was acknowledged within
the replication lag), Stripe's retries of the rest pay them exactly once, the
new primary archives to the off-site repository, and a site.yml run with the
old inventory is refused. Then db1 comes back, the inventory is edited, and
failover.yml -e rejoin=db1 makes it a replica of db2.

Destructive (restores db1, then loses it): runs last (conftest.py orders it).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import pytest
import testinfra
import urllib3
import yaml

from tests.support import fleet, scenario, shop, testhosts

FIGURES = fleet.PROJECT / "build" / "drill-figures.txt"
# pgbackrest info's repository status codes that are not errors: 0 ok, 2 no valid backups (yet).
NO_ERROR = (0, 2)


def pgbackrest_info() -> list[dict[str, Any]]:
    out = fleet.host("db1").check_output("runuser -u postgres -- pgbackrest --stanza=paydrop --output=json info")
    return json.loads(out)


def postgres_active(name: str) -> bool:
    return fleet.host(name).service("postgresql@15-main").is_running


def test_the_off_site_repository_gets_the_wal_archive(db1: testinfra.host.Host) -> None:
    """pgbackrest check pushes a WAL segment and waits until every repository has it."""
    db1.check_output("runuser -u postgres -- pgbackrest --stanza=paydrop check")
    repos = {repo["key"]: repo for repo in pgbackrest_info()[0]["repo"]}
    assert set(repos) == {1, 2}, repos
    # The check above proved the WAL reached both. Status 0 is ok; 2 is "no valid backups" (the
    # first scheduled backup to that repository may not have run yet: CI failed on it twice).
    assert all(repo["status"]["code"] in NO_ERROR for repo in repos.values()), repos
    # Encrypted before it leaves db1: the moto bucket holds no readable WAL header.
    config = db1.file("/etc/pgbackrest/pgbackrest.conf").content_string
    assert "repo2-cipher-type=aes-256-cbc" in config
    assert db1.file("/etc/pgbackrest/pgbackrest.conf").mode == 0o640


def test_the_replica_is_ready_to_archive_off_site_when_promoted(db1: testinfra.host.Host,
                                                             db2: testinfra.host.Host) -> None:
    """pgBackRest on db2 knows the off-site repository only (repo1 is db1's disk), and archive_mode is
    on (a standby does not archive): promoted, it archives at once. It keeps a copy of the CA."""
    config = db2.file("/etc/pgbackrest/pgbackrest.conf")
    assert (config.user, config.group, config.mode) == ("root", "postgres", 0o640)
    assert "repo2-type=s3" in config.content_string and "repo1-" not in config.content_string
    info = json.loads(db2.check_output("runuser -u postgres -- pgbackrest --stanza=paydrop --output=json info"))
    assert [repo["key"] for repo in info[0]["repo"]] == [2], info[0]["repo"]
    assert info[0]["repo"][0]["status"]["code"] in NO_ERROR, info[0]["repo"]
    assert db2.check_output("runuser -u postgres -- psql -X -At -c 'SHOW archive_mode'") == "on"
    key = "/etc/paydrop-pki/postgres-ca/ca.key"
    assert (db2.file(key).user, db2.file(key).mode) == ("root", 0o600)
    assert db2.file(key).sha256sum == db1.file(key).sha256sum


def test_backup_yml_backs_up_to_both_repositories_and_says_where() -> None:
    before = {b["label"] for b in pgbackrest_info()[0].get("backup", [])}
    result = fleet.playbook("backup.yml", "-e", "backup_type=incr")
    assert result.returncode == 0, fleet.output(result)
    new = [b for b in pgbackrest_info()[0]["backup"] if b["label"] not in before]
    assert sorted(b["database"]["repo-key"] for b in new) == [1, 2], new
    text = fleet.output(result, tail=20000)
    for backup in new:
        assert f"repo{backup['database']['repo-key']}: {backup['type']} backup {backup['label']}" in text
    # The backup metrics were refreshed at once: one series per repository.
    prom = fleet.host("db1").file("/var/lib/prometheus/node-exporter/pgbackrest.prom").content_string
    for repo in ("1", "2"):
        assert f'repo="{repo}",type="incr"' in prom, prom


ASSETS_SLUG = "drill-assets"
ASSETS_BUCKET = "paydrop-assets"
ASSETS_METRICS = "/var/lib/prometheus/node-exporter/paydrop_assets_backup.prom"


def rclone(*args: str) -> str:
    """rclone on app1 with the backup's remotes (`files:` the shop's bucket, `backup:`) from its env file."""
    command = " ".join(shlex.quote(arg) for arg in args)
    return fleet.host("app1").check_output(
        f"set -a; . /etc/paydrop/assets-backup.env; set +a; "
        f"rclone --ca-cert /etc/paydrop/assets-backup-ca.crt {command}").strip()


def test_backup_yml_copies_the_product_files_off_site_and_the_restore_unit_brings_one_back() -> None:
    digest = fleet.add_product(ASSETS_SLUG, 200_000, title="Drill assets")
    key = fleet.sql(f"SELECT asset_key FROM products WHERE slug = '{ASSETS_SLUG}'")  # noqa: S608 - a constant
    started = time.time()
    result = fleet.playbook("backup.yml")
    assert result.returncode == 0, fleet.output(result)
    shop_files = json.loads(rclone("size", "--json", f"files:{ASSETS_BUCKET}"))
    assert f"product files backed up: {shop_files['count']} objects, {shop_files['bytes']} bytes in backup:" \
        in fleet.output(result, tail=20000)
    # The copy: the file's bytes in the backup bucket under assets/<key>.
    assert rclone("hashsum", "sha256", "--download", f"backup:paydrop-backups/assets/{key}").split()[0] == digest
    metrics = dict(line.split() for line in fleet.host("app1").file(ASSETS_METRICS).content_string.splitlines()
                   if not line.startswith("#"))
    assert float(metrics["paydrop_assets_backup_last_success_timestamp_seconds"]) >= int(started)
    assert int(metrics["paydrop_assets_backup_objects"]) >= shop_files["count"]
    # Versioning is on in the shop's own bucket (the app role keeps it on).
    assert rclone("backend", "versioning", f"files:{ASSETS_BUCKET}") == "Enabled"

    # The file lost from the shop's bucket: its download fails, until the
    # runbook's restore unit copies it back from the off-site copy.
    token = fleet.download_token(ASSETS_SLUG)
    rclone("deletefile", f"files:{ASSETS_BUCKET}/{key}")
    assert not fleet.download(token)[0].startswith("200 ")
    fleet.host("app1").check_output("systemctl start paydrop-assets-restore")
    assert fleet.download(token) == ("200 200000", digest)
    assert "product files restored" in fleet.host("app1").check_output(
        "journalctl -u paydrop-assets-restore -n 5 -o cat --no-pager")


def test_backup_yml_refuses_an_unknown_type() -> None:
    result = fleet.playbook("backup.yml", "-e", "backup_type=weekly")
    assert result.returncode != 0
    assert "backup_type must be full, diff or incr (got weekly); nothing was backed up." in fleet.output(result)


def test_each_release_left_a_restore_point() -> None:
    """test_zero_downtime's deploy.yml runs marked one before their migrations."""
    log = fleet.host("db1").check_output("cat /var/log/postgresql/postgresql-15-main.log")
    assert 'restore point "before-0.1.0-molecule-next-' in log


def test_restore_refuses_a_running_primary_without_confirmation() -> None:
    result = fleet.playbook("restore.yml", "-e", "restore_target_time=2026-01-01T00:00:00+00")
    assert result.returncode != 0
    text = fleet.output(result)
    assert "PostgreSQL runs on db1: a restore replaces its data with the state at 2026-01-01T00:00:00+00" in text
    assert "Run again with -e confirm_restore=yes" in text
    assert postgres_active("db1") and postgres_active("db2")
    assert not fleet.host("lb1").file("/etc/nginx/paydrop-maintenance/paydrop-maintenance.conf").exists


def test_restore_refuses_two_targets_at_once() -> None:
    result = fleet.playbook("restore.yml", "-e", "restore_point=x", "-e", "restore_target_time=2026-01-01T00:00:00",
                            "-e", "confirm_restore=yes")
    assert result.returncode != 0
    assert "restore.yml takes at most one of" in fleet.output(result)
    assert postgres_active("db1")


@pytest.mark.parametrize(("extra", "message"), [
    # A name without deploy.yml's time, and no backup label: which backup precedes it is unknown.
    (["-e", "restore_point=my-own-point"],
     "No backup ended before restore point my-own-point (its name carries no time"),
    # deploy.yml's form, older than every backup the fleet holds.
    (["-e", "restore_point=before-0.0.1-20200101T000000Z"],
     "No backup ended before restore point before-0.0.1-20200101T000000Z; recovery cannot reach"),
    (["-e", "restore_set=20261205-031125F"], "-e restore_set=<a backup label from pgbackrest info> only with"),
])
def test_restore_refuses_a_restore_point_no_backup_precedes(extra: list[str], message: str) -> None:
    result = fleet.playbook("restore.yml", *extra, "-e", "confirm_restore=yes")
    assert result.returncode != 0
    assert message in " ".join(fleet.output(result).split())
    assert postgres_active("db1") and postgres_active("db2")
    assert not fleet.host("lb1").file("/etc/nginx/paydrop-maintenance/paydrop-maintenance.conf").exists


TLS_DIR = "/etc/postgresql/15/main/tls"
SERVED_END = ("openssl s_client -starttls postgres -connect 127.0.0.1:5432 </dev/null 2>/dev/null"
              " | openssl x509 -noout -enddate")


def days_left(host: testinfra.host.Host, command: str) -> float:
    end = host.check_output(command).split("=", 1)[1]
    expiry = datetime.strptime(end, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC)
    return (expiry - datetime.now(UTC)).total_seconds() / 86400


def test_a_certificate_near_expiry_is_renewed_by_the_next_run(db1: testinfra.host.Host,
                                                             db2: testinfra.host.Host) -> None:
    """db2's server certificate re-signed by the CA for 2 days (inside the 30-day renewal
    window) and served; the next `site.yml --tags db` issues a full-length one and
    PostgreSQL serves it."""
    csr = db2.file(f"{TLS_DIR}/server.csr").content_string
    db1.check_output(f"printf '%s' {shlex.quote(csr)} > /tmp/db2.csr && "
                     "openssl x509 -req -in /tmp/db2.csr -CA /etc/paydrop-pki/postgres-ca/ca.crt "
                     "-CAkey /etc/paydrop-pki/postgres-ca/ca.key -days 2 -copy_extensions copy "
                     "-out /tmp/db2-short.crt 2>/dev/null && rm /tmp/db2.csr")
    short = db1.file("/tmp/db2-short.crt").content_string
    db1.check_output("rm /tmp/db2-short.crt")
    db2.check_output(f"printf '%s' {shlex.quote(short)} > {TLS_DIR}/server.crt && "
                     "runuser -u postgres -- psql -X -At -c 'SELECT pg_reload_conf()'")
    scenario.wait_until(lambda: days_left(db2, SERVED_END) < 3, "db2 serving the short-lived certificate",
                        timeout=20, interval=1)

    result = fleet.playbook("site.yml", "--tags", "db")
    assert result.returncode == 0, fleet.output(result)
    signed = [task for task in fleet.changed_tasks(result) if "Sign this server's certificate" in task]
    assert [task for task in signed if "(db2" in task], fleet.changed_tasks(result)
    assert days_left(db2, f"openssl x509 -noout -enddate -in {TLS_DIR}/server.crt") > 800
    scenario.wait_until(lambda: days_left(db2, SERVED_END) > 800, "db2 serving the renewed certificate",
                        timeout=30, interval=1)
    # db1's own certificate was far from expiry: not signed again.
    assert not [task for task in signed if "(db1" in task], signed


@dataclass
class Background:
    """A loop (`_run`, checking `_stop`) on a daemon thread, started and stopped by the test."""

    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(30)


@dataclass
class Writer(Background):
    """Commits one paid order on db1 every `interval` seconds; records when each INSERT
    was sent and when its commit was confirmed (wall clock, which the containers share)."""

    interval: float = 0.25
    committed: list[tuple[str, float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def _run(self) -> None:
        db1 = fleet.host("db1")
        query = ("INSERT INTO orders (product_id, amount, currency, email, checkout_mode, status, paid_at) "
                 "SELECT id, price_amount, currency, 'drill@paydrop.test', 'payment_intent', 'paid', now() "
                 "FROM products ORDER BY id LIMIT 1 RETURNING id")
        while not self._stop.is_set():
            sent = time.time()
            result = db1.run(f"runuser -u postgres -- psql -X -At -v ON_ERROR_STOP=1 -d paydrop -c \"{query}\"")
            done = time.time()
            if result.rc == 0:
                self.committed.append((result.stdout.splitlines()[0], sent, done))
            else:
                self.errors.append(result.stderr.strip())
            self._stop.wait(self.interval)


@dataclass
class Prober(Background):
    """GET / through lb1 twice a second: the status, and whether the maintenance page answered."""

    answers: list[tuple[float, int, bool, str]] = field(default_factory=list)

    def _run(self) -> None:
        pool = lb_pool(read_timeout=10)
        while not self._stop.is_set():
            try:
                response = pool.request("GET", "/", headers={"Host": fleet.SERVER_NAME}, redirect=False)
                self.answers.append((time.time(), response.status,
                                     response.headers.get("X-Paydrop-Maintenance") == "on",
                                     response.headers.get("Retry-After", "")))
            except urllib3.exceptions.HTTPError:
                self.answers.append((time.time(), 0, False, ""))
            self._stop.wait(0.5)
        pool.close()


def orders_present(ids: list[str], condition: str = "true", on: str = "db1") -> set[str]:
    """Those of `ids` (order ids PostgreSQL made) present on host `on` and meeting `condition`."""
    found: set[str] = set()
    for start in range(0, len(ids), 200):
        chunk = ", ".join(f"'{order_id}'" for order_id in ids[start:start + 200])
        out = fleet.sql(f"SELECT id FROM orders WHERE id IN ({chunk}) AND {condition}", on=on)  # noqa: S608
        found.update(line for line in out.splitlines() if line)
    return found


@pytest.fixture(scope="module")
def writer() -> Iterator[Writer]:
    running = Writer().start()
    yield running
    running.stop()


def test_a_dropped_table_is_restored_to_the_moment_before(writer: Writer) -> None:
    backup = fleet.playbook("backup.yml")
    assert backup.returncode == 0, fleet.output(backup)
    time.sleep(5)
    target = time.time()
    time.sleep(4)
    # The incident: someone drops the orders table.
    fleet.sql("DROP TABLE orders CASCADE")
    writer.stop()
    target_text = datetime.fromtimestamp(target, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00")
    before = [order_id for order_id, _, done in writer.committed if done < target]
    after = [order_id for order_id, sent, _ in writer.committed if sent > target]
    assert len(before) > 10 and len(after) > 3, (len(before), len(after), writer.errors[:3])

    prober = Prober().start()
    started = time.monotonic()
    try:
        result = fleet.playbook("restore.yml", "-e", f"restore_target_time={target_text}", "-e", "confirm_restore=yes")
        seconds = time.monotonic() - started
        time.sleep(2)
    finally:
        prober.stop()
    assert result.returncode == 0, fleet.output(result, tail=8000)

    present = orders_present(before + after)
    lost = [order_id for order_id in before if order_id not in present]
    resurrected = [order_id for order_id in after if order_id in present]
    assert lost == [], f"{len(lost)} of {len(before)} orders committed before T are missing"
    assert resurrected == [], f"{len(resurrected)} orders committed after T came back"

    # Maintenance while it worked: the page, its Retry-After, then the shop again.
    maintenance = [a for a in prober.answers if a[2]]
    assert maintenance and all(a[1] == 503 and a[3] == "300" for a in maintenance), prober.answers[:5]
    assert prober.answers[-1][1] == 200, prober.answers[-5:]
    assert not fleet.host("lb1").file("/etc/nginx/paydrop-maintenance/paydrop-maintenance.conf").exists

    # The replica was cloned again from the restored primary and streams it.
    scenario.wait_until(
        lambda: fleet.host("db1").check_output(
            "runuser -u postgres -- psql -X -At -c \"SELECT state FROM pg_stat_replication\"") == "streaming",
        "db2 streaming from the restored db1", timeout=60, interval=1)
    count = fleet.sql("SELECT count(*) FROM orders")
    scenario.wait_until(
        lambda: fleet.host("db2").check_output(
            "runuser -u postgres -- psql -X -At -d paydrop -c 'SELECT count(*) FROM orders'") == count,
        "db2 holding the restored orders", timeout=30, interval=1)
    # Archiving goes on, on the new timeline, to both repositories.
    fleet.host("db1").check_output("runuser -u postgres -- pgbackrest --stanza=paydrop check")

    figures = (f"drill, table dropped at a known time, restore.yml to T: {len(before)} orders committed "
               f"before T, {len(lost)} lost (RPO 0 s before T); {len(after)} committed after T, none restored; "
               f"restore.yml took {seconds:.0f} s with {len(maintenance)} maintenance answers (RTO); "
               f"{sum(1 for a in prober.answers if a[1] == 0)} requests without an answer")
    print(figures)
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    with Path(FIGURES).open("a") as handle:
        handle.write(figures + "\n")


BAD = "0.1.0-molecule-bad-migration"
FIXED = "0.1.0-molecule-fixed"
BAD_MIGRATION = "UPDATE orders SET email = 'overwritten@bad-migration.invalid';"
ORDERS_FINGERPRINT = "SELECT count(*) || ':' || md5(coalesce(string_agg(id || email, ',' ORDER BY id), '')) FROM orders"


def test_a_bad_migration_is_undone_by_restoring_the_releases_restore_point() -> None:
    """The runbook's "A release's migration broke data": a release whose migration overwrites
    every order's e-mail is deployed, rolled back, and restore.yml returns the database to the
    restore point deploy.yml marked before that migration."""
    dockerfile = (f"FROM paydrop:{fleet.FIRST}\nENV APP_VERSION={BAD}\nUSER root\n"
                  "RUN d=$(echo /opt/paydrop/lib/python3*/site-packages/paydrop/migrations) "
                  f"&& printf '%s\\n' \"{BAD_MIGRATION}\" > \"$d/0999_bad.sql\"\nUSER 10001:10001\n")
    encoded = base64.b64encode(dockerfile.encode()).decode()
    for name in fleet.APP_HOSTS:
        fleet.host(name).check_output("echo %s | base64 -d | docker build -q -t paydrop:%s -", encoded, BAD)
    before = fleet.sql(ORDERS_FINGERPRINT)

    deploy = fleet.playbook("deploy.yml", "-e", f"app_version={BAD}")
    assert deploy.returncode == 0, fleet.output(deploy)
    point = re.search(r"restore\.yml -e restore_point=(before-\S+)", fleet.output(deploy, tail=100000))
    assert point, "deploy.yml did not print its restore point"
    assert fleet.sql("SELECT count(*) FROM orders WHERE email <> 'overwritten@bad-migration.invalid'") == "0"

    rollback = fleet.playbook("deploy.yml", "--tags", "rollback")
    assert rollback.returncode == 0, fleet.output(rollback)
    # The hourly incremental backup runs before anyone notices (its timer's unit, started now; one
    # full run of the suite failed when the real timer fired here): recovery cannot go back before
    # the backup it starts from, so restore.yml has to start from an older one.
    fleet.host("db1").check_output("systemctl start pgbackrest-backup@incr.service")
    newest = max(json.loads(fleet.host("db1").check_output(
        "runuser -u postgres -- pgbackrest --stanza=paydrop --output=json info"))[0]["backup"],
        key=lambda backup: backup["timestamp"]["stop"])["label"]
    started = time.monotonic()
    restore = fleet.playbook("restore.yml", "-e", f"restore_point={point[1]}", "-e", "confirm_restore=yes")
    seconds = time.monotonic() - started
    assert restore.returncode == 0, fleet.output(restore, tail=8000)
    said = fleet.output(restore, tail=100000)
    chosen = re.search(r"restore backup set (\S+?),", said)
    assert chosen and chosen[1] != newest, (chosen, newest)
    # The newest backup is now one on the new timeline (the next step restores the newest state
    # from repo2: from a backup of the abandoned timeline, PostgreSQL would not start).
    timeline = fleet.sql("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")
    for repo in (1, 2):
        assert re.search(rf"repo{repo}: incr backup \S+ [^W]*WAL {timeline}", said), said[-3000:]
    assert fleet.sql(ORDERS_FINGERPRINT) == before
    assert fleet.sql("SELECT max(version) FROM schema_migrations") != "999"
    with lb_pool() as pool:
        assert pool.request("GET", "/api/health/ready", headers={"Host": fleet.SERVER_NAME}).status == 200
    # The bad release still sits in the idle slot, and can never be ready again (its migration was
    # undone): the fix is released over it, as the runbook says.
    fleet.build_release(FIXED)
    fixed = fleet.playbook("deploy.yml", "-e", f"app_version={FIXED}")
    assert fixed.returncode == 0, fleet.output(fixed)
    assert {fleet.state(name)["slots"][fleet.state(name)["active"]] for name in fleet.APP_HOSTS} == {FIXED}
    figures = (f"drill, bad migration in release {BAD}: rolled back, then restore.yml to {point[1]} "
               f"in {seconds:.0f} s: {before.split(':')[0]} orders as they were before the release")
    print(figures)
    with Path(FIGURES).open("a") as handle:
        handle.write(figures + "\n")


def test_a_fresh_db_host_is_restored_from_the_off_site_copy_alone() -> None:
    """Drill step 4: db1's server is replaced (a new container from the bare image: its data, its
    local repository and everything else gone, an address Docker picks anew). The runbook's one
    command, restore.yml -e restore_repo=2, provisions it, restores the newest state from the
    off-site copy alone, clones db2 from it, points the app hosts and the monitoring host at its
    address, and the shop serves again."""
    before = fleet.sql(ORDERS_FINGERPRINT)
    # The signing secret the shop has now (test_zero_downtime rotated it): the operator's vault holds it.
    secret = fleet.host("app1").check_output("cat /etc/paydrop/secrets/stripe-webhook-secret")
    testhosts.replace_with_fresh("db1")
    assert not fleet.host("db1").package("postgresql-15").is_installed
    started = time.monotonic()
    restore = fleet.playbook("restore.yml", "-e", "restore_repo=2", "-e", f"vault_app_stripe_webhook_secret={secret}")
    seconds = time.monotonic() - started
    assert restore.returncode == 0, fleet.output(restore, tail=8000)
    said = fleet.output(restore, tail=100000)
    assert "repo2" in said
    address = fleet.private_address("db1")
    assert f"db1 was a fresh host: provisioned, and the app and monitoring hosts now use its address {address}" in said
    assert fleet.sql(ORDERS_FINGERPRINT) == before
    # The local repository starts again beside the off-site one, and archiving works.
    repos = {repo["key"]: repo["status"]["code"] for repo in pgbackrest_info()[0]["repo"]}
    assert repos == {1: 0, 2: 0}, repos  # 0: ok, with a backup (restore.yml took one)
    fleet.host("db1").check_output("runuser -u postgres -- pgbackrest --stanza=paydrop check")
    # The CA came back from db2's copy: the certificates clients already trust still verify.
    assert fleet.host("db1").file("/etc/postgresql/15/main/tls/ca.crt").content_string == \
        fleet.host("db2").file("/etc/postgresql/15/main/tls/ca.crt").content_string
    scenario.wait_until(lambda: fleet.sql("SELECT state FROM pg_stat_replication WHERE application_name = 'db2'")
                        == "streaming", "db2 streaming from the new db1", timeout=60, interval=1)
    for name in fleet.APP_HOSTS:
        url = fleet.host(name).check_output("cat /etc/paydrop/secrets/database-url")
        assert f"@{address}:5432/" in url, name
    assert f"{address}:" in fleet.host("mon1").file("/etc/prometheus/prometheus.yml").content_string
    assert fleet.host("db1").service("prometheus-node-exporter").is_running
    with lb_pool() as pool:
        assert pool.request("GET", "/api/health/ready", headers={"Host": fleet.SERVER_NAME}).status == 200
    figures = (f"drill, db1 replaced by a fresh host, restore.yml -e restore_repo=2: the newest state "
               f"({before.split(':')[0]} orders, all there) from the off-site copy alone, host provisioned "
               f"and shop serving in {seconds:.0f} s")
    print(figures)
    with Path(FIGURES).open("a") as handle:
        handle.write(figures + "\n")


@dataclass
class Payer(Background):
    """Stripe paying pending orders: a signed payment_intent.succeeded through lb1 every `interval`
    seconds, one order after another; records (time, order id, HTTP status or 0)."""

    secret: str = ""
    orders: list[tuple[str, str, int, str]] = field(default_factory=list)
    interval: float = 0.5
    answers: list[tuple[float, str, int]] = field(default_factory=list)

    def deliver(self, pool: urllib3.HTTPSConnectionPool, order: tuple[str, str, int, str]) -> int:
        order_id, intent_id, amount, currency = order
        event = shop.event("payment_intent.succeeded", {
            "id": intent_id, "object": "payment_intent", "amount": amount, "currency": currency,
            "status": "succeeded", "metadata": {"order_id": order_id}, "latest_charge": f"ch_{intent_id}"})
        body, headers = shop.signed(event, secret=self.secret)
        try:
            response = pool.request("POST", "/api/webhooks/stripe", body=body.encode(),
                                    headers={**headers, "Host": fleet.SERVER_NAME}, redirect=False)
        except urllib3.exceptions.HTTPError:
            return 0
        return response.status

    def _run(self) -> None:
        with lb_pool() as pool:
            for order in self.orders:
                if self._stop.is_set():
                    break
                self.answers.append((time.time(), order[0], self.deliver(pool, order)))
                self._stop.wait(self.interval)


def lb_pool(read_timeout: float = 20) -> urllib3.HTTPSConnectionPool:
    """HTTPS to the shop through lb1's loopback port, verified against the scenario's ACME root."""
    return urllib3.HTTPSConnectionPool(
        "127.0.0.1", fleet.published_https_port(), server_hostname=fleet.SERVER_NAME,
        assert_hostname=fleet.SERVER_NAME, cert_reqs="CERT_REQUIRED", ca_certs=str(fleet.CA_FILE),
        timeout=urllib3.Timeout(connect=5, read=read_timeout), retries=False)


def swapped_inventory(directory: Path) -> str:
    """The scenario's inventory as the operator edits it after a failover: db2 in db_primary,
    db1 in db_replica (the group_vars and host_vars beside it, as they are)."""
    source = Path(fleet.inventory())
    inventory = yaml.safe_load((source / "ansible_inventory.yml").read_text())
    inventory["db_primary"]["hosts"], inventory["db_replica"]["hosts"] = (
        inventory["db_replica"]["hosts"], inventory["db_primary"]["hosts"])
    (directory / "ansible_inventory.yml").write_text(yaml.safe_dump(inventory))
    for linked in ("group_vars", "host_vars"):
        (directory / linked).symlink_to((source / linked).resolve())
    return str(directory)


def test_failover_refuses_to_leave_two_primaries() -> None:
    result = fleet.playbook("failover.yml", "-e", "promote=db2", timeout=300)
    assert result.returncode != 0
    assert "PostgreSQL still runs on db1: promoting db2 now would leave two primaries" in fleet.output(result)
    assert fleet.sql("SELECT pg_is_in_recovery()", on="db2") == "t"
    assert postgres_active("db1")


def test_a_lost_primary_is_replaced_and_rejoins_as_a_replica(tmp_path: Path) -> None:
    # Enough for 500 s of payments at 2 a second: the failover under CI load fits well inside.
    count, run = 1000, secrets.token_hex(4)
    rows = fleet.sql(
        "INSERT INTO orders (product_id, amount, currency, email, checkout_mode, status, stripe_payment_intent_id) "
        "SELECT p.id, p.price_amount, p.currency, 'failover@paydrop.test', 'payment_intent', 'pending', "
        f"'pi_failover_{run}_' || g FROM (SELECT * FROM products ORDER BY id LIMIT 1) p, "
        f"generate_series(1, {count}) g RETURNING id, stripe_payment_intent_id, amount, currency")
    # psql prints the rows, then the command tag ("INSERT 0 400").
    orders = [(o, i, int(a), c) for o, i, a, c in (line.split("|") for line in rows.splitlines() if "|" in line)]
    assert len(orders) == count, rows[-200:]
    scenario.wait_until(
        lambda: fleet.sql(f"SELECT count(*) FROM orders WHERE stripe_payment_intent_id LIKE 'pi_failover_{run}_%'",
                          on="db2") == str(count), "db2 holding the pending orders", timeout=30)
    # The signing secret the shop has now (test_zero_downtime rotated it): the operator's vault holds
    # it, so the playbooks below get it too.
    secret = fleet.host("app1").check_output("cat /etc/paydrop/secrets/stripe-webhook-secret")
    vault = ["-e", f"vault_app_stripe_webhook_secret={secret}"]
    payer = Payer(secret=secret, orders=orders).start()
    try:
        scenario.wait_until(lambda: sum(1 for a in payer.answers if a[2] == 200) >= 10, "10 payments acknowledged",
                            timeout=60, interval=0.5)
        # The incident: db1 is gone (power cut), mid-stream.
        killed = time.time()
        subprocess.run(["docker", "kill", testhosts.container("db1")], check=True, capture_output=True)
        result = fleet.playbook("failover.yml", "-e", "promote=db2", *vault)
        assert result.returncode == 0, fleet.output(result, tail=8000)
        scenario.wait_until(lambda: any(t > killed and s == 200 for t, _, s in payer.answers),
                            "a payment acknowledged after the failover", timeout=60, interval=0.5)
        time.sleep(3)
    finally:
        payer.stop()
    assert "could not be stopped there" in fleet.output(result, tail=100000)
    back = min(t for t, _, s in payer.answers if t > killed and s == 200)
    acknowledged = [o for _, o, s in payer.answers if s == 200]
    late = {o for t, o, s in payer.answers if s == 200 and killed - 1 < t < killed}
    paid = orders_present(acknowledged, "status = 'paid'", on="db2")
    lost = [o for o in acknowledged if o not in paid]
    # Asynchronous streaming: only what db1 acknowledged in its last moment may be missing.
    assert set(lost) <= late, f"{len(lost)} acknowledged payments missing on db2, not all in the last second"

    # Stripe retries every event the shop did not acknowledge: each order is paid exactly once.
    sent = {o for _, o, _ in payer.answers}
    retry = [order for order in orders if order[0] in sent and order[0] not in paid]
    with lb_pool() as pool:
        statuses = [Payer(secret=secret).deliver(pool, order) for order in retry]
    assert set(statuses) <= {200}, statuses
    assert orders_present(sorted(sent), "status = 'paid'", on="db2") == sent
    grants = fleet.sql("SELECT count(*), count(DISTINCT g.order_id) FROM download_grants g JOIN orders o "
                       f"ON o.id = g.order_id WHERE o.stripe_payment_intent_id LIKE 'pi_failover_{run}_%'", on="db2")
    assert grants == f"{len(sent)}|{len(sent)}", grants

    # The new primary archives to the off-site repository, on its new timeline.
    db2 = fleet.host("db2")
    db2.check_output("runuser -u postgres -- pgbackrest --stanza=paydrop check")
    for name in fleet.APP_HOSTS:
        url = fleet.host(name).check_output("cat /etc/paydrop/secrets/database-url")
        assert f"@{fleet.private_address('db2')}:5432/" in url, name

    # A site.yml run that still calls db2 a replica is refused before it changes anything.
    subprocess.run(["docker", "start", testhosts.container("db1")], check=True, capture_output=True)
    scenario.wait_until(lambda: fleet.host("db1").run("systemctl is-system-running --wait").rc in (0, 1),
                        "db1 booted", timeout=120, interval=2)
    stale = fleet.playbook("site.yml", timeout=600)
    assert stale.returncode != 0
    assert "db2 is in db_replica but its cluster is not a standby: it was promoted" in fleet.output(stale)
    assert {counts["changed"] for counts in fleet.recap(stale).values()} == {0}, fleet.recap(stale)

    # The operator edits the inventory; db1 rejoins as db2's replica.
    rejoined_at = time.monotonic()
    rejoin = fleet.playbook("failover.yml", "-e", "rejoin=db1", *vault, inventory_dir=swapped_inventory(tmp_path))
    assert rejoin.returncode == 0, fleet.output(rejoin, tail=8000)
    rejoin_seconds = time.monotonic() - rejoined_at
    scenario.wait_until(
        lambda: db2.check_output("runuser -u postgres -- psql -X -At -c "
                                 "\"SELECT state FROM pg_stat_replication WHERE application_name = 'db1'\"")
        == "streaming", "db1 streaming from db2", timeout=60, interval=1)
    assert fleet.host("db1").file("/var/lib/postgresql/15/main/standby.signal").exists
    assert fleet.host("db1").check_output("ls -d /var/lib/postgresql/15/main.before-rejoin-*")
    assert not fleet.host("db1").file("/etc/systemd/system/pgbackrest-full.timer").exists
    assert db2.service("pgbackrest-full.timer").is_enabled
    db2.check_output("runuser -u postgres -- pgbackrest --stanza=paydrop check")
    with lb_pool() as pool:
        assert pool.request("GET", "/api/health/ready", headers={"Host": fleet.SERVER_NAME}).status == 200

    figures = (f"drill, primary lost, failover.yml -e promote=db2: {len(acknowledged)} payments acknowledged, "
               f"{len(lost)} lost (acknowledged in db1's last second: {len(late)}); checkout (webhook) answered "
               f"again {back - killed:.0f} s after db1 died (RTO, failover.yml started at once); "
               f"{len(retry)} Stripe retries paid exactly once; rejoin of db1 as a replica took {rejoin_seconds:.0f} s")
    print(figures)
    with Path(FIGURES).open("a") as handle:
        handle.write(figures + "\n")
