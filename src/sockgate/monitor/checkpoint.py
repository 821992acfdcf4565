"""Off-host checkpoints on a schedule ([monitor.checkpoint]): the journal's newest seal
(sockgate.journal.verify.checkpoint, what `journal checkpoint` prints) as a message that
goes through the alert outbox of the named channels, so it is delivered like an alert:
in order, retried, once per schedule slot across restarts.

Slots are multiples of `every` since the Unix epoch (every = "1h": on the hour, UTC). The
state keeps the last slot taken (meta `checkpoint_slot`, committed with the outbox rows in
one transaction): a restart in the same slot sends nothing, one after a downtime sends one
checkpoint for the current slot, not one per slot missed.

The message is the checkpoint's JSON line exactly as `journal checkpoint` prints it
(format_checkpoint): saved to a file it is the FILE of `journal verify --checkpoint`.
"""

from __future__ import annotations

from typing import Any

from sockgate.monitor.engine import Alert
from sockgate.monitor.model import CheckpointConfig
from sockgate.record import format_time as iso

KIND = "checkpoint"
META_SLOT = "checkpoint_slot"


def slot_of(now_ns: int, every_ns: int) -> int:
    """The schedule slot now falls in: its start, a multiple of every since the epoch."""
    return now_ns // every_ns * every_ns


def due(cfg: CheckpointConfig, now_ns: int, last_slot: int | None) -> int | None:
    """The slot to take a checkpoint for now, or None when this slot's was taken. A last
    slot in the future (the wall clock was set back past it) does not hold sending back
    until the clock catches up again: the current slot is due."""
    slot = slot_of(now_ns, cfg.every_ns)
    if last_slot is not None and slot <= last_slot <= now_ns:
        return None
    return slot


def alert_id(slot_ns: int) -> str:
    """checkpoint/20260101T000000Z: never an alert rule's id (RULE/SEQ, RULE/storm/SEQ,
    RULE/SEQ/repeat/N have digits or "storm" after the first slash)."""
    return f"{KIND}/" + iso(slot_ns)[:19].replace("-", "").replace(":", "") + "Z"


def checkpoint_alert(cfg: CheckpointConfig, cp: dict[str, Any], slot_ns: int, now_ns: int,
                     monitor_host: str) -> Alert:
    """The outbox message for checkpoint cp, shaped like an alert payload so that every
    channel sends it as it sends alerts: `message` is the checkpoint JSON line, `checkpoint`
    the same as an object, `kind` "checkpoint"."""
    from sockgate.journal.verify import format_checkpoint   # the journal loads on first use

    aid = alert_id(slot_ns)
    payload = {
        "id": aid, "alert": KIND, "kind": KIND, "severity": cfg.severity, "message": format_checkpoint(cp),
        "repeat": False, "count": 1, "first_time": iso(now_ns), "last_time": iso(now_ns),
        "first_ts_ns": now_ns, "last_ts_ns": now_ns, "group": {}, "entry": {}, "monitor_host": monitor_host,
        "checkpoint": cp,
    }
    return Alert(aid, KIND, cfg.channels, payload)
