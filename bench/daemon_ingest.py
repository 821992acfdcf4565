"""Sustained ingest: the real daemon journals every decision while the fastest loopback
connect loop this machine runs hammers it (issue 3, bench (a)).

    .venv/bin/python bench/daemon_ingest.py              # 60 s
    .venv/bin/python bench/daemon_ingest.py --seconds 20 --json

A `sockgate run` process (policy: 10 rules, audit_levels = *NETCMN, so every connect and
every accept is journaled; synchronous=FULL commits) is scoped to the bench's own cgroup
and netns; bench/loadgen.c runs there for --seconds. Afterwards the daemon is given time
to drain and stopped cleanly, and the numbers come from the kernel's counters (decisions
selected for the journal, ring-buffer drops) and from the journal itself (entries
committed), so "lost" is measured, not inferred. The journal is verified at the end.

    .venv/bin/python bench/daemon_ingest.py --udp        # *NETUDP, 60 s of UDP datagrams

With --udp (issue 11: "with *NETUDP journaling on, 0 events lost over 60 s and journal
growth per million datagrams"): audit_levels = *NETUDP and loadgen -u (one unconnected
socket sendto()s 64-byte datagrams to a receiver in the same process). Each flow is
journaled as its first decision plus a summary per second with the kernel's exact count,
so "lost" is checked by count: the O entries' datagrams (1 per first entry + the summaries'
counts) must equal the datagrams sent, the I entries' the datagrams received. Reported:
entries, journal bytes on disk, and bytes per million datagrams.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import enforce as eb  # noqa: E402  (scope setup, loadgen build/run, cleanup)

from sockgate.journal import Journal  # noqa: E402

POLICY = """
audit_levels = ["*NETCMN"]
""" + "".join(f"""
[[rule]]
name = "r{i}"
exit = "connect"
remote = ["10.{i}.0.0/16"]
action = "reject"
""" for i in range(10))


UDP_POLICY = """
audit_levels = ["*NETUDP"]
"""


def sockgate(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from sockgate.cli import main; main()", *args],
                          capture_output=True, text=True, **kw)


@contextlib.contextmanager
def bench_daemon(name: str, policy_text: str, journaled: bool = True):
    """`sockgate run` with policy_text in the bench's own cgroup + netns, loaded; yields
    (config, pin dir, journal dir, daemon). Afterwards everything it made is removed."""
    eb.build_loadgen()
    eb.remove_stale()
    c = eb.Config(name, "daemon journals decisions", "none")
    tag = str(os.getpid())
    out = eb.OUT / f"{name}-{tag}"
    out.mkdir(parents=True, exist_ok=True)
    policy = out / "policy.toml"
    policy.write_text(policy_text)
    journal = out / "journal"
    daemon = None
    found = eb.system_state()
    try:
        eb.setup(c, tag)
        pin = c.pin = f"/sys/fs/bpf/{c.ns}"
        daemon = subprocess.Popen(
            [sys.executable, "-c", "from sockgate.cli import main; main()", "run", "--policy", str(policy),
             *(["--journal", str(journal)] if journaled else ["--no-journal"]), "--scope-cgroup", c.cg,
             "--netns", f"/run/netns/{c.ns}", "--pin-dir", pin],
            stderr=subprocess.PIPE, text=True)
        while "generation 1," not in (line := daemon.stderr.readline()):
            if not line and daemon.poll() is not None:
                raise RuntimeError("daemon did not start")
        yield c, pin, journal, daemon
    finally:
        if daemon and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        sockgate("unload", "--pin-dir", f"/sys/fs/bpf/{c.ns}")
        eb.teardown(c)
        eb.leave_as_found(found)
        shutil.rmtree(out, ignore_errors=True)  # the journal (~2 GB per minute); results are printed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--json", action="store_true", help="also write bench/out/daemon_ingest.json")
    ap.add_argument("--no-journal", action="store_true",
                    help="control run: the daemon consumes every event from the ring buffer but journals nothing "
                         "(drops then come from the kernel side alone)")
    ap.add_argument("--udp", action="store_true", help="*NETUDP journaling of a UDP sendto load (see above)")
    a = ap.parse_args()
    if a.udp:
        return udp(a)
    with bench_daemon("ingest", POLICY, journaled=not a.no_journal) as (c, pin, journal, daemon):
        before = json.loads(sockgate("status", "--json", "--pin-dir", pin).stdout)["counters"]
        t0, t0_ns = time.monotonic(), time.time_ns()
        lg = eb.loadgen(c, a.seconds)
        elapsed = time.monotonic() - t0
        after_load = json.loads(sockgate("status", "--json", "--pin-dir", pin).stdout)["counters"]
        # let the daemon drain what is buffered, then stop it cleanly (seals the journal)
        drain_t0 = time.monotonic()
        time.sleep(1.0)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=600)
        drain_s = time.monotonic() - drain_t0
        if a.no_journal:
            dropped = after_load["dropped"] - before["dropped"]
            res = {"control": "no journal", "seconds": round(elapsed, 1),
                   "loadgen_conn_per_s": lg.get("conn_per_s") or lg.get("rate"),
                   "generated_per_s": round((after_load["selected"] - before["selected"]) / elapsed),
                   "dropped_in_kernel": dropped}
            print(json.dumps(res, indent=1))
            return 0
        with Journal.open(journal, readonly=True) as j:
            journaled = sum(1 for e in j.entries() if e.code.value == "SK")
            gap_list = [(e.ts_ns, e.extra.get("dropped", 0)) for e in j.entries() if e.type.value == "gap"]
            gaps = sum(n for _, n in gap_list)
        verify = sockgate("journal", "verify", "--journal", str(journal), "--key", str(journal / "verification.key"))
        selected = after_load["selected"] - before["selected"]
        dropped = after_load["dropped"] - before["dropped"]
        res = {
            "seconds": round(elapsed, 1),
            "loadgen_conn_per_s": lg.get("conn_per_s") or lg.get("rate"),
            "generated_events": selected,
            "generated_per_s": round(selected / elapsed),
            "journaled_entries": journaled,
            "journaled_per_s_during_load": round(journaled / elapsed),
            "dropped_in_kernel": dropped,
            "gap_records_total": gaps,
            "gaps_at_s": [[round((ts - t0_ns) / 1e9, 2), n] for ts, n in gap_list][:20],
            "lost": selected - journaled,
            "drain_after_load_s": round(drain_s, 1),
            "verify_rc": verify.returncode,
        }
        print(json.dumps(res, indent=1))
        print(f"\ngenerated {res['generated_per_s']:,}/s  journaled {res['journaled_per_s_during_load']:,}/s  "
              f"lost {res['lost']:,} (kernel drops {dropped:,}, declared in gap records: {gaps:,})  "
              f"verify rc={verify.returncode}")
        if a.json:
            (eb.OUT / "daemon_ingest.json").write_text(json.dumps(res, indent=1))
        return 0


def udp(a) -> int:
    eb.UDP = True
    with bench_daemon("ingest-udp", UDP_POLICY) as (c, pin, journal, daemon):
        before = json.loads(sockgate("status", "--json", "--pin-dir", pin).stdout)["counters"]
        t0 = time.monotonic()
        lg = eb.loadgen(c, a.seconds, n=10**10)   # stops on --seconds, not on a count
        elapsed = time.monotonic() - t0
        after = json.loads(sockgate("status", "--json", "--pin-dir", pin).stdout)["counters"]
        time.sleep(2.5)   # the flow sweep (every second) turns the last counts into summaries
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=600)
        sent = lg["conns"] + lg.get("warm", 0)
        per_type = {"O": [0, 0], "I": [0, 0]}   # [entries, datagrams]
        with Journal.open(journal, readonly=True) as j:
            entries = 0
            for e in j.entries():
                entries += 1
                t = e.type.value
                if t in per_type:
                    per_type[t][0] += 1
                    per_type[t][1] += int(e.extra.get("count", 1)) if e.extra.get("flow") == "summary" else 1
        size = sum(f.stat().st_size for f in journal.iterdir() if f.is_file())
        verify = sockgate("journal", "verify", "--journal", str(journal), "--key", str(journal / "verification.key"))
        res = {
            "seconds": round(elapsed, 1),
            "datagrams_sent": sent,
            "datagrams_per_s": lg.get("conn_per_s"),
            "O_entries": per_type["O"][0], "O_datagrams_journaled": per_type["O"][1],
            "I_entries": per_type["I"][0], "I_datagrams_journaled": per_type["I"][1],
            "lost_outbound": sent - per_type["O"][1],
            "journal_entries": entries,
            "journal_bytes": size,
            "bytes_per_million_datagrams": round(size / (sent / 1e6)),
            "dropped_events": after["dropped"] - before["dropped"],
            "counters_after": after,
            "verify_rc": verify.returncode,
        }
        print(json.dumps(res, indent=1))
        print(f"\nsent {sent:,} datagrams ({res['datagrams_per_s']:,}/s); journaled O {per_type['O'][1]:,} in "
              f"{per_type['O'][0]:,} entries, I {per_type['I'][1]:,} in {per_type['I'][0]:,}; lost outbound "
              f"{res['lost_outbound']:,}; journal {size:,} bytes = {res['bytes_per_million_datagrams']:,} per million "
              f"datagrams; verify rc={verify.returncode}")
        if a.json:
            (eb.OUT / "daemon_ingest_udp.json").write_text(json.dumps(res, indent=1))
        return 0


if __name__ == "__main__":
    sys.exit(main())
