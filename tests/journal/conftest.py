"""Journal tests: real SQLite receivers in a temporary directory, no mocks."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from sockgate.journal import Code, Entry, EntryType, Outcome, Source  # noqa: E402

T0 = 1_767_225_600 * 1_000_000_000  # 2026-01-01T00:00:00Z


def decision(i: int, *, outcome: Outcome = Outcome.REJECTED, remote: str | None = None,
             etype: EntryType = EntryType.CONNECT, ts_ns: int | None = None, **kw) -> Entry:
    """A realistic kernel decision entry, deterministic in i."""
    fields = dict(
        code=Code.SOCKET, type=etype, ts_ns=T0 + i * 1_000_000 if ts_ns is None else ts_ns,
        source=Source.KERNEL, outcome=outcome, rule="web-no-mail" if outcome != Outcome.ALLOWED else None,
        uid=33, user="www-data", gid=33, pid=1000 + i, program="/usr/sbin/nginx",
        local_addr="192.0.2.10", local_port=40000 + i % 20000,
        remote_addr=remote or f"10.1.{i // 250 % 250}.{i % 250}", remote_port=25,
    )
    fields.update(kw)
    return Entry(**fields)


@pytest.fixture
def jdir(tmp_path: Path) -> Path:
    return tmp_path / "journal"


@pytest.fixture
def now_ns() -> int:
    return time.time_ns()


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run `sockgate ARGS` in a subprocess through the real entry point; (exit code, out, err)."""
    import subprocess

    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    code = "import sys; from sockgate.cli import main; main(sys.argv[1:])"
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120)
    return p.returncode, p.stdout, p.stderr
