"""Bundle format: sign/verify round trip, every way a bundle can be wrong, hostile files."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest
from bundlekit import ALLOW_ALL, NO_MAIL, B, envelope, new_key, payload, policy, reseal, signed, sockgate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockgate.errors import BundleError, PolicyErrors, SockgateError, UsageError

KEY, PUB = new_key()
OTHER, OTHER_PUB = new_key()


def test_round_trip_keeps_bytes_and_metadata():
    text = NO_MAIL + "# a comment, kept byte for byte: é\n"
    raw, made = B.sign(text.encode(), KEY, version=7, group="web-eu.1", max_breaks=3,
                       replay_window_ns=7 * 86400 * B.NS, created_ns=1_700_000_000 * B.NS)
    b = B.verify(raw, [OTHER_PUB, PUB])
    assert b.policy_bytes == text.encode() and b.to_dict() == made.to_dict()
    assert (b.version, b.group, b.max_breaks, b.replay_window_ns, b.key_id) == (7, "web-eu.1", 3, 7 * 86400 * B.NS,
                                                                               PUB.key_id)
    # the digest is the one `policy check` prints for the same file
    import hashlib

    assert b.digest == hashlib.sha256(text.encode()).hexdigest() == b.policy.digest
    d = b.to_dict()
    assert d["created"] == "2023-11-14T22:13:20.000000Z" and d["replay_window"] == "7d" and d["rules"] == 1
    # one canonical encoding: the payload re-encodes to its own bytes; Ed25519 is deterministic
    body = base64.b64decode(envelope(raw)["payload"])
    assert B.canonical(json.loads(body)) == body
    again, _ = B.sign(text.encode(), KEY, version=7, group="web-eu.1", max_breaks=3,
                      replay_window_ns=7 * 86400 * B.NS, created_ns=1_700_000_000 * B.NS)
    assert again == raw
    assert payload(raw)["replay_window_ns"] == 7 * 86400 * B.NS


def test_default_window_is_24h_and_no_breaks():
    b = B.verify(signed(KEY), [PUB])
    assert b.replay_window_ns == 86400 * B.NS and b.max_breaks == 0


def test_bad_signature_wrong_key_and_forged_key_id():
    raw = signed(KEY)
    env = envelope(raw)
    sig = bytearray(base64.b64decode(env["signature"]))
    sig[5] ^= 1
    bad = json.dumps(dict(env, signature=base64.b64encode(bytes(sig)).decode())).encode()
    with pytest.raises(BundleError, match="bad signature"):
        B.verify(bad, [PUB])
    with pytest.raises(BundleError, match="not trusted here"):
        B.verify(raw, [OTHER_PUB])
    # signed by another key, claiming the trusted key's id: the signature does not check
    forged = json.dumps(dict(envelope(signed(OTHER)), key_id=PUB.key_id)).encode()
    with pytest.raises(BundleError, match="bad signature"):
        B.verify(forged, [PUB])
    short = json.dumps(dict(env, signature=base64.b64encode(b"x" * 10).decode())).encode()
    with pytest.raises(BundleError, match="bad signature"):
        B.verify(short, [PUB])


def test_a_modified_policy_byte_is_caught():
    raw = signed(KEY)
    fields = payload(raw)
    text = base64.b64decode(fields["policy"]).replace(b"25", b"26")
    fields["policy"] = base64.b64encode(text).decode()
    with pytest.raises(BundleError, match="bad signature"):      # the old signature
        B.verify(reseal(envelope(raw), fields), [PUB])
    # even signed by the trusted key, the digest no longer matches the policy
    with pytest.raises(BundleError, match="not the digest"):
        B.verify(reseal(envelope(raw), fields, KEY), [PUB])
    # and the envelope is not where anything can hide: an added field is refused
    with pytest.raises(BundleError, match="unknown extra"):
        B.verify(json.dumps(dict(envelope(raw), extra=1)).encode(), [PUB])


@pytest.mark.parametrize("change, match", [
    (lambda f: f.update(version=0), "version must be an integer"),
    (lambda f: f.update(version=True), "version must be an integer"),
    (lambda f: f.update(version="3"), "version must be an integer"),
    (lambda f: f.update(max_breaks=-1), "max_breaks"),
    (lambda f: f.update(replay_window_ns=0), "replay_window_ns"),
    (lambda f: f.update(group="../etc"), "group"),
    (lambda f: f.update(group="a\x1b[31mred"), "group"),
    (lambda f: f.update(digest="ABC"), "digest"),
    (lambda f: f.update(key_id="ed25519:0000000000000000"), "payload names key"),
    (lambda f: f.update(format="sockgate-policy-bundle/2"), "format"),
    (lambda f: f.pop("group"), "missing group"),
    (lambda f: f.update(policy="***"), "not valid base64"),
    (lambda f: f.update(policy=base64.b64encode(b"[[rule]]\nexit = 5\n").decode(),
                        digest=__import__("hashlib").sha256(b"[[rule]]\nexit = 5\n").hexdigest()),
     "does not check on this host"),
])
def test_signed_but_wrong_payloads_are_refused(change, match):
    """A trusted key signed it, but the content is unusable: still a clear refusal."""
    raw = signed(KEY)
    fields = payload(raw)
    change(fields)
    with pytest.raises(BundleError, match=match):
        B.verify(reseal(envelope(raw), fields, KEY), [PUB])


def test_a_non_canonical_payload_is_refused():
    raw = signed(KEY)
    body = json.dumps(payload(raw), indent=1).encode()
    with pytest.raises(BundleError, match="canonical"):
        B.verify(reseal(envelope(raw), payload_bytes=body, private=KEY), [PUB])


def test_a_policy_that_does_not_check_is_never_signed(tmp_path):
    with pytest.raises(PolicyErrors):
        B.sign(b'[[rule]]\nexit = ["connect"]\naction = "maybe"\n', KEY, version=1, group="web")
    key = tmp_path / "admin.key"
    assert sockgate("fleet", "policy", "keygen", "-o", key).returncode == 0
    bad = policy(tmp_path, '[[rule]]\nexit = ["connect"]\nprogram = ["/no/such/prog"]\naction = "reject"\n')
    out = tmp_path / "b.json"
    r = sockgate("fleet", "policy", "sign", bad, "--key", key, "--version", "1", "--group", "web", "-o", out)
    assert r.returncode == 1 and f"{bad}:3:" in r.stderr and "/no/such/prog" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()
    for args, opt in ((["--version", "0"], "--version"), (["--version", "1", "--group", "a b"], "--group"),
                      (["--version", "1", "--replay-window", "soon"], "--replay-window")):
        r = sockgate("fleet", "policy", "sign", policy(tmp_path, ALLOW_ALL), "--key", key, "--group", "web", *args,
                     "-o", out)
        assert r.returncode == 2 and opt in r.stderr and "Traceback" not in r.stderr and not out.exists()


def test_keygen_sign_verify_cli(tmp_path):
    key = tmp_path / "admin.key"
    r = sockgate("fleet", "policy", "keygen", "-o", key, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    pub = tmp_path / "admin.pub"
    assert info["public_key"] == str(pub) and info["key_id"] == B.load_public_key(pub).key_id
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    again = sockgate("fleet", "policy", "keygen", "-o", key)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    out = tmp_path / "b.json"
    r = sockgate("fleet", "policy", "sign", policy(tmp_path, NO_MAIL), "--key", key, "--version", "4",
                 "--group", "db", "--max-breaks", "2", "--replay-window", "48h", "-o", out)
    assert r.returncode == 0 and "version 4 for group db" in r.stdout and "at most 2 breaks over 2d" in r.stdout
    v = sockgate("fleet", "policy", "verify", out, "--trust", pub, "--json")
    assert v.returncode == 0 and json.loads(v.stdout)["version"] == 4
    other = tmp_path / "other.key"
    sockgate("fleet", "policy", "keygen", "-o", other)
    v = sockgate("fleet", "policy", "verify", out, "--trust", tmp_path / "other.pub")
    assert v.returncode == 1 and "not trusted here" in v.stderr and "Traceback" not in v.stderr
    v = sockgate("fleet", "policy", "verify", out, "--trust", tmp_path / "other.pub", "--json")
    assert v.returncode == 1 and json.loads(v.stdout)["ok"] is False
    # a signing key others can read is refused (and said to be exposed)
    os.chmod(key, 0o644)
    r = sockgate("fleet", "policy", "sign", policy(tmp_path, NO_MAIL), "--key", key, "--version", "5",
                 "--group", "db", "-o", out)
    assert r.returncode == 2 and "others may read it" in r.stderr
    # not a key at all
    v = sockgate("fleet", "policy", "verify", out, "--trust", policy(tmp_path, NO_MAIL))
    assert v.returncode == 2 and "not a PEM public key" in v.stderr and "Traceback" not in v.stderr


def test_sizes_are_bounded():
    with pytest.raises(BundleError, match="larger than any bundle"):
        B.verify(b" " * (B.MAX_BUNDLE + 1), [PUB])
    with pytest.raises(UsageError, match="at most"):
        B.sign(b"#" * (B.MAX_POLICY + 1), KEY, version=1, group="web")
    with pytest.raises(UsageError, match="no trusted keys"):
        B.verify(signed(KEY), [])


# --------------------------------------------------------------------------- hostile input

REAL = signed(KEY)


def _refused_cleanly(raw: bytes, trust=(PUB,), may_pass: bool = False) -> None:
    try:
        B.verify(raw, list(trust))
    except SockgateError as e:
        assert isinstance(e, BundleError) and str(e)
    else:
        assert may_pass, "a hostile bundle verified"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=20)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_are_refused_cleanly(data):
    _refused_cleanly(data)


@FUZZ
@given(json_values)
def test_random_json_is_refused_cleanly(value):
    _refused_cleanly(json.dumps(value).encode())


@FUZZ
@given(st.fixed_dictionaries({k: json_values for k in ("format", "key_id", "payload", "signature")}),
       st.sampled_from(["format", "key_id", "payload", "signature", None]))
def test_envelope_shaped_junk_is_refused_cleanly(env, keep_real):
    real = envelope(REAL)
    if keep_real:
        env[keep_real] = real[keep_real]
    env["format"] = real["format"] if keep_real != "format" else env["format"]
    _refused_cleanly(json.dumps(env).encode())


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(B._PAYLOAD_KEYS)), json_values), st.booleans())
def test_signed_junk_payloads_are_refused_cleanly(fields, start_real):
    """The worst case: a trusted key signed garbage. Never a traceback; accepted only when
    the one changed field happens to be valid."""
    if start_real:
        fields = {**payload(REAL), **dict(list(fields.items())[:1])}
    _refused_cleanly(reseal(envelope(REAL), payload_bytes=B.canonical(fields), private=KEY), may_pass=start_real)


@pytest.mark.parametrize("raw", [
    b"{" * 100_000,                                   # nesting
    b'{"format": 1e999999}',                          # a float overflow
    b'{"a": ' + b"9" * 5000 + b"}",                   # more digits than int() takes
    b'{"a": NaN}',
    b'{"format": "x", "format": "y"}',                # duplicate keys
    b"\xff\xfe{}",                                    # not UTF-8
    b"",
])
def test_nasty_json_is_refused_cleanly(raw):
    _refused_cleanly(raw)


def test_cli_verify_on_hostile_files(tmp_path):
    key = tmp_path / "admin.key"
    sockgate("fleet", "policy", "keygen", "-o", key)
    for i, raw in enumerate([b"\x00\x01garbage", b"[]", b'{"format": "sockgate-policy-bundle/1"}', b"{" * 50_000]):
        f = tmp_path / f"b{i}.json"
        f.write_bytes(raw)
        r = sockgate("fleet", "policy", "verify", f, "--trust", tmp_path / "admin.pub")
        assert r.returncode == 1 and r.stderr.startswith(f"sockgate: {f}") and "Traceback" not in r.stderr
    r = sockgate("fleet", "policy", "verify", tmp_path / "missing.json", "--trust", tmp_path / "admin.pub")
    assert r.returncode == 1 and "cannot read" in r.stderr
