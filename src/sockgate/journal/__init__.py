"""The sealed audit journal: SK-style entries in a chain of SQLite receivers,
hash-chained and sealed with a forward-secure key (see docs/journal.md).

    from sockgate.journal import Journal, Filter
    with Journal.open("/var/lib/sockgate/journal") as j:
        j.append(entries)
        for e in j.entries(after_seq=0, filter=Filter.build(outcomes=["rejected"], since="1h")):
            ...

The entry and its vocabulary live in sockgate.record and are re-exported here. Journal and
init_journal are loaded on first use, so the filters and exporters import without the
compiled C writer (sockgate.journal._append) that Journal needs.
"""

from typing import Any

from sockgate.journal.query import Filter, parse_size
from sockgate.record import SK_TYPES, Code, Entry, EntryType, Outcome, Source
from sockgate.record import format_time as format_ts
from sockgate.record import parse_time

__all__ = [
    "Code", "Entry", "EntryType", "Filter", "Journal", "Outcome", "SK_TYPES", "Source",
    "format_ts", "init_journal", "parse_size", "parse_time",
]


def __getattr__(name: str) -> Any:
    if name in ("Journal", "init_journal"):
        from sockgate.journal import journal

        return getattr(journal, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
