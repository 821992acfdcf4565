"""What the console and the report show, read from the journal (read-only), the policy file
and the daemon's counters. No web code here: the Starlette app (app.py) and the static
report (report.py) both render these values, so the two cannot disagree.

The journal is opened read-only (SQLite `mode=ro`: no write lock is ever taken, the
daemon keeps writing) once per Data object; its connections are shared between the
server's threads under one lock.
"""

from __future__ import annotations

import inspect
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from sockgate.errors import SockgateError, UsageError
from sockgate.journal.query import ROLLUP_NS, Filter, Rollup, histogram, rule_hits
from sockgate.record import NS, Entry, EntryType, endpoint, format_time, oneline

# The fields Top ranks, and the outcomes it ranks them for (each a column of tables).
TOP_FIELDS = ("remote_addr", "program", "user", "remote_port", "local_port")
TOP_OUTCOMES = ("rejected", "audit-rejected", "failed", "allowed")   # refusals first
# Filter.build's keywords: the console's query parameters are named after them, so a URL
# (/live?outcomes=rejected&remote=10.0.0.0/8) is the same selection as `journal show`'s options.
FILTER_PARAMS = tuple(p for p in inspect.signature(Filter.build).parameters if p != "now_ns")
SCALAR_PARAMS = frozenset({"since", "until", "from_seq", "to_seq"})
# Chart steps: the smallest that keeps a window under ~2,000 buckets.
STEPS_S = (1, 5, 10, 30, 60, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 86400)
MAX_BUCKETS = 2000


def filter_from(params: Any, *, default_since: str | None = None) -> Filter:
    """A Filter from query parameters (a Starlette QueryParams or a dict of lists). Empty
    values are ignored (an untouched form field); a bad one is a UsageError naming it."""
    kw: dict[str, Any] = {}
    for name in FILTER_PARAMS:
        values = [v.strip() for v in _getlist(params, name) if v and v.strip()]
        if not values:
            continue
        if name in SCALAR_PARAMS:
            v = values[-1]
            if name in ("from_seq", "to_seq"):
                if not v.isascii() or not v.isdigit() or len(v) > 19:
                    raise UsageError(f"{name}: {v[:40]!r} is not a sequence number")
                kw[name] = int(v)
            else:
                kw[name] = v
        else:
            kw[name] = values
    if default_since is not None:
        kw.setdefault("since", default_since)
    return Filter.build(**kw)


def _getlist(params: Any, name: str) -> list[str]:
    if hasattr(params, "getlist"):
        return params.getlist(name)
    v = params.get(name, [])
    return [v] if isinstance(v, str) else list(v)


def step_for(span_ns: int) -> int:
    """A chart's bucket in ns for a window of span_ns."""
    for s in STEPS_S:
        if span_ns / (s * NS) <= MAX_BUCKETS:
            return s * NS
    return STEPS_S[-1] * NS


def row(e: Entry) -> dict[str, Any]:
    """An entry as the cells the Live table shows (JSON for the stream, the same keys for
    the first page). Names pass through record.oneline (control characters, line breaks
    and bidi overrides become visible escapes), and whoever renders them escapes markup
    (Jinja autoescape, textContent)."""
    return {
        "seq": e.seq, "time": format_time(e.ts_ns)[:23].replace("T", " "), "type": e.type.value,
        "type_name": e.type.title, "outcome": e.outcome.value if e.outcome else "",
        "user": oneline(e.user or (str(e.uid) if e.uid is not None else "")), "program": oneline(e.program or ""),
        "local": endpoint(e.local_addr, e.local_port) or "", "remote": endpoint(e.remote_addr, e.remote_port) or "",
        "rule": oneline(e.rule or ""), "host": oneline(e.host), "source": e.source.value,
    }


@dataclass
class RuleRow:
    index: int | None          # 0-based position in the file (None: a rule the policy no longer has)
    name: str
    line: int | None
    exits: str
    action: str
    mode: str
    entries: int = 0           # journaled decisions in the window
    last_ns: int | None = None
    kernel_hits: int | None = None


@dataclass
class Integrity:
    verified_at_ns: int | None = None
    verify: dict[str, Any] | None = None     # VerifyReport.to_dict()
    verify_error: str | None = None
    last_seq: int = 0
    sealed_through: int = 0
    last_seal_ns: int | None = None
    receivers: list[dict[str, Any]] = field(default_factory=list)
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)   # gap/detach/interrupted/cut
    dropped: int = 0                         # events lost, over every gap record
    gaps: int = 0                            # gap records
    key_where: str = ""
    dir_problem: str | None = None

    @property
    def unsealed(self) -> int:
        return max(0, self.last_seq - self.sealed_through)


INTEGRITY_TYPES = (EntryType.GAP, EntryType.DETACHED, EntryType.INTERRUPTED, EntryType.CUT)


class Data:
    """The read side of one journal, one policy file and (optionally) the daemon's metrics."""

    def __init__(self, journal_dir: str, *, policy_file: str | None = None, metrics_url: str | None = None,
                 candidate_file: str | None = None, key_file: str | None = None,
                 fleet_db: str | None = None, cache_dir: str | None = None) -> None:
        from sockgate.journal import Journal

        self.journal_dir = journal_dir
        self.fleet_db = fleet_db
        self.policy_file = policy_file
        self.metrics_url = metrics_url
        self.candidate_file = candidate_file
        self.key_file = key_file
        self.cache_dir = cache_dir     # where the chart rollup is kept between runs (None: not kept)
        self.lock = threading.RLock()
        self.journal = Journal.open(journal_dir, readonly=True)
        # Live's own connections: its few small reads never wait behind another view's long
        # query (Top, a chart from the rows, Integrity's scan) on the shared ones
        self._live_lock = threading.Lock()
        try:
            self._live = Journal.open(journal_dir, readonly=True)
        except BaseException:
            self.journal.close()
            raise
        self._policy: tuple[float, Any] | None = None
        self._evaluator: Any = None
        self._integrity: Integrity | None = None
        self._verify_lock = threading.Lock()
        self._rollup: tuple[Any, Rollup] | None = None
        self._rollup_lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            self.journal.close()
        with self._live_lock:
            self._live.close()
        with self._rollup_lock:
            if self._rollup is not None:
                j, r = self._rollup
                try:
                    self._save_rollup(j, r)   # so the next start counts only what comes after
                finally:
                    j.close()

    # -- entries -----------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        with self._live_lock:
            return self._live.last_seq

    def page(self, filt: Filter, n: int = 100) -> list[Entry]:
        """The newest n matching entries, newest first."""
        with self.lock:
            return self.journal.tail(n, filter=filt)[::-1]

    def after(self, seq: int, filt: Filter, n: int = 500) -> list[Entry]:
        """Up to n matching entries after seq, oldest first."""
        with self._live_lock:
            out = []
            for e in self._live.entries(seq, filter=filt, page=n):
                out.append(e)
                if len(out) >= n:
                    break
            return out

    def entry(self, seq: int) -> Entry | None:
        got = self.after(seq - 1, Filter(from_seq=seq, to_seq=seq), 1)
        return got[0] if got else None

    # -- the policy --------------------------------------------------------------------

    def policy(self) -> Any:
        """The policy file parsed (re-read when it changes), or None without --policy. A broken
        file is a SockgateError the page shows."""
        if not self.policy_file:
            return None
        from sockgate.policy.parse import load_policy

        try:
            mtime = os.stat(self.policy_file).st_mtime
        except OSError as e:
            raise SockgateError(f"{self.policy_file}: {e.strerror}") from None
        with self.lock:
            if self._policy is None or self._policy[0] != mtime:
                self._policy = (mtime, load_policy(self.policy_file))
                self._evaluator = None
            return self._policy[1]

    def explain(self, e: Entry) -> dict[str, Any] | None:
        """`policy explain`'s answer for a journaled decision under the policy file: the
        deciding rule (name, line, action, mode), the outcome, what the entry lacks for an
        exact answer, and whether it agrees with what was journaled. None: not a decision,
        or no policy."""
        from sockgate.journal.store import decision_row, extra_facts
        from sockgate.policy.replay import EXIT_OF_TYPE, REASONS, Evaluator, skip_reason

        policy = self.policy()
        if policy is None or e.type not in EXIT_OF_TYPE or e.outcome is None:
            return None
        row = decision_row(e)   # what replay reads from the journal for it
        why = skip_reason(row.rule, extra_facts(row.extra))
        if why:
            return {"skipped": why}
        with self.lock:
            if self._evaluator is None:
                self._evaluator = Evaluator(policy)
            v = self._evaluator.verdict(row)
        rule = next((r for r in policy.rules if r.name == v.rule), None)
        exit_ = EXIT_OF_TYPE[e.type]
        return {
            "outcome": v.outcome.value, "rule": v.rule, "line": rule.line if rule else None,
            "index": rule.index if rule else None,
            "action": (rule.action if rule else policy.defaults[exit_]).value,
            "mode": (rule.effective_mode(policy.mode) if rule else policy.mode).value,
            "exit": exit_.label, "source": policy.source,
            "approximations": [REASONS[r][1] for r in sorted(v.approx)],
            "agrees": v.outcome.value == e.outcome.value and v.rule == (e.rule or ""),
        }

    # -- rules -------------------------------------------------------------------------

    def rules(self, filt: Filter) -> tuple[list[RuleRow], str]:
        """The policy's rules in file order with their journaled decisions in the window and
        the kernel's hit counters where they can be read; then rules the journal names that
        the policy no longer has. Also says where the counters come from."""
        policy = self.policy()
        with self.lock:
            hits = rule_hits(self.journal, filt)
        kernel, where = self.kernel_hits()
        rows: list[RuleRow] = []
        seen: set[str] = set()
        if policy is not None:
            for r in policy.rules:
                n, last = hits.get(r.name, (0, None))
                rows.append(RuleRow(r.index, r.name, r.line, ", ".join(sorted(x.label for x in r.exits)),
                                    r.action.value, r.effective_mode(policy.mode).value, n, last,
                                    kernel.get(r.name) if kernel is not None else None))
                seen.add(r.name)
            for ex, action in policy.defaults.items():
                name = f"default:{ex.label}"
                n, last = hits.get(name, (0, None))
                rows.append(RuleRow(None, name, None, ex.label, action.value, policy.mode.value, n, last,
                                    kernel.get(name) if kernel is not None else None))
                seen.add(name)
        for name, (n, last) in sorted(hits.items(), key=lambda kv: -kv[1][0]):
            if name is not None and name not in seen:
                rows.append(RuleRow(None, name, None, "", "", "", n, last, None))
        return rows, where

    def kernel_hits(self) -> tuple[dict[str, int] | None, str]:
        """Per-rule kernel hit counters: from --metrics URL (the daemon's sockgate_rule_hits,
        present with metrics_per_rule = true), else from the pinned maps when running as root,
        else none. Returns (name -> hits or None, where they came from)."""
        if self.metrics_url:
            return self._metrics_hits()
        if os.geteuid() == 0:
            try:
                from sockgate.daemon import status

                st = status()
            except SockgateError as e:
                return None, f"kernel counters unavailable: {e}"
            if st.get("loaded"):
                out = {r["name"]: r["hits"] for r in st["rules"]}
                out.update({f"default:{k}": v for k, v in st["defaults"].items()})
                return out, f"kernel counters from the pinned maps ({st['pin_dir']}, policy {st['policy']['source']})"
            return None, "no kernel counters: sockgate is not loaded on this host; counts are journal entries"
        return None, ("no kernel counters: give --metrics URL (with metrics_per_rule = true in the policy) or "
                      "run as root; counts are journal entries")

    def _metrics_hits(self) -> tuple[dict[str, int] | None, str]:
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        try:
            text = httpx.get(self.metrics_url, timeout=2.0).raise_for_status().text
            families = list(text_string_to_metric_families(text))
        except (httpx.HTTPError, ValueError) as e:
            return None, f"kernel counters unavailable: {self.metrics_url}: {e}"
        out: dict[str, int] = {}
        per_rule = False
        for fam in families:
            for s in fam.samples:
                if s.name == "sockgate_rule_hits_total":
                    per_rule = True
                    out[s.labels.get("rule", "")] = int(s.value)
                elif s.name == "sockgate_default_decisions_total" and "exit" in s.labels:
                    name = f"default:{s.labels['exit']}"
                    out[name] = out.get(name, 0) + int(s.value)
        if not per_rule:
            return out, (f"{self.metrics_url} has no per-rule counters (set metrics_per_rule = true in the "
                         "policy); rule counts are journal entries, defaults from the kernel")
        return out, f"kernel counters from {self.metrics_url} (since the last policy load)"

    # -- top and charts ----------------------------------------------------------------

    def top(self, filt: Filter, n: int = 10, fields: Iterable[str] = TOP_FIELDS,
            outcomes: Iterable[str] = TOP_OUTCOMES) -> dict[str, dict[str, list[tuple[Any, int]]]]:
        """outcome -> field -> the n most frequent values (Journal.top, as `journal top`),
        outcomes with no entries left out."""
        out: dict[str, dict[str, list[tuple[Any, int]]]] = {}
        with self.lock:
            for o in outcomes:
                if filt.outcomes and o not in filt.outcomes:
                    continue
                f = _narrow(filt, outcomes=(o,))
                tables = {fld: self.journal.top(fld, f, n) for fld in fields}
                if any(tables.values()):
                    out[o] = tables
        return out

    def chart(self, filt: Filter, by: str = "outcome", step_ns: int | None = None) -> dict[str, Any]:
        """A histogram as uPlot wants it: {"t": [bucket starts in s], "series": {name: [counts
        per second]}, "step": s}; every bucket of the window present (zeros too), so the
        x axis is time, not row order."""
        now = time.time_ns()
        lo = filt.since_ns if filt.since_ns is not None else now - 3600 * NS
        hi = filt.until_ns if filt.until_ns is not None else now
        if hi <= lo:
            raise UsageError("since must be before until")
        step = step_ns or step_for(hi - lo)
        f = _narrow(filt, since_ns=lo, until_ns=hi)
        h = self._from_rollup(f, by, step)
        source = "rollup" if h is not None else "rows"
        if h is None:
            with self.lock:
                h = histogram(self.journal, f, step, by)
        first, last = lo // step, (hi - 1) // step
        names = sorted({str(k) if k is not None else "-" for row in h.values() for k in row})
        series = {name: [0.0] * (last - first + 1) for name in names}
        for b, counts in h.items():
            i = b // step - first
            for k, c in counts.items():
                series[str(k) if k is not None else "-"][i] = c / (step / NS)
        return {"t": [(first + i) * step // NS for i in range(last - first + 1)], "series": series,
                "step": step // NS, "by": by, "source": source}

    def start_rollup(self) -> None:
        """Build the per-minute rollup on a thread of its own, with its own read-only
        connections; charts use it once it is ready. With a cache_dir it starts from the counts
        the last run kept (Rollup.load: only while the journal still holds the rows they
        counted) and reads only the entries after them; otherwise one pass over the journal."""
        from sockgate.journal import Journal

        def build() -> None:
            try:
                j = Journal.open(self.journal_dir, readonly=True)
                path = self._rollup_file(j)
                r = Rollup.load(j, path) if path else Rollup()
                with self._rollup_lock:
                    r.update(j)
                    self._rollup = (j, r)
                    self._save_rollup(j, r)
            except SockgateError:
                pass   # charts keep querying the rows

        threading.Thread(target=build, name="rollup", daemon=True).start()

    def _rollup_file(self, j: Any) -> str | None:
        return os.path.join(self.cache_dir, f"rollup-{j.id}.json") if self.cache_dir else None

    def _save_rollup(self, j: Any, r: Rollup) -> None:
        path = self._rollup_file(j)
        if path:
            try:
                r.save(j, path)
            except SockgateError:
                pass   # a cache: the next start counts again

    def _from_rollup(self, f: Filter, by: str, step: int) -> dict[int, dict[Any, int]] | None:
        """The histogram from the rollup (whole minutes) plus SQL for the partial minutes at
        the window's edges: equal to histogram() over the rows. None when it does not apply."""
        if self._rollup is None or not Rollup.covers(f, by, step):
            return None
        assert f.since_ns is not None and f.until_ns is not None
        lo_m, hi_m = -(-f.since_ns // ROLLUP_NS), f.until_ns // ROLLUP_NS
        if lo_m >= hi_m:
            return None
        with self._rollup_lock:
            j, r = self._rollup
            r.update(j)
            h = r.histogram(lo_m, hi_m, step, by, f.outcomes, f.rules)
        with self.lock:
            for a, b in ((f.since_ns, lo_m * ROLLUP_NS), (hi_m * ROLLUP_NS, f.until_ns)):
                if a < b:
                    for k, counts in histogram(self.journal, _narrow(f, since_ns=a, until_ns=b), step, by).items():
                        row = h.setdefault(k, {})
                        for v, c in counts.items():
                            row[v] = row.get(v, 0) + c
        return h

    # -- integrity ---------------------------------------------------------------------

    def integrity(self, *, reverify: bool = False) -> Integrity:
        """The journal's seal state now, its sockgate records that speak of loss or tampering
        (gap, detach, interrupted, cut), and the last `journal verify` result (run once at
        first use and when asked: verify reads the whole journal)."""
        from sockgate import safedir
        from sockgate.journal.store import VERIFY_KEY_FILE

        with self._verify_lock:
            if self._integrity is None or reverify:
                it = Integrity()
                it.verified_at_ns = time.time_ns()
                try:
                    it.verify = self._verify()
                except SockgateError as e:
                    it.verify_error = str(e)
                self._integrity = it
            it = self._integrity
        with self.lock:
            last_seq, sealed, seal_ns, receivers = 0, 0, None, []
            for r in self.journal.receivers:
                head = r.head()[0]
                s = r.last_seal()
                if s is not None and s[1] >= sealed:
                    sealed, seal_ns = s[1], s[3]
                receivers.append({"name": r.name, "first_seq": r.first_seq, "last_seq": head,
                                  "state": r.meta.get("state", ""), "writer": r.meta.get("writer", ""),
                                  "size": r.size()})
                last_seq = max(last_seq, head)
            records = {t.value: [_record(e) for e in self.journal.tail(20, filter=Filter(types=(t.value,)))][::-1]
                       for t in INTEGRITY_TYPES}
            gaps = list(self.journal.entries(filter=Filter(types=(EntryType.GAP.value,))))
            dropped = sum(_count(e.extra.get("dropped")) for e in gaps)
        it.last_seq, it.sealed_through, it.last_seal_ns = last_seq, sealed, seal_ns
        it.receivers, it.records, it.dropped, it.gaps = receivers, records, dropped, len(gaps)
        local_key = os.path.join(self.journal_dir, VERIFY_KEY_FILE)
        if self.key_file:
            it.key_where = f"{self.key_file} (given with --key)"
        elif os.path.exists(local_key):
            it.key_where = (f"{local_key}: on this host, next to the journal; seals prove nothing against root "
                            "until it is moved off the host (journal init --key-out)")
        else:
            it.key_where = "not on this host (kept off-host, as it should be): seal MACs not checked here"
        it.dir_problem = safedir.problem(self.journal_dir)
        return it

    def _verify(self) -> dict[str, Any]:
        from sockgate.journal.seal import read_verification_key
        from sockgate.journal.verify import verify

        from sockgate.journal.store import VERIFY_KEY_FILE

        key = read_verification_key(self.key_file) if self.key_file else None
        # a console without root may not read the key lying next to the journal: verify without it
        local = os.path.join(self.journal_dir, VERIFY_KEY_FILE)
        use_local = os.access(local, os.R_OK) or not os.path.exists(local)
        rep = verify(self.journal_dir, key, use_local_key=use_local).to_dict()
        if not use_local and key is None:
            rep["warnings"].append(f"{local} is not readable by this user: seal MACs not checked "
                                   "(give --key with a copy of the verification key to check them)")
        return rep

    # -- the fleet ---------------------------------------------------------------------

    def fleet(self) -> list[dict[str, Any]] | None:
        """Per enrolled host, `fleet status`'s row (central.status: last seen, shipped seq, lag,
        policy digest and version, flag, last verify) and `rejected_1h`, its rejections in the
        last hour (central.top by host). None without --fleet-db. The session is read-only
        (PostgreSQL refuses any write); a database that cannot be read is a FleetError."""
        if not self.fleet_db:
            return None
        import psycopg

        from sockgate.errors import FleetError
        from sockgate.fleet import central, store

        try:
            with store.connect(self.fleet_db, readonly=True) as conn:
                rows = central.status(conn)
                hour = Filter.build(outcomes=["rejected"], since="1h")
                rejected = dict(central.top(conn, "host", hour, n=max(1, len(rows))))
        except psycopg.Error as e:
            raise FleetError(f"the fleet database: {str(e).strip()}") from None
        for r in rows:
            r["rejected_1h"] = rejected.get(r["host"], 0)
        return rows

    # -- replay review -----------------------------------------------------------------

    def replay_report(self, filt: Filter) -> Any:
        """`policy replay CANDIDATE` over the window, against the journaled outcomes (or the
        --policy file when given): a policy.replay.Report, or None without a candidate."""
        if not self.candidate_file:
            return None
        from sockgate.policy.parse import load_policy
        from sockgate.policy.replay import DECISION_TYPES, replay

        candidate = load_policy(self.candidate_file)
        f = _narrow(filt, types=DECISION_TYPES)
        with self.lock:
            return replay(self.journal.decisions(filter=f), candidate, None,
                          since_ns=filt.since_ns, until_ns=filt.until_ns)


def _narrow(filt: Filter, **changes: Any) -> Filter:
    from dataclasses import replace

    return replace(filt, **changes)


def _count(v: Any) -> int:
    try:
        return max(0, int(v or 0))
    except (TypeError, ValueError):   # a record written by something else than the daemon
        return 0


def _record(e: Entry) -> dict[str, Any]:
    from sockgate.journal.export import summary

    return {"seq": e.seq, "time": format_time(e.ts_ns), "type": e.type.value, "summary": summary(e)}
