"""Signed policy bundles: a policy file's exact bytes and what a host needs to decide
whether to apply it (group, monotonic version, the replay gate's limits), signed with an
administrator's Ed25519 key that stays off the hosts.

One canonical encoding. The *payload* is a JSON object with sorted keys, no whitespace,
ASCII only, the policy as base64; the signature is over the payload's exact bytes, so
nothing is ever re-serialized to be checked. The *envelope* carries the payload and the
signature, both base64, and the signer's key id:

    {"format": "sockgate-policy-bundle/1", "key_id": "ed25519:<16 hex>",
     "payload": "<base64 of the canonical payload>", "signature": "<base64, 64 bytes>"}

    payload = {"created_ns": int, "digest": "<sha256 hex of the policy bytes>",
               "format": "sockgate-policy-bundle/1", "group": str, "key_id": str,
               "max_breaks": int, "policy": "<base64>", "replay_window_ns": int, "version": int}

`verify` checks, in this order and before trusting any of it: size, envelope shape, the
signature by a trusted key, then the payload's shape and canonical form, the digest, and
that the policy parses. Every failure is a BundleError saying what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from sockgate.errors import BundleError, BundlePolicyError, PolicyErrors, SockgateError, UsageError
from sockgate.policy.model import Policy
from sockgate.record import NS, format_duration, format_time, oneline, parse_duration
from sockgate.safedir import write_atomic

FORMAT = "sockgate-policy-bundle/1"
MAX_POLICY = 4 << 20          # bytes of policy TOML (16,384 rules fit with room to spare)
MAX_BUNDLE = 8 << 20          # bytes of bundle file: the policy twice base64-encoded, plus the rest
MAX_VERSION = 2 ** 63 - 1
DEFAULT_WINDOW_NS = 86400 * NS
GROUP_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
_PAYLOAD_KEYS = frozenset({"created_ns", "digest", "format", "group", "key_id", "max_breaks", "policy",
                           "replay_window_ns", "version"})
_ENVELOPE_KEYS = frozenset({"format", "key_id", "payload", "signature"})
_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)


# ----------------------------------------------------------------------------- keys

def _crypto():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return serialization, ed25519


@dataclass(frozen=True)
class PublicKey:
    """A trusted administrator key: the Ed25519 key, its id, the file it came from."""

    key: Any                     # cryptography's Ed25519PublicKey
    key_id: str
    source: str = "<key>"

    @classmethod
    def from_raw(cls, raw: bytes, source: str = "<key>") -> "PublicKey":
        _, ed25519 = _crypto()
        return cls(ed25519.Ed25519PublicKey.from_public_bytes(raw), key_id_of(raw), source)

    def raw(self) -> bytes:
        serialization, _ = _crypto()
        return self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def pem(self) -> bytes:
        serialization, _ = _crypto()
        return self.key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id_of(raw_public: bytes) -> str:
    """ed25519:<first 16 hex digits of the SHA-256 of the raw 32-byte public key>."""
    return "ed25519:" + hashlib.sha256(raw_public).hexdigest()[:16]


def _read_key_file(path: str | os.PathLike, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(64 << 10)
    except OSError as e:
        raise UsageError(f"{path}: cannot read the {what}: {e.strerror or e}") from None
    if len(data) >= 64 << 10:
        raise UsageError(f"{path}: too large for an {what}")
    return data


def load_public_key(path: str | os.PathLike) -> PublicKey:
    """A PEM Ed25519 public key (what `keygen` writes as KEY.pub)."""
    serialization, ed25519 = _crypto()
    data = _read_key_file(path, "Ed25519 public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise UsageError(f"{path}: not a PEM public key ({e})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise UsageError(f"{path}: not an Ed25519 public key")
    return PublicKey.from_raw(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
                              os.fspath(path))


def load_private_key(path: str | os.PathLike):
    """A PEM (PKCS#8, unencrypted) Ed25519 private key; refused if others can read it."""
    serialization, ed25519 = _crypto()
    try:
        st = os.stat(path)
    except OSError as e:
        raise UsageError(f"{path}: cannot read the signing key: {e.strerror or e}") from None
    if st.st_mode & 0o077:
        raise UsageError(f"{path}: the signing key has mode {st.st_mode & 0o777:04o}: others may read it "
                         "(chmod 0600 it, and consider it exposed)")
    data = _read_key_file(path, "Ed25519 private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise UsageError(f"{path}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise UsageError(f"{path}: not an Ed25519 private key")
    return key


def public_of(private) -> PublicKey:
    serialization, _ = _crypto()
    return PublicKey.from_raw(private.public_key().public_bytes(serialization.Encoding.Raw,
                                                                serialization.PublicFormat.Raw))


def pub_path(key_path: str | os.PathLike) -> Path:
    """Where keygen puts the public half: admin.key -> admin.pub, other -> other.pub."""
    p = Path(key_path)
    return p.with_suffix(".pub") if p.suffix == ".key" else p.with_name(p.name + ".pub")


def keygen(key_path: str | os.PathLike) -> tuple[PublicKey, Path]:
    """A new Ed25519 key pair: the private key at `key_path` (0600, never overwritten),
    the public key beside it (pub_path). Returns (public key, its path)."""
    serialization, ed25519 = _crypto()
    key_path, pub = Path(key_path), pub_path(key_path)
    for p in (key_path, pub):
        if os.path.lexists(p):
            raise UsageError(f"{p} exists: refusing to overwrite a key (move it away first)")
    private = ed25519.Ed25519PrivateKey.generate()
    write_atomic(key_path, private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), mode=0o600)
    public = public_of(private)
    write_atomic(pub, public.pem(), mode=0o644)
    return PublicKey(public.key, public.key_id, os.fspath(pub)), pub


def load_trust(paths: Iterable[str | os.PathLike]) -> list[PublicKey]:
    """Trusted keys from files (each a PEM public key). Duplicates count once."""
    keys: dict[str, PublicKey] = {}
    for p in paths:
        k = load_public_key(p)
        keys.setdefault(k.key_id, k)
    return list(keys.values())


# ----------------------------------------------------------------------------- the bundle

@dataclass(frozen=True)
class Bundle:
    """A bundle whose signature, shape and digest have been checked (only `verify` and
    `sign` make one)."""

    version: int
    group: str
    created_ns: int
    key_id: str
    max_breaks: int
    replay_window_ns: int
    digest: str
    policy_bytes: bytes
    policy: Policy | None                  # None until check_policy
    compiled: Any = field(default=None, repr=False, compare=False)   # the policy's compiled tables
    source: str = "<bundle>"

    def to_dict(self) -> dict[str, Any]:
        """The metadata (for --json and result records); not the policy's bytes."""
        return {"version": self.version, "group": self.group, "created": format_time(self.created_ns),
                "key_id": self.key_id, "max_breaks": self.max_breaks,
                "replay_window": format_duration(self.replay_window_ns), "digest": self.digest,
                "policy_bytes": len(self.policy_bytes),
                "rules": None if self.policy is None else len(self.policy.rules)}

    def describe(self) -> str:
        return (f"version {self.version} for group {oneline(self.group)}, signed by {self.key_id} at "
                f"{format_time(self.created_ns)}: policy sha256 {self.digest}"
                + (f" ({len(self.policy.rules)} rules)" if self.policy is not None else "") + ", "
                f"replay gate: at most {self.max_breaks} break{'s' if self.max_breaks != 1 else ''} over "
                f"{format_duration(self.replay_window_ns)}")


def check_group(group: Any) -> str:
    if not isinstance(group, str) or not GROUP_RE.fullmatch(group):
        raise ValueError(f"group {oneline(group)}: use 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return group


def canonical(obj: dict[str, Any]) -> bytes:
    """The one encoding of a payload: sorted keys, no whitespace, ASCII."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _parse_policy(data: bytes, source: str) -> tuple[Policy, Any]:
    """The policy as `policy check` sees it: parsed and compiled (the compiler also checks
    that it fits the kernel tables). (policy, compiled tables)."""
    from sockgate.policy.compile import compile_policy
    from sockgate.policy.parse import parse_policy

    policy = parse_policy(data, source)
    return policy, compile_policy(policy)


def sign(policy_bytes: bytes, private, *, version: int, group: str, max_breaks: int = 0,
         replay_window_ns: int = DEFAULT_WINDOW_NS, created_ns: int | None = None,
         source: str = "<policy>") -> tuple[bytes, Bundle]:
    """Sign a policy file's bytes. The policy must pass `policy check` (parse and compile:
    PolicyErrors otherwise; nothing is signed). Returns (bundle file bytes, the bundle)."""
    if not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise UsageError(f"--version: must be 1 .. {MAX_VERSION}")
    if not isinstance(max_breaks, int) or not 0 <= max_breaks <= MAX_VERSION:
        raise UsageError("--max-breaks: must be 0 or more")
    if not 0 < replay_window_ns:
        raise UsageError("--replay-window: must be longer than 0")
    try:
        check_group(group)
    except ValueError as e:
        raise UsageError(f"--group: {e}") from None
    if len(policy_bytes) > MAX_POLICY:
        raise UsageError(f"{source}: {len(policy_bytes)} bytes; a bundle holds a policy of at most {MAX_POLICY}")
    policy, compiled = _parse_policy(policy_bytes, source)
    public = public_of(private)
    fields = {"created_ns": time.time_ns() if created_ns is None else created_ns, "digest": policy.digest,
              "format": FORMAT, "group": group, "key_id": public.key_id, "max_breaks": max_breaks,
              "policy": base64.b64encode(policy_bytes).decode(), "replay_window_ns": replay_window_ns,
              "version": version}
    payload = canonical(fields)
    envelope = {"format": FORMAT, "key_id": public.key_id, "payload": base64.b64encode(payload).decode(),
                "signature": base64.b64encode(private.sign(payload)).decode()}
    raw = (json.dumps(envelope, indent=2, sort_keys=True) + "\n").encode()
    return raw, Bundle(version, group, fields["created_ns"], public.key_id, max_breaks, replay_window_ns,
                       policy.digest, policy_bytes, policy, compiled, source)


def _strict_json(data: bytes, what: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        d = dict(pairs)
        if len(d) != len(pairs):
            raise ValueError("a key appears twice")
        return d

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        text = data.decode("utf-8")
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except UnicodeDecodeError:
        raise BundleError(f"{what} is not UTF-8 text") from None
    except RecursionError:
        raise BundleError(f"{what} is nested too deeply") from None
    except ValueError as e:   # JSONDecodeError, huge numbers, duplicate keys, NaN
        raise BundleError(f"{what} is not valid JSON: {oneline(str(e))[:200]}") from None


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise BundleError(f"{what}: expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BundleError(f"{what}: not valid base64") from None


def _shape(obj: Any, keys: frozenset[str], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise BundleError(f"{what}: expected a JSON object")
    missing, extra = sorted(keys - obj.keys()), sorted(obj.keys() - keys)
    if missing or extra:
        raise BundleError(f"{what}: " + "; ".join(
            ([f"missing {', '.join(missing)}"] if missing else [])
            + ([f"unknown {', '.join(oneline(k)[:40] for k in extra[:5])}"] if extra else [])))
    if obj.get("format") != FORMAT:
        raise BundleError(f"{what}: format {oneline(obj.get('format'))[:60]} is not {FORMAT}")
    return obj


def _int(obj: dict[str, Any], key: str, lo: int, hi: int = MAX_VERSION) -> int:
    v = obj[key]
    if type(v) is not int or not lo <= v <= hi:
        raise BundleError(f"bundle payload: {key} must be an integer {lo} .. {hi}")
    return v


def verify(raw: bytes, trust: Iterable[PublicKey], source: str = "<bundle>", *, policy: bool = True) -> Bundle:
    """Check a bundle file's bytes against the trusted keys; the checked Bundle, or a
    BundleError naming the first problem. Nothing of the payload is used before its
    signature checked out. policy=False leaves the policy unparsed (Bundle.policy None):
    `check_policy` later, after cheaper checks."""
    trusted = {k.key_id: k for k in trust}
    if not trusted:
        raise UsageError("no trusted keys: give --trust KEY.pub (the administrator's public key)")
    if not isinstance(raw, (bytes, bytearray)):
        raise BundleError(f"{source}: expected bytes")
    if len(raw) > MAX_BUNDLE:
        raise BundleError(f"{source}: {len(raw)} bytes, larger than any bundle ({MAX_BUNDLE})")
    env = _shape(_strict_json(bytes(raw), f"{source}"), _ENVELOPE_KEYS, f"{source}")
    key_id = env["key_id"]
    if not isinstance(key_id, str):
        raise BundleError(f"{source}: key_id must be a string")
    key = trusted.get(key_id)
    if key is None:
        raise BundleError(f"{source}: signed by key {oneline(key_id)[:60]}, which is not trusted here "
                          f"(trusted: {', '.join(sorted(trusted))})")
    payload = _b64(env["payload"], f"{source}: payload")
    signature = _b64(env["signature"], f"{source}: signature")
    from cryptography.exceptions import InvalidSignature

    try:
        if len(signature) != 64:
            raise InvalidSignature
        key.key.verify(signature, payload)
    except InvalidSignature:
        raise BundleError(f"{source}: bad signature: not signed by {key_id}, or modified since") from None
    # signed by a trusted key from here on; still checked: a key may sign what this host cannot use
    fields = _shape(_strict_json(payload, f"{source}: payload"), _PAYLOAD_KEYS, f"{source}: payload")
    if canonical(fields) != payload:
        raise BundleError(f"{source}: payload is not in the canonical encoding")
    if fields["key_id"] != key_id:
        raise BundleError(f"{source}: payload names key {oneline(fields['key_id'])[:60]}, the envelope {key_id}")
    try:
        group = check_group(fields["group"])
    except ValueError as e:
        raise BundleError(f"{source}: {e}") from None
    version = _int(fields, "version", 1)
    created_ns = _int(fields, "created_ns", 0)
    max_breaks = _int(fields, "max_breaks", 0)
    window = _int(fields, "replay_window_ns", 1)
    digest = fields["digest"]
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise BundleError(f"{source}: digest must be 64 lowercase hex digits")
    policy_bytes = _b64(fields["policy"], f"{source}: policy")
    if len(policy_bytes) > MAX_POLICY:
        raise BundleError(f"{source}: policy of {len(policy_bytes)} bytes, more than {MAX_POLICY}")
    if hashlib.sha256(policy_bytes).hexdigest() != digest:
        raise BundleError(f"{source}: the policy's sha256 is not the digest it was signed with")
    b = Bundle(version, group, created_ns, key_id, max_breaks, window, digest, policy_bytes, None, None, source)
    return check_policy(b) if policy else b


def check_policy(b: Bundle) -> Bundle:
    """The bundle with its policy parsed and compiled on this host (BundlePolicyError if it
    does not check here: a user or program it names is missing, a newer syntax)."""
    try:
        policy, compiled = _parse_policy(b.policy_bytes, f"{b.source}#v{b.version}")
    except (PolicyErrors, SockgateError) as e:
        raise BundlePolicyError(f"{b.source}: version {b.version}'s policy does not check on this host:\n{e}") from None
    return replace(b, policy=policy, compiled=compiled)


def read_bundle(path: str | os.PathLike) -> bytes:
    """A bundle file's bytes (at most MAX_BUNDLE + 1 read: larger is refused by verify)."""
    try:
        with open(path, "rb") as f:
            return f.read(MAX_BUNDLE + 1)
    except OSError as e:
        raise BundleError(f"{path}: cannot read: {e.strerror or e}") from None


def parse_window(text: str) -> int:
    try:
        ns = parse_duration(text)
    except ValueError as e:
        raise UsageError(f"--replay-window: {e}") from None
    if ns <= 0:
        raise UsageError("--replay-window: must be longer than 0")
    return ns
