"""Options shared by several commands, so every command spells them the same way."""

from __future__ import annotations

import click

DEFAULT_JOURNAL = "/var/lib/sockgate/journal"
DEFAULT_POLICY = "/etc/sockgate/policy.toml"
DEFAULT_ALERTS = "/etc/sockgate/alerts.toml"

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
