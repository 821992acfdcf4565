"""Host side: apply_bundle over real journals and files; the CLI in a subprocess. No daemon
runs here (the lead's kernel test covers the reload with the real daemon): `pin_dir` is a
directory no daemon holds, so every apply that passes its gates is "installed"."""

from __future__ import annotations

import hashlib
import json
import os
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from bundlekit import ALLOW_ALL, NO_MAIL, NOW, NS, B, entry, journal, new_key, policy, signed, sockgate

from sockgate.errors import BundleError, JournalError
from sockgate.fleet import apply as A
from sockgate.locking import lock_exclusive
from sockgate.record import Source

KEY, PUB = new_key()
OTHER, _ = new_key()
CURRENT = 'mode = "enforce"\n# the installed policy: allows everything\n'


@pytest.fixture
def host(tmp_path):
    """A host: a journal with 3 allowed mail connects and 5 web ones in the last hour,
    the installed policy file, its fleet directory."""
    es = [entry(remote=(f"10.0.0.{i}", 25)) for i in range(3)] + [entry(remote=("10.0.0.9", 443)) for _ in range(5)]
    h = {"journal": journal(tmp_path / "j", es), "policy": policy(tmp_path, CURRENT, "installed.toml"),
         "fleet": tmp_path / "fleet", "pins": tmp_path / "pins", "tmp": tmp_path}
    return h


def apply(h, raw: bytes, group: str = "web", **kw) -> A.ApplyResult:
    return A.apply_bundle(raw, trust=[PUB], group=group, fleet_dir=h["fleet"], journal_dir=h["journal"],
                          policy_path=h["policy"], pin_dir=str(h["pins"]), **kw)


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def assert_untouched(h, r: A.ApplyResult, reason: str) -> None:
    assert r.result == "refused" and r.reason == reason and r.exit_code == 1, r
    assert h["policy"].read_text() == CURRENT
    assert not [p for p in os.listdir(h["tmp"]) if p.endswith(".tmp")]


def test_a_passing_gate_swaps_the_file_and_records_the_version(host):
    r = apply(host, signed(KEY, NO_MAIL, version=5, max_breaks=3))
    assert r.result == "installed" and r.exit_code == 0 and r.reason is None
    assert r.daemon == "not running" and "no sockgate daemon is running" in r.message
    assert "next `sockgate run` loads it" in r.message
    assert host["policy"].read_text() == NO_MAIL and r.digest == digest(host["policy"])
    assert (r.decisions, r.breaks, r.opens, r.against) == (8, 3, 0, str(host["policy"]))
    st = A.read_state(host["fleet"])
    assert st["groups"]["web"]["version"] == 5 and st["groups"]["web"]["digest"] == r.digest
    assert st["last"]["result"] == "installed"
    assert not [p for p in os.listdir(host["tmp"]) if ".tmp" in p]
    # the next version replaces it again, now compared with version 5's policy
    r = apply(host, signed(KEY, ALLOW_ALL, version=6))
    assert r.result == "installed" and r.against == str(host["policy"]) and (r.breaks, r.opens) == (0, 3)
    assert host["policy"].read_text() == ALLOW_ALL and r.previous == {"version": 5, "digest": digest_of(NO_MAIL)}


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_failing_replay_gate_refuses_and_names_what_would_break(host):
    r = apply(host, signed(KEY, NO_MAIL, version=2, max_breaks=2))
    assert_untouched(host, r, "replay-gate")
    assert (r.decisions, r.breaks, r.max_breaks) == (8, 3, 2)
    (g,) = r.break_groups
    assert (g["count"], g["port"], g["network"], g["new_rule"], g["samples"]) == (3, 25, "10.0.0.0/24", "no-mail",
                                                                                 [1, 2, 3])
    assert "3 of this host's 8 decisions" in r.message and "allows 2" in r.message
    st = A.read_state(host["fleet"])
    assert st["groups"] == {} and st["last"]["reason"] == "replay-gate"   # the version was not consumed
    assert apply(host, signed(KEY, NO_MAIL, version=2, max_breaks=3)).result == "installed"


def test_the_gate_reads_this_hosts_kernel_decisions_in_the_window_only(tmp_path):
    old = NOW - 2 * 86400 * NS
    es = ([entry(remote=("10.0.0.1", 25), ts_ns=old)]                       # before the 24 h window
          + [entry(remote=("10.0.0.2", 25), source=Source.IBMI, uid=None, gid=None, host="IBMI1")]  # an IBM i's
          + [entry(remote=("10.0.0.3", 443))])
    h = {"journal": journal(tmp_path / "j", es), "policy": policy(tmp_path, CURRENT, "installed.toml"),
         "fleet": tmp_path / "fleet", "pins": tmp_path / "pins", "tmp": tmp_path}
    r = apply(h, signed(KEY, NO_MAIL, version=1))
    assert r.result == "installed" and (r.decisions, r.breaks) == (1, 0)
    # a window of 3 days takes the older one in, and it would break
    h["policy"].write_text(CURRENT)
    r = apply(h, signed(KEY, NO_MAIL, version=2, replay_window_ns=3 * 86400 * NS))
    assert_untouched(h, r, "replay-gate")
    assert (r.decisions, r.breaks, r.window) == (2, 1, "3d")


def test_against_is_the_installed_policy(host):
    """The journal says the mail connects went through; if the installed policy already
    rejects them, the bundle breaks nothing the host runs now."""
    host["policy"].write_text(NO_MAIL.replace("no-mail", "installed-no-mail"))
    r = apply(host, signed(KEY, NO_MAIL, version=1))
    assert r.result == "installed" and r.breaks == 0
    # an installed file that does not parse: the journaled outcomes are the reference
    host["policy"].write_text("[[rule]]\nexit = 7\n")
    r = apply(host, signed(KEY, NO_MAIL, version=2, max_breaks=3))
    assert r.result == "installed" and r.against == "journal" and r.breaks == 3


@pytest.mark.parametrize("version", [3, 2])
def test_an_older_or_equal_version_is_refused(host, version):
    assert apply(host, signed(KEY, ALLOW_ALL, version=3)).result == "installed"
    host["policy"].write_text(CURRENT)
    r = apply(host, signed(KEY, ALLOW_ALL + "# other\n", version=version))
    assert_untouched(host, r, "not-newer")
    assert f"version {version} is not newer than version 3" in r.message and r.previous["version"] == 3
    same = apply(host, signed(KEY, ALLOW_ALL, version=3))
    assert_untouched(host, same, "not-newer")
    assert "already applied" in same.message


def test_versions_are_per_group(host):
    assert apply(host, signed(KEY, ALLOW_ALL, version=9, group="web")).result == "installed"
    host["policy"].write_text(CURRENT)
    assert apply(host, signed(KEY, ALLOW_ALL, version=1, group="db"), group="db").result == "installed"


def test_wrong_group_bad_signature_wrong_key(host):
    r = apply(host, signed(KEY, ALLOW_ALL, group="db"))
    assert_untouched(host, r, "group")
    assert "for group db, this host is in web" in r.message
    r = apply(host, signed(OTHER, ALLOW_ALL))
    assert_untouched(host, r, "bad-bundle")
    assert "not trusted here" in r.message
    raw = bytearray(signed(KEY, ALLOW_ALL))
    i = raw.index(b'"signature": "') + 20
    raw[i] = ord("A") if raw[i] != ord("A") else ord("B")
    r = apply(host, bytes(raw))
    assert_untouched(host, r, "bad-bundle")
    assert "bad signature" in r.message
    assert A.read_state(host["fleet"])["groups"] == {}


def test_a_policy_that_does_not_check_here_is_its_own_reason(host, tmp_path):
    """Signed where the program exists, applied where it does not: refused as policy-check,
    and only after the group and version (a bundle for another group says so)."""
    prog = tmp_path / "backup-agent"
    prog.write_text("#!/bin/sh\n")
    text = f'[[rule]]\nname = "agent"\nexit = ["connect"]\nprogram = ["{prog}"]\naction = "allow"\n'
    raw, raw_db = signed(KEY, text, version=4), signed(KEY, text, version=4, group="db")
    prog.unlink()
    r = apply(host, raw)
    assert_untouched(host, r, "policy-check")
    assert "does not check on this host" in r.message and str(prog) in r.message
    assert apply(host, raw_db).reason == "group"
    assert A.read_state(host["fleet"])["groups"] == {}


def test_the_lockout_guard_refuses(host, monkeypatch):
    """The bundle rejects the SSH session this apply runs in (a real listener stands in for sshd)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    try:
        sport = srv.getsockname()[1]
        monkeypatch.setenv("SSH_CONNECTION", f"127.0.0.1 40000 127.0.0.1 {sport}")
        text = f'[[rule]]\nname = "no-admin"\nexit = "accept"\nlocal_port = {sport}\naction = "reject"\n'
        r = apply(host, signed(KEY, text))
        assert_untouched(host, r, "lockout")
        assert "this SSH session" in r.message and "no-admin" in r.message
    finally:
        srv.close()


def test_host_problems_raise_and_touch_nothing(host):
    raw = signed(KEY, ALLOW_ALL)
    with pytest.raises(JournalError, match="no journal here"):
        apply(dict(host, journal=host["tmp"] / "nope"), raw)
    assert host["policy"].read_text() == CURRENT
    assert host["fleet"].is_dir()   # made (0700) before the journal was found missing
    (host["fleet"] / A.STATE_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="not reset"):
        apply(host, raw)
    assert host["policy"].read_text() == CURRENT and (host["fleet"] / A.STATE_FILE).read_text() == "{not json"
    (host["fleet"] / A.STATE_FILE).unlink()
    fd = lock_exclusive(host["fleet"] / A.LOCK_FILE, busy="x", error=BundleError)
    try:
        with pytest.raises(BundleError, match="another policy apply is running"):
            apply(host, raw)
    finally:
        os.close(fd)
    os.chmod(host["fleet"], 0o777)
    with pytest.raises(BundleError, match="not safe to use"):
        apply(host, raw)
    assert host["policy"].read_text() == CURRENT


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300) | st.builds(lambda r, i, b: r[:i] + bytes([b]) + r[i + 1:],
                                           st.just(signed(KEY, ALLOW_ALL, version=50)),
                                           st.integers(0, 600), st.integers(0, 255)))
def test_hostile_bytes_never_apply(host, raw):
    """Random bytes, or a real bundle with one byte changed: refused (or, if the byte was
    whitespace in the envelope, the real bundle), never a traceback, never a half-written file."""
    r = apply(host, raw)
    if r.result == "refused":
        assert r.reason in ("bad-bundle", "not-newer") and host["policy"].read_text() in (CURRENT, ALLOW_ALL)
    else:
        assert r.version == 50 and host["policy"].read_text() == ALLOW_ALL
    assert not [p for p in os.listdir(host["tmp"]) if p.endswith(".tmp")]


def test_a_missing_policy_file_is_created(host):
    host["policy"].unlink()
    target = host["tmp"] / "etc" / "sockgate" / "policy.toml"
    r = apply(dict(host, policy=target), signed(KEY, NO_MAIL, max_breaks=3))
    assert r.result == "installed" and target.read_text() == NO_MAIL and r.against == "journal"


# --------------------------------------------------------------------------- the CLI

def _keys(tmp_path):
    key = tmp_path / "admin.key"
    assert sockgate("fleet", "policy", "keygen", "-o", key).returncode == 0
    return key, tmp_path / "admin.pub"


def test_cli_apply(host):
    tmp = host["tmp"]
    key, pub = _keys(tmp)
    base = ["--journal", host["journal"], "--policy", host["policy"], "--fleet-dir", host["fleet"],
            "--pin-dir", host["pins"]]

    def sign(version, text, *more):
        out = tmp / f"b{version}.json"
        r = sockgate("fleet", "policy", "sign", policy(tmp, text, f"p{version}.toml"), "--key", key,
                     "--version", version, "--group", "web", *more, "-o", out)
        assert r.returncode == 0, r.stderr
        return out

    b1 = sign(1, NO_MAIL)
    # no group known yet: a usage error that says how
    r = sockgate("fleet", "policy", "apply", b1, "--trust", pub, *base)
    assert r.returncode == 2 and "--group" in r.stderr and "Traceback" not in r.stderr
    # the keys in the fleet directory are the default trust, the group file the default group
    os.makedirs(host["fleet"] / A.KEYS_DIR, mode=0o700)
    os.link(pub, host["fleet"] / A.KEYS_DIR / "admin.pub")
    (host["fleet"] / A.GROUP_FILE).write_text("web\n")
    r = sockgate("fleet", "policy", "apply", b1, *base, "--json")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    res = json.loads(r.stdout)
    assert (res["result"], res["reason"], res["breaks"]) == ("refused", "replay-gate", 3)
    assert host["policy"].read_text() == CURRENT
    r = sockgate("fleet", "policy", "apply", b1, *base)
    assert r.returncode == 1 and r.stdout.startswith("REFUSED: version 1 (web)")
    assert "would break 3x connect u1000" in r.stdout and "samples 1, 2, 3" in r.stdout
    b2 = sign(2, NO_MAIL, "--max-breaks", "3")
    r = sockgate("fleet", "policy", "apply", b2, *base)
    assert r.returncode == 0 and r.stdout.startswith("installed (no daemon running): version 2")
    assert "no sockgate daemon is running" in r.stdout and host["policy"].read_text() == NO_MAIL
    r = sockgate("fleet", "policy", "apply", b1, *base, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["reason"] == "not-newer"
    assert host["policy"].read_text() == NO_MAIL
    st = sockgate("fleet", "policy", "status", "--fleet-dir", host["fleet"])
    assert st.returncode == 0 and st.stdout.startswith(f"group web: version 2, sha256 {digest_of(NO_MAIL)}")
    assert "last apply" in st.stdout and "not-newer: version 1 is not newer than version 2" in st.stdout
    assert json.loads(sockgate("fleet", "policy", "status", "--fleet-dir", host["fleet"], "--json").stdout
                      )["groups"]["web"]["version"] == 2
    r = sockgate("fleet", "policy", "apply", b2, *base, "--group", "we b")
    assert r.returncode == 2 and "--group" in r.stderr
    # hostile bundle files: a refusal record, no traceback
    for i, raw in enumerate([b"\x00garbage", b"{" * 20000, b'{"format": 5}']):
        f = tmp / f"hostile{i}.json"
        f.write_bytes(raw)
        r = sockgate("fleet", "policy", "apply", f, *base, "--json")
        assert r.returncode == 1 and json.loads(r.stdout)["reason"] == "bad-bundle" and "Traceback" not in r.stderr
    assert host["policy"].read_text() == NO_MAIL
