"""`sockgate fleet policy keygen|sign|verify|apply|status` (printing only; the work is in
sockgate.fleet.bundle and sockgate.fleet.apply)."""

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
    from sockgate.fleet.bundle import MAX_POLICY, load_private_key, parse_window, sign
    from sockgate.safedir import write_atomic

    window = parse_window(replay_window)
    private = load_private_key(key_file)
    with open(file, "rb") as f:
        data = f.read(MAX_POLICY + 1)
    raw, bundle = sign(data, private, version=version, group=group_name, max_breaks=max_breaks,
                       replay_window_ns=window, source=file)
    write_atomic(output, raw)
    if as_json:
        click.echo(json.dumps({"ok": True, "bundle": output, **bundle.to_dict()}, indent=2))
    else:
        click.echo(f"{output}: {bundle.describe()}")


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
@json_option
def status_cmd(fleet_dir: str, as_json: bool) -> None:
    """What this host applied: per group the last version, its digest, signer and time,
    and the last apply's result (refusals included)."""
    from sockgate.fleet.apply import read_state
    from sockgate.record import oneline

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
