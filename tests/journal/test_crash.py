"""A writer killed with SIGKILL mid-append loses nothing it committed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from conftest import SRC

from sockgate.journal import EntryType, Journal
from sockgate.journal import seal as sealing
from sockgate.journal.verify import verify

WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from sockgate.journal import Journal, Entry, Code, EntryType, Source, Outcome
    j = Journal.open(sys.argv[1])
    j.seal_every = 700          # seals land mid-run, the tail is unsealed when killed
    i = 0
    while True:
        batch = [Entry(Code.SOCKET, EntryType.CONNECT, time.time_ns(), Source.KERNEL,
                       outcome=Outcome.REJECTED, uid=33, remote_addr=f"10.0.{k % 256}.1", remote_port=25)
                 for k in range(i, i + 97)]
        i += 97
        last = j.append(batch)
        print(last, flush=True)   # committed: append returned
""")


def test_sigkill_while_appending(jdir):
    Journal.open(jdir).close()
    key = sealing.read_verification_key(jdir / "verification.key")
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(jdir), str(SRC)], stdout=subprocess.PIPE, text=True)
    committed = 0
    try:
        for line in p.stdout:
            committed = int(line)
            if committed >= 5000:
                break
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    assert committed >= 5000
    # Before anyone reopens: the chain is intact, the unsealed tail is only a warning.
    rep = verify(jdir, key)
    assert rep.ok, rep.error
    with Journal.open(jdir) as j:
        seqs = [e.seq for e in j.entries()]
        assert seqs == list(range(1, len(seqs) + 1))
        assert len(seqs) >= committed + 1
        last = list(j.entries(len(seqs) - 1))[0]
        assert last.type == EntryType.INTERRUPTED
        assert last.extra["last_seq"] == len(seqs) - 1 >= committed
    rep = verify(jdir, key)
    assert rep.ok and rep.sealed_through == rep.last_seq == len(seqs), rep
