"""sockgate command line: argument parsing and printing only.

Each command group lives in its own module and is a thin call into a package.
This is the one place that turns SockgateError into a message and an exit code
(`Group.invoke`, `render_error`); commands raise, they do not print errors and exit.
"""

from __future__ import annotations

import json
import sys

import click

from sockgate import __version__
from sockgate.cli.options import JSON_META
from sockgate.errors import LocatedError, LocatedErrors, SockgateError


def render_error(e: SockgateError, as_json: bool = False) -> None:
    """A located error (a file's problems) as FILE:LINE: message lines and a count, or as
    JSON {ok, errors: [{file, line, message}], ...} on stdout for a --json command; any
    other error as one `sockgate: message` line (in JSON: one error without a place)."""
    located = e.errors if isinstance(e, LocatedErrors) else [e] if isinstance(e, LocatedError) else None
    if as_json:
        errors = ([{"file": x.file, "line": x.line, "message": x.message} for x in located] if located is not None
                  else [{"file": None, "line": None, "message": str(e)}])
        click.echo(json.dumps({"ok": False, "errors": errors, **getattr(e, "details", {})}, indent=2))
    elif located is None:
        click.echo(f"sockgate: {e}", err=True)
    else:
        for x in located:
            click.echo(str(x), err=True)
        n = len(located)
        click.echo(f"{located[0].file}: {n} error{'s' if n != 1 else ''}", err=True)


class Group(click.Group):
    """The command group that renders every SockgateError its commands raise."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SockgateError as e:
            render_error(e, bool(ctx.meta.get(JSON_META)))
            ctx.exit(e.exit_code)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
      sockgate console --policy /etc/sockgate/policy.toml   # http://127.0.0.1:8477/
    """


def _register() -> None:
    from sockgate.cli import console, daemon, fleet, fleet_policy, ibmi, journal, monitor, policy

    # fleet_policy after fleet: it hangs `policy` under the `fleet` group
    for module in (daemon, policy, journal, ibmi, monitor, console, fleet, fleet_policy):
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
    except SockgateError as e:  # raised outside a command (Group.invoke renders the rest)
        render_error(e)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(rv if isinstance(rv, int) else 0)
