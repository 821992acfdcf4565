"""Options shared by several commands, so every command spells them the same way."""

from __future__ import annotations

import functools
from typing import Any, Callable

import click

from sockgate.journal.query import Filter

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

pin_dir_option = click.option("--pin-dir", default="/sys/fs/bpf/sockgate", show_default=True,
                              help="bpffs directory holding sockgate's pinned programs and maps.")


# (parameter name, option declarations, keyword arguments): the DSPJRN-like selection
_FILTERS: tuple[tuple[str, tuple[str, ...], dict[str, Any]], ...] = (
    ("types", ("--type", "-t"), dict(multiple=True, metavar="T", help=(
        "Entry type: A C L (accept/connect/listen), D F I O P R S U X, or policy, start, "
        "stop, detach, gap, interrupted, import, rotate, cut. Repeatable."))),
    ("outcomes", ("--outcome", "-o"), dict(multiple=True, help="allowed, rejected, audit-rejected, failed. Repeatable.")),
    ("users", ("--user", "-u"), dict(multiple=True, help="User name or uid. Repeatable.")),
    ("programs", ("--program", "-p"), dict(multiple=True, help="Executable path; wildcards allowed.")),
    ("rules", ("--rule",), dict(multiple=True, help="Deciding rule name.")),
    ("hosts", ("--host",), dict(multiple=True, help="Host (or IBM i system) name.")),
    ("sources", ("--source",), dict(multiple=True, help="kernel, ibmi or sockgate.")),
    ("local", ("--local",), dict(multiple=True, metavar="CIDR", help="Local address or CIDR.")),
    ("remote", ("--remote",), dict(multiple=True, metavar="CIDR", help="Remote address or CIDR.")),
    ("ports", ("--port",), dict(multiple=True, metavar="P[-Q]", help="Local or remote port (range).")),
    ("local_ports", ("--local-port",), dict(multiple=True, metavar="P[-Q]")),
    ("remote_ports", ("--remote-port",), dict(multiple=True, metavar="P[-Q]")),
    ("since", ("--since",), dict(metavar="WHEN", help=(
        "From: 1h, 30m, 7d (ago), today, or ISO time (no zone = local time; Z or +HH:MM as written)."))),
    ("until", ("--until",), dict(metavar="WHEN", help="Up to (exclusive), same forms as --since.")),
    ("from_seq", ("--from-seq",), dict(type=click.IntRange(min=1), help="First sequence number.")),
    ("to_seq", ("--to-seq",), dict(type=click.IntRange(min=1), help="Last sequence number.")),
)


def filter_options(f: Callable | None = None, *, since: str | None = None, short: bool = True) -> Callable:
    """The journal selection shared by show, export, top, policy replay and learn; the
    command gets it as one `filt` (a sockgate.journal.Filter). `since`: a default for
    --since; short=False drops the one-letter forms (for a command whose own -o means
    something else)."""

    def decorate(f: Callable) -> Callable:
        for name, decls, kw in reversed(_FILTERS):
            decls = decls if short else decls[:1]
            kw = dict(kw)
            if name == "since" and since is not None:
                kw.update(default=since, show_default=True)
            f = click.option(*decls, name, **kw)(f)

        @functools.wraps(f)
        def wrapper(**kw: Any) -> Any:
            kw["filt"] = Filter.build(**{name: kw.pop(name) for name, _, _ in _FILTERS})
            return f(**kw)

        return wrapper

    return decorate(f) if f is not None else decorate
