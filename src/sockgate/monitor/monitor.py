"""The running monitor: journal → engine → state (one transaction per batch) → channels.

    m = Monitor.open(rules_file, journal_dir, state_dir)
    m.run(stop_event)            # follow the journal until stop is set
    m.step()                     # process what is new, deliver what can be delivered

The entries come from a source: `JournalSource` (this host's journal; the cursor is the last
seq) or `sockgate.fleet.monitor.FleetSource` (every host's entries in PostgreSQL; the cursor
is the last seq per host). The state is a `StateBase`: SQLite here, PostgreSQL for the fleet.
One Monitor runs both.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from sockgate.errors import ChannelError, JournalError, RulesError, RulesErrors
from sockgate.record import MONITOR_STATE_DIR, Entry
from sockgate.monitor import checkpoint as ckpt
from sockgate.monitor.channels import Channel, PermanentChannelError, make_channel
from sockgate.monitor.engine import Alert, Engine
from sockgate.monitor.model import RuleSet
from sockgate.monitor.parse import load_rules
from sockgate.monitor.state import State, StateBase

log = logging.getLogger("sockgate.monitor")

DEFAULT_STATE = MONITOR_STATE_DIR


class JournalSource:
    """This host's journal as the monitor's entries. The cursor is the last seq processed
    (its text in the state); the journal may not exist yet (the monitor waits for it)."""

    checkpoints = True   # the journal's seals can be sent off the host (monitor.checkpoint)
    beginning = "0"      # the cursor before the first entry

    def __init__(self, journal_dir: str | os.PathLike):
        self.journal_dir = Path(journal_dir)
        self._journal: Any = None
        self._warned = False

    def __str__(self) -> str:
        return str(self.journal_dir)

    def open(self, state: StateBase) -> bool:
        """Ready to read? Refuses a journal that is not the one the state follows."""
        if self._journal is None:
            from sockgate.journal import Journal
            try:
                self._journal = Journal.open(self.journal_dir, create=False, readonly=True)
            except JournalError as e:
                if not self._warned:
                    log.warning("monitor: waiting for the journal: %s", e)
                    self._warned = True
                return False
            self._warned = False
            jid = state.get("journal_id")
            if jid is not None and jid != self._journal.id:
                self.close()
                raise JournalError(f"{self.journal_dir}: this is another journal than the one the monitor state "
                                   f"follows ({jid}); use another --state directory")
        return True

    def meta(self) -> dict[str, str]:
        return {"journal_id": self._journal.id}

    def head(self) -> str:
        return str(self._journal.last_seq)

    def upto(self, cursor: str) -> Iterator[Entry]:
        """Every entry up to the cursor (to learn first_seen baselines)."""
        upto = int(cursor)
        for e in self._journal.entries(0):
            if e.seq > upto:
                break
            yield e

    def batches(self, cursor: str | None, n: int) -> Iterator[tuple[list[Entry], str]]:
        """Batches of at most n new entries after the cursor, each with the cursor after it."""
        it = self._journal.entries(int(cursor or 0))
        while True:
            batch = list(islice(it, n))
            if not batch:
                return
            yield batch, str(batch[-1].seq)

    def wait(self, stop: threading.Event, timeout: float) -> None:
        stop.wait(timeout)

    def reset(self) -> None:
        """After a read error: reopen on the next step."""
        self.close()

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None


class Monitor:
    def __init__(self, ruleset: RuleSet, journal_dir: "str | os.PathLike | Any", state: StateBase,
                 channels: dict[str, Channel], *, clock: Callable[[], int] = time.time_ns,
                 batch: int = 2000, max_per_step: int = 100_000, monitor_host: str | None = None):
        self.ruleset = ruleset
        # a journal directory (this host) or an entry source (the fleet's FleetSource)
        self.source = journal_dir if hasattr(journal_dir, "batches") else JournalSource(journal_dir)
        self.journal_dir = getattr(self.source, "journal_dir", None)
        self.state = state
        self.channels = channels
        self.clock = clock
        self.batch = batch
        self.max_per_step = max_per_step
        self.engine = Engine(ruleset, monitor_host or socket.gethostname())
        self._checkpoint_retry = 0   # wall clock ns: no checkpoint to take before then
        self._relearn = state.load(self.engine)
        self._warned: set[str] = set()
        self.raised = 0          # alerts raised since open
        self.delivered = 0       # outbox rows delivered since open
        self.more = False        # the last step stopped at max_per_step: step again at once

    @classmethod
    def open(cls, rules_file: str | os.PathLike, journal_dir: "str | os.PathLike | Any",
             state_dir: "str | os.PathLike | StateBase" = DEFAULT_STATE, **kw: Any) -> "Monitor":
        """Load and validate the rules (RulesErrors on a bad file), open the state (a state
        directory, or an opened StateBase: the fleet's PgState)."""
        ruleset = load_rules(str(rules_file))
        channels = build_channels(ruleset)
        try:
            state = state_dir if isinstance(state_dir, StateBase) else State.open(state_dir)
        except BaseException:
            for ch in channels.values():
                ch.close()
            raise
        try:
            return cls(ruleset, journal_dir, state, channels, **kw)
        except BaseException:
            state.close()
            raise

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()
        self.source.close()
        self.state.close()

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ entries

    def _learn(self, upto: str, names: list[str]) -> None:
        """Learn first_seen baselines from the entries up to the cursor `upto`, silently."""
        if not names:
            return
        log.info("monitor: learning first_seen baseline for %s from %s up to cursor %s", ", ".join(names),
                 self.source, upto)
        eng = self.engine
        eng.learning = True
        try:
            for e in self.source.upto(upto):
                eng.process(e, [])
        finally:
            eng.learning = False

    def _start(self) -> None:
        cursor = self.state.get("cursor")
        fresh = cursor is None
        if fresh:
            cursor = self.source.head() if self.ruleset.start == "end" else self.source.beginning
            # start = "end": what is journaled already is the baseline, not news.
            relearn = [r.name for r in self.engine.rules if r.kind == "first_seen"]
        else:
            relearn = self._relearn
        self._learn(cursor, relearn)
        self.state.commit(self.engine, [], cursor=cursor, baselined=relearn, meta=self.source.meta())
        self._relearn = []
        if fresh:
            log.info("monitor: new state, starting after %s (start = %s)", _brief(cursor), self.ruleset.start)

    # ------------------------------------------------------------------ the loop

    def step(self) -> int:
        """Process the journal entries that are new, close suppression windows that ended,
        deliver what can be delivered. Returns the number of alerts raised."""
        raised = 0
        if self.source.open(self.state):
            if self.state.get("cursor") is None or self._relearn:
                self._start()
            raised += self._process()
        out: list[Alert] = []
        now = self.clock()
        self.engine.tick(now, out)
        self.engine.prune(self.engine.latest_ts)   # windows are in journal time
        if out or self.engine.dirty_windows or self.engine.dirty_storms:
            self.state.commit(self.engine, out, now_ns=now)
            raised += len(out)
        self.raised += raised
        if self.ruleset.checkpoint is not None and self.source.checkpoints:
            self._checkpoint(now)
        self.deliver()
        return raised

    def _checkpoint(self, now: int) -> None:
        """Queue the journal's checkpoint for this schedule slot, unless it was queued; the
        slot is recorded in the transaction that fills the outbox (see monitor.checkpoint)."""
        cfg = self.ruleset.checkpoint
        assert cfg is not None
        last = self.state.get(ckpt.META_SLOT)
        slot = ckpt.due(cfg, now, int(last) if last is not None else None)
        if slot is None or now < self._checkpoint_retry:
            return
        from sockgate.journal.verify import checkpoint
        try:
            cp = checkpoint(self.journal_dir)
        except JournalError as e:
            # no journal yet, nothing sealed yet: try again in a minute (or the next slot)
            self._checkpoint_retry = now + min(cfg.every_ns, 60 * 1_000_000_000)
            if "checkpoint" not in self._warned:
                log.warning("monitor: no checkpoint to send yet: %s", e)
                self._warned.add("checkpoint")
            return
        self._warned.discard("checkpoint")
        a = ckpt.checkpoint_alert(cfg, cp, slot, now, self.engine.monitor_host)
        self.state.commit(self.engine, [a], now_ns=now, meta={ckpt.META_SLOT: str(slot)})
        log.info("checkpoint %s: seal %d at seq %d -> %s", a.id, cp["epoch"], cp["seq"], ", ".join(a.channels))

    def _process(self) -> int:
        raised = 0
        done = 0
        for batch, cursor in self.source.batches(self.state.get("cursor"), self.batch):
            out: list[Alert] = []
            for e in batch:
                self.engine.process(e, out)
            self.state.commit(self.engine, out, cursor=cursor, now_ns=self.clock())
            raised += len(out)
            done += len(batch)
            for a in out:
                log.info("alert %s [%s] %s", a.id, a.payload["severity"], a.payload["message"])
            if done >= self.max_per_step:
                break
        self.more = done >= self.max_per_step
        return raised

    def deliver(self) -> int:
        """Drain each channel's outbox in order; stop a channel at its first failure (its
        next try waits for the backoff). Returns the number of deliveries."""
        total = 0
        for name in self._queued_channels():
            ch = self.channels.get(name)
            if ch is None:
                if name not in self._warned:
                    log.warning("monitor: channel %r is no longer configured; its queued alerts are kept", name)
                    self._warned.add(name)
                continue
            total += self._drain(name, ch)
        self.delivered += total
        return total

    def _queued_channels(self) -> list[str]:
        return self.state.channels()

    def _drain(self, name: str, ch: Channel) -> int:
        n = 0
        while True:
            now = self.clock()
            if self.state.head_blocked(name, now):
                return n
            rows = self.state.due(name, now)
            if not rows:
                return n
            for row_id, alert_id, payload, attempts in rows:
                try:
                    ch.send(payload)
                except PermanentChannelError as e:
                    log.error("monitor: channel %s refused alert %s for good, kept as dead: %s", name, alert_id, e)
                    self.state.kill(row_id, str(e), now)
                    continue
                except ChannelError as e:
                    attempts += 1
                    delay = ch.backoff_ns(attempts)
                    self.state.failed(row_id, attempts, now + delay, str(e))
                    lvl = logging.WARNING if attempts in (1, 5) or attempts % 20 == 0 else logging.DEBUG
                    log.log(lvl, "monitor: channel %s: %s (attempt %d, retry in %.1fs)", name, e, attempts, delay / 1e9)
                    return n
                except Exception as e:  # noqa: BLE001 - a bug in a channel must not stop the monitor
                    # Channels turn every transport failure into ChannelError; anything else
                    # (a payload it cannot format) fails the same way on every try, and
                    # retrying it would hold every later alert of the channel behind it.
                    log.exception("monitor: channel %s cannot send alert %s, kept as dead", name, alert_id)
                    self.state.kill(row_id, f"{type(e).__name__}: {e}", now)
                    continue
                self.state.delivered(row_id)
                n += 1
                if attempts:
                    log.info("monitor: channel %s is back: delivered %s after %d failed attempts", name, alert_id, attempts)

    def run(self, stop: threading.Event, poll_interval: float = 0.5) -> None:
        """Follow the entries until stop is set: step, then wait for new entries (the
        fleet source wakes on NOTIFY) or poll_interval (timers: windows, retries)."""
        while not stop.is_set():
            self.more = False
            try:
                self.step()
            except JournalError as e:
                log.error("monitor: %s", e)
                self.source.reset()
            if not self.more:
                self.source.wait(stop, poll_interval)


def _brief(cursor: str) -> str:
    return f"journal seq {cursor}" if cursor.isdigit() else f"cursor {cursor[:200]}"


def build_channels(ruleset: RuleSet) -> dict[str, Channel]:
    """The channels of a rule set; a channel that cannot be set up (unreadable CA file or
    client certificate) is a RulesErrors at its [channel.NAME] line, like any file error."""
    channels: dict[str, Channel] = {}
    errors: list[RulesError] = []
    for n, c in ruleset.channels.items():
        try:
            channels[n] = make_channel(n, c.type, c.options)
        except (OSError, ssl.SSLError, ValueError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            files = ", ".join(f"{k} = {c.options[k]}" for k in ("ca_file", "client_cert", "client_key")
                              if k in c.options)
            errors.append(RulesError(f"channel {n!r}: cannot set up TLS" + (f" ({files})" if files else "")
                                     + f": {why}", ruleset.path, c.line))
    if errors:
        for ch in channels.values():
            ch.close()
        raise RulesErrors(errors)
    return channels


def replay(ruleset: RuleSet, entries: Iterable[Entry], *, since_ns: int | None = None,
           monitor_host: str | None = None) -> list[Alert]:
    """What would fire over these entries (--test): a fresh in-memory engine; entries
    before since_ns only teach first_seen baselines. Nothing is sent or stored."""
    eng = Engine(ruleset, monitor_host or socket.gethostname())
    out: list[Alert] = []
    for e in entries:
        if since_ns is not None and e.ts_ns < since_ns:
            eng.learning = True
            eng.process(e, out)
            eng.learning = False
            continue
        eng.process(e, out)
    eng.flush(out)
    return out
