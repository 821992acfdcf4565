"""Match fields of an alert rule, compiled once into predicates over entries: values of
one field are ORed, negated values must all fail, fields are ANDed.

    compile_field("remote", [(False, net), (True, other_net)])   # from config.expand
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Callable

from sockgate.record import Code, EntryType, Outcome, Source, addr_key, net_ranges, parse_range

Pred = Callable[[Any], bool]


@dataclass
class FieldMatch:
    """One match field, compiled: positives ORed, negatives must all fail."""

    name: str                 # rule-file name ("remote", "user", "extra.tls")
    attr: str                 # Entry attribute, or "extra.X"
    pos: Pred | None
    neg: Pred | None
    allowed: frozenset | None = None   # enum fields: the allowed values (for the index)

    def __call__(self, v: Any) -> bool:
        if self.pos is not None and (v is None or not self.pos(v)):
            return False
        if self.neg is not None and v is not None and self.neg(v):
            return False
        return True

    def entry_test(self) -> Callable[[Any], bool]:
        """A closure testing this field of an entry: one call per field in the hot loop."""
        pos, neg, attr = self.pos, self.neg, self.attr
        if attr.startswith("extra."):
            key = attr[6:]
            return lambda e: self(e.extra.get(key) if e.extra else None)
        if self.allowed is not None and neg is None:
            allowed = self.allowed
            return lambda e: getattr(e, attr) in allowed
        if neg is None:
            def t_pos(e: Any) -> bool:
                v = getattr(e, attr)
                return v is not None and pos(v)
            return t_pos
        if pos is None:
            def t_neg(e: Any) -> bool:
                v = getattr(e, attr)
                return v is None or not neg(v)
            return t_neg
        def t_both(e: Any) -> bool:
            v = getattr(e, attr)
            return v is not None and pos(v) and not neg(v)
        return t_both


_ENUM_FIELDS: dict[str, type] = {"code": Code, "type": EntryType, "outcome": Outcome, "source": Source}
_GLOB_FIELDS = ("user", "program", "rule", "host", "family", "ident")
_INT_FIELDS = ("uid", "gid", "pid", "seq")
_PORT_FIELDS = ("local_port", "remote_port")
_ADDR_FIELDS = {"local": "local_addr", "remote": "remote_addr", "local_addr": "local_addr", "remote_addr": "remote_addr"}
MATCH_FIELDS = sorted(set(_ENUM_FIELDS) | set(_GLOB_FIELDS) | set(_INT_FIELDS) | set(_PORT_FIELDS) | set(_ADDR_FIELDS))
INDEX_FIELDS = ("type", "outcome", "source")




def value_parser(fname: str) -> Callable[[Any], Any]:
    """The parser of one (un-negated, list-expanded) value of a field; raises ValueError."""
    if fname in _ENUM_FIELDS:
        return lambda v: _enum_value(_ENUM_FIELDS[fname], v)
    if fname in _GLOB_FIELDS:
        return _glob_value
    if fname in _INT_FIELDS:
        return lambda v: parse_range(v, fname, 2**63)
    if fname in _PORT_FIELDS:
        return parse_range
    if fname in _ADDR_FIELDS:
        return _net_value
    return _scalar_value  # extra.NAME


def _enum_value(enum: type, raw: Any) -> Any:
    try:
        return enum.parse(str(raw))
    except ValueError:
        choices = [m.value for m in enum]
        if enum is EntryType:
            choices += sorted(a for t in enum for a in t.aliases if t.is_socket)
        raise ValueError(f"unknown value {raw!r} (one of: {', '.join(choices)})") from None


def _glob_value(v: Any) -> str:
    if not isinstance(v, (str, int)) or isinstance(v, bool) or str(v) == "":
        raise ValueError(f"expected a name or glob pattern, got {v!r}")
    return str(v)


def _net_value(v: Any) -> Any:
    try:
        return ipaddress.ip_network(str(v).strip(), strict=False)
    except ValueError:
        raise ValueError(f"bad address or CIDR {v!r}") from None


def _scalar_value(v: Any) -> Any:
    if not isinstance(v, (str, int, float, bool)):
        raise ValueError(f"expected scalar values, got {v!r}")
    return v


def _glob_pred(values: list[str]) -> Pred:
    exact = {v for v in values if not any(c in v for c in "*?[")}
    globs = [v for v in values if v not in exact]
    rx = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs)).match if globs else None
    if rx is None:
        return lambda v: str(v) in exact
    if not exact:
        return lambda v: rx(str(v)) is not None
    return lambda v: str(v) in exact or rx(str(v)) is not None


def _ranges_pred(ranges: list[tuple[int, int]]) -> Pred:
    singles = frozenset(a for a, b in ranges if a == b)
    spans = [(a, b) for a, b in ranges if a != b]
    if not spans:
        return lambda v: v in singles
    return lambda v: v in singles or any(a <= v <= b for a, b in spans)


def _net_pred(nets: list[Any]) -> Pred:
    spans = [span for n in nets for span in net_ranges(n)]

    def pred(v: Any) -> bool:
        k = addr_key(v) if isinstance(v, str) else None
        return k is not None and any(lo <= k <= hi for lo, hi in spans)
    return pred


def _scalar_pred(values: list[Any]) -> Pred:
    nums = {v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)}
    strs = [str(v).lower() if isinstance(v, bool) else str(v) for v in values if v not in nums or isinstance(v, bool)]
    sp = _glob_pred(strs) if strs else None

    def pred(v: Any) -> bool:
        if nums and not isinstance(v, bool) and isinstance(v, (int, float)) and v in nums:
            return True
        if sp is None:
            return False
        return sp(str(v).lower() if isinstance(v, bool) else v)
    return pred


def compile_field(fname: str, values: list[tuple[bool, Any]]) -> FieldMatch:
    """values: (negated, parsed value) pairs, as config.expand gives them."""
    pos = [v for n, v in values if not n]
    neg = [v for n, v in values if n]
    if fname in _ENUM_FIELDS:
        # Enum fields reduce to one set test (outcome None never matches a positive).
        universe = frozenset(_ENUM_FIELDS[fname])
        allowed = (frozenset(pos) if pos else universe) - frozenset(neg)
        fm = FieldMatch(fname, fname, None, None, allowed)
        fm.pos = (lambda v, a=allowed: v in a) if pos else None
        fm.neg = (lambda v, a=frozenset(neg): v in a) if neg else None
        return fm
    build = (_glob_pred if fname in _GLOB_FIELDS else
             _ranges_pred if fname in _INT_FIELDS or fname in _PORT_FIELDS else
             _net_pred if fname in _ADDR_FIELDS else _scalar_pred)
    return FieldMatch(fname, _ADDR_FIELDS.get(fname, fname), build(pos) if pos else None,
                      build(neg) if neg else None)


@dataclass
class Match:
    fields: list[FieldMatch]

    def allows(self, name: str, value: Any) -> bool:
        for f in self.fields:
            if f.name == name:
                return f(value)
        return True
