"""Forward-secure sealing (after systemd-journald's Forward Secure Sealing, simplified).

Every entry carries h_n = sha256(h_{n-1} || canonical(entry_n)), so changing, adding,
removing or reordering any entry changes every hash after it. That alone stops nobody who
can rewrite the file: they recompute the hashes. So every N entries or T seconds the
writer *seals* the chain head with an HMAC under key k_i, then replaces k_i by
k_{i+1} = sha256("sockgate-seal-evolve" || k_i) and overwrites the old key. Whoever steals
the key file at epoch t holds k_t and cannot compute k_0..k_{t-1}, so cannot produce the
seals of anything before t. The verifier keeps k_0 (the verification key) off the host
and derives each k_i itself.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from sockgate.errors import JournalError

KEY_RECORD_SIZE = 256  # fixed size, rewritten in place, so the old key's bytes are overwritten
_EVOLVE = b"sockgate-seal-evolve"
_MAC = b"sockgate-seal-v1"
VKEY_PREFIX = "sgvk1"
# Epochs are seal counters stored as SQLite INTEGERs and MACed as 64-bit: anything outside
# this range in seal.key is corruption, not a key.
MAX_EPOCH = 2**63 - 1


def evolve(key: bytes) -> bytes:
    return hashlib.sha256(_EVOLVE + key).digest()


def fingerprint(k0: bytes) -> str:
    """Names a verification key without revealing it (stored in journal.json)."""
    return hashlib.sha256(b"sockgate-fingerprint" + k0).hexdigest()[:32]


def seal_mac(key: bytes, journal_id: str, epoch: int, seq: int, chain_hash: bytes, ts_ns: int) -> bytes:
    msg = _MAC + journal_id.encode() + struct.pack(">QQq", epoch, seq, ts_ns) + chain_hash
    return hmac.new(key, msg, hashlib.sha256).digest()


def new_k0() -> bytes:
    return secrets.token_bytes(32)


@dataclass(frozen=True)
class Seal:
    """One seal row: the chain hash at seq, MACed under k_epoch at time ts_ns."""
    epoch: int
    seq: int
    hash: bytes
    ts_ns: int
    mac: bytes

    @classmethod
    def from_row(cls, row: tuple, where: str) -> "Seal":
        """A stored row, checked: whatever a receiver holds is hostile until proven."""
        epoch, seq, h, ts, mac = row
        if not (all(type(v) is int for v in (epoch, seq, ts)) and 0 <= epoch <= MAX_EPOCH and seq >= 1
                and isinstance(h, bytes) and len(h) == 32 and isinstance(mac, bytes) and len(mac) == 32):
            raise JournalError(f"{where}: malformed seal row (epoch {epoch!r:.40}, seq {seq!r:.40})")
        return cls(epoch, seq, h, ts, mac)

    def row(self) -> tuple:
        return (self.epoch, self.seq, self.hash, self.ts_ns, self.mac)

    def authentic(self, key: bytes, journal_id: str) -> bool:
        """key must be k_epoch."""
        return hmac.compare_digest(self.mac, seal_mac(key, journal_id, self.epoch, self.seq, self.hash, self.ts_ns))


# -- verification key (the administrator keeps it off the host) -----------------------------

def format_verification_key(journal_id: str, k0: bytes) -> str:
    return f"{VKEY_PREFIX}:{journal_id}:{k0.hex()}"


def parse_verification_key(text: str, source: str = "key") -> tuple[str, bytes]:
    parts = text.strip().split(":")
    if len(parts) != 3 or parts[0] != VKEY_PREFIX:
        raise JournalError(f"{source}: not a sockgate verification key (expected {VKEY_PREFIX}:JOURNAL-ID:HEX)")
    try:
        k0 = bytes.fromhex(parts[2])
    except ValueError:
        raise JournalError(f"{source}: verification key is not valid hex") from None
    if len(k0) != 32:
        raise JournalError(f"{source}: verification key has the wrong length")
    return parts[1], k0


def read_verification_key(path: str | Path) -> tuple[str, bytes]:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise JournalError(f"{path}: cannot read verification key: {e}") from None
    return parse_verification_key(text, str(path))


# -- the sealing key state on the host ------------------------------------------------------

@dataclass
class SealKey:
    journal_id: str
    epoch: int
    key: bytes

    def encode(self) -> bytes:
        body = f"sgseal1 {self.journal_id} {self.epoch} {self.key.hex()}"
        line = f"{body} {zlib.crc32(body.encode()):08x}\n".encode()
        return line.ljust(KEY_RECORD_SIZE, b"\n")

    @classmethod
    def decode(cls, data: bytes, path: Path) -> "SealKey":
        try:
            body, crc = data.decode().strip().rsplit(" ", 1)
            magic, journal_id, epoch_text, key_hex = body.split(" ")
            if magic != "sgseal1" or int(crc, 16) != zlib.crc32(body.encode()):
                raise ValueError("checksum")
            epoch, key = int(epoch_text), bytes.fromhex(key_hex)
            if not 0 <= epoch <= MAX_EPOCH or len(key) != 32:
                raise ValueError("range")
            return cls(journal_id, epoch, key)
        except (ValueError, UnicodeDecodeError):
            raise JournalError(f"{path}: sealing key file is corrupt") from None


def read_seal_key(path: Path) -> SealKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise JournalError(f"{path}: sealing key missing (journal cannot be sealed)") from None
    except OSError as e:
        raise JournalError(f"{path}: cannot read sealing key: {e.strerror}") from None
    return SealKey.decode(data, path)


def write_seal_key(path: Path, state: SealKey, *, create: bool = False) -> None:
    """Overwrite the key record in place (same size, same blocks), then fsync, so the
    previous key does not survive in the file. The record fits one disk sector."""
    flags = os.O_WRONLY | (os.O_CREAT | os.O_EXCL if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        raise JournalError(f"{path}: cannot write sealing key: {e.strerror}") from None
    try:
        os.pwrite(fd, state.encode(), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
