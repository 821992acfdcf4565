"""Old home of the entry: it is sockgate.record now. Kept only for bench/monitor_rules.py
until it imports sockgate.record; delete it then."""

from sockgate.record import SK_TYPES, Code, Entry, EntryType, Outcome, Source  # noqa: F401
