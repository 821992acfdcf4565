"""Where the console listens, and the refusals that keep it local by default.

- A loopback ADDRESS:PORT (default 127.0.0.1:8477) or a unix socket (--socket PATH, created
  0660 in a directory no one else can write) serves without more.
- Any other address is refused (usage error, exit 2) unless TLS (--tls-cert and --tls-key)
  AND a token (--token-file: a file only its owner can read) are given; then every request
  must carry the token (HTTP Basic password, any user name, or `Authorization: Bearer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import stat
from dataclasses import dataclass

from sockgate import safedir
from sockgate.errors import SockgateError, UsageError
from sockgate.listen import Address, clear_stale_socket, parse_address

DEFAULT_LISTEN = "127.0.0.1:8477"
MIN_TOKEN = 16


@dataclass(frozen=True)
class Bind:
    address: Address
    tls: tuple[str, str] | None      # (cert, key)
    token: str | None

    @property
    def url(self) -> str:
        if self.address.path:
            return f"unix:{self.address.path}"
        host = f"[{self.address.host}]" if ":" in self.address.host else self.address.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.address.port}/"

    def hosts(self) -> frozenset[str] | None:
        """The Host header names to answer (None behind a unix socket: the proxy chooses)."""
        if self.address.path:
            return None
        h = self.address.host
        names = {h, f"[{h}]"} if ":" in h else {h}
        if self.address.loopback:
            names |= {"localhost", "127.0.0.1", "[::1]"}
        elif self.token is not None:
            return None   # behind TLS and a token: any name that reaches it
        return frozenset(names)


def plan(listen: str | None, socket_path: str | None, tls_cert: str | None, tls_key: str | None,
         token_file: str | None) -> Bind:
    """Check the options; a UsageError (exit 2) says what is missing."""
    if listen and socket_path:
        raise UsageError("give --listen or --socket, not both")
    if socket_path:
        if not os.path.isabs(socket_path):
            raise UsageError(f"--socket {socket_path}: the path must be absolute")
        address = Address(path=socket_path)
    else:
        address = parse_address(listen or DEFAULT_LISTEN, option="--listen", loopback_only=False)
    if bool(tls_cert) != bool(tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    for option, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if path and not os.path.isfile(path):
            raise UsageError(f"{option} {path}: no such file")
    token = read_token(token_file) if token_file else None
    tls = (tls_cert, tls_key) if tls_cert and tls_key else None
    if not address.loopback and (tls is None or token is None):
        missing = " and ".join(x for x, ok in (("TLS (--tls-cert, --tls-key)", tls), ("a token (--token-file)", token))
                               if not ok)
        raise UsageError(f"--listen {listen}: {address.host} is not a loopback address. The console shows the "
                         f"audit journal to whoever reaches it, so it listens off this host only with {missing}; "
                         "or keep it on 127.0.0.1 / --socket and reach it through SSH port forwarding")
    return Bind(address, tls, token)


def read_token(path: str) -> str:
    """The token: the file's first line. Refused when others could read the file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise UsageError(f"--token-file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"--token-file {path}: not a regular file")
        if st.st_mode & 0o077:
            raise UsageError(f"--token-file {path}: mode {stat.S_IMODE(st.st_mode):04o} lets others read it "
                             "(chmod 0600)")
        raw = os.read(fd, 4096)
    finally:
        os.close(fd)
    token = raw.decode("utf-8", "replace").splitlines()[0].strip() if raw.strip() else ""
    if len(token) < MIN_TOKEN:
        raise UsageError(f"--token-file {path}: the token must be at least {MIN_TOKEN} characters "
                         "(e.g. `openssl rand -hex 24 > FILE`)")
    return token


def bind(b: Bind) -> socket.socket:
    """The listening socket, bound now (a taken port is an error before anything is served)."""
    a = b.address
    try:
        if a.path:
            parent = os.path.dirname(a.path) or "/"
            problem = safedir.problem(parent)
            if problem:
                raise UsageError(f"--socket {a.path}: {problem}")
            clear_stale_socket(a.path, option="--socket", error=SockgateError)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o117)
            try:
                s.bind(a.path)   # 0660: root (or the owner) and the socket's group
            finally:
                os.umask(old)
        else:
            # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto
            # says TCP, and with Nagle on every small write that follows another (a response's
            # body after its headers, a Live event after the last) waited for the browser's
            # delayed ACK, 40 ms and more
            s = socket.socket(socket.AF_INET6 if ":" in a.host else socket.AF_INET, socket.SOCK_STREAM,
                              socket.IPPROTO_TCP)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((a.host, a.port))
        s.listen(128)
        s.setblocking(False)
        return s
    except OSError as e:
        raise SockgateError(f"console: cannot listen on {a}: {e.strerror or e}") from None


def run(app, b: Bind, sock: socket.socket) -> None:
    """Serve until SIGINT/SIGTERM; open Live streams end at once."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1,
                            access_log=False, server_header=False,
                            ssl_certfile=b.tls[0] if b.tls else None, ssl_keyfile=b.tls[1] if b.tls else None)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.state.stopping = True
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn's own re-raises the signal once served, which would kill us before the
            # socket file is removed: stop on SIGINT/SIGTERM and return instead
            previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, h in previous.items():
                    signal.signal(s, h)

    server = Server(config)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
        if b.address.path:
            try:
                os.unlink(b.address.path)
            except FileNotFoundError:
                pass
