"""IBM i SK values -> sockgate journal Entry. Shared by every input format.

Outcome of each SK entry type (IBM i journals only what happened; sockgate's outcome says
whether the socket operation went through):

  A C I O S D F  allowed   (accept/connect completed, UDP sent/received, TLS up,
                            DHCP address given, mail filtered but delivered)
  P X U          failed    (port unavailable, TLS handshake failed, no DHCP address)
  R              rejected  (mail rejected by a filter: a policy decision, like a reject rule)

Timestamps: IBM i writes local system time without a zone. LocalTime turns them into UTC
using --utc-offset: "local" (this host's zone, the default), "UTC", "+HH:MM", or an IANA
zone name such as "Europe/Berlin" (right across DST changes).
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sockgate.errors import FieldError, UsageError
from sockgate.record import Code, Entry, EntryType, Outcome, Source, addr_key, quote


OUTCOMES = {
    "A": Outcome.ALLOWED, "C": Outcome.ALLOWED, "D": Outcome.ALLOWED, "F": Outcome.ALLOWED,
    "I": Outcome.ALLOWED, "O": Outcome.ALLOWED, "S": Outcome.ALLOWED,
    "P": Outcome.FAILED, "U": Outcome.FAILED, "X": Outcome.FAILED,
    "R": Outcome.REJECTED,
}
TYPES = {code: EntryType(code) for code in OUTCOMES}

# Which type-specific fields are kept, per entry type (others are blank on IBM i anyway).
SECURE_TYPES = frozenset("SX")
FILTER_TYPES = frozenset("FR")
DHCP_TYPES = frozenset("DU")

FAMILIES = {"*IPV4": "ipv4", "*IPV6": "ipv6", "IPV4": "ipv4", "IPV6": "ipv6", "": None}


# ---------------------------------------------------------------- time

_OFFSET = re.compile(r"^([+-])(\d{1,2})(?::?(\d{2}))?$")
_TS = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[-T ](\d{2})[.:](\d{2})[.:](\d{2})(?:[.,](\d{1,12}))?"
    r"(Z|[+-]\d{2}:?\d{2})?$"
)


class LocalTime:
    """IBM i local timestamps -> UTC nanoseconds. One instance per import (it caches)."""

    def __init__(self, spec: str = "local"):
        self.spec = spec
        s = spec.strip()
        self.tz: tzinfo | None
        if s.lower() == "local":
            self.tz = None
            name = time.strftime("%Z") or "local"
            self.describe = f"this host's local time zone ({name})"
        elif s.upper() in ("UTC", "Z", "GMT"):
            self.tz = timezone.utc
            self.describe = "UTC"
        elif m := _OFFSET.match(s):
            sign = -1 if m[1] == "-" else 1
            hh, mm = int(m[2]), int(m[3] or 0)
            if hh > 14 or mm > 59:
                raise UsageError(f"--utc-offset {spec!r}: out of range (-14:00..+14:00)")
            self.tz = timezone(sign * timedelta(hours=hh, minutes=mm))
            self.describe = f"UTC{m[1]}{hh:02d}:{mm:02d}"
        else:
            try:
                self.tz = ZoneInfo(s)
            except (ZoneInfoNotFoundError, ValueError):
                raise UsageError(
                    f"--utc-offset {spec!r}: use local, UTC, +HH:MM / -HH:MM or a zone name "
                    "such as Europe/Berlin"
                ) from None
            self.describe = s
        self._minutes: dict[str, int] = {}
        self._seconds: dict[str, int] = {}

    def _minute(self, key: str, y: int, mo: int, d: int, h: int, mi: int) -> int:
        """Epoch seconds of a local minute (cached: journals are in time order)."""
        dt = datetime(y, mo, d, h, mi)  # ValueError on an impossible date
        if self.tz is not None:
            dt = dt.replace(tzinfo=self.tz)
        try:
            secs = int(dt.timestamp())
        except OSError as e:  # outside the platform's time range
            raise ValueError(str(e)) from None
        if secs < 0:
            raise ValueError("before 1970")
        if len(self._minutes) > 100_000:
            self._minutes.clear()
        self._minutes[key] = secs
        return secs

    def saa(self, ts: str) -> int:
        """'YYYY-MM-DD-HH.MM.SS.ffffff' (the outfile's JOTSTP) -> UTC ns. Raises ValueError."""
        key = ts[:16]
        secs = self._minutes.get(key)
        if secs is None:
            if (len(ts) != 26 or ts[4] != "-" or ts[7] != "-" or ts[10] != "-" or ts[13] != "."
                    or ts[16] != "." or ts[19] != "."):
                raise ValueError(f"{quote(ts)} is not a timestamp YYYY-MM-DD-HH.MM.SS.ffffff")
            parts = (ts[0:4], ts[5:7], ts[8:10], ts[11:13], ts[14:16])
            if not all(p.isascii() and p.isdigit() for p in parts):
                raise ValueError(f"{quote(ts)} is not a timestamp YYYY-MM-DD-HH.MM.SS.ffffff")
            try:
                secs = self._minute(key, *map(int, parts))
            except (ValueError, OverflowError) as e:
                raise ValueError(f"{quote(ts)}: {e}") from None
        sf = ts[17:19] + ts[20:26]
        if len(ts) != 26 or ts[19] != "." or not (sf.isascii() and sf.isdigit()) or sf[0] > "5":
            raise ValueError(f"{quote(ts)} is not a timestamp YYYY-MM-DD-HH.MM.SS.ffffff")
        return (secs + int(sf[:2])) * 1_000_000_000 + int(sf[2:]) * 1000

    def second(self, head: str) -> int:
        """'YYYY-MM-DD-HH.MM.SS' -> UTC ns of that second (cached: the parser's fast path)."""
        ns = self._seconds.get(head)
        if ns is None:
            ns = self.saa(head + ".000000")
            if len(self._seconds) > 100_000:
                self._seconds.clear()
            self._seconds[head] = ns
        return ns

    def text(self, ts: str) -> int:
        """SAA, ISO ('YYYY-MM-DD HH:MM:SS.ffffff', 'T' too) with 0-12 fraction digits and an
        optional zone suffix (which then wins over --utc-offset) -> UTC ns."""
        ts = ts.strip()
        if len(ts) == 26 and ts[10] == "-":
            return self.saa(ts)
        m = _TS.match(ts)
        if not m:
            raise ValueError(f"{quote(ts)} is not a timestamp (YYYY-MM-DD-HH.MM.SS.ffffff or ISO 8601)")
        y, mo, d, h, mi, s = (int(m[i]) for i in range(1, 7))
        frac = int((m[7] or "").ljust(9, "0")[:9])
        if s > 59:
            raise ValueError(f"{quote(ts)}: second out of range")
        try:
            if m[8]:
                z = m[8]
                if z == "Z":
                    tz = timezone.utc
                else:
                    sign = -1 if z[0] == "-" else 1
                    zz = z[1:].replace(":", "")
                    tz = timezone(sign * timedelta(hours=int(zz[:2]), minutes=int(zz[2:])))
                secs = int(datetime(y, mo, d, h, mi, tzinfo=tz).timestamp())
                if secs < 0:
                    raise ValueError("before 1970")
            else:
                secs = self._minutes.get(ts[:16]) or self._minute(ts[:16], y, mo, d, h, mi)
        except (ValueError, OverflowError) as e:
            raise ValueError(f"{quote(ts)}: {e}") from None
        return (secs + s) * 1_000_000_000 + frac


# ---------------------------------------------------------------- field values

_ADDR_OK = re.compile(r"[0-9A-Za-z:.%_-]{1,46}").fullmatch   # Char(46), like the field


def address(text: str, field: str) -> str | None:
    """Textual IPv4/IPv6 address from a Char field; blank -> None. It must be an address the
    journal can index (record.addr_key): "999.999.999.999" would be journaled but no
    --remote filter, `top` or alert rule would ever see it."""
    if not text:
        return None
    if not _ADDR_OK(text) or addr_key(text) is None:
        raise FieldError(field, f"{quote(text)} is not an IP address")
    return text


def port(text: str, field: str) -> int | None:
    """Char(5) port (IBM keeps it as text): blank -> None."""
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise FieldError(field, f"{quote(text)} is not a port number")
    p = int(text)
    if p > 65535:
        raise FieldError(field, f"{p} is not a port number (0-65535)")
    return p


def family(text: str, local: str | None, remote: str | None) -> str | None:
    fam = FAMILIES.get(text.upper())
    if fam is None and text:
        raise FieldError("address_family", f"{quote(text)} is not *IPV4 or *IPV6")
    if fam is None:
        a = remote or local
        if a:
            fam = "ipv6" if ":" in a else "ipv4"
    return fam


def job_number(text: str, field: str = "JONBR") -> str:
    """Job numbers are six digits on IBM i (zoned(6,0)); CSV copies may drop leading zeros."""
    if not (text.isascii() and text.isdigit()) or len(text) > 6:
        raise FieldError(field, f"{quote(text)} is not a job number (6 digits)")
    return text.zfill(6)


SEQ_DIGITS = 20   # JOSEQN is Char(20) in *TYPE5 (Zoned(10,0) in *TYPE4)
BIN4 = range(-2 ** 31, 2 ** 31)   # Binary(5): a 4-byte signed integer


def sequence(text: str, field: str = "JOSEQN") -> int:
    t = text.strip()
    if not (t.isascii() and t.isdigit()) or len(t) > SEQ_DIGITS:
        raise FieldError(field, f"{quote(text)} is not a sequence number (at most {SEQ_DIGITS} digits)")
    seq = int(t)
    if seq >= 2 ** 63:   # it goes into extra, a 64-bit SQLite integer
        raise FieldError(field, f"{quote(text)} is out of range")
    return seq


def binary4(text: str, field: str) -> int:
    """A Binary(5) field written as text (socket descriptor)."""
    t = text.strip()
    if not (t.lstrip("-").isascii() and t.lstrip("-").isdigit()) or len(t) > 11 or int(t) not in BIN4:
        raise FieldError(field, f"{quote(text)} is not a number (a 4-byte integer)")
    return int(t)


def bounded(text: str, field: str, limit: int) -> str:
    """A text field of an IBM i text export, no longer than its outfile field holds."""
    if len(text) > limit:
        raise FieldError(field, f"{len(text)} characters, the SK layout allows {limit}")
    return text


def entry_type(text: str, field: str = "entry_type") -> EntryType:
    t = TYPES.get(text)
    if t is None:
        raise FieldError(field, f"{quote(text)} is not an SK entry type (A C D F I O P R S U X)")
    return t


def qualified(lib: str, obj: str) -> str | None:
    if not obj:
        return None
    return f"{lib}/{obj}" if lib else obj


# ---------------------------------------------------------------- the entry

def make_entry(
    et: EntryType, ts_ns: int, ts_text: str, system: str, seq: int, user: str,
    job_name: str, job_user: str, job_nbr: str, pgm_lib: str, pgm: str, receiver: str | None,
    fam: str | None, laddr: str | None, lport: int | None, raddr: str | None,
    rport: int | None, more: dict,
) -> Entry:
    """One SK entry. `more` holds the type-specific extras already chosen by the reader
    (socket_descriptor, secure_*, filter_*, mac_address, host_name, ...); it becomes `extra`.
    The job's parts and the program's parts are not repeated in `extra`: `job` is
    NUMBER/USER/NAME and `program` LIB/PGM (IBM i names cannot contain '/')."""
    if not system:
        raise FieldError("system name", "blank (the entry's identity is SYSTEM:SEQUENCE)")
    code = et.value
    more["ibmi_seq"] = seq
    more["ibmi_timestamp"] = ts_text
    if receiver:
        more["ibmi_receiver"] = receiver
    if job_name:
        more["job"] = f"{job_nbr}/{job_user}/{job_name}"
    return Entry(
        code=Code.SOCKET, type=et, ts_ns=ts_ns, source=Source.IBMI, host=system,
        outcome=OUTCOMES[code], user=user or None, program=qualified(pgm_lib, pgm),
        family=fam, local_addr=laddr, local_port=lport, remote_addr=raddr, remote_port=rport,
        extra=more, ident=f"{system}:{seq}",
    )
