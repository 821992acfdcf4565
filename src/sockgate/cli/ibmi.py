"""`sockgate ibmi` commands (owned by the ibmi package)."""

from __future__ import annotations

import click


@click.group("ibmi")
def group() -> None:
    """ibmi commands."""


def register(cli: click.Group) -> None:
    cli.add_command(group)
