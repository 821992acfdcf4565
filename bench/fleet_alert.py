"""Fleet-wide alert latency: from the rejected call to the webhook (issue 15, item 5).

One command starts a throwaway PostgreSQL 15 (tests/fleet/pgserver.py, fsync on), the real
`sockgate collector` (subprocess, mutual TLS), the real `sockgate monitor --store` (subprocess,
woken by NOTIFY, --poll 30 so a poll cannot be what delivers) and an HTTP webhook receiver in
this process. HOSTS simulated hosts, each with its own journal enrolled with the collector, each
a thread that every INTERVAL journals one rejected connect stamped with the wall clock (the
"rejected call"), seals and ships it with the shipper (`fleet.ship.Shipper.ship_once`, what
`fleet ship` and the daemon's shipper thread run). The rule alerts on every rejection.

Per alert: total = webhook receipt - entry ts; shipping = the collector's received_ns - entry ts
(journal append + seal + HTTPS + the segment's checks, up to the COPY); monitor = receipt -
received_ns (commit, NOTIFY, the monitor's read, engine, its state transaction, the POST).

With --as-daemon each host ships as `sockgate run --fleet-dir` does instead: entries go
through a writer thread that owns the journal (its own seal policy, seals only on the
writer thread), and the daemon's shipper thread (`fleet.ship.start_shipper`: poll, seal
requests rate-limited, sooner while a rejection waits) decides when to seal and ship. Only
the kernel part is left out (event to journal: bench/daemon_ingest.py).

    .venv/bin/python bench/fleet_alert.py [--hosts 10] [--rounds 40] [--interval 0.5] [--as-daemon]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests" / "fleet")]

import psycopg  # noqa: E402

import pgserver  # noqa: E402
from sockgate.journal import Code, Entry, EntryType, Journal, Outcome, Source  # noqa: E402

CLI = "import sys; from sockgate.cli import main; main(sys.argv[1:])"
ENV = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}

RULES = """
[monitor]
start = "beginning"
channels = ["hook"]
storm = 0

[channel.hook]
type = "webhook"
url = "{url}"

[[alert]]
name = "rejected"
kind = "every"
match = {{ type = "connect", outcome = "rejected" }}
suppress = "0"
message = "{{extra.fleet_host}}: {{user}} refused {{remote}}"
"""


class Receiver:
    def __init__(self) -> None:
        self.got: dict[str, tuple[int, dict]] = {}
        self.lock = threading.Lock()
        rec = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                now = time.time_ns()
                with rec.lock:
                    rec.got.setdefault(body["id"], (now, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


def wait_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit(f"collector exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("collector did not start")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def as_daemon(jdir: Path, fleet: Path, stop: threading.Event) -> tuple[queue.Queue, list[threading.Thread]]:
    """A host as the daemon runs it: a writer thread owning the journal (callables through a
    queue, None ends it) and the shipper thread asking that writer for seals."""
    from sockgate.fleet.ship import start_shipper

    writes: queue.Queue = queue.Queue()
    j = Journal.open(jdir)

    def writer() -> None:
        while (job := writes.get()) is not None:
            job(j)
        j.close()

    w = threading.Thread(target=writer, name=f"writer {jdir}")
    w.start()
    sh = start_shipper(fleet, jdir, stop, lambda m: None, request_seal=lambda: writes.put(lambda jj: jj.seal()))
    return writes, [w, sh]


def run(pg: pgserver.PgServer, tmp: Path, hosts: int, rounds: int, interval: float, daemon: bool = False) -> dict:
    from sockgate.fleet.collector import new_token
    from sockgate.fleet.ship import Shipper, enroll

    rec = Receiver()
    port = pgserver._free_port()
    state = tmp / "collector"
    clog, mlog = tmp / "collector.log", tmp / "monitor.log"
    procs = []
    try:
        with open(clog, "wb") as f:
            col = subprocess.Popen([sys.executable, "-c", CLI, "collector", "--db", pg.url, "--listen",
                                    f"127.0.0.1:{port}", "--state", str(state)], env=ENV, stdout=f, stderr=f)
        procs.append(col)
        wait_port(port, col, clog)
        shippers = []
        for a in range(hosts):
            h = tmp / f"host{a}"
            h.mkdir(mode=0o700)
            Journal.open(h / "journal").close()
            enroll(f"https://127.0.0.1:{port}", new_token(pg.url, state), f"host{a}", h / "fleet", h / "journal")
            shippers.append((h / "journal", Shipper(h / "fleet", h / "journal")))
        (tmp / "alerts.toml").write_text(RULES.format(url=rec.url))
        with open(mlog, "wb") as f:
            mon = subprocess.Popen([sys.executable, "-c", CLI, "monitor", "--store", pg.url, "--rules",
                                    str(tmp / "alerts.toml"), "--poll", "30"], env=ENV, stdout=f, stderr=f)
        procs.append(mon)
        for _ in range(300):
            if b"monitor: following" in mlog.read_bytes() or mon.poll() is not None:
                break
            time.sleep(0.1)
        if mon.poll() is not None:
            raise SystemExit(f"monitor exited: {mlog.read_text()[-2000:]}")
        time.sleep(1.0)

        def rejected(i: int, r: int) -> Entry:
            return Entry(Code.SOCKET, EntryType.CONNECT, time.time_ns(), Source.KERNEL, f"host{i}",
                         Outcome.REJECTED, "web-no-mail", 33, "www-data", 33, 1000 + r, "/usr/sbin/nginx",
                         "ipv4", "192.0.2.10", 40000 + r, f"10.9.{i}.{r % 250}", 25)

        def host(i: int, jdir: Path, sh: Shipper) -> None:
            with Journal.open(jdir) as j:
                nxt = time.monotonic() + interval * i / hosts   # spread the hosts over the interval
                for r in range(rounds):
                    time.sleep(max(0.0, nxt - time.monotonic()))
                    nxt += interval
                    j.append([rejected(i, r)])
                    j.seal()
                    sh.ship_once()

        def daemon_host(i: int, writes: queue.Queue) -> None:
            nxt = time.monotonic() + interval * i / hosts
            for r in range(rounds):
                time.sleep(max(0.0, nxt - time.monotonic()))
                nxt += interval
                writes.put(lambda j, e=rejected(i, r): j.append([e]))   # stamped when the call is refused

        stop = threading.Event()
        threads = []
        if daemon:
            for _, sh in shippers:
                sh.close()
            hosts_io = [as_daemon(tmp / f"host{a}" / "journal", tmp / f"host{a}" / "fleet", stop) for a in range(hosts)]
            ts = [threading.Thread(target=daemon_host, args=(i, w)) for i, (w, _) in enumerate(hosts_io)]
            threads = [t for _, tt in hosts_io for t in tt]
        else:
            ts = [threading.Thread(target=host, args=(i, jd, sh)) for i, (jd, sh) in enumerate(shippers)]
        t0 = time.monotonic()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        want = hosts * rounds
        end = time.monotonic() + 60
        while len(rec.got) < want and time.monotonic() < end:
            time.sleep(0.1)
        wall = time.monotonic() - t0
        stop.set()
        if daemon:
            for w, _ in hosts_io:
                w.put(None)
            for t in threads:
                t.join(30)
        else:
            for _, sh in shippers:
                sh.close()
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        rec.server.shutdown()
    with psycopg.connect(pg.url) as c:
        received = {(n, s): r for n, s, r in c.execute(
            "SELECT h.name, e.seq, e.received_ns FROM sockgate.entry e JOIN sockgate.host h ON h.id = e.host_id")}
    total, ship, mon_d = [], [], []
    for aid, (at, body) in rec.got.items():
        hostname, seq = aid.split("/", 1)[1].rsplit(":", 1)
        ts_ns = body["last_ts_ns"]
        got_ns = received[(hostname, int(seq))]
        total.append((at - ts_ns) / 1e6)
        ship.append((got_ns - ts_ns) / 1e6)
        mon_d.append((at - got_ns) / 1e6)
    return {"hosts": hosts, "alerts": len(rec.got), "want": want, "wall_s": wall, "total": total, "ship": ship,
            "monitor": mon_d}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=40, help="rejections per host")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between a host's rejections")
    ap.add_argument("--as-daemon", action="store_true",
                    help="ship as the daemon does (writer thread, shipper thread and its seal requests)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sockgate-bench-fleetalert-") as tmp:
        os.chmod(tmp, 0o700)
        with pgserver.PgServer(fsync=True) as pg:
            r = run(pg, Path(tmp), a.hosts, a.rounds, a.interval, daemon=a.as_daemon)
    print(f"fleet alert latency{' (hosts ship as the daemon does)' if a.as_daemon else ''}: "
          f"{r['alerts']} of {r['want']} alerts from {r['hosts']} hosts "
          f"({a.interval}s between a host's rejections) in {r['wall_s']:.1f}s")
    for k in ("total", "ship", "monitor"):
        xs = r[k]
        if xs:
            print(f"  {k:<8} p50 {statistics.median(xs):7.1f} ms   p99 {pct(xs, 99):7.1f} ms   max {max(xs):7.1f} ms")


if __name__ == "__main__":
    main()
