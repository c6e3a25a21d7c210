"""The ``paydrop`` command: the Flask CLI for this app (``paydrop db upgrade``, ``paydrop routes``).

Same commands as ``flask --app paydrop ...``, without needing ``--app``. Bad
configuration prints every problem in one message and exits 1, no traceback
(``SettingsError`` is a ``click.ClickException``).
"""

from __future__ import annotations

from flask.cli import FlaskGroup

from . import create_app

cli = FlaskGroup(
    name="paydrop",
    create_app=lambda: create_app(),
    add_version_option=False,
    load_dotenv=False,
    set_debug_flag=False,
    help="Paydrop management commands.",
)


def main() -> None:
    cli.main(prog_name="paydrop")
