"""`sockgate report`: one static, self-contained HTML file over a window of the journal.

The numbers come from console.data (the console's own queries, which are `journal top`'s),
the charts are SVG drawn here, inline, and the file loads nothing: no script, no external
resource (its own Content-Security-Policy meta says so to the browser that opens it). Every
journal value is escaped by Jinja's autoescape or, inside the SVG, by markupsafe.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from markupsafe import Markup

from sockgate.console.app import templates
from sockgate.console.data import TOP_FIELDS, Data
from sockgate.journal.query import Filter, top_extra
from sockgate.record import NS, Outcome, Source, format_time, oneline
from sockgate.safedir import write_atomic

COLORS = {"allowed": "#2e7d32", "rejected": "#c62828", "audit-rejected": "#ef8f00", "failed": "#6a1b9a"}
MORE = ("#1565c0", "#00838f", "#ad1457", "#4e342e", "#558b2f", "#283593", "#f9a825", "#37474f")
MAX_SERIES = 8     # a rules chart keeps the busiest rules; the rest are summed as "other"
IBMI_FIELDS = ("user", "program", "remote_addr", "local_port")


def build(data: Data, filt: Filter, *, n: int = 10) -> dict[str, Any]:
    """Everything the report shows, as plain values (the test compares them with `journal top`)."""
    now = time.time_ns()
    f = replace(filt, until_ns=filt.until_ns if filt.until_ns is not None else now)
    with data.lock:
        total = data.journal.count(f)
        by_outcome = dict(data.journal.top("outcome", f, 10))
    rules, where = data.rules(f)
    ibmi = None
    fi = replace(f, sources=(Source.IBMI.value,))
    with data.lock:
        ibmi_total = data.journal.count(fi)
        if ibmi_total:
            ibmi = {"total": ibmi_total,
                    "top": {fld: data.journal.top(fld, fi, n) for fld in IBMI_FIELDS},
                    "jobs": top_extra(data.journal, "job", fi, n),
                    "types": data.journal.top("type", fi, 20),
                    "systems": data.journal.top("host", fi, 20)}
    return {
        "since_ns": f.since_ns, "until_ns": f.until_ns, "generated_ns": now, "total": total,
        "by_outcome": by_outcome, "top": data.top(f, n), "fields": TOP_FIELDS,
        "chart_outcome": data.chart(f, "outcome"),
        "chart_rule": data.chart(replace(f, outcomes=(Outcome.REJECTED.value, Outcome.AUDIT_REJECTED.value)), "rule"),
        "rules": rules, "counter_source": where, "integrity": data.integrity(), "ibmi": ibmi,
    }


def render(values: dict[str, Any], journal_dir: str) -> str:
    env = templates()
    env.filters["svg"] = svg_chart
    return env.get_template("report.html").render(r=values, journal=journal_dir, outcomes=COLORS)


def write_report(journal_dir: str, filt: Filter, output: str, *, policy_file: str | None = None,
                 key_file: str | None = None, n: int = 10) -> int:
    """Write the report; returns how many entries the window holds."""
    data = Data(journal_dir, policy_file=policy_file, key_file=key_file)
    try:
        values = build(data, filt, n=n)
        write_atomic(output, render(values, journal_dir), mode=0o600)
    finally:
        data.close()
    return values["total"]


# -- SVG --------------------------------------------------------------------------------------

W, H, LEFT, BOTTOM, TOP, RIGHT = 900, 240, 60, 28, 10, 10


def svg_chart(chart: dict[str, Any], title: str) -> Markup:
    """A line per series (counts per second over time), axes with a few ticks, a legend;
    the busiest MAX_SERIES series, the rest summed as "other"."""
    t, series = chart["t"], dict(chart["series"])
    if len(series) > MAX_SERIES:
        ranked = sorted(series, key=lambda k: -sum(series[k]))
        other = [sum(vals) for vals in zip(*(series[k] for k in ranked[MAX_SERIES - 1:]))]
        series = {k: series[k] for k in ranked[:MAX_SERIES - 1]}
        series["other"] = other
    ymax = max((v for vals in series.values() for v in vals), default=0) or 1
    x0, x1 = (t[0], t[-1]) if t else (0, 1)
    span = max(1, x1 - x0)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def x(v: float) -> float:
        return LEFT + (v - x0) / span * pw

    def y(v: float) -> float:
        return TOP + ph - v / ymax * ph

    parts = [Markup('<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {} {}" role="img" '
                    'aria-label="{}"><title>{}</title>').format(W, H + 36, title, title)]
    parts.append(Markup('<rect x="{}" y="{}" width="{}" height="{}" class="plot"/>').format(LEFT, TOP, pw, ph))
    for i in range(5):   # y ticks
        v = ymax * i / 4
        parts.append(Markup('<line x1="{}" x2="{}" y1="{:.1f}" y2="{:.1f}" class="grid"/>'
                            '<text x="{}" y="{:.1f}" class="tick" text-anchor="end">{}</text>')
                     .format(LEFT, W - RIGHT, y(v), y(v), LEFT - 4, y(v) + 4, _num(v)))
    for i in range(5):   # x ticks
        v = x0 + span * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        parts.append(Markup('<text x="{:.1f}" y="{}" class="tick" text-anchor="{}">{}</text>')
                     .format(x(v), H - 10, anchor, format_time(int(v) * NS)[5:16].replace("T", " ")))
    for i, (name, vals) in enumerate(series.items()):
        color = COLORS.get(name, MORE[i % len(MORE)])
        pts = " ".join(f"{x(tv):.1f},{y(v):.1f}" for tv, v in zip(t, vals))
        parts.append(Markup('<polyline class="series" data-name="{}" fill="none" stroke="{}" stroke-width="1.5" '
                            'points="{}"/>').format(oneline(name), color, pts))
        lx = LEFT + (i % 4) * 210
        ly = H + 6 + (i // 4) * 14
        parts.append(Markup('<rect x="{}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{}" '
                            'class="legend">{} ({})</text>').format(lx, ly, color, lx + 14, ly + 9,
                                                                     oneline(name)[:40], _num(sum(vals) * chart["step"])))
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def _num(v: float) -> str:
    return f"{v:.0f}" if v >= 10 or v == int(v) else f"{v:.2g}"


__all__ = ["build", "render", "svg_chart", "write_report"]
