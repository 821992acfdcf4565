"""Policy load cost: `policy check`, compile, install + atomic swap, SIGHUP reload, daemon RSS.

    .venv/bin/python bench/policy_load.py [--rules 10000] [--seed 20261201] [--json]

The policy is bench/enforce.py's seeded random mix (all three exits, ~60% user-scoped,
v4 /24 and v6 /48 remotes, port ranges, protocols): the shape issue 11 measures, not one
that suits the compiler. Measured, each in the same run:
  check        `sockgate policy check FILE` as a user runs it (process start included)
  parse        parse_policy() in this process
  compile      compile_policy() in this process
  install      tables.install() into a loaded, unattached object (write the inactive slot +
               flip + RCU wait), twice: the second is a reload over the other slot
  daemon       `sockgate run` in the bench's own cgroup + netns: start to "loaded" (log),
               SIGHUP to the next "loaded", VmRSS after 2 s idle and VmHWM (peak)
Needs root. Everything is made in the bench's own cgroup, netns and pin dir, and removed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

from enforce import leave_as_found, sg_policy_mix, system_state  # noqa: E402
from sockgate.kernel import tables  # noqa: E402
from sockgate.kernel.loader import Gate, cgroup2_root, remove_pins  # noqa: E402
from sockgate.policy.compile import compile_policy  # noqa: E402
from sockgate.policy.parse import parse_policy  # noqa: E402

SOCKGATE = [sys.executable, "-c", "from sockgate.cli import main; main()"]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def wait_for(p: subprocess.Popen, needle: str, timeout: float = 120) -> float:
    """Seconds until a daemon's stderr has a line containing needle."""
    t0 = time.perf_counter()
    os.set_blocking(p.stderr.fileno(), False)
    seen = []
    while time.perf_counter() - t0 < timeout:
        line = p.stderr.readline()
        if line:
            seen.append(line)
            if needle in line:
                return time.perf_counter() - t0
        elif p.poll() is not None:
            break
        else:
            time.sleep(0.01)
    raise RuntimeError(f"daemon never said {needle!r}:\n{''.join(seen)}")


def alive(p: subprocess.Popen) -> subprocess.Popen:
    if p.poll() is not None:
        raise SystemExit(f"the daemon exited ({p.returncode}):\n{p.stderr.read()}")
    return p


def rss_kib(pid: int) -> dict[str, int]:
    st = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: int(st[k].split()[0]) for k in ("VmRSS", "VmHWM")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=20261201)
    ap.add_argument("--json", action="store_true", help="write bench/out/policy_load.json")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    text = sg_policy_mix(a.rules, a.seed)
    res: dict = {"rules": a.rules, "seed": a.seed}
    tmp = Path(tempfile.mkdtemp(prefix="sgbench-load-"))
    path = tmp / "mix.toml"
    path.write_text(text)
    r, res["check_s"] = timed(lambda: subprocess.run(SOCKGATE + ["policy", "check", str(path)],
                                                     capture_output=True, text=True))
    if r.returncode != 0:
        print(r.stdout, r.stderr, file=sys.stderr)
        return 1
    policy, res["parse_s"] = timed(lambda: parse_policy(text, str(path)))
    compiled, res["compile_s"] = timed(lambda: compile_policy(policy))
    res["bitmaps"] = len(compiled.bitmaps)

    found = system_state()
    tag = f"sgbench-load-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    cg = os.path.join(cgroup2_root(), tag)
    pin = f"/sys/fs/bpf/{tag}"
    d = None
    try:
        gate = Gate.load(pin, attach=False)
        try:
            res["install_s"] = round(tables.install(gate, compiled)["seconds"], 3)
            res["reinstall_s"] = round(tables.install(gate, compiled)["seconds"], 3)
        finally:
            gate.close()
            remove_pins(pin)
        os.mkdir(cg)
        subprocess.run(["ip", "netns", "add", tag], check=True)
        d = subprocess.Popen(SOCKGATE + ["run", "--policy", str(path), "--no-journal", "--scope-cgroup", cg,
                                         "--netns", f"/run/netns/{tag}", "--pin-dir", pin],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        res["daemon_start_to_loaded_s"] = round(wait_for(d, "generation 1,"), 3)
        time.sleep(2)
        res["daemon_rss_idle_kib"] = rss_kib(alive(d).pid)["VmRSS"]
        t0 = time.perf_counter()
        d.send_signal(signal.SIGHUP)
        wait_for(d, "generation 2,")
        res["sighup_to_loaded_s"] = round(time.perf_counter() - t0, 3)
        time.sleep(2)
        mem = rss_kib(alive(d).pid)
        res["daemon_rss_after_reload_kib"], res["daemon_rss_peak_kib"] = mem["VmRSS"], mem["VmHWM"]
    finally:
        if d and d.poll() is None:
            d.send_signal(signal.SIGTERM)
            try:
                d.wait(timeout=30)
            except subprocess.TimeoutExpired:
                d.kill()
        remove_pins(pin)
        subprocess.run(["ip", "netns", "del", tag], capture_output=True)
        try:
            os.rmdir(cg)
        except OSError:
            pass
        path.unlink(missing_ok=True)
        tmp.rmdir()
        leave_as_found(found)
    for k in ("check_s", "parse_s", "compile_s"):
        res[k] = round(res[k], 3)
    print(json.dumps(res, indent=1))
    if a.json:
        (HERE / "out").mkdir(exist_ok=True)
        (HERE / "out" / "policy_load.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
