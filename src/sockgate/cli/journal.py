"""`sockgate journal` commands (owned by the journal package)."""

from __future__ import annotations

import click


@click.group("journal")
def group() -> None:
    """journal commands."""


def register(cli: click.Group) -> None:
    cli.add_command(group)
