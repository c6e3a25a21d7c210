"""The production scenario's fleet, as its checks see it: playbook runs, release
state, the load balancer's published port, and a product to download.

Used by molecule/production/tests (run by `molecule verify -s production`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import testinfra
import yaml

from tests.support import scenario, testhosts

PROJECT = Path(__file__).resolve().parents[2]
PLAYBOOKS = PROJECT / "playbooks"
SERVER_NAME = "shop.paydrop.test"
# The root of the scenario's ACME server (pebble), which issued the shop's certificate.
CA_FILE = PROJECT / "build" / "molecule-production" / "tls" / "acme-root.crt"
STATE_FILE = "/etc/ansible/facts.d/paydrop_release.fact"
UPSTREAM = "/etc/nginx/conf.d/paydrop-upstream.conf"
FIRST = "0.1.0-molecule"
APP_HOSTS = ("app1", "app2")
# TEST-ONLY, as in molecule/production/group_vars/all/test-only.yml.
SECRET_KEY = "test-only-secret-key-for-the-production-scenario-0123456789"
RECAP = re.compile(r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
                   r"\s+failed=(?P<failed>\d+)", re.MULTILINE)


def vault_items() -> dict[str, str]:
    """Every vault value the scenario sets, by name (molecule/production/group_vars/all/test-only.yml)."""
    values = yaml.safe_load((PROJECT / "molecule" / "production" / "group_vars" / "all" / "test-only.yml")
                            .read_text())
    return {key: value for key, value in values.items() if key.startswith("vault_")}


def vault_values() -> list[str]:
    return sorted(vault_items().values())


def host(name: str) -> testinfra.host.Host:
    return testinfra.get_host(testhosts.spec(name))


def inventory() -> str:
    """The directory Molecule's own runs use (its group_vars and host_vars sit beside the file)."""
    return str(Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent)


def playbook(name: str, *args: str, timeout: int = 1200,
             inventory_dir: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ansible-playbook", "-i", inventory_dir or inventory(), str(PLAYBOOKS / name), *args],
        capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"})


def output(result: subprocess.CompletedProcess[str], tail: int = 4000) -> str:
    """The end of what a playbook printed, on one line (the failed tasks first when it failed)."""
    return scenario.output(result, tail)


def recap(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, int]]:
    """PLAY RECAP counts per host."""
    return {m["host"]: {k: int(v) for k, v in m.groupdict().items() if k != "host"}
            for m in RECAP.finditer(result.stdout)}


def changed_tasks(result: subprocess.CompletedProcess[str]) -> list[str]:
    """`task name (host)` of every task that reported a change."""
    changed, task = [], ""
    for line in result.stdout.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed:"):
            changed.append(f"{task} ({line.split('[', 1)[1].split(']', 1)[0]})")
    return changed


def task_hosts(result: subprocess.CompletedProcess[str], task_name: str) -> list[str]:
    """The hosts that reported a result (ok, changed, skipping, failed) for the named task."""
    hosts, inside = [], False
    for line in result.stdout.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [", "PLAY [")):
            inside = task_name in line
        elif inside and re.match(r"^(ok|changed|failed|fatal|skipping): \[", line):
            hosts.append(line.split("[", 1)[1].split("]", 1)[0])
    return hosts


def state(name: str) -> dict[str, Any]:
    return json.loads(host(name).file(STATE_FILE).content_string)


def running_release(name: str, color: str) -> str:
    fmt = "'{{.State.Running}} {{index .Config.Labels \"org.paydrop.release\"}}'"
    out = host(name).run(f"docker inspect --format {fmt} paydrop-%s", color)
    return out.stdout.strip() if out.rc == 0 else ""


def published_https_port() -> int:
    out = subprocess.run(["docker", "port", testhosts.container("lb1"), "443/tcp"],
                         capture_output=True, text=True, check=True).stdout
    address, _, port = out.splitlines()[0].rpartition(":")
    assert address == "127.0.0.1", f"lb1's HTTPS port must be published on loopback only, not {address}"
    return int(port)


def active_color() -> str:
    return host("lb1").check_output("curl -s http://127.0.0.1:8080/active-color").strip()


def private_address(name: str) -> str:
    """The address the fleet knows a host by (its default route's source address)."""
    route = host(name).check_output("ip -4 route get 1.1.1.1")
    return route.split(" src ", 1)[1].split()[0]


def build_release(version: str, broken_on: tuple[str, ...] = ()) -> None:
    """A release built in every app host's own engine from the first one (offline: FROM a local
    image), answering with its own version; on the hosts in `broken_on` its server never starts."""
    for name in APP_HOSTS:
        extra = 'CMD ["sleep", "infinity"]' if name in broken_on else ""
        dockerfile = f"FROM paydrop:{FIRST}\nENV APP_VERSION={version}\n{extra}\n"
        host(name).check_output("printf %s | docker build -q -t paydrop:%s -", dockerfile, version)


def sql(query: str, on: str = "db1") -> str:
    """Run one query in the shop's database as the postgres superuser (on db1 unless told)."""
    cmd = f"runuser -u postgres -- psql -X -At -v ON_ERROR_STOP=1 -d paydrop -c {shlex.quote(query)}"
    return host(on).check_output(cmd).strip()


def add_product(slug: str, size: int, title: str = "Fleet field notes") -> str:
    """A product whose file (`size` random bytes) app1 stores in the shop's bucket,
    unless one with this slug exists; the sha256 of the file app1 keeps."""
    app1 = host("app1")
    color = state("app1")["active"]
    path = f"/var/lib/paydrop/assets/{slug}.bin"
    if not app1.file(path).exists:
        app1.check_output(f"head -c {int(size)} /dev/urandom > {path} && chown 10001:10001 {path}")
    if slug not in app1.check_output(f"docker exec paydrop-{color} paydrop products list"):
        app1.check_output(f"docker exec paydrop-{color} paydrop products add --slug {shlex.quote(slug)} "
                          f"--title {shlex.quote(title)} --price 1.00 --file {path}")
    return app1.check_output(f"sha256sum < {path}").split()[0]


def download(token: str, through: str = "app1") -> tuple[str, str]:
    """GET /downloads/<token> from lb1 (the firewall lets it reach the slots) on `through`'s
    active slot: "<status> <bytes>" and the sha256 of what came."""
    port = 8001 if state(through)["active"] == "blue" else 8002
    out = host("lb1").check_output(
        f"curl -s -o /tmp/fleet-download -w '%{{http_code}} %{{size_download}}' "
        f"-H 'Host: {SERVER_NAME}' -H 'X-Forwarded-Proto: https' "
        f"http://{private_address(through)}:{port}/downloads/{token}")
    return out, host("lb1").check_output("sha256sum < /tmp/fleet-download").split()[0]


def download_token(slug: str, max_downloads: int = 1000000) -> str:
    """A paid order for `slug` with a grant that allows many downloads; the token that names it."""
    from itsdangerous import URLSafeSerializer
    from paydrop.shop import grants

    assert re.fullmatch(r"[a-z0-9-]+", slug), slug
    # Literals checked above or made by PostgreSQL itself: nothing to inject.
    order_id = sql(
        "INSERT INTO orders (product_id, amount, currency, email, checkout_mode, status, paid_at) "  # noqa: S608
        "SELECT id, price_amount, currency, 'load@paydrop.test', 'payment_intent', 'paid', now() "
        f"FROM products WHERE slug = '{slug}' RETURNING id").splitlines()[0]
    grant_id = sql(
        "INSERT INTO download_grants (order_id, expires_at, max_downloads) "  # noqa: S608
        f"VALUES ('{order_id}', now() + interval '1 day', {int(max_downloads)}) RETURNING id").splitlines()[0]
    # Signed as the app signs with its current key (grants.make_token reads it from the app's settings).
    return URLSafeSerializer(SECRET_KEY, salt=grants._SALT).dumps(grant_id)


def readme_commands() -> list[list[str]]:
    """The ansible-playbook commands of the README's "Deploy to your own servers", as an operator
    types them, adapted to the scenario: its inventory instead of inventories/production, no vault
    prompt (the scenario's stand-in secrets are plain group_vars)."""
    text = (PROJECT / "README.md").read_text()
    section = text.split("## Deploy to your own servers", 1)[1].split("\n## ", 1)[0]
    commands = []
    for line in section.splitlines():
        if not line.strip().split(" ", 1)[0].endswith("ansible-playbook"):
            continue
        words = shlex.split(line.strip(), comments=True)
        args, skip = [], False
        for word in words[1:]:
            if skip:
                skip = False
            elif word == "-i":
                skip = True
            elif word != "--ask-vault-pass":
                args.append(word)
        commands.append(args)
    return commands


def readme_playbook(command: list[str], *extra: str, **versions: str) -> subprocess.CompletedProcess[str]:
    """Run one README command (from readme_commands) with its example versions replaced and
    `extra` arguments appended."""
    args = [versions.get(arg, arg) for arg in command]
    playbook_path = Path(args[0])
    assert playbook_path.parts[0] == "playbooks", args
    return playbook(playbook_path.name, *args[1:], *extra)
