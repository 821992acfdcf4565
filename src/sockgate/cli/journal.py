"""`sockgate journal` commands: init, show, export, verify, rotate, retain, top.

Printing only; the work is in sockgate.journal."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import click

from sockgate.cli.options import filter_options, journal_option, json_option
from sockgate.errors import JournalBusyError, UsageError, VerifyError
from sockgate.journal import Entry, Filter, parse_size
from sockgate.journal.export import FORMATS, csv_lines, formatter, summary, to_json
from sockgate.journal.query import MAX_SEQ, last_start
from sockgate.journal.seal import fingerprint, parse_verification_key, read_verification_key
from sockgate.journal.verify import checkpoint, describe_time, format_checkpoint, read_checkpoint, verify
from sockgate.record import NS, endpoint, format_time, oneline, parse_duration
from sockgate.safedir import private_file

if TYPE_CHECKING:
    from sockgate.journal import Journal


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
@click.option("--last", "-n", "last", type=click.IntRange(min=1, max=MAX_SEQ), help="Only the last N matching entries.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new entries as they are journaled.")
def show_cmd(journal_dir: str, filt: Filter, fmt: str, last: int | None, follow: bool) -> None:
    """Display journal entries (like DSPJRN).

    Streams: entries are read and printed a page at a time, so memory stays flat however
    long the journal. The table's columns are as wide as the first page needs; a longer
    value later pushes the rest of its row right rather than being cut."""
    from sockgate.journal import Journal

    j = Journal.open(journal_dir, readonly=True)
    try:
        after = last_start(j, last, filt) - 1 if last else 0
        if last and after < 0:
            after = 0
        out = _TableWriter() if fmt == "table" else _LineWriter(fmt)
        cursor = out.write(j.entries(after, filter=filt), first=True)
        if follow:
            cursor = max(cursor, j.last_seq)
            while True:
                time.sleep(0.5)
                cursor = max(cursor, out.write(j.entries(cursor, filter=filt), first=False))
    finally:
        j.close()


class _LineWriter:
    """json or csv lines, streamed."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt

    def write(self, entries: Iterable[Entry], first: bool) -> int:
        self.last = 0
        seen = _seqs(entries, self)
        lines = csv_lines(seen, header=first) if self.fmt == "csv" else (to_json(e) for e in seen)
        for line in lines:
            click.echo(line)
        return self.last


def _seqs(entries: Iterable[Entry], w: Any) -> Iterator[Entry]:
    for e in entries:
        w.last = e.seq or w.last
        yield e


class _TableWriter:
    """The table of `journal show`, a row per entry, printed as it is read. Every cell goes
    through record.oneline (control characters, line separators and bidi overrides become
    visible escapes) and is written as rich Text, never as markup, so a program named
    "/tmp/[/]x" or a user named "root\\x1b[2J" prints as itself."""

    PAGE = 500   # the entries whose values set the column widths
    HEADER = ("SEQ", "TIME (UTC)", "T", "OUTCOME", "USER", "PROGRAM", "LOCAL", "REMOTE", "RULE / DETAIL")
    RIGHT = {0}
    STYLE = {"rejected": "bold red", "audit-rejected": "yellow", "failed": "red", "allowed": "green"}

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(highlight=False, soft_wrap=True, markup=False, emoji=False)
        self.color = self.console.is_terminal
        self.widths: list[int] | None = None

    @staticmethod
    def cells(e: Entry) -> list[str]:
        o = e.outcome.value if e.outcome else ""
        user = e.user or (str(e.uid) if e.uid is not None else "")
        return [oneline(c) for c in (
            str(e.seq), format_time(e.ts_ns)[:23], e.type.value, o, user, e.program or "",
            endpoint(e.local_addr, e.local_port) or "", endpoint(e.remote_addr, e.remote_port) or "",
            summary(e) if not e.type.is_socket else (e.rule or ""))]

    def write(self, entries: Iterable[Entry], first: bool) -> int:
        from itertools import islice

        it = iter(entries)
        last = 0
        while page := [(e.seq or 0, self.cells(e)) for e in islice(it, self.PAGE)]:
            if self.widths is None:
                from rich.cells import cell_len

                self.widths = [max(cell_len(r[i]) for r in [self.HEADER, *(c for _, c in page)])
                               for i in range(len(self.HEADER))]
                self._line(list(self.HEADER), header=True)
            for seq, cells in page:
                self._line(cells)
            last = page[-1][0]
        if first and self.widths is None:
            self.console.print("no matching entries", style="dim")
        return last

    def _line(self, cells: list[str], header: bool = False) -> None:
        from rich.cells import cell_len
        from rich.text import Text

        assert self.widths is not None
        pad = [" " * max(0, w - cell_len(c)) for c, w in zip(cells, self.widths)]
        parts = [p + c if i in self.RIGHT else c + p for i, (c, p) in enumerate(zip(cells, pad))]
        if not self.color:
            sys.stdout.write(" ".join(parts).rstrip() + "\n")
            return
        line = Text(style="bold" if header else "")
        for i, part in enumerate(parts):
            if i:
                line.append(" ")
            line.append(part, style="" if header or i != 3 else self.STYLE.get(cells[3], ""))
        line.rstrip()
        self.console.print(line, crop=False, overflow="ignore", no_wrap=True)


@group.command("export")
@journal_option
@filter_options
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True)
@click.option("--output", "-O", type=click.Path(dir_okay=False, writable=True), help="Write here instead of stdout.")
def export_cmd(journal_dir: str, filt: Filter, fmt: str, output: str | None) -> None:
    """Export entries for a SIEM: json (lines), csv, cef (ArcSight), rfc5424 (syslog)."""
    from sockgate.journal import Journal

    with Journal.open(journal_dir, readonly=True) as j:
        if output:   # 0600 whatever the umask; not through a symlink, not another's file
            private_file(output, error=UsageError)
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
@click.option("--fleet-dir", default="/etc/sockgate/fleet", show_default=True, type=click.Path(file_okay=False),
              help="Where `fleet enroll` put this host's fleet state: receivers not yet shipped are kept.")
@click.option("--discard-unshipped", is_flag=True,
              help="Delete receivers the collector does not hold yet too (the cut record says so).")
def retain_cmd(journal_dir: str, max_age: str | None, max_size: str | None, fleet_dir: str,
               discard_unshipped: bool) -> None:
    """Delete whole old receivers; the cut is declared in a sealed record first. On a
    host that ships to a fleet collector, receivers it has not acknowledged are kept
    unless --discard-unshipped."""
    if max_age is None and max_size is None:
        raise UsageError("give --max-age and/or --max-size")
    try:
        age = parse_duration(max_age) / NS if max_age else None
    except ValueError as e:
        raise UsageError(f"--max-age: {e}") from None
    size = parse_size(max_size) if max_size else None
    from sockgate.fleet.ship import shipped_seq

    with _writer(journal_dir) as j:
        shipped = shipped_seq(fleet_dir, j.id)
        gone = j.retain(max_age=age, max_size=size, shipped_seq=shipped, discard_unshipped=discard_unshipped)
    click.echo(f"deleted {len(gone)} receiver(s)" + (": " + ", ".join(gone) if gone else ""))
    if shipped is not None:
        click.echo(f"fleet: the collector holds this journal through seq {shipped}"
                   + ("; receivers after it were deleted anyway (--discard-unshipped)" if discard_unshipped
                      else "; receivers after it are kept"))


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
