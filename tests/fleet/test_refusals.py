"""What the collector refuses, with the reason, storing nothing: unenrolled clients, bad
certificates, used or foreign tokens, segments that do not continue the chain, altered
rows, forged or missing seals, replays; and what the ingest role may not do."""

from __future__ import annotations

import copy
import json
import datetime as dt
import ssl

import httpx
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sockgate.errors import FleetError, FleetRefused
from sockgate.fleet import pki
from sockgate.fleet.ship import enroll, read_segment
from sockgate.journal import Journal

from .conftest import run_cli


def stored(db: str) -> tuple[int, int]:
    with psycopg.connect(db) as c:
        return (c.execute("SELECT count(*) FROM sockgate.entry").fetchone()[0],
                c.execute("SELECT count(*) FROM sockgate.seal").fetchone()[0])


def client(host, verify_ca: bool = True, cert: bool = True) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(host.fleet_dir / "ca.pem"))
    if cert:
        ctx.load_cert_chain(host.fleet_dir / "client.pem", host.fleet_dir / "client.key")
    return httpx.Client(verify=ctx, timeout=10)


def segment(host, after: int = 0) -> dict:
    with Journal.open(host.journal_dir, readonly=True) as j:
        return read_segment(j, after)


@pytest.fixture
def enrolled(collector, hosts):
    h = hosts("web1")
    h.write(300)
    h.enroll(collector)
    return h


def test_token_one_time_and_pinned(collector, hosts, tmp_path):
    a, b = hosts("a"), hosts("b")
    tok = collector.token(cli=True)
    assert tok.startswith("sgft1:") and tok.endswith(pki.CA.open(collector.state).fingerprint)
    enroll(collector.url, tok, "a", a.fleet_dir, a.journal_dir)
    with pytest.raises(FleetRefused, match="already used"):
        enroll(collector.url, tok, "b", b.fleet_dir, b.journal_dir)
    secret, _ = pki.parse_token(collector.token())
    forged = f"sgft1:{secret}:{'0' * 64}"    # right secret, another CA's fingerprint
    with pytest.raises(FleetRefused, match="does not match the token's fingerprint"):
        enroll(collector.url, forged, "b", b.fleet_dir, b.journal_dir)
    with pytest.raises(FleetRefused, match="unknown token"):
        enroll(collector.url, f"sgft1:nosuchsecret:{pki.CA.open(collector.state).fingerprint}", "b",
               b.fleet_dir, b.journal_dir)
    from sockgate.errors import UsageError
    with pytest.raises(UsageError, match="not a sockgate fleet token"):
        enroll(collector.url, "hello", "b", b.fleet_dir, b.journal_dir)


def test_unenrolled_and_bad_certificates(db, collector, enrolled, tmp_path):
    before = stored(db)
    seg = segment(enrolled)
    with client(enrolled, cert=False) as c:    # no certificate at all
        r = c.post(f"{collector.url}/v1/segment", json=seg)
    assert r.status_code == 401 and "enroll first" in r.json()["error"]
    # a certificate from another CA: the TLS handshake itself is refused
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "bad.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "bad.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    ctx = ssl.create_default_context(cafile=str(enrolled.fleet_dir / "ca.pem"))
    ctx.load_cert_chain(tmp_path / "bad.pem", tmp_path / "bad.key")
    with httpx.Client(verify=ctx, timeout=10) as c, pytest.raises((httpx.ConnectError, httpx.ReadError,
                                                                    httpx.RemoteProtocolError)):
        c.post(f"{collector.url}/v1/segment", json=seg)
    # a certificate from the collector's own CA that no enrolment issued (the CA key stolen
    # would allow it; the database still names only enrolled certificates)
    ca = pki.CA.open(collector.state)
    kpem, csr = pki.new_client_key()
    pem, _ = ca.sign_csr(csr, "web1")
    (tmp_path / "own.pem").write_bytes(pem)
    (tmp_path / "own.key").write_bytes(kpem)
    ctx = ssl.create_default_context(cafile=str(enrolled.fleet_dir / "ca.pem"))
    ctx.load_cert_chain(tmp_path / "own.pem", tmp_path / "own.key")
    with httpx.Client(verify=ctx, timeout=10) as c:
        r = c.post(f"{collector.url}/v1/segment", json=seg)
    assert r.status_code == 403 and "not enrolled" in r.json()["error"]
    assert stored(db) == before == (0, 0)
    assert "TLS handshake refused" in collector.log.read_text()


def test_segments_that_do_not_continue_or_are_altered(db, collector, enrolled):
    first = segment(enrolled)
    with client(enrolled) as c:
        def post(seg):
            return c.post(f"{collector.url}/v1/segment", json=seg)

        # a host's first segment may start anywhere (its history before enrolment is its
        # word); after that, every segment must continue what is held
        assert post(first).status_code == 200
        held = stored(db)
        enrolled.write(200)
        nxt = segment(enrolled, 300)
        gap = copy.deepcopy(nxt)
        gap["first_seq"] += 50
        gap["prev_hash"] = gap["rows"][49][-1]
        gap["rows"] = gap["rows"][50:]
        r = post(gap)
        assert r.status_code == 409 and "does not continue the chain" in r.json()["error"]
        assert r.json()["shipped_seq"] == 300
        # a row altered in transit (or by the host): its stored hash no longer chains
        bad = copy.deepcopy(nxt)
        bad["rows"][10][12] = "/usr/bin/innocent"      # program
        r = post(bad)
        assert r.status_code == 409 and "does not match the chain" in r.json()["error"]
        # hashes recomputed too: the seal no longer matches
        from sockgate.journal.store import chain_next
        h = bytes.fromhex(bad["prev_hash"])
        for row in bad["rows"]:
            h = chain_next(h, row[:-1])
            row[-1] = h.hex()
        r = post(bad)
        assert r.status_code == 409 and "does not match the segment's chain" in r.json()["error"]
        # ... and the seal re-made over the forged chain: its MAC does not check
        bad["seals"][-1][2] = h.hex()
        r = post(bad)
        assert r.status_code == 409 and "forged" in r.json()["error"]
        # unsealed rows at the end
        tail = copy.deepcopy(nxt)
        tail["seals"] = []
        assert post(tail).status_code == 400
        tail = copy.deepcopy(first)
        tail["first_seq"], tail["prev_hash"] = nxt["first_seq"], nxt["prev_hash"]
        tail["rows"], tail["seals"] = nxt["rows"][:-5], nxt["seals"]
        r = post(tail)
        assert r.status_code == 409 and "only sealed entries" in r.json()["error"]
        # another journal's segment over this host's certificate
        other = copy.deepcopy(nxt)
        other["journal"] = "0" * 32
        r = post(other)
        assert r.status_code == 409 and "enrolled journal" in r.json()["error"]
        # hostile shapes: a clear 400, never a 500
        for body in ([], {"first_seq": "1"}, {**nxt, "rows": [["x"]]}, {**nxt, "rows": [[None] * 21]},
                     {**nxt, "prev_hash": "zz"}, {**nxt, "seals": [[1, 2, 3]]}):
            r = post(body)
            assert r.status_code in (400, 409), (body, r.text)
            assert r.json()["error"]
        r = c.post(f"{collector.url}/v1/segment", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "not JSON" in r.json()["error"]
        assert stored(db) == held
        # the replayed old segment: answered with what is held, nothing stored twice
        r = post(first)
        assert r.status_code == 200 and r.json()["stored"] == 0 and r.json()["shipped_seq"] == 300
        assert stored(db) == held
        # the real next one is still accepted
        r = post(nxt)
        assert r.status_code == 200 and r.json()["shipped_seq"] == 500
    assert stored(db)[0] == 500


def test_ingest_role_cannot_update_or_delete(db, collector, enrolled):
    enrolled.shipper().ship_once()
    with psycopg.connect(db) as c:
        c.execute("SET ROLE sockgate_ingest")
        for sql in ("UPDATE sockgate.entry SET program = 'x'", "DELETE FROM sockgate.entry",
                    "UPDATE sockgate.seal SET mac = 'x'", "DELETE FROM sockgate.host", "TRUNCATE sockgate.entry",
                    "UPDATE sockgate.host SET cert_fp = 'x'"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(sql)
            c.rollback()
            c.execute("SET ROLE sockgate_ingest")


def test_enroll_needs_a_journal_key(collector, hosts, tmp_path):
    h = hosts("x")
    (h.journal_dir / "verification.key").unlink()
    with pytest.raises(FleetError, match="pass --key"):
        enroll(collector.url, collector.token(), "x", h.fleet_dir, h.journal_dir)


def test_sealed_but_mistyped_values_refused(db, collector, enrolled):
    """A host holding its own key can seal anything: values of the wrong type for their
    column are still refused by the typed COPY (400, the whole segment rolled back)."""
    from sockgate.journal import seal as sealing
    from sockgate.journal.store import FIELDS, chain_next

    jid, k0 = sealing.read_verification_key(enrolled.journal_dir / "verification.key")
    for column, value in (("uid", "not-a-number"), ("extra", None), ("remote_port", 2**70)):
        seg = segment(enrolled)
        seg["rows"][3][FIELDS.index(column)] = value
        h = bytes.fromhex(seg["prev_hash"])
        for row in seg["rows"]:
            h = chain_next(h, row[:-1])
            row[-1] = h.hex()
        k = k0
        for _ in range(seg["seals"][0][0]):
            k = sealing.evolve(k)
        assert len(seg["seals"]) == 1
        epoch, seq, _, ts, _ = seg["seals"][0]
        seg["seals"][0][2] = h.hex()
        seg["seals"][0][4] = sealing.seal_mac(k, jid, epoch, seq, h, ts).hex()
        with client(enrolled) as c:
            r = c.post(f"{collector.url}/v1/segment", json=seg)
        assert r.status_code == 400 and "wrong" in r.json()["error"], (column, r.text)
    assert stored(db) == (0, 0)
    assert enrolled.shipper().ship_once() == 300      # the real segment is still accepted


def test_a_revoked_host_is_refused_everywhere_and_its_history_kept(db, collector, enrolled):
    """`fleet revoke HOST --reason R`: the host's certificate is refused on every endpoint
    from then on (state, segment), with the reason; what it shipped stays and verifies; the
    ingest role (the collector's) cannot take the revocation back; an unknown host and a
    missing reason are clear errors; `fleet status` shows it."""
    s = enrolled.shipper()
    first = s.ship_once()
    assert first > 0 and stored(db)[0] == first
    code, out, err = run_cli("fleet", "revoke", "web1", "--reason", "key exposed\x1b[2J", "--db", db, "--json")
    assert code == 0, err
    assert json.loads(out)["reason"] == "key exposed\\x1b[2J"    # control bytes never stored raw
    enrolled.write(50)
    before = stored(db)
    with client(enrolled) as c:
        for method, path, body in (("GET", "/v1/state", None), ("POST", "/v1/segment", segment(enrolled, first))):
            r = c.request(method, f"{collector.url}{path}", json=body)
            assert r.status_code == 403 and "was revoked (key exposed" in r.json()["error"], (path, r.text)
    with pytest.raises(FleetRefused, match="revoked"):
        s.ship_once()
    assert stored(db) == before
    with psycopg.connect(db) as c:
        c.execute("SET ROLE sockgate_ingest")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("UPDATE sockgate.host SET revoked_ns = NULL WHERE name = 'web1'")
    code, out, err = run_cli("fleet", "status", "--db", db)
    assert code == 0 and "REVOKED" in out and "key exposed" in out and "\x1b" not in out
    code, out, err = run_cli("fleet", "verify", "--db", db, "--state", str(collector.state))
    assert code == 0, out + err
    code, out, err = run_cli("fleet", "revoke", "nosuch", "--reason", "x", "--db", db)
    assert code == 1 and "no enrolled host 'nosuch' (enrolled: web1)" in err and "Traceback" not in err
    code, out, err = run_cli("fleet", "revoke", "web1", "--reason", "  ", "--db", db)
    assert code == 2 and "--reason" in err
