"""Replay and learn bench: decisions per second and peak memory over a generated journal.

    .venv/bin/python bench/policy_replay.py                    # 300k entries over 7 days
    .venv/bin/python bench/policy_replay.py --count 10000000 --dir /var/tmp/sg-10m

The journal is written through Journal.append (the real path, synchronous=OFF is not used)
from sockgate.policy.synth, once per --dir and reused. Then, each in a child process so its
peak RSS is its own: `policy learn` over it, `policy replay` of the learned policy (breaks
nothing: exit 0) and of a candidate that rejects one port. Reported: entries/s (wall) and
the child's peak RSS (ru_maxrss). Memory must not grow with the journal: compare two counts.
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


# The child prints its anonymous memory at exit: the receiver is read through mmap, so its
# pages count in RSS (file-backed, the kernel's to drop) though the process holds no more.
_CHILD = """import atexit, sys
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            print("ANON", line.split()[1], file=sys.stderr)
atexit.register(anon)
from sockgate.cli import main
main(sys.argv[1:])"""


def child(*args: str) -> tuple[int, float, int, int]:
    """(exit code, seconds, peak RSS in KiB, anonymous RSS at exit in KiB) of `sockgate ARGS`."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    t = time.monotonic()
    p = subprocess.Popen([sys.executable, "-c", _CHILD, *args], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    anon = next((int(x.split()[1]) for x in err.splitlines() if x.startswith("ANON ")), 0)
    return os.waitstatus_to_exitcode(status), time.monotonic() - t, usage.ru_maxrss, anon


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=300_000)
    ap.add_argument("--dir", type=Path, help="journal directory (generated once, reused)")
    a = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    jdir = a.dir or Path(tmp.name) / "journal"
    if not (jdir / "journal.json").exists():
        print(f"generating {a.count:,} entries: {generate(jdir, a.count):.1f}s")
    work = Path(tmp.name)
    learned, cand = work / "learned.toml", work / "candidate.toml"
    cand.write_text(CANDIDATE)
    base = ("--journal", str(jdir), "--since", "30d")
    for what, args in (("learn", ("policy", "learn", *base, "-o", str(learned))),
                       ("replay learned", ("policy", "replay", str(learned), *base, "--format", "json")),
                       ("replay candidate", ("policy", "replay", str(cand), *base, "--format", "json"))):
        rc, secs, rss, anon = child(*args)
        print(f"{what:17} exit {rc}  {secs:6.1f}s  {a.count / secs:>9,.0f} entries/s  peak RSS {rss / 1024:.0f} MiB"
              f"  (anonymous {anon / 1024:.0f} MiB)")
    print("(the learned policy breaks exactly the decisions it lists as not learned: the journal mixes in "
          "IBM i entries, unknown owners and vanished programs)")


if __name__ == "__main__":
    main()
