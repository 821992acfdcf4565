"""A throwaway PostgreSQL 15 (Debian's postgresql-15): initdb in a temporary directory,
listening on 127.0.0.1 on a free port only, trust auth (nothing else can reach it), run as
an unprivileged user when we are root (postgres refuses to run as root). Used by the fleet
tests and bench/fleet_ingest.py."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

BIN = Path(os.environ.get("SOCKGATE_PG_BIN", "/usr/lib/postgresql/15/bin"))


def available() -> bool:
    return (BIN / "initdb").exists() and (BIN / "pg_ctl").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self, *, fsync: bool = True, extra: dict[str, str] | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="sockgate-pg-"))
        os.chmod(self.dir, 0o755)
        self.data = self.dir / "data"
        self.port = _free_port()
        self.user = "sockgate"
        self.fsync, self.extra = fsync, extra or {}
        self._as: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("nobody")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups"]
        self.started = False

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120) -> None:
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "HOME": str(self.dir)}
        r = subprocess.run([*self._as, *args], cwd=self.dir, env=env, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]}")

    def start(self) -> "PgServer":
        self._run(str(BIN / "initdb"), "-D", str(self.data), "-U", self.user, "-A", "trust", "-E", "UTF8",
                  "--no-instructions")
        conf = {"listen_addresses": "'127.0.0.1'", "port": str(self.port), "unix_socket_directories": "''",
                "fsync": "on" if self.fsync else "off", "max_connections": "100", "shared_buffers": "'128MB'",
                "log_min_messages": "warning", **self.extra}
        with open(self.data / "postgresql.conf", "a") as f:
            f.writelines(f"{k} = {v}\n" for k, v in conf.items())
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-t", "60", "start")
        self.started = True
        return self

    def stop(self) -> None:
        try:
            if self.started:
                self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            self.started = False
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "PgServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait(self, timeout: float = 10) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return
            except OSError:
                time.sleep(0.1)
