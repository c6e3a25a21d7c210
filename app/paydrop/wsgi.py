"""The WSGI entry point: ``gunicorn paydrop.wsgi:app``.

With bad configuration the worker prints the list of problems (no traceback)
and exits with gunicorn's "worker failed to boot" status, which stops the
master instead of respawning workers forever. gunicorn.conf.py validates the
same settings in the master first, so normally this path is only taken when
gunicorn runs without that config file.
"""

from __future__ import annotations

import sys

from . import create_app, settings

# gunicorn.arbiter.Arbiter.WORKER_BOOT_ERROR: the master halts instead of respawning.
WORKER_BOOT_ERROR = 3

try:
    app = create_app()
except settings.SettingsError as exc:
    print(f"paydrop: {exc.format_message()}", file=sys.stderr, flush=True)
    raise SystemExit(WORKER_BOOT_ERROR) from None
