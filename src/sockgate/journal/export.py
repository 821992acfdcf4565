"""Export entries for SIEMs: JSON Lines, CSV, ArcSight CEF, RFC 5424 syslog.

One line per entry in every format, so a stream can be piped into a collector.
Direction matters for CEF/5424 source/destination: a connect goes from the local socket
to the remote one; an accept (and a listen) comes from the remote side to the local one.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any, Callable, Iterable, Iterator

from sockgate import __version__
from sockgate.errors import UsageError
from sockgate.record import LINE_UNSAFE, Entry, EntryType, endpoint, oneline, value_of as _v
from sockgate.record import format_time as format_ts

FORMATS = ("json", "csv", "cef", "rfc5424")
CSV_COLUMNS = ("seq", "time", "ts_ns", "code", "type", "outcome", "source", "host", "rule", "uid",
               "user", "gid", "pid", "program", "family", "local_addr", "local_port", "remote_addr",
               "remote_port", "ident", "extra")
# RFC 5424 private SD-IDs need an IANA enterprise number. 32473 is the number RFC 5612
# reserves for documentation; a site with its own number sets it here.
SD_ENTERPRISE = 32473
FACILITY_AUDIT = 13          # RFC 5424 facility 13: log audit


def type_name(e: Entry) -> str:
    return EntryType(e.type).title


def severity(e: Entry) -> int:
    """0..10 (CEF scale)."""
    t, o = _v(e.type), _v(e.outcome)
    if t in ("gap", "interrupted"):
        return 7
    if t == "cut":
        return 5
    return {"rejected": 7, "failed": 6, "audit-rejected": 5, "allowed": 3}.get(o, 2)


def syslog_severity(e: Entry) -> int:
    """RFC 5424 severity: 4 warning, 5 notice, 6 informational."""
    s = severity(e)
    return 4 if s >= 7 else 5 if s >= 5 else 6


def summary(e: Entry) -> str:
    """One human line: what show prints in the message column and syslog as MSG."""
    if not EntryType(e.type).is_socket:  # SG record
        return f"{type_name(e)}" + ("".join(f" {k}={v}" for k, v in sorted(e.extra.items())))
    who = e.user or (str(e.uid) if e.uid is not None else "?")
    if e.uid is not None and e.user:
        who = f"{e.user}({e.uid})"
    loc = endpoint(e.local_addr, e.local_port) or "-"
    rem = endpoint(e.remote_addr, e.remote_port) or "-"
    arrow = f"{loc} -> {rem}" if EntryType(e.type).outbound else f"{rem} -> {loc}" if rem != "-" else loc
    parts = [type_name(e), _v(e.outcome) or "", who, e.program or "", arrow]
    if e.rule:
        parts.append(f"rule={e.rule}")
    return " ".join(p for p in parts if p)


def _direction(e: Entry) -> tuple[tuple[str | None, int | None], tuple[str | None, int | None], bool]:
    """(source endpoint, destination endpoint, outbound?)"""
    local, remote = (e.local_addr, e.local_port), (e.remote_addr, e.remote_port)
    if EntryType(e.type).outbound:
        return local, remote, True
    return remote, local, False


# -- JSON Lines and CSV -----------------------------------------------------------------------

# json.dumps escapes C0 controls but leaves DEL, C1 (U+0085 NEL ends a line for many
# readers, U+009B is CSI), U+2028/U+2029 (line ends in JavaScript) and the bidi controls
# raw. They can only occur inside JSON strings, where \uXXXX is the same text.
def _json_escape(m: re.Match) -> str:
    return f"\\u{ord(m.group()):04x}"


def dumps(value: Any, **kw: Any) -> str:
    """Compact JSON on one line, UTF-8 kept readable, every record.LINE_UNSAFE character as
    \\uXXXX: JSON Lines that any line reader or terminal takes as one line of text."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), **kw)
    return LINE_UNSAFE.sub(_json_escape, text)


def to_json(e: Entry) -> str:
    d = e.to_dict()
    d["time"] = format_ts(e.ts_ns)
    return dumps(d)


# OWASP "CSV injection": a spreadsheet runs a cell that starts with one of these as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """One CSV cell: numbers as they are; text with a leading ' when a spreadsheet would
    take it for a formula (OWASP), then with control characters and line separators as
    visible escapes (record.oneline), so every entry is one physical line."""
    if value is None:
        return ""
    if not isinstance(value, str):
        return value
    if value.startswith(_FORMULA_START):
        value = "'" + value
    return oneline(value)


def csv_lines(entries: Iterable[Entry], header: bool = True) -> Iterator[str]:
    """A header, then one line per entry. `extra` is a JSON cell (exact: its escapes are
    JSON's); the other text cells go through csv_cell."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(CSV_COLUMNS)
    for e in entries:
        d = e.to_dict()
        d["time"] = format_ts(e.ts_ns)
        d["extra"] = dumps(e.extra, sort_keys=True) if e.extra else ""
        w.writerow([csv_cell(d[c]) for c in CSV_COLUMNS])
        yield buf.getvalue().rstrip("\n")
        buf.seek(0)
        buf.truncate()
    if header and buf.getvalue():
        yield buf.getvalue().rstrip("\n")


# -- CEF --------------------------------------------------------------------------------------

def cef_header_escape(s: str) -> str:
    """Header fields: backslash and pipe are escaped; a line break would end the event;
    other control characters become visible escapes."""
    return oneline(re.sub(r"[\r\n]+", " ", s.replace("\\", "\\\\").replace("|", "\\|")))


def cef_ext_escape(s: str) -> str:
    """Extension values: backslash, equals sign and line breaks are escaped (pipes are not);
    other control characters and line separators become visible escapes."""
    return oneline(s.replace("\\", "\\\\").replace("=", "\\=").replace("\r\n", "\\n")
                   .replace("\n", "\\n").replace("\r", "\\r"))


_CEF_KEY = re.compile(r"[^A-Za-z0-9_]")


def to_cef(e: Entry) -> str:
    (saddr, sport), (daddr, dport), outbound = _direction(e)
    who = "s" if outbound else "d"   # the process acting is on the local side
    ext: list[tuple[str, Any]] = [
        ("rt", e.ts_ns // 1_000_000), ("externalId", e.seq), ("dvchost", e.host or None),
        ("cat", f"{_v(e.code)}-{_v(e.type)}"), ("act", _v(e.outcome)), ("outcome", _v(e.outcome)),
        ("src" if saddr is None or ":" not in saddr else "c6a2", saddr), ("spt", sport),
        ("dst" if daddr is None or ":" not in daddr else "c6a3", daddr), ("dpt", dport),
        (f"{who}user", e.user), (f"{who}uid", e.uid), (f"{who}proc", e.program), (f"{who}pid", e.pid),
        ("deviceDirection", int(outbound) if EntryType(e.type).is_socket else None),
        ("cs1Label", "rule" if e.rule else None), ("cs1", e.rule),
        ("cs2Label", "source"), ("cs2", _v(e.source)),
        ("cs3Label", "ident" if e.ident else None), ("cs3", e.ident),
        ("cn1Label", "gid" if e.gid is not None else None), ("cn1", e.gid),
    ]
    if e.extra:
        ext.append(("msg", " ".join(f"{k}={v}" for k, v in sorted(e.extra.items()))))
    header = "|".join(cef_header_escape(str(x)) for x in (
        "CEF:0", "sockgate", "sockgate", __version__, f"{_v(e.code)}-{_v(e.type)}", type_name(e), severity(e)))
    body = " ".join(f"{k}={cef_ext_escape(str(v))}" for k, v in ext if v is not None and v != "")
    return f"{header}|{body}"


# -- RFC 5424 ---------------------------------------------------------------------------------

def sd_escape(s: str) -> str:
    """PARAM-VALUE: '"', '\\' and ']' must be escaped with a backslash (RFC 5424 6.3.3)."""
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


_SD_NAME_BAD = re.compile(r'[^!-~]|[= \]"]')


def _sd_name(k: str) -> str:
    return (_SD_NAME_BAD.sub("_", k) or "_")[:32]


def _printusascii(s: str, limit: int) -> str:
    s = re.sub(r"[^!-~]", "_", s)[:limit]
    return s or "-"


def rfc5424(pri: int, timestamp: str, host: str, app: str, procid: str, msgid: str,
            elements: Iterable[tuple[str, Iterable[tuple[str, Any]]]], msg: str, *, bom: bool = True) -> str:
    """One RFC 5424 message, the one writer for export and the syslog channel:
    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD-ID NAME="VALUE" ...]... MSG.
    Header fields become PRINTUSASCII without spaces ("-" when empty); parameters whose value
    is None are left out; values and MSG are kept on one line. A UTF-8 MSG starts with the
    BOM (RFC 5424 6.4) unless bom=False."""
    sd = "".join(f"[{sd_id}" + "".join(f' {_sd_name(k)}="{sd_escape(oneline(str(v)))}"'
                                        for k, v in params if v is not None) + "]"
                 for sd_id, params in elements) or "-"
    head = (f"<{pri}>1 {timestamp} {_printusascii(host, 255)} {_printusascii(app, 48)} "
            f"{_printusascii(procid, 128)} {_printusascii(msgid, 32)} {sd}")
    return f"{head} {chr(0xFEFF) if bom else ''}{oneline(msg)}"


def to_rfc5424(e: Entry, app: str = "sockgate") -> str:
    sk = [("seq", e.seq), ("code", _v(e.code)), ("type", _v(e.type)), ("outcome", _v(e.outcome)),
          ("source", _v(e.source)), ("rule", e.rule), ("uid", e.uid), ("user", e.user), ("gid", e.gid),
          ("pid", e.pid), ("program", e.program), ("family", e.family),
          ("localAddr", e.local_addr), ("localPort", e.local_port),
          ("remoteAddr", e.remote_addr), ("remotePort", e.remote_port), ("ident", e.ident)]
    elements = [(f"sk@{SD_ENTERPRISE}", sk)]
    if e.extra:
        elements.append((f"sgx@{SD_ENTERPRISE}", sorted(e.extra.items())))
    return rfc5424(FACILITY_AUDIT * 8 + syslog_severity(e), format_ts(e.ts_ns), e.host, app, "-",
                   f"{_v(e.code)}-{_v(e.type)}", elements, summary(e))


def formatter(fmt: str) -> Callable[[Iterable[Entry]], Iterator[str]]:
    """Lines for a stream of entries in one of FORMATS."""
    if fmt == "csv":
        return csv_lines
    one = {"json": to_json, "cef": to_cef, "rfc5424": to_rfc5424}.get(fmt)
    if one is None:
        raise UsageError(f"unknown export format {fmt!r} (one of: {', '.join(FORMATS)})")
    return lambda entries: (one(e) for e in entries)
