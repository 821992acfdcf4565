"""Ingest bench: sustained Journal.append throughput of realistic kernel decisions.

    .venv/bin/python bench/journal_ingest.py                       # 200k entries, batches of 256
    .venv/bin/python bench/journal_ingest.py --count 1000000 --batch 1024 --sync NORMAL

Entries go through the real path (Journal.open -> append in batches -> seals every
10,000 entries -> close), synchronous=FULL by default like the daemon. Reports entries/s
(wall clock) and CPU seconds per 100k entries (user + system of this process), and checks
the result with verify.

The live variant (the real daemon under a real load) is bench/daemon_ingest.py.
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sockgate.journal import Code, Entry, EntryType, Journal, Outcome, Source  # noqa: E402
from sockgate.journal.verify import verify  # noqa: E402


def synthetic(count: int, seed: int) -> Iterator[Entry]:
    """What the daemon produces per decision: SK C/A/L with user, program and both ends."""
    rnd = random.Random(seed)
    users = [(0, "root", "/usr/bin/curl"), (33, "www-data", "/usr/sbin/nginx"), (1000, "alice", "/usr/bin/ssh"),
             (112, "postfix", "/usr/lib/postfix/sbin/smtp"), (998, "app", "/opt/app/bin/app")]
    for i in range(count):
        uid, user, prog = users[i % 5]
        r = rnd.random()
        etype = EntryType.CONNECT if r < 0.8 else EntryType.ACCEPT if r < 0.97 else EntryType.LISTEN
        outcome = Outcome.ALLOWED if r < 0.7 else Outcome.REJECTED if r < 0.98 else Outcome.AUDIT_REJECTED
        yield Entry(
            code=Code.SOCKET, type=etype, ts_ns=time.time_ns(), source=Source.KERNEL, outcome=outcome,
            rule=None if outcome == Outcome.ALLOWED else "web-no-mail", uid=uid, user=user, gid=uid,
            pid=1000 + i % 30000, program=prog, local_addr="192.0.2.10", local_port=40000 + i % 20000,
            remote_addr=f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}",
            remote_port=rnd.choice((25, 53, 80, 443, 5432)),
        )


def batches(it: Iterator[Entry], size: int) -> Iterator[list[Entry]]:
    batch: list[Entry] = []
    for e in it:
        batch.append(e)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=256, help="entries per append() call (one ring-buffer drain)")
    ap.add_argument("--sync", choices=("FULL", "NORMAL"), default="FULL")
    ap.add_argument("--dir", type=Path, default=Path("bench/out/journal_ingest"))
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()

    shutil.rmtree(a.dir, ignore_errors=True)
    # Build the entries first: the bench measures the journal, not the generator.
    entries = list(synthetic(a.count, a.seed))
    j = Journal.open(a.dir, host="bench", sync=a.sync)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for b in batches(iter(entries), a.batch):
        j.append(b)
    j.close()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    size = sum(f.stat().st_size for f in a.dir.iterdir())
    print(f"ingest: {a.count:,} entries in batches of {a.batch}, synchronous={a.sync}: {wall:.2f} s wall, "
          f"{a.count / wall:,.0f} entries/s; CPU {cpu:.2f} s ({cpu / a.count * 1e5:.2f} s per 100k, "
          f"{cpu / wall * 100:.0f}% of one core); {size / a.count:.0f} bytes/entry on disk")
    t = time.perf_counter()
    rep = verify(a.dir)
    print(f"verify: {'OK' if rep.ok else 'FAILED: ' + str(rep.error)}, {rep.entries:,} entries, {rep.seals} seals, "
          f"{time.perf_counter() - t:.2f} s ({rep.entries / (time.perf_counter() - t):,.0f} entries/s)")


if __name__ == "__main__":
    main()
