"""`sockgate console` and `sockgate report` (options and printing only; the work is in
sockgate.console)."""

from __future__ import annotations

import click

from sockgate.cli.options import filter_options, journal_option
from sockgate.journal.query import Filter


@click.command("console")
@journal_option
@click.option("--listen", metavar="ADDR:PORT", help="Address to serve on (default 127.0.0.1:8477). A non-loopback "
              "address is refused unless --tls-cert, --tls-key and --token-file are all given.")
@click.option("--socket", "socket_path", metavar="PATH", help="Serve on a unix socket instead (created 0660).")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False),
              help="The policy file: Rules in file order, and each entry's explanation.")
@click.option("--metrics", "metrics_url", metavar="URL",
              help="The daemon's metrics (e.g. http://127.0.0.1:9477/metrics): kernel hit counters per rule.")
@click.option("--candidate", "candidate_file", type=click.Path(dir_okay=False),
              help="A candidate policy to review as `policy replay` would (the Replay view).")
@click.option("--fleet-db", metavar="URL",
              help="The fleet's PostgreSQL (as `fleet status --db`), read-only: adds the Fleet view, per "
                   "enrolled host what `fleet status` shows and its rejections in the last hour.")
@click.option("--key", "key_file", type=click.Path(dir_okay=False),
              help="The verification key kept off the host, for Integrity's verify.")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Where the charts' per-minute counts are kept between runs, so a restart reads only "
                   "the new entries (default $XDG_CACHE_HOME/sockgate, /var/cache/sockgate for root, "
                   "~/.cache/sockgate). Never inside the journal.")
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="TLS certificate (PEM).")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="TLS private key (PEM).")
@click.option("--token-file", type=click.Path(dir_okay=False),
              help="A file (mode 0600) whose first line is the token every request must carry "
                   "(HTTP Basic password, any user name, or Authorization: Bearer).")
def console_cmd(journal_dir: str, listen: str | None, socket_path: str | None, policy_file: str | None,
                metrics_url: str | None, candidate_file: str | None, key_file: str | None,
                tls_cert: str | None, tls_key: str | None, token_file: str | None, fleet_db: str | None,
                cache_dir: str | None) -> None:
    """A read-only web console over the journal: Live, Rules, Top, Charts, Integrity; Replay
    with --candidate, Fleet with --fleet-db.

    \b
    Examples:
      sockgate console --policy /etc/sockgate/policy.toml     # http://127.0.0.1:8477/
      sockgate console --socket /run/sockgate/console.sock
      sockgate console --fleet-db postgresql://reader@db/sockgate   # adds Fleet
      ssh -L 8477:127.0.0.1:8477 host                          # reach it from your desk

    It reads the journal read-only (it never takes a write lock), serves GET only, and
    escapes every journal value. See docs/console.md for running it without root."""
    from sockgate.console import serve

    serve(journal_dir, listen=listen, socket_path=socket_path, policy_file=policy_file, metrics_url=metrics_url,
          candidate_file=candidate_file, key_file=key_file, tls_cert=tls_cert, tls_key=tls_key,
          token_file=token_file, fleet_db=fleet_db, cache_dir=cache_dir, announce=lambda line: click.echo(line, err=True))


@click.command("report")
@journal_option
@filter_options(since="7d", short=False)
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False), help="The policy file (rule order, modes).")
@click.option("--key", "key_file", type=click.Path(dir_okay=False), help="The verification key, for the verify result.")
@click.option("--top", "n", default=10, show_default=True, type=click.IntRange(1, 100), help="Rows per top list.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The HTML file to write.")
def report_cmd(journal_dir: str, filt: Filter, policy_file: str | None, key_file: str | None, n: int,
               output: str) -> None:
    """One self-contained HTML report (inline SVG charts, no external resource; prints to PDF):
    decisions over time, top lists per outcome, rule hits, integrity, IBM i sections.

    \b
    Example:
      sockgate report --since 7d -o report.html"""
    from sockgate.console.report import write_report

    entries = write_report(journal_dir, filt, output, policy_file=policy_file, key_file=key_file, n=n)
    click.echo(f"{output}: report of {entries} entries", err=True)


def register(cli: click.Group) -> None:
    cli.add_command(console_cmd)
    cli.add_command(report_cmd)
