"""The collector: HTTPS with mutual TLS in front of the central store.

Endpoints (JSON bodies):
  GET  /v1/ca        the CA certificate (no client certificate needed; enroll pins it)
  POST /v1/enroll    {token, name, csr, journal_id, verification_key}: the one endpoint that
                     takes a token instead of a certificate; answers {cert}
  GET  /v1/state     what the collector holds of the caller's chain
  POST /v1/segment   a sealed segment (below); answers {shipped_seq, stored}
  GET  /v1/policy[?have=SHA256]   the newest signed policy bundle of the caller's group
  POST /v1/policy/report          what the host did with it (sockgate.fleet.push)

The host is the client certificate (its SHA-256 fingerprint names one enrolled host),
never anything in a body. A segment is

  {"journal": ID, "first_seq": N, "prev_hash": HEX, "rows": [[FIELDS..., HASH], ...],
   "seals": [[epoch, seq, HASH, ts_ns, MAC], ...]}

and is stored only when it continues what the collector holds of that host (first_seq at
most shipped_seq + 1, prev_hash the chain hash there), every row's hash is the chain step
(sockgate.journal.store.chain_next) of the one before, the seals run on from the host's
last epoch, each matches the chain at its seq and carries the MAC of k_epoch (derived from
the journal's verification key, which the collector holds), and the last row is the last
seal's seq: nothing unsealed is stored. One transaction per segment, the host row locked
(FOR UPDATE), so concurrent or replayed segments of one host serialize: a segment already
held (after a lost answer) stores nothing and is answered with what is held; one whose
rows differ from what the host shipped before is refused, and the host is flagged.

Server: the standard library's threading HTTP server over `ssl`, not uvicorn: the peer
certificate is `SSLSocket.getpeercert()` on the request's own socket, the TLS handshake
runs in the request's thread (a slow client holds only its own thread), and the project
needs no ASGI stack for four endpoints.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sockgate import safedir
from sockgate.errors import FleetError, JournalError, SockgateError
from sockgate.fleet import pki, store
from sockgate.journal import seal as sealing
from sockgate.journal.store import FIELDS, chain_next

try:
    import psycopg
except ImportError:  # pragma: no cover
    psycopg = None  # type: ignore[assignment]

MAX_BODY = 64 << 20
MAX_FIRST_EPOCH = 1 << 24       # the first segment's seals may start late; evolving costs ~1 us a step
HANDSHAKE_TIMEOUT = 10.0
_NF = len(FIELDS)
_I_TYPE, _I_EXTRA = FIELDS.index("type"), FIELDS.index("extra")
_I_LADDR, _I_RADDR = FIELDS.index("local_addr"), FIELDS.index("remote_addr")
_ENTRY_COLS = ",".join(f'"{c}"' for c in store.ENTRY_COLUMNS)


class Refused(Exception):
    """A request refused: HTTP status and the reason the client is told."""

    def __init__(self, status: int, reason: str, **more: Any):
        super().__init__(reason)
        self.status, self.reason, self.more = status, reason, more


def _pg_text_ok(v: str) -> bool:
    if "\x00" in v:
        return False
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_row(row: Any, i: int) -> list:
    """One segment row: FIELDS values as the host stored them, then the hash. Only the
    shape and the hash are checked here; the values' types are checked by PostgreSQL's
    COPY into typed columns (a text where a number belongs fails the whole segment, which
    is then refused and rolled back), the chain hash covers their exact JSON."""
    if type(row) is not list or len(row) != _NF + 1:
        raise Refused(400, f"row {i}: expected {_NF} fields and a hash")
    h = row[_NF]
    try:
        row[_NF] = bytes.fromhex(h)
    except (TypeError, ValueError):
        raise Refused(400, f"row {i}: hash is not hex") from None
    if len(row[_NF]) != 32 or type(row[0]) is not int or type(row[1]) is not int:
        raise Refused(400, f"row {i}: hash is not 32 bytes, or seq/ts_ns not numbers")
    return row


def _seal(v: Any, i: int) -> sealing.Seal:
    try:
        epoch, seq, h, ts, mac = v
        return sealing.Seal.from_row((epoch, seq, bytes.fromhex(h), ts, bytes.fromhex(mac)), f"seal {i}")
    except (TypeError, ValueError, JournalError):
        raise Refused(400, f"seal {i}: malformed (expected [epoch, seq, hash hex, ts_ns, mac hex])") from None


@dataclass
class Result:
    shipped_seq: int
    stored: int
    duplicate: int = 0


class Ingest:
    """Segment checks and the one-transaction store, for one collector process."""

    def __init__(self, url: str, ca: pki.CA):
        self.url, self.ca = url, ca
        self.partitions = store.Partitions(url)
        self._keys: dict[int, tuple[int, bytes]] = {}   # host id -> (epoch, k_epoch)
        self._keys_lock = threading.Lock()
        self._local = threading.local()

    def conn(self) -> "psycopg.Connection":
        c = getattr(self._local, "conn", None)
        if c is None or c.closed:
            c = store.connect(self.url)
            c.execute(f"SET ROLE {store.INGEST_ROLE}")   # from here on: insert-only
            c.commit()
            self._local.conn = c
        return c

    def drop_conn(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            try:
                c.close()
            except Exception:
                pass
            self._local.conn = None

    # -- keys ---------------------------------------------------------------------------

    def _k0(self, name: str, journal_id: str) -> bytes:
        try:
            kid, k0 = sealing.read_verification_key(self.ca.key_path(name))
        except JournalError as e:
            raise Refused(500, f"the collector lost the verification key of {name}: {e}") from None
        if kid != journal_id:
            raise Refused(500, f"the verification key held for {name} is of another journal")
        return k0

    def key_at(self, host: dict, epoch: int) -> bytes:
        """k_epoch of this host's journal: from the cached key of an earlier epoch, or k_0."""
        with self._keys_lock:
            have = self._keys.get(host["id"])
        if have is None or have[0] > epoch:
            have = (0, self._k0(host["name"], host["journal_id"]))
        e, k = have
        if epoch - e > MAX_FIRST_EPOCH:
            raise Refused(409, f"seal epoch {epoch} is implausibly far ahead")
        while e < epoch:
            k, e = sealing.evolve(k), e + 1
        with self._keys_lock:
            self._keys[host["id"]] = (e, k)
        return k

    # -- enrolment ----------------------------------------------------------------------

    def enroll(self, body: dict) -> dict:
        token, name, csr = body.get("token"), body.get("name"), body.get("csr")
        journal_id, vkey = body.get("journal_id"), body.get("verification_key")
        if not all(isinstance(v, str) for v in (token, name, csr, journal_id, vkey)):
            raise Refused(400, "enrolment needs token, name, csr, journal_id and verification_key (text)")
        try:
            secret, fp = pki.parse_token(token)
            pki.check_host_name(name)
            kid, k0 = sealing.parse_verification_key(vkey, "verification_key")
        except SockgateError as e:   # a malformed token, name or key
            raise Refused(400, str(e)) from None
        if kid != journal_id:
            raise Refused(400, "the verification key is not of the journal named")
        group = self._enroll_group(body)
        if fp != self.ca.fingerprint:
            raise Refused(403, "the token is for another collector (CA fingerprint differs)")
        now = time.time_ns()
        conn = self.conn()
        try:
            with conn.transaction():
                row = conn.execute("SELECT expires_ns, used_ns FROM token WHERE hash = %s FOR UPDATE",
                                   (pki.token_hash(secret),)).fetchone()
                if row is None:
                    raise Refused(403, "unknown token")
                if row[1] is not None:
                    raise Refused(403, "the token was already used (tokens are one-time)")
                if row[0] < now:
                    raise Refused(403, "the token has expired")
                if conn.execute("SELECT 1 FROM host WHERE name = %s", (name,)).fetchone():
                    raise Refused(409, f"a host named {name} is already enrolled")
                try:
                    cert_pem, cert_fp = self.ca.sign_csr(csr.encode(), name)
                except FleetError as e:
                    raise Refused(400, str(e)) from None
                conn.execute("UPDATE token SET used_ns = %s, used_by = %s WHERE hash = %s",
                             (now, name, pki.token_hash(secret)))
                conn.execute("INSERT INTO host (name, cert_fp, journal_id, enrolled_ns) VALUES (%s, %s, %s, %s)",
                             (name, cert_fp, journal_id, now))
                if group is not None:
                    conn.execute("INSERT INTO host_group (host_id, grp, set_ns, set_by) SELECT id, %s, %s, 'enroll' "
                                 "FROM host WHERE name = %s", (group, now, name))
                # the key before the commit: a host the collector cannot verify is never enrolled
                safedir.write_atomic(self.ca.key_path(name), sealing.format_verification_key(kid, k0) + "\n", 0o600)
        except psycopg.Error as e:
            self.drop_conn()
            raise Refused(503, f"database: {str(e).strip()}") from None
        return {"cert": cert_pem.decode(), "host": name}

    @staticmethod
    def _enroll_group(body: dict) -> str | None:
        """The group a host asks to be in at enrolment (optional; the administrator can move
        it: `fleet group set`)."""
        from sockgate.fleet.bundle import check_group

        group = body.get("group")
        if group is None:
            return None
        try:
            return check_group(group)
        except ValueError as e:
            raise Refused(400, str(e)) from None

    # -- policy delivery (sockgate.fleet.push) ------------------------------------------

    def policy(self, host: dict, have: str | None) -> dict:
        from sockgate.fleet import push

        try:
            return {"host": host["name"], **push.newest_for(self.conn(), host["id"], have)}
        except psycopg.Error as e:
            self.drop_conn()
            raise Refused(503, f"database: {str(e).strip()}") from None

    def policy_report(self, host: dict, body: Any) -> dict:
        from sockgate.fleet import push

        try:
            return {"host": host["name"], **push.record_report(self.conn(), host["id"], body)}
        except ValueError as e:
            raise Refused(400, f"report: {e}") from None
        except psycopg.Error as e:
            self.drop_conn()
            raise Refused(503, f"database: {str(e).strip()}") from None

    # -- segments -----------------------------------------------------------------------

    def host_by_cert(self, fp: str) -> dict:
        conn = self.conn()
        try:
            cur = conn.execute("SELECT * FROM host WHERE cert_fp = %s", (fp,))
            row = cur.fetchone()
            conn.commit()
        except psycopg.Error as e:
            self.drop_conn()
            raise Refused(503, f"database: {str(e).strip()}") from None
        if row is None:
            raise Refused(403, "this client certificate is not enrolled with the collector")
        host = dict(zip([c.name for c in cur.description], row))
        if host["revoked_ns"] is not None:
            raise Refused(403, f"host {host['name']!r} was revoked ({host['revoked_why']}): "
                               "enroll it again under a new name with a new token")
        return host

    def state(self, host: dict) -> dict:
        return {"host": host["name"], "shipped_seq": host["shipped_seq"], "head_hash": bytes(host["head_hash"]).hex(),
                "next_epoch": host["next_epoch"], "flag": host["flag"]}

    def segment(self, host: dict, body: Any, *, plain: bool = False) -> Result:
        """plain: the raw body held no escaped NUL or surrogate (checked on the bytes), so
        every text value is a valid PostgreSQL text and no per-value check is needed."""
        if not isinstance(body, dict):
            raise Refused(400, "a segment is a JSON object")
        first, prev, rows, seals = body.get("first_seq"), body.get("prev_hash"), body.get("rows"), body.get("seals")
        if body.get("journal") != host["journal_id"]:
            raise Refused(409, f"segment is of journal {str(body.get('journal'))[:40]!r}, but {host['name']} "
                               f"enrolled journal {host['journal_id']}")
        if type(first) is not int or first < 1 or not isinstance(rows, list) or not rows or not isinstance(seals, list) \
                or not seals or not isinstance(prev, str):
            raise Refused(400, "a segment needs first_seq, prev_hash, rows and seals (both non-empty)")
        try:
            prev_h = bytes.fromhex(prev)
            assert len(prev_h) == 32
        except (ValueError, AssertionError):
            raise Refused(400, "prev_hash is not 32 bytes of hex") from None
        rows = [check_row(r, i) for i, r in enumerate(rows)]
        seals = [_seal(s, i) for i, s in enumerate(seals)]
        # the chain, recomputed from prev_hash over the rows as the host stored them
        h, seq = prev_h, first - 1
        at: dict[int, bytes] = {}
        for i, r in enumerate(rows):
            seq += 1
            if r[0] != seq:
                raise Refused(400, f"row {i} has seq {r[0]}, expected {seq} (rows must be consecutive)")
            try:
                h = chain_next(h, r[:_NF])
            except (UnicodeEncodeError, ValueError):
                raise Refused(400, f"seq {seq}: not hashable text") from None
            if not hmac.compare_digest(h, r[_NF]):
                raise Refused(409, f"seq {seq}: stored hash does not match the chain (the segment was altered)")
            at[seq] = h
        last = seq
        if seals[-1].seq != last:
            raise Refused(409, f"the segment ends at seq {last}, but its last seal is at seq {seals[-1].seq}: "
                               "only sealed entries are accepted")
        for a, b in zip(seals, seals[1:]):
            if b.epoch != a.epoch + 1 or b.seq <= a.seq:
                raise Refused(409, f"seals {a.epoch} and {b.epoch} are not consecutive")
        for s in seals:
            if s.seq not in at or not hmac.compare_digest(at[s.seq], s.hash):
                raise Refused(409, f"seal {s.epoch} at seq {s.seq} does not match the segment's chain")
        return self._store(host, first, prev_h, rows, seals, last, plain)

    def _store(self, host: dict, first: int, prev_h: bytes, rows: list, seals: list, last: int,
               plain: bool) -> Result:
        self.partitions.ensure({r[1] // store.DAY_NS * store.DAY_NS for r in rows})
        conn = self.conn()
        try:
            with conn.transaction():
                cur = conn.execute("SELECT * FROM host WHERE id = %s FOR UPDATE", (host["id"],))
                h = dict(zip([c.name for c in cur.description], cur.fetchone()))
                try:
                    return self._store_locked(conn, h, first, prev_h, rows, seals, last, plain)
                except Flagged as f:   # the flag is committed (leaving the block normally), then refused
                    flagged = f
            raise Refused(409, flagged.reason, shipped_seq=flagged.shipped)
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as e:   # a value wrong for its column
            raise Refused(400, f"a row holds a value of the wrong type: {str(e).strip()[:300]}") from None
        except psycopg.Error as e:
            self.drop_conn()
            raise Refused(503, f"database: {str(e).strip()}") from None

    def _store_locked(self, conn, h: dict, first: int, prev_h: bytes, rows: list, seals: list, last: int,
                      plain: bool) -> Result:
        shipped, name = h["shipped_seq"], h["name"]
        if h["flag"]:
            raise Refused(409, f"{name} is flagged: {h['flag']}", shipped_seq=shipped)
        held_from = h["first_seq"]
        if held_from is None:
            base_ok = True      # the first segment: the history before it is the host's word
        elif first > shipped + 1:
            raise Refused(409, f"segment starts at seq {first}, but the collector holds {name} through seq "
                               f"{shipped}: it does not continue the chain (entries {shipped + 1}..{first - 1} "
                               "missing)", shipped_seq=shipped)
        elif first == shipped + 1:
            base_ok = hmac.compare_digest(prev_h, bytes(h["head_hash"]))
        elif first == held_from:
            base_ok = hmac.compare_digest(prev_h, bytes(h["base_hash"]))
        elif first > held_from:
            got = conn.execute("SELECT hash FROM entry WHERE host_id = %s AND seq = %s", (h["id"], first - 1)).fetchone()
            base_ok = got is not None and hmac.compare_digest(prev_h, bytes(got[0]))
        else:
            raise Refused(409, f"segment starts at seq {first}, before the first seq the collector holds of "
                               f"{name} ({held_from})", shipped_seq=shipped)
        # rows the collector already holds must be the very rows shipped before
        overlap = [r for r in rows if r[0] <= shipped]
        if overlap:
            held = dict(conn.execute("SELECT seq, hash FROM entry WHERE host_id = %s AND seq BETWEEN %s AND %s",
                                     (h["id"], overlap[0][0], overlap[-1][0])).fetchall())
            for r in overlap:
                if r[0] in held and not hmac.compare_digest(bytes(held[r[0]]), r[_NF]):
                    base_ok = False
                    break
        if not base_ok:
            reason = (f"{name}'s local chain at seq {first - 1 if not overlap else overlap[0][0]} differs from what "
                      f"it shipped before (collector holds through seq {shipped}): its local history was rewritten "
                      "after shipping")
            conn.execute("UPDATE host SET flag = %s, last_seen_ns = %s WHERE id = %s", (reason, time.time_ns(), h["id"]))
            raise Flagged(reason, shipped)
        new = [r for r in rows if r[0] > shipped]
        new_seals = [s for s in seals if s.seq > shipped]
        now = time.time_ns()
        if not new:
            conn.execute("UPDATE host SET last_seen_ns = %s WHERE id = %s", (now, h["id"]))
            return Result(shipped, 0, duplicate=len(rows))
        want = h["next_epoch"]
        if want is not None and new_seals[0].epoch != want:
            raise Refused(409, f"seal epoch {new_seals[0].epoch} does not continue {name}'s seals "
                               f"(next is {want})", shipped_seq=shipped)
        k = self.key_at(h, new_seals[0].epoch)
        for s in new_seals:
            if not s.authentic(k, h["journal_id"]):
                raise Refused(409, f"seal {s.epoch} at seq {s.seq} is forged (its MAC does not check under "
                                   f"{name}'s journal key)", shipped_seq=shipped)
            k = sealing.evolve(k)
        with self._keys_lock:
            self._keys[h["id"]] = (new_seals[-1].epoch + 1, k)
        digest = None
        with conn.cursor().copy(f"COPY entry ({_ENTRY_COLS}) FROM STDIN") as cp:
            hid = h["id"]
            for r in new:
                raw, vals = None, r[:_NF]
                if not plain and any(isinstance(v, str) and not _pg_text_ok(v) for v in vals):
                    # PostgreSQL text holds no NUL: the columns get a readable stand-in, `raw`
                    # the exact values (ASCII JSON), which verify hashes instead
                    raw = json.dumps(vals, ensure_ascii=True, separators=(",", ":"))
                    vals = [v.replace("\x00", "\ufffd").encode("utf-8", "replace").decode()
                            if isinstance(v, str) else v for v in vals]
                cp.write_row((hid, *vals, store.inet(r[_I_LADDR]), store.inet(r[_I_RADDR]), raw, r[_NF], now))
                if r[_I_TYPE] == "policy":
                    try:
                        digest = str(json.loads(r[_I_EXTRA]).get("digest"))[:128]
                    except (ValueError, AttributeError, RecursionError):
                        pass
        with conn.cursor().copy("COPY seal (host_id, epoch, seq, hash, ts_ns, mac) FROM STDIN") as cp:
            for s in new_seals:
                cp.write_row((h["id"], s.epoch, s.seq, s.hash, s.ts_ns, s.mac))
        conn.execute(
            "UPDATE host SET shipped_seq = %s, head_hash = %s, next_epoch = %s, last_seen_ns = %s, "
            "first_seq = coalesce(first_seq, %s), base_hash = coalesce(base_hash, %s), "
            "policy_digest = coalesce(%s, policy_digest) WHERE id = %s",
            (last, rows[-1][_NF], new_seals[-1].epoch + 1, now, new[0][0], prev_h, digest, h["id"]))
        store.notify_stored(conn, h["id"], last)   # delivered at commit: wakes `monitor --store`
        return Result(last, len(new), duplicate=len(rows) - len(new))


class Flagged(Exception):
    def __init__(self, reason: str, shipped: int):
        super().__init__(reason)
        self.reason, self.shipped = reason, shipped


# -- HTTP -----------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    server: "CollectorServer"
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            self.request = self.server.tls.wrap_socket(self.request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.server.note(f"TLS handshake refused from {self.client_address[0]}: {e}")
            self.request.close()
            raise _Dropped() from None
        self.request.settimeout(60)
        super().setup()

    def log_message(self, fmt: str, *args: Any) -> None:   # quiet: the collector logs refusals itself
        pass

    def _send(self, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self, want_raw: bool = False) -> Any:
        try:
            n = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise Refused(411, "Content-Length required") from None
        if not 0 <= n <= MAX_BODY:
            raise Refused(413, f"body larger than {MAX_BODY} bytes")
        data = self.rfile.read(n)
        try:
            obj = json.loads(data)
            return (obj, b"\\u0000" not in data and b"\\ud" not in data and b"\\uD" not in data) if want_raw else obj
        except (ValueError, RecursionError):
            raise Refused(400, "body is not JSON") from None

    def _host(self) -> dict:
        der = self.request.getpeercert(binary_form=True)
        if not der:
            raise Refused(401, "no client certificate: enroll first (sockgate fleet enroll)")
        return self.server.ingest.host_by_cert(pki.cert_fingerprint(der))

    def _dispatch(self, method: str) -> None:
        ingest = self.server.ingest
        try:
            if method == "GET" and self.path == "/v1/ca":
                self._send(200, {"ca": ingest.ca.cert_pem.decode()})
            elif method == "POST" and self.path == "/v1/enroll":
                self._send(200, ingest.enroll(self._body()))
            elif method == "GET" and self.path == "/v1/state":
                self._send(200, ingest.state(self._host()))
            elif method == "POST" and self.path == "/v1/segment":
                host = self._host()
                body, plain = self._body(want_raw=True)
                r = ingest.segment(host, body, plain=plain)
                self._send(200, {"host": host["name"], "shipped_seq": r.shipped_seq, "stored": r.stored,
                                 "duplicate": r.duplicate})
            elif method == "GET" and self.path.split("?", 1)[0] == "/v1/policy":
                self._send(200, ingest.policy(self._host(), _have(self.path)))
            elif method == "POST" and self.path == "/v1/policy/report":
                host = self._host()
                self._send(200, ingest.policy_report(host, self._body()))
            else:
                raise Refused(404, f"no such endpoint: {method} {self.path[:100]}")
        except Refused as r:
            self.server.note(f"refused {method} {self.path[:60]} from {self.client_address[0]}: {r.reason}")
            self._send(r.status, {"error": r.reason, **r.more})
        except FleetError as e:
            self._send(503, {"error": str(e)})

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")


def _have(path: str) -> str | None:
    """GET /v1/policy?have=SHA256: the bundle the host already handled (its bytes are then
    not sent again)."""
    from urllib.parse import parse_qs, urlsplit

    got = parse_qs(urlsplit(path).query).get("have")
    return got[0][:64] if got else None


class _Dropped(Exception):
    pass


class CollectorServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], ingest: Ingest, tls: ssl.SSLContext, log=None):
        self.ingest, self.tls, self._log = ingest, tls, log
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def note(self, msg: str) -> None:
        if self._log:
            self._log(msg)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (_Dropped, ConnectionError, TimeoutError, ssl.SSLError)):
            return
        self.note(f"internal error serving {client_address[0]}: {exc!r}")


def serve(srv: CollectorServer, workers: int = 1) -> None:
    """Serve until SIGTERM/SIGINT. workers > 1: that many processes accept on the one
    socket (forked after binding; each dies with the parent, PR_SET_PDEATHSIG), so Python's
    per-row work (JSON, chain hashes, COPY rows) runs on more than one core."""
    import ctypes
    import os
    import signal

    children = []
    for _ in range(workers - 1):
        pid = os.fork()
        if pid == 0:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
            if os.getppid() == 1:
                os._exit(0)
            children = []
            break
        children.append(pid)

    def stop(*_: Any) -> None:
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    try:
        srv.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
        for pid in children:   # a worker's open transaction is rolled back by PostgreSQL
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        end = time.monotonic() + 5
        for pid in children:
            while time.monotonic() < end and os.waitpid(pid, os.WNOHANG) == (0, 0):
                time.sleep(0.05)
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        p = int(port)
        ipaddress.ip_address(host)
    except ValueError:
        raise FleetError(f"--listen {text!r}: expected ADDRESS:PORT (an IP address)") from None
    if not sep or not 0 <= p <= 65535:
        raise FleetError(f"--listen {text!r}: expected ADDRESS:PORT")
    return host, p


def server_context(cert: Path, key: Path, ca: pki.CA) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cadata=ca.cert_pem.decode())
    # OPTIONAL: /v1/ca and /v1/enroll are reached before a host has a certificate; every
    # other endpoint refuses a request without one. A certificate that is presented must
    # chain to our CA, or the handshake fails.
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def open_collector(db: str, listen: str, state: str | Path, *, names: list[str] | None = None,
                   log=None) -> CollectorServer:
    """Schema, CA, server certificate, bound socket: ready to serve_forever()."""
    host, port = parse_listen(listen)
    with store.connect(db) as conn:
        store.ensure_schema(conn)
    ca = pki.CA.open(state)
    cert, key = ca.server_files(sorted({host, "127.0.0.1", "localhost", socket.gethostname(), *(names or [])}))
    ingest = Ingest(db, ca)
    try:
        return CollectorServer((host, port), ingest, server_context(cert, key, ca), log)
    except OSError as e:
        raise FleetError(f"--listen {listen}: cannot bind: {e.strerror}") from None


def new_token(db: str, state: str | Path, ttl_s: int = 3600) -> str:
    """A one-time enrolment token (printed once; only its hash is stored)."""
    ca = pki.CA.open(state, create=False)
    text, digest = pki.new_token(ca.fingerprint)
    now = time.time_ns()
    with store.connect(db) as conn:
        store.ensure_schema(conn)
        conn.execute("INSERT INTO token (hash, created_ns, expires_ns) VALUES (%s, %s, %s)",
                     (digest, now, now + ttl_s * 10**9))
        conn.commit()
    return text


__all__ = ["CollectorServer", "Ingest", "Refused", "new_token", "open_collector", "serve"]
