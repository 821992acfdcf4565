"""The host side of the fleet: enrolment, and the shipper that sends sealed segments.

The fleet directory (default /etc/sockgate/fleet, 0700, files 0600):
  fleet.json     {server, name, journal, ca_fingerprint}
  ca.pem         the collector's CA (pinned by the token's fingerprint at enrolment)
  client.pem     this host's certificate, client.key its key
  shipped.json   {journal, shipped_seq}: what the collector last acknowledged. A cache:
                 the collector is asked (GET /v1/state) before shipping; `journal retain`
                 reads it so it does not delete what was never shipped.

The local journal is the spool: the shipper reads it (read-only, its own connections)
after the acknowledged seq and sends what a seal covers, up to the newest seal, in
segments that each end at a seal. Collector down, network cut, either side killed: the
next attempt starts again from what the collector says it holds, so nothing is lost and
nothing is stored twice (the collector is idempotent on (host, seq)).
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import httpx

from sockgate import safedir
from sockgate.errors import FleetError, FleetRefused, JournalError, UsageError
from sockgate.fleet import pki
from sockgate.journal import seal as sealing
from sockgate.journal.query import Filter
from sockgate.journal.store import FIELDS, META_FILE, VERIFY_KEY_FILE, read_journal_meta
from sockgate.record import Outcome

FLEET_DIR = "/etc/sockgate/fleet"
FLEET_FILE, STATE_FILE = "fleet.json", "shipped.json"
SEGMENT_ROWS = 20_000          # a segment ends at the first seal past this many rows
_SELECT = "SELECT " + ",".join(FIELDS) + ", hash FROM entry WHERE seq > ? AND seq <= ? ORDER BY seq"


def _write_private(path: Path, data: str) -> None:
    safedir.write_atomic(path, data, 0o600)


def _context(fleet: Path, *, client: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(fleet / "ca.pem"))
    if client:
        ctx.load_cert_chain(fleet / "client.pem", fleet / "client.key")
    return ctx


def _error(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("error"))
    except (ValueError, AttributeError):
        return resp.text[:200]


def _check_server(url: str) -> str:
    u = urlsplit(url)
    if u.scheme != "https" or not u.hostname:
        raise FleetError(f"--server {url!r}: expected https://HOST:PORT")
    return url.rstrip("/")


def enroll(server: str, token: str, name: str, fleet_dir: str | os.PathLike = FLEET_DIR,
           journal_dir: str | os.PathLike | None = None, key_file: str | os.PathLike | None = None,
           group: str | None = None) -> dict:
    """Enrol this host: pin the collector's CA by the token's fingerprint, send a CSR, the
    host name, its policy group (`group`, else FLEET_DIR/group if there is one) and the
    journal's verification key (the collector checks seals with it), and keep the
    certificate; `group` is written to FLEET_DIR/group. Returns fleet.json's contents."""
    from sockgate.fleet.apply import GROUP_FILE, host_group
    from sockgate.fleet.bundle import check_group

    server = _check_server(server)
    secret, fp = pki.parse_token(token)
    pki.check_host_name(name)
    fleet = safedir.private_dir(Path(fleet_dir), error=FleetError, what="fleet directory")
    if (fleet / FLEET_FILE).exists():
        raise FleetError(f"{fleet}: this host is already enrolled (remove {fleet / FLEET_FILE} to enrol again)")
    local_group = host_group(fleet)
    if group is not None and local_group is not None and group != local_group:
        raise FleetError(f"--group {group}: {fleet / GROUP_FILE} says this host is in group {local_group}")
    group = group or local_group
    if group is not None:
        try:
            check_group(group)
        except ValueError as e:
            raise UsageError(f"--group: {e}") from None
    if key_file is None:
        if journal_dir is None or not (Path(journal_dir) / META_FILE).exists():
            raise FleetError(f"{journal_dir}: no journal here; create it first (sockgate journal init) "
                             "and pass its verification key with --key")
        key_file = Path(journal_dir) / VERIFY_KEY_FILE
        if not key_file.exists():
            raise FleetError(f"{key_file}: not found; the journal's verification key is off the host: pass --key FILE")
    journal_id, k0 = sealing.read_verification_key(key_file)
    if journal_dir is not None and (Path(journal_dir) / META_FILE).exists():
        if read_journal_meta(Path(journal_dir))["id"] != journal_id:
            raise FleetError(f"{key_file}: the verification key is not of the journal in {journal_dir}")
    # the CA, fetched without verification and then pinned: only the fingerprint is trusted
    try:
        with httpx.Client(verify=False, timeout=15) as c:   # noqa: S501 (checked by fingerprint below)
            ca_pem = c.get(f"{server}/v1/ca").json()["ca"].encode()
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
        raise FleetError(f"{server}: cannot fetch the collector's CA: {e}") from None
    if pki.pem_fingerprint(ca_pem) != fp:
        raise FleetRefused(f"{server}: the collector's CA does not match the token's fingerprint: "
                           "not the collector that issued the token (or someone in between)")
    _write_private(fleet / "ca.pem", ca_pem.decode())
    key_pem, csr_pem = pki.new_client_key()
    body = {"token": token, "name": name, "csr": csr_pem.decode(), "journal_id": journal_id,
            "verification_key": sealing.format_verification_key(journal_id, k0)}
    if group is not None:
        body["group"] = group
    try:
        with httpx.Client(verify=_context(fleet, client=False), timeout=30) as c:
            resp = c.post(f"{server}/v1/enroll", json=body)
    except httpx.HTTPError as e:
        raise FleetError(f"{server}: enrolment failed: {e}") from None
    if resp.status_code != 200:
        raise FleetRefused(f"{server}: enrolment refused: {_error(resp)}")
    _write_private(fleet / "client.key", key_pem.decode())
    _write_private(fleet / "client.pem", resp.json()["cert"])
    if group is not None and local_group is None:
        safedir.write_atomic(fleet / GROUP_FILE, group + "\n", 0o644)
    info = {"server": server, "name": name, "journal": journal_id, "ca_fingerprint": fp}
    _write_private(fleet / FLEET_FILE, json.dumps(info, indent=1) + "\n")
    return {**info, "group": group}


def read_fleet(fleet_dir: str | os.PathLike) -> dict:
    path = Path(fleet_dir) / FLEET_FILE
    try:
        info = json.loads(path.read_text())
        assert isinstance(info, dict) and all(isinstance(info.get(k), str) for k in ("server", "name", "journal"))
    except FileNotFoundError:
        raise FleetError(f"{fleet_dir}: this host is not enrolled (sockgate fleet enroll)") from None
    except (OSError, ValueError, AssertionError, UnicodeDecodeError):
        raise FleetError(f"{path}: unreadable or corrupt") from None
    return info


def shipped_seq(fleet_dir: str | os.PathLike, journal_id: str) -> int | None:
    """What the collector last acknowledged of this journal, or None when the host is not
    enrolled for it (nothing to protect). 0 when enrolled but nothing acknowledged yet."""
    try:
        info = read_fleet(fleet_dir)
    except FleetError:
        return None
    if info["journal"] != journal_id:
        return None
    try:
        st = json.loads((Path(fleet_dir) / STATE_FILE).read_text())
        return int(st["shipped_seq"]) if st.get("journal") == journal_id else 0
    except (OSError, ValueError, KeyError, TypeError):
        return 0


# -- reading the local journal --------------------------------------------------------------

def read_segment(journal: Any, after: int, max_rows: int = SEGMENT_ROWS) -> dict | None:
    """The next sealed segment after seq `after` from a read-only Journal, or None when
    nothing sealed follows. Ends at a seal: the first seal past max_rows rows (or the last)."""
    receivers = journal.receivers
    if not receivers:
        return None
    by_epoch: dict[int, sealing.Seal] = {}
    for r in receivers:
        for row in r.seals():
            s = sealing.Seal.from_row(row, r.name)
            by_epoch.setdefault(s.epoch, s)
    seals = [by_epoch[e] for e in sorted(by_epoch) if by_epoch[e].seq > after]
    if not seals:
        return None
    take = []
    for s in seals:
        take.append(s)
        if s.seq - after >= max_rows:
            break
    upto = take[-1].seq
    prev = None
    rows: list[list] = []
    for r in receivers:
        if r.first_seq - 1 == after:
            prev = r.prev_hash
        if r.first_seq > upto:
            break
        if prev is None:
            got = r.fetchall("SELECT hash FROM entry WHERE seq = ?", [after])
            if got:
                prev = bytes(got[0][0])
        for row in r.fetchall(_SELECT, [after, upto]):
            rows.append([*row[:-1], bytes(row[-1]).hex()])
    if prev is None:
        first = receivers[0].first_seq
        raise FleetError(f"{journal.directory}: the journal starts at seq {first}; entries {after + 1}.."
                         f"{first - 1} were never shipped (deleted locally before shipping)")
    return {"journal": journal.id, "first_seq": after + 1, "prev_hash": prev.hex(), "rows": rows,
            "seals": [[s.epoch, s.seq, s.hash.hex(), s.ts_ns, s.mac.hex()] for s in take]}


# -- talking to the collector ---------------------------------------------------------------

class Client:
    """HTTPS to the collector this host enrolled with, as this host (its client
    certificate); one connection, reopened after a network error. Used by the shipper and
    by policy delivery (sockgate.fleet.deliver)."""

    def __init__(self, fleet: Path, server: str):
        self.fleet, self.server = fleet, server
        self._client: httpx.Client | None = None

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(verify=_context(self.fleet), timeout=httpx.Timeout(30, connect=5))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        """The answer's JSON; FleetError when the collector is unreachable or unavailable
        (retry later), FleetRefused when it refused (with its reason)."""
        try:
            resp = self._http().request(method, f"{self.server}{path}",
                                        content=None if body is None else json.dumps(body).encode(),
                                        headers={"Content-Type": "application/json"})
        except ssl.SSLError as e:
            raise FleetError(f"TLS with the collector failed: {e}") from None
        except httpx.HTTPError as e:
            self.close()
            raise FleetError(f"collector unreachable: {e!r:.200}") from None
        if resp.status_code == 200:
            try:
                return resp.json()
            except ValueError:
                raise FleetError("the collector's answer is not JSON") from None
        reason = _error(resp)
        if resp.status_code >= 500:
            raise FleetError(f"collector unavailable ({resp.status_code}): {reason}")
        raise FleetRefused(f"collector refused ({resp.status_code}): {reason}")


# -- the shipper ----------------------------------------------------------------------------

# unsealed entries that make the shipper ask for a seal sooner (the tail is short: only
# what no seal covers yet is counted)
URGENT = Filter(outcomes=(Outcome.REJECTED.value, Outcome.AUDIT_REJECTED.value))
SEAL_LOOK = 0.02  # s: how soon to look for a seal just requested


class Shipper:
    """Ships the journal in journal_dir to the collector this host enrolled with.

    request_seal: called (rate-limited) when entries wait that no seal covers yet; the
    daemon passes its journal writer's seal, so shipping does not wait for the 60 s seal.
    At most one request per `seal_after` seconds, or per `urgent_seal_after` while a
    rejection waits (what fleet alerts are made of: it reaches the collector in well under
    a second, and a storm of them costs 4 seals a second, not one per entry)."""

    def __init__(self, fleet_dir: str | os.PathLike, journal_dir: str | os.PathLike, *,
                 request_seal: Callable[[], None] | None = None, seal_after: float = 2.0,
                 urgent_seal_after: float = 0.25, poll: float = 0.5,
                 log: Callable[[str], None] | None = None):
        self.fleet = Path(fleet_dir)
        self.info = read_fleet(self.fleet)
        self.journal_dir = Path(journal_dir)
        self.request_seal, self.seal_after, self.poll = request_seal, seal_after, poll
        self.urgent_seal_after = urgent_seal_after
        self.sealing = False  # a seal was just requested: look again soon, not after `poll`
        self.log = log or (lambda m: None)
        self.client = Client(self.fleet, self.info["server"])
        self._call = self.client.call
        self._acked: int | None = None
        self._last_seal_req = 0.0
        self.last_error: str | None = None

    def close(self) -> None:
        self.client.close()

    def _save(self, seq: int) -> None:
        if seq != self._acked:
            _write_private(self.fleet / STATE_FILE, json.dumps({"journal": self.info["journal"], "shipped_seq": seq}))
            self._acked = seq

    def ship_once(self) -> int:
        """Ship everything sealed that the collector does not hold yet. Returns the
        collector's shipped seq. Raises FleetError (retry later) or FleetRefused."""
        from sockgate.journal import Journal

        st = self._call("GET", "/v1/state")
        acked = int(st["shipped_seq"])
        self._save(acked)
        j = Journal.open(self.journal_dir, readonly=True)
        try:
            if j.id != self.info["journal"]:
                raise FleetRefused(f"{self.journal_dir} is journal {j.id}, but this host enrolled journal "
                                   f"{self.info['journal']}")
            while True:
                seg = read_segment(j, acked)
                if seg is None:
                    self.sealing = False
                    if self.request_seal and j.last_seq > acked:
                        waited = time.monotonic() - self._last_seal_req
                        if waited > self.seal_after or (waited > self.urgent_seal_after
                                                        and j.count(replace(URGENT, from_seq=acked + 1))):
                            self._last_seal_req = time.monotonic()
                            self.request_seal()
                            self.sealing = True
                    return acked
                ans = self._call("POST", "/v1/segment", seg)
                acked = int(ans["shipped_seq"])
                self._save(acked)
        except JournalError as e:
            raise FleetError(f"reading the journal to ship: {e}") from None
        finally:
            j.close()

    def run(self, stop: threading.Event) -> None:
        """Ship until stop is set; retry with backoff (0.5 s doubling to 30 s; a refusal,
        which will not fix itself, waits 60 s and is logged once per reason)."""
        delay = self.poll
        while not stop.is_set():
            try:
                self.ship_once()
                if self.last_error:
                    self.log("fleet: shipping again")
                # right after a seal request the segment is a writer's commit away
                self.last_error, delay = None, SEAL_LOOK if self.sealing else self.poll
            except FleetRefused as e:
                if str(e) != self.last_error:
                    self.log(f"fleet: {e}")
                self.last_error, delay = str(e), 60.0
            except FleetError as e:
                if str(e) != self.last_error:
                    self.log(f"fleet: {e}; retrying")
                self.last_error = str(e)
                delay = min(30.0, max(0.5, delay * 2))
            stop.wait(delay)
        self.close()


def start_shipper(fleet_dir: str | os.PathLike, journal_dir: str | os.PathLike, stop: threading.Event,
                  log: Callable[[str], None], **kw: Any) -> threading.Thread:
    """The daemon's shipper thread (sockgate run --fleet-dir). Reads the fleet directory
    first, so a host that is not enrolled fails here, before anything starts."""
    shipper = Shipper(fleet_dir, journal_dir, log=log, **kw)
    if shipper.info["journal"] != read_journal_meta(Path(journal_dir))["id"]:
        raise FleetError(f"{fleet_dir}: enrolled for journal {shipper.info['journal']}, not for {journal_dir}")
    t = threading.Thread(target=shipper.run, args=(stop,), name="fleet-shipper", daemon=True)
    t.start()
    log(f"shipping {journal_dir} to {shipper.info['server']} as {shipper.info['name']}")
    return t
