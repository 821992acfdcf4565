"""`journal verify`: walk every receiver and prove the chain, or name the first bad seq.

What is checked, in seq order:
- the seals, gathered from every receiver: epochs consecutive from 0 (retention carries the
  seals of the receivers it deletes into the first kept one, so none is ever lost), seqs
  increasing, and with the verification key each MAC under k_epoch, derived one step per
  seal (a forged epoch costs nothing to reject). Missing seals 0..i are a removed or
  replaced prefix of history: named, with its time span;
- receivers are contiguous: each starts at the previous one's last seq + 1 and continues
  its chain hash; a journal that starts after seq 1 needs a sealed CUT record declaring
  exactly that start (retention) *and* an authenticated seal at exactly that point, the
  chain head the remaining history continues;
- every entry's stored hash equals sha256(previous hash || canonical(row)), and its address
  search keys (not hashed) are recomputed;
- a seal at a seq the journal holds matches the chain hash there;
- the sealing key on the host is not past the last seal (else seals, and the entries they
  covered, were cut off the end: truncation) and derives from k_0; with the verification
  key, a missing or unreadable seal.key fails;
- a checkpoint (`journal checkpoint`, kept off the host) is still one of the seals.

Entries after the last seal are chain-checked but not authenticated; verify says how many.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sockgate import safedir
from sockgate.errors import JournalError
from sockgate.journal import seal as sealing
from sockgate.journal.seal import Seal
from sockgate.journal.store import (
    FIELDS, KEY_FILE, VERIFY_KEY_FILE, Receiver, chain_next, read_journal_meta,
    scan_directory,
)
from sockgate.record import addr_key, format_time

_SELECT = "SELECT " + ",".join(FIELDS) + ", local_key, remote_key, hash FROM entry ORDER BY seq"
_N = len(FIELDS)
_I_TYPE, _I_EXTRA = FIELDS.index("type"), FIELDS.index("extra")
_I_LADDR, _I_RADDR = FIELDS.index("local_addr"), FIELDS.index("remote_addr")
CHECKPOINT_FORMAT = "sgcp1"


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
    last_epoch: int | None = None    # the newest seal's epoch (seals 0..last_epoch all present)
    sealed_through: int = 0
    cut_through: int | None = None   # entries up to this seq were deleted by declared retention
    cut_span: tuple[int, int] | None = None  # ts_ns of seal 0 and of the seal at the cut point
    checkpoint: bool = False         # a given checkpoint was found among the seals
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
           use_local_key: bool = True, checkpoint: dict | None = None) -> VerifyReport:
    """Verify the journal in directory. key = (journal id, k_0) from the verification key;
    without it the journal's own verification.key is used if present (with a warning).
    checkpoint: a dict from checkpoint()/read_checkpoint() that must still be in the journal."""
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
    problem = safedir.problem(d)
    if problem:
        rep.warnings.append(f"journal directory not safe from other users: {problem}")

    receivers: list[Receiver] = []
    try:
        if checkpoint is not None and checkpoint["journal"] != rep.journal_id:
            raise _Bad(1, f"the checkpoint is of journal {checkpoint['journal']}, but this directory holds "
                          f"journal {rep.journal_id}: the journal was replaced")
        # The key state first: a writer may seal between this read and the walk, never un-seal.
        state = None
        try:
            state = sealing.read_seal_key(d / KEY_FILE)
        except JournalError as e:
            if rep.keyed:   # it would hide a truncated tail: with a key that is a failure
                raise _Bad(None, f"{e}: a truncated tail cannot be ruled out") from None
            rep.warnings.append(f"{e}; truncation of the sealed tail cannot be detected")
        for n, path in scan_directory(d):
            receivers.append(Receiver.open(path, n, meta["id"], readonly=True))
        rep.receivers = len(receivers)
        _Walk(rep, meta, receivers, key[1] if key else None, state, checkpoint).run()
    except _Bad as bad:
        rep.bad_seq, rep.error = bad.seq, bad.reason
    finally:
        for r in receivers:
            r.close()
    return rep


def _seals(receivers: list[Receiver]) -> list[Seal]:
    """Every receiver's seals, by epoch. A copy carried by retention is the same row twice."""
    by_epoch: dict[int, Seal] = {}
    for r in receivers:
        for row in r.seals():
            try:
                s = Seal.from_row(row, r.name)
            except JournalError as e:
                raise _Bad(None, str(e)) from None
            if by_epoch.setdefault(s.epoch, s) != s:
                raise _Bad(min(s.seq, by_epoch[s.epoch].seq),
                           f"seal {s.epoch} is stored twice with different contents ({r.name})")
    return [by_epoch[e] for e in sorted(by_epoch)]


def describe_time(ts_ns: Any) -> str:
    """RFC 3339, or a placeholder for a stored time that is not one (hostile rows)."""
    try:
        return format_time(ts_ns)
    except (TypeError, ValueError, OverflowError, OSError):
        return "an unknown time"


class _Walk:
    def __init__(self, rep: VerifyReport, meta: dict, receivers: list[Receiver], k0: bytes | None,
                 state: sealing.SealKey | None, checkpoint: dict | None):
        self.rep, self.meta, self.receivers, self.state, self.cp = rep, meta, receivers, state, checkpoint
        self.seals = _seals(receivers)
        self.k = k0                       # k_{next epoch}, evolved one step per seal
        self.k_state: bytes | None = None  # k at the epoch seal.key claims, once reached
        self.next_epoch = 0
        self.prev: Seal | None = None     # the last seal taken

    def take(self, s: Seal) -> None:
        """The next seal in epoch order: consecutive, increasing, authentic."""
        rep, prev = self.rep, self.prev
        covered = prev.seq + 1 if prev else 1   # first entry this seal vouches for
        if s.epoch != self.next_epoch:
            if prev is None:
                raise _Bad(1, self._missing_prefix(s))
            raise _Bad(covered, f"seal(s) {self.next_epoch}..{s.epoch - 1} are missing")
        if prev is not None and s.seq <= prev.seq:
            raise _Bad(covered, f"seal {s.epoch} is out of order (seq {s.seq} after seq {prev.seq})")
        if self.state is not None and s.epoch == self.state.epoch:
            self.k_state = self.k
        if self.k is not None:
            if not s.authentic(self.k, rep.journal_id):
                raise _Bad(covered, f"seal {s.epoch} at seq {s.seq} is forged: entries "
                                    f"{covered}..{s.seq} cannot be authenticated")
            self.k = sealing.evolve(self.k)
        self.prev, self.next_epoch = s, s.epoch + 1
        rep.seals, rep.last_epoch = rep.seals + 1, s.epoch

    def _missing_prefix(self, s: Seal) -> str:
        """Seals 0..s.epoch-1 are gone: say what that removed, and when it was written."""
        created = self.meta.get("created_ns")
        since = f"from the journal's creation ({describe_time(created)}, as journal.json says) " if created else ""
        start = self.receivers[0].first_seq
        what = (f"entries 1..{start - 1} are missing, and seals 0..{s.epoch - 1} with them" if start > 1 else
                f"seals 0..{s.epoch - 1} are missing (the history starts again at seq 1 under seal {s.epoch})")
        old = any(r.meta.get("version") == "1" for r in self.receivers) or self.meta.get("version") == 1
        return (f"{what}: the history they sealed, {since}up to the oldest seal left (epoch {s.epoch}, "
                f"seq {s.seq}, {describe_time(s.ts_ns)}), was removed or replaced. Retention keeps every "
                "seal, so no declared cut explains this"
                + ("; a cut made by a format-1 writer (which deleted seals) cannot be authenticated either"
                   if old else ""))

    def run(self) -> None:
        rep, receivers, seals = self.rep, self.receivers, self.seals
        if not receivers:
            if self.state is not None and self.state.epoch > 0:
                raise _Bad(1, f"no receivers left, but {self.state.epoch} seal(s) were made: journal deleted")
            self._key_state(0)
            return
        start = receivers[0].first_seq
        expected, h = start, receivers[0].prev_hash
        rep.first_seq = start
        si = 0
        while si < len(seals) and seals[si].seq < start:   # seals of entries retention deleted
            self.take(seals[si])
            si += 1
        cut_point = self.prev
        rep.sealed_through = start - 1
        cuts: dict[int, tuple[str, int]] = {}   # through_seq -> (hash hex, seq of the CUT record)

        for r in receivers:
            if r.first_seq > expected:
                raise _Bad(expected, f"entries {expected}..{r.first_seq - 1} are missing before {r.name} "
                                     "(receiver deleted without a declared cut)")
            if r.first_seq < expected:
                raise _Bad(r.first_seq, f"{r.name} starts at seq {r.first_seq}, overlapping the receiver before it")
            if r.prev_hash != h:
                raise _Bad(r.first_seq, f"{r.name} does not continue the hash chain of the receiver before it")
            for row in r.iterate(_SELECT):
                seq = row[0]
                if seq != expected:
                    raise _Bad(expected, f"entry {expected} is missing" if seq > expected
                               else f"entry {seq} is out of order")
                try:
                    h = chain_next(h, row[:_N])
                except (TypeError, ValueError):
                    raise _Bad(seq, "entry holds values of the wrong type") from None
                if not isinstance(row[-1], bytes) or not hmac.compare_digest(h, row[-1]):
                    raise _Bad(seq, f"entry {seq} was altered (hash mismatch)")
                # The search keys are not hashed (they are derived): recompute them, so an entry
                # cannot be hidden from --remote or `top` by rewriting its key alone.
                for col, i_addr, name in ((_N, _I_LADDR, "local_key"), (_N + 1, _I_RADDR, "remote_key")):
                    stored = row[col]
                    addr = row[i_addr]
                    if stored != (addr_key(addr) if isinstance(addr, str) else None):
                        raise _Bad(seq, f"entry {seq} was altered ({name} does not match its address)")
                if row[_I_TYPE] == "cut":
                    try:
                        x = json.loads(row[_I_EXTRA])
                        cuts[int(x["through_seq"])] = (str(x["hash"]), seq)
                    except (ValueError, KeyError, TypeError, RecursionError):
                        raise _Bad(seq, "cut record is malformed") from None
                if si < len(seals) and seals[si].seq == seq:
                    s = seals[si]
                    if not hmac.compare_digest(s.hash, h):
                        raise _Bad(rep.sealed_through + 1, f"seal {s.epoch} at seq {s.seq} does not match the "
                                                           f"chain: entries {rep.sealed_through + 1}..{s.seq} "
                                                           "were rewritten")
                    self.take(s)
                    rep.sealed_through = s.seq
                    si += 1
                expected += 1
                rep.entries += 1
        rep.last_seq = expected - 1
        if si < len(seals):
            raise _Bad(expected, f"there is a seal for seq {seals[si].seq}, but the journal ends at seq "
                                 f"{expected - 1}: entries were cut off")

        if start != 1:
            cut = cuts.get(start - 1)
            if cut is None or cut[0] != receivers[0].prev_hash.hex():
                raise _Bad(1, f"entries 1..{start - 1} are missing and no cut record declares their deletion")
            if cut[1] > rep.sealed_through:
                raise _Bad(cut[1], "the cut record declaring the deleted receivers is not sealed")
            if cut_point is None or cut_point.seq != start - 1 or cut_point.hash != receivers[0].prev_hash:
                raise _Bad(1, f"entries 1..{start - 1} are declared cut, but no seal vouches for the chain at "
                              f"seq {start - 1}, where the remaining history starts: the cut is not authentic")
            rep.cut_through = start - 1
            rep.cut_span = (seals[0].ts_ns, cut_point.ts_ns)
        if self.cp is not None:
            self._checkpoint()
        self._key_state(rep.last_seq)
        unsealed = rep.last_seq - rep.sealed_through
        if unsealed > 0:
            rep.warnings.append(f"{unsealed} entr{'y' if unsealed == 1 else 'ies'} after seq {rep.sealed_through} "
                                "not sealed yet (writer running, or it crashed): chain-checked only")

    def _checkpoint(self) -> None:
        cp, seals, last = self.cp, self.seals, self.rep.last_seq or 0
        assert cp is not None
        s = seals[cp["epoch"]] if cp["epoch"] < len(seals) else None   # seals[i].epoch == i by now
        what = f"the checkpoint (seal {cp['epoch']} at seq {cp['seq']}, {describe_time(cp['ts_ns'])})"
        if s is None:
            raise _Bad(min(cp["seq"], last + 1), f"{what} is not in the journal: it was truncated or replaced")
        if (s.seq, s.hash.hex(), s.ts_ns) != (cp["seq"], cp["hash"], cp["ts_ns"]) or (
                cp.get("mac") is not None and s.mac.hex() != cp["mac"]):
            raise _Bad(min(cp["seq"], s.seq), f"{what} differs from seal {s.epoch} in the journal: "
                                              "the journal was rewritten or replaced")
        self.rep.checkpoint = True

    def _key_state(self, last_seq: int) -> None:
        """seal.key may not be ahead of the seals: a key past the last seal means seals were
        cut off. Behind is a writer that sealed while we walked (or the crash window between
        a seal and the key's evolution, which the next writer completes)."""
        st = self.state
        if st is None:
            return
        if st.journal_id != self.rep.journal_id:
            raise _Bad(None, f"the sealing key on the host belongs to journal {st.journal_id}: key file replaced")
        if st.epoch > self.next_epoch:
            last = f"the last seal is epoch {self.next_epoch - 1}" if self.next_epoch else "there is no seal"
            raise _Bad(last_seq + 1, f"the sealing key is at epoch {st.epoch}, but {last}: seals "
                                     f"{self.next_epoch}..{st.epoch - 1} are missing (the journal was truncated "
                                     f"after seq {last_seq}, or the key file forged)")
        if st.epoch == self.next_epoch:
            self.k_state = self.k
        if self.k_state is not None and not hmac.compare_digest(self.k_state, st.key):
            raise _Bad(None, f"the sealing key on the host (epoch {st.epoch}) does not derive from the "
                             "verification key: key file replaced")


# -- checkpoints: the newest seal, kept off the host ----------------------------------------

def checkpoint(directory: str | Path) -> dict:
    """The journal's newest seal as a small dict, to keep off the host (print it, mail it):
    {"checkpoint": "sgcp1", "journal", "epoch", "seq", "hash", "ts_ns", "time", "mac"}.
    `verify(..., checkpoint=cp)` fails once the journal no longer holds it. Reads only;
    fine while a writer runs."""
    d = Path(directory)
    if not d.is_dir():
        raise JournalError(f"{d}: no journal here")
    meta = read_journal_meta(d)
    newest: Seal | None = None
    for n, path in scan_directory(d):
        r = Receiver.open(path, n, meta["id"], readonly=True)
        try:
            row = r.last_seal()
        finally:
            r.close()
        if row is not None:
            s = Seal.from_row(row, str(path))
            if newest is None or s.epoch > newest.epoch:
                newest = s
    if newest is None:
        raise JournalError(f"{d}: nothing sealed yet, no checkpoint to take")
    return {"checkpoint": CHECKPOINT_FORMAT, "journal": meta["id"], "epoch": newest.epoch, "seq": newest.seq,
            "hash": newest.hash.hex(), "ts_ns": newest.ts_ns, "time": describe_time(newest.ts_ns),
            "mac": newest.mac.hex()}


def format_checkpoint(cp: dict) -> str:
    """A checkpoint as the one JSON line `journal checkpoint` prints (and the monitor sends):
    ASCII, no spaces; parse_checkpoint reads it back."""
    return json.dumps(cp, separators=(",", ":"))


def parse_checkpoint(text: str, source: str = "checkpoint") -> dict:
    """A checkpoint from its JSON text, every field checked (it comes from a file)."""
    try:
        cp = json.loads(text)
    except (ValueError, RecursionError) as e:   # RecursionError: "[[[[..." nested past the stack
        raise JournalError(f"{source}: not a sockgate checkpoint (not JSON: {e})") from None

    def is_hex(v: Any) -> bool:
        return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)

    if not (isinstance(cp, dict) and cp.get("checkpoint") == CHECKPOINT_FORMAT and isinstance(cp.get("journal"), str)
            and all(type(cp.get(k)) is int for k in ("epoch", "seq", "ts_ns"))
            and 0 <= cp["epoch"] <= sealing.MAX_EPOCH and cp["seq"] >= 1 and is_hex(cp.get("hash"))
            and (cp.get("mac") is None or is_hex(cp["mac"]))):
        raise JournalError(f"{source}: not a sockgate checkpoint (expected the JSON `journal checkpoint` prints)")
    return cp


def read_checkpoint(path: str | Path) -> dict:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise JournalError(f"{path}: cannot read checkpoint: {e}") from None
    return parse_checkpoint(text, str(path))
