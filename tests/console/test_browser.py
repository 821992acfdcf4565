"""The console and the report in a real browser: Debian's chromium driven by Playwright (no
browser download), against the real `sockgate console` over a real journal that this test
appends to with the journal writer while the page watches.

One browser and one console for the module; each view's screenshot lands in build/screenshots/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from consolekit import (
    HOSTILE_PROGRAMS, HOSTILE_USER, NS, POLICY, SCREENSHOTS, Console, cli, decision, free_port, ibmi_entries, mixed,
    write,
)
from sockgate.journal import Journal
from sockgate.record import EntryType, Outcome, oneline

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# In CI (CI=true) a missing browser fails the run instead of skipping it, as the kernel tests do.
if os.environ.get("CI") == "true":
    from playwright import sync_api
    assert Path(CHROMIUM).exists(), f"{CHROMIUM}: Debian's chromium is missing (make deps installs it)"
else:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make deps installs it)", allow_module_level=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A journal (decisions of the last 50 minutes, hostile names, an IBM i import, a gap and a
    detach record), the policy file, and a console serving them."""
    tmp = tmp_path_factory.mktemp("console")
    jdir = tmp / "journal"
    now = time.time_ns()
    entries = mixed(now)
    entries += [decision(now - (10 - i) * NS, outcome=Outcome.REJECTED, rule="no-mail", port=25, program=p,
                         user=HOSTILE_USER, remote="10.66.0.1") for i, p in enumerate(HOSTILE_PROGRAMS)]
    entries += ibmi_entries(now)
    write(jdir, entries)
    with Journal.open(jdir) as j:
        j.record(EntryType.GAP, dropped=7, cpu=0)
        j.record(EntryType.DETACHED, programs="sg_accept")
    policy = tmp / "policy.toml"
    policy.write_text(POLICY)
    port = free_port()
    c = Console("--journal", jdir, "--policy", policy, "--listen", f"127.0.0.1:{port}", url=f"http://127.0.0.1:{port}")
    try:
        yield {"jdir": jdir, "url": c.url, "policy": policy, "tmp": tmp, "console": c}
    finally:
        err = c.stop()
        assert "Traceback" not in err, err


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=ARGS, headless=True,
                                                   viewport={"width": 1400, "height": 900})
        try:
            yield ctx
        finally:
            ctx.close()


@pytest.fixture(scope="module")
def page(browser):
    pg = browser.new_page()
    pg.sg_dialogs = []        # an alert() would mean a journal value ran as script
    pg.sg_console = []
    pg.on("dialog", lambda d: (pg.sg_dialogs.append(d.message), d.dismiss()))
    pg.on("console", lambda m: pg.sg_console.append(m.text))
    yield pg
    pg.close()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def no_script_ran(page) -> None:
    assert page.evaluate("window.sgPwned") is None
    assert page.sg_dialogs == []
    assert not [m for m in page.sg_console if "Content Security Policy" in m], page.sg_console


def append(jdir: Path, *entries) -> int:
    with Journal.open(jdir) as j:
        return j.append(list(entries))


def live(page, world, query: str = "") -> None:
    page.goto(f"{world['url']}/live{query}")
    # (no wait_for_function: its polling evaluates strings, which the console's CSP refuses)
    sync_api.expect(page.locator("#status")).to_have_text("live", timeout=5000)


def cells(page, column: int) -> list[str]:
    return page.locator(f"#entries tbody tr td:nth-child({column})").all_inner_texts()


# -- Live ------------------------------------------------------------------------------------------

def test_a_new_rejection_appears_in_live_within_a_second(page, world):
    live(page, world)
    shot(page, "live")
    seq = append(world["jdir"], decision(time.time_ns(), outcome=Outcome.REJECTED, rule="no-mail", port=25,
                                         remote="10.77.0.1"))
    t0 = time.monotonic()
    page.wait_for_selector(f'#entries tr[data-seq="{seq}"]', timeout=1000)
    took = time.monotonic() - t0
    assert took < 1.0
    row = page.locator(f'#entries tr[data-seq="{seq}"] td').all_inner_texts()
    assert row[0] == str(seq) and row[3] == "rejected" and row[7] == "10.77.0.1:25" and row[8] == "no-mail"
    assert page.locator("#entries tbody tr").first.get_attribute("data-seq") == str(seq)   # newest on top


def test_filters_narrow_the_first_page_and_the_stream(page, world):
    live(page, world, "?outcomes=rejected&remote=10.9.0.0/16")
    outcomes, remotes = cells(page, 4), cells(page, 8)
    assert outcomes and set(outcomes) == {"rejected"}
    assert all(r.startswith("10.9.") for r in remotes)
    assert page.locator("input[name=remote]").input_value() == "10.9.0.0/16"
    other = append(world["jdir"], decision(time.time_ns(), outcome=Outcome.ALLOWED, remote="10.9.1.1"))
    match = append(world["jdir"], decision(time.time_ns(), outcome=Outcome.REJECTED, rule="no-mail", port=25,
                                           remote="10.9.1.2"))
    page.wait_for_selector(f'#entries tr[data-seq="{match}"]', timeout=1000)
    assert page.locator(f'#entries tr[data-seq="{other}"]').count() == 0
    shot(page, "live-filtered")


def test_the_filter_form_applies(page, world):
    live(page, world)
    page.fill("input[name=rules]", "audit-telnet")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**/live?**rules=audit-telnet**")
    assert set(cells(page, 9)) == {"audit-telnet"}
    assert set(cells(page, 4)) == {"audit-rejected"}


def test_pause_holds_new_rows_and_resume_shows_them(page, world):
    live(page, world)
    page.click("#pause")
    assert page.locator("#pause").inner_text() == "resume"
    seq = append(world["jdir"], decision(time.time_ns(), outcome=Outcome.REJECTED, rule="no-mail", port=25))
    sync_api.expect(page.locator("#held")).to_have_text("1 new while paused", timeout=2000)
    assert page.locator(f'#entries tr[data-seq="{seq}"]').count() == 0
    page.click("#pause")
    page.wait_for_selector(f'#entries tr[data-seq="{seq}"]', timeout=1000)
    assert page.locator("#held").inner_text() == ""


def test_a_row_opens_the_entry_with_the_policy_explanation(page, world):
    live(page, world, "?rules=audit-telnet")
    seq = page.locator("#entries tbody tr").first.get_attribute("data-seq")
    page.locator("#entries tbody tr").first.locator("td").nth(5).click()   # the row, not its link
    page.wait_for_url(f"**/entry/{seq}")
    verdict = page.locator("#verdict").inner_text()
    line = POLICY.splitlines().index('name = "audit-telnet"')   # its [[rule]] header, 1-based
    assert "audit-telnet" in verdict and f"line {line}" in verdict and "rule #2" in verdict
    assert "audit-rejected" in verdict and "mode audit" in verdict
    assert "This is what was journaled." in page.locator(".explain").inner_text()
    shot(page, "entry")
    # and the CLI's own explain says the same rule
    p = cli("policy", "explain", world["policy"], "connect", "--user", "1000", "--remote", "10.8.0.1:23", "--json")
    assert json.loads(p.stdout)["rule_name"] == "audit-telnet" and json.loads(p.stdout)["rule_line"] == line


# -- Rules -----------------------------------------------------------------------------------------

def test_rules_in_file_order_and_a_rule_page_lists_its_entries(page, world):
    page.goto(f"{world['url']}/rules")
    shot(page, "rules")
    names = page.locator("#rules tbody tr td:nth-child(2)").all_inner_texts()
    assert names[:3] == ["no-mail", "audit-telnet", "never-fires"]
    assert "never" in (page.locator("#rules tbody tr").nth(2).get_attribute("class") or "")
    with Journal.open(world["jdir"], readonly=True) as j:
        from sockgate.journal import Filter

        want = j.count(Filter.build(rules=["audit-telnet"], since="24h"))
    row = page.locator("#rules tbody tr").nth(1).locator("td").all_inner_texts()
    assert row[3] == "connect" and row[4] == "reject" and row[5] == "audit" and row[7] == str(want)
    assert "journal" in page.locator("#counter-source").inner_text()
    page.click("#rules a:text-is('audit-telnet')")
    page.wait_for_url("**/rule?name=audit-telnet**")
    assert set(cells(page, 9)) == {"audit-telnet"}
    assert len(cells(page, 9)) == min(200, want)
    shot(page, "rule")


# -- Top, Charts, Integrity ------------------------------------------------------------------------

def test_top_equals_journal_top(page, world):
    page.goto(f"{world['url']}/top?since=2h")
    shot(page, "top")
    table = page.locator('section[data-outcome="rejected"] table[data-field="remote_addr"] tbody tr')
    got = [tuple(r.locator("td").all_inner_texts()) for r in table.all()]
    p = cli("journal", "top", "--journal", world["jdir"], "--since", "2h", "--outcome", "rejected", "--json")
    want = [(d["remote_addr"], str(d["count"])) for d in json.loads(p.stdout)]
    assert got == want
    # the window form goes through htmx and keeps the page
    page.fill("input[name=since]", "20m")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**/top?**since=20m**")
    assert page.locator("h1").count() == 1


def test_charts_render_with_data(page, world):
    page.goto(f"{world['url']}/charts?since=1h")
    page.wait_for_selector("#chart-outcome[data-points]", timeout=5000)
    page.wait_for_selector("#chart-rule[data-points]", timeout=5000)
    for el in ("#chart-outcome", "#chart-rule"):
        assert page.locator(f"{el} canvas").count() >= 1
        assert int(page.locator(el).get_attribute("data-points")) > 0
    assert int(page.locator("#chart-outcome").get_attribute("data-series")) >= 3   # allowed, rejected, audit-rejected
    legend = page.locator("#chart-rule .u-legend").inner_text()
    assert "no-mail" in legend and "audit-telnet" in legend
    # synced cursor: hovering one plot moves the other's cursor
    box = page.locator("#chart-outcome .u-over").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2)
    left = page.locator("#chart-rule .u-cursor-x").evaluate("e => e.style.transform || e.style.left")
    assert left and left != "translate(-10px, 0px)"
    shot(page, "charts")


def test_integrity_view(page, world):
    page.goto(f"{world['url']}/integrity")
    assert page.locator("#verify-result").inner_text().startswith("OK")
    assert page.locator('table.records[data-type="gap"]').count() == 1
    assert page.locator('table.records[data-type="detach"]').count() == 1
    assert "7" in page.locator("#seal-state").inner_text()
    page.click("#verify button")
    sync_api.expect(page.locator("#verify-result")).to_contain_text("OK at")
    shot(page, "integrity")


# -- hostile names ----------------------------------------------------------------------------------

def test_hostile_names_render_as_text(page, world):
    live(page, world, "?remote=10.66.0.0/16")
    programs = cells(page, 6)
    assert sorted(programs) == sorted(oneline(p) for p in HOSTILE_PROGRAMS)
    assert set(cells(page, 5)) == {oneline(HOSTILE_USER)}
    assert page.locator("#entries img, #entries script, #entries b").count() == 0
    # the same names arriving through the stream
    seq = append(world["jdir"], decision(time.time_ns(), outcome=Outcome.REJECTED, rule="no-mail", port=25,
                                         remote="10.66.0.2", program=HOSTILE_PROGRAMS[1], user=HOSTILE_USER))
    page.wait_for_selector(f'#entries tr[data-seq="{seq}"]', timeout=1000)
    row = page.locator(f'#entries tr[data-seq="{seq}"] td').all_inner_texts()
    assert row[5] == oneline(HOSTILE_PROGRAMS[1]) and row[4] == oneline(HOSTILE_USER)   # as the first page shows them
    assert page.locator("#entries img, #entries b").count() == 0
    shot(page, "hostile")
    page.goto(f"{world['url']}/entry/{seq}")
    assert oneline(HOSTILE_PROGRAMS[1]) in page.locator("#fields").inner_text()
    page.goto(f"{world['url']}/top?remote=10.66.0.0/16")
    assert page.locator("table.top-list img").count() == 0
    no_script_ran(page)


# -- the report --------------------------------------------------------------------------------------

def test_the_report_in_the_browser_equals_journal_top(page, world):
    since, until = "3h", "now"
    from sockgate.record import format_time, parse_time

    now = time.time_ns()
    since, until = format_time(parse_time(since, now)), format_time(now)
    out = world["tmp"] / "report.html"
    p = cli("report", "--journal", world["jdir"], "--policy", world["policy"], "--since", since, "--until", until,
            "-o", out)
    assert p.returncode == 0, p.stderr
    html = out.read_text()
    assert "<script" not in html.lower() and "&lt;script&gt;" in html
    bare = html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert not re.search(r"<[^>]*\s(src|href|action)\s*=", bare), "the report loads nothing"
    page.goto(out.as_uri())
    shot(page, "report")
    assert page.locator("svg.chart").count() == 2
    for svg in page.locator("svg.chart").all():
        pts = [pl.get_attribute("points") for pl in svg.locator("polyline.series").all()]
        assert pts and all(len(x.split()) > 10 for x in pts)
    for outcome in ("rejected", "audit-rejected", "allowed"):
        for field in ("remote_addr", "program", "user", "remote_port"):
            rows = page.locator(f'#top table[data-outcome="{outcome}"][data-field="{field}"] tbody tr').all()
            got = [tuple(r.locator("td").all_inner_texts()) for r in rows]
            q = cli("journal", "top", "--journal", world["jdir"], "--since", since, "--until", until,
                    "--outcome", outcome, "--by", field, "--json")
            want = [(oneline(d[field]) if d[field] is not None else "-", str(d["count"])) for d in json.loads(q.stdout)]
            assert got == want, (outcome, field)
    total = cli("journal", "top", "--journal", world["jdir"], "--since", since, "--until", until, "--by", "outcome",
                "--json")
    for d in json.loads(total.stdout):
        if d["outcome"]:
            assert page.locator(f'.card[data-outcome="{d["outcome"]}"] b').inner_text() == str(d["count"])
    assert page.locator("#ibmi").count() == 1
    jobs = page.locator('#ibmi table[data-field="jobs"] tbody').inner_text()
    assert "123450/QTCP/QTMHHTTP" in jobs and "123451/QTCP/QTMHHTTP" in jobs
    assert "PROD400" in page.locator('#ibmi table[data-field="systems"]').inner_text()
    pdf = world["tmp"] / "report.pdf"
    page.pdf(path=str(pdf))
    assert pdf.stat().st_size > 10_000
    no_script_ran(page)
