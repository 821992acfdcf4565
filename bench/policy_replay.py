"""Replay and learn bench: decisions per second and peak memory over a generated journal.

    .venv/bin/python bench/policy_replay.py                    # 300k entries over 7 days
    .venv/bin/python bench/policy_replay.py --count 10000000 --dir /var/tmp/sg-10m
    .venv/bin/python bench/policy_replay.py --dir /var/tmp/sg-1m --old /tmp/old/src   # old vs new

--old SRC runs every command a second time with another source tree (e.g. `git archive` of
an older commit, with the built _append module copied in), back to back with this one: on
a shared machine only numbers taken in the same run compare.

The journal is written through Journal.append (the real path, synchronous=OFF is not used)
from sockgate.policy.synth, once per --dir and reused. Then, each in a child process so its
peak RSS is its own: `policy learn` over it, `policy replay` of the learned policy (breaks
nothing: exit 0) and of a candidate that rejects one port. Reported: entries/s (wall) and
the child's CPU time (user + system, from wait4: steadier than wall time on a loaded
machine) and entries per CPU second, its peak RSS (VmHWM) and anonymous memory at exit.
Memory must not grow with the journal: compare two counts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sockgate.journal import Journal  # noqa: E402
from sockgate.policy.synth import decisions  # noqa: E402
from sockgate.journal import Filter  # noqa: E402
from sockgate.record import format_time, parse_time  # noqa: E402

CANDIDATE = """\
[[rule]]
name = "no-postgres"
exit = ["connect"]
remote_port = [5432]
action = "reject"
"""


def generate(jdir: Path, count: int, days: float = 7) -> float:
    """`count` synth decisions spread over the last `days` (ending a minute ago)."""
    t = time.monotonic()
    span = int(days * 86400 * 10**9) - 60 * 10**9
    with Journal.open(jdir, create=True, sync="OFF") as j:
        batch = []
        for e in decisions(count, 7, start_ns=time.time_ns() - span - 60 * 10**9, span_ns=span, hard=True):
            batch.append(e)
            if len(batch) == 10_000:
                j.append(batch)
                batch = []
        if batch:
            j.append(batch)
    return time.monotonic() - t


# The child prints its peak RSS (VmHWM) and its anonymous memory at exit: reads through
# mmap count file pages in RSS (the kernel's to drop) though the process holds no more.
# Not wait4's ru_maxrss: Linux starts a child's at its parent's peak, carried over fork
# and exec (this bench's own count() of a 10M journal made every child "peak" at 188 MiB).
_CHILD = """import atexit, sys
def anon():
    for line in open("/proc/self/status"):
        if line.startswith(("RssAnon", "VmHWM")):
            print(line.split(":")[0], line.split()[1], file=sys.stderr)
atexit.register(anon)
from sockgate.cli import main
main(sys.argv[1:])"""


def child(src: Path, out: Path, *args: str) -> tuple[int, float, float, int, int]:
    """(exit code, wall seconds, CPU seconds, peak RSS in KiB, anonymous RSS at exit in KiB) of
    `sockgate ARGS` run from the source tree `src`, its stdout to `out`."""
    env = dict(os.environ, PYTHONPATH=str(src))
    t = time.monotonic()
    with open(out, "wb") as f:
        p = subprocess.Popen([sys.executable, "-c", _CHILD, *args], env=env, stdout=f,
                             stderr=subprocess.PIPE, text=True)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    mem = {k: int(v) for k, _, v in (x.partition(" ") for x in err.splitlines()) if k in ("RssAnon", "VmHWM")}
    return (os.waitstatus_to_exitcode(status), time.monotonic() - t, usage.ru_utime + usage.ru_stime,
            mem.get("VmHWM", 0), mem.get("RssAnon", 0))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=300_000)
    ap.add_argument("--dir", type=Path, help="journal directory (generated once, reused)")
    ap.add_argument("--old", type=Path, help="also run each command from this source tree (old vs new)")
    ap.add_argument("--since", help="replay and learn from this time (default: 30 days ago; a journal "
                                    "made elsewhere, e.g. the console bench's, may be older)")
    ap.add_argument("--until", help="and up to this time (a journal still written to: old and new read the same)")
    a = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    jdir = a.dir or Path(tmp.name) / "journal"
    if not (jdir / "journal.json").exists():
        print(f"generating {a.count:,} entries: {generate(jdir, a.count):.1f}s")
    work = Path(tmp.name)
    with Journal.open(jdir, readonly=True) as j:
        count = j.count(Filter(since_ns=parse_time(a.since) if a.since else None,
                               until_ns=parse_time(a.until) if a.until else None))
    learned, cand = work / "learned-new.toml", work / "candidate.toml"
    cand.write_text(CANDIDATE)
    # one absolute start for every run, so old and new outputs compare byte for byte
    base = ("--journal", str(jdir), "--since", a.since or format_time(time.time_ns() - 30 * 86400 * 10**9),
            *(("--until", a.until) if a.until else ()))
    trees = [("new", ROOT / "src")] + ([("old", a.old)] if a.old else [])
    print(f"{count:,} entries in {jdir}")
    for what, args in (("learn", ("policy", "learn", *base, "-o")),
                       ("replay learned", ("policy", "replay", str(learned), *base, "--format", "json")),
                       ("replay candidate", ("policy", "replay", str(cand), *base, "--format", "json"))):
        results = []
        for tree, src in trees:
            out = work / f"{what.replace(' ', '-')}-{tree}.out"
            rc, secs, cpu, rss, anon = child(src, out, *args, *([str(work / f"learned-{tree}.toml")]
                                                                 if what == "learn" else []))
            print(f"{what:17} {tree:3} exit {rc}  {secs:6.1f}s {count / secs:>9,.0f}/s wall  "
                  f"CPU {cpu:6.1f}s {count / cpu:>9,.0f}/s  peak RSS {rss / 1024:.0f} MiB"
                  f"  (anonymous {anon / 1024:.0f} MiB)", flush=True)
            results.append((work / f"learned-{tree}.toml" if what == "learn" else out).read_bytes())
        if len(results) == 2:
            print(f"{'':17} old and new output {'identical' if results[0] == results[1] else 'DIFFER'}")
    print("(the learned policy breaks exactly the decisions it lists as not learned: the journal mixes in "
          "IBM i entries, unknown owners and vanished programs)")


if __name__ == "__main__":
    main()
