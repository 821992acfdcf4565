"""`sockgate fleet policy keygen|sign|verify|apply|status|push|fetch` (printing only; the
work is in sockgate.fleet.bundle, .apply, .push and .deliver)."""

from __future__ import annotations

import json

import click

from sockgate.cli.daemon import pin_dir_option
from sockgate.cli.options import DEFAULT_POLICY, journal_option, json_option
from sockgate.errors import UsageError
from sockgate.record import FLEET_DIR

fleet_dir_option = click.option("--fleet-dir", default=FLEET_DIR, show_default=True, type=click.Path(file_okay=False),
                                help="This host's fleet directory: trusted keys (policy-keys/*.pub), the "
                                     "applied-bundle state, the host's group.")
trust_option = click.option("--trust", "trust", multiple=True, type=click.Path(dir_okay=False), metavar="KEY.pub",
                            help="A trusted administrator public key. Repeatable. Default: every "
                                 "FLEET_DIR/policy-keys/*.pub.")


@click.group("policy")
def group() -> None:
    """Signed policy bundles: sign on an administrator's machine, apply on the hosts.

    \b
    The administrator's Ed25519 key stays off the hosts; hosts trust its public key.
      sockgate fleet policy keygen -o admin.key                  # admin.key (0600) + admin.pub
      sockgate fleet policy sign policy.toml --key admin.key --version 7 --group web -o web-7.json
      sockgate fleet policy verify web-7.json --trust admin.pub
      sockgate fleet policy apply web-7.json --group web         # on a host, as root
      sockgate fleet policy status                               # what this host applied
    Or through the collector: push once, every host of the group fetches, applies, reports.
      sockgate fleet policy push web-7.json --db postgresql://... --trust admin.pub
      sockgate fleet policy status --db postgresql://...         # per host: version, last result
    """


def register(cli: click.Group) -> None:
    """Hang `policy` under the `fleet` group (created here if no other module made it)."""
    fleet = cli.commands.get("fleet")
    if fleet is None:
        fleet = click.Group("fleet", help="Many hosts: signed policy bundles (and, with the collector, one journal).")
        cli.add_command(fleet)
    fleet.add_command(group)


@group.command("keygen")
@click.option("--output", "-o", "output", required=True, type=click.Path(dir_okay=False),
              help="The private key file (written 0600; never overwritten). The public key goes beside it as .pub.")
@json_option
def keygen_cmd(output: str, as_json: bool) -> None:
    """Make an administrator's Ed25519 signing key pair.

    Keep the private key off the hosts (an offline machine, a token). Install the public
    key on every host as /etc/sockgate/fleet/policy-keys/NAME.pub (root, 0644, in a
    directory only root can write).
    """
    from sockgate.fleet.bundle import keygen

    public, pub = keygen(output)
    if as_json:
        click.echo(json.dumps({"private_key": output, "public_key": str(pub), "key_id": public.key_id,
                               "public_pem": public.pem().decode()}, indent=2))
        return
    click.echo(f"{output}: private signing key (0600): keep it off the hosts\n"
               f"{pub}: public key {public.key_id}: install it on the hosts under {FLEET_DIR}/policy-keys/\n"
               + public.pem().decode().rstrip())


@group.command("sign")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option("--key", "key_file", required=True, type=click.Path(dir_okay=False), help="The private key (keygen).")
@click.option("--version", "version", required=True, type=click.IntRange(1, 2**63 - 1),
              help="Monotonic version: hosts refuse a bundle not newer than the last they applied.")
@click.option("--group", "group_name", required=True, help="The host group it is for (letters, digits, . _ -).")
@click.option("--max-breaks", type=click.IntRange(min=0), default=0, show_default=True,
              help="Journaled decisions the replay gate may see break on a host before it refuses.")
@click.option("--replay-window", default="24h", show_default=True,
              help="How much of each host's journal the replay gate reads (e.g. 24h, 7d).")
@click.option("--output", "-o", "output", required=True, type=click.Path(dir_okay=False),
              help="The bundle file to write (atomically).")
@json_option
def sign_cmd(file: str, key_file: str, version: int, group_name: str, max_breaks: int, replay_window: str,
             output: str, as_json: bool) -> None:
    """Check policy FILE (as `policy check` does) and sign it into a bundle.

    A policy that does not check is never signed: its errors are listed as FILE:LINE
    and nothing is written. Exit status 0 signed, 1 the policy does not check, 2 usage.
    """
    from sockgate.safedir import write_atomic

    raw, bundle, _ = _sign_file(file, key_file, version, group_name, max_breaks, replay_window)
    write_atomic(output, raw)
    if as_json:
        click.echo(json.dumps({"ok": True, "bundle": output, **bundle.to_dict()}, indent=2))
    else:
        click.echo(f"{output}: {bundle.describe()}")


def _sign_file(file: str, key_file: str, version: int, group_name: str, max_breaks: int, replay_window: str):
    """sign's work, shared with `push --key`: (bundle bytes, Bundle, the signer's public key)."""
    from sockgate.fleet.bundle import MAX_POLICY, load_private_key, parse_window, public_of, sign

    window = parse_window(replay_window)
    private = load_private_key(key_file)
    with open(file, "rb") as f:
        data = f.read(MAX_POLICY + 1)
    raw, bundle = sign(data, private, version=version, group=group_name, max_breaks=max_breaks,
                       replay_window_ns=window, source=file)
    return raw, bundle, public_of(private)


@group.command("verify")
@click.argument("bundle_file", metavar="BUNDLE", type=click.Path(dir_okay=False))
@trust_option
@fleet_dir_option
@json_option
def verify_cmd(bundle_file: str, trust: tuple[str, ...], fleet_dir: str, as_json: bool) -> None:
    """Check BUNDLE's signature against the trusted keys, its shape and digest, and that
    its policy checks on this machine. Exit status 0 good, 1 not."""
    from sockgate.fleet.apply import trusted_keys
    from sockgate.fleet.bundle import read_bundle, verify

    bundle = verify(read_bundle(bundle_file), trusted_keys(fleet_dir, trust), bundle_file)
    if as_json:
        click.echo(json.dumps({"ok": True, **bundle.to_dict()}, indent=2))
    else:
        click.echo(f"{bundle_file}: ok: {bundle.describe()}")


@group.command("apply")
@click.argument("bundle_file", metavar="BUNDLE", type=click.Path(dir_okay=False))
@trust_option
@click.option("--group", "group_name", help="This host's group (default: the first line of FLEET_DIR/group).")
@fleet_dir_option
@journal_option
@click.option("--policy", "policy_file", default=DEFAULT_POLICY, show_default=True, type=click.Path(dir_okay=False),
              help="The policy file the daemon loads: replaced atomically when the bundle passes.")
@click.option("--alerts", type=click.Path(dir_okay=False),
              help="Alert rules whose channels the lock-out guard keeps reachable (default: the daemon's).")
@click.option("--reload-timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds to wait for the daemon to report the bundle's digest.")
@pin_dir_option
@json_option
def apply_cmd(bundle_file: str, trust: tuple[str, ...], group_name: str | None, fleet_dir: str, journal_dir: str,
              policy_file: str, alerts: str | None, reload_timeout: float, pin_dir: str, as_json: bool) -> None:
    """Apply a signed bundle on this host, behind the replay gate.

    \b
    In order, each step refusing with the old policy left in place:
      signature by a trusted key; the bundle's group is this host's; its version is newer
      than the last applied (rollback protection); its policy checks on this host; a
      running daemon loads --policy; the lock-out guard; the replay gate: this host's
      journaled kernel decisions of the bundle's window (24h by default) replayed through
      the bundle's policy against the installed one, at most --max-breaks (as signed)
      may break.
    Then the policy file is replaced atomically and the running daemon reloads it
    (SIGHUP) and must report the bundle's digest; if it refuses, the old file is put back.
    With no daemon running the file is still replaced ("installed": the next
    `sockgate run` loads it).

    \b
    Exit status: 0 applied or installed, 1 refused (the reason is printed; --json for
    scripts and the collector), 2 usage error.
    """
    from sockgate.fleet.apply import apply_bundle, host_group, trusted_keys
    from sockgate.fleet.bundle import check_group, read_bundle

    group_name = group_name or host_group(fleet_dir)
    if not group_name:
        raise UsageError(f"--group: this host's group is not known ({fleet_dir}/group is missing): give --group")
    try:
        check_group(group_name)
    except ValueError as e:
        raise UsageError(f"--group: {e}") from None
    result = apply_bundle(read_bundle(bundle_file), trust=trusted_keys(fleet_dir, trust), group=group_name,
                          fleet_dir=fleet_dir, journal_dir=journal_dir, policy_path=policy_file, pin_dir=pin_dir,
                          alerts_file=alerts, reload_timeout=reload_timeout, source=bundle_file)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.text())
    click.get_current_context().exit(result.exit_code)


@group.command("status")
@fleet_dir_option
@click.option("--db", metavar="URL",
              help="The fleet's PostgreSQL: show the bundles pushed and every host's delivery results instead "
                   "of this host's state (given explicitly: $SOCKGATE_FLEET_DB does not switch the view).")
@json_option
def status_cmd(fleet_dir: str, db: str | None, as_json: bool) -> None:
    """What this host applied: per group the last version, its digest, signer and time,
    and the last apply's result (refusals included). With --db: the fleet's view, the
    bundles stored per group and, per host, its group, the version it runs and its last
    push result."""
    from sockgate.record import oneline

    if db:
        return _central_status(db, as_json)
    from sockgate.fleet.apply import read_state

    state = read_state(fleet_dir)
    if as_json:
        click.echo(json.dumps(state, indent=2, sort_keys=True))
        return
    if not state["groups"]:
        click.echo(f"{fleet_dir}: no bundle applied yet")
    for g, s in sorted(state["groups"].items()):
        click.echo(f"group {oneline(g)}: version {s['version']}, sha256 {oneline(s.get('digest'))}, "
                   f"signed by {oneline(s.get('key_id'))}, applied {oneline(s.get('applied'))} "
                   f"to {oneline(s.get('policy_file'))}")
    last = state.get("last")
    if isinstance(last, dict):
        click.echo(f"last apply ({oneline(last.get('at'))}): {oneline(last.get('result'))}"
                   + (f", {oneline(last.get('reason'))}: {oneline(last.get('message'))}" if last.get("reason") else ""))


def _central_status(db: str, as_json: bool) -> None:
    from sockgate.cli.fleet import policy_cell, push_cell
    from sockgate.fleet import store
    from sockgate.fleet.push import bundles, policy_status
    from sockgate.record import format_time, oneline

    with store.connect(db) as conn:
        stored, hosts = bundles(conn), policy_status(conn)
    if as_json:
        click.echo(json.dumps({"bundles": stored, "hosts": [{"host": h, **v} for h, v in sorted(hosts.items())]},
                              indent=1))
        return
    if not stored:
        click.echo("no bundle pushed yet")
    for b in stored:
        click.echo(oneline(f"group {b['group']}: version {b['version']}, sha256 {b['digest']}, signed by "
                           f"{b['key_id']}, pushed {format_time(b['pushed_ns'])}"))
    for h, v in sorted(hosts.items()):
        last = v["last_push"]
        line = f"{h}: group {v['group'] or '-'}, runs {policy_cell(v)}, last push {push_cell(last)}"
        if last and last.get("reason"):
            line += f": {last['message']}"
        click.echo(oneline(line))


@group.command("push")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option("--db", required=True, envvar="SOCKGATE_FLEET_DB", metavar="URL",
              help="The fleet's PostgreSQL ($SOCKGATE_FLEET_DB); the collector delivers from there.")
@trust_option
@click.option("--key", "key_file", type=click.Path(dir_okay=False),
              help="Sign FILE (a policy) here first, as `sign` does; the key stays on this machine: only the "
                   "signed bundle goes to the database.")
@click.option("--group", "group_name", help="The host group (with --key: required; with a bundle: must be its group).")
@click.option("--version", "version", type=click.IntRange(1, 2**63 - 1),
              help="With --key: the version (default: one more than the newest stored for the group).")
@click.option("--max-breaks", type=click.IntRange(min=0), help="With --key: as `sign` (default 0).")
@click.option("--replay-window", help="With --key: as `sign` (default 24h).")
@click.option("--output", "-o", "output", type=click.Path(dir_okay=False),
              help="With --key: also keep the signed bundle in this file.")
@json_option
def push_cmd(file: str, db: str, trust: tuple[str, ...], key_file: str | None, group_name: str | None,
             version: int | None, max_breaks: int | None, replay_window: str | None, output: str | None,
             as_json: bool) -> None:
    """Store a signed bundle for its group; the collector delivers it to every host of
    the group, which applies it behind its own replay gate and reports back.

    \b
    FILE is a bundle signed by `sign` (checked here against --trust, default the
    FLEET_DIR/policy-keys/*.pub of this machine), or, with --key, a policy file signed
    here first:
      sockgate fleet policy push web-7.json --db postgresql://... --trust admin.pub
      sockgate fleet policy push policy.toml --group web --key admin.key --db postgresql://...
    Refused (exit 1): a version not newer than the newest stored for the group (hosts
    would refuse it), or that version again with other bytes. Pushing the same bundle
    again changes nothing. See who applied it: `fleet status` or `fleet policy status --db`.
    """
    from sockgate.fleet import store
    from sockgate.fleet.apply import trusted_keys
    from sockgate.fleet.bundle import read_bundle, verify
    from sockgate.fleet.push import newest_version, store_bundle
    from sockgate.record import oneline
    from sockgate.safedir import write_atomic

    if key_file is None:
        given = [n for n, v in (("--version", version), ("--max-breaks", max_breaks),
                                ("--replay-window", replay_window), ("--output", output)) if v is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: only with --key (a bundle is signed already)")
    elif not group_name:
        raise UsageError("--group: required with --key")
    with store.connect(db) as conn:
        store.ensure_schema(conn)
        if key_file is not None:
            if version is None:
                version = (newest_version(conn, group_name) or 0) + 1
            raw, _, public = _sign_file(file, key_file, version, group_name, max_breaks or 0, replay_window or "24h")
            keys = [public]
            if output:
                write_atomic(output, raw)
        else:
            raw, keys = read_bundle(file), trusted_keys(FLEET_DIR, trust)
        b = verify(raw, keys, file, policy=False)   # the policy is checked on each host, against its users
        if group_name and b.group != group_name:
            raise UsageError(oneline(f"--group {group_name}: {file} is a bundle for group {b.group}"))
        out = store_bundle(conn, raw, b)
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    what = "stored" if out["stored"] else "already stored (nothing changed)"
    hosts = out["hosts"]
    click.echo(oneline(f"{what}: group {out['group']} version {out['version']}, policy sha256 {out['digest']}, "
                       f"signed by {out['key_id']}; {len(hosts)} host(s) in the group"
                       + (f" ({', '.join(hosts[:10])}{', ...' if len(hosts) > 10 else ''})" if hosts else
                          ": put hosts in it with `fleet enroll --group` or `fleet group set`")))


@group.command("fetch")
@fleet_dir_option
@journal_option
@click.option("--policy", "policy_file", default=DEFAULT_POLICY, show_default=True, type=click.Path(dir_okay=False),
              help="The policy file the daemon loads: replaced atomically when a bundle passes.")
@trust_option
@click.option("--alerts", type=click.Path(dir_okay=False),
              help="Alert rules whose channels the lock-out guard keeps reachable (default: the daemon's).")
@click.option("--reload-timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds to wait for the daemon to report the bundle's digest.")
@pin_dir_option
@click.option("--once", is_flag=True, help="One round, then exit (exit 1 if the bundle was refused).")
@click.option("--interval", default="30s", show_default=True, help="Without --once: how often to ask.")
@json_option
def fetch_cmd(fleet_dir: str, journal_dir: str, policy_file: str, trust: tuple[str, ...], alerts: str | None,
              reload_timeout: float, pin_dir: str, once: bool, interval: str, as_json: bool) -> None:
    """Ask the collector for this host's group's newest bundle, apply it (as `apply`
    does) and report the result: what `sockgate run --fleet-dir` does every 30 s in a
    thread, for a host without the daemon or a catch-up.

    Each bundle is handled once: an applied one is not applied again, a refused one is
    reported once and not retried (sign a new version); FLEET_DIR/policy-delivery.json
    remembers which.
    """
    from sockgate.cli.fleet import run_until_stopped
    from sockgate.fleet.deliver import PolicyFetcher
    from sockgate.record import NS, oneline, parse_duration

    try:
        every = parse_duration(interval) / NS
    except ValueError as e:
        raise UsageError(f"--interval: {e}") from None
    if every <= 0:
        raise UsageError("--interval: must be longer than 0")
    f = PolicyFetcher(fleet_dir, journal_dir, policy_path=policy_file, pin_dir=pin_dir, alerts_file=alerts,
                      trust=trust, reload_timeout=reload_timeout, interval=every,
                      log=lambda m: click.echo(oneline(m), err=True))
    if not once:
        return run_until_stopped(f.run)
    try:
        report = f.once()
    finally:
        f.close()
    if as_json:
        click.echo(json.dumps(report, indent=2))
    elif report is None:
        click.echo("nothing new from the collector")
    else:
        from sockgate.fleet.apply import ApplyResult

        fields = {k: v for k, v in report.items() if k in ApplyResult.__dataclass_fields__}
        click.echo(ApplyResult(**fields).text())
    click.get_current_context().exit(1 if report and report.get("result") == "refused" else 0)
