"""The console's Fleet view (`sockgate console --fleet-db URL`) against a real PostgreSQL (the
fleet tests' pgserver, fixtures reused from tests/fleet/conftest.py) filled by the real
collector from real shipped journals, in Debian's chromium: the same rows as `fleet status
--json`, rejections in the last hour per host, hostile text as text, read-only use of the
database, and no Fleet view without --fleet-db."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/: the fleet package's fixtures

from consolekit import Console, free_port  # noqa: E402
from fleet.conftest import collector, db, decision, hosts, pg, run_cli  # noqa: E402,F401  (fixtures)
from sockgate.journal import Journal  # noqa: E402
from sockgate.record import Outcome, oneline  # noqa: E402
from test_browser import ARGS, CHROMIUM, no_script_ran, shot, sync_api  # noqa: E402  (skips without chromium)

HOSTILE_DIGEST = '<img src=x onerror="window.sgPwned=3">\x1b[2J\u202e'
HOSTILE_HOST = "<script>window.sgPwned=4</script>\x1b]0;x\x07"
NS = 10**9


@pytest.fixture
def fleet(db, collector, hosts, tmp_path):
    """Two enrolled hosts that shipped: web1 with 40 rejections in the last hour (and older
    ones), web2 with none in the hour and a hostile policy digest; then a console over a
    journal of its own with --fleet-db."""
    now = time.time_ns()
    for name, recent, digest in (("web1", 40, "digest-web1"), ("web2", 0, HOSTILE_DIGEST)):
        h = hosts(name)
        with Journal.open(h.journal_dir) as j:
            j.record("policy", digest=digest, rules=3, policy_file="/etc/sockgate/policy.toml")
            old = [decision(i, ts_ns=now - 3 * 3600 * NS + i * NS) for i in range(30)]          # hours ago
            new = [decision(i, ts_ns=now - 1800 * NS + i * NS) for i in range(recent)]         # in the hour
            allowed = [decision(i, ts_ns=now - 600 * NS + i * NS, outcome=Outcome.ALLOWED) for i in range(5)]
            j.append(old + new + allowed)
            j.seal()
        h.enroll(collector)
        h.shipper().ship_once()
    jdir = tmp_path / "console-journal"
    Journal.open(jdir).close()
    port = free_port()
    c = Console("--journal", jdir, "--fleet-db", db, "--listen", f"127.0.0.1:{port}", url=f"http://127.0.0.1:{port}")
    try:
        yield {"url": c.url, "db": db, "console": c, "jdir": jdir}
    finally:
        err = c.stop()
        assert "Traceback" not in err, err


@pytest.fixture
def page():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            pg = b.new_page(viewport={"width": 1400, "height": 700})
            pg.sg_dialogs, pg.sg_console = [], []
            pg.on("dialog", lambda d: (pg.sg_dialogs.append(d.message), d.dismiss()))
            pg.on("console", lambda m: pg.sg_console.append(m.text))
            yield pg
        finally:
            b.close()


def test_fleet_view_shows_fleet_status_and_rejections_of_the_hour(fleet, page):
    code, out, err = run_cli("fleet", "status", "--db", fleet["db"], "--json")
    assert code == 0, err
    want = {r["host"]: r for r in json.loads(out)}
    page.goto(f"{fleet['url']}/live")
    page.click("nav a:text-is('Fleet')")
    page.wait_for_url("**/fleet")
    shot(page, "fleet")
    rows = {r.get_attribute("data-host"): r.locator("td").all_inner_texts()
            for r in page.locator("#fleet-hosts tbody tr").all()}
    assert set(rows) == {"web1", "web2"}
    for name, cells in rows.items():
        w = want[name]
        assert cells[0] == name and cells[2] == str(w["shipped_seq"])
        assert cells[5] == "-"                       # no policy version: shipped journals carry none
        assert cells[7] == "never verified"
    assert rows["web1"][4] == "digest-web1" and rows["web1"][6] == "40"
    assert rows["web2"][6] == "0"
    # the hostile digest the host sent is text, cut to 14 characters of its visible escape
    assert rows["web2"][4] == oneline(HOSTILE_DIGEST)[:14]
    assert page.locator("#fleet-hosts img, #fleet-hosts script").count() == 0
    no_script_ran(page)
    # the JSON is fleet status --json plus rejected_1h (lag and last seen move; compare the rest)
    got = {r["host"]: r for r in fleet["console"].client.get("/fleet?format=json").json()}
    assert {n: got[n]["rejected_1h"] for n in got} == {"web1": 40, "web2": 0}
    for n, w in want.items():
        assert {k: v for k, v in got[n].items() if k not in ("lag_s", "rejected_1h")} == \
               {k: v for k, v in w.items() if k != "lag_s"}
    # once verified, the view shows the verify result
    code, out, err = run_cli("fleet", "verify", "--db", fleet["db"], "--json")
    assert code == 0, err
    page.reload()
    assert page.locator('#fleet-hosts tr[data-host="web1"] td').nth(7).inner_text().startswith("ok (")


def test_hostile_host_names_are_text_and_the_database_is_only_read(fleet, page):
    import psycopg

    from sockgate.fleet import store

    # whoever administers the database (or a bug elsewhere) put a hostile name and flag in it
    with psycopg.connect(fleet["db"]) as c:
        c.execute(f"SET search_path = {store.SCHEMA}")
        c.execute("INSERT INTO host (name, cert_fp, journal_id, enrolled_ns, flag) VALUES (%s, 'fp-x', 'j-x', %s, %s)",
                  (HOSTILE_HOST, time.time_ns(), "rewrote <b>history</b>"))
        before = c.execute("SELECT md5(string_agg(h::text, ',' ORDER BY id)) FROM host h").fetchone()[0]
    page.goto(f"{fleet['url']}/fleet")
    row = page.locator("#fleet-hosts tr.flagged td").all_inner_texts()
    assert row[0] == oneline(HOSTILE_HOST) and row[7] == "FLAGGED: rewrote <b>history</b>"
    assert page.locator("#fleet-hosts b, #fleet-hosts script").count() == 0
    no_script_ran(page)
    shot(page, "fleet-hostile")
    with psycopg.connect(fleet["db"]) as c:
        c.execute(f"SET search_path = {store.SCHEMA}")
        assert c.execute("SELECT md5(string_agg(h::text, ',' ORDER BY id)) FROM host h").fetchone()[0] == before
    # the console's session (store.connect(readonly=True), as Data.fleet opens it) refuses writes
    with store.connect(fleet["db"], readonly=True) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("UPDATE host SET flag = 'x'")


def test_without_fleet_db_there_is_no_fleet_view(tmp_path, page):
    jdir = tmp_path / "journal"
    Journal.open(jdir).close()
    port = free_port()
    c = Console("--journal", jdir, "--listen", f"127.0.0.1:{port}", url=f"http://127.0.0.1:{port}")
    try:
        page.goto(f"{c.url}/live")
        assert page.locator("nav a:text-is('Fleet')").count() == 0
        assert page.locator("nav a").count() == 5
        r = c.client.get("/fleet")
        assert r.status_code == 404 and "--fleet-db" in r.text
    finally:
        assert "Traceback" not in c.stop()


def test_an_unreachable_fleet_db_is_a_clear_error(tmp_path):
    from consolekit import cli

    jdir = tmp_path / "journal"
    Journal.open(jdir).close()
    p = cli("console", "--journal", jdir, "--listen", f"127.0.0.1:{free_port()}",
            "--fleet-db", "postgresql://nobody@127.0.0.1:1/x")
    assert p.returncode == 1 and "cannot connect to the fleet database" in p.stderr and "Traceback" not in p.stderr
    p = cli("console", "--journal", jdir, "--listen", f"127.0.0.1:{free_port()}", "--fleet-db", "not a url=")
    assert p.returncode == 1 and p.stderr.startswith("sockgate: cannot connect to the fleet database: ")
    assert "Traceback" not in p.stderr and len(p.stderr.splitlines()) == 1, p.stderr
