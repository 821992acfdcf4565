"""The alert engine: journal entries in, alerts out. Pure: no I/O, no clock of its own.

Per entry only the candidate rules are tested: rules are indexed by (entry type, outcome,
source), the three fields most rules constrain, so an entry of a type no rule watches costs
one dict lookup. The remaining fields of a candidate rule are precompiled predicates.

State (what a restart must keep; State persists it from the dirty sets):
  windows  threshold rules: per group, the timestamps of the last `count` matches
  seen     first_seen rules: per key, when it was last seen (the baseline)
  open     dedup: per (rule, dedup key), the alert that is open and what folded into it
  storms   per rule: its storm window (alerts sent in it, and the ones folded into its report)

Time is journal time (entry ts_ns) while processing entries; tick(now) closes suppression
windows by the wall clock, so a repeat count is reported even when the journal goes quiet.
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from sockgate.record import EntryType, Entry, Outcome, Source
from sockgate.record import format_duration
from sockgate.record import format_time as iso
from sockgate.monitor.render import entry_dict, entry_field, group_text
from sockgate.monitor.model import AlertRule, RuleSet


@dataclass
class Alert:
    """One notification: raised by a rule, or the repeat summary of an open alert."""

    id: str
    rule: str
    channels: tuple[str, ...]
    payload: dict[str, Any]


class OpenAlert:
    """An alert inside its suppression window; repeats fold into `count`."""

    __slots__ = ("id", "until", "count", "first_ts", "last_ts", "n", "base", "last_entry")

    def __init__(self, id: str, until: int, base: dict[str, Any]):
        self.id = id
        self.until = until
        self.count = 0          # repeats folded since the last notification
        self.first_ts = 0       # first / last folded repeat
        self.last_ts = 0
        self.n = 0              # repeat summaries sent so far
        self.base = base        # payload of the alert that opened it
        self.last_entry: Entry | dict | None = None

    def to_json(self) -> str:
        le = entry_dict(self.last_entry) if isinstance(self.last_entry, Entry) else self.last_entry
        return json.dumps({"id": self.id, "until": self.until, "count": self.count, "first_ts": self.first_ts,
                           "last_ts": self.last_ts, "n": self.n, "base": self.base, "last_entry": le})

    @classmethod
    def from_json(cls, s: str) -> "OpenAlert":
        d = json.loads(s)
        oa = cls(d["id"], d["until"], d["base"])
        oa.count, oa.first_ts, oa.last_ts, oa.n, oa.last_entry = d["count"], d["first_ts"], d["last_ts"], d["n"], d["last_entry"]
        return oa


MAX_RANGES = 100   # seq ranges a storm report lists; past that it gives the span and says so


class Storm:
    """One rule's storm window: the first `storm` new alerts in it are sent, the rest fold
    into one counted report (which entries: their journal seqs as ranges)."""

    __slots__ = ("start", "sent", "count", "entries", "first_ts", "last_ts", "seqs", "complete", "last_entry")

    def __init__(self, start: int):
        self.start = start
        self.sent = 0
        self.count = 0          # alerts folded
        self.entries = 0        # entries those alerts stood for (a threshold alert: count)
        self.first_ts = self.last_ts = 0
        self.seqs: list[list[int]] = []   # [first, last] ranges of the folded alerts' entry seqs
        self.complete = True              # False once more than MAX_RANGES were needed
        self.last_entry: Entry | dict | None = None

    def fold(self, e: Entry, ts: int, count: int) -> None:
        if self.count == 0:
            self.first_ts = ts
        self.count += 1
        self.entries += count
        self.last_ts = max(self.last_ts, ts)
        self.last_entry = e
        if e.seq is None:
            return
        if self.seqs and self.seqs[-1][1] + 1 == e.seq:
            self.seqs[-1][1] = e.seq
        elif len(self.seqs) < MAX_RANGES:
            self.seqs.append([e.seq, e.seq])
        else:
            self.complete = False
            self.seqs[-1][1] = max(self.seqs[-1][1], e.seq)   # the span still ends at the last

    def to_json(self) -> str:
        le = entry_dict(self.last_entry) if isinstance(self.last_entry, Entry) else self.last_entry
        return json.dumps({k: getattr(self, k) for k in self.__slots__ if k != "last_entry"} | {"last_entry": le})

    @classmethod
    def from_json(cls, s: str) -> "Storm":
        d = json.loads(s)
        st = cls(d["start"])
        for k in cls.__slots__:
            setattr(st, k, d[k])
        return st


def seq_ranges(ranges: list[list[int]]) -> str:
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)


def _key_values(e: Entry, names: tuple[str, ...]) -> tuple:
    return tuple(entry_field(e, n) for n in names)


class Engine:
    def __init__(self, ruleset: RuleSet, monitor_host: str = ""):
        self.ruleset = ruleset
        self.rules = list(ruleset.rules)
        self.by_name = {r.name: r for r in self.rules}
        self.monitor_host = monitor_host
        # what names an entry in alert ids (default: its journal seq); the fleet monitor's
        # entries come from many journals, so it names them "HOST:SEQ" (fleet.monitor)
        self.ref_of: Callable[[Entry], str] | None = None
        self.learning = False
        self.windows: dict[str, dict[tuple, deque]] = {r.name: {} for r in self.rules if r.kind == "threshold"}
        self.seen: dict[str, dict[tuple, int]] = {r.name: {} for r in self.rules if r.kind == "first_seen"}
        self.open: dict[tuple[str, tuple], OpenAlert] = {}
        self.storms: dict[str, Storm] = {}
        self.dirty_storms: set[str] = set()
        self.dirty_windows: set[tuple[str, tuple]] = set()
        self.dirty_seen: set[tuple[str, tuple]] = set()
        self.dirty_open: set[tuple[str, tuple]] = set()
        self._next_expiry = 2**63
        self.latest_ts = 0
        self._build_index()

    # ------------------------------------------------------------------ index

    def _build_index(self) -> None:
        """(type, outcome, source) -> candidate rules (with the index fields stripped)."""
        self.index: dict[tuple, tuple[tuple[AlertRule, tuple], ...]] = {}
        self.learn_index: dict[tuple, tuple[tuple[AlertRule, tuple], ...]] = {}
        for t, o, s in itertools.product(list(EntryType), [None, *Outcome], list(Source)):
            cands = []
            for r in self.rules:
                m = r.match
                if m.allows("type", t) and m.allows("outcome", o) and m.allows("source", s):
                    rest = tuple(f.entry_test() for f in m.fields if f.name not in ("type", "outcome", "source"))
                    cands.append((r, rest))
            key = (t, o, s)
            self.index[key] = tuple(cands)
            self.learn_index[key] = tuple(c for c in cands if c[0].kind == "first_seen")

    # ------------------------------------------------------------------ processing

    def process(self, e: Entry, out: list[Alert]) -> None:
        """Test one entry against the rules; append raised alerts to out."""
        idx = self.learn_index if self.learning else self.index
        cands = idx.get((e.type, e.outcome, e.source))
        if cands is None:   # a value outside the enums (should not happen): test every rule
            cands = tuple((r, tuple(f.entry_test() for f in r.match.fields)) for r in self.rules
                          if not (self.learning and r.kind != "first_seen"))
        if e.ts_ns > self.latest_ts:
            self.latest_ts = e.ts_ns
        for r, rest in cands:
            for test in rest:
                if not test(e):
                    break
            else:
                if r.kind == "every":
                    self._hit(r, e, e.ts_ns, 1, None, out)
                elif r.kind == "threshold":
                    self._threshold(r, e, out)
                else:
                    self._first_seen(r, e, out)

    def process_all(self, entries: Iterable[Entry]) -> list[Alert]:
        out: list[Alert] = []
        for e in entries:
            self.process(e, out)
        return out

    def _threshold(self, r: AlertRule, e: Entry, out: list[Alert]) -> None:
        g = _key_values(e, r.group_by)
        dk = _key_values(e, r.dedup_by) if r.dedup_by is not None else g
        okey = (r.name, dk)
        oa = self.open.get(okey)
        if oa is not None:
            self._expire(okey, oa, e.ts_ns, out)
            oa = self.open.get(okey)
        if oa is not None:
            # The group's alert is open: every further match is a repeat (counted, not dropped).
            self._fold(r, dk, oa, e, 1)
            return
        groups = self.windows[r.name]
        dq = groups.get(g)
        if dq is None:
            dq = groups[g] = deque(maxlen=r.count)
        last = (dq[-1][1] if r.distinct else dq[-1]) if dq else None
        ts = max(e.ts_ns, last) if last is not None else e.ts_ns   # clamp: out-of-order imports count "now"
        if r.distinct:
            # [value, ts] of the `count` most recently seen distinct values, oldest first: N
            # distinct values within the window iff the oldest of these is less than `window` before
            v = entry_field(e, r.distinct)
            for i, (seen, _) in enumerate(dq):
                if seen == v:
                    del dq[i]
                    break
            dq.append([v, ts])
            first = dq[0][1]
        else:
            dq.append(ts)
            first = dq[0]
        self.dirty_windows.add((r.name, g))
        # N matches within the window: the first of the last N is less than `window` before.
        if len(dq) == r.count and ts - first < r.window_ns:
            values = [x[0] for x in dq] if r.distinct else None
            dq.clear()
            del groups[g]
            self._hit(r, e, ts, r.count, g, out, first_ts=first, dkey=dk, distinct=values)

    def _first_seen(self, r: AlertRule, e: Entry, out: list[Alert]) -> None:
        k = _key_values(e, r.key)
        seen = self.seen[r.name]
        prev = seen.get(k)
        new = prev is None or (r.forget_ns and e.ts_ns - prev >= r.forget_ns)
        if prev is None or e.ts_ns > prev:
            seen[k] = e.ts_ns
            self.dirty_seen.add((r.name, k))
        if new and not self.learning:
            self._hit(r, e, e.ts_ns, 1, k, out)

    def _group_dict(self, r: AlertRule, g: tuple | None) -> dict[str, Any]:
        names = r.group_by if r.kind == "threshold" else r.key if r.kind == "first_seen" else ()
        return dict(zip(names, g)) if g is not None else {}

    def _hit(self, r: AlertRule, e: Entry, ts: int, count: int, g: tuple | None, out: list[Alert],
             first_ts: int | None = None, dkey: tuple | None = None, distinct: list | None = None) -> None:
        group = self._group_dict(r, g)
        extra = {"alert": r.name, "severity": r.severity, "kind": r.kind, "count": count,
                 "window": format_duration(r.window_ns) if r.window_ns else "-", "group": group_text(group)}
        message = r.message.render(e, extra)
        if dkey is None:
            if r.dedup_by is not None:
                dkey = _key_values(e, r.dedup_by)
            elif g is not None:
                dkey = g
            else:
                dkey = (message,)
        okey = (r.name, dkey)
        oa = self.open.get(okey)
        if oa is not None:
            self._expire(okey, oa, ts, out)
            oa = self.open.get(okey)
            if oa is not None:
                self._fold(r, dkey, oa, e, count)
                return
        if r.storm and self._storm(r, e, ts, count, out):
            return
        aid = f"{r.name}/{self.ref_of(e) if self.ref_of else e.seq if e.seq is not None else e.ts_ns}"
        payload = {
            "id": aid, "alert": r.name, "kind": r.kind, "severity": r.severity, "message": message,
            "repeat": False, "count": count,
            "first_time": iso(first_ts) if first_ts is not None else iso(ts), "last_time": iso(ts),
            "first_ts_ns": first_ts if first_ts is not None else ts, "last_ts_ns": ts,
            "group": group, "entry": entry_dict(e), "monitor_host": self.monitor_host,
        }
        if distinct is not None:   # the N distinct values that made it fire (e.g. the hosts)
            payload["distinct"] = {"field": r.distinct, "values": distinct}
        out.append(Alert(aid, r.name, r.channels, payload))
        if r.suppress_ns > 0:
            until = ts + r.suppress_ns
            self.open[okey] = OpenAlert(aid, until, payload)
            self.dirty_open.add(okey)
            if until < self._next_expiry:
                self._next_expiry = until

    def _storm(self, r: AlertRule, e: Entry, ts: int, count: int, out: list[Alert]) -> bool:
        """Count a new alert against its rule's storm window; True when it folds into the
        window's report instead of being sent."""
        st = self.storms.get(r.name)
        if st is not None and ts >= st.start + r.storm_window_ns:
            self._storm_report(r.name, st, out)
            st = None
        if st is None:
            st = self.storms[r.name] = Storm(ts)
            self._next_expiry = min(self._next_expiry, ts + r.storm_window_ns)
        self.dirty_storms.add(r.name)
        if st.sent < r.storm:
            st.sent += 1
            return False
        st.fold(e, ts, count)
        return True

    def _storm_report(self, name: str, st: Storm, out: list[Alert]) -> None:
        """Close a storm window: one report of what folded into it (nothing if nothing did,
        or when the rule was removed: nothing to send to)."""
        r = self.by_name.get(name)
        del self.storms[name]
        self.dirty_storms.add(name)
        if not st.count or r is None:
            return
        le = entry_dict(st.last_entry) if isinstance(st.last_entry, Entry) else st.last_entry
        first = st.seqs[0][0] if st.seqs and not self.ref_of else st.first_ts
        aid = f"{r.name}/storm/{first}"
        seqs = seq_ranges(st.seqs)
        which = (f"journal seq {seqs}" if st.complete and len(st.seqs) <= 10 else
                 f"journal seq {st.seqs[0][0]}-{st.seqs[-1][1]}" if st.seqs else "no journal seqs")
        n = st.count
        payload = {
            "id": aid, "alert": r.name, "kind": r.kind, "severity": r.severity,
            "message": f"{r.name}: alert storm: {n} more alert{'s' if n != 1 else ''} folded "
                       f"({st.entries} entries, {which}) from {iso(st.first_ts)} to {iso(st.last_ts)}",
            "repeat": False, "storm": True, "count": n,
            "first_time": iso(st.first_ts), "last_time": iso(st.last_ts),
            "first_ts_ns": st.first_ts, "last_ts_ns": st.last_ts, "group": {}, "entry": le or {},
            "monitor_host": self.monitor_host,
            "folded": {"alerts": n, "entries": st.entries, "seqs": seqs, "seqs_complete": st.complete,
                       "first_seq": st.seqs[0][0] if st.seqs else None,
                       "last_seq": st.seqs[-1][1] if st.seqs else None},
        }
        out.append(Alert(aid, r.name, r.channels, payload))

    def _fold(self, r: AlertRule, dkey: tuple, oa: OpenAlert, e: Entry, count: int) -> None:
        if oa.count == 0:
            oa.first_ts = e.ts_ns
        oa.count += count
        oa.last_ts = max(oa.last_ts, e.ts_ns)
        oa.last_entry = e
        self.dirty_open.add((r.name, dkey))

    def _expire(self, okey: tuple[str, tuple], oa: OpenAlert, now: int, out: list[Alert]) -> None:
        """Close oa's window if it ended by `now`: report folded repeats (and keep the alert
        open for another window, so a storm is one notification per window) or close it."""
        r = self.by_name.get(okey[0])
        while oa.until <= now:
            if oa.count == 0 or r is None:
                if oa.count and r is None:
                    pass  # rule removed: nothing to send to
                del self.open[okey]
                self.dirty_open.add(okey)
                return
            oa.n += 1
            base = oa.base
            le = entry_dict(oa.last_entry) if isinstance(oa.last_entry, Entry) else oa.last_entry
            aid = f"{oa.id}/repeat/{oa.n}"
            payload = dict(base, id=aid, repeat=True, count=oa.count,
                           message=f"{base['message']} [repeated {oa.count} more time{'s' if oa.count != 1 else ''}"
                                   f" from {iso(oa.first_ts)} to {iso(oa.last_ts)}]",
                           first_time=iso(oa.first_ts), last_time=iso(oa.last_ts),
                           first_ts_ns=oa.first_ts, last_ts_ns=oa.last_ts, entry=le or base["entry"],
                           repeat_of=oa.id)
            out.append(Alert(aid, r.name, r.channels, payload))
            oa.count = 0
            oa.until += r.suppress_ns
            self.dirty_open.add(okey)

    def tick(self, now_ns: int, out: list[Alert]) -> None:
        """Close suppression windows that ended by now_ns (wall clock or end of a replay)."""
        if now_ns < self._next_expiry:
            return
        for okey, oa in list(self.open.items()):
            self._expire(okey, oa, now_ns, out)
        for name, st in list(self.storms.items()):
            r = self.by_name.get(name)
            if r is None or now_ns >= st.start + r.storm_window_ns:
                self._storm_report(name, st, out)
        self.recompute_expiry()

    def flush(self, out: list[Alert]) -> None:
        """End of a replay: report every pending repeat count (used by --test)."""
        for okey, oa in list(self.open.items()):
            self._expire(okey, oa, max(oa.until, self.latest_ts), out)
        for name, st in list(self.storms.items()):
            self._storm_report(name, st, out)

    def prune(self, now_ns: int) -> None:
        """Forget threshold groups whose matches all fell out of their window (journal time:
        pass the latest entry timestamp, not the wall clock)."""
        for r in self.rules:
            if r.kind != "threshold":
                continue
            groups = self.windows[r.name]
            stale = [g for g, dq in groups.items()
                     if not dq or now_ns - (dq[-1][1] if r.distinct else dq[-1]) >= r.window_ns]
            for g in stale:
                del groups[g]
                self.dirty_windows.add((r.name, g))

    # ------------------------------------------------------------------ state

    def reset_dirty(self) -> None:
        self.dirty_storms.clear()
        self.dirty_windows.clear()
        self.dirty_seen.clear()
        self.dirty_open.clear()

    def recompute_expiry(self) -> None:
        ends = [oa.until for oa in self.open.values()]
        ends += [st.start + self.by_name[n].storm_window_ns for n, st in self.storms.items() if n in self.by_name]
        self._next_expiry = min(ends, default=2**63)
