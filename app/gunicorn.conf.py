"""gunicorn settings for Paydrop: ``gunicorn -c gunicorn.conf.py paydrop.wsgi:app``.

Environment overrides (none of them secret):
  GUNICORN_BIND      listen address, default 0.0.0.0:8000 (inside the container)
  GUNICORN_WORKERS   worker processes, default 2 * CPUs + 1, at most 8
  GUNICORN_THREADS   threads per worker, default 4
  PROMETHEUS_MULTIPROC_DIR  where workers keep their metric files; default a
                     fresh private directory per master, removed at exit

Choices:
* gthread workers: the sync worker closes every connection after one response,
  so nginx's upstream keepalive would buy nothing. ``keepalive`` (75 s) is longer
  than nginx's upstream ``keepalive_timeout`` (60 s) so nginx, not gunicorn,
  closes idle connections and never sends a request on a socket gunicorn is
  closing at that moment.
* SIGTERM drains: workers stop accepting, finish in-flight requests for up to
  ``graceful_timeout`` (30 s), then exit. The container's stop timeout must be
  longer (``docker stop -t 35``), or Docker SIGKILLs in the middle.
* Logging: no access log from gunicorn; the app writes one JSON line per
  request itself. gunicorn's own messages go through the same JSON handler.
  With a ``logconfig_dict`` gunicorn counts its access log as enabled and
  builds every line's fields (dates, all headers) before the CRITICAL level
  drops it: 2-3 % of a worker's CPU under page load (py-spy), so the logger
  class skips the access line outright.
* Settings are validated in the master before any worker forks, so bad
  configuration prints one list of problems and exits 1 instead of crash-looping
  workers.
* Each worker starts its Stripe health checks as it boots (``post_worker_init``),
  so its first /api/health answer is already Stripe's state, not "unknown".
* Metrics: prometheus_client multiprocess mode (see paydrop/metrics.py). The
  directory is set here, before anything imports prometheus_client, emptied
  when the master starts, and each dead worker is marked in ``child_exit``.
"""

# Names without a leading underscore are read by gunicorn as settings, so the
# helpers below are private.
import math as _math
import os as _os
import shutil as _shutil
import sys as _sys
import tempfile as _tempfile
from pathlib import Path as _Path

from gunicorn import glogging as _glogging

_MAX_WORKERS = 8

if not _os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _os.environ["PROMETHEUS_MULTIPROC_DIR"] = _tempfile.mkdtemp(prefix="paydrop-metrics-")
    _OWN_METRICS_DIR = True
else:
    _OWN_METRICS_DIR = False


def _cpu_count() -> int:
    """CPUs this process may use: affinity mask and cgroup v2 quota (docker --cpus)."""
    cpus = len(_os.sched_getaffinity(0))
    try:
        quota, period = _Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, _math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def _workers() -> int:
    configured = _os.environ.get("GUNICORN_WORKERS")
    if configured:
        return int(configured)
    return min(2 * _cpu_count() + 1, _MAX_WORKERS)


bind = [_os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")]
workers = _workers()
worker_class = "gthread"
threads = int(_os.environ.get("GUNICORN_THREADS", "4"))
timeout = 30
graceful_timeout = 30
keepalive = 75
# Heartbeat files on tmpfs: a slow container disk must not get workers killed.
worker_tmp_dir = "/dev/shm" if _os.path.isdir("/dev/shm") else None  # noqa: S108
proc_name = "paydrop"
# gunicorn 27's control socket (in $HOME) is not used: signals and the
# orchestrator manage the process, and two masters must not share one socket.
control_socket_disable = True
accesslog = None


class _NoAccessLogger(_glogging.Logger):
    def access(self, resp: object, req: object, environ: object, request_time: object) -> None:
        return None


logger_class = _NoAccessLogger
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": "INFO", "handlers": ["json"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
        "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
    },
    "handlers": {"json": {"()": "paydrop.observability.json_handler"}},
    "formatters": {},
}


def on_starting(server):
    from paydrop import settings

    try:
        settings.load(_os.environ)
    except settings.SettingsError as exc:
        print(f"paydrop: {exc.format_message()}", file=_sys.stderr, flush=True)
        raise SystemExit(1) from None

    metrics_dir = _Path(_os.environ["PROMETHEUS_MULTIPROC_DIR"])
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in metrics_dir.glob("*.db"):
        stale.unlink()


def post_worker_init(worker):
    # Each worker checks Stripe from its start, not from its first /api/health.
    from paydrop import health

    health.start_background_checks(worker.wsgi)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _OWN_METRICS_DIR:
        _shutil.rmtree(_os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
