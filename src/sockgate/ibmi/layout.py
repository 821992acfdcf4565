"""Every field offset sockgate reads from an IBM i SK outfile, in ONE place.

Offsets are 1-based byte positions, exactly as IBM's layout tables and `DSPFFD` print them
("From" column / "Buffer position"), so an administrator can compare this file line by line
with `DSPFFD FILE(QSYS/QASYSKJ5)` (or QADSPJR5 / QASYSKJ4) and fix a number here; nothing else
in the package hard-codes an offset.

Each field carries an evidence tag (how sure we are of its place):
  V  verified in an IBM source      V2 verified in a secondary source
  D  derived arithmetically          I  inferred - check with DSPFFD before trusting

Kinds: char (EBCDIC text, blank padded), zoned (zoned decimal digits), bin2 / bin4 (big-endian
signed integers, IBM "Binary(4)" / "Binary(5)"), hex (raw bytes), timestamp (SAA text
YYYY-MM-DD-HH.MM.SS.ffffff).

The same tables give the column order of a CPYTOIMPF copy of the outfile (format `csv`):
one column per field, heading fields first, then the SK fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class Field:
    name: str      # DDS name for heading fields; sockgate's key for SK fields (DDS names unknown)
    offset: int    # 1-based byte position in the record
    length: int    # bytes
    kind: str      # char | zoned | bin2 | bin4 | hex | timestamp
    tag: str       # evidence: V, V2, D, I
    text: str = ""

    @property
    def start(self) -> int:
        """0-based start, for slicing."""
        return self.offset - 1

    @property
    def end(self) -> int:
        return self.offset - 1 + self.length


F = Field

# --- QJORDJE5: heading of a DSPJRN OUTFILFMT(*TYPE5) record (QSYS/QADSPJR5) ---
# Offsets up to JOLIB are [V]; the order of later fields is [V2] (iSphere), their offsets [I].
HEADING5: tuple[Field, ...] = (
    F("JOENTL", 1, 5, "zoned", "V", "Length of entry"),
    F("JOSEQN", 6, 20, "char", "V", "Sequence number"),
    F("JOCODE", 26, 1, "char", "V", "Journal code (T)"),
    F("JOENTT", 27, 2, "char", "V", "Entry type (SK)"),
    F("JOTSTP", 29, 26, "timestamp", "V", "Timestamp, local system time"),
    F("JOJOB", 55, 10, "char", "V", "Job name"),
    F("JOUSER", 65, 10, "char", "V", "Job user name"),
    F("JONBR", 75, 6, "zoned", "V", "Job number"),
    F("JOPGM", 81, 10, "char", "V", "Program name"),
    F("JOPGMLIB", 91, 10, "char", "V", "Program library"),
    F("JOPGMDEV", 101, 10, "char", "V", "Program library ASP device"),
    F("JOPGMASP", 111, 5, "zoned", "V", "Program library ASP number"),
    F("JOOBJ", 116, 10, "char", "V", "Object name"),
    F("JOLIB", 126, 10, "char", "V", "Object library"),
    F("JOMBR", 136, 10, "char", "I", "Member"),
    F("JOCTRR", 146, 20, "char", "I", "Count/RRN"),
    F("JOFLAG", 166, 1, "char", "I", "Flag"),
    F("JOCCID", 167, 20, "char", "I", "Commit cycle id"),
    F("JOUSPF", 187, 10, "char", "I", "Current (effective) user profile"),
    F("JOSYNM", 197, 8, "char", "I", "System name"),
    F("JOJID", 205, 10, "char", "I", "Journal identifier"),
    F("JORCST", 215, 1, "char", "I", "Referential constraint"),
    F("JOTGR", 216, 1, "char", "I", "Trigger"),
    F("JOINCDAT", 217, 1, "char", "I", "Incomplete data"),
    F("JOIGNAPY", 218, 1, "char", "I", "Ignored by APYJRNCHG"),
    F("JOMINESD", 219, 1, "char", "I", "Minimized entry-specific data"),
    F("JOOBJIND", 220, 1, "char", "I", "Object indicator"),
    F("JOSYSSEQ", 221, 20, "char", "I", "System sequence number"),
    F("JORCV", 241, 10, "char", "I", "Receiver"),
    F("JORCVLIB", 251, 10, "char", "I", "Receiver library"),
    F("JORCVDEV", 261, 10, "char", "I", "Receiver ASP device"),
    F("JORCVASP", 271, 5, "zoned", "I", "Receiver ASP number"),
    F("JOARM", 276, 5, "zoned", "I", "Arm number"),
    F("JOTHD", 281, 8, "hex", "I", "Thread id"),
    F("JOTHDX", 289, 16, "char", "I", "Thread id, hex text"),
    F("JOADF", 305, 1, "char", "I", "Address family of JORADR"),
    F("JORPORT", 306, 5, "zoned", "I", "Remote port of the job's requester"),
    F("JORADR", 311, 46, "char", "I", "Remote address of the job's requester"),
    F("JOLUW", 357, 39, "char", "I", "Logical unit of work"),
    F("JOXID", 396, 140, "char", "I", "XA transaction id"),
    F("JOOBJTYP", 536, 7, "char", "I", "Object type"),
    F("JOFILTYP", 543, 1, "char", "I", "File type"),
    F("JOCMTLVL", 544, 7, "char", "I", "Commit level"),
    F("JORES", 551, 9, "char", "I", "Reserved (split with JONVI unknown)"),
    F("JONVI", 560, 50, "char", "I", "Null value indicators"),
)

# --- QJORDJE4: heading of *TYPE4 (QSYS/QADSPJR4). Up to JOOBJ [V]; the rest [I]. ---
HEADING4: tuple[Field, ...] = (
    F("JOENTL", 1, 5, "zoned", "V", "Length of entry"),
    F("JOSEQN", 6, 10, "zoned", "V", "Sequence number"),
    F("JOCODE", 16, 1, "char", "V", "Journal code (T)"),
    F("JOENTT", 17, 2, "char", "V", "Entry type (SK)"),
    F("JOTSTP", 19, 26, "timestamp", "V", "Timestamp, local system time"),
    F("JOJOB", 45, 10, "char", "V", "Job name"),
    F("JOUSER", 55, 10, "char", "V", "Job user name"),
    F("JONBR", 65, 6, "zoned", "V", "Job number"),
    F("JOPGM", 71, 10, "char", "V", "Program name"),
    F("JOOBJ", 81, 10, "char", "V", "Object name"),
    F("JOLIB", 91, 10, "char", "I", "Object library"),
    F("JOMBR", 101, 10, "char", "I", "Member"),
    F("JOCTRR", 111, 10, "zoned", "I", "Count/RRN"),
    F("JOFLAG", 121, 1, "char", "I", "Flag"),
    F("JOCCID", 122, 10, "zoned", "I", "Commit cycle id"),
    F("JOUSPF", 132, 10, "char", "I", "Current (effective) user profile"),
    F("JOSYNM", 142, 8, "char", "I", "System name"),
    F("JOJID", 150, 10, "char", "I", "Journal identifier"),
    F("JORCST", 160, 1, "char", "I", "Referential constraint"),
    F("JOTGR", 161, 1, "char", "I", "Trigger"),
    F("JOINCDAT", 162, 1, "char", "I", "Incomplete data"),
    F("JOIGNAPY", 163, 1, "char", "I", "Ignored by APYJRNCHG"),
    F("JOMINESD", 164, 1, "char", "I", "Minimized entry-specific data"),
    F("JOOBJIND", 165, 1, "char", "I", "Object indicator"),
    F("JOSYSSEQ", 166, 20, "char", "I", "System sequence number"),
    F("JORCV", 186, 10, "char", "I", "Receiver"),
    F("JORCVLIB", 196, 10, "char", "I", "Receiver library"),
    F("JORCVDEV", 206, 10, "char", "I", "Receiver ASP device"),
    F("JORCVASP", 216, 5, "zoned", "I", "Receiver ASP number"),
    F("JORES", 221, 3, "char", "I", "Reserved"),
)

# --- SK entry-specific data, QASYSKJ4 / QASYSKJ5 ---
# (key, J4 offset or None, J5 offset, length, kind, tag, IBM description)
SK_FIELDS: tuple[tuple[str, int | None, int, int, str, str, str], ...] = (
    ("entry_type", 224, 610, 1, "char", "V", "Entry type"),
    ("local_ip15", 225, 611, 15, "char", "V", "Local IP address (15)"),
    ("local_port", 240, 626, 5, "char", "V", "Local port"),
    ("remote_ip15", 245, 631, 15, "char", "V", "Remote IP address (15)"),
    ("remote_port", 260, 646, 5, "char", "V", "Remote port"),
    ("socket_descriptor", 265, 651, 4, "bin4", "V", "Socket descriptor"),
    ("filter_description", 269, 655, 10, "char", "V", "Filter description"),
    ("filter_data_length", 279, 665, 2, "bin2", "V", "Filter data length"),
    ("filter_data", 281, 667, 514, "char", "V", "Filter data"),
    ("address_family", 795, 1181, 10, "char", "V", "Address family *IPV4 / *IPV6"),
    ("local_ip", 805, 1191, 46, "char", "V", "Local IP address (46)"),
    ("remote_ip", 851, 1237, 46, "char", "V", "Remote IP address (46)"),
    ("mac_address", 897, 1283, 32, "char", "V", "MAC address (DHCP)"),
    ("host_name", 929, 1315, 255, "char", "V", "Host name (DHCP)"),
    ("secure_version", None, 1570, 10, "char", "V", "Secure version (7.3+)"),
    # Length of Secure properties is not documented ([I]); offset [D] from IBM's example.
    ("secure_properties", None, 1580, 100, "char", "I", "Secure properties (7.3+)"),
)

# Fields a record must contain completely; later ones (secure_*, 7.3+) may be cut off.
SK_REQUIRED_THROUGH = "host_name"

# Text exports carry no field lengths of their own: a value is refused when it is longer than
# the outfile field it comes from (a 10-character user profile, an 8-character system name).
# Where the layout's length is inferred, not documented, the bound is TEXT_LIMIT instead.
TEXT_LIMIT = 1024
LENGTH_INFERRED = frozenset({"secure_properties"})

# AUDIT_JOURNAL_SK columns -> the outfile field that holds the same value (for its length),
# or a length: QUALIFIED_JOB_NAME is NUMBER/USER/NAME (6+1+10+1+10), ENTRY_TYPE_DETAIL is
# VARCHAR(200) in the other AUDIT_JOURNAL_xx functions (S14), DHCP_IP_ADDRESS an address.
AUDIT_SK_COLUMNS: dict[str, str | int] = {
    "ENTRY_TYPE": "entry_type", "SYSTEM_NAME": "JOSYNM", "USER_NAME": "JOUSPF",
    "JOB_NAME": "JOJOB", "JOB_USER": "JOUSER", "JOB_NUMBER": "JONBR", "QUALIFIED_JOB_NAME": 28,
    "PROGRAM_LIBRARY": "JOPGMLIB", "PROGRAM_NAME": "JOPGM", "RECEIVER_LIBRARY": "JORCVLIB",
    "RECEIVER_NAME": "JORCV", "ADDRESS_SPACE_TYPE": "address_family",
    "LOCAL_IP_ADDRESS": "local_ip", "REMOTE_ADDRESS": "remote_ip", "LOCAL_PORT": "local_port",
    "REMOTE_PORT": "remote_port", "FILTER_DESCRIPTION": "filter_description",
    "FILTER_DATA": "filter_data", "MAC_ADDRESS": "mac_address", "HOST_NAME": "host_name",
    "SECURE_VERSION": "secure_version", "SECURE_PROPERTIES": "secure_properties",
    "ENTRY_TYPE_DETAIL": 200, "DHCP_IP_ADDRESS": 46,
}


@dataclass(frozen=True)
class Layout:
    name: str                     # "type5" | "type4"
    heading: tuple[Field, ...]
    sk: tuple[Field, ...]

    @cached_property
    def fields(self) -> dict[str, Field]:
        return {f.name: f for f in self.heading + self.sk}

    def __getitem__(self, name: str) -> Field:
        return self.fields[name]

    @property
    def esd_offset(self) -> int:
        return self.sk[0].offset

    @property
    def min_length(self) -> int:
        """Shortest record that holds every required field."""
        return self[SK_REQUIRED_THROUGH].end

    @property
    def full_length(self) -> int:
        """Record length with every known field (what the generator writes)."""
        return self.sk[-1].end

    @property
    def columns(self) -> list[str]:
        """Column order of a CPYTOIMPF copy of this outfile."""
        return [f.name for f in self.heading + self.sk]

    @property
    def min_columns(self) -> int:
        """A CPYTOIMPF copy may end after host_name (outfiles from before 7.3)."""
        return self.columns.index(SK_REQUIRED_THROUGH) + 1


def _sk(j5: bool) -> tuple[Field, ...]:
    out = []
    for key, o4, o5, length, kind, tag, text in SK_FIELDS:
        off = o5 if j5 else o4
        if off is not None:
            out.append(Field(key, off, length, kind, tag, text))
    return tuple(out)


TYPE5 = Layout("type5", HEADING5, _sk(True))
TYPE4 = Layout("type4", HEADING4, _sk(False))
LAYOUTS = {"type5": TYPE5, "type4": TYPE4}


def check(layout: Layout) -> None:
    """Fields must tile the record without overlap (run by the tests after any edit)."""
    pos = 1
    for f in layout.heading + layout.sk:
        if f.offset != pos:
            raise AssertionError(f"{layout.name}: {f.name} at {f.offset}, expected {pos}")
        pos = f.offset + f.length


def text_limit(field: str) -> int:
    """The most characters a text export may hold for an outfile field (see TEXT_LIMIT)."""
    f = TYPE5.fields.get(field) or TYPE4.fields.get(field)
    if f is None or field in LENGTH_INFERRED:
        return TEXT_LIMIT
    return f.length


def column_limit(column: str) -> int:
    """The same for an AUDIT_JOURNAL_SK column (TEXT_LIMIT for the undocumented ones)."""
    src = AUDIT_SK_COLUMNS.get(column)
    return src if isinstance(src, int) else text_limit(src) if src else TEXT_LIMIT
