"""`sockgate monitor` commands (owned by the monitor package)."""

from __future__ import annotations

import click


@click.group("monitor")
def group() -> None:
    """monitor commands."""


def register(cli: click.Group) -> None:
    cli.add_command(group)
