"""Property test for the bypass suite (issue 11): random sequences of socket calls by random
users against random small policies; every call's outcome must be what the reference
evaluator (sockgate.policy.evaluate.explain over the same compiled tables) decides.

Seeded and deterministic (SOCKGATE_PROPERTY_SEED, SOCKGATE_PROPERTY_ROUNDS to vary it). One
client process runs every round: it stops at a sync point between rounds while the next
policy is installed, and switches its effective uid/gid/groups before each call, so a
round's calls interleave users the way a shared host does.

Vocabulary: calls connect (TCP, MPTCP, UDP, UDP-Lite), UDP sendto, UDP bind, TCP bind +
listen; IPv4, IPv6 and v4-mapped; ports 6401-6404; users root, TEST_UID (with and without
the supplementary group OTHER_GID) and OTHER_UID. Policies: 1-5 rules over the three exits
with protocol, user, group, address and port fields (plain and negated), allow/reject,
enforce/audit, random connect/accept defaults and errno. Listen rules always name a port
(never negated) and the listen default stays allow: an ephemeral port a connect/sendto
autobinds is then never judged by them, whatever a backend does with autobinds. The
backends' documented differences (README, "Where they differ") are expected as such.
"""

from __future__ import annotations

import errno
import os
import random

from conftest import OTHER_GID, OTHER_UID, TEST_UID, install_text, run_script

from sockgate.policy.compile import compile_policy
from sockgate.policy.evaluate import Query, explain
from sockgate.policy.model import Exit, Outcome, Protocol

SEED = int(os.environ.get("SOCKGATE_PROPERTY_SEED", "1100"))
# the QEMU guest (TCG) runs Python ~20x slower: fewer rounds there
ROUNDS = int(os.environ.get("SOCKGATE_PROPERTY_ROUNDS", "8" if os.environ.get("SGVM") else "30"))
CALLS_PER_ROUND = 50
PORTS = [6401, 6402, 6403, 6404]
IDENTITIES = [  # (label, uid, primary gid, supplementary groups)
    ("root", 0, 0, ()),
    ("test", TEST_UID, TEST_UID, ()),
    ("test+other", TEST_UID, TEST_UID, (OTHER_GID,)),
    ("other", OTHER_UID, OTHER_GID, ()),
]
REMOTES = {4: ["127.0.0.1", "127.0.0.2"], 6: ["::1", "::ffff:127.0.0.1", "::ffff:127.0.0.2"]}
LOCALS = {4: ["127.0.0.1", "127.0.0.2", "0.0.0.0"], 6: ["::1", "::"]}
PROTO_OF = {"tcp": Protocol.TCP, "mptcp": Protocol.MPTCP, "udp": Protocol.UDP, "udplite": Protocol.UDP}

# rule vocabulary
V_PROTOCOLS = ["tcp", "udp", "mptcp", "sctp"]
V_USERS = ["0", str(TEST_UID), str(OTHER_UID)]
V_GROUPS = ["0", str(TEST_UID), str(OTHER_GID)]
V_ADDRS = ["127.0.0.1", "127.0.0.2", "127.0.0.0/8", "0.0.0.0", "::1", "::", "::/0", "::ffff:127.0.0.0/104"]
V_PORTS = ["6401", "6402", "6403", "6401-6402", "6402-6404", "6400-6500"]
FIELDS = {"connect": {"protocol", "user", "group", "remote", "remote_port"},
          "listen": {"protocol", "user", "group", "local", "local_port"},
          "accept": {"protocol", "user", "group", "remote", "remote_port", "local", "local_port"}}
VOCAB = {"protocol": V_PROTOCOLS, "user": V_USERS, "group": V_GROUPS, "remote": V_ADDRS, "local": V_ADDRS,
         "remote_port": V_PORTS, "local_port": V_PORTS}


def _values(rng, field, negatable=True):
    vals = rng.sample(VOCAB[field], rng.choice([1, 1, 2]))
    neg = negatable and rng.random() < 0.2
    return "[" + ", ".join(f'"{"!" if neg else ""}{v}"' for v in vals) + "]"


def random_policy(rng) -> str:
    lines = []
    if rng.random() < 0.1:
        lines.append('mode = "audit"')
    if rng.random() < 0.2:
        lines.append('errno = "EACCES"')
    lines += ["[defaults]", f'connect = "{"reject" if rng.random() < 0.25 else "allow"}"',
              'listen = "allow"', f'accept = "{rng.choice(["allow", "reject"])}"', ""]
    for i in range(rng.randint(1, 5)):
        exits = rng.sample(["connect", "listen", "accept"], rng.choice([1, 1, 2]))
        if "listen" in exits and "connect" in exits:   # a listen rule names a local port: not with connect
            exits.remove("connect")
        allowed = set.intersection(*(FIELDS[e] for e in exits))
        fields = [f for f in sorted(allowed) if rng.random() < {"protocol": 0.4, "user": 0.45, "group": 0.2}.get(f, 0.35)]
        if "listen" in exits and "local_port" not in fields:
            fields.append("local_port")     # listen rules name a port (see the module docstring)
        lines += ["[[rule]]", f'name = "r{i}"', "exit = [" + ", ".join(f'"{e}"' for e in exits) + "]",
                  f'action = "{"reject" if rng.random() < 0.7 else "allow"}"']
        if rng.random() < 0.1:
            lines.append('mode = "audit"')
        # a listen rule's ports are never negated: "!6401" would match every autobound port
        lines += [f"{f} = {_values(rng, f, not (f == 'local_port' and 'listen' in exits))}" for f in fields]
        lines.append("")
    return "\n".join(lines) + "\n"


def random_call(rng) -> dict:
    kind = rng.choice(["connect", "connect", "sendto", "sendto", "bind", "listen"])
    family = rng.choice([4, 6])
    if kind == "connect":
        proto = rng.choice(["tcp", "tcp", "udp", "udp", "mptcp", "udplite"])
    elif kind == "sendto":
        proto = rng.choice(["udp", "udp", "udp", "udplite"])
    elif kind == "bind":
        proto = "udp"
    else:
        proto = "tcp"
    addr = rng.choice((LOCALS if kind in ("bind", "listen") else REMOTES)[family])
    return {"kind": kind, "proto": proto, "family": family, "addr": addr, "port": rng.choice(PORTS),
            "who": rng.choice(IDENTITIES)}


def script_for(call: dict, tag: str) -> list[dict]:
    label, uid, gid, groups = call["who"]
    n = f"s{tag}"
    out = [{"do": "as", "uid": uid, "gid": gid, "groups": list(groups)},
           {"do": "socket", "sock": n, "proto": call["proto"], "family": call["family"], "reuse": True,
            "id": f"{tag} socket"}]
    a = {"sock": n, "addr": call["addr"], "port": call["port"]}
    if call["kind"] == "connect":
        out.append({"do": "connect", **a, "id": tag})
    elif call["kind"] == "sendto":
        out.append({"do": "sendto", **a, "id": tag})
    elif call["kind"] == "bind":
        out.append({"do": "bind", **a, "id": tag})
    else:
        out += [{"do": "bind", **a, "id": tag}, {"do": "listen", "sock": n, "id": f"{tag} listen"}]
    out.append({"do": "close", "sock": n})
    return out


def expected(policy, compiled, call, backend) -> str:
    _, uid, gid, groups = call["who"]
    if backend == "cgroup" and call["kind"] == "connect" and call["proto"] == "udplite":
        return "ok"   # documented limit (README, "Where they differ"): no connect hook for UDP-Lite
    is_connect = call["kind"] in ("connect", "sendto")
    q = Query(exit=Exit.CONNECT if is_connect else Exit.LISTEN, uid=uid, gids=(gid, *groups),
              remote=(call["addr"], call["port"]) if is_connect else None,
              local=None if is_connect else (call["addr"], call["port"]),
              protocol=PROTO_OF[call["proto"]])
    d = explain(policy, q, compiled)
    if d.outcome is Outcome.REJECTED:
        return errno.errorcode[policy.errno]
    return "ECONNREFUSED" if call["kind"] == "connect" and call["proto"] in ("tcp", "mptcp") else "ok"


def observed(res, tag, call) -> str:
    r = res[tag]
    if call["kind"] == "listen" and r["ok"]:
        r = res[f"{tag} listen"]          # bind went through: the listen() decides (LSM backend)
    return "ok" if r["ok"] else (r["error"] or f"errno {r['errno']}")


def test_random_calls_by_random_users_match_the_reference_evaluator(scope, gate):
    """Every exit point, by property: for random policies and random call sequences (connect
    of TCP/MPTCP/UDP/UDP-Lite, UDP sendto and bind, TCP listen; v4, v6, v4-mapped; four
    identities), the kernel's outcome equals the reference evaluator's decision."""
    rng = random.Random(SEED)
    texts = [random_policy(rng) for _ in range(ROUNDS)]
    rounds = [[random_call(rng) for _ in range(CALLS_PER_ROUND)] for _ in range(ROUNDS)]
    calls = []
    for r, cs in enumerate(rounds):
        calls.append({"do": "sync", "tag": r})
        for i, c in enumerate(cs):
            calls += script_for(c, f"{r}.{i}")
    policies = {}

    def on_sync(tag):
        policies[tag] = install_text(gate, texts[tag])

    results = run_script(scope, calls, on_sync=on_sync, timeout=600)
    res = {c["id"]: r for c, r in zip(calls, results) if "id" in c}
    mismatches, kinds = [], set()
    for r, cs in enumerate(rounds):
        compiled = compile_policy(policies[r])
        for i, c in enumerate(cs):
            tag = f"{r}.{i}"
            assert res[f"{tag} socket"]["ok"], (tag, c, res[f"{tag} socket"])
            want, got = expected(policies[r], compiled, c, gate.state.backend), observed(res, tag, c)
            kinds.add((c["kind"], c["proto"], want == "ok" or want == "ECONNREFUSED"))
            if want != got:
                mismatches.append((r, tag, c, want, got))
    # the random mix really exercised allowed and refused outcomes of each kind of call
    for kind, proto in (("connect", "tcp"), ("connect", "udp"), ("sendto", "udp"), ("bind", "udp"), ("listen", "tcp")):
        assert (kind, proto, True) in kinds and (kind, proto, False) in kinds, (kind, proto, sorted(kinds))
    if mismatches:
        lines = [f"{len(mismatches)} of {ROUNDS * CALLS_PER_ROUND} calls differ from the reference evaluator (seed {SEED}):"]
        shown_policies = set()
        for r, tag, c, want, got in mismatches[:15]:
            label = c["who"][0]
            lines.append(f"  round {r} call {tag}: {label} {c['kind']} {c['proto']} v{c['family']} "
                         f"{c['addr']}:{c['port']}: evaluator {want}, kernel {got}")
            shown_policies.add(r)
        for r in sorted(shown_policies)[:3]:
            lines.append(f"--- policy of round {r}:\n{texts[r]}")
        raise AssertionError("\n".join(lines))
