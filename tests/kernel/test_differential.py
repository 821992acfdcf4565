"""Differential test: the kernel's decide() vs the reference evaluator, same tables.

The kernel side runs through BPF_PROG_TEST_RUN of sg_probe, which calls the very decide()
the attached hooks call, over the same maps; the reference side is policy.evaluate.decide
over the compiled tables. Random policies of up to 1,000 rules (users, groups, programs,
v4/v6 CIDRs, ports and ranges, negation, per-rule modes), random tuples biased toward
values the policy names so rules actually match. SOCKGATE_DIFF_TUPLES sets the count.
"""

from __future__ import annotations

import ipaddress
import os
import random

from sockgate.kernel import tables
from sockgate.kernel.loader import Gate, remove_pins
from sockgate.kernel.probe import KernelProbe
from sockgate.policy import evaluate
from sockgate.policy.compile import addr_as_v6, compile_policy
from sockgate.policy.model import PROTOCOL_NAMES, Action, Exit, Match, Mode, Policy, Rule

TOTAL = int(os.environ.get("SOCKGATE_DIFF_TUPLES", "100000"))
POLICIES = 20

UIDS = [0, 33, 1000, 1001, 4242, 65534]
GIDS = [0, 4, 27, 33, 100, 1000, 4242, 4343]
PROGRAMS = [(0x800001, 100 + i) for i in range(6)]  # synthetic (dev, ino) identities
PORTS = [22, 25, 53, 80, 443, 587, 1023, 1024, 5432, 8080, 65535]


def random_net(rnd: random.Random):
    if rnd.random() < 0.6:
        plen = rnd.choice([8, 16, 24, 28, 32])
        base = rnd.choice([0x0A000000, 0xC0A80000, 0x7F000000, rnd.getrandbits(32)])
        return ipaddress.ip_network((base >> (32 - plen) << (32 - plen), plen))
    plen = rnd.choice([16, 32, 48, 64, 128])
    base = rnd.choice([0x20010DB8 << 96, 0xFD00 << 112, 1, rnd.getrandbits(128)])
    return ipaddress.ip_network((base >> (128 - plen) << (128 - plen), plen))


def random_policy(rnd: random.Random, nrules: int):
    rules = []
    for i in range(nrules):
        exits = frozenset(rnd.sample(list(Exit), rnd.randint(1, 3)))
        allowed = {"protocol"} | set.intersection(*({"user", "group", "program", "local", "remote", "local_port", "remote_port"}
                                     if e is Exit.ACCEPT else
                                     {"user", "group", "program", "remote", "remote_port"} if e is Exit.CONNECT else
                                     {"user", "group", "program", "local", "local_port"} for e in exits))
        fields = {}
        for f in allowed:
            if rnd.random() > 0.35:
                continue
            neg = rnd.random() < 0.2
            k = rnd.randint(1, 3)
            if f == "protocol":
                vals = tuple(sorted(set().union(*rnd.sample(list(PROTOCOL_NAMES.values()), k))))
            elif f == "user":
                vals = tuple(rnd.sample(UIDS, k))
            elif f == "group":
                vals = tuple(rnd.sample(GIDS, k))
            elif f == "program":
                vals = tuple(f"/synthetic/prog{j}" for j in rnd.sample(range(len(PROGRAMS)), k))
            elif f in ("local", "remote"):
                vals = tuple(random_net(rnd) for _ in range(k))
            else:
                vals = []
                for _ in range(k):
                    lo = rnd.choice(PORTS) if rnd.random() < 0.7 else rnd.randint(0, 65535)
                    hi = lo if rnd.random() < 0.6 else min(65535, lo + rnd.randint(1, 2000))
                    vals.append((lo, hi))
                vals = tuple(vals)
            fields[f] = Match(vals, neg)
        rules.append(Rule(index=i, name=f"r{i}", line=i + 1, exits=exits,
                          action=rnd.choice([Action.ALLOW, Action.REJECT, Action.REJECT]),
                          mode=rnd.choice([None, None, Mode.AUDIT, Mode.ENFORCE]), **fields))
    defaults = {e: rnd.choice([Action.ALLOW, Action.REJECT]) for e in Exit}
    return Policy(rules=tuple(rules), mode=rnd.choice([Mode.ENFORCE, Mode.AUDIT]), defaults=defaults)


def random_tuple(rnd: random.Random, nets):
    def addr():
        if nets and rnd.random() < 0.7:
            n = rnd.choice(nets)
            host = int(n.network_address) + rnd.randrange(min(n.num_addresses, 1 << 20))
            return addr_as_v6(ipaddress.ip_address(host) if n.version == 6 else ipaddress.IPv4Address(host))
        return addr_as_v6(ipaddress.IPv4Address(rnd.getrandbits(32)) if rnd.random() < 0.5
                          else ipaddress.IPv6Address(rnd.getrandbits(128)))

    def port():
        return rnd.choice(PORTS) if rnd.random() < 0.6 else rnd.randint(0, 65535)

    gids = tuple(rnd.sample(GIDS, rnd.randint(1, 4)))
    ident = rnd.choice(PROGRAMS + [None, (1, 2)])
    return (rnd.randrange(3), rnd.choice(UIDS), gids, ident, addr(), port(), addr(), port(), rnd.randrange(4))


def test_kernel_decisions_equal_reference(kernel_ok, monkeypatch):
    import sockgate.policy.compile as comp

    # synthetic programs: the compiler resolves paths to (dev, inode) through this function
    monkeypatch.setattr(comp, "program_identity",
                        lambda path: PROGRAMS[int(path.rsplit("prog", 1)[1])] if path.startswith("/synthetic/") else None)
    rnd = random.Random(int(os.environ.get("SOCKGATE_DIFF_SEED", "20261124")))
    pin = f"/sys/fs/bpf/sockgate-diff-{os.getpid()}"
    gate = Gate.load(pin, attach=False, with_probe=True)  # nothing attached: decisions only through the probe
    try:
        from sockgate.kernel import layout as L, libbpf
        import ctypes
        libbpf.map_update(gate.maps["sg_config"], ctypes.c_uint32(0), L.Config(0, 1 << 20))
        probe = KernelProbe(gate.progs["sg_probe"])
        mismatches, checked, matched_rules = [], 0, 0
        per_policy = TOTAL // POLICIES
        for pi in range(POLICIES):
            nrules = rnd.choice([1, 10, 64, 65, 200, 1000]) if pi else 1000
            policy = random_policy(rnd, nrules)
            compiled = compile_policy(policy)
            tables.install(gate, compiled)
            nets = [n for r in policy.rules for f in (r.local, r.remote) if f for n in f.values]
            for _ in range(per_policy):
                t = random_tuple(rnd, nets)
                k = probe.decide(*t)
                ref = evaluate.decide(compiled, *t)
                checked += 1
                matched_rules += ref[1] >= 0
                if k != ref and len(mismatches) < 10:
                    mismatches.append((pi, t, k, ref))
        assert checked >= TOTAL - POLICIES
        assert not mismatches, mismatches
        assert matched_rules > checked // 4, "tuples should exercise rules, not only defaults"
    finally:
        gate.close()
        remove_pins(pin)


def test_bitmap_bytes_match_a_word_by_word_reading():
    """tables' byte tricks (summary of non-zero words, the packed value array) against the
    obvious word-by-word reading, on sparse, dense, edge-word and empty bitmaps."""
    import ctypes
    from sockgate.kernel import layout as L
    from sockgate.kernel.tables import _bitmap_values, word_summary

    rnd = random.Random(7)
    nsum = 3
    words = nsum * 64
    cases = [0, 1, 1 << (64 * words - 1), (1 << (64 * words)) - 1, 0xFF << 56, 1 << 64,
             1 | (1 << 128),                                    # a zero word between two that are not
             0xFFFFFFFF | (0xFFFFFFFF00000000 << 64),           # 8 zero bytes across a word boundary
             (1 << (64 * 100)) - 1]                             # dense up to a word, zero above
    cases += [sum(1 << rnd.randrange(64 * words) for _ in range(rnd.choice([1, 3, 40, 900])))
              for _ in range(300)]
    for bits in cases:
        raw = bits.to_bytes(words * 8, "little")
        expect = sum(1 << w for w in range(words) if (bits >> (64 * w)) & (2**64 - 1))
        assert word_summary(raw) == expect, hex(bits)
    vals = _bitmap_values(cases, nsum)
    for bits, v in zip(cases, vals):
        assert [v.words[w] for w in range(words)] == [(bits >> (64 * w)) & (2**64 - 1) for w in range(words)]
        assert all(v.words[w] == 0 for w in range(words, len(v.words)))
        expect = sum(1 << w for w in range(words) if (bits >> (64 * w)) & (2**64 - 1))
        assert [v.summary[s] for s in range(len(v.summary))] == [(expect >> (64 * s)) & (2**64 - 1)
                                                                 for s in range(len(v.summary))]
    assert ctypes.sizeof(vals) == len(cases) * ctypes.sizeof(L.Bitmap)
