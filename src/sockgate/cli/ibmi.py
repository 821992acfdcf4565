"""`sockgate ibmi import` (printing only; the work is in sockgate.ibmi.importer)."""

from __future__ import annotations

import json
import sys

import click

from sockgate.cli.options import journal_option, json_option
from sockgate.ibmi.importer import FORMATS, Summary, import_file
from sockgate.record import EntryType

PROGRESS_MIN = 20_000  # records: smaller files finish before a bar is worth drawing


@click.group("ibmi")
def group() -> None:
    """Read IBM i QAUDJRN SK (socket connection) audit entries into the journal."""


def register(cli: click.Group) -> None:
    cli.add_command(group)


class RichProgress:
    """A rich progress bar on stderr, drawn only on a terminal and for large inputs."""

    def __init__(self) -> None:
        self.bar = None
        self.task = None
        self.drawn = False  # an open-ended phase (total None) follows a drawn one only

    def start(self, total: int | None, description: str) -> None:
        self.stop()
        big = self.drawn if total is None else total >= PROGRESS_MIN
        if not sys.stderr.isatty() or not big:
            return
        self.drawn = True
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn,
                                   TextColumn, TimeElapsedColumn, TimeRemainingColumn)

        columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
        self.bar = Progress(*columns, console=Console(stderr=True), transient=True)
        self.bar.start()
        self.task = self.bar.add_task(description, total=total)

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _print_summary(s: Summary) -> None:
    if s.dry_run:
        head = f"Dry run: {s.records:,} entries parsed from {s.file} ({s.format}); nothing written"
    else:
        head = (f"Imported {s.imported:,} new entries from {s.file} ({s.format}) "
                f"into {s.journal}")
    click.echo(head)
    counts = f"  records          {s.records:,}"
    if not s.dry_run:
        counts += f"   new {s.imported:,}   already present {s.already_present:,}"
    if s.skip_bad_file is not None:
        counts += f"   bad {s.bad:,} (written to {s.skip_bad_file})"
    click.echo(counts)
    if s.by_type:
        click.echo("  by type")
        for t, n in s.by_type.items():
            click.echo(f"    {t}  {EntryType(t).ibm_text:34s}{n:>12,}")
    if s.systems:
        click.echo("  systems          " + ", ".join(s.systems))
    if s.first:
        click.echo(f"  time span (UTC)  {s.first} .. {s.last}")
        click.echo(f"  IBM i local time read as {s.time_zone} (change with --utc-offset)")
    for b in s.bad_records[:10]:
        click.echo(f"sockgate: skipped record {b['record']} (byte offset {b['offset']}): "
                   f"{b['reason']}", err=True)
    if s.bad > 10:
        click.echo(f"sockgate: ... and {s.bad - 10} more bad records", err=True)


@group.command("import")
@click.argument("file", metavar="FILE|-")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
              help="type5 / type4: DSPJRN OUTFILFMT(*TYPE5/*TYPE4) outfile records in binary; "
                   "csv: that outfile copied with CPYTOIMPF; audit-sk: SYSTOOLS.AUDIT_JOURNAL_SK "
                   "rows as CSV or JSON with column names; auto: sniff.")
@click.option("--ccsid", type=int, default=None,
              help="CCSID of the data. Binary records default to 37 (EBCDIC), or ASCII when the "
                   "heading says so; text files default to UTF-8.")
@click.option("--record-length", type=int, default=None,
              help="Bytes per binary record (default: detected from the recurring heading).")
@click.option("--utc-offset", default="local", show_default=True,
              help="Time zone of the IBM i's timestamps (they are local system time): local "
                   "(this host's zone), UTC, +HH:MM / -HH:MM, or a zone name like Europe/Berlin.")
@click.option("--skip-bad", type=click.Path(dir_okay=False), default=None,
              help="Write bad records to this file and import the rest (default: a bad record "
                   "stops the import and nothing is written).")
@click.option("--dry-run", is_flag=True, help="Parse and summarize; write nothing.")
@journal_option
@json_option
def import_(file: str, fmt: str, ccsid: int | None, record_length: int | None, utc_offset: str,
            skip_bad: str | None, dry_run: bool, journal_dir: str, as_json: bool) -> None:
    """Import IBM i SK audit entries from FILE (- reads standard input).

    \b
    Each SK entry (A C D F I O P R S U X) becomes one journal entry, identified by
    SYSTEM:SEQUENCE, so importing the same data again adds nothing. The file is imported
    whole or not at all, unless --skip-bad is given.
    \b
    Examples:
      sockgate ibmi import qaudsk.bin                    # DSPJRN *TYPE5 outfile, CCSID 37
      sockgate ibmi import sk.csv --format audit-sk --utc-offset Europe/Berlin
      ssh ibmi 'cat /tmp/sk.bin' | sockgate ibmi import - --json
    """
    summary = import_file(file, journal_dir, fmt=fmt, ccsid=ccsid, record_length=record_length,
                          utc_offset=utc_offset, skip_bad=skip_bad, dry_run=dry_run,
                          progress=RichProgress())
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        _print_summary(summary)
