"""`sockgate collector` and `sockgate fleet token|enroll|status|show|top|export|verify`.

Printing only; the work is in sockgate.fleet."""

from __future__ import annotations

import json
import sys

import click

from sockgate.cli.journal import _LineWriter, _TableWriter
from sockgate.cli.options import filter_options, journal_option, json_option
from sockgate.errors import UsageError, VerifyError
from sockgate.journal import Entry, Filter
from sockgate.journal.export import formatter
from sockgate.record import format_time, oneline

db_option = click.option("--db", required=True, envvar="SOCKGATE_FLEET_DB", metavar="URL",
                         help="The fleet's PostgreSQL, e.g. postgresql://sockgate@db/sockgate ($SOCKGATE_FLEET_DB).")
state_option = click.option("--state", "state_dir", default="/var/lib/sockgate/collector", show_default=True,
                            type=click.Path(file_okay=False),
                            help="The collector's state: its CA and the hosts' verification keys.")


def _log(msg: str) -> None:
    click.echo(f"collector: {oneline(msg)}", err=True)


@click.command("collector")
@db_option
@click.option("--listen", required=True, metavar="ADDR:PORT", help="Address to serve HTTPS (mutual TLS) on.")
@state_option
@click.option("--name", "names", multiple=True, metavar="DNS",
              help="Another name hosts reach the collector by (in its certificate). Repeatable.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Processes serving the one listening socket (each with its own database connections).")
def collector_cmd(db: str, listen: str, state_dir: str, names: tuple[str, ...], workers: int) -> None:
    """Receive sealed journal segments from enrolled hosts into PostgreSQL.

    \b
    Hosts enrol once with a token (`sockgate fleet token`), then ship with
    `sockgate run --fleet-dir DIR`. Each segment is stored only when it continues the
    host's chain and its seals check; one transaction per segment."""
    from sockgate.fleet.collector import open_collector

    from sockgate.fleet.collector import serve

    srv = open_collector(db, listen, state_dir, names=list(names), log=_log)
    _log(f"listening on https://{listen} with {workers} worker(s) (CA fingerprint {srv.ingest.ca.fingerprint})")
    serve(srv, workers)


@click.group("fleet")
def group() -> None:
    """Many hosts, one verifiable journal on PostgreSQL.

    \b
    On the collector:
      sockgate collector --db postgresql://... --listen 0.0.0.0:8478 --state /var/lib/sockgate/collector
      sockgate fleet token --db postgresql://...         # one per host, one-time
    On each host (once), then run the daemon with the fleet directory:
      sockgate fleet enroll --server https://collector:8478 --token sgft1:... --name web1
      sockgate run --fleet-dir /etc/sockgate/fleet
    Anywhere with the database:
      sockgate fleet status --db ...
      sockgate fleet show --db ... --outcome rejected --remote 10.1.2.0/24 --since 24h
      sockgate fleet verify --db ... --state /var/lib/sockgate/collector
    """


@group.command("token")
@db_option
@state_option
@click.option("--ttl", default="1h", show_default=True, help="How long the token is valid.")
def token_cmd(db: str, state_dir: str, ttl: str) -> None:
    """Print a one-time enrolment token (it carries the collector's CA fingerprint)."""
    from sockgate.fleet.collector import new_token
    from sockgate.record import NS, parse_duration

    try:
        seconds = parse_duration(ttl) // NS
    except ValueError as e:
        raise UsageError(f"--ttl: {e}") from None
    click.echo(new_token(db, state_dir, max(1, seconds)))


@group.command("enroll")
@click.option("--server", required=True, metavar="URL", help="The collector, https://HOST:PORT.")
@click.option("--token", required=True, help="From `sockgate fleet token`.")
@click.option("--name", required=True, help="This host's name in the fleet.")
@click.option("--fleet-dir", default="/etc/sockgate/fleet", show_default=True, type=click.Path(file_okay=False))
@journal_option
@click.option("--key", "key_file", type=click.Path(dir_okay=False),
              help="The journal's verification key, if it is not in the journal directory.")
@click.option("--group", "group_name", metavar="G",
              help="This host's policy group: written to FLEET_DIR/group and recorded by the collector, which "
                   "then delivers the group's signed bundles (default: FLEET_DIR/group, if it exists).")
def enroll_cmd(server: str, token: str, name: str, fleet_dir: str, journal_dir: str, key_file: str | None,
               group_name: str | None) -> None:
    """Enrol this host with a collector: get a client certificate, hand over the journal's
    verification key (the collector checks every seal with it), and name its policy group."""
    from sockgate.fleet.ship import enroll

    info = enroll(server, token, name, fleet_dir, journal_dir, key_file, group=group_name)
    click.echo(oneline(f"enrolled as {info['name']} with {info['server']} (journal {info['journal']}"
                       + (f", policy group {info['group']}" if info["group"] else ", no policy group") + "); "
                       f"certificate in {fleet_dir}"))
    if key_file is None:
        click.echo(f"the collector now holds the verification key: move {journal_dir}/verification.key off this host")


@group.command("ship")
@click.option("--fleet-dir", default="/etc/sockgate/fleet", show_default=True, type=click.Path(file_okay=False))
@journal_option
@click.option("--once", is_flag=True, help="Ship what is sealed now, then exit (exit 1 if the collector refused).")
def ship_cmd(fleet_dir: str, journal_dir: str, once: bool) -> None:
    """Ship the journal to the collector without the daemon (what `sockgate run
    --fleet-dir` does in a thread): for a host that only imports IBM i exports, or a
    catch-up. Only sealed entries are shipped; the daemon seals every 60 s (and sooner
    when it ships)."""
    from sockgate.fleet.ship import Shipper

    s = Shipper(fleet_dir, journal_dir, log=lambda m: click.echo(oneline(m), err=True))
    if once:
        try:
            click.echo(f"collector holds {s.info['name']} through seq {s.ship_once()}")
        finally:
            s.close()
        return
    run_until_stopped(s.run)


def run_until_stopped(run) -> None:
    """run(stop) until SIGTERM or Ctrl-C sets stop (the shipper's and the policy fetcher's loops)."""
    import signal
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        run(stop)
    except KeyboardInterrupt:
        pass


def _conn(db: str):
    from sockgate.fleet import store

    return store.connect(db)


@group.command("status")
@db_option
@json_option
def status_cmd(db: str, as_json: bool) -> None:
    """Per host: group, last seen, shipped seq, lag, the policy it runs (version and
    digest it reported; else the digest its journal shipped), the last policy push's
    result (a refusal with its reason), last verify."""
    from sockgate.fleet.central import status

    with _conn(db) as conn:
        rows = status(conn)
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        click.echo("no enrolled hosts")
        return
    click.echo(f"{'HOST':<20} {'GROUP':<12} {'SHIPPED':>10} {'LAG':>8} {'LAST SEEN (UTC)':<20} {'POLICY':<20} "
               f"{'LAST PUSH':<28} VERIFY")
    for r in rows:
        lag = "-" if r["lag_s"] is None else f"{r['lag_s']:.0f}s"
        seen = format_time(r["last_seen_ns"])[:19] if r["last_seen_ns"] else "never"
        verify = "FLAGGED: " + r["flag"] if r["flag"] else (r["last_verify"] or "never verified")
        if r["revoked_ns"]:
            verify = f"REVOKED {format_time(r['revoked_ns'])[:19]}: {r['revoked_why']}; {verify}"
        click.echo(oneline(f"{r['host']:<20} {r['group'] or '-':<12} {r['shipped_seq']:>10} {lag:>8} {seen:<20} "
                           f"{policy_cell(r):<20} {push_cell(r['last_push']):<28} {verify}"))


def policy_cell(r: dict) -> str:
    """The policy a host runs: v7 and the digest it reported, else the shipped digest."""
    ran = r.get("policy_applied") or {}
    digest = (ran.get("digest") or r.get("policy_digest") or "-")[:12]
    return f"v{ran['version']} {digest}" if ran.get("version") is not None else digest


def push_cell(last: dict | None) -> str:
    """A host's last push result: `applied v7`, `refused v8 replay-gate`."""
    if not last:
        return "-"
    v = f" v{last['version']}" if last.get("version") is not None else ""
    return f"{last['result']}{v}" + (f" {last['reason']}" if last.get("reason") else "")


@group.group("group")
def group_grp() -> None:
    """Policy groups: which signed bundles (`fleet policy push`) the collector delivers to
    which host. A host also names its group in FLEET_DIR/group; if the two disagree, the
    host refuses the bundles (reason `group`, reported)."""


@group_grp.command("set")
@click.argument("host")
@click.argument("group_name", metavar="GROUP")
@db_option
@json_option
def group_set_cmd(host: str, group_name: str, db: str, as_json: bool) -> None:
    """Put enrolled HOST in GROUP (the administrator's word, over what it said at enrolment)."""
    from sockgate.fleet import store
    from sockgate.fleet.push import set_group

    with _conn(db) as conn:
        store.ensure_schema(conn)
        before = set_group(conn, host, group_name)
    if as_json:
        click.echo(json.dumps({"host": host, "group": group_name, "previous": before}))
    else:
        click.echo(oneline(f"{host}: group {group_name}" + (f" (was {before})" if before else "")))


@group.command("revoke")
@click.argument("host")
@click.option("--reason", required=True, help="Why (kept with the host, shown by `fleet status`, sent to the host).")
@db_option
@json_option
def revoke_cmd(host: str, reason: str, db: str, as_json: bool) -> None:
    """Revoke HOST's client certificate: the collector refuses it on every endpoint from
    now on (a stolen key or a retired host). What it shipped stays in the store and is
    still verified. There is no un-revoke: enroll the machine again under a new name.

    \b
    Example:
      sockgate fleet revoke web1 --reason "key exposed in ticket 4711" --db postgresql://..."""
    from sockgate.fleet import store

    reason = oneline(reason.strip())[:200]
    if not reason:
        raise UsageError("--reason: say why (it is kept with the host)")
    with _conn(db) as conn:
        h = store.revoke(conn, host, reason)
    out = {"host": h["name"], "revoked": format_time(h["revoked_ns"]), "reason": h["revoked_why"]}
    if as_json:
        click.echo(json.dumps(out, indent=1))
    else:
        click.echo(oneline(f"{out['host']}: revoked at {out['revoked']} ({out['reason']})"))


@group.command("retain")
@click.option("--max-age", required=True, help="Drop the day partitions older than this (e.g. 90d).")
@click.option("--dry-run", is_flag=True, help="Say what would be cut and dropped; change nothing.")
@db_option
@json_option
def retain_cmd(max_age: str, dry_run: bool, db: str, as_json: bool) -> None:
    """Drop whole day partitions older than --max-age, declaring per host the cut that keeps
    its chain verifiable (at the first seal at or past its last seq in those days; its rows
    up to that seal in newer partitions go too). `fleet verify` then starts each host at its
    cut. Needs the schema owner (the collector's ingest role may not drop anything)."""
    import time

    from sockgate.fleet.central import retain
    from sockgate.record import parse_duration

    try:
        age = parse_duration(max_age)
    except ValueError as e:
        raise UsageError(f"--max-age: {e}") from None
    with _conn(db) as conn:
        r = retain(conn, time.time_ns() - age, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(r, indent=1))
        return
    verb = "would drop" if dry_run else "dropped"
    click.echo(f"{verb} {len(r['partitions'])} day partition(s) before {format_time(r['before_ns'])[:19]}"
               + (": " + ", ".join(r["partitions"]) if r["partitions"] else ""))
    for c in r["cuts"]:
        click.echo(oneline(f"  {c['host']}: cut through seq {c['through_seq']}"
                           + (f" ({c['deleted_from_kept']} newer row(s) up to that seal deleted too)"
                              if c["deleted_from_kept"] else "")))


class _FleetTable(_TableWriter):
    HEADER = ("HOST", *_TableWriter.HEADER)
    RIGHT = {1}

    def write(self, pairs, first: bool) -> int:  # type: ignore[override]
        self._host = ""
        return super().write(self._tag(pairs), first)

    def _tag(self, pairs):
        for name, e in pairs:
            self._host = name   # cells() runs as each entry is read
            yield e

    def cells(self, e: Entry) -> list[str]:  # type: ignore[override]
        return [oneline(self._host), *_TableWriter.cells(e)]


@group.command("show")
@db_option
@filter_options
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--last", "-n", "last", type=click.IntRange(min=1), help="Only the last N matching entries.")
def show_cmd(db: str, filt: Filter, fmt: str, last: int | None) -> None:
    """Entries of every host, in time order, with the filters of `journal show`;
    --host names an enrolled host."""
    from sockgate.fleet.central import entries

    with _conn(db) as conn:
        pairs = entries(conn, filt, last=last)
        if fmt == "table":
            _FleetTable().write(pairs, first=True)
        elif fmt == "json":
            for name, e in pairs:
                d = e.to_dict()
                click.echo(json.dumps({"fleet_host": name, **d}, ensure_ascii=True))
        else:
            _LineWriter("csv").write((e for _, e in pairs), first=True)


@group.command("export")
@db_option
@filter_options
@click.option("--format", "fmt", type=click.Choice(["json", "csv", "cef", "rfc5424"]), required=True)
def export_cmd(db: str, filt: Filter, fmt: str) -> None:
    """Export every host's entries for a SIEM (the formats of `journal export`)."""
    from sockgate.fleet.central import entries

    with _conn(db) as conn:
        for line in formatter(fmt)(e for _, e in entries(conn, filt)):
            sys.stdout.write(line + "\n")


@group.command("top")
@db_option
@filter_options
@click.option("--by", "field", default="remote_addr", show_default=True,
              type=click.Choice(["host", "remote_addr", "local_addr", "user", "program", "rule", "remote_port",
                                 "local_port", "type", "outcome"]))
@click.option("--count", "-n", "n", default=10, show_default=True, type=click.IntRange(min=1))
@json_option
def top_cmd(db: str, filt: Filter, field: str, n: int, as_json: bool) -> None:
    """The most frequent values of one field over the fleet, e.g. the remote addresses
    refused most: `sockgate fleet top --db ... --outcome rejected`."""
    from sockgate.fleet.central import top

    with _conn(db) as conn:
        rows = top(conn, field, filt, n)
    if as_json:
        click.echo(json.dumps([{field: v, "count": c} for v, c in rows]))
        return
    for v, c in rows:
        click.echo(oneline(f"{c:>10}  {v if v is not None else '-'}"))


@group.command("verify")
@db_option
@click.option("--state", "state_dir", type=click.Path(file_okay=False),
              help="The collector's state directory: with it the seals' MACs are checked too.")
@click.option("--host", "hosts", multiple=True, help="Only this host. Repeatable.")
@json_option
def verify_cmd(db: str, state_dir: str | None, hosts: tuple[str, ...], as_json: bool) -> None:
    """Re-check every host's chain and seals from the PostgreSQL rows. Exit 1 naming
    host and seq on any edit, insertion or deletion; also for a host the collector caught
    rewriting its local history after shipping."""
    from sockgate.fleet.central import verify

    with _conn(db) as conn:
        reps = verify(conn, state_dir, hosts)
    bad = [r for r in reps if not r.ok]
    if as_json and not bad:
        click.echo(json.dumps({"ok": True, "hosts": [r.to_dict() for r in reps]}, indent=1))
    elif not as_json:
        for r in reps:
            span = f"seq {r.first_seq}..{r.last_seq}" if r.last_seq else "nothing shipped"
            state = "OK" if r.ok else f"FAILED at seq {r.bad_seq}: {r.error}"
            click.echo(oneline(f"{r.host}: {r.entries} entries ({span}), {r.seals} seal(s) "
                               f"{'authenticated' if r.keyed else 'not authenticated (no --state)'}: {state}"))
            for w in r.warnings:
                click.echo(oneline(f"warning: {r.host}: {w}"), err=True)
    if bad:
        first = bad[0]
        e = VerifyError(f"fleet verify FAILED for {len(bad)} host(s); first: {first.host} at seq {first.bad_seq}: "
                        f"{first.error}", seq=first.bad_seq)
        e.details = {"hosts": [r.to_dict() for r in reps]}   # the JSON rendering carries every host
        raise e


def register(cli: click.Group) -> None:
    cli.add_command(collector_cmd)
    cli.add_command(group)

