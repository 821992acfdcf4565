"""`sockgate monitor`: run the alert monitor, check a rules file, or replay the journal
(printing only; the work is in sockgate.monitor)."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time

import click

from sockgate.cli.options import DEFAULT_ALERTS, journal_option, json_flag
from sockgate.record import MONITOR_STATE_DIR
from sockgate.errors import UsageError


def register(cli: click.Group) -> None:
    cli.add_command(monitor)


def _check(file: str, as_json: bool) -> None:
    from sockgate.monitor import load_rules

    from sockgate.record import format_duration

    rs = load_rules(file)  # RulesErrors: rendered by the entry point (text or JSON)
    kinds: dict[str, int] = {}
    for r in rs.rules:
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    cp = rs.checkpoint
    if as_json:
        click.echo(json.dumps({"ok": True, "errors": [], "rules": len(rs.rules), "kinds": kinds,
                               "channels": list(rs.channels),
                               "checkpoint": cp and {"every": format_duration(cp.every_ns),
                                                     "channels": list(cp.channels)}}, indent=2))
        return
    detail = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none enabled"
    click.echo(f"{file}: ok ({len(rs.rules)} alert rule{'s' if len(rs.rules) != 1 else ''}: {detail}; "
               f"channels: {', '.join(rs.channels) or 'none'}"
               + (f"; checkpoint every {format_duration(cp.every_ns)} to {', '.join(cp.channels)}" if cp else "")
               + ")")


def _test(file: str, journal_dir: str, since: str | None, as_json: bool) -> None:
    from sockgate.journal import Journal
    from sockgate.monitor import load_rules, replay
    from sockgate.record import format_time, parse_time

    rs = load_rules(file)
    since_ns = None
    if since is not None:
        try:
            since_ns = parse_time(since)
        except ValueError as e:
            raise UsageError(f"--since: {e}") from None
    with Journal.open(journal_dir, create=False, readonly=True) as j:
        counted = [0]

        def entries():
            for e in j.entries(0):
                counted[0] += 1
                yield e
        alerts = replay(rs, entries(), since_ns=since_ns)
    for a in alerts:
        p = a.payload
        if as_json:
            click.echo(json.dumps({**p, "channels": list(a.channels)}))
        else:
            click.echo(f"{p['last_time']}  {p['severity']:<8} {p['alert']}: {p['message']}  "
                       f"-> {', '.join(a.channels)}")
    scope = f"since {format_time(since_ns)}" if since_ns is not None else "over the whole journal"
    n = len(alerts)
    click.echo(f"{n} alert{'s' if n != 1 else ''} would fire {scope} ({counted[0]} entries read; nothing sent, "
               "no state touched)", err=True)


@click.command("monitor")
@click.option("--rules", "rules_file", default=DEFAULT_ALERTS, show_default=True, envvar="SOCKGATE_ALERTS",
              type=click.Path(dir_okay=False), help="Alert rules file (TOML).")
@journal_option
@click.option("--state", "state_dir", default=MONITOR_STATE_DIR, show_default=True,
              type=click.Path(file_okay=False), help="Monitor state directory (cursor, windows, outboxes).")
@click.option("--store", "store_url", metavar="postgresql://...", envvar="SOCKGATE_STORE",
              help="Run over the whole fleet: every host's entries in the collector's PostgreSQL store, "
                   "the state (cursor, windows, outboxes) in its schema sockgate_monitor; woken by the "
                   "collector's NOTIFY. Exclusive with --journal and --state.")
@click.option("--check", "check_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Validate a rules file and exit (1 when it has errors).")
@click.option("--test", "test_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Replay the journal through FILE's rules and print what would fire (sends nothing).")
@click.option("--since", metavar="WHEN", help="With --test: replay from this time (\"1h\" ago, today, or ISO time; no zone = local); "
              "earlier entries only teach first_seen baselines.")
@click.option("--once", is_flag=True, help="Process what is new, deliver what can be delivered, exit.")
@click.option("--poll", "poll_interval", default=None, type=click.FloatRange(0.01, 3600),
              help="Seconds between journal polls (default 0.5); with --store, the longest sleep between "
                   "NOTIFY wake-ups, for timers and retries (default 5).")
@json_flag("With --check: the result as a JSON object {ok, errors: [{file, line, message}]}; "
           "with --test: one JSON alert per line.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def monitor(ctx: click.Context, rules_file: str, journal_dir: str, state_dir: str, store_url: str | None,
            check_file: str | None, test_file: str | None, since: str | None, once: bool,
            poll_interval: float | None, as_json: bool, verbose: int) -> None:
    """Watch the journal and raise alerts (syslog, email, webhook, command).

    \b
      sockgate monitor                          # follow the journal (as a service)
      sockgate monitor --check alerts.toml      # validate: FILE:LINE: message, exit 1
      sockgate monitor --test alerts.toml --since 1h   # what would have fired
      sockgate monitor --store postgresql://sockgate@db/sockgate   # over every host of the fleet
    """
    if check_file and test_file:
        raise UsageError("--check and --test are exclusive")
    if since is not None and not test_file:
        raise UsageError("--since applies to --test only")
    if as_json and not (test_file or check_file):
        raise UsageError("--json applies to --check and --test only")
    if store_url is not None:
        given = [f"--{n}" for n in ("journal", "state")
                 if ctx.get_parameter_source(f"{n}_dir") == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise UsageError(f"--store and {' and '.join(given)} are exclusive (the fleet monitor reads every "
                             "host's entries and keeps its state in the store)")
        if test_file:
            raise UsageError("--test replays a local journal; it does not take --store")
        if not store_url.startswith(("postgresql://", "postgres://")):
            raise UsageError(f"--store {store_url!r}: expected a postgresql://... URL")
    if check_file:
        _check(check_file, as_json)
        return
    if test_file:
        _test(test_file, journal_dir, since, as_json)
        return

    from sockgate.monitor import Monitor

    logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if store_url is not None:
        from sockgate.fleet.monitor import open_fleet_monitor
        m = open_fleet_monitor(rules_file, store_url)
        where, poll = "the fleet store", 5.0 if poll_interval is None else poll_interval
    else:
        m = Monitor.open(rules_file, journal_dir, state_dir)
        where, poll = journal_dir, 0.5 if poll_interval is None else poll_interval
    with m:
        if once:
            n = m.step()
            click.echo(f"{n} alert{'s' if n != 1 else ''} raised, {m.delivered} delivered", err=True)
            return
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: stop.set())
        logging.getLogger("sockgate.monitor").info(
            "monitor: following %s with %d rules from %s (state %s)", where, len(m.ruleset.rules),
            rules_file, m.state.describe())
        m.run(stop, poll_interval=poll)
