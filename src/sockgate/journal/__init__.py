"""The sealed audit journal: SK-style entries in a chain of SQLite receivers,
hash-chained and sealed with a forward-secure key (see docs/journal.md).

    from sockgate.journal import Journal, Filter
    with Journal.open("/var/lib/sockgate/journal") as j:
        j.append(entries)
        for e in j.entries(after_seq=0, filter=Filter.build(outcomes=["rejected"], since="1h")):
            ...
"""

from sockgate.journal.entry import SK_TYPES, Code, Entry, EntryType, Outcome, Source
from sockgate.journal.journal import Journal, init_journal
from sockgate.journal.query import Filter, format_ts, parse_duration, parse_size, parse_time

__all__ = [
    "Code", "Entry", "EntryType", "Filter", "Journal", "Outcome", "SK_TYPES", "Source",
    "format_ts", "init_journal", "parse_duration", "parse_size", "parse_time",
]
