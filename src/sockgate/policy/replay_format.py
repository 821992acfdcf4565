"""A replay Report as text (table), JSON or a self-contained HTML page.

Program and user names, rule names and hosts come from the journal: attacker-controlled
text. The table shows them through record.oneline (no line breaks, no terminal controls);
the page HTML-escapes every value it prints.
"""

from __future__ import annotations

import html
import json

from sockgate.policy.replay import REASONS, SKIP_WHY, Group, Report
from sockgate.record import format_time, oneline

KIND_TITLE = {"break": "WOULD BREAK (went through before, rejected now)",
              "open": "WOULD OPEN (rejected before, goes through now)"}
COLUMNS = ("COUNT", "APPROX", "EXIT", "PROGRAM", "USER", "REMOTE NET", "PORT", "OLD RULE", "NEW RULE",
           "FIRST (UTC)", "LAST (UTC)", "HOSTS", "SAMPLE SEQS")


def to_json(rep: Report) -> str:
    return json.dumps(rep.to_dict(), indent=1)


def _range(rep: Report) -> str:
    since = format_time(rep.since_ns) if rep.since_ns is not None else "the start"
    until = format_time(rep.until_ns) if rep.until_ns is not None else "now"
    return f"{since} to {until}"


def summary_lines(rep: Report) -> list[str]:
    """The counts, approximations and skips: the head of the table and of the page."""
    against = f"policy {rep.against}" if rep.against else "the journaled outcomes"
    out = [f"replay of {rep.candidate} against {against}, {_range(rep)}: {rep.decisions} decisions",
           f"would break: {rep.breaks}   would open: {rep.opens}   unchanged: {rep.unchanged}   "
           f"same effect, other outcome or rule: {rep.same_effect}"]
    if rep.approximated:
        out.append(f"approximated: {rep.approximated} decisions ({rep.approximated_breaks} of the breaks, "
                   f"{rep.approximated_opens} of the opens): a rule that could have decided them tests "
                   "something the entries do not carry")
        out += [f"  {n:>9}  {k}: {REASONS[k][1]}" for k, n in sorted(rep.reasons.items())]
    else:
        out.append("approximated: 0 (every decision replayed exactly)")
    if rep.skipped:
        out.append("not replayed:")
        out += [f"  {n:>9}  {k}: {SKIP_WHY[k]}" for k, n in sorted(rep.skipped.items())]
    for kind, n in sorted(rep.other.items()):
        out.append(f"{n} more {kind}s past {rep.MAX_GROUPS} groups are counted above but not grouped")
    return out


def _cells(g: Group) -> list[str]:
    hosts = ",".join(sorted(g.hosts)) + (f" +{g.more_hosts}" if g.more_hosts else "")
    return [str(g.count), str(g.approximated) if g.approximated else "", g.exit, g.program, g.user, g.network,
            "" if g.port is None else str(g.port), f"{g.old_rule} ({g.old_outcome})",
            f"{g.new_rule} ({g.new_outcome})", format_time(g.first_ns)[:19], format_time(g.last_ns)[:19], hosts,
            ",".join(map(str, g.samples))]


def to_table(rep: Report) -> str:
    lines = summary_lines(rep)
    for kind in ("break", "open"):
        groups = rep.sorted_groups(kind)
        if not groups:
            continue
        rows = [list(COLUMNS)] + [[oneline(c) for c in _cells(g)] for g in groups]
        widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
        lines += ["", KIND_TITLE[kind]]
        for r in rows:
            lines.append("  ".join(c.rjust(w) if i < 2 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                         .rstrip())
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:90%}th,td{border:1px solid #ccc;padding:.25em .5em;
text-align:left;vertical-align:top}th{background:#eee}td.n{text-align:right}h2.break{color:#a00}
h2.open{color:#a60}pre{white-space:pre-wrap}"""


def to_html(rep: Report) -> str:
    """One page, no external resources, every value escaped."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>sockgate replay: {e(rep.candidate)}</title>",
             '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'">',
             f"<style>{_CSS}</style></head><body>", f"<h1>Replay of {e(rep.candidate)}</h1>",
             "<pre>" + e("\n".join(summary_lines(rep))) + "</pre>"]
    for kind in ("break", "open"):
        groups = rep.sorted_groups(kind)
        parts.append(f'<h2 class="{kind}">{e(KIND_TITLE[kind])}: {sum(g.count for g in groups)}</h2>')
        if not groups:
            parts.append("<p>none</p>")
            continue
        parts.append("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in COLUMNS) + "</tr>")
        for g in groups:
            cells = _cells(g)
            parts.append("<tr>" + "".join(f'<td class="n">{e(c)}</td>' if i < 2 else f"<td>{e(c)}</td>"
                                          for i, c in enumerate(cells)) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


FORMATS = {"table": to_table, "json": to_json, "html": to_html}
