"""Helpers for the console tests: a real journal written with the journal API, the real
`sockgate console` in a subprocess on a free loopback port, the real CLI.

Not a conftest.py (tests/journal imports its conftest by name; see tests/replay/replaykit.py)."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from sockgate.journal import Journal
from sockgate.record import Code, Entry, EntryType, Outcome, Source

SRC = Path(__file__).resolve().parents[2] / "src"
REPO = SRC.parent
SCREENSHOTS = REPO / "build" / "screenshots"
NS = 1_000_000_000
PROG = sys.executable   # an executable that exists here (policy program values must)

HOSTILE_PROGRAMS = [
    "/tmp/<script>window.sgPwned=1</script>",
    '/tmp/x"><img src=x onerror="window.sgPwned=2">',
    "/tmp/ctl\x1b[2J\x07\nnext-line",
    "/tmp/\u202eexe.txt",
]
HOSTILE_USER = "ev<b>il</b>\x1b]0;pwn\x07"

POLICY = """\
mode = "enforce"
audit_levels = ["*NETCMN"]

[[rule]]
name = "no-mail"
exit = ["connect"]
remote_port = ["25"]
action = "reject"

[[rule]]
name = "audit-telnet"
exit = ["connect"]
remote_port = ["23"]
action = "reject"
mode = "audit"

[[rule]]
name = "never-fires"
exit = ["listen"]
local_port = ["1"]
action = "reject"
"""


def decision(ts_ns: int, *, outcome: Outcome = Outcome.ALLOWED, rule: str = "default:connect", port: int = 443,
             remote: str = "10.0.0.1", program: str = PROG, user: str = "u1000", uid: int = 1000,
             etype: EntryType = EntryType.CONNECT, source: Source = Source.KERNEL, host: str = "web1",
             ident: str | None = None, **extra) -> Entry:
    extra.setdefault("protocol", "tcp")
    return Entry(Code.SOCKET, etype, ts_ns, source, host, outcome, rule, uid, user, uid, 4242, program, "ipv4",
                 "192.0.2.10", 40000, remote, port, extra, ident)


def mixed(now_ns: int, n: int = 600, span_s: int = 3000) -> list[Entry]:
    """n decisions over the last span_s seconds: allowed to 443, rejected by no-mail (port 25),
    audit-rejected by audit-telnet (port 23), from a few remotes."""
    out = []
    for i in range(n):
        ts = now_ns - span_s * NS + i * (span_s * NS // n)
        k = i % 6
        if k in (0, 1):
            out.append(decision(ts, outcome=Outcome.REJECTED, rule="no-mail", port=25, remote=f"10.9.{i % 3}.{i % 5}"))
        elif k == 2:
            out.append(decision(ts, outcome=Outcome.AUDIT_REJECTED, rule="audit-telnet", port=23,
                                remote=f"10.8.0.{i % 4}", user="u2000", uid=2000))
        else:
            out.append(decision(ts, remote=f"10.0.0.{i % 7}"))
    return out


def ibmi_entries(now_ns: int) -> list[Entry]:
    return [decision(now_ns - (100 - i) * NS, source=Source.IBMI, host="PROD400", user=f"QUSER{i % 3}",
                     uid=None, program="QSYS/QTMHHTP1", outcome=Outcome.ALLOWED, rule=None, port=446,
                     remote=f"10.5.0.{i % 4}", etype=EntryType.ACCEPT, job=f"12345{i % 2}/QTCP/QTMHHTTP",
                     ident=f"PROD400:{i}")
            for i in range(12)]


def write(jdir: Path, entries: list[Entry]) -> int:
    with Journal.open(jdir) as j:
        return j.append(entries)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# the consoles' chart cache (--cache-dir's default is under it): the tests' own, not the host's
CACHE_HOME = tempfile.mkdtemp(prefix="sockgate-test-cache-")
atexit.register(shutil.rmtree, CACHE_HOME, True)


def env() -> dict[str, str]:
    return {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": os.environ.get("HOME", "/root"),
            "XDG_CACHE_HOME": CACHE_HOME}


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    code = "import sys; from sockgate.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env(),
                          timeout=timeout)


class Console:
    """`sockgate console ARGS` in a subprocess; stopped with SIGTERM (then SIGKILL) by stop()."""

    def __init__(self, *args: str, url: str | None = None, uds: str | None = None, client_kw: dict | None = None):
        code = "import sys; from sockgate.cli import main; main(sys.argv[1:])"
        self.proc = subprocess.Popen([sys.executable, "-c", code, "console", *map(str, args)], env=env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.url = url
        transport = httpx.HTTPTransport(uds=uds) if uds else None
        self.client = httpx.Client(base_url=url or "http://console", transport=transport, timeout=5,
                                   **(client_kw or {}))
        try:
            self._wait()
        except BaseException:
            self.stop()
            raise

    def _wait(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise AssertionError(f"console exited {self.proc.returncode}: {err}")
            try:
                self.client.get("/static/VERSIONS")
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("console did not start")

    def stop(self) -> str:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _, err = self.proc.communicate()
        return err
