"""Alert-rule evaluation rate: 100 rules over a 1,000,000-entry journal.

    PYTHONPATH=src .venv/bin/python bench/monitor_rules.py [--entries 1000000] [--rules 100]
                                                           [--journal DIR] [--json]

Builds (once; reused when it already holds enough entries) a journal of synthetic kernel
and IBM i entries, then measures:
  engine   rule evaluation alone over entries already in memory (the engine's own rate)
  journal  reading the journal alone (Journal.entries)
  e2e      reading the journal and evaluating the rules (what `monitor --test` does)
The rule mix: 60 "every" rules (type/outcome/user/program/CIDR/port/extra matches, negations,
globs), 25 thresholds (grouped by address or user) and 15 first_seen rules.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

from sockgate.journal import Journal
from sockgate.record import Code, Entry, EntryType, Outcome, Source
from sockgate.monitor.engine import Engine
from sockgate.monitor.parse import parse_rules

S = 1_000_000_000
USERS = ["root", "www-data", "postgres", "svc-api", "svc-batch", "alice", "bob", "backup", "nobody", "svc-web"]
PROGRAMS = ["/usr/sbin/nginx", "/usr/bin/curl", "/usr/sbin/sshd", "/usr/bin/python3", "/usr/lib/postgresql/15/bin/postgres",
            "/usr/bin/nc", "QSYS/QTMHHTTP", "QSYS/QZDASOINIT"]
TYPES = [EntryType.CONNECT] * 6 + [EntryType.ACCEPT] * 5 + [EntryType.LISTEN, EntryType.SECURE_FAILED,
                                                            EntryType.SECURE_OK, EntryType.UDP_OUTBOUND]


def make_rules(n: int, rnd: random.Random) -> str:
    out = ['[monitor]\nchannels = ["log"]\n[channel.log]\ntype = "syslog"\nurl = "udp://127.0.0.1:514"\n'
           '[lists]\nsvc = ["svc-*", "www-data", "postgres"]\n']
    for i in range(n):
        kind = "every" if i < n * 0.6 else "threshold" if i < n * 0.85 else "first_seen"
        t = rnd.choice(["C", "A", "L", "X", "connect", '["A", "C"]'])
        t = t if t.startswith("[") else f'"{t}"'
        fields = [f"type = {t}"]
        if kind != "first_seen":   # alert rules watch failures; first_seen watches what succeeds
            fields.append(f'outcome = {rnd.choice(["rejected", "!allowed", "audit-rejected", "failed"])!r}'.replace("'", '"'))
        r = rnd.random() * 0.75
        if r < 0.25:
            fields.append(f'user = "{rnd.choice(["svc-api", "postgres", "svc-b*", "alice"])}"')
        elif r < 0.45:
            fields.append(f'remote = ["{rnd.randint(1, 200)}.0.0.0/12", "!{rnd.randint(1, 200)}.1.0.0/16"]')
        elif r < 0.6:
            lo = rnd.randint(1, 60000)
            fields.append(f'remote_port = ["{lo}-{lo + rnd.randint(0, 500)}", {rnd.randint(1, 1024)}]')
        elif r < 0.7:
            fields.append(f'program = "{rnd.choice(["/usr/bin/*", "QSYS/*", "/usr/sbin/sshd"])}"')
        elif r < 0.75:
            fields.append('extra.tls = "1.*"')
        match = "{ " + ", ".join(fields) + " }"
        out.append(f'[[alert]]\nname = "r{i}"\nkind = "{kind}"\nmatch = {match}\n')
        if kind == "threshold":
            group = rnd.choice(['"remote_addr"', '"user"', '"remote_addr", "local_port"'])
            window = rnd.choice(["10s", "1m", "5m"])
            out.append(f'count = {rnd.choice([5, 20, 100])}\nwindow = "{window}"\ngroup_by = [{group}]\n')
        elif kind == "first_seen":
            key = rnd.choice(['"program", "local_port"', '"user", "program"', '"host", "local_port"'])
            out.append(f'key = [{key}]\n')
    return "".join(out)


def make_entries(n: int, rnd: random.Random, t0: int):
    for i in range(n):
        t = rnd.choice(TYPES)
        src = Source.IBMI if rnd.random() < 0.1 else Source.KERNEL
        yield Entry(code=Code.SOCKET, type=t, ts_ns=t0 + i * (S // 1000), source=src, host=f"h{rnd.randint(1, 20)}",
                    outcome=rnd.choice([Outcome.ALLOWED] * 6 + [Outcome.REJECTED, Outcome.AUDIT_REJECTED, Outcome.FAILED]),
                    rule=f"rule{rnd.randint(1, 50)}", uid=rnd.randint(0, 2000), user=rnd.choice(USERS),
                    pid=rnd.randint(100, 99999), program=rnd.choice(PROGRAMS), family="ipv4",
                    local_addr="192.0.2.1", local_port=rnd.choice([22, 80, 443, 5432, 8080, rnd.randint(1024, 65535)]),
                    remote_addr=f"{rnd.randint(1, 200)}.{rnd.randint(0, 7)}.{rnd.randint(0, 7)}.{rnd.randint(1, 8)}",
                    remote_port=rnd.randint(1, 65535),
                    extra={"tls": rnd.choice(["1.2", "1.3"])} if t in (EntryType.SECURE_FAILED, EntryType.SECURE_OK) else {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--rules", type=int, default=100)
    ap.add_argument("--journal", default=os.path.join(tempfile.gettempdir(), "sockgate-bench-monitor-journal"))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rnd = random.Random(1)
    ruleset = parse_rules(make_rules(a.rules, rnd), "bench-rules.toml")
    t0 = 1_700_000_000 * S

    # 1. engine alone: fresh entries, made in chunks of 100k outside the timed loop
    eng = Engine(ruleset)
    gen = make_entries(a.entries, random.Random(3), t0)
    alerts = 0
    done = 0
    elapsed = 0.0
    while done < a.entries:
        chunk = [e for _, e in zip(range(100_000), gen)]
        out: list = []
        t = time.perf_counter()
        for e in chunk:
            eng.process(e, out)
        elapsed += time.perf_counter() - t
        alerts += len(out)
        done += len(chunk)
    engine_rate = done / elapsed
    cands = sum(len(v) for v in eng.index.values()) / len(eng.index)

    # 2. the journal: build once
    t = time.perf_counter()
    j = Journal.open(a.journal)
    built = 0
    if j.last_seq < a.entries:
        gen = make_entries(a.entries - j.last_seq, random.Random(3), t0 + j.last_seq * (S // 1000))
        while True:
            batch = [e for _, e in zip(range(20_000), gen)]
            if not batch:
                break
            j.append(batch)
            built += len(batch)
    build_s = time.perf_counter() - t
    j.close()
    j = Journal.open(a.journal, readonly=True)
    t = time.perf_counter()
    n = sum(1 for _, _e in zip(range(a.entries), j.entries(0)))
    read_s = time.perf_counter() - t

    eng = Engine(ruleset)
    out = []
    t = time.perf_counter()
    m = 0
    for e in j.entries(0):
        if m >= a.entries:
            break
        eng.process(e, out)
        m += 1
    e2e_s = time.perf_counter() - t
    j.close()

    res = {
        "entries": a.entries, "rules": len(ruleset.rules), "avg_candidate_rules_per_entry_kind": round(cands, 1),
        "engine_entries_per_s": round(engine_rate), "engine_alerts": alerts,
        "journal_read_entries_per_s": round(n / read_s), "e2e_entries_per_s": round(m / e2e_s),
        "e2e_alerts": len(out), "journal_built_entries": built, "journal_build_s": round(build_s, 1),
        "python": sys.version.split()[0],
    }
    if a.json:
        print(json.dumps(res))
    else:
        print(f"monitor rules: {res['rules']} rules, {a.entries:,} entries "
              f"(avg {res['avg_candidate_rules_per_entry_kind']} candidate rules per (type, outcome, source))")
        print(f"  engine only        {res['engine_entries_per_s']:>10,} entries/s   ({alerts:,} alerts)")
        print(f"  journal read only  {res['journal_read_entries_per_s']:>10,} entries/s")
        print(f"  journal + engine   {res['e2e_entries_per_s']:>10,} entries/s   ({len(out):,} alerts)")
        if built:
            print(f"  (built the journal: {built:,} entries in {build_s:.0f}s at {a.journal})")


if __name__ == "__main__":
    main()
