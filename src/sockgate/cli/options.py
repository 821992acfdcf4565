"""Options shared by several commands, so every command spells them the same way."""

from __future__ import annotations

from typing import Callable

import click

from sockgate.record import ALERTS_FILE as DEFAULT_ALERTS
from sockgate.record import JOURNAL_DIR as DEFAULT_JOURNAL
from sockgate.record import POLICY_FILE as DEFAULT_POLICY

journal_option = click.option(
    "--journal",
    "journal_dir",
    default=DEFAULT_JOURNAL,
    show_default=True,
    envvar="SOCKGATE_JOURNAL",
    type=click.Path(file_okay=False),
    help="Journal directory (chain of receivers).",
)

JSON_META = "sockgate.json"


def _remember_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    # The entry point renders errors as JSON when the command was asked for JSON.
    ctx.find_root().meta[JSON_META] = value
    return value


def json_flag(help: str = "Machine-readable JSON output.") -> Callable:
    return click.option("--json", "as_json", is_flag=True, callback=_remember_json, help=help)


json_option = json_flag()
