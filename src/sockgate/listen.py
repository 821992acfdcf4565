"""Where a sockgate server listens (the daemon's metrics, the console): a loopback
ADDRESS:PORT, any ADDRESS:PORT where the caller allows it, or a unix socket; and the one
rule for a unix socket file left behind by a server that died."""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
from dataclasses import dataclass

from sockgate.errors import SockgateError, UsageError

UNIX_PREFIX = "unix:"
FORMS = "ADDRESS:PORT (127.0.0.1:9477, [::1]:9477) or unix:PATH"


@dataclass(frozen=True)
class Address:
    host: str = ""          # an IP address (TCP) ...
    port: int = 0
    path: str = ""          # ... or a unix socket path

    def __str__(self) -> str:
        if self.path:
            return UNIX_PREFIX + self.path
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        """A unix socket or a loopback address: reachable from this host only."""
        return bool(self.path) or ipaddress.ip_address(self.host).is_loopback


def parse_address(text: str, *, option: str = "--metrics", loopback_only: bool = True, why: str = "") -> Address:
    """ADDRESS:PORT or unix:PATH. With loopback_only, an address off the loopback is a usage
    error (`why` says what it lacks: nothing else guards such an endpoint)."""
    if text.startswith(UNIX_PREFIX):
        path = text[len(UNIX_PREFIX):]
        if not os.path.isabs(path):
            raise UsageError(f"{option} {text}: the unix socket path must be absolute")
        return Address(path=path)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{option} {text}: expected {FORMS}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"{option} {text}: {host!r} is not an IP address; expected {FORMS}") from None
    if loopback_only and not ip.is_loopback:
        raise UsageError(f"{option} {text}: {host} is not a loopback address. {why}".rstrip())
    return Address(host=str(ip), port=int(port))


def clear_stale_socket(path: str, *, option: str, error: type[SockgateError]) -> None:
    """A socket file left by a server that died is replaced; a live one or another file is not."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise error(f"{option} unix:{path}: the path exists and is not a socket; not replacing it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)
            return
        except OSError as e:
            raise error(f"{option} unix:{path}: {e.strerror}") from None
    raise error(f"{option} unix:{path}: another process is serving on this socket")
