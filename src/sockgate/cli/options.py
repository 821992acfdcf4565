"""Options shared by several commands, so every command spells them the same way."""

from __future__ import annotations

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

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
