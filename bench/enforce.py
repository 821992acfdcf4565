"""Enforcement cost: loopback connect+accept rate with and without sockgate, vs nftables.

    .venv/bin/python bench/enforce.py              # full run (7 rounds x 4 s per config)
    .venv/bin/python bench/enforce.py --quick      # 2 rounds x 1 s, a smoke test
    .venv/bin/python bench/enforce.py --json       # also write bench/out/enforce.json
    .venv/bin/python bench/enforce.py --udp        # unconnected UDP sendto of 64-byte datagrams instead

Needs root, gcc, iproute2, nftables, bpftool (optional: /proc fdinfo is the fallback).

The load generator (bench/loadgen.c, compiled into bench/out/) does connect, accept, close
(client with SO_LINGER 0) on 127.0.0.1 in one thread and prints conn/s and the CPU time it
used. Every configuration gets its OWN network namespace and cgroup v2 child, created once
at the start, so the rounds only run the load generator: configurations are interleaved
(the order rotates each round) and the median per configuration is reported, because the
machine is shared and noisy. Besides wall-clock conn/s, the CPU time of the load
generator per connect is reported (on loopback the whole handshake, softirqs included,
runs in the caller's context): it does not count time the process spent waiting for a
CPU, so it is the steadier number on a loaded machine.

Configurations:
  none          no programs, no nft rules in this cgroup/netns
  sg-10         sockgate, 10 rules, enforce, audit_levels = ["*NETFAIL"] (no rejections: no events)
  sg-10k        sockgate, 10,000 rules that never match the traffic, interleaved so that every
                64-rule word of every dimension has candidates but their AND is empty: every
                decision scans all 157 words to the default (the bit-vector worst case).
                Rules: 5,000 "reject connect+accept from/to 10.a.b.0/24" + 5,000 "reject
                connect to port 20000+k" (every 10th also user 4242)
  sg-10k-last   the same 9,999 rules + a 10,000th that matches (allow 127.0.0.0/8) with the
                connect/accept defaults set to reject: the match is the last rule
  sg-10k-typ    10,000 rules shaped like a real block list: 9,990 "reject 10.a.b.0/24" then
                10 user/port rules; the summary words prune the scan to one word (diagnostic:
                table size without the scan)
  nft-10        nftables, the same 10 rules: output chain (daddr /24 reject, tcp dport reject)
                + input chain (saddr /24 reject), one rule per sockgate rule
  nft-10k       nftables, the same 10,000 rules as a linear chain (15,000 nft rules: the
                5,000 address rules are in output and input, as sockgate's apply to both)
  nft-10k-set   nftables as an expert writes it: an interval set of the 5,000 /24s, a set
                of the ports, 4 rules
  sg-mix-10k-shadow  sg-mix-10k enforcing, and a second 10,000-rule seeded random policy (another
                seed) loaded as its shadow: every decision is made by both (shadow mode's cost)
  sg-10k-cmn    sg-10k with every decision journaled (*NETCMN) and an EventReader thread in
                this process draining and decoding the ring buffer (skip with --no-journal)

Afterwards kernel.bpf_stats_enabled is set to 1 for a short extra phase (and restored) to
read run_time_ns / run_cnt of the connect4 and sk_lookup programs (`bpftool prog show`).

Safety: nothing is attached outside the bench's own cgroups and netns; nft runs only with
`ip netns exec`; everything is detached, unpinned and deleted in `finally`, and leftovers of
a killed earlier run (names sgbench-<dead pid>-*) are removed at start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

from sockgate.kernel import tables  # noqa: E402
from sockgate.kernel.events import EventReader  # noqa: E402
from sockgate.kernel.loader import Gate, bpffs_mounted, cgroup2_root, remove_pins  # noqa: E402
from sockgate.policy.compile import compile_policy  # noqa: E402
from sockgate.policy.parse import parse_policy  # noqa: E402

OUT = HERE / "out"
LOADGEN_SRC = HERE / "loadgen.c"
LOADGEN = OUT / "loadgen"
PORT = 7777
PREFIX = "sgbench"
BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
STAT_PROGS = {"sg_connect4": "connect4", "sg_accept": "sk_lookup", "sg_sendmsg4": "sendmsg4",
              "sg_ingress": "ingress", "sg_egress": "egress", "sg_release": "release", "sg_listen_cb": "sockops"}
UDP = False  # --udp: the load is unconnected sendto() of 64-byte datagrams


# --------------------------------------------------------------------------- rule sets


def sg_policy(n: int, *, last_matches: bool = False, levels: str = "*NETFAIL") -> str:
    """n rules that never match 127.0.0.1:PORT (see the module doc); with last_matches the
    n-th rule is replaced by one that does, and the defaults reject."""
    out = ['mode = "enforce"', f'audit_levels = ["{levels}"]', ""]
    if last_matches:
        out += ["[defaults]", 'connect = "reject"', 'listen = "allow"', 'accept = "reject"', ""]
    body = n - 1 if last_matches else n
    for i in range(body):
        k = i // 2
        if i % 2 == 0:
            out.append(f'[[rule]]\nname = "net-{k}"\nexit = ["connect", "accept"]\n'
                       f'remote = "10.{k >> 8}.{k & 255}.0/24"\naction = "reject"\n')
        else:
            user = '\nuser = "4242"' if k % 10 == 0 else ""
            out.append(f'[[rule]]\nname = "port-{k}"\nexit = "connect"\nremote_port = {20000 + k}{user}\n'
                       f'action = "reject"\n')
    if last_matches:
        out.append('[[rule]]\nname = "loopback-ok"\nexit = ["connect", "accept"]\nremote = "127.0.0.0/8"\n'
                   'action = "allow"\n')
    return "\n".join(out)


def sg_policy_typical(n: int, tail: int = 10) -> str:
    """n - tail rules rejecting distinct remote /24s (connect and accept), then `tail`
    user/port rules: the shape of a real block list. The traffic's remote address hits
    only the tail rules' wildcard, so the summary words prune all but the last word."""
    out = ['mode = "enforce"', 'audit_levels = ["*NETFAIL"]', ""]
    for k in range(n - tail):
        out.append(f'[[rule]]\nname = "net-{k}"\nexit = ["connect", "accept"]\n'
                   f'remote = "10.{k >> 8}.{k & 255}.0/24"\naction = "reject"\n')
    for k in range(tail):
        user = '\nuser = "4242"' if k % 2 == 0 else ""
        out.append(f'[[rule]]\nname = "port-{k}"\nexit = "connect"\nremote_port = {20000 + k}{user}\n'
                   f'action = "reject"\n')
    return "\n".join(out)


def sg_policy_mix(n: int, seed: int = 20261201) -> str:
    """n seeded random rules of every shape, not the ones that suit the design: all three
    exits, ~60% user-scoped (2,000 distinct uids, some negated), ~15% group-scoped (300 gids), remotes v4
    /24 and v6 /48 (some lists, some negated), local /24s for listen/accept, port ranges
    and single ports, a protocol on ~20%, allow and reject mixed. Ports never cover the
    bench port and remotes stay in 10/8 and fd00::/8, so the traffic decides by default
    after scanning whatever the summaries leave (the bench's own load must not be refused)."""
    import random

    rnd = random.Random(seed)
    UIDS = rnd.sample(range(1000, 61000), 2000)  # a large site's distinct users and groups
    GIDS = rnd.sample(range(1000, 61000), 300)

    def port():
        lo = rnd.choice([rnd.randint(1024, PORT - 200), rnd.randint(PORT + 1, 60000)])
        return str(lo) if rnd.random() < 0.5 else f"{lo}-{min(lo + rnd.randint(1, 150), 65535 if lo > PORT else PORT - 1)}"

    def remote():
        if rnd.random() < 0.6:
            return f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.0/24"
        return f"fd00:{rnd.randrange(65536):x}:{rnd.randrange(65536):x}::/48"

    def values(make, k):
        neg = "!" if rnd.random() < 0.1 else ""
        return "[" + ", ".join(f'"{neg}{make()}"' for _ in range(k)) + "]"

    out = ['mode = "enforce"', 'audit_levels = ["*NETFAIL"]', ""]
    for i in range(n):
        exits = rnd.sample(["connect", "listen", "accept"], rnd.randint(1, 2))
        f = [f'[[rule]]\nname = "mix-{i}"', f"exit = {json.dumps(exits)}"]
        if rnd.random() < 0.6:
            f.append(f"user = {values(lambda: rnd.choice(UIDS), rnd.randint(1, 3))}")
        if rnd.random() < 0.15:
            f.append(f"group = {values(lambda: rnd.choice(GIDS), 1)}")
        if rnd.random() < 0.2:
            f.append(f'protocol = ["{rnd.choice(["tcp", "udp", "sctp"])}"]')
        if "listen" not in exits:
            f.append(f"remote = {values(remote, rnd.randint(1, 3))}".replace('"!', '"'))  # stays out of 127/8
            if rnd.random() < 0.5:
                f.append(f"remote_port = {values(port, rnd.randint(1, 2))}".replace('"!', '"'))
        if "connect" not in exits:
            if rnd.random() < 0.4:
                f.append(f'local = ["10.{rnd.randrange(256)}.{rnd.randrange(256)}.0/24"]')
            f.append(f"local_port = {values(port, rnd.randint(1, 2))}".replace('"!', '"'))
        f.append(f'action = "{rnd.choice(["allow", "reject", "reject"])}"')
        out.append("\n".join(f) + "\n")
    return "\n".join(out)


def nft_linear(n: int) -> str:
    """The same rules as sg_policy(n), one nft rule per sockgate rule and direction."""
    out_rules, in_rules = [], []
    for i in range(n):
        k = i // 2
        if i % 2 == 0:
            net = f"10.{k >> 8}.{k & 255}.0/24"
            out_rules.append(f"    ip daddr {net} reject")
            in_rules.append(f"    ip saddr {net} reject")
        else:
            user = "meta skuid 4242 " if k % 10 == 0 else ""
            out_rules.append(f"    {user}tcp dport {20000 + k} reject")
    return ("table inet sgbench {\n"
            "  chain out {\n    type filter hook output priority 0; policy accept;\n" + "\n".join(out_rules) +
            "\n  }\n  chain in {\n    type filter hook input priority 0; policy accept;\n" + "\n".join(in_rules) +
            "\n  }\n}\n")


def nft_sets(n: int) -> str:
    """The same rules with sets: what someone who knows nftables writes."""
    nets, ports, uports = [], [], []
    for i in range(n):
        k = i // 2
        if i % 2 == 0:
            nets.append(f"10.{k >> 8}.{k & 255}.0/24")
        else:
            (uports if k % 10 == 0 else ports).append(str(20000 + k))

    def elems(xs):
        return ", ".join(xs) if xs else ""

    return ("table inet sgbench {\n"
            f"  set nets {{ type ipv4_addr; flags interval; elements = {{ {elems(nets)} }} }}\n"
            f"  set ports {{ type inet_service; elements = {{ {elems(ports)} }} }}\n"
            f"  set uports {{ type inet_service; elements = {{ {elems(uports)} }} }}\n"
            "  chain out {\n    type filter hook output priority 0; policy accept;\n"
            "    ip daddr @nets reject\n    tcp dport @ports reject\n    meta skuid 4242 tcp dport @uports reject\n"
            "  }\n  chain in {\n    type filter hook input priority 0; policy accept;\n"
            "    ip saddr @nets reject\n  }\n}\n")


# --------------------------------------------------------------------------- configurations


@dataclass
class Config:
    name: str
    what: str
    kind: str                     # none | sockgate | nft
    text: str = ""                # policy TOML or nft ruleset
    journal: bool = False         # drain the ring buffer while it runs
    shadow: str = ""              # a policy TOML loaded as the shadow
    ns: str = ""
    cg: str = ""
    pin: str = ""
    gate: Gate | None = None
    runs: list[dict] = field(default_factory=list)
    prog_ns: dict = field(default_factory=dict)
    kernel: dict = field(default_factory=dict)


def configs(journal: bool) -> list[Config]:
    cs = [
        Config("none", "no programs, no rules", "none"),
        Config("sg-10", "sockgate, 10 rules, *NETFAIL", "sockgate", sg_policy(10)),
        Config("sg-10k", "sockgate, 10k rules, scan to default, *NETFAIL", "sockgate", sg_policy(10_000)),
        Config("sg-10k-last", "sockgate, 10k rules, last rule matches", "sockgate",
               sg_policy(10_000, last_matches=True)),
        Config("sg-10k-typ", "sockgate, 10k rules, 9,990 /24s then 10 port rules", "sockgate",
               sg_policy_typical(10_000)),
        Config("sg-mix-10", "sockgate, 10 seeded random rules", "sockgate", sg_policy_mix(10)),
        Config("sg-mix-10k", "sockgate, 10k seeded random rules", "sockgate", sg_policy_mix(10_000)),
        Config("sg-mix-10k-shadow", "sockgate, 10k random rules + a 10k random shadow", "sockgate",
               sg_policy_mix(10_000), shadow=sg_policy_mix(10_000, seed=20261202)),
        Config("nft-10", "nftables, 10 rules (linear)", "nft", nft_linear(10)),
        Config("nft-10k", "nftables, 10k rules (linear chain)", "nft", nft_linear(10_000)),
        Config("nft-10k-set", "nftables, 10k rules as sets", "nft", nft_sets(10_000)),
    ]
    if journal:
        cs.append(Config("sg-10k-cmn", "sockgate, 10k rules, *NETCMN + reader", "sockgate",
                         sg_policy(10_000, levels="*NETCMN"), journal=True))
    return cs


def sh(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(list(args), capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:6])}: {r.stderr.strip() or r.stdout.strip()}")
    return r


def setup(c: Config, tag: str) -> None:
    c.ns = f"{PREFIX}-{tag}-{c.name}"
    c.cg = os.path.join(cgroup2_root(), c.ns)
    os.mkdir(c.cg)
    sh("ip", "netns", "add", c.ns)
    sh("ip", "-n", c.ns, "link", "set", "lo", "up")
    if c.kind == "sockgate":
        c.pin = f"/sys/fs/bpf/{c.ns}"
        c.gate = Gate.load(c.pin, scope_cgroup=c.cg, netns=f"/run/netns/{c.ns}")
        p = parse_policy(c.text, f"{c.name}.toml")
        info = tables.install(c.gate, compile_policy(p), mode=p.mode.value,
                              audit_levels=sorted(p.audit_levels))
        c.kernel["install_s"] = round(info["seconds"], 3)
        if c.shadow:
            sp = parse_policy(c.shadow, f"{c.name}-shadow.toml")
            tables.install(c.gate, compile_policy(sp), mode=sp.mode.value, audit_levels=sorted(sp.audit_levels),
                           shadow=True)
    elif c.kind == "nft":
        t0 = time.perf_counter()
        sh("ip", "netns", "exec", c.ns, "nft", "-f", "-", input=c.text)
        c.kernel["install_s"] = round(time.perf_counter() - t0, 3)
        n = sh("ip", "netns", "exec", c.ns, "nft", "-a", "list", "ruleset").stdout.count("# handle")
        c.kernel["nft_objects"] = n


def _kill_cgroup(cg: str) -> None:
    """Kill what is left in one of the bench's own cgroups (only loadgens it started), rmdir it."""
    for _ in range(50):
        try:
            pids = [int(p) for p in Path(cg, "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    try:
        os.rmdir(cg)
    except OSError as e:
        print(f"warning: cannot remove {cg}: {e}", file=sys.stderr)


def teardown(c: Config) -> None:
    if c.gate is not None:
        try:
            c.gate.unload()
        except Exception as e:  # keep cleaning the rest
            print(f"warning: unload {c.pin}: {e}", file=sys.stderr)
        c.gate = None
    if c.pin:
        remove_pins(c.pin)
    if c.cg:
        _kill_cgroup(c.cg)
    if c.ns:
        sh("ip", "netns", "del", c.ns, check=False)  # its nft tables go with it


def system_state() -> tuple[bool, bool, bool]:
    """(bpffs mounted at /sys/fs/bpf, /run/netns exists, /run/sockgate exists): to leave
    the machine as found."""
    return bpffs_mounted(), Path("/run/netns").exists(), Path("/run/sockgate").exists()


def leave_as_found(state: tuple[bool, bool, bool]) -> None:
    """Unmount a bpffs the bench's loads mounted; remove /run/netns (made by `ip netns add`)
    and /run/sockgate (pin state) if the bench made them and they are empty."""
    had_bpffs, had_netns_dir, had_state_dir = state
    if not had_state_dir and Path("/run/sockgate").exists() and not any(Path("/run/sockgate").iterdir()):
        Path("/run/sockgate").rmdir()
    if not had_bpffs and bpffs_mounted():
        sh("umount", "/sys/fs/bpf", check=False)
    if not had_netns_dir and Path("/run/netns").exists() and not any(Path("/run/netns").iterdir()):
        while sh("mountpoint", "-q", "/run/netns", check=False).returncode == 0:
            if sh("umount", "/run/netns", check=False).returncode != 0:
                break
        sh("rmdir", "/run/netns", check=False)


def remove_stale() -> None:
    """Leftovers of an earlier run that was killed (sgbench-<pid>-* with <pid> gone)."""
    def dead(name: str) -> bool:
        m = re.match(rf"{PREFIX}-(\d+)-", name)
        return bool(m) and not Path(f"/proc/{m.group(1)}").exists()

    for p in Path("/sys/fs/bpf").glob(f"{PREFIX}-*"):
        if dead(p.name):
            remove_pins(str(p))
    for p in Path(cgroup2_root()).glob(f"{PREFIX}-*"):
        if dead(p.name):
            _kill_cgroup(str(p))
    for p in Path("/run/netns").glob(f"{PREFIX}-*") if Path("/run/netns").exists() else []:
        if dead(p.name):
            sh("ip", "netns", "del", p.name, check=False)


# --------------------------------------------------------------------------- running


def build_loadgen() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    if not LOADGEN.exists() or LOADGEN.stat().st_mtime < LOADGEN_SRC.stat().st_mtime:
        sh("gcc", "-O2", "-Wall", "-o", str(LOADGEN), str(LOADGEN_SRC))


def loadgen(c: Config, seconds: float, warm: int = 500, n: int = 10_000_000) -> dict:
    """Run the load generator inside c's cgroup and netns."""
    script = ('echo $$ > "$1/cgroup.procs" && exec ip netns exec "$2" "$3" -a 127.0.0.1 -p "$4" -t "$5" -n "$6"'
              ' -w "$7" $8')
    r = sh("sh", "-c", script, "sh", c.cg, c.ns, str(LOADGEN), str(PORT), str(seconds), str(n), str(warm),
           "-u" if UDP else "",
           check=False, timeout=seconds * 20 + 60)
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"loadgen in {c.name} failed (rc {r.returncode}): {r.stdout.strip()} {r.stderr.strip()}")
    return json.loads(lines[-1])


class Drain:
    """An EventReader on a thread, as the daemon drains: poll with a timeout, decode per batch."""

    def __init__(self, gate: Gate):
        self.reader = EventReader(gate.maps["sg_events"])
        self.events = 0
        self.cpu_s = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.thread_time()
        while not self.stop.is_set():
            self.events += len(self.reader.poll(100))
        self.cpu_s = time.thread_time() - t0

    def __enter__(self):
        self.reader.poll(0)  # drop what is already there (the listener's bind)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        time.sleep(0.3)      # let it catch up with what is queued
        self.stop.set()
        self.thread.join()
        t0 = time.thread_time()
        self.events += len(self.reader.poll(0))
        self.cpu_s += time.thread_time() - t0
        self.reader.close()


def measure(c: Config, seconds: float) -> dict:
    before = c.gate.stats() if c.gate else None
    if c.journal:
        with Drain(c.gate) as d:
            r = loadgen(c, seconds)
        r["events_read"] = d.events
        r["reader_cpu_s"] = d.cpu_s
    else:
        r = loadgen(c, seconds)
    if before is not None:
        after = c.gate.stats()
        r.update({k: after[k] - before[k] for k in after})
    return r


# --------------------------------------------------------------------------- per-program kernel time


def prog_ids(gate: Gate) -> dict[str, int]:
    ids = {}
    for name, fd in gate.progs.items():
        if name in STAT_PROGS:
            m = re.search(r"^prog_id:\s*(\d+)", Path(f"/proc/self/fdinfo/{fd}").read_text(), re.M)
            if m:
                ids[STAT_PROGS[name]] = int(m.group(1))
    return ids


def prog_stats(ids: dict[str, int]) -> dict[str, tuple[int, int]]:
    out = {}
    for label, pid in ids.items():
        r = sh("bpftool", "-j", "prog", "show", "id", str(pid), check=False) if _has_bpftool() else None
        if r is not None and r.returncode == 0:
            j = json.loads(r.stdout)
            out[label] = (j.get("run_time_ns", 0), j.get("run_cnt", 0))
        else:
            out[label] = (0, 0)
    return out


def _has_bpftool() -> bool:
    return any(Path(d, "bpftool").exists() for d in os.environ.get("PATH", "/usr/sbin:/usr/bin").split(":")
               + ["/usr/sbin"])


def kernel_time(cs: list[Config], rounds: int, seconds: float) -> str | None:
    """Enable bpf stats briefly, run the sockgate configs, restore the sysctl."""
    sg = [c for c in cs if c.kind == "sockgate"]
    try:
        prev = BPF_STATS.read_text().strip()
    except OSError as e:
        return f"cannot read {BPF_STATS}: {e}"
    ids = {c.name: prog_ids(c.gate) for c in sg}
    acc = {c.name: {label: [0, 0] for label in ids[c.name]} for c in sg}
    try:
        BPF_STATS.write_text("1\n")
        for r in range(rounds):
            for c in sg[r % len(sg):] + sg[:r % len(sg)]:
                b = prog_stats(ids[c.name])
                if c.journal:
                    with Drain(c.gate):
                        loadgen(c, seconds)
                else:
                    loadgen(c, seconds)
                a = prog_stats(ids[c.name])
                for label in b:
                    acc[c.name][label][0] += a[label][0] - b[label][0]
                    acc[c.name][label][1] += a[label][1] - b[label][1]
    finally:
        BPF_STATS.write_text(prev + "\n")
    for c in sg:
        c.prog_ns = {label: {"ns_per_run": round(t / n, 1) if n else None, "runs": n}
                     for label, (t, n) in acc[c.name].items()}
    return None


# --------------------------------------------------------------------------- report


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def summarize(cs: list[Config]) -> dict:
    s = {}
    for c in cs:
        rates = [r["conn_per_s"] for r in c.runs]
        cpu_us = [1e6 * r["cpu_s"] / r["conns"] for r in c.runs if r["conns"]]
        s[c.name] = {
            "what": c.what,
            "conn_per_s_median": round(med(rates)),
            "conn_per_s_min": round(min(rates)),
            "conn_per_s_max": round(max(rates)),
            "cpu_us_per_conn_median": round(med(cpu_us), 2),
            "cpu_bound_conn_per_s": round(1e6 / med(cpu_us)),
            "rounds": len(rates),
            **c.kernel,
        }
        if c.kind == "sockgate" and c.runs:
            conns = sum(r["conns"] + r.get("warm", 0) for r in c.runs)
            s[c.name]["decisions_per_conn"] = round(sum(r.get("decisions", 0) for r in c.runs) / conns, 3)
            s[c.name]["events_selected"] = sum(r.get("selected", 0) for r in c.runs)
            s[c.name]["events_dropped"] = sum(r.get("dropped", 0) for r in c.runs)
            if c.journal:
                s[c.name]["events_read"] = sum(r.get("events_read", 0) for r in c.runs)
                s[c.name]["reader_cpu_us_per_conn"] = round(
                    1e6 * sum(r.get("reader_cpu_s", 0) for r in c.runs) / conns, 2)
        if c.prog_ns:
            s[c.name]["prog_ns"] = c.prog_ns
    return s


RATIOS = [
    ("sg-10 / none", "sg-10", "none", None),
    ("sg-10k / none", "sg-10k", "none", 0.95),
    ("sg-10k / sg-10", "sg-10k", "sg-10", 0.97),
    ("sg-mix-10k / none", "sg-mix-10k", "none", 0.95),
    ("sg-mix-10k / sg-mix-10", "sg-mix-10k", "sg-mix-10", 0.98),
    ("sg-mix-10k-shadow / sg-mix-10k", "sg-mix-10k-shadow", "sg-mix-10k", None),
    ("sg-mix-10k-shadow / none", "sg-mix-10k-shadow", "none", None),
    ("sg-10k-last / none", "sg-10k-last", "none", None),
    ("sg-10k-typ / none", "sg-10k-typ", "none", None),
    ("nft-10 / none", "nft-10", "none", None),
    ("nft-10k / none", "nft-10k", "none", None),
    ("nft-10k-set / none", "nft-10k-set", "none", None),
    ("sg-10k / nft-10k", "sg-10k", "nft-10k", None),
    ("sg-10k / nft-10k-set", "sg-10k", "nft-10k-set", None),
    ("sg-10k-cmn / none", "sg-10k-cmn", "none", None),
    ("sg-10k-cmn / sg-10k", "sg-10k-cmn", "sg-10k", None),
]


def ratios(cs: list[Config], s: dict) -> list[dict]:
    by = {c.name: c for c in cs}
    out = []
    for label, a, b, target in RATIOS:
        if a not in by or b not in by:
            continue
        ra, rb = by[a].runs, by[b].runs
        paired = [x["conn_per_s"] / y["conn_per_s"] for x, y in zip(ra, rb) if y["conn_per_s"]]
        out.append({
            "ratio": label,
            "wall": round(s[a]["conn_per_s_median"] / s[b]["conn_per_s_median"], 3),
            "wall_paired": round(med(paired), 3),
            "cpu": round(s[b]["cpu_us_per_conn_median"] / s[a]["cpu_us_per_conn_median"], 3),
            "target": target,
        })
    return out


def print_report(s: dict, rs: list[dict], machine: dict) -> None:
    print(f"\nmachine: {machine['cpus']} CPUs ({machine['cpu_model']}), kernel {machine['kernel']}, "
          f"load average at start {machine['loadavg_start']}, at end {machine['loadavg_end']}")
    print(f"{'config':<13} {'conn/s median':>13} {'[min - max]':>17} {'CPU us/conn':>11} {'conn/CPU-s':>10}  what")
    for name, v in s.items():
        print(f"{name:<13} {v['conn_per_s_median']:>13,} {v['conn_per_s_min']:>8,} - {v['conn_per_s_max']:<7,}"
              f"{v['cpu_us_per_conn_median']:>11.2f} {v['cpu_bound_conn_per_s']:>10,}  {v['what']}")
    print(f"\n{'ratio':<22} {'wall':>6} {'paired':>7} {'CPU':>6} {'target':>7}")
    for r in rs:
        t = r["target"]
        verdict = "" if t is None else ("  ok" if min(r["wall_paired"], r["cpu"]) >= t else
                                        "  ok (CPU)" if r["cpu"] >= t else "  MISSED")
        print(f"{r['ratio']:<22} {r['wall']:>6.3f} {r['wall_paired']:>7.3f} {r['cpu']:>6.3f} "
              f"{'' if t is None else f'>= {t}':>7}{verdict}")
    rows = [(n, v["prog_ns"]) for n, v in s.items() if "prog_ns" in v]
    if rows:
        labels = [l for l in STAT_PROGS.values() if any(p.get(l) for _, p in rows)]
        print(f"\n{'per program (bpf_stats)':<24} " + " ".join(f"{l + ' ns':>14}" for l in labels)
              + "   (runs per connection)")
        for n, p in rows:
            print(f"{n:<24} " + " ".join(f"{(p.get(l) or {}).get('ns_per_run') or 0:>14.0f}" for l in labels)
                  + "   " + " ".join(f"{l}={(p.get(l) or {}).get('runs', 0)}" for l in labels))
    extra = [(n, v) for n, v in s.items() if "decisions_per_conn" in v]
    if extra:
        print("\nsanity (decisions per connection incl. warm-up; events):\n  " + "\n  ".join(
            f"{n} {v['decisions_per_conn']} decisions/conn, events {v['events_selected']:,}"
            + (f" read {v.get('events_read', 0):,} dropped {v['events_dropped']:,}, reader thread "
               f"{v['reader_cpu_us_per_conn']} CPU us/conn" if "events_read" in v else "")
            for n, v in extra))


def machine_info() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nft = sh("nft", "--version", check=False).stdout.strip()
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(), "nft": nft,
            "loadavg_start": " ".join(Path("/proc/loadavg").read_text().split()[:3])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 rounds x 1 s (smoke test)")
    ap.add_argument("--rounds", type=int, help="rounds (default 7, quick 2)")
    ap.add_argument("--seconds", type=float, help="seconds per config per round (default 4, quick 1)")
    ap.add_argument("--no-journal", action="store_true", help="skip the *NETCMN + reader configuration")
    ap.add_argument("--no-prog-stats", action="store_true", help="skip the bpf_stats phase")
    ap.add_argument("--json", action="store_true", help="write bench/out/enforce.json")
    ap.add_argument("--udp", action="store_true", help="UDP sendto load (64-byte datagrams) instead of TCP")
    ap.add_argument("--only", help="comma-separated configuration names to run (default: all)")
    a = ap.parse_args()
    global UDP
    UDP = a.udp
    rounds = a.rounds or (2 if a.quick else 7)
    seconds = a.seconds or (1.0 if a.quick else 4.0)
    if os.geteuid() != 0:
        print("needs root (BPF, netns, cgroups, nft)", file=sys.stderr)
        return 2

    def on_term(*_):
        raise SystemExit(143)
    signal.signal(signal.SIGTERM, on_term)

    build_loadgen()
    remove_stale()
    machine = machine_info()
    cs = configs(not a.no_journal)
    if a.only:
        cs = [c for c in cs if c.name in a.only.split(",")]
    tag = str(os.getpid())
    err = None
    found = system_state()
    try:
        for c in cs:
            t0 = time.perf_counter()
            setup(c, tag)
            print(f"set up {c.name:<12} in {time.perf_counter() - t0:5.1f} s", file=sys.stderr)
        for r in range(rounds):
            order = cs[r % len(cs):] + cs[:r % len(cs)]
            for c in order:
                c.runs.append(measure(c, seconds))
            print(f"round {r + 1}/{rounds}: " + "  ".join(f"{c.name} {c.runs[-1]['conn_per_s']:,.0f}" for c in cs),
                  file=sys.stderr)
        if not a.no_prog_stats:
            err = kernel_time(cs, 2 if a.quick else 3, max(1.0, seconds / 2))
    finally:
        for c in cs:
            teardown(c)
        leave_as_found(found)
    machine["loadavg_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    s = summarize(cs)
    rs = ratios(cs, s)
    print_report(s, rs, machine)
    if err:
        print(f"per-program stats: {err}")
    if a.json:
        doc = {"machine": machine, "rounds": rounds, "seconds": seconds, "port": PORT, "configs": s, "ratios": rs,
               "runs": {c.name: c.runs for c in cs}}
        out = OUT / ("enforce-udp.json" if UDP else "enforce.json")
        out.write_text(json.dumps(doc, indent=1))
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
