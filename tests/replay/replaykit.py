"""Helpers for the replay/learn tests: real journals on disk, the real CLI in a subprocess.

Not a conftest.py: tests/journal imports its conftest by name (`from conftest import`),
and a second conftest module in one run would shadow it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from sockgate.journal import Journal
from sockgate.record import Code, Entry, EntryType, Outcome, Source

SRC = Path(__file__).resolve().parents[2] / "src"
NS = 1_000_000_000
NOW = time.time_ns()
PROG = sys.executable  # an executable that exists here (policy program values must)
ALLOW_ALL = "# nothing: every exit point allows\n"
NO_MAIL = """\
[[rule]]
name = "no-mail"
exit = ["connect"]
remote_port = [25]
action = "reject"
"""


def entry(etype=EntryType.CONNECT, *, outcome=Outcome.ALLOWED, rule="default:connect", uid=1000, user="u1000",
          gid=1000, program=PROG, local=("192.0.2.10", 40000), remote=("10.0.0.1", 443), ts_ns=None,
          host="web1", source=Source.KERNEL, **extra) -> Entry:
    extra.setdefault("protocol", "udp" if etype in (EntryType.UDP_INBOUND, EntryType.UDP_OUTBOUND) else "tcp")
    la, lp = local if local else (None, None)
    ra, rp = remote if remote else (None, None)
    return Entry(Code.SOCKET, etype, NOW - 3600 * NS if ts_ns is None else ts_ns, source, host, outcome, rule, uid,
                 user, gid, 4242, program, "ipv6" if ra and ":" in ra else "ipv4", la, lp, ra, rp, extra)


def journal(path: Path, entries) -> Path:
    with Journal.open(path, create=True) as j:
        batch = list(entries)
        for i in range(0, len(batch), 5000):
            j.append(batch[i:i + 5000])
    return path


def policy(tmp: Path, text: str, name: str = "policy.toml") -> Path:
    p = tmp / name
    p.write_text(textwrap.dedent(text))
    return p


def sockgate(*args: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    code = "import sys; from sockgate.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)
