"""Syslog, RFC 5424 messages over UDP (RFC 5426), TCP (RFC 6587) or TLS (RFC 5425).

TCP and TLS use octet-counting framing ("LEN SP MSG") by default; `framing = "lf"` sends
newline-terminated messages for receivers that only do that. Each delivery opens a
connection, writes, half-closes and waits for the receiver to close: a receiver that died
makes the send fail (and the alert is retried) instead of vanishing in a socket buffer.
A message longer than `max_size` (8192) is cut to fit rather than refused by the kernel
or the receiver on every retry.
UDP has no acknowledgement at all: a datagram the network drops is lost (use TCP or TLS
for alerts you cannot lose).
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

from sockgate.errors import ChannelError, PermanentChannelError
from sockgate.journal.export import SD_ENTERPRISE, rfc5424
from sockgate.monitor.channels import TLS, Channel, _choice, _str
from sockgate.monitor.model import SEVERITIES
from sockgate.record import oneline

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13, "console": 14,
    "local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20, "local5": 21,
    "local6": 22, "local7": 23,
}
DEFAULT_PORTS = {"udp": 514, "tcp": 514, "tls": 6514}
SD_ID = f"sockgate@{SD_ENTERPRISE}"
# rsyslog's default maxMessageSize; RFC 5426 asks every receiver for 480 octets at least,
# and a UDP datagram cannot carry more than 65507.
DEFAULT_MAX_SIZE, MIN_SIZE, MAX_SIZE = 8192, 480, 65507


def check_max_size(v: Any) -> str | None:
    ok = isinstance(v, int) and not isinstance(v, bool) and MIN_SIZE <= v <= MAX_SIZE
    return None if ok else f"expected a number of bytes {MIN_SIZE}-{MAX_SIZE}"


def check_url(v: Any) -> str | None:
    if not isinstance(v, str):
        return "expected a URL such as \"udp://127.0.0.1:514\", \"tcp://host:514\" or \"tls://host:6514\""
    try:
        u = urlsplit(v)
        u.port  # noqa: B018 - validates the port
    except ValueError as e:
        return f"bad URL {v!r}: {e}"
    if u.scheme not in DEFAULT_PORTS or not u.hostname:
        return f"bad URL {v!r} (use udp://HOST[:PORT], tcp://HOST[:PORT] or tls://HOST[:PORT])"
    return None


CORE_PARAMS = 5   # id, alert, kind, severity, count: kept when a message must be cut
TRUNCATED = " [truncated]"


def format_rfc5424(alert: dict[str, Any], *, facility: str = "auth", app_name: str = "sockgate",
                   hostname: str | None = None, procid: str | int = "-", max_size: int | None = None) -> bytes:
    """One RFC 5424 message for an alert (MSGID ALERT, REPEAT or STORM, no BOM), written by the
    one RFC 5424 writer (journal.export.rfc5424). Values are made inert lines first. With
    max_size the message is cut to fit (a receiver or the kernel would refuse or cut it
    anyway): MSG first, then the SD params after the core ones, marked " [truncated]". A
    checkpoint's MSG is never cut: its SD params but `id` are left out, and if it still does
    not fit it is a PermanentChannelError (dead, logged)."""
    e = alert.get("entry") or {}
    params = [("id", alert["id"]), ("alert", alert["alert"]), ("kind", alert["kind"]),
              ("severity", alert["severity"]), ("count", alert["count"])]
    params += [(k, e.get(k)) for k in ("seq", "code", "type", "outcome", "rule", "user", "uid", "program", "pid",
                                       "local_addr", "local_port", "remote_addr", "remote_port", "host", "source")]
    params += [(f"group.{k}", v) for k, v in (alert.get("group") or {}).items()]
    params = [(k, None if v is None else oneline(v)) for k, v in params]
    msgid = "CHECKPOINT" if "checkpoint" in alert else "STORM" if alert.get("storm") else \
        "REPEAT" if alert.get("repeat") else "ALERT"

    def build(params: list, msg: str) -> bytes:
        return rfc5424(FACILITIES[facility] * 8 + SEVERITIES[alert["severity"]], alert["last_time"],
                       hostname or alert.get("monitor_host") or socket.gethostname(), app_name, str(procid),
                       msgid, [(SD_ID, params)], msg, bom=False).encode("utf-8")

    msg = oneline(alert["message"])
    out = build(params, msg)
    if max_size is None or len(out) <= max_size:
        return out
    if "checkpoint" in alert:
        # a cut checkpoint is no checkpoint: the SD params go (but the id), never the MSG
        out = build(params[:1], msg)
        if len(out) > max_size:
            raise PermanentChannelError(f"checkpoint message of {len(out)} bytes does not fit max_size = "
                                        f"{max_size}; raise max_size")
        return out
    head = build(params, "")
    while len(head) + len(TRUNCATED) > max_size and len(params) > CORE_PARAMS:
        params = params[:-1]
        head = build(params, "")
    room = max_size - len(head) - len(TRUNCATED.encode())
    cut = msg.encode("utf-8")[:max(room, 0)].decode("utf-8", "ignore")
    return build(params, cut + TRUNCATED)[:max_size]


class SyslogChannel(Channel):
    type = "syslog"
    OPTIONS = {"url": check_url, "facility": _choice(*FACILITIES), "app_name": _str, "hostname": _str,
               "framing": _choice("octet-counting", "lf"), "max_size": check_max_size, **TLS}
    REQUIRED = frozenset({"url"})

    def __init__(self, name: str, opts: dict[str, Any]):
        super().__init__(name, opts)
        u = urlsplit(opts["url"])
        self.proto = u.scheme
        self.host = u.hostname
        self.port = u.port or DEFAULT_PORTS[self.proto]
        self.facility = opts.get("facility", "auth")
        self.app_name = opts.get("app_name", "sockgate")
        self.hostname = opts.get("hostname")
        self.framing = opts.get("framing", "octet-counting")
        self.max_size = opts.get("max_size", DEFAULT_MAX_SIZE)
        self._ctx = self.ssl_context() if self.proto == "tls" else None

    def peer(self) -> tuple[str, int, str]:
        return self.host, self.port, "udp" if self.proto == "udp" else "tcp"

    def frame(self, msg: bytes) -> bytes:
        if self.framing == "lf":
            return msg + b"\n"
        return str(len(msg)).encode() + b" " + msg

    def send(self, alert: dict[str, Any]) -> None:
        msg = format_rfc5424(alert, facility=self.facility, app_name=self.app_name,
                             hostname=self.hostname, procid=os.getpid(), max_size=self.max_size)
        try:
            if self.proto == "udp":
                infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
                fam, _, _, _, addr = infos[0]
                with socket.socket(fam, socket.SOCK_DGRAM) as s:
                    s.settimeout(self.timeout)
                    s.sendto(msg, addr)
                return
            raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
            with raw:
                s = self._ctx.wrap_socket(raw, server_hostname=self.host) if self._ctx else raw
                s.sendall(self.frame(msg))
                if self._ctx:
                    # TLS: send close_notify; the receiver's close ends the exchange.
                    try:
                        s.unwrap()
                    except (ssl.SSLError, OSError):
                        pass  # the receiver closed without close_notify: it has read the data
                    return
                s.shutdown(socket.SHUT_WR)
                try:
                    while s.recv(4096):
                        pass
                except socket.timeout:
                    pass  # the receiver keeps the connection open: it has what we sent
        except OSError as e:
            if e.errno == errno.EMSGSIZE:   # this message never fits: retrying cannot help
                raise PermanentChannelError(f"syslog {self.proto}://{self.host}:{self.port}: {e}") from None
            raise ChannelError(f"syslog {self.proto}://{self.host}:{self.port}: {e}") from None
        except ValueError as e:
            raise ChannelError(f"syslog {self.proto}://{self.host}:{self.port}: {e}") from None


CHANNEL = SyslogChannel
