"""Fixtures for the policy tests.

sockgate.cli's __init__ imports every command module, cli/daemon.py included. Until that
module exists, a stand-in with a no-op register() lets the policy CLI be imported and
tested on its own; once the real one lands this does nothing.
"""

from __future__ import annotations

import sys
import textwrap
import types
from pathlib import Path

import click
import pytest

import sockgate

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "policy.toml"

if not (Path(sockgate.__file__).parent / "cli" / "daemon.py").exists():  # pragma: no cover
    stub = types.ModuleType("sockgate.cli.daemon")
    stub.register = lambda cli: None
    sys.modules.setdefault("sockgate.cli.daemon", stub)


@pytest.fixture
def policy_cli():
    """A command group with only the policy commands (errors rendered as by the entry point),
    and a runner for it."""
    from click.testing import CliRunner

    from sockgate.cli import Group
    from sockgate.cli import policy as policy_cli_mod

    g = Group("sockgate")  # renders errors as the entry point does
    policy_cli_mod.register(g)
    runner = CliRunner()

    def run(*args, input=None):
        return runner.invoke(g, list(args), input=input, catch_exceptions=False)

    return run


@pytest.fixture
def write_policy(tmp_path):
    def write(text: str, name: str = "policy.toml") -> Path:
        p = tmp_path / name
        p.write_text(textwrap.dedent(text))
        return p

    return write
