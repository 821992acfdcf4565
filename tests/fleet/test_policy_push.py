"""Policy delivery through the collector: `fleet policy push` into the real PostgreSQL, the
real collector over real mutual TLS, the host's fetch running the real apply path against
a policy file and a journal in a temporary directory (no daemon: the result is
"installed"; tests/kernel/test_fleet_policy.py covers the reload with the real daemon),
the report back in PostgreSQL, `fleet status` showing it."""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from .conftest import run_cli
from cryptography.hazmat.primitives.asymmetric import ed25519

from sockgate.errors import FleetError
from sockgate.fleet import bundle as B
from sockgate.fleet import push as P
from sockgate.fleet import store
from sockgate.fleet.deliver import DELIVERY_FILE, PolicyFetcher
from sockgate.fleet.ship import enroll
from sockgate.journal import Outcome

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "replay"))
from replaykit import NO_MAIL  # noqa: E402   (the replay tests' policy that rejects port 25)

CURRENT = b'mode = "enforce"\n# installed by hand: allows everything\n'
NO_TELNET = NO_MAIL.replace("no-mail", "no-telnet").replace("[25]", "[23]")


@pytest.fixture(scope="module")
def admin(tmp_path_factory):
    """The administrator's key pair, as `fleet policy keygen` writes it."""
    d = tmp_path_factory.mktemp("admin")
    public, pub = B.keygen(d / "admin.key")
    return {"key": d / "admin.key", "pub": pub, "private": B.load_private_key(d / "admin.key")}


def signed(admin, text: str, version: int, group: str = "web", **kw) -> bytes:
    return B.sign(text.encode(), admin["private"], version=version, group=group, **kw)[0]


def forged(raw: bytes) -> bytes:
    """The bundle with one bit of its signature flipped."""
    env = json.loads(raw)
    sig = bytearray(base64.b64decode(env["signature"]))
    sig[0] ^= 1
    return json.dumps(dict(env, signature=base64.b64encode(bytes(sig)).decode())).encode()


class Node:
    """A host: its journal (traffic: `mail` allowed connects to port 25, 5 to 443), its
    installed policy file, its fleet directory trusting the admin key, enrolled in `group`."""

    def __init__(self, hosts, collector, admin, name: str, group: str, mail: int = 0):
        self.h = hosts(name)
        self.h.write(5, outcome=Outcome.ALLOWED, remote_port=443)
        if mail:
            self.h.write(mail, outcome=Outcome.ALLOWED, remote_port=25)
        enroll(collector.url, collector.token(), name, self.h.fleet_dir, self.h.journal_dir, group=group)
        keys = self.h.fleet_dir / "policy-keys"
        keys.mkdir(mode=0o755)
        (keys / "admin.pub").write_bytes(admin["pub"].read_bytes())
        self.policy = self.h.fleet_dir.parent / "policy.toml"
        self.policy.write_bytes(CURRENT)
        self.fetcher = PolicyFetcher(self.h.fleet_dir, self.h.journal_dir, policy_path=self.policy,
                                     pin_dir=str(self.h.fleet_dir.parent / "pins"))

    def fetch(self):
        return self.fetcher.once()


@pytest.fixture
def nodes(collector, hosts, admin):
    made = []

    def make(name: str, group: str = "web", mail: int = 0) -> Node:
        n = Node(hosts, collector, admin, name, group, mail)
        made.append(n)
        return n
    yield make
    for n in made:
        n.fetcher.close()


def reports(db: str, host: str) -> list[tuple]:
    with psycopg.connect(db) as c:
        return c.execute("SELECT r.result, r.reason, r.version, r.digest, r.detail FROM sockgate.policy_report r "
                         "JOIN sockgate.host h ON h.id = r.host_id WHERE h.name = %s ORDER BY r.id", (host,)).fetchall()


def push_file(admin, path, db, *more: str):
    return run_cli("fleet", "policy", "push", str(path), "--db", db, "--trust", str(admin["pub"]), *more)


def owner_store(db: str, raw: bytes, genuine: bytes, admin) -> None:
    """What a database administrator (or a collector's compromised owner account) can do:
    store any bytes as a bundle, with the metadata of a genuine one."""
    with store.connect(db) as c:
        P.store_bundle(c, raw, B.verify(genuine, [B.public_of(admin["private"])], policy=False))


def test_push_fetch_apply_report_status(db, collector, nodes, admin, tmp_path):
    web1, db1 = nodes("web1"), nodes("db1", group="db")
    assert (web1.h.fleet_dir / "group").read_text() == "web\n"
    b1 = tmp_path / "web-1.json"
    b1.write_bytes(signed(admin, NO_MAIL, 1))
    t0 = time.monotonic()
    code, out, err = push_file(admin, b1, db, "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["stored"] and (got["group"], got["version"], got["hosts"]) == ("web", 1, ["web1"])
    t_pushed = time.monotonic()
    r = web1.fetch()
    t_applied = time.monotonic()
    print(f"push (CLI, subprocess) {t_pushed - t0:.3f} s; fetch+apply+report {t_applied - t_pushed:.3f} s")
    assert r["result"] == "installed" and r["version"] == 1 and r["digest"] == got["digest"], r
    assert web1.policy.read_text() == NO_MAIL
    assert [x[:4] for x in reports(db, "web1")] == [("installed", None, 1, got["digest"])]
    # the same bundle again: not applied again, not reported again, its bytes not even sent
    mtime = web1.policy.stat().st_mtime_ns
    assert web1.fetch() is None and web1.policy.stat().st_mtime_ns == mtime and len(reports(db, "web1")) == 1
    assert json.loads((web1.h.fleet_dir / DELIVERY_FILE).read_text())["reported"] is True
    # the same push again changes nothing; the host in another group never gets it
    code, out, err = push_file(admin, b1, db)
    assert code == 0 and "already stored" in out, err
    assert db1.fetch() is None and db1.policy.read_bytes() == CURRENT and reports(db, "db1") == []

    # `push FILE --group G --key K`: signed here, the next version by default; the key is
    # not in the database (only the signed bytes are)
    (tmp_path / "p.toml").write_text(NO_TELNET)
    code, out, err = run_cli("fleet", "policy", "push", str(tmp_path / "p.toml"), "--group", "web", "--key",
                             str(admin["key"]), "--db", db)
    assert code == 0 and "stored: group web version 2" in out and "1 host(s) in the group (web1)" in out, err
    r = web1.fetch()
    assert r["result"] == "installed" and r["version"] == 2 and web1.policy.read_text() == NO_TELNET
    with psycopg.connect(db) as c:
        raws = [bytes(x[0]) for x in c.execute("SELECT raw FROM sockgate.policy_bundle").fetchall()]
    key_pem = admin["key"].read_bytes()
    assert len(raws) == 2 and not any(key_pem.split(b"\n")[1] in raw for raw in raws)

    # fleet status: group, version run, last push result; --json for scripts
    code, out, err = run_cli("fleet", "status", "--db", db, "--json")
    st = {x["host"]: x for x in json.loads(out)}
    assert st["web1"]["group"] == "web" and st["web1"]["policy_applied"]["version"] == 2
    assert st["web1"]["last_push"]["result"] == "installed" and st["web1"]["policy_version"] == "2"
    assert st["db1"]["group"] == "db" and st["db1"]["last_push"] is None
    code, out, err = run_cli("fleet", "status", "--db", db)
    assert code == 0 and "GROUP" in out and "LAST PUSH" in out and "installed v2" in out, out
    code, out, err = run_cli("fleet", "policy", "status", "--db", db, "--json")
    st = json.loads(out)
    assert [(b["group"], b["version"]) for b in st["bundles"]] == [("web", 2), ("web", 1)]
    assert {h["host"]: h["policy_applied"]["version"] for h in st["hosts"]} == {"web1": 2, "db1": None}

    # the administrator moves web1 to group db: its own FLEET_DIR/group still says web,
    # so it refuses db's bundle (reason group), reported once
    (tmp_path / "d.toml").write_text(NO_MAIL)
    code, out, err = run_cli("fleet", "policy", "push", str(tmp_path / "d.toml"), "--group", "db", "--key",
                             str(admin["key"]), "--db", db, "--version", "7")
    assert code == 0, err
    code, out, err = run_cli("fleet", "group", "set", "web1", "db", "--db", db)
    assert code == 0 and "web1: group db (was web)" in out, err
    r = web1.fetch()
    assert r["result"] == "refused" and r["reason"] == "group" and web1.policy.read_text() == NO_TELNET
    assert web1.fetch() is None and [x[1] for x in reports(db, "web1")] == [None, None, "group"]
    # db1 through the CLI: `fleet policy fetch --once`
    code, out, err = run_cli("fleet", "policy", "fetch", "--once", "--fleet-dir", str(db1.h.fleet_dir),
                             "--journal", str(db1.h.journal_dir), "--policy", str(db1.policy),
                             "--pin-dir", str(db1.h.fleet_dir.parent / "pins"), "--json")
    assert code == 0 and json.loads(out)["result"] == "installed" and db1.policy.read_text() == NO_MAIL, err
    code, out, err = run_cli("fleet", "policy", "fetch", "--once", "--fleet-dir", str(db1.h.fleet_dir),
                             "--journal", str(db1.h.journal_dir), "--policy", str(db1.policy),
                             "--pin-dir", str(db1.h.fleet_dir.parent / "pins"))
    assert code == 0 and "nothing new" in out, err


def test_refused_bundles_are_reported_once_and_keep_the_old_policy(db, collector, nodes, admin, tmp_path):
    web1 = nodes("web1", mail=4)          # 4 allowed mail connects: NO_MAIL would break them
    v1 = signed(admin, NO_TELNET, 1)
    with store.connect(db) as c:
        assert P.push(c, v1, [B.public_of(admin["private"])])["stored"]
    assert web1.fetch()["result"] == "installed"
    before = web1.policy.read_bytes()
    assert before == NO_TELNET.encode()

    # a bad signature: stored by the database's owner (the collector cannot forge one)
    v2 = signed(admin, 'mode = "audit"\n', 2)
    owner_store(db, forged(v2), v2, admin)
    r = web1.fetch()
    assert (r["result"], r["reason"]) == ("refused", "bad-bundle") and "bad signature" in r["message"]
    assert web1.policy.read_bytes() == before
    assert web1.fetch() is None and len(reports(db, "web1")) == 2     # reported once, not retried

    # an older version: `push` refuses it; replayed into the database by its owner, the
    # host refuses it (rollback protection)
    v3 = signed(admin, NO_TELNET + "# v3\n", 3)
    (tmp_path / "v3.json").write_bytes(v3)
    assert push_file(admin, tmp_path / "v3.json", db)[0] == 0
    assert web1.fetch()["version"] == 3
    before = web1.policy.read_bytes()
    allow = "# allows everything again\n"
    v0 = signed(admin, allow, 1, created_ns=1)
    (tmp_path / "old.json").write_bytes(v0)
    code, out, err = push_file(admin, tmp_path / "old.json", db)
    assert code == 1 and "rollback" in err and "Traceback" not in err, err
    with psycopg.connect(db) as c:
        c.execute("DELETE FROM sockgate.policy_bundle")
    owner_store(db, v0, v0, admin)
    r = web1.fetch()
    assert (r["result"], r["reason"]) == ("refused", "not-newer") and "not newer than version 3" in r["message"]
    assert web1.policy.read_bytes() == before and allow not in web1.policy.read_text()

    # a failing replay gate: the host's own journal has mail traffic the bundle would break
    v4 = signed(admin, NO_MAIL, 4)
    (tmp_path / "v4.json").write_bytes(v4)
    assert push_file(admin, tmp_path / "v4.json", db)[0] == 0
    r = web1.fetch()
    assert (r["result"], r["reason"], r["breaks"], r["max_breaks"]) == ("refused", "replay-gate", 4, 0), r
    assert web1.policy.read_bytes() == before
    assert web1.fetch() is None
    rows = reports(db, "web1")
    assert [(x[0], x[1], x[2]) for x in rows] == [("installed", None, 1), ("refused", "bad-bundle", None),
                                                  ("installed", None, 3), ("refused", "not-newer", 1),
                                                  ("refused", "replay-gate", 4)]
    detail = json.loads(rows[-1][4])
    assert detail["breaks"] == 4 and detail["break_groups"][0]["port"] == 25 and detail["decisions"] == 9
    code, out, err = run_cli("fleet", "status", "--db", db, "--json")
    (st,) = json.loads(out)
    assert st["policy_applied"]["version"] == 3 and st["last_push"]["reason"] == "replay-gate"
    assert st["policy_version"] == "3"
    code, out, err = run_cli("fleet", "policy", "status", "--db", db)
    assert code == 0 and "web1: group web, runs v3" in out and "refused v4 replay-gate: 4 of this host's" in out
    # the fix, signed as a new version with room for the breaks, applies
    (tmp_path / "v5.json").write_bytes(signed(admin, NO_MAIL, 5, max_breaks=4))
    assert push_file(admin, tmp_path / "v5.json", db)[0] == 0
    assert web1.fetch()["result"] == "installed" and web1.policy.read_text() == NO_MAIL


def test_a_lost_report_is_sent_again_not_reapplied(db, collector, nodes, admin):
    web1 = nodes("web1")
    with store.connect(db) as c:
        P.push(c, signed(admin, NO_MAIL, 1), [B.public_of(admin["private"])])
    with psycopg.connect(db) as c:     # the collector cannot store reports for a while
        c.execute("REVOKE INSERT ON sockgate.policy_report FROM sockgate_ingest")
    with pytest.raises(FleetError, match="collector unavailable"):
        web1.fetch()
    assert web1.policy.read_text() == NO_MAIL and reports(db, "web1") == []
    d = json.loads((web1.h.fleet_dir / DELIVERY_FILE).read_text())
    assert d["reported"] is False and d["report"]["result"] == "installed"
    with psycopg.connect(db) as c:
        c.execute("GRANT INSERT ON sockgate.policy_report TO sockgate_ingest")
    r = web1.fetch()     # the kept result, not a second apply (which would say not-newer)
    assert r["result"] == "installed" and [x[0] for x in reports(db, "web1")] == ["installed"]
    assert web1.fetch() is None and len(reports(db, "web1")) == 1


def test_the_ingest_role_cannot_push_or_rewrite(db, collector, nodes, admin):
    nodes("web1")
    with store.connect(db) as c:
        P.push(c, signed(admin, NO_MAIL, 1), [B.public_of(admin["private"])])
    raw = signed(admin, NO_MAIL, 2)
    with psycopg.connect(db) as c:
        c.execute("SET ROLE sockgate_ingest")
        assert c.execute("SELECT count(*) FROM sockgate.policy_bundle").fetchone()[0] == 1
        for sql, args in (
                ("INSERT INTO sockgate.policy_bundle (grp, version, digest, key_id, max_breaks, replay_window_ns, "
                 "created_ns, pushed_ns, sha256, raw) VALUES ('web', 2, 'd', 'k', 0, 1, 0, 0, 's', %s)", (raw,)),
                ("UPDATE sockgate.policy_bundle SET raw = %s", (raw,)),
                ("DELETE FROM sockgate.policy_bundle", ()),
                ("UPDATE sockgate.host_group SET grp = 'db'", ()),
                ("DELETE FROM sockgate.host_group", ()),
                ("UPDATE sockgate.policy_report SET result = 'applied'", ()),
                ("DELETE FROM sockgate.policy_report", ()),
                ("TRUNCATE sockgate.policy_bundle", ())):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(sql, args)
            c.rollback()
            c.execute("SET ROLE sockgate_ingest")


def test_hostile_reports_and_pushes(db, collector, nodes, admin, tmp_path):
    import ssl

    web1 = nodes("web1")
    f = web1.h.fleet_dir
    ctx = ssl.create_default_context(cafile=str(f / "ca.pem"))
    ctx.load_cert_chain(f / "client.pem", f / "client.key")
    ok = {"result": "refused", "reason": "replay-gate", "version": 3, "group": "web", "digest": "a" * 64,
          "message": "evil \x1b[31m\x00 text \ud800", "previous": {"version": 2, "digest": "b" * 64},
          "bundle_sha256": "c" * 64}
    with httpx.Client(verify=ctx, timeout=10) as c:
        for bad in ([], {"result": "maybe"}, dict(ok, reason="nope"), dict(ok, version=True),
                    dict(ok, version=2**63), dict(ok, digest="x"), dict(ok, message=7),
                    dict(ok, result="applied"), dict(ok, previous={"version": "2"}),
                    dict(ok, message="x" * (P.MAX_REPORT + 1))):
            r = c.post(f"{collector.url}/v1/policy/report", content=json.dumps(bad).encode())
            assert r.status_code == 400 and r.json()["error"].startswith("report: "), (bad, r.text)
        assert reports(db, "web1") == []
        r = c.post(f"{collector.url}/v1/policy/report", content=json.dumps(ok).encode())
        assert r.status_code == 200 and r.json()["stored"], r.text
        assert c.get(f"{collector.url}/v1/policy?have=zz").json()["bundle"] is None   # nothing pushed
    with httpx.Client(verify=ssl.create_default_context(cafile=str(f / "ca.pem")), timeout=10) as c:   # no cert
        assert c.get(f"{collector.url}/v1/policy").status_code == 401
        assert c.post(f"{collector.url}/v1/policy/report", content=b"{}").status_code == 401
    code, out, err = run_cli("fleet", "policy", "status", "--db", db)
    assert code == 0 and "\x1b" not in out and "\x00" not in out and "evil \\x1b[31m" in out, out
    code, out, err = run_cli("fleet", "status", "--db", db)
    assert code == 0 and "refused v3 replay-gate" in out and "v2 bbbbbbbbbbbb" in out, out

    # pushes: usage errors exit 2, a bad bundle exit 1, never a traceback, nothing stored
    (tmp_path / "junk.json").write_bytes(b"\x00not a bundle")
    (tmp_path / "forged.json").write_bytes(forged(signed(admin, NO_MAIL, 1)))
    (tmp_path / "ok.json").write_bytes(signed(admin, NO_MAIL, 1))
    other = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "other.json").write_bytes(B.sign(NO_MAIL.encode(), other, version=1, group="web")[0])
    for args, want in ((("junk.json",), 1), (("forged.json",), 1), (("other.json",), 1),
                       (("ok.json", "--version", "3"), 2), (("ok.json", "--group", "db"), 2),
                       (("ok.json", "--group", "bad group!", "--key", str(admin["key"])), 2)):
        code, out, err = push_file(admin, tmp_path / args[0], db, *args[1:])
        assert code == want and "Traceback" not in err and err.startswith("sockgate: "), (args, code, err)
    with psycopg.connect(db) as c:
        assert c.execute("SELECT count(*) FROM sockgate.policy_bundle").fetchone()[0] == 0
    os.chmod(admin["key"], 0o644)
    try:
        code, out, err = run_cli("fleet", "policy", "push", str(tmp_path / "ok.json"), "--db", db, "--group", "web",
                                 "--key", str(admin["key"]))
        assert code == 2 and "others may read it" in err
    finally:
        os.chmod(admin["key"], 0o600)


def test_enroll_group_cli_and_conflicts(db, collector, hosts, tmp_path):
    h = hosts("web9")
    code, out, err = run_cli("fleet", "enroll", "--server", collector.url, "--token", collector.token(), "--name",
                             "web9", "--fleet-dir", str(h.fleet_dir), "--journal", str(h.journal_dir),
                             "--group", "bad group")
    assert code == 2 and "--group" in err and not (h.fleet_dir / "fleet.json").exists(), err
    code, out, err = run_cli("fleet", "enroll", "--server", collector.url, "--token", collector.token(), "--name",
                             "web9", "--fleet-dir", str(h.fleet_dir), "--journal", str(h.journal_dir),
                             "--group", "web")
    assert code == 0 and "policy group web" in out, err
    assert (h.fleet_dir / "group").read_text() == "web\n"
    code, out, err = run_cli("fleet", "status", "--db", db, "--json")
    assert json.loads(out)[0]["group"] == "web"
    code, out, err = run_cli("fleet", "group", "set", "nohost", "web", "--db", db)
    assert code == 1 and "no enrolled host named nohost" in err
    code, out, err = run_cli("fleet", "group", "set", "web9", "-bad", "--db", db)
    assert code == 2 and "Traceback" not in err
    # the host's own group file and --group disagree: refused before anything is sent
    g = hosts("web8")
    g.fleet_dir.mkdir(mode=0o700)
    (g.fleet_dir / "group").write_text("db\n")
    with pytest.raises(FleetError, match="says this host is in group db"):
        enroll(collector.url, collector.token(), "web8", g.fleet_dir, g.journal_dir, group="web")
    assert not (g.fleet_dir / "fleet.json").exists()


def test_the_polling_thread_applies_a_push(db, collector, nodes, admin):
    """start_fetcher, the thread `sockgate run --fleet-dir` starts (here without a daemon,
    polling every 0.2 s): a push is applied and reported without anyone calling it."""
    import threading

    from sockgate.fleet.deliver import start_fetcher

    web1 = nodes("web1")
    stop, logged = threading.Event(), []
    t = start_fetcher(web1.h.fleet_dir, web1.h.journal_dir, stop, logged.append, policy_path=web1.policy,
                      pin_dir=str(web1.h.fleet_dir.parent / "pins"), interval=0.2)
    try:
        assert t is not None and any("asking" in m and "group web" in m for m in logged), logged
        time.sleep(0.5)
        assert web1.policy.read_bytes() == CURRENT and reports(db, "web1") == []
        t0 = time.monotonic()
        with store.connect(db) as c:
            P.push(c, signed(admin, NO_MAIL, 1), [B.public_of(admin["private"])])
        while not reports(db, "web1") and time.monotonic() - t0 < 20:
            time.sleep(0.02)
        print(f"push -> report stored through the 0.2 s polling thread: {time.monotonic() - t0:.3f} s")
        assert [x[0] for x in reports(db, "web1")] == ["installed"] and web1.policy.read_text() == NO_MAIL
        time.sleep(0.6)     # three more rounds: nothing applied or reported again
        assert len(reports(db, "web1")) == 1
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()
    # no trusted key: no thread, and it says why
    (web1.h.fleet_dir / "policy-keys" / "admin.pub").unlink()
    logged.clear()
    assert start_fetcher(web1.h.fleet_dir, web1.h.journal_dir, stop, logged.append) is None
    assert any("policy delivery off" in m for m in logged), logged
