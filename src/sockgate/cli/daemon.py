"""`sockgate run`, `status`, `unload`."""

from __future__ import annotations

import json

import click

from sockgate.cli.options import DEFAULT_ALERTS, DEFAULT_POLICY, journal_option, json_option, pin_dir_option
from sockgate.record import format_time



@click.command("run")
@click.option("--policy", type=click.Path(dir_okay=False),
              help=f"Policy file. Default: {DEFAULT_POLICY} if it exists, else the embedded default policy.")
@journal_option
@click.option("--no-journal", is_flag=True, help="Do not journal (events only with --print-events).")
@click.option("--scope-cgroup", type=click.Path(exists=True, file_okay=False),
              help="Enforce only in this cgroup v2 subtree (default: the cgroup v2 root, the whole host).")
@click.option("--netns", type=click.Path(exists=True, dir_okay=False),
              help="Network namespace for accept decisions (default: the daemon's own).")
@click.option("--backend", type=click.Choice(["auto", "lsm", "cgroup"]), default="auto", show_default=True,
              help="Kernel backend: lsm (BPF LSM hooks: true listen(), any errno) where the kernel allows it, else cgroup. auto picks the best that loads.")
@click.option("--alerts", type=click.Path(exists=True, dir_okay=False),
              help=f"Alert rules for the built-in monitor (default: {DEFAULT_ALERTS} if it exists).")
@click.option("--print-events", is_flag=True, help="Also write each decision as a JSON line to stdout.")
@click.option("--force", is_flag=True,
              help="Start even if the policy rejects your SSH session or an alert channel (the lock-out guard).")
@click.option("--metrics", metavar="ADDR:PORT|unix:PATH",
              help="Serve Prometheus metrics here (loopback or a unix socket only: no auth, no TLS), "
                   "e.g. 127.0.0.1:9477. See docs/metrics.md.")
@pin_dir_option
def run_cmd(policy, journal_dir, no_journal, scope_cgroup, netns, backend, alerts, print_events, force, metrics,
            pin_dir):
    """Load the policy into the kernel, enforce it, journal decisions (as root).

    \b
    Programs and maps are pinned under --pin-dir: enforcement goes on if the daemon
    dies, and a restarted daemon picks up the same tables. SIGHUP reloads the policy
    (atomically; a bad file is refused and the old policy stays). SIGTERM seals the
    journal and stops the daemon; the programs stay until `sockgate unload`.

    \b
    The lock-out guard: a policy that would reject an administrator's remote session
    (this SSH session, established connections to sshd) or a connection of an alert
    channel is refused at start and at every reload, naming the rule; --force here,
    `sockgate reload --force` for a reload.
    """
    from sockgate.daemon import RunOptions, run

    run(RunOptions(policy=policy, journal_dir=None if no_journal else journal_dir, scope_cgroup=scope_cgroup,
                   netns=netns, pin_dir=pin_dir, backend=backend, alerts=alerts, print_events=print_events,
                   force=force, metrics=metrics))


@click.command("reload")
@click.option("--force", is_flag=True, help="Load even if the policy would lock out a guarded call.")
@pin_dir_option
def reload_cmd(force, pin_dir):
    """Make the running daemon reload its policy file (SIGHUP; --force: SIGUSR1).

    The daemon checks the file first; a bad policy, or one that would lock out your
    session or an alert channel, is refused (see the daemon's log and the journal's
    policy record) and the old policy stays in force."""
    import signal

    from sockgate.daemon import signal_daemon
    from sockgate.errors import KernelError

    pid = signal_daemon(pin_dir, signal.SIGUSR1 if force else signal.SIGHUP)
    if not pid:
        raise KernelError(f"no sockgate daemon is running for {pin_dir}")
    click.echo(f"asked the daemon (pid {pid}) to reload{' (forced)' if force else ''}")


@click.command("status")
@json_option
@pin_dir_option
def status_cmd(as_json, pin_dir):
    """Backend, scope, policy digest, per-rule hit counters, drops."""
    from sockgate.daemon import status

    s = status(pin_dir)
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    if not s["loaded"]:
        click.echo(f"sockgate is not loaded (nothing pinned at {pin_dir})")
        raise SystemExit(3)
    p, c = s["policy"], s["counters"]
    daemon = f"running (pid {s['daemon_pid']})" if s["daemon_pid"] else "not running (pinned programs still enforce)"
    click.echo(f"backend:   {s['backend']}\nscope:     cgroup {s['scope_cgroup']}, accept in netns {s['netns']}\n"
               f"daemon:    {daemon}\npolicy:    {p['source']} ({p['rules']} rules, {p['mode']}, "
               f"generation {p['generation']})\ndigest:    {p['digest']}\n"
               f"decisions: {c['decisions']}  journaled: {c['selected'] - c['dropped']}  dropped: {c['dropped']}")
    from rich.console import Console
    from rich.table import Table

    t = Table("#", "rule", "hits", box=None)
    for r in s["rules"]:
        t.add_row(str(r["index"]), r["name"], str(r["hits"]))
    for e, n in s["defaults"].items():
        t.add_row("-", f"default:{e}", str(n))
    console = Console(highlight=False)
    console.print(t)
    sh = s.get("shadow")
    if sh:
        from rich.markup import escape

        console.print(f"\nshadow:    {escape(sh['source'])} ({sh['rules']} rules, {sh['mode']}, generation "
                      f"{sh['generation']}, since {format_time(sh['since_ns'])}; decides beside, never enforces)\n"
                      f"digest:    {sh['digest']}\ndiffering: {sh['calls_differing']} calls"
                      + (f" (+{c['shadow_unkeyed']} not keyed: the pair table was full)" if c.get("shadow_unkeyed") else ""))
        if sh["differences"]:
            d = Table("exit", "enforcing rule", "outcome", "shadow rule", "would be", "calls", box=None)
            for x in sh["differences"]:
                d.add_row(x["exit"], escape(x["rule"]), x["outcome"], escape(x["shadow_rule"]), x["shadow_outcome"],
                          str(x["calls"]))
            console.print(d)


@click.command("unload")
@journal_option
@pin_dir_option
def unload_cmd(journal_dir, pin_dir):
    """Stop the daemon, detach every program and remove every pin (journaled)."""
    from sockgate.daemon import unload

    removed = unload(pin_dir, journal_dir)
    click.echo(f"unloaded: removed {len(removed)} pins" if removed else f"nothing was loaded at {pin_dir}")


def register(cli: click.Group) -> None:
    for cmd in (run_cmd, status_cmd, reload_cmd, unload_cmd):
        cli.add_command(cmd)
