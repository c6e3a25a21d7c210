"""Configuration: every entry point refuses to start on bad settings with one
readable list of every problem, a non-zero exit and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from paydrop import settings

from tests.support.servers import free_port

BIN = Path(sys.executable).parent
APP_DIR = Path(__file__).resolve().parents[2] / "app"

# Complete apart from the two problems every test below expects to see reported.
BAD_ENV = {
    "SECRET_KEY": "a-secret-that-must-not-be-printed",
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "STRIPE_SECRET_KEY": "sk_test_x",
    "STRIPE_PUBLISHABLE_KEY": "pk_test_x",
    "STRIPE_WEBHOOK_SECRET": "whsec_x",
    # missing: DATABASE_URL
    "SMTP_PORT": "twenty-five",  # invalid
}


def _clean_env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **extra}


def _assert_refused(result: subprocess.CompletedProcess[str], gunicorn_halt_ok: bool = False) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "DATABASE_URL" in result.stderr and "missing" in result.stderr, output
    assert "SMTP_PORT" in result.stderr and "twenty-five" in result.stderr, output
    if gunicorn_halt_ok:
        # Plain gunicorn (without our config) may print its own HaltServer
        # traceback, depending on when the master reaps the worker; no frame
        # of ours may appear in it.
        assert "/paydrop/" not in output, output
    else:
        assert "Traceback" not in output
    assert BAD_ENV["SECRET_KEY"] not in output


@pytest.mark.parametrize("command", [
    pytest.param([str(BIN / "paydrop"), "db", "current"], id="paydrop-cli"),
    pytest.param([str(BIN / "flask"), "--app", "paydrop", "db", "current"], id="flask-cli"),
    pytest.param([sys.executable, "-c", "import paydrop.wsgi"], id="wsgi-import"),
])
def test_cli_and_wsgi_entry_points_list_every_problem(command: list[str]) -> None:
    result = subprocess.run(command, env=_clean_env(**BAD_ENV), capture_output=True, text=True,
                            timeout=60)
    _assert_refused(result)


def test_gunicorn_with_our_config_refuses_before_forking_workers(tmp_path: Path) -> None:
    env = _clean_env(**BAD_ENV, GUNICORN_BIND=f"127.0.0.1:{free_port()}",
                     PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    result = subprocess.run(
        [str(BIN / "gunicorn"), "--config", str(APP_DIR / "gunicorn.conf.py"), "paydrop.wsgi:app"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    _assert_refused(result)
    assert "Booting worker" not in result.stdout


def test_gunicorn_without_our_config_stops_instead_of_respawning_workers() -> None:
    env = _clean_env(**BAD_ENV)
    result = subprocess.run(
        [str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{free_port()}", "--workers", "2",
         "paydrop.wsgi:app"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    # It exits by itself (subprocess.run's timeout would fire if workers were
    # respawned for ever): status 3 (WORKER_BOOT_ERROR), or 1 when gunicorn's
    # halt trips over the second failed worker.
    _assert_refused(result, gunicorn_halt_ok=True)


def test_load_lists_every_problem_at_once() -> None:
    with pytest.raises(settings.SettingsError) as caught:
        settings.load({"SMTP_PORT": "0", "LOG_LEVEL": "LOUD",
                       "METRICS_ALLOWED_NETWORKS": "10.0.0.0/33"})
    names = [problem.split(" ", 1)[0].rstrip(":") for problem in caught.value.problems]
    for name in ("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "STRIPE_SECRET_KEY",
                 "STRIPE_PUBLISHABLE_KEY", "STRIPE_WEBHOOK_SECRET", "SMTP_PORT", "LOG_LEVEL",
                 "METRICS_ALLOWED_NETWORKS"):
        assert name in names


def test_secrets_come_from_files_and_are_never_echoed(tmp_path: Path) -> None:
    secret_file = tmp_path / "stripe_secret_key"
    secret_file.write_text("sk_live_from_a_file\n")
    env = {**BAD_ENV, "DATABASE_URL": "postgresql://u@db/paydrop",
           "SMTP_PORT": "587", "STRIPE_SECRET_KEY_FILE": str(secret_file)}
    del env["STRIPE_SECRET_KEY"]
    assert settings.load(env)["STRIPE_SECRET_KEY"] == "sk_live_from_a_file"

    env["DATABASE_URL"] = "mysql://root:hunter2-password@db/paydrop"
    env["SECRET_KEY_FILE"] = str(tmp_path / "missing")
    with pytest.raises(settings.SettingsError) as caught:
        settings.load(env)
    message = str(caught.value)
    assert "DATABASE_URL: invalid value (hidden)" in message
    assert "hunter2" not in message
    assert f"SECRET_KEY_FILE: cannot read {tmp_path / 'missing'}" in message


def test_an_empty_replica_url_means_no_replica() -> None:
    env = {**BAD_ENV, "DATABASE_URL": "postgresql://u@db/paydrop", "SMTP_PORT": "587",
           "DATABASE_REPLICA_URL": ""}
    assert settings.load(env)["DATABASE_REPLICA_URL"] == ""


def _valid_env(**extra: str) -> dict[str, str]:
    return {**BAD_ENV, "DATABASE_URL": "postgresql://u@db/paydrop", "SMTP_PORT": "587", **extra}


def test_a_valid_environment_loads() -> None:
    values = settings.load(_valid_env(DOWNLOAD_ACCEL_PREFIX="/_protected/",
                                      TRUSTED_PROXY_COUNT="0", LOGIN_RATE_LIMIT="5/60"))
    assert values["DOWNLOAD_ACCEL_PREFIX"] == "/_protected/"
    assert values["TRUSTED_PROXY_COUNT"] == 0
    assert values["LOGIN_RATE_LIMIT"] == "5/60"


@pytest.mark.parametrize(("env", "expected"), [
    ({"SECRET_KEY": "x" * 31}, "SECRET_KEY: invalid value (hidden): must be at least 32"),
    ({"TRUSTED_PROXY_COUNT": "-1"}, "TRUSTED_PROXY_COUNT: invalid value '-1'"),
    ({"DOWNLOAD_ACCEL_PREFIX": "_protected/"}, "DOWNLOAD_ACCEL_PREFIX: invalid value"),
    ({"DOWNLOAD_ACCEL_PREFIX": "/_protected"}, 'must start and end with "/"'),
    ({"LOGIN_RATE_LIMIT": "ten"}, "LOGIN_RATE_LIMIT: invalid value 'ten': must be attempts/s"),
    ({"CHECKOUT_RATE_LIMIT": "30/0"}, "CHECKOUT_RATE_LIMIT: invalid value '30/0'"),
    ({"STORAGE_BACKEND": "s3"}, "S3_BUCKET: missing; required when STORAGE_BACKEND=s3"),
])
def test_invalid_settings_are_refused(env: dict[str, str], expected: str) -> None:
    with pytest.raises(settings.SettingsError) as caught:
        settings.load(_valid_env(**env))
    assert expected in str(caught.value)
    assert len(caught.value.problems) == 1


def test_cross_field_problems_are_listed_with_the_others() -> None:
    with pytest.raises(settings.SettingsError) as caught:
        settings.load(_valid_env(STORAGE_BACKEND="s3", SMTP_PORT="x", LOGIN_RATE_LIMIT="1"))
    names = sorted(problem.split(":", 1)[0] for problem in caught.value.problems)
    assert names == ["LOGIN_RATE_LIMIT", "S3_BUCKET", "SMTP_PORT"]
    assert settings.load(_valid_env(STORAGE_BACKEND="s3", S3_BUCKET="files"))["S3_BUCKET"] == "files"
