"""Fleet tests: a real PostgreSQL 15 (initdb in a temporary directory, loopback only, torn
down after), the real collector as a subprocess (`sockgate collector`), real TLS with the
certificates the collector's CA makes, real journals. No mocks."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
for p in (str(SRC), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import pgserver  # noqa: E402
from sockgate.journal import Code, Entry, EntryType, Journal, Outcome, Source  # noqa: E402

_db_names = itertools.count(1)
CLI = "import sys; from sockgate.cli import main; main(sys.argv[1:])"


@pytest.fixture(scope="session")
def pg():
    if not pgserver.available():
        pytest.fail(f"PostgreSQL 15 is not installed ({pgserver.BIN}); `make deps` installs postgresql-15")
    srv = pgserver.PgServer(fsync=False).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def db(pg) -> str:
    """A fresh database per test (the sockgate_ingest role is cluster-wide: shared)."""
    import psycopg

    name = f"fleet{os.getpid()}_{next(_db_names)}"
    with psycopg.connect(pg.url, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    url = pg.url.rsplit("/", 1)[0] + "/" + name
    yield url
    with psycopg.connect(pg.url, autocommit=True) as c:
        c.execute(f"DROP DATABASE {name} WITH (FORCE)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env() -> dict:
    return {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "COLUMNS": "200", "LC_ALL": "C.UTF-8"}


def run_cli(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    p = subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, env=cli_env(),
                       timeout=timeout)
    return p.returncode, p.stdout, p.stderr


class Proc:
    """A subprocess of the tests (self.proc); kill() is kill -9, stop() SIGTERM then kill."""

    proc: subprocess.Popen | None = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


class Collector(Proc):
    """`sockgate collector` in a subprocess; kill() is kill -9."""

    def __init__(self, db: str, state: Path, port: int | None = None, addr: str = "127.0.0.1"):
        self.db, self.state, self.addr = db, state, addr
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log = state.parent / f"collector-{self.port}.log"

    @property
    def url(self) -> str:
        return f"https://{self.addr}:{self.port}"

    def start(self) -> "Collector":
        f = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-c", CLI, "collector", "--db", self.db, "--listen",
                                      f"{self.addr}:{self.port}", "--state", str(self.state)],
                                     stdout=f, stderr=f, env=cli_env())
        f.close()
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"collector exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection((self.addr, self.port), 0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("collector did not start")

    def token(self, cli: bool = False) -> str:
        """A token: through the CLI, or the same call in this process (faster)."""
        if not cli:
            from sockgate.fleet.collector import new_token
            return new_token(self.db, self.state)
        code, out, err = run_cli("fleet", "token", "--db", self.db, "--state", str(self.state))
        assert code == 0, err
        return out.strip()


@pytest.fixture
def collector(db, tmp_path):
    c = Collector(db, tmp_path / "collector").start()
    yield c
    c.stop()


T0 = time.time_ns() - 3600 * 10**9   # an hour ago: today's (or yesterday's) partition


def decision(i: int, *, outcome: Outcome = Outcome.REJECTED, remote: str | None = None, **kw) -> Entry:
    fields = dict(code=Code.SOCKET, type=EntryType.CONNECT, ts_ns=T0 + i * 1_000_000, source=Source.KERNEL,
                  outcome=outcome, rule="web-no-mail" if outcome != Outcome.ALLOWED else None, uid=33,
                  user="www-data", gid=33, pid=1000 + i, program="/usr/sbin/nginx", family="ipv4",
                  local_addr="192.0.2.10", local_port=40000 + i % 20000,
                  remote_addr=remote or f"10.1.{i // 250 % 250}.{i % 250}", remote_port=25)
    fields.update(kw)
    return Entry(**fields)


class Host:
    """A host: its own journal and fleet directory, enrolled with the collector."""

    def __init__(self, root: Path, name: str):
        self.name = name
        self.journal_dir = root / name / "journal"
        self.fleet_dir = root / name / "fleet"
        (root / name).mkdir(parents=True, exist_ok=True)
        os.chmod(root / name, 0o700)
        Journal.open(self.journal_dir).close()
        self.n = 0

    def write(self, n: int, seal: bool = True, **kw) -> int:
        with Journal.open(self.journal_dir) as j:
            j.append([decision(self.n + i, **kw) for i in range(n)])
            self.n += n
            if seal:
                j.seal()
            return j.last_seq

    def enroll(self, collector: Collector) -> dict:
        from sockgate.fleet.ship import enroll

        return enroll(collector.url, collector.token(), self.name, self.fleet_dir, self.journal_dir)

    def shipper(self, **kw):
        from sockgate.fleet.ship import Shipper

        return Shipper(self.fleet_dir, self.journal_dir, **kw)


@pytest.fixture
def hosts(tmp_path):
    def make(name: str) -> Host:
        return Host(tmp_path / "hosts", name)
    return make
