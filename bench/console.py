"""Console bench: a big journal (bench/journal_query.py's generator), the real `sockgate
console` over it, Debian's chromium as the browser.

    .venv/bin/python bench/console.py                        # 10,000,000 entries (generates ~3 min)
    .venv/bin/python bench/console.py --count 1000000 --dir /tmp/cb
    .venv/bin/python bench/console.py --reuse                # the journal from a previous run

Measured:
  (1) first page: GET /live (the newest 100 entries), /live?outcomes=rejected, an outcome
      with no entries and a user with none, server round trip (best of --repeat), and a fresh
      browser's first load of /live                                         target < 1 s
  (2) a 7-day chart: /api/chart over 7 days by outcome and rejections by rule, the server's
      own time (server_ms, best of --repeat): from the rows while the rollup is being built
      (a first start, empty --cache-dir), from the rollup, and after a restart (the rollup the
      first run kept in --cache-dir)                                         target < 500 ms
  (3) live latency: --live entries appended by a journal writer at ~20/s, time from append()
      returning (committed) to the row arriving in the browser's Live page, p50/p99/max; split
      at the server's send time (the stream message's `at`) into the server's part and the
      transport + browser part
                                                                             target p99 < 200 ms
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "console"))

from journal_query import DAY, T0, best, generate  # noqa: E402

from consolekit import Console, decision, free_port  # noqa: E402
from sockgate.journal import Journal  # noqa: E402
from sockgate.record import Outcome, format_time  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10_000_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--dir", type=Path, default=ROOT / "bench/out/console")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--live", type=int, default=200, help="entries appended for the latency measurement")
    a = ap.parse_args()

    if not a.reuse:
        shutil.rmtree(a.dir, ignore_errors=True)
        generate(a.dir, a.count, a.days, 1)
    with Journal.open(a.dir, readonly=True) as j:
        n = j.last_seq
    size = sum(f.stat().st_size for f in a.dir.iterdir())
    print(f"journal: {n:,} entries, {size / 2**30:.2f} GiB")

    cache = tempfile.TemporaryDirectory(prefix="console-bench-cache-")   # empty: a first start
    port = free_port()
    started = time.perf_counter()
    c = Console("--journal", a.dir, "--listen", f"127.0.0.1:{port}", "--cache-dir", cache.name,
                url=f"http://127.0.0.1:{port}")
    since = T0 + 10 * DAY
    q = f"since={format_time(since)}&until={format_time(since + 7 * DAY)}"
    try:
        h = c.client
        startup = time.perf_counter() - started
        # the newest 100; the newest 100 rejections; an outcome with no entries (its index, not a
        # walk through the journal); a user with none (no index: a whole scan, the worst case)
        for path in ("/live", "/live?outcomes=rejected", "/live?outcomes=failed", "/live?users=nobody"):
            t, r = best(lambda: h.get(path), a.repeat)
            assert r.status_code == 200 and ("<tr" in r.text or "no matching entries" in r.text)
            print(f"(1) GET {path}: {t * 1e3:.0f} ms  (target < 1000 ms)")
        charts = (("outcome", ""), ("rule", "&outcomes=rejected&outcomes=audit-rejected"))

        def measure(want: str) -> None:
            for by, extra in charts:
                ms = []
                for _ in range(a.repeat if want == "rollup" else 1):
                    r = h.get(f"/api/chart?by={by}{extra}&{q}", timeout=120)
                    assert r.status_code == 200, r.text[:300]
                    ms.append(r.json()["server_ms"])
                body = r.json()
                print(f"(2) 7-day chart by {by} from the {body['source']}: server {min(ms):.0f} ms best, "
                      f"{statistics.median(ms):.0f} ms median ({len(body['t'])} buckets of {body['step']} s, "
                      f"{len(body['series'])} series)  (target < 500 ms)")

        t0 = time.perf_counter()
        measure("rows")      # while the rollup is still being built (if it is): straight from the rows
        while h.get(f"/api/chart?by=outcome&{q}", timeout=120).json()["source"] != "rollup":
            time.sleep(0.5)
        print(f"    rollup ready {time.perf_counter() - t0 + startup:.1f} s after the console started")
        measure("rollup")
        latency(a, c)
    finally:
        c.stop()   # keeps the rollup in the cache directory
    # a restart: the rollup kept by the first run, plus the entries appended since
    started = time.perf_counter()
    c = Console("--journal", a.dir, "--listen", f"127.0.0.1:{port}", "--cache-dir", cache.name,
                url=f"http://127.0.0.1:{port}")
    try:
        while (body := c.client.get(f"/api/chart?by=outcome&{q}", timeout=120).json())["source"] != "rollup":
            time.sleep(0.05)
        print(f"(2) restart: rollup ready {time.perf_counter() - started:.1f} s after the console started "
              f"(kept in --cache-dir), a 7-day chart by outcome from it: server {body['server_ms']:.0f} ms")
    finally:
        c.stop()
        cache.cleanup()


def latency(a, c) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        ctx = p.chromium.launch_persistent_context(profile, executable_path="/usr/bin/chromium", args=ARGS,
                                                   headless=True)
        page = ctx.new_page()
        loads = []
        for i in range(3):   # the first load also starts the browser's renderer
            t = time.perf_counter()
            page.goto(f"{c.url}/live", wait_until="load")
            loads.append((time.perf_counter() - t) * 1e3)
            if i == 0:
                first = page.evaluate(NAV_TIMING)
        print(f"(1) browser load of /live: first {loads[0]:.0f} ms, then {min(loads[1:]):.0f} ms  (target < 1000 ms)")
        print("    first load, the page's own navigation timing (ms from navigation start): "
              + ", ".join(f"{k} {v:.0f}" for k, v in first["nav"].items()))
        for r in first["resources"]:
            print(f"      {r['name']}: {r['size']:,} bytes, {r['start']:.0f} -> {r['end']:.0f} ms")
        expect(page.locator("#status")).to_have_text("live", timeout=10_000)
        appended: dict[int, float] = {}
        rnd = random.Random(1)
        with Journal.open(a.dir) as j:
            for _ in range(a.live):
                e = decision(time.time_ns(), outcome=Outcome.REJECTED, rule="no-mail", port=25)
                seq = j.append([e])
                appended[seq] = time.time() * 1000
                time.sleep(rnd.uniform(0.02, 0.08))
        time.sleep(1)
        seen = page.evaluate("window.sgSeen")
        ctx.close()
    got = [(seen[str(s)][0] - t, seen[str(s)][1] - t, seen[str(s)][0] - seen[str(s)][1])
           for s, t in appended.items() if str(s) in seen]
    missing = len(appended) - len(got)
    for i, what in enumerate(("journal -> browser", "  of which journal -> server sends",
                              "  of which server sends -> browser")):
        lat = sorted(g[i] for g in got)
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        print(f"(3) live latency {what} over {len(lat)} entries: p50 {statistics.median(lat):.0f} ms, "
              f"p99 {p99:.0f} ms, max {lat[-1]:.0f} ms" + (f", missing {missing}  (target p99 < 200 ms)" if not i else ""))


# What a fresh browser spends on the first load: the navigation's phases and each resource.
NAV_TIMING = """() => {
  const n = performance.getEntriesByType("navigation")[0];
  const nav = {request: n.requestStart, first_byte: n.responseStart, html_done: n.responseEnd,
               dom_content_loaded: n.domContentLoadedEventEnd, load: n.loadEventEnd};
  const resources = performance.getEntriesByType("resource").map(r => (
    {name: new URL(r.name).pathname, size: r.encodedBodySize, start: r.startTime, end: r.responseEnd}));
  return {nav, resources};
}"""


if __name__ == "__main__":
    main()
