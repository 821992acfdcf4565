"""sockgate command line: argument parsing and printing only.

Each command group lives in its own module and is a thin call into a package.
This is the one place that turns SockgateError into a message and an exit code.
"""

from __future__ import annotations

import sys

import click

from sockgate import __version__
from sockgate.errors import SockgateError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sockgate")
def cli() -> None:
    """Kernel-enforced exit points on connect, listen and accept, with a sealed audit journal.

    \b
    Start here:
      sockgate policy check /etc/sockgate/policy.toml
      sockgate policy explain POLICY connect --user www-data --remote 10.0.0.5:25
      sockgate run                       # enforce + journal (as root)
      sockgate status
      sockgate journal show --since 1h --outcome rejected
    """


def _register() -> None:
    from sockgate.cli import daemon, ibmi, journal, monitor, policy

    for module in (daemon, policy, journal, ibmi, monitor):
        module.register(cli)


_register()


def main(argv: list[str] | None = None) -> None:
    try:
        # standalone_mode=False hands back ctx.exit(N) codes instead of exiting
        rv = cli.main(args=argv, prog_name="sockgate", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2 if isinstance(e, click.UsageError) else e.exit_code)
    except SockgateError as e:
        click.echo(f"sockgate: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(rv if isinstance(rv, int) else 0)
