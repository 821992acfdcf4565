"""Fixtures for the monitor tests: entries, journals, and real receivers on loopback
(HTTP, syslog UDP/TCP/TLS, SMTP with STARTTLS + AUTH) that can be stopped and restarted."""

from __future__ import annotations

import json
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sockgate.record import Code, Entry, EntryType, Outcome, Source

S = 1_000_000_000
T0 = 1_700_000_000 * S   # a fixed journal time base


def entry(type: str = "C", outcome: str | None = "rejected", ts: float = 0, seq: int | None = None,
          source: str = "kernel", **kw: Any) -> Entry:
    """An entry at T0 + ts seconds."""
    t = EntryType(type)
    code = Code.SOCKET if len(t.value) == 1 else Code.SOCKGATE
    return Entry(code=code, type=t, ts_ns=T0 + int(ts * S), source=Source(source),
                 outcome=Outcome(outcome) if outcome else None, seq=seq, **kw)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float = 10.0, interval: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return pred()


# ----------------------------------------------------------------------------- TLS cert


@pytest.fixture(scope="session")
def cert(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 / localhost (openssl CLI): (cert, key)."""
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(crt), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return str(crt), str(key)


def server_ssl_context(cert: tuple[str, str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert)
    return ctx


# ----------------------------------------------------------------------------- HTTP


class HTTPReceiver:
    """Records POSTed JSON bodies (and headers). status: what to answer."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.bodies: list[Any] = []
        self.headers: list[dict[str, str]] = []
        self.status = 200
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> "HTTPReceiver":
        rec = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with rec.lock:
                    status = rec.status
                    if status == 200:
                        rec.bodies.append(json.loads(body))
                        rec.headers.append(dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def ids(self) -> list[str]:
        with self.lock:
            return [b["id"] for b in self.bodies]


@pytest.fixture
def http_receiver():
    r = HTTPReceiver().start()
    yield r
    r.stop()


# ----------------------------------------------------------------------------- syslog


class SyslogReceiver:
    """UDP datagrams, or TCP/TLS streams with octet-counting or LF framing."""

    def __init__(self, proto: str, cert: tuple[str, str] | None = None):
        self.proto = proto
        self.messages: list[bytes] = []
        self.lock = threading.Lock()
        self.port = free_port(socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
        self.ctx = server_ssl_context(cert) if proto == "tls" else None
        self.server: socketserver.BaseServer | None = None

    def start(self) -> "SyslogReceiver":
        rec = self

        class UDP(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with rec.lock:
                    rec.messages.append(self.request[0])

        class TCP(socketserver.StreamRequestHandler):
            def setup(self) -> None:
                if rec.ctx:
                    self.request = rec.ctx.wrap_socket(self.request, server_side=True)
                super().setup()

            def handle(self) -> None:
                try:
                    data = b""
                    while True:
                        chunk = self.request.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                except (ssl.SSLError, OSError):
                    pass
                with rec.lock:
                    rec.messages.extend(deframe(data))

        if self.proto == "udp":
            self.server = socketserver.ThreadingUDPServer(("127.0.0.1", self.port), UDP)
        else:
            socketserver.ThreadingTCPServer.allow_reuse_address = True
            self.server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), TCP)
            self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def deframe(data: bytes) -> list[bytes]:
    """RFC 6587: octet-counting ("LEN SP MSG") or LF-terminated."""
    out = []
    while data:
        sp = data.find(b" ")
        if data[:1].isdigit() and sp > 0 and data[:sp].isdigit():
            n = int(data[:sp])
            out.append(data[sp + 1: sp + 1 + n])
            data = data[sp + 1 + n:]
        else:
            line, _, data = data.partition(b"\n")
            if line:
                out.append(line)
    return out


# ----------------------------------------------------------------------------- SMTP


class SMTPReceiver:
    """aiosmtpd on loopback; optional STARTTLS (required) + AUTH (user/secret)."""

    def __init__(self, cert: tuple[str, str] | None = None, auth: tuple[str, str] | None = None):
        self.port = free_port()
        self.cert = cert
        self.auth = auth
        self.messages: list[Any] = []   # aiosmtpd Envelope
        self.controller = None

    def start(self) -> "SMTPReceiver":
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        rec = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                rec.messages.append(envelope)
                return "250 OK"

        kw: dict[str, Any] = {}
        if self.cert:
            kw.update(tls_context=server_ssl_context(self.cert), require_starttls=True)
        if self.auth:
            def authenticator(server, session, envelope, mechanism, auth_data):
                ok = (auth_data.login.decode(), auth_data.password.decode()) == rec.auth
                return AuthResult(success=ok, handled=False)
            kw.update(authenticator=authenticator, auth_required=True, auth_require_tls=bool(self.cert))
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, **kw)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller:
            self.controller.stop()
            self.controller = None
