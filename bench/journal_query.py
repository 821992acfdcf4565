"""Query bench: a big journal, then the two questions an auditor asks first.

    .venv/bin/python bench/journal_query.py                 # 10,000,000 entries
    .venv/bin/python bench/journal_query.py --count 1000000 --dir /tmp/jq

Generation writes rows straight into one receiver in bulk (executemany, indexes built
afterwards, synchronous=OFF) instead of going through Journal.append, because only the
query side is measured here; the rows are still real: the hash chain is computed and the
journal is sealed on close, so `sockgate journal verify` passes on it.

Measured (best of --repeat runs, warm cache):
  (1) rejections from one /24 in one day (count, and fetching the rows)   target < 50 ms
  (2) top-10 remote addresses by rejections over the whole journal        target < 1 s
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sockgate.journal import Filter, Journal  # noqa: E402
from sockgate.journal.store import COLUMNS, canonical  # noqa: E402
from sockgate.record import addr_key  # noqa: E402

DAY = 86_400 * 10**9
T0 = 1_767_225_600 * 10**9          # 2026-01-01T00:00:00Z
SCANNER_NET = "203.0.113"           # the /24 the first query asks about


def generate(directory: Path, count: int, days: int, seed: int) -> None:
    rnd = random.Random(seed)
    with Journal.open(directory, host="bench") as j:
        head_seq, h = j._current().head()          # the journal's own records (none yet)
        path = j._current().path
    assert head_seq == 0
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA synchronous=OFF")
    indexes = c.execute("SELECT name, sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL").fetchall()
    for name, _ in indexes:
        c.execute(f"DROP INDEX {name}")

    # Address pools: allowed traffic goes to many servers; rejections come mostly from a
    # few hundred scanners (skewed), some of them in one /24, and a random tail.
    servers = [f"{rnd.randrange(1, 224)}.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
               for _ in range(50_000)]
    scanners = [f"{SCANNER_NET}.{i}" for i in range(1, 40)] + [
        f"198.51.{rnd.randrange(256)}.{rnd.randrange(1, 255)}" for _ in range(400)]
    weights = [1.0 / (k + 1) for k in range(len(scanners))]
    rnd.shuffle(weights)
    users = [(0, "root", "/usr/bin/curl"), (33, "www-data", "/usr/sbin/nginx"), (1000, "alice", "/usr/bin/ssh"),
             (112, "postfix", "/usr/lib/postfix/sbin/smtp"), (998, "app", "/opt/app/bin/app")]
    keys = {}

    def key(a: str) -> bytes:
        k = keys.get(a)
        if k is None:
            k = keys[a] = addr_key(a)
        return k

    step = days * DAY // count
    sha = hashlib.sha256
    insert = f"INSERT INTO entry ({','.join(COLUMNS)}) VALUES ({','.join('?' * len(COLUMNS))})"
    t = time.perf_counter()
    batch = []
    scan_pick = rnd.choices(scanners, weights, k=100_000)
    for seq in range(1, count + 1):
        r = rnd.random()
        uid, user, prog = users[seq % 5]
        if r < 0.70:
            outcome, rule, remote, etype, rport = "allowed", None, servers[seq % 50_000], "C", 443
        elif r < 0.98:
            outcome, rule, etype = "rejected", "ssh-from-mgmt-only", "A"
            remote = scan_pick[seq % 100_000] if r < 0.95 else f"192.0.2.{seq % 250}"
            rport = 1024 + seq % 60000
        else:
            outcome, rule, remote, etype, rport = "audit-rejected", "web-no-mail", servers[seq % 977], "C", 25
        values = (seq, T0 + seq * step, "SK", etype, "kernel", "bench", outcome, rule, uid, user, uid,
                  1000 + seq % 30000, prog, "ipv4", "192.0.2.10", 22 if etype == "A" else 40000 + seq % 20000,
                  remote, rport, "{}", None)
        h = sha(h + canonical(values)).digest()
        batch.append((*values, key("192.0.2.10"), key(remote), h))
        if len(batch) == 50_000:
            c.execute("BEGIN")
            c.executemany(insert, batch)
            c.execute("COMMIT")
            batch.clear()
            if seq % 1_000_000 == 0:
                print(f"  {seq:>11,} rows  {time.perf_counter() - t:6.1f} s", flush=True)
    c.execute("BEGIN")
    c.executemany(insert, batch)
    c.execute("COMMIT")
    gen = time.perf_counter() - t
    t = time.perf_counter()
    for _, sql in indexes:
        c.execute(sql)
    c.execute("ANALYZE")
    c.close()
    idx = time.perf_counter() - t
    with Journal.open(directory, host="bench"):   # closes cleanly: seals the chain
        pass
    print(f"generated {count:,} entries in {gen:.1f} s ({count / gen:,.0f}/s), indexes + ANALYZE {idx:.1f} s")


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10_000_000, help="entries to generate (default 10M)")
    ap.add_argument("--days", type=int, default=30, help="time span the entries cover")
    ap.add_argument("--dir", type=Path, default=Path("bench/out/journal_query"))
    ap.add_argument("--reuse", action="store_true", help="query an existing bench journal, don't regenerate")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()

    if not a.reuse:
        shutil.rmtree(a.dir, ignore_errors=True)
        generate(a.dir, a.count, a.days, a.seed)
    size = sum(f.stat().st_size for f in a.dir.iterdir())
    with Journal.open(a.dir, readonly=True) as j:
        print(f"journal: {j.last_seq:,} entries, {size / 2**30:.2f} GiB on disk")
        day = T0 + 10 * DAY
        f1 = Filter.build(outcomes=["rejected"], remote=[f"{SCANNER_NET}.0/24"], since=day, until=day + DAY)
        t_count, n = best(lambda: j.count(f1), a.repeat)
        t_rows, rows = best(lambda: list(j.entries(filter=f1)), a.repeat)
        f2 = Filter.build(outcomes=["rejected"])
        t_top, top = best(lambda: j.top("remote_addr", f2, 10), max(1, a.repeat // 2))
        where, params = f1.where()
        plan = j.receivers[0].fetchall(f"EXPLAIN QUERY PLAN SELECT count(*) FROM entry WHERE {where}", params)
        plan2 = j.receivers[0].fetchall(
            f"EXPLAIN QUERY PLAN SELECT remote_key, count(*) FROM entry WHERE {f2.where()[0]} GROUP BY remote_key",
            f2.where()[1])
    print(f"(1) rejections from {SCANNER_NET}.0/24 in one day: {n:,} entries; count {t_count * 1e3:.1f} ms, "
          f"fetch rows {t_rows * 1e3:.1f} ms  (target < 50 ms)  plan: {plan[-1][-1]}")
    print(f"(2) top-10 remote addresses by rejections: {t_top * 1e3:.0f} ms  (target < 1000 ms)  plan: {plan2[-1][-1]}")
    for addr, c in top:
        print(f"      {c:>9,}  {addr}")
    assert len(rows) == n


if __name__ == "__main__":
    main()
