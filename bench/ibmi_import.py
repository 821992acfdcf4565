"""Import rate of a DSPJRN *TYPE5 SK outfile (EBCDIC, CCSID 37), in records/s.

    PYTHONPATH=src .venv/bin/python bench/ibmi_import.py                 # 1,000,000 records
    PYTHONPATH=src .venv/bin/python bench/ibmi_import.py --records 200000 --profile

Reports two numbers, separately:
  parse            file -> list of journal Entry objects (sockgate.ibmi only)
  parse+journal    `sockgate ibmi import` as a user runs it: parse, atomic append into a
                   fresh journal (hash chain, seals, SQLite), the SG import record
The input is generated once from the documented layout (sockgate.ibmi.synth) and cached.
"""

from __future__ import annotations

import argparse
import cProfile
import mmap
import os
import pstats
import shutil
import sys
import tempfile
import time

from sockgate.ibmi import layout, synth
from sockgate.ibmi.importer import import_file, parse_all
from sockgate.ibmi.mapping import LocalTime

TARGET = 250_000


def make_file(path: str, n: int) -> None:
    """n records: 1,000 varied templates (every entry type, IPv4/IPv6) with a unique,
    increasing sequence number and timestamp (2 ms apart) patched into each copy."""
    lay = layout.TYPE5
    L = lay.full_length
    templates = [synth.record(synth.sample(i)) for i in range(1000)]
    seq, ts = lay["JOSEQN"], lay["JOTSTP"]
    base = 1_795_500_000  # 2026-11-24
    with open(path + ".tmp", "wb") as out:
        for c0 in range(0, n, 10_000):
            block = bytearray(b"".join(templates[i % 1000] for i in range(c0, min(n, c0 + 10_000))))
            for k in range(c0, min(n, c0 + 10_000)):
                o = (k - c0) * L
                block[o + seq.start:o + seq.end] = f"{k + 1:020d}".encode("cp037")
                s, ms = divmod(k * 2, 1000)
                t = time.gmtime(base + s)
                block[o + ts.start:o + ts.end] = (
                    f"{t.tm_year}-{t.tm_mon:02d}-{t.tm_mday:02d}-{t.tm_hour:02d}.{t.tm_min:02d}."
                    f"{t.tm_sec:02d}.{ms * 1000:06d}").encode("cp037")
            out.write(block)
    os.replace(path + ".tmp", path)


def rate(n: int, secs: float) -> str:
    return f"{n:,} records in {secs:.2f} s = {n / secs:,.0f} records/s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--file", help="input file (default: a cached one in the temp dir)")
    ap.add_argument("--parse-only", action="store_true", help="skip the journal run")
    ap.add_argument("--profile", action="store_true", help="cProfile the parse, top 15")
    ap.add_argument("--repeat", type=int, default=3, help="parse runs (best and median shown)")
    args = ap.parse_args()

    path = args.file or os.path.join(tempfile.gettempdir(), f"sockgate-bench-sk5-{args.records}.bin")
    L = layout.TYPE5.full_length
    if not os.path.exists(path) or os.path.getsize(path) != args.records * L:
        t = time.perf_counter()
        make_file(path, args.records)
        print(f"generated {path} ({os.path.getsize(path) / 1e6:,.0f} MB) in "
              f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
    print(f"input: {args.records:,} *TYPE5 SK records of {L} bytes, CCSID 37; "
          f"{os.cpu_count()} CPUs (shared)")

    with open(path, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    runs = []
    for _ in range(args.repeat):
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
        t, c = time.perf_counter(), time.process_time()
        entries = parse_all(data, fmt="type5", clock=LocalTime("UTC"), file=path)
        runs.append((time.perf_counter() - t, time.process_time() - c))
        if args.profile:
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        assert len(entries) == args.records
        del entries
    wall, cpu = min(runs)
    print(f"parse:          {rate(args.records, wall)} (CPU {args.records / cpu:,.0f}/s; "
          f"best of {len(runs)}, median {args.records / sorted(runs)[len(runs) // 2][0]:,.0f}/s)"
          f"  [target {TARGET:,}/s]")

    if args.parse_only:
        return
    jdir = tempfile.mkdtemp(prefix="sockgate-bench-journal-")
    try:
        t, c = time.perf_counter(), time.process_time()
        s = import_file(path, os.path.join(jdir, "j"), fmt="type5", utc_offset="UTC")
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        assert s.imported == args.records, s
        print(f"parse+journal:  {rate(s.imported, wall)} (CPU {s.imported / cpu:,.0f}/s)"
              f"  [target {TARGET:,}/s]")
    finally:
        shutil.rmtree(jdir, ignore_errors=True)


if __name__ == "__main__":
    main()
