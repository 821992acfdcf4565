"""`sockgate journal` commands: init, show, export, verify, rotate, retain, top.

Printing only; the work is in sockgate.journal."""

from __future__ import annotations

import functools
import json
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

import click

from sockgate.cli.options import journal_option, json_option
from sockgate.errors import JournalBusyError, UsageError, VerifyError
from sockgate.journal import Entry, Filter, parse_size
from sockgate.journal.export import FORMATS, csv_lines, formatter, summary, to_json
from sockgate.journal.seal import fingerprint, parse_verification_key, read_verification_key
from sockgate.journal.verify import checkpoint, describe_time, format_checkpoint, read_checkpoint, verify
from sockgate.record import NS, endpoint, format_time, parse_duration

if TYPE_CHECKING:
    from sockgate.journal import Journal


def filter_options(f: Callable) -> Callable:
    """The DSPJRN-like selection shared by show, export and top."""
    opts = [
        click.option("--type", "-t", "types", multiple=True, metavar="T",
                     help="Entry type: A C L (accept/connect/listen), D F I O P R S U X, or policy, start, "
                          "stop, detach, gap, interrupted, import, rotate, cut. Repeatable."),
        click.option("--outcome", "-o", "outcomes", multiple=True,
                     help="allowed, rejected, audit-rejected, failed. Repeatable."),
        click.option("--user", "-u", "users", multiple=True, help="User name or uid. Repeatable."),
        click.option("--program", "-p", "programs", multiple=True, help="Executable path; wildcards allowed."),
        click.option("--rule", "rules", multiple=True, help="Deciding rule name."),
        click.option("--host", "hosts", multiple=True, help="Host (or IBM i system) name."),
        click.option("--source", "sources", multiple=True, help="kernel, ibmi or sockgate."),
        click.option("--local", "local", multiple=True, metavar="CIDR", help="Local address or CIDR."),
        click.option("--remote", "remote", multiple=True, metavar="CIDR", help="Remote address or CIDR."),
        click.option("--port", "ports", multiple=True, metavar="P[-Q]", help="Local or remote port (range)."),
        click.option("--local-port", "local_ports", multiple=True, metavar="P[-Q]"),
        click.option("--remote-port", "remote_ports", multiple=True, metavar="P[-Q]"),
        click.option("--since", metavar="WHEN", help="From: 1h, 30m, 7d (ago), today, or ISO time (no zone = local time; Z or +HH:MM as written)."),
        click.option("--until", metavar="WHEN", help="Up to (exclusive), same forms as --since."),
        click.option("--from-seq", type=click.IntRange(min=1), help="First sequence number."),
        click.option("--to-seq", type=click.IntRange(min=1), help="Last sequence number."),
    ]
    for opt in reversed(opts):
        f = opt(f)

    @functools.wraps(f)
    def wrapper(**kw: Any) -> Any:
        names = ("types", "outcomes", "users", "programs", "rules", "hosts", "sources", "local", "remote",
                 "ports", "local_ports", "remote_ports", "since", "until", "from_seq", "to_seq")
        kw["filt"] = Filter.build(**{n: kw.pop(n) for n in names})
        return f(**kw)

    return wrapper


@click.group("journal")
def group() -> None:
    """The sealed audit journal: show, export, verify, rotate, retain.

    \b
    Examples:
      sockgate journal show --since 1h --outcome rejected
      sockgate journal show --remote 10.1.2.0/24 --type C --format json
      sockgate journal export --format cef --since today > sk.cef
      sockgate journal verify --key /media/usb/sockgate.key
      sockgate journal retain --max-age 90d --max-size 10G
    """


@group.command("init")
@journal_option
@click.option("--key-out", type=click.Path(dir_okay=False), help="Write the verification key here "
              "(e.g. removable media) instead of into the journal directory.")
def init_cmd(journal_dir: str, key_out: str | None) -> None:
    """Create a journal and its sealing key; say where the verification key was written.

    Keep the verification key OFF this host: whoever holds only the journal and the
    current sealing key cannot re-seal the past, but whoever holds the verification key
    can forge everything. It is never printed (terminals and logs keep what is printed)."""
    from sockgate.journal import init_journal

    jid, vkey = init_journal(journal_dir, key_out=key_out)
    where = key_out or f"{journal_dir}/verification.key"
    click.echo(f"journal {jid} created in {journal_dir}")
    click.echo(f"verification key written to {where} (fingerprint "
               f"{fingerprint(parse_verification_key(vkey)[1])}); keep it off this host")


@group.command("show")
@journal_option
@filter_options
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--last", "-n", "last", type=click.IntRange(min=1), help="Only the last N matching entries.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new entries as they are journaled.")
def show_cmd(journal_dir: str, filt: Filter, fmt: str, last: int | None, follow: bool) -> None:
    """Display journal entries (like DSPJRN)."""
    from sockgate.journal import Journal

    j = Journal.open(journal_dir, readonly=True)
    try:
        entries: Iterable[Entry] = j.tail(last, filter=filt) if last else j.entries(filter=filt)
        printer = _TablePrinter() if fmt == "table" else None
        cursor = 0

        def emit(batch: Iterable[Entry], first: bool) -> None:
            nonlocal cursor
            batch = list(batch)
            if batch:
                cursor = batch[-1].seq or cursor
            if printer:
                printer.print(batch, first)
            elif fmt == "csv":
                for line in csv_lines(batch, header=first):
                    click.echo(line)
            else:
                for e in batch:
                    click.echo(to_json(e))

        emit(entries, True)
        if follow:
            cursor = max(cursor, j.last_seq)
            while True:
                time.sleep(0.5)
                emit(j.entries(cursor, filter=filt), False)
    finally:
        j.close()


class _TablePrinter:
    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(highlight=False, soft_wrap=False)
        if not self.console.is_terminal:   # piped: don't fold rows at 80 columns
            self.console = Console(highlight=False, soft_wrap=False, width=240)

    def print(self, batch: list[Entry], first: bool) -> None:
        from rich.table import Table

        if not batch and not first:
            return
        t = Table(show_header=first, box=None, pad_edge=False)
        for col, kw in (("SEQ", {"justify": "right", "no_wrap": True}), ("TIME (UTC)", {"no_wrap": True}),
                        ("T", {"no_wrap": True}), ("OUTCOME", {"no_wrap": True}),
                        ("USER", {}), ("PROGRAM", {"overflow": "fold"}), ("LOCAL", {}), ("REMOTE", {}),
                        ("RULE / DETAIL", {"overflow": "fold"})):
            t.add_column(col, **kw)
        style = {"rejected": "bold red", "audit-rejected": "yellow", "failed": "red", "allowed": "green"}
        for e in batch:
            o = e.outcome.value if e.outcome else ""
            sg = len(e.type.value) > 1
            user = e.user or (str(e.uid) if e.uid is not None else "")
            t.add_row(
                str(e.seq), format_time(e.ts_ns)[:23], e.type.value, f"[{style.get(o, '')}]{o}[/]" if o else "",
                user, e.program or "", endpoint(e.local_addr, e.local_port) or "", endpoint(e.remote_addr, e.remote_port) or "",
                summary(e) if sg else (e.rule or ""),
            )
        if first and not batch:
            self.console.print("no matching entries", style="dim")
            return
        self.console.print(t)


@group.command("export")
@journal_option
@filter_options
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True)
@click.option("--output", "-O", type=click.Path(dir_okay=False, writable=True), help="Write here instead of stdout.")
def export_cmd(journal_dir: str, filt: Filter, fmt: str, output: str | None) -> None:
    """Export entries for a SIEM: json (lines), csv, cef (ArcSight), rfc5424 (syslog)."""
    from sockgate.journal import Journal

    with Journal.open(journal_dir, readonly=True) as j:
        out = open(output, "w", encoding="utf-8", newline="") if output else sys.stdout
        try:
            n = 0
            for line in formatter(fmt)(j.entries(filter=filt)):
                out.write(line + "\n")
                n += 1
        finally:
            if output:
                out.close()
        if output:
            click.echo(f"{n} line(s) written to {output}", err=True)


@group.command("verify")
@journal_option
@click.option("--key", "key_file", type=click.Path(dir_okay=False),
              help="The verification key kept off the host (from `journal init`).")
@click.option("--checkpoint", "checkpoint_file", type=click.Path(dir_okay=False),
              help="A checkpoint from `journal checkpoint`, kept off the host: the journal must still hold it.")
@json_option
def verify_cmd(journal_dir: str, key_file: str | None, checkpoint_file: str | None, as_json: bool) -> None:
    """Check the hash chain and the forward-secure seals of the whole journal.

    Exit 0 when intact, 1 naming the first bad sequence number on any edit, deletion,
    insertion, reordering or truncation."""
    key = read_verification_key(key_file) if key_file else None
    cp = read_checkpoint(checkpoint_file) if checkpoint_file else None
    rep = verify(journal_dir, key, checkpoint=cp)
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=1))
    else:
        span = f"seq {rep.first_seq}..{rep.last_seq}" if rep.last_seq else "empty"
        click.echo(f"journal {rep.journal_id}: {rep.entries} entries ({span}) in {rep.receivers} receiver(s), "
                   f"{rep.seals} seal(s), sealed through seq {rep.sealed_through}")
        if rep.cut_through:
            span = (f", sealed from {describe_time(rep.cut_span[0])} to {describe_time(rep.cut_span[1])}"
                    if rep.cut_span else "")
            click.echo(f"entries 1..{rep.cut_through}{span}, were deleted by declared retention (sealed cut)")
        if rep.checkpoint:
            click.echo(f"checkpoint found: seal {cp['epoch']} at seq {cp['seq']}")  # type: ignore[index]
        for w in rep.warnings:
            click.echo(f"warning: {w}", err=True)
    if not rep.ok:
        raise VerifyError(f"verify FAILED at seq {rep.bad_seq}: {rep.error}", seq=rep.bad_seq)
    if not as_json:
        click.echo("OK: " + ("seals authenticated with the verification key" if rep.keyed
                              else "chain intact (seals not authenticated: no key)"))


@group.command("checkpoint")
@journal_option
def checkpoint_cmd(journal_dir: str) -> None:
    """Print the newest seal (one JSON line) to keep off the host. Later,
    `journal verify --checkpoint FILE` fails if the journal no longer holds it."""
    click.echo(format_checkpoint(checkpoint(journal_dir)))


@group.command("rotate")
@journal_option
def rotate_cmd(journal_dir: str) -> None:
    """Seal and detach the current receiver; attach a new one."""
    with _writer(journal_dir) as j:
        name = j.rotate()
    click.echo(f"attached {name}")


@group.command("retain")
@journal_option
@click.option("--max-age", help="Delete detached receivers whose newest entry is older than this (e.g. 90d).")
@click.option("--max-size", help="Delete the oldest detached receivers while the journal is larger (e.g. 10G).")
def retain_cmd(journal_dir: str, max_age: str | None, max_size: str | None) -> None:
    """Delete whole old receivers; the cut is declared in a sealed record first."""
    if max_age is None and max_size is None:
        raise UsageError("give --max-age and/or --max-size")
    try:
        age = parse_duration(max_age) / NS if max_age else None
    except ValueError as e:
        raise UsageError(f"--max-age: {e}") from None
    size = parse_size(max_size) if max_size else None
    with _writer(journal_dir) as j:
        gone = j.retain(max_age=age, max_size=size)
    click.echo(f"deleted {len(gone)} receiver(s)" + (": " + ", ".join(gone) if gone else ""))


@group.command("top")
@journal_option
@filter_options
@click.option("--by", "field", default="remote_addr", show_default=True,
              type=click.Choice(["remote_addr", "local_addr", "user", "program", "rule", "remote_port",
                                 "local_port", "host", "type", "outcome"]))
@click.option("--count", "-n", "n", default=10, show_default=True, type=click.IntRange(min=1))
@json_option
def top_cmd(journal_dir: str, filt: Filter, field: str, n: int, as_json: bool) -> None:
    """The most frequent values of one field, e.g. top remote addresses by rejections:
    `sockgate journal top --outcome rejected`."""
    from sockgate.journal import Journal

    with Journal.open(journal_dir, readonly=True) as j:
        rows = j.top(field, filt, n)
    if as_json:
        click.echo(json.dumps([{field: v, "count": c} for v, c in rows]))
        return
    for v, c in rows:
        click.echo(f"{c:>10}  {v if v is not None else '-'}")


def _writer(journal_dir: str) -> Journal:
    from sockgate.journal import Journal

    try:
        return Journal.open(journal_dir, create=False)
    except JournalBusyError as e:
        raise JournalBusyError(f"{e} (is `sockgate run` running? stop it, or ask it to rotate)") from None


def register(cli: click.Group) -> None:
    cli.add_command(group)
