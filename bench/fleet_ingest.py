"""Fleet benchmarks on a throwaway PostgreSQL 15 (tests/fleet/pgserver.py, fsync on).

1. ingest: AGENTS hosts, each with its own journal of ENTRIES sealed entries, enrolled
   with one `sockgate collector` (a subprocess, mutual TLS), ship concurrently (each agent
   is a `sockgate fleet ship --once` process). Prints entries/s into PostgreSQL from the
   first byte to the last commit, and checks 0 lost / 0 twice (count, distinct (host, seq)).
2. query: `fleet show --remote A.B.C.0/24 --outcome rejected --since 24h` (the real
   central.entries(), server-side cursor) over QUERY_ROWS rows of 20 hosts spread over 7
   day partitions. The rows are generated in SQL (generate_series) straight into the
   partitioned table: the query does not need valid chains, and shipping 10,000,000
   entries through the collector would take the benchmark's whole budget.

    .venv/bin/python bench/fleet_ingest.py [--agents 10] [--entries 50000] [--query-rows 10000000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests" / "fleet")]

import psycopg  # noqa: E402

import pgserver  # noqa: E402
from sockgate.fleet import store  # noqa: E402
from sockgate.fleet.central import entries  # noqa: E402
from sockgate.journal import Code, Entry, EntryType, Filter, Journal, Outcome, Source  # noqa: E402

CLI = "import sys; from sockgate.cli import main; main(sys.argv[1:])"
ENV = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}


def make_journal(d: Path, n: int, seed: int) -> None:
    now = time.time_ns() - 3600 * 10**9
    with Journal.open(d) as j:
        j.seal_every = 5000
        batch = []
        for i in range(n):
            batch.append(Entry(Code.SOCKET, EntryType.CONNECT, now + i * 1000, Source.KERNEL, "h", Outcome.REJECTED,
                               "web-no-mail", 33, "www-data", 33, 1000 + i % 30000, "/usr/sbin/nginx", "ipv4",
                               "192.0.2.10", 40000 + i % 20000, f"10.{seed}.{i // 250 % 250}.{i % 250}", 25))
            if len(batch) == 5000:
                j.append(batch)
                batch = []
        j.append(batch)


def bench_ingest(pg: pgserver.PgServer, agents: int, n: int, tmp: Path, workers: int = 1) -> dict:
    from sockgate.fleet.collector import new_token
    from sockgate.fleet.ship import enroll

    port = pgserver._free_port()
    state = tmp / "collector"
    log = open(tmp / "collector.log", "wb")
    col = subprocess.Popen([sys.executable, "-c", CLI, "collector", "--db", pg.url, "--listen", f"127.0.0.1:{port}",
                            "--state", str(state), "--workers", str(workers)], env=ENV, stdout=log, stderr=log)
    try:
        for _ in range(300):
            try:
                import socket
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        t = time.monotonic()
        hosts = []
        for a in range(agents):
            h = tmp / f"host{a}"
            h.mkdir(mode=0o700)
            make_journal(h / "journal", n, a)
            enroll(f"https://127.0.0.1:{port}", new_token(pg.url, state), f"agent{a}", h / "fleet", h / "journal")
            hosts.append(h)
        print(f"  {agents} journals of {n} entries written and enrolled in {time.monotonic() - t:.1f}s", flush=True)
        t0 = time.monotonic()
        procs = [subprocess.Popen([sys.executable, "-c", CLI, "fleet", "ship", "--once", "--fleet-dir", str(h / "fleet"),
                                   "--journal", str(h / "journal")], env=ENV, stdout=subprocess.DEVNULL)
                 for h in hosts]
        codes = [p.wait() for p in procs]
        wall = time.monotonic() - t0
    finally:
        col.terminate()
        try:
            col.wait(30)
        except subprocess.TimeoutExpired:
            print("  collector did not stop in 30 s after SIGTERM: killed", flush=True)
            col.kill()
            col.wait(10)
    with psycopg.connect(pg.url) as c:
        total, distinct = c.execute("SELECT count(*), count(DISTINCT (host_id, seq)) FROM sockgate.entry").fetchone()
    want = sum(_last_seq(h / "journal") for h in hosts)
    return {"agents": agents, "entries": want, "stored": total, "distinct": distinct, "wall_s": wall,
            "per_s": total / wall, "lost": want - distinct, "twice": total - distinct, "exit_codes": codes}


def _last_seq(d: Path) -> int:
    with Journal.open(d, readonly=True) as j:
        return j.last_seq


def bench_query(pg: pgserver.PgServer, rows: int, rounds: int = 7, indexes: tuple[str, ...] = ()) -> dict:
    day = store.DAY_NS
    now = time.time_ns()
    with psycopg.connect(pg.url, autocommit=True) as c:
        store.ensure_schema(c)
        c.execute("SET search_path = sockgate")
        parts = store.Partitions(pg.url)
        parts.ensure({now - d * day for d in range(8)})
        c.execute("INSERT INTO host (name, cert_fp, journal_id, enrolled_ns) SELECT 'q' || g, 'fp' || g, 'j', 0 "
                  "FROM generate_series(1, 20) g ON CONFLICT DO NOTHING")
        # bulk load as one would restore: the partitioned indexes are built after the rows
        for ix in ("entry_remote", "entry_outcome_ts", "entry_ts", "entry_host_seq"):
            c.execute(f"DROP INDEX IF EXISTS sockgate.{ix}")
        t = time.monotonic()
        chunk = 1_000_000
        for start in range(0, rows, chunk):
            m = min(chunk, rows - start)
            # 7 days, 20 hosts, remotes uniform over 10.0.0.0/12 (4,096 /24s), 1 in 4 rejected
            c.execute(f"""
                INSERT INTO entry (host_id, seq, ts_ns, code, type, source, host, outcome, rule, uid, "user", gid,
                    pid, program, family, local_addr, local_port, remote_addr, remote_port, extra, local_inet,
                    remote_inet, hash, received_ns)
                SELECT h, g, ts, 'SK', 'C', 'kernel', 'q' || h, CASE WHEN abs(hashint8(g * 1000003 + 17)) % 4 = 0 THEN 'rejected' ELSE 'allowed' END,
                    'r', 33, 'www-data', 33, 1000, '/usr/sbin/nginx', 'ipv4', '192.0.2.10', 40000, ra, 25, '{{}}',
                    '192.0.2.10', ra::inet, '\\x00', ts
                FROM (SELECT g, (g % 20) + 1 AS h, {now} - g::bigint * {7 * day // rows} AS ts,
                             '10.' || (abs(hashint8(g)) % 16) || '.' || (abs(hashint8(-g)) % 256) || '.' || (g % 256) AS ra
                      FROM generate_series({start + 1}::bigint, {start + m}::bigint) g) s""")
            print(f"  {start + m} rows generated ({time.monotonic() - t:.0f}s)", flush=True)
        for ddl in store.DDL.split(";"):
            if "CREATE INDEX" in ddl and (not indexes or any(f" {ix} ON" in ddl for ix in indexes)):
                c.execute(ddl)
        print(f"  indexes built ({time.monotonic() - t:.0f}s)", flush=True)
        c.execute("ANALYZE sockgate.entry")
        size = c.execute("SELECT pg_size_pretty(sum(pg_total_relation_size(inhrelid))) FROM pg_inherits "
                         "WHERE inhparent = 'sockgate.entry'::regclass").fetchone()[0]
        load_s = time.monotonic() - t
    filt = Filter.build(remote=["10.3.77.0/24"], outcomes=["rejected"], since="24h")
    times, n = [], 0
    with store.connect(pg.url) as conn:
        for _ in range(rounds):
            t = time.perf_counter()
            n = sum(1 for _ in entries(conn, filt))
            times.append((time.perf_counter() - t) * 1000)
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT count(*) FROM sockgate.entry WHERE remote_inet <<= '10.3.77.0/24' AND outcome = 'rejected' "
            f"AND ts_ns >= {filt.since_ns}").fetchall())
        conn.rollback()
    return {"rows": rows, "table_size": size, "load_s": load_s, "matched": n, "ms_p50": statistics.median(times),
            "ms_min": min(times), "ms_max": max(times), "plan": plan}


def _stop_on_sigterm() -> None:
    import signal

    def stop(*_):   # unwinds through the PgServer context: the server is stopped and removed
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)


def main() -> None:
    _stop_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=10)
    ap.add_argument("--entries", type=int, default=50_000, help="per agent")
    ap.add_argument("--query-rows", type=int, default=10_000_000)
    ap.add_argument("--workers", type=int, default=1, help="collector processes")
    ap.add_argument("--query-indexes", default="", help="only these of the entry indexes (comma-separated "
                    "names, e.g. entry_remote), to save the build on a busy machine; default all")
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--skip-query", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sockgate-bench-fleet-") as tmp:
        os.chmod(tmp, 0o700)
        if not a.skip_ingest:
            with pgserver.PgServer(fsync=True) as pg:
                r = bench_ingest(pg, a.agents, a.entries, Path(tmp), a.workers)
                print(f"ingest ({a.workers} collector worker(s)): {r['stored']} of {r['entries']} entries from {r['agents']} agents in {r['wall_s']:.1f}s "
                      f"= {r['per_s']:,.0f} entries/s; lost {r['lost']}, twice {r['twice']}; exits {r['exit_codes']}")
        if not a.skip_query:
            with pgserver.PgServer(fsync=False) as pg:
                q = bench_query(pg, a.query_rows, indexes=tuple(x for x in a.query_indexes.split(",") if x))
                print(f"query: {q['matched']} rejections from 10.3.77.0/24 in 24h over {q['rows']:,} rows "
                      f"({q['table_size']}, loaded in {q['load_s']:.0f}s): p50 {q['ms_p50']:.1f} ms "
                      f"(min {q['ms_min']:.1f}, max {q['ms_max']:.1f})")
                print(q["plan"])


if __name__ == "__main__":
    main()
