"""`journal verify`: walk every receiver and prove the chain, or name the first bad seq.

What is checked, in seq order:
- receivers are contiguous: each starts at the previous one's last seq + 1 and continues
  its chain hash; a journal that starts after seq 1 needs a sealed CUT record declaring
  exactly that start (retention), otherwise the missing receivers are tampering;
- every entry's stored hash equals sha256(previous hash || canonical(row));
- seals come in consecutive epochs, each matching the chain hash at its seq and (with the
  verification key) carrying the HMAC under k_epoch derived from k_0;
- the sealing key on the host has not evolved past the last seal found (otherwise seals,
  and the entries they covered, were cut off the end: truncation).

Entries after the last seal are chain-checked but not authenticated; verify says how many.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path

from sockgate.errors import JournalError
from sockgate.journal import seal as sealing
from sockgate.journal.store import (
    FIELDS, KEY_FILE, VERIFY_KEY_FILE, Receiver, canonical, read_journal_meta, scan_directory,
)

_SELECT = "SELECT " + ",".join(FIELDS) + ", hash FROM entry ORDER BY seq"
_I_TYPE, _I_EXTRA = FIELDS.index("type"), FIELDS.index("extra")


class _Bad(Exception):
    def __init__(self, seq: int | None, reason: str):
        super().__init__(reason)
        self.seq, self.reason = seq, reason


@dataclass
class VerifyReport:
    journal_id: str
    keyed: bool = False              # seals' MACs were checked with the verification key
    receivers: int = 0
    entries: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    seals: int = 0
    sealed_through: int = 0
    cut_through: int | None = None   # entries up to this seq were deleted by declared retention
    warnings: list[str] = field(default_factory=list)
    bad_seq: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["ok"] = self.ok
        return d


def verify(directory: str | Path, key: tuple[str, bytes] | None = None, *,
           use_local_key: bool = True) -> VerifyReport:
    """Verify the journal in directory. key = (journal id, k_0) from the verification key;
    without it the journal's own verification.key is used if present (with a warning)."""
    d = Path(directory)
    if not d.is_dir():
        raise JournalError(f"{d}: no journal here")
    meta = read_journal_meta(d)
    rep = VerifyReport(journal_id=meta["id"])
    if key is None and use_local_key and (d / VERIFY_KEY_FILE).exists():
        key = sealing.read_verification_key(d / VERIFY_KEY_FILE)
        rep.warnings.append(
            f"used {d / VERIFY_KEY_FILE}, which lies on the same host as the journal: move it off "
            "the host and pass --key, or these seals prove nothing against someone who had root")
    if key is not None:
        kid, k0 = key
        if kid != meta["id"] or sealing.fingerprint(k0) != meta.get("key_fingerprint"):
            raise JournalError(f"the verification key is for journal {kid}, not for this journal ({meta['id']})")
        rep.keyed = True
    else:
        rep.warnings.append("no verification key: chain and seal order checked, seal MACs NOT checked")

    # The key state first: a writer may seal between this read and the walk, never un-seal.
    state = None
    try:
        state = sealing.read_seal_key(d / KEY_FILE)
    except JournalError as e:
        rep.warnings.append(f"{e}; truncation of the sealed tail cannot be detected")

    receivers = []
    try:
        for n, path in scan_directory(d):
            receivers.append(Receiver.open(path, n, meta["id"], readonly=True))
        rep.receivers = len(receivers)
        _walk(rep, receivers, key[1] if key else None, state)
    except _Bad as bad:
        rep.bad_seq, rep.error = bad.seq, bad.reason
    finally:
        for r in receivers:
            r.close()
    return rep


def _walk(rep: VerifyReport, receivers: list[Receiver], k0: bytes | None, state: sealing.SealKey | None) -> None:
    if state is not None and k0 is not None and not hmac.compare_digest(
            sealing.key_at(k0, state.epoch), state.key):
        raise _Bad(None, f"the sealing key on the host (epoch {state.epoch}) does not derive from the "
                         "verification key: key file replaced")
    if not receivers:
        if state is not None and state.epoch > 0:
            raise _Bad(1, f"no receivers left, but {state.epoch} seal(s) were made: journal deleted")
        return
    start = receivers[0].first_seq
    expected, h = start, receivers[0].prev_hash
    rep.first_seq = start
    rep.sealed_through = start - 1
    cuts: dict[int, tuple[str, int]] = {}   # through_seq -> (hash hex, seq of the CUT record)
    epoch_next: int | None = 0 if start == 1 else None
    k_epoch, k = 0, k0

    for r in receivers:
        if r.first_seq > expected:
            raise _Bad(expected, f"entries {expected}..{r.first_seq - 1} are missing before {r.name} "
                                 "(receiver deleted without a declared cut)")
        if r.first_seq < expected:
            raise _Bad(r.first_seq, f"{r.name} starts at seq {r.first_seq}, overlapping the receiver before it")
        if r.prev_hash != h:
            raise _Bad(r.first_seq, f"{r.name} does not continue the hash chain of the receiver before it")
        seals = r.fetchall("SELECT epoch, seq, hash, ts_ns, mac FROM seal ORDER BY epoch")
        si = 0
        for row in r.iterate(_SELECT):
            seq = row[0]
            if seq != expected:
                raise _Bad(expected, f"entry {expected} is missing" if seq > expected else f"entry {seq} is out of order")
            try:
                h = hashlib.sha256(h + canonical(row[:-1])).digest()
            except (TypeError, ValueError):
                raise _Bad(seq, "entry holds values of the wrong type") from None
            if not isinstance(row[-1], bytes) or not hmac.compare_digest(h, row[-1]):
                raise _Bad(seq, f"entry {seq} was altered (hash mismatch)")
            if row[_I_TYPE] == "cut":
                try:
                    x = json.loads(row[_I_EXTRA])
                    cuts[int(x["through_seq"])] = (str(x["hash"]), seq)
                except (ValueError, KeyError, TypeError):
                    raise _Bad(seq, "cut record is malformed") from None
            while si < len(seals) and seals[si][1] <= seq:
                epoch, sseq, shash, sts, mac = seals[si]
                if sseq < seq:
                    raise _Bad(rep.sealed_through + 1, f"seal {epoch} is out of order")
                if epoch_next is None:
                    epoch_next = epoch   # first seal after a declared cut; its MAC vouches for it
                if epoch != epoch_next:
                    raise _Bad(rep.sealed_through + 1, f"seal(s) {epoch_next}..{epoch - 1} are missing")
                if not hmac.compare_digest(bytes(shash), h):
                    raise _Bad(rep.sealed_through + 1, f"seal {epoch} at seq {sseq} does not match the chain: "
                                                       f"entries {rep.sealed_through + 1}..{sseq} were rewritten")
                if k is not None:
                    if epoch < k_epoch:
                        k_epoch, k = 0, k0
                    while k_epoch < epoch:
                        k, k_epoch = sealing.evolve(k), k_epoch + 1
                    if not hmac.compare_digest(mac, sealing.seal_mac(k, rep.journal_id, epoch, sseq, shash, sts)):
                        raise _Bad(rep.sealed_through + 1, f"seal {epoch} at seq {sseq} is forged: entries "
                                                           f"{rep.sealed_through + 1}..{sseq} cannot be authenticated")
                rep.sealed_through, rep.seals, epoch_next = sseq, rep.seals + 1, epoch + 1
                si += 1
            expected += 1
            rep.entries += 1
        if si < len(seals):
            raise _Bad(expected, f"{r.name} has a seal for seq {seals[si][1]} but ends at seq {expected - 1}: "
                                 "entries were cut off")
    rep.last_seq = expected - 1

    if start != 1:
        cut = cuts.get(start - 1)
        if cut is None or cut[0] != receivers[0].prev_hash.hex():
            raise _Bad(1, f"entries 1..{start - 1} are missing and no cut record declares their deletion")
        if cut[1] > rep.sealed_through:
            raise _Bad(cut[1], "the cut record declaring the deleted receivers is not sealed")
        rep.cut_through = start - 1
    if state is not None and epoch_next is not None and state.epoch > epoch_next:
        raise _Bad(rep.last_seq + 1, f"seals {epoch_next}..{state.epoch - 1} are missing: the journal was "
                                     f"truncated after seq {rep.last_seq}")
    if state is not None and rep.seals == 0 and state.epoch > 0:
        raise _Bad(rep.first_seq, "no seal found although the journal was sealed before")
    unsealed = rep.last_seq - rep.sealed_through
    if unsealed > 0:
        rep.warnings.append(f"{unsealed} entr{'y' if unsealed == 1 else 'ies'} after seq {rep.sealed_through} "
                            "not sealed yet (writer running, or it crashed): chain-checked only")
