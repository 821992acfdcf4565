"""Delivery channels. A channel turns one alert payload (a JSON-able dict, see
sockgate.monitor.engine.Alert.payload) into one message on the wire.

send() returns on success; raises ChannelError when the message should be retried later
(server down, timeout, 5xx) and PermanentChannelError when retrying cannot help (the
receiver rejected this message itself, e.g. HTTP 400): the outbox keeps such a message as
dead, logs it, and moves on, so one poison message does not block a queue. Any other
exception (a message the channel cannot even build) is dead at once too. Values from
entries reach a channel as inert single lines (record.oneline) for every header, line
and environment variable; each channel also escapes its own markup (Slack, Teams).

The registry: channel type NAME is the class `CHANNEL` of module channels/NAME.py, which
also names its options (`OPTIONS`, `REQUIRED`); TYPES lists them. Modules load on first
use (webhook pulls in httpx).
"""

from __future__ import annotations

import importlib
import ssl
from typing import Any, Callable

from sockgate.errors import PermanentChannelError
from sockgate.monitor.render import group_text
from sockgate.record import LINE_UNSAFE, NS, oneline, parse_duration

TYPES = ("syslog", "email", "webhook", "command")
__all__ = ["TYPES", "Channel", "PermanentChannelError", "channel_class", "make_channel", "validate_channel"]

Check = Callable[[Any], str | None]   # returns an error message or None


def _unsafe(s: str, nul_only: bool = False) -> str | None:
    """Why a configured string cannot be sent as it is: a NUL ends a C string (argv, the
    environment); a line break or control character would split a header or a line."""
    if "\x00" in s:
        return "must not contain a NUL character"
    if not nul_only and LINE_UNSAFE.search(s):
        return f"must not contain a line break or control character (U+{ord(LINE_UNSAFE.search(s).group()):04X})"
    return None


def _str(v: Any) -> str | None:
    return _unsafe(v) if isinstance(v, str) and v else "expected a non-empty string"


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "expected true or false"


def _dur_upto(limit: str) -> Check:
    def check(v: Any) -> str | None:
        try:
            ns = parse_duration(v)
        except ValueError as e:
            return str(e)
        if ns <= 0:
            return "must be greater than zero"
        return f"at most {limit}" if ns > parse_duration(limit) else None
    return check


def _port(v: Any) -> str | None:
    return None if isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536 else "expected a port 1-65535"


def _strlist(v: Any, nul_only: bool = False) -> str | None:
    ok = isinstance(v, list) and v and all(isinstance(x, str) and x for x in v)
    if not ok:
        return "expected a non-empty list of strings"
    return next((f"{x!r}: {why}" for x in v if (why := _unsafe(x, nul_only))), None)


def _argv(v: Any) -> str | None:
    return _strlist(v, nul_only=True)


def _strtable(v: Any, nul_only: bool = False) -> str | None:
    if not (isinstance(v, dict) and all(isinstance(x, str) for x in v.values())):
        return "expected a table of name = \"string\""
    return next((f"{k!r}: {why}" for k, x in v.items() if (why := _unsafe(k, nul_only) or _unsafe(x, nul_only))),
                None)


def _env(v: Any) -> str | None:
    return _strtable(v, nul_only=True) or next(
        (f"{k!r}: a variable name must not be empty or contain '='" for k in v if not k or "=" in k), None)


def _choice(*choices: str) -> Check:
    return lambda v: None if v in choices else f"one of {', '.join(choices)} (got {v!r})"


# Bounded so that a hung receiver cannot stall the monitor for ever and a retry time fits
# SQLite's 64-bit integers.
COMMON: dict[str, Check] = {"retry_initial": _dur_upto("1d"), "retry_max": _dur_upto("1d"), "timeout": _dur_upto("1h")}
TLS: dict[str, Check] = {"ca_file": _str, "verify": _bool, "client_cert": _str, "client_key": _str}


def channel_class(ctype: str) -> type["Channel"]:
    if ctype not in TYPES:
        raise ValueError(f"unknown channel type {ctype!r}")
    return importlib.import_module(f"sockgate.monitor.channels.{ctype}").CHANNEL


def validate_channel(ctype: str, opts: dict[str, Any]) -> list[tuple[str | None, str]]:
    """Problems with a channel's options as (key or None, message)."""
    return channel_class(ctype).validate(opts)


def make_channel(name: str, ctype: str, opts: dict[str, Any]) -> "Channel":
    return channel_class(ctype)(name, opts)


class Channel:
    """Base: options common to every channel. A channel type adds its own OPTIONS
    (name -> check), the REQUIRED ones, and checks across options in `check`."""

    type = ""
    OPTIONS: dict[str, Check] = {}
    REQUIRED: frozenset[str] = frozenset()

    @classmethod
    def validate(cls, opts: dict[str, Any]) -> list[tuple[str | None, str]]:
        checks = {**cls.OPTIONS, **COMMON}
        out: list[tuple[str | None, str]] = []
        for k in sorted(cls.REQUIRED - set(opts)):
            out.append((None, f"{k!r} is required for a {cls.type} channel"))
        for k, v in opts.items():
            chk = checks.get(k)
            if chk is None:
                out.append((k, f"unknown option {k!r} for a {cls.type} channel (known: type, {', '.join(sorted(checks))})"))
                continue
            msg = chk(v)
            if msg:
                out.append((k, f"{k}: {msg}"))
        out += cls.check(opts)
        if ("client_key" in opts) and ("client_cert" not in opts):
            out.append(("client_key", "client_key needs client_cert"))
        return out

    @classmethod
    def check(cls, opts: dict[str, Any]) -> list[tuple[str | None, str]]:
        return []

    def __init__(self, name: str, opts: dict[str, Any]):
        self.name = name
        self.opts = opts
        self.timeout = parse_duration(opts.get("timeout", "10s")) / NS
        self.retry_initial_ns = parse_duration(opts.get("retry_initial", "2s"))
        self.retry_max_ns = parse_duration(opts.get("retry_max", "5m"))

    def peer(self) -> tuple[str, int, str] | None:
        """(host, port, "tcp" | "udp") this channel connects to, None if it makes no
        connection (the lock-out guard keeps it reachable)."""
        return None

    def backoff_ns(self, attempts: int) -> int:
        """Delay before the next try after `attempts` failures: doubling, capped."""
        return min(self.retry_max_ns, self.retry_initial_ns * (2 ** min(attempts - 1, 40)))

    def send(self, alert: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        pass

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.opts.get("ca_file"))
        if self.opts.get("verify", True) is False:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.opts.get("client_cert"):
            ctx.load_cert_chain(self.opts["client_cert"], self.opts.get("client_key"))
        return ctx


def summary_lines(alert: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs describing an alert, for human-facing channels."""
    e = alert.get("entry") or {}
    rows = [("Alert", alert["alert"]), ("Severity", alert["severity"]), ("Kind", alert["kind"])]
    if "checkpoint" in alert:   # monitor.checkpoint: the seal's fields (the message is its JSON)
        rows.append(("Taken", alert["last_time"]))
        rows += [(f"checkpoint.{k}", str(v)) for k, v in alert["checkpoint"].items()]
    else:
        rows += [("Count", str(alert["count"])), ("First", alert["first_time"]), ("Last", alert["last_time"])]
    if alert.get("group"):
        rows.append(("Group", group_text(alert["group"])))
    for k in ("seq", "code", "type", "outcome", "rule", "user", "uid", "program", "pid", "local_addr",
              "local_port", "remote_addr", "remote_port", "host", "source"):
        if e.get(k) is not None:
            rows.append((k, str(e[k])))
    for k, v in sorted((e.get("extra") or {}).items()):
        rows.append((f"extra.{k}", str(v)))
    rows.append(("Id", alert["id"]))
    # entry values are whatever a kernel path or an import said: one inert line each
    return [(oneline(k), oneline(v)) for k, v in rows]
