"""The app image: built from app/Dockerfile with no registry and no network for
the Python part (`docker build --network none`), no secret in any layer or
setting, non-root, healthy, and serving a real PostgreSQL, Redis and localstripe.

Skips only when no Docker engine can be reached (or started by
scripts/testhosts). Containers and the test's tags are removed afterwards; the
base image and the built layers stay as cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from paydrop import settings

from tests.support.servers import HOST, LocalStripeServer, PostgresServer, RedisServer, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "debian:bookworm-slim"
VERSION = "1.2.3-imagetest"
APP_UID = "10001"


def _docker(*args: str, check: bool = True, timeout: float = 120,
            **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                            **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def _engine_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="module")
def docker_engine() -> None:
    if shutil.which("docker") is None:
        pytest.skip("no Docker engine: the docker command is not installed")
    if not _engine_answers():
        subprocess.run([str(ROOT / "scripts" / "testhosts"), "ensure-engine"],
                       capture_output=True, timeout=120)
    if not _engine_answers():
        pytest.skip("no Docker engine answers on this machine (and scripts/testhosts "
                    "ensure-engine could not start one)")


@pytest.fixture(scope="module")
def image(docker_engine: None) -> Iterator[str]:
    if _docker("image", "inspect", BASE_IMAGE, check=False).returncode != 0:
        # The one place that builds base images without a registry.
        subprocess.run([str(ROOT / "scripts" / "testhosts"), "build"], check=True, timeout=1800)
    subprocess.run([str(ROOT / "scripts" / "build-wheels.sh")], cwd=ROOT, check=True,
                   capture_output=True, timeout=900)
    tag = f"paydrop-imagetest:{uuid.uuid4().hex[:12]}"
    os_tag = f"{tag}-os"
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip() or "unknown"
    try:
        # Debian's python3 comes from the Debian mirror (the only step that
        # needs the network; cached after the first build) ...
        _docker("build", "--force-rm", "--file", "app/Dockerfile", "--target", "os",
                "--tag", os_tag, ".", cwd=ROOT, timeout=900)
        # ... and everything else builds with no network at all.
        _docker("build", "--force-rm", "--network", "none", "--file", "app/Dockerfile",
                "--build-arg", f"VERSION={VERSION}", "--build-arg", f"REVISION={revision}",
                "--tag", tag, ".", cwd=ROOT, timeout=900)
        yield tag
    finally:
        # --no-prune keeps the layers as build cache; only our tags go.
        _docker("rmi", "--no-prune", tag, os_tag, check=False)


@pytest.fixture(scope="module")
def run_secrets() -> dict[str, str]:
    """Secret values unique to this run, so finding one anywhere is a real leak."""
    marker = uuid.uuid4().hex
    return {
        "SECRET_KEY": f"secret-key-{marker}",
        "STRIPE_SECRET_KEY": f"sk_test_{marker}",
        "STRIPE_WEBHOOK_SECRET": f"whsec_{marker}",
        "SMTP_PASSWORD": f"smtp-password-{marker}",
    }


@pytest.fixture(scope="module")
def dependencies() -> Iterator[tuple[PostgresServer, RedisServer, LocalStripeServer]]:
    with PostgresServer() as pg, RedisServer() as redis, LocalStripeServer() as stripe_server:
        yield pg, redis, stripe_server


@pytest.fixture(scope="module")
def run_config(tmp_path_factory: pytest.TempPathFactory, run_secrets: dict[str, str],
               dependencies: tuple[PostgresServer, RedisServer, LocalStripeServer]) -> list[str]:
    """docker run arguments as the app role would give them: secrets as files,
    everything else in an env file. The container shares the host's network
    so it reaches the test's servers on 127.0.0.1."""
    pg, redis, stripe_server = dependencies
    directory = tmp_path_factory.mktemp("image-run")
    secret_dir = directory / "secrets"
    secret_dir.mkdir()
    file_secrets = {**run_secrets, "DATABASE_URL": pg.url, "REDIS_URL": redis.url}
    env_lines = [
        "APP_ENVIRONMENT=imagetest",
        "APP_EXPOSE_RELEASE_HEADER=true",
        "STRIPE_PUBLISHABLE_KEY=pk_test_imagetest",
        f"STRIPE_API_BASE={stripe_server.url}",
        "SESSION_COOKIE_SECURE=false",
        "GUNICORN_WORKERS=2",
    ]
    for name, value in file_secrets.items():
        path = secret_dir / name.lower()
        path.write_text(value)
        if os.geteuid() == 0:
            os.chown(path, int(APP_UID), int(APP_UID))
            path.chmod(0o400)
        else:
            path.chmod(0o444)
        env_lines.append(f"{name}_FILE=/run/secrets/{path.name}")
    env_file = directory / "app.env"
    env_file.write_text("\n".join(env_lines) + "\n")
    return ["--network", "host", "--env-file", str(env_file),
            "--volume", f"{secret_dir}:/run/secrets:ro"]


@pytest.fixture
def container(image: str, run_config: list[str]) -> Iterator[tuple[str, int]]:
    port = free_port()
    name = f"paydrop-imagetest-{uuid.uuid4().hex[:8]}"
    migrate = _docker("run", "--rm", *run_config, image, "paydrop", "db", "upgrade", timeout=120)
    assert "applied 0001_" in migrate.stdout, migrate.stdout + migrate.stderr
    try:
        _docker("run", "--detach", "--name", name, "--stop-timeout", "35", *run_config,
                "--env", f"GUNICORN_BIND={HOST}:{port}", image)
        deadline = time.monotonic() + 90
        while _docker("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip() \
                != "healthy":
            state = json.loads(_docker("inspect", name).stdout)[0]["State"]
            assert state["Running"], _docker("logs", name).stdout + _docker("logs", name).stderr
            assert time.monotonic() < deadline, state.get("Health")
            time.sleep(1)
        yield name, port
    finally:
        _docker("rm", "--force", name, check=False)


def test_the_image_holds_no_secret_and_says_what_it_is(image: str) -> None:
    history = _docker("history", "--no-trunc", image).stdout
    inspect = json.loads(_docker("image", "inspect", image).stdout)[0]
    config = inspect["Config"]

    env_names = {entry.split("=", 1)[0] for entry in config["Env"]}
    assert not env_names & settings.SECRET_NAMES
    for name in settings.SECRET_NAMES:
        assert f"{name}=" not in history
    assert config["Labels"]["org.opencontainers.image.version"] == VERSION
    assert len(config["Labels"]["org.opencontainers.image.revision"]) >= 7
    assert config["User"] == f"{APP_UID}:{APP_UID}"
    assert "/api/health/live" in " ".join(config["Healthcheck"]["Test"])


def test_the_container_runs_healthy_as_non_root_and_leaks_no_secret(
        image: str, container: tuple[str, int], run_secrets: dict[str, str]) -> None:
    name, port = container
    uid = _docker("exec", name, "python", "-c", "import os; print(os.getuid(), os.getgid())")
    assert uid.stdout.split() == [APP_UID, APP_UID]

    status, headers, _body = _get(port, "/api/health/ready")
    assert status == 200
    assert headers["X-Release"] == VERSION
    deadline = time.monotonic() + 15
    while True:  # the Stripe check runs in the background after the first probe
        body = json.loads(_get(port, "/api/health")[2])
        if body["status"] == "ok" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert body["status"] == "ok", body
    assert body["version"] == VERSION and body["environment"] == "imagetest"
    assert _get(port, "/no/such/page")[0] == 404

    logs = _docker("logs", name)
    places = {
        "docker history": _docker("history", "--no-trunc", image).stdout,
        "docker image inspect": _docker("image", "inspect", image).stdout,
        "docker inspect (container)": _docker("inspect", name).stdout,
        "docker logs": logs.stdout + logs.stderr,
    }
    for where, text in places.items():
        for setting, value in run_secrets.items():
            assert value not in text, f"{setting} leaked into {where}"
    for line in logs.stdout.splitlines():
        json.loads(line)

    # docker stop sends SIGTERM: gunicorn drains and exits 0 well inside the stop timeout.
    _docker("stop", name, timeout=60)
    state = json.loads(_docker("inspect", name).stdout)[0]["State"]
    assert state["ExitCode"] == 0
    assert "Shutting down: Master" in _docker("logs", name).stdout


def _get(port: int, path: str) -> tuple[int, Any, bytes]:
    url = f"http://{HOST}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback http
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()
