"""Helpers for the bundle tests: real keys, real bundles, real journals (tests/replay's
replaykit builds those), the real CLI in a subprocess.

Not a conftest.py (tests/journal imports its conftest by name; see replaykit)."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "replay"))

from replaykit import ALLOW_ALL, NO_MAIL, NOW, NS, PROG, entry, journal, policy, sockgate  # noqa: E402,F401

from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: E402

from sockgate.fleet import bundle as B  # noqa: E402


def new_key():
    private = ed25519.Ed25519PrivateKey.generate()
    return private, B.public_of(private)


def signed(private, text: str = NO_MAIL, **kw) -> bytes:
    kw.setdefault("version", 1)
    kw.setdefault("group", "web")
    return B.sign(text.encode(), private, **kw)[0]


def envelope(raw: bytes) -> dict:
    return json.loads(raw)


def payload(raw: bytes) -> dict:
    return json.loads(base64.b64decode(envelope(raw)["payload"]))


def reseal(env: dict, fields: dict | None = None, private=None, payload_bytes: bytes | None = None) -> bytes:
    """An envelope with `fields` as its payload (canonical unless payload_bytes), signed by
    `private` if given (else the old signature is kept)."""
    body = payload_bytes if payload_bytes is not None else B.canonical(fields)
    env = dict(env, payload=base64.b64encode(body).decode())
    if private is not None:
        env["signature"] = base64.b64encode(private.sign(body)).decode()
    return json.dumps(env).encode()
