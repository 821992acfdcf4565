"""`sockgate policy check` and `sockgate policy explain` (printing only; the work is in
sockgate.policy.parse and sockgate.policy.evaluate)."""

from __future__ import annotations

import dataclasses
import grp
import ipaddress
import json
import os
import pwd
import sys

import click

from sockgate.cli.options import DEFAULT_ALERTS, JSON_META, filter_options, journal_option, json_option, pin_dir_option
from sockgate.errors import PolicyErrors, SockgateError, UsageError
from sockgate.journal.query import Filter
from sockgate.policy.model import Exit, Outcome, Policy
from sockgate.policy.parse import load_policy, parse_policy
from sockgate.record import endpoint, format_time, unmap
from sockgate.safedir import write_atomic

EXIT_CHOICES = [e.label for e in Exit]


@click.group("policy")
def group() -> None:
    """Check a policy file, ask what it decides for one socket call, replay the journal
    through a candidate, or learn a least-privilege policy from the journal."""


def register(cli: click.Group) -> None:
    cli.add_command(group)


# --------------------------------------------------------------------------- helpers


def _load(file: str) -> Policy:
    if file == "-":
        return parse_policy(sys.stdin.buffer.read(), "<stdin>")
    return load_policy(file)


def _digest_of(file: str) -> str | None:
    if file == "-":
        return None
    try:
        import hashlib

        with open(file, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def _arrow(right: bool = True) -> str:
    enc = (getattr(sys.stdout, "encoding", None) or "ascii").lower()
    try:
        "→←".encode(enc)
    except (UnicodeEncodeError, LookupError):
        return "->" if right else "<-"
    return "→" if right else "←"


def rules_per_exit(policy: Policy) -> dict[str, int]:
    counts = {e.label: 0 for e in Exit}
    for r in policy.rules:
        for e in r.exits:
            counts[e.label] += 1
    return counts


# --------------------------------------------------------------------------- check


@group.command("check")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--alerts", type=click.Path(dir_okay=False),
              help=f"Alert rules whose channels must stay reachable (default: {DEFAULT_ALERTS} if it exists).")
@click.option("--force", is_flag=True, help="Skip the lock-out guard.")
@json_option
def check(file: str, alerts: str | None, force: bool, as_json: bool) -> None:
    """Validate FILE (a policy TOML file, or - for stdin); list every error as FILE:LINE: message.

    \b
    The lock-out guard: the policy must not reject the SSH session you run this from
    ($SSH_CONNECTION), any established connection to sshd, or the connections of the
    alert channels in --alerts (as the daemon, root, would make them). Each one it would
    reject is named with the deciding rule. --force skips the guard.

    Exit status 0 when the policy is valid, 1 when it is not (or would lock out).
    """
    import os

    from sockgate import lockout

    from sockgate.errors import PolicyError
    from sockgate.policy.compile import compile_policy

    try:
        policy = _load(file)
        # the tables the kernel would get: a policy that does not fit its maps (or names a
        # program gone since parsing) fails here, not at the next load
        compiled = compile_policy(policy)
    except PolicyError as e:
        raise PolicyErrors([e], {"rules": 0, "digest": _digest_of(file)}) from None
    except PolicyErrors as errs:  # rendered by the entry point (text or JSON)
        errs.details.update(rules=0, digest=_digest_of(file))
        raise
    if not force:
        lockout.guard(policy, alerts or (DEFAULT_ALERTS if os.path.exists(DEFAULT_ALERTS) else None),
                      compiled=compiled, log=lambda note: click.echo(f"note: {note}", err=True))
    counts = rules_per_exit(policy)
    if as_json:
        click.echo(json.dumps({
            "ok": True,
            "errors": [],
            "rules": len(policy.rules),
            "rules_per_exit": counts,
            "mode": policy.mode.value,
            "audit_levels": sorted(policy.audit_levels),
            "defaults": {e.label: a.value for e, a in sorted(policy.defaults.items())},
            "errno": policy.errno,
            "digest": policy.digest,
        }, indent=2))
        return
    n = len(policy.rules)
    per = ", ".join(f"{k} {v}" for k, v in counts.items())
    click.echo(f"{policy.source}: ok: {n} rule{'s' if n != 1 else ''} ({per}), "
               f"mode {policy.mode.value}, sha256 {policy.digest}")


# --------------------------------------------------------------------------- explain


def _parse_id(value: str, kind: str) -> tuple[int, str | None]:
    """A user or group given by name or number → (id, name or None)."""
    v = value.strip()
    if v.isascii() and v.isdigit():
        n = int(v)
        if n > 2**32 - 2:
            raise click.BadParameter(f"{kind} id {v} out of range", param_hint=f"--{kind}")
        try:
            name = pwd.getpwuid(n).pw_name if kind == "user" else grp.getgrgid(n).gr_name
        except (KeyError, OverflowError):
            name = None
        return n, name
    try:
        if kind == "user":
            return pwd.getpwnam(v).pw_uid, v
        return grp.getgrnam(v).gr_gid, v
    except (KeyError, ValueError):
        raise click.BadParameter(f"no such {kind} {v!r} on this host", param_hint=f"--{kind}") from None


def parse_endpoint(text: str, option: str, allow_bare_port: bool) -> tuple[str, int]:
    """ADDR:PORT, [V6]:PORT, a bare address (port 0), or a bare port / :PORT (wildcard address).

    Returns (address, port) with a v4-mapped IPv6 address turned into its IPv4 form.
    """
    s = text.strip()

    def bad(why: str) -> click.BadParameter:
        return click.BadParameter(f"{text!r}: {why}", param_hint=option)

    def port_of(p: str) -> int:
        if not (p.isascii() and p.isdigit()) or int(p) > 65535:
            raise bad("port must be 0-65535")
        return int(p)

    def addr_of(a: str) -> str:
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            raise bad("not an IP address") from None
        return str(unmap(ip))

    if not s:
        raise bad("empty")
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise bad("missing ']'")
        addr = addr_of(s[1:end])
        rest = s[end + 1 :]
        if not rest:
            return addr, 0
        if not rest.startswith(":"):
            raise bad("expected :PORT after ']'")
        return addr, port_of(rest[1:])
    if (s.startswith(":") and s.count(":") == 1) or (s.isascii() and s.isdigit()):
        if not allow_bare_port:
            raise bad("needs an address (ADDR:PORT, [V6]:PORT or ADDR)")
        return "0.0.0.0", port_of(s.lstrip(":"))
    if s.count(":") == 1:
        a, p = s.split(":")
        return addr_of(a), port_of(p)
    return addr_of(s), 0  # bare v4 or v6 address


def _endpoint_str(ep: tuple[str, int] | None) -> str:
    if ep is None:
        return "*"
    return endpoint(*ep) or "*"


def build_query(exit_name: str, user: str | None, groups: tuple[str, ...], program: str | None,
                local: str | None, remote: str | None):
    """CLI values → (evaluate.Query, a dict describing the caller for printing)."""
    from sockgate.policy.evaluate import Query

    exit_point = Exit.parse(exit_name)
    uid, uname = _parse_id(user, "user") if user is not None else (0, "root")
    gids: list[int] = []
    if uname is not None:
        try:
            pw = pwd.getpwnam(uname)
            gids.append(pw.pw_gid)
            gids.extend(g for g in os.getgrouplist(uname, pw.pw_gid) if g != pw.pw_gid)
        except (KeyError, OSError):
            pass
    for g in groups:
        gid, _ = _parse_id(g, "group")
        if gid not in gids:
            gids.append(gid)
    if program is not None and not program.startswith("/"):
        raise click.BadParameter(f"{program!r}: give the executable's absolute path",
                                 param_hint="--program")
    local_ep = parse_endpoint(local, "--local", allow_bare_port=True) if local else None
    remote_ep = parse_endpoint(remote, "--remote", allow_bare_port=False) if remote else None
    query = Query(exit=exit_point, uid=uid, gids=tuple(gids), program=program,
                  local=local_ep, remote=remote_ep)
    return query, {"user": uname, "show_groups": bool(groups)}


def describe_call(query, user_name: str | None, show_groups: bool = False) -> str:
    who = f"uid={query.uid}" + (f"({user_name})" if user_name else "")
    if show_groups:
        who += " gids=" + ",".join(str(g) for g in query.gids)
    if query.program:
        who += f" program={query.program}"
    if query.exit == Exit.CONNECT:
        where = f"{_arrow()} {_endpoint_str(query.remote)}"
    elif query.exit == Exit.LISTEN:
        where = f"on {_endpoint_str(query.local)}"
    else:
        where = f"on {_endpoint_str(query.local)} {_arrow(False)} {_endpoint_str(query.remote)}"
    return f"{query.exit.label} {who} {where}"


def describe_decision(policy: Policy, query, decision) -> str:
    verdict = decision.outcome.value.upper()
    if decision.rule_index < 0:
        how = f"by default ({query.exit.label} = {decision.action.value}"
        how += f", mode {decision.mode.value})" if decision.outcome == Outcome.AUDIT_REJECTED else ")"
        return f"{verdict} {how}"
    where = f"{policy.source}:{decision.rule_line}" if decision.rule_line else policy.source
    how = f'by rule "{decision.rule_name}" ({where}'
    if decision.outcome == Outcome.AUDIT_REJECTED:
        how += ", mode audit: journaled, not blocked"
    return f"{verdict} {how})"


@group.command("explain")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.argument("exit_name", metavar="EXIT", type=click.Choice(EXIT_CHOICES))
@click.option("--user", "-u", help="Caller's user, name or uid (default root). Its groups come along.")
@click.option("--group", "-g", "groups", multiple=True, help="An extra (supplementary) group, name or gid. Repeatable.")
@click.option("--program", "-p", help="Absolute path of the caller's executable.")
@click.option("--local", "-l", metavar="ADDR:PORT", help="Local endpoint (listen, accept): ADDR:PORT, [V6]:PORT, ADDR or :PORT.")
@click.option("--remote", "-r", metavar="ADDR:PORT", help="Remote endpoint (connect, accept): ADDR:PORT, [V6]:PORT or ADDR.")
@json_option
def explain(file: str, exit_name: str, user: str | None, groups: tuple[str, ...], program: str | None,
            local: str | None, remote: str | None, as_json: bool) -> None:
    """Show what FILE decides for one socket call at exit point EXIT, and which rule decides it.

    \b
    Examples:
      sockgate policy explain policy.toml connect --user www-data --remote 10.0.0.5:25
      sockgate policy explain policy.toml listen --user nobody --local :80
      sockgate policy explain policy.toml accept --local 0.0.0.0:22 --remote [2001:db8::1]:50000
    """
    policy = _load(file)
    from sockgate.policy.evaluate import explain as evaluate_explain

    query, info = build_query(exit_name, user, groups, program, local, remote)
    # a PolicyError here: the compiler found something the parser could not (a program vanished)
    decision = evaluate_explain(policy, query)
    if as_json:
        click.echo(json.dumps({
            "exit": query.exit.label,
            "uid": query.uid,
            "user": info["user"],
            "gids": list(query.gids),
            "program": query.program,
            "local": None if query.local is None else {"address": query.local[0], "port": query.local[1]},
            "remote": None if query.remote is None else {"address": query.remote[0], "port": query.remote[1]},
            "outcome": decision.outcome.value,
            "action": decision.action.value,
            "mode": decision.mode.value,
            "rule_index": decision.rule_index,
            "rule_name": decision.rule_name,
            "rule_line": decision.rule_line,
            "file": policy.source,
            "digest": policy.digest,
        }, indent=2))
        return
    click.echo(f"{describe_call(query, info['user'], info['show_groups'])}: {describe_decision(policy, query, decision)}")


# --------------------------------------------------------------------------- replay, learn


def _format_option(choices: tuple[str, ...]):
    def remember(ctx: click.Context, param: click.Parameter, value: str) -> str:
        ctx.find_root().meta[JSON_META] = value == "json"   # errors as JSON too
        return value

    return click.option("--format", "fmt", type=click.Choice(choices), default="table", show_default=True,
                        callback=remember, help="table for people, json for scripts, html for a page to share.")


def _decisions(filt: Filter) -> Filter:
    """The filter narrowed to socket-decision entry types."""
    from sockgate.policy.replay import DECISION_TYPES

    types = tuple(t for t in (filt.types or DECISION_TYPES) if t in DECISION_TYPES)
    if not types:
        raise UsageError("--type: replay and learn read decision entries only (A C L I O)")
    return dataclasses.replace(filt, types=types)


@group.command("replay")
@click.argument("candidate", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--against", "current", type=click.Path(dir_okay=False),
              help="Compare with this policy (evaluated the same way) instead of the journaled outcomes.")
@journal_option
@filter_options(since="7d", short=False)
@_format_option(("table", "json", "html"))
@click.option("--output", "-O", type=click.Path(dir_okay=False), help="Write the report here instead of stdout.")
def replay_cmd(candidate: str, current: str | None, journal_dir: str, filt: Filter, fmt: str,
               output: str | None) -> None:
    """Replay journaled decisions through CANDIDATE's compiled tables (the ones the kernel
    would get) and report what would change.

    Every connect, listen and accept in range (kernel A/C/L and UDP O/I entries, imported
    IBM i SK entries) is decided again and compared with the journaled outcome, or with
    --against CURRENT. Differences are grouped by exit point, program, user, remote /24
    (IPv6 /64), service port and old -> new rule: "would break" (went through, now
    rejected) and "would open" (rejected, now goes through). Decisions that depend on
    something the entries do not record (supplementary groups, the executable's dev:inode,
    IBM i identities) are counted as approximated, per reason.

    \b
    Exit status (gate a push on it):
      0  nothing changes
      2  only opens (no journaled call would be rejected)
      3  something that went through would be rejected
      1  error (bad policy, no journal, nothing in range); a usage error also exits 2:
         a script that must tell the two apart reads --format json ("result")
    \b
    Examples:
      sockgate policy replay new.toml                          # last 7 days vs the journal
      sockgate policy replay new.toml --against /etc/sockgate/policy.toml --since 30d
      sockgate policy replay new.toml --host web1 --format html -O replay.html
    """
    from sockgate.journal import Journal
    from sockgate.policy.replay import replay
    from sockgate.policy.replay_format import FORMATS

    cand = _load(candidate)
    against = _load(current) if current else None
    filt = _decisions(filt)
    with Journal.open(journal_dir, readonly=True) as j:
        rep = replay(j.decisions(filter=filt), cand, against, since_ns=filt.since_ns, until_ns=filt.until_ns)
    if not rep.decisions:
        raise SockgateError(f"{journal_dir}: no journaled decisions to replay in the range"
                            f" ({'since ' + format_time(filt.since_ns) if filt.since_ns else 'all time'})"
                            + (f", {sum(rep.skipped.values())} skipped" if rep.skipped else "")
                            + "; widen it with --since")
    text = FORMATS[fmt](rep)
    if output:
        write_atomic(output, text if text.endswith("\n") else text + "\n")
        click.echo(f"{output}: {rep.result} ({rep.breaks} would break, {rep.opens} would open)", err=True)
    else:
        click.echo(text)
    click.get_current_context().exit(rep.exit_code)


@group.command("learn")
@journal_option
@filter_options(since="14d", short=False)
@click.option("--min-count", type=click.IntRange(min=1), default=1, show_default=True,
              help="Leave out rules seen fewer times than this (they are listed as not learned).")
@click.option("--generalize", is_flag=True,
              help="Rules for any user (per program), and for any program where it cannot be named.")
@click.option("--output", "-o", "output", required=True, type=click.Path(dir_okay=False),
              help="Write the learned policy here (atomically: the old file or the new one, never half).")
def learn_cmd(journal_dir: str, filt: Filter, min_count: int, generalize: bool, output: str) -> None:
    """Write a least-privilege policy learned from journaled decisions, for review.

    Reads every connect, listen and accept that went through in range (allowed, or
    audit-rejected in audit mode) and writes one allow rule per exit point, user, program
    and protocol, narrowed to the remote networks (a CIDR only where at least half of a
    /24 was seen) and service ports (ranges only where contiguous) it used. Ephemeral
    client ports are ignored. Every exit point defaults to reject. Each rule has a comment
    with its evidence: count, first and last seen, hosts, a sample sequence number.

    Without --generalize no rule allows any user or any program: decisions whose user or
    program cannot be named in a policy (IBM i profiles, unknown accept owners, programs
    gone from this host) are not learned, and the file says how many.

    \b
    Typical use (journal in audit mode for a while first: mode = "audit", *NETCMN):
      sockgate policy learn --since 14d -o learned.toml
      sockgate policy check learned.toml
      sockgate policy replay learned.toml --since 14d      # exit 0: breaks nothing
    """
    from sockgate.journal import Journal
    from sockgate.policy.learn import observe, render

    filt = _decisions(filt)
    with Journal.open(journal_dir, readonly=True) as j:
        learned = observe(j.decisions(filter=filt), generalize=generalize)
    if not learned.decisions:
        skipped = sum(learned.not_learned.values())
        raise SockgateError(f"{journal_dir}: no decisions that went through in the range to learn from"
                            + (f" ({skipped} could not be learned: see --generalize)" if skipped else "")
                            + "; widen it with --since")
    text = render(learned, source=journal_dir, min_count=min_count, generalize=generalize)
    write_atomic(output, text)
    nrules = text.count("\n[[rule]]\n")
    left = sum(learned.not_learned.values())
    click.echo(f"{output}: {nrules} rule{'s' if nrules != 1 else ''} from {learned.decisions} decisions"
               + (f"; {left} decisions not learned (see the file's head)" if left else ""), err=True)


# --------------------------------------------------------------------------- shadow mode


@group.command("shadow")
@click.argument("candidate", required=False, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--off", is_flag=True, help="Stop deciding with the shadow policy.")
@pin_dir_option
@json_option
def shadow_cmd(candidate: str | None, off: bool, pin_dir: str, as_json: bool) -> None:
    """Run CANDIDATE in shadow beside the enforcing policy (the running daemon loads it).

    The kernel decides every call by both policies; only the enforcing one is obeyed.
    Where the shadow would decide otherwise, the call is counted per pair of deciding
    rules and the first call of each pair is journaled whole (a `shadow` entry with the
    caller, program and addresses); summaries with exact counts follow every second.
    A shadow already loaded is replaced.

    \b
      sockgate policy shadow new.toml        # load it beside the enforcing policy
      sockgate status                        # where they differ, per rule, with counts
      sockgate journal show --type shadow    # samples (who, what) and counted summaries
      sockgate policy promote                # new.toml enforces now (atomically)
      sockgate policy shadow --off           # or drop it
    """
    from sockgate.daemon import request
    from sockgate.policy.compile import compile_policy

    if off == bool(candidate):
        raise UsageError("give a CANDIDATE policy file, or --off (not both)")
    if off:
        r = request(pin_dir, "off")
        _say(as_json, r, f"shadow policy (generation {r['generation']}, digest {r['digest'][:16]}) turned off")
        return
    from sockgate import config
    from sockgate.errors import PolicyError

    if candidate == "-":
        raw, source = sys.stdin.buffer.read(), "<stdin>"
    else:
        raw, source = config.read(candidate, PolicyError, PolicyErrors), os.path.abspath(candidate)
    policy = parse_policy(raw, source)
    compile_policy(policy)  # a policy the kernel tables cannot hold is refused here, with its place
    r = request(pin_dir, "shadow", text=raw.decode("utf-8"), source=source)
    _say(as_json, r, f"shadow policy {policy.source} loaded: {r['rules']} rules, generation {r['generation']}, "
                     f"digest {r['digest'][:16]}\n  it decides every call beside the enforcing policy and "
                     f"enforces nothing; `sockgate status` shows where they differ,\n  `sockgate policy promote` "
                     f"makes it enforce, `sockgate policy shadow --off` drops it")


@group.command("promote")
@click.option("--force", is_flag=True, help="Promote even if the shadow would lock out a guarded call.")
@click.option("--keep-file", is_flag=True,
              help="Leave the daemon's policy file as it is (its next reload loads that file again).")
@pin_dir_option
@json_option
def promote_cmd(force: bool, keep_file: bool, pin_dir: str, as_json: bool) -> None:
    """Make the shadow policy the enforcing one, atomically (one map update, like a reload).

    The lock-out guard of reloads applies (your SSH session, the alert channels); --force
    overrides. Then the promoted policy is written (atomically) to the file the daemon
    reloads from, so a later `sockgate reload` keeps it; --keep-file leaves that file alone.
    """
    from sockgate.daemon import request

    r = request(pin_dir, "promote", force=force)
    text, target = r.pop("policy_text"), r["reload_file"]
    msg = f"shadow promoted: generation {r['generation']} ({r['rules']} rules, digest {r['digest'][:16]}) enforces now"
    if keep_file:
        msg += f"\n  {target} was left as it is: `sockgate reload` would load it again"
        r["file_written"] = False
    else:
        write_atomic(target, text)
        r["file_written"] = True
        msg += f"\n  written to {target} (the daemon's policy file)"
    _say(as_json, r, msg)


def _say(as_json: bool, result: dict, text: str) -> None:
    click.echo(json.dumps(result, indent=2) if as_json else text)
