"""The ``paydrop`` command: the Flask CLI for this app (``paydrop db upgrade``, ``paydrop routes``).

Same commands as ``flask --app paydrop ...``, without needing ``--app``. Bad
configuration prints every problem in one message and exits 1, no traceback:
``SettingsError`` is a ``click.ClickException``, which click reports cleanly
when a command loads the app. ``paydrop --help`` lists the problems too and
still shows the commands that need no app.
"""

from __future__ import annotations

import os

import click
from flask.cli import FlaskGroup

from . import create_app, settings


class PaydropGroup(FlaskGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        # Flask would print a traceback here for any error other than "no app".
        try:
            settings.load(os.environ)
        except settings.SettingsError as exc:
            click.echo(f"Error: {exc.format_message()}\n", err=True)
            return click.Group.list_commands(self, ctx)
        return super().list_commands(ctx)


cli = PaydropGroup(
    name="paydrop",
    create_app=lambda: create_app(),
    add_version_option=False,
    load_dotenv=False,
    set_debug_flag=False,
    help="Paydrop management commands.",
)


def main() -> None:
    cli.main(prog_name="paydrop")
