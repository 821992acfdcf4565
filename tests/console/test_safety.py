"""The console's safety model without a browser: where it refuses to listen, TLS + token,
headers on every response, GET only, Host check, unix socket mode, bad input as a clear
400, read-only journal access; and the chart queries against a count done in Python."""

from __future__ import annotations

import json
import os
import re
import ssl
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from consolekit import POLICY, Console, cli, decision, free_port, mixed, write
from sockgate.console.server import plan
from sockgate.errors import UsageError
from sockgate.journal import Filter, Journal
from sockgate.journal.query import histogram, rule_hits
from sockgate.record import NS, Outcome


@pytest.fixture(scope="module")
def jdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("safety") / "journal"
    write(d, mixed(time.time_ns(), n=300))
    return d


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("files")
    policy = tmp / "policy.toml"
    policy.write_text(POLICY)
    candidate = tmp / "candidate.toml"   # no-mail moved off port 25: mail would then go out (opens)
    candidate.write_text(POLICY.replace('remote_port = ["25"]', 'remote_port = ["2525"]'))
    token = tmp / "token"
    token.write_text("s3cret-token-0123456789\n")
    token.chmod(0o600)
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return {"policy": policy, "candidate": candidate, "token": token, "cert": cert, "key": key, "tmp": tmp}


@pytest.fixture(scope="module")
def console(jdir, files):
    port = free_port()
    c = Console("--journal", jdir, "--policy", files["policy"], "--candidate", files["candidate"],
                "--listen", f"127.0.0.1:{port}", url=f"http://127.0.0.1:{port}")
    yield c
    assert "Traceback" not in c.stop()


# -- where it listens ----------------------------------------------------------------------------

@pytest.mark.parametrize("args, says", [
    (["--listen", "0.0.0.0:8477"], "not a loopback address"),
    (["--listen", "[::]:8477"], "not a loopback address"),
    (["--listen", "192.0.2.1:8477", "--token-file", "TOKEN"], "with TLS (--tls-cert, --tls-key)"),
    (["--listen", "192.0.2.1:8477", "--tls-cert", "CERT", "--tls-key", "KEY"], "with a token (--token-file)"),
    (["--listen", "127.0.0.1:8477", "--tls-cert", "CERT"], "--tls-cert and --tls-key go together"),
    (["--listen", "127.0.0.1:8477", "--socket", "/run/x.sock"], "not both"),
    (["--socket", "relative.sock"], "must be absolute"),
    (["--listen", "console.example:8477"], "not an IP address"),
    (["--listen", "127.0.0.1:0"], "expected ADDRESS:PORT"),
])
def test_refused_binds_exit_2_with_the_reason(jdir, files, args, says):
    args = [str(files["token"]) if a == "TOKEN" else str(files["cert"]) if a == "CERT" else
            str(files["key"]) if a == "KEY" else a for a in args]
    p = cli("console", "--journal", jdir, *args, timeout=30)
    assert p.returncode == 2, p.stderr
    assert says in p.stderr and "Traceback" not in p.stderr


def test_a_token_others_can_read_or_a_short_one_is_refused(jdir, files):
    loose = files["tmp"] / "loose-token"
    loose.write_text("s3cret-token-0123456789\n")
    loose.chmod(0o644)
    short = files["tmp"] / "short-token"
    short.write_text("abc\n")
    short.chmod(0o600)
    for f, says in ((loose, "lets others read it"), (short, "at least 16 characters")):
        p = cli("console", "--journal", jdir, "--token-file", f, "--listen", "127.0.0.1:8477", timeout=30)
        assert p.returncode == 2 and says in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_any_address_with_tls_and_a_token_is_accepted(files):
    b = plan("0.0.0.0:8477", None, str(files["cert"]), str(files["key"]), str(files["token"]))
    assert b.url == "https://0.0.0.0:8477/" and b.token == "s3cret-token-0123456789"
    with pytest.raises(UsageError):
        plan("0.0.0.0:8477", None, None, None, str(files["token"]))


def test_tls_and_token_every_request_carries_it(jdir, files):
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    c = Console("--journal", jdir, "--listen", f"127.0.0.1:{port}", "--tls-cert", files["cert"],
                "--tls-key", files["key"], "--token-file", files["token"], url=url,
                client_kw={"verify": ssl.create_default_context(cafile=str(files["cert"]))})
    try:
        with httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(files["cert"])), timeout=5) as h:
            r = h.get("/live")
            assert r.status_code == 401 and "Basic" in r.headers["www-authenticate"]
            assert r.headers["content-security-policy"].startswith("default-src 'self'")
            assert h.get("/static/htmx.min.js").status_code == 401
            assert h.get("/live", auth=("admin", "wrong-token-0123456789")).status_code == 401
            assert h.get("/live", auth=("anyone", "s3cret-token-0123456789")).status_code == 200
            ok = h.get("/api/entries", headers={"Authorization": "Bearer s3cret-token-0123456789"})
            assert ok.status_code == 200 and ok.json()["rows"]
            assert h.get("/live", headers={"Authorization": "Basic !!notbase64"}).status_code == 401
    finally:
        assert "Traceback" not in c.stop()


def test_unix_socket_is_0660_and_serves(jdir, files, tmp_path):
    sock = tmp_path / "run" / "console.sock"
    sock.parent.mkdir(mode=0o755)
    c = Console("--journal", jdir, "--socket", sock, uds=str(sock))
    try:
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
        r = c.client.get("/live", headers={"Host": "anything"})
        assert r.status_code == 200 and "Live" in r.text
    finally:
        c.stop()
    assert not sock.exists()


# -- headers, methods, hosts, bad input --------------------------------------------------------------

@pytest.mark.parametrize("path", ["/live", "/rules", "/top", "/charts", "/integrity", "/replay", "/entry/1",
                                  "/api/chart?by=rule", "/static/htmx.min.js", "/static/console.js", "/nowhere",
                                  "/entry/999999"])
def test_every_response_carries_the_csp(console, path):
    r = console.client.get(path)
    assert r.headers["content-security-policy"] == ("default-src 'self'; base-uri 'none'; form-action 'self'; "
                                                    "frame-ancestors 'none'")
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"


def test_pages_have_no_inline_script_or_style(console):
    for path in ("/live", "/rules", "/top", "/charts", "/integrity", "/replay", "/entry/1"):
        html = console.client.get(path).text
        assert "<style" not in html and " style=" not in html, path
        assert not re.search(r"<script(?![^>]*\ssrc=\"/static/)", html), path
        assert not re.search(r"\son[a-z]+=", html), path


def test_get_only(console):
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert console.client.request(method, "/live").status_code == 405


def test_a_foreign_host_header_is_refused(console):
    assert console.client.get("/live", headers={"Host": "attacker.example:8477"}).status_code == 421
    assert console.client.get("/live", headers={"Host": "localhost:1"}).status_code == 200


@pytest.mark.parametrize("path, says", [
    ("/live?since=bogus", "--since: bad time"),
    ("/live?remote=300.1.2.3/8", "--remote: bad address or CIDR"),
    ("/live?outcomes=maybe", "--outcome"),
    ("/api/chart?by=program", "cannot split a histogram by"),
    ("/entry/abc", "not a sequence number"),
    ("/live/stream?after=x", "after: not a sequence number"),
    ("/live?from_seq=99999999999999999999999", "not a sequence number"),
    ("/api/chart?since=1h&until=2h", "since must be before until"),
])
def test_bad_input_is_a_clear_400(console, path, says):
    r = console.client.get(path)
    assert r.status_code == 400 and says in r.text and "Traceback" not in r.text, r.text[:300]


def test_the_console_never_writes_the_journal(jdir, console):
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in jdir.iterdir()}
    for path in ("/live", "/rules", "/top", "/charts", "/integrity?reverify=1", "/api/chart", "/entry/3"):
        assert console.client.get(path).status_code == 200
    after = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in jdir.iterdir()}
    assert {k: v for k, v in after.items() if not k.endswith("-shm")} == \
           {k: v for k, v in before.items() if not k.endswith("-shm")}
    # and a writer appends while the console has it open
    with Journal.open(jdir) as j:
        seq = j.append([decision(time.time_ns(), outcome=Outcome.REJECTED, rule="no-mail", port=25)])
    assert console.client.get("/api/entries?n=1").json()["rows"][0]["seq"] == seq


def test_live_stream_sends_new_entries_as_json(jdir, console):
    last = console.client.get("/api/entries?n=1").json()["last_seq"]
    with Journal.open(jdir) as j:
        seq = j.append([decision(time.time_ns(), outcome=Outcome.REJECTED, rule="no-mail", port=25, remote="10.4.4.4")])
    with console.client.stream("GET", f"/live/stream?after={last}&remote=10.4.0.0/16") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                rows = json.loads(line[6:])["rows"]
                assert [x["seq"] for x in rows] == [seq] and rows[0]["remote"] == "10.4.4.4:25"
                break


def test_replay_review_equals_policy_replay(console, jdir, files):
    r = console.client.get("/replay?since=7d&format=json")
    got = r.json()
    p = cli("policy", "replay", files["candidate"], "--journal", jdir, "--since", "7d", "--format", "json")
    want = json.loads(p.stdout)
    for k in ("decisions", "breaks", "opens"):
        assert got[k] == want[k], k
    assert got["opens"] > 0
    html = console.client.get("/replay?since=7d").text
    assert "would open" in html.lower() and "no-mail" in html


# -- the queries behind the charts ---------------------------------------------------------------------

def test_histogram_and_rule_hits_equal_a_count_in_python(jdir):
    step = 60 * NS
    f = Filter.build(since="2h")
    with Journal.open(jdir, readonly=True) as j:
        h = histogram(j, f, step, "outcome")
        hits = rule_hits(j, f)
        want: dict[int, dict[str, int]] = {}
        last: dict[str, int] = {}
        counts: dict[str, int] = {}
        for e in j.entries(filter=f):
            b = want.setdefault(e.ts_ns // step * step, {})
            b[e.outcome.value] = b.get(e.outcome.value, 0) + 1
            counts[e.rule] = counts.get(e.rule, 0) + 1
            last[e.rule] = max(last.get(e.rule, 0), e.ts_ns)
    assert h == want
    assert hits == {r: (counts[r], last[r]) for r in counts}


def test_the_rollup_answers_what_the_rows_answer(jdir):
    """Charts come from the per-minute rollup once it is built; window edges inside a minute,
    new entries after it was built, outcome and rule filters: the same counts as the rows."""
    d = _rollup_of(jdir, None)
    try:
        with Journal.open(jdir) as j:   # after the build: found by the incremental update
            j.append([decision(time.time_ns() - 30 * NS, outcome=Outcome.REJECTED, rule="no-mail", port=25)])
        now = time.time_ns()
        for since, step, by, outcomes in ((now - 7200 * NS + 123_456_789, 60 * NS, "outcome", ()),
                                          (now - 3000 * NS + 7 * NS, 300 * NS, "rule", ("rejected", "audit-rejected")),
                                          (now - 86400 * NS, 600 * NS, "outcome", ("allowed",))):
            f = Filter(since_ns=since, until_ns=now - 11 * NS, outcomes=outcomes)
            got = d.chart(f, by, step)
            with Journal.open(jdir, readonly=True) as j:
                want = histogram(j, f, step, by)
            assert d._from_rollup(f, by, step) == want
            assert sum(sum(s) for s in got["series"].values()) * step / NS == pytest.approx(
                sum(sum(v.values()) for v in want.values()))
    finally:
        d.close()


def _rollup_of(jdir: Path, cache: Path | None):
    """A console's Data over jdir (keeping its rollup in cache, if given), its rollup built."""
    from sockgate.console.data import Data

    d = Data(str(jdir), cache_dir=str(cache) if cache else None)
    d.start_rollup()
    deadline = time.monotonic() + 10
    while d._rollup is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d._rollup is not None
    return d


def test_the_rollup_kept_between_runs_counts_only_what_came_after(tmp_path):
    """The console keeps its per-minute counts in --cache-dir (never in the journal): the next
    start takes them back and reads only the entries after them, with the same counts as the
    rows; counts whose rows are no longer there (another chain at that seq) are not taken."""
    from sockgate.journal.query import Rollup

    jdir, cache = tmp_path / "journal", tmp_path / "cache"
    cache.mkdir(mode=0o700)
    now = time.time_ns()
    write(jdir, mixed(now - 600 * NS, n=200))
    journal_files = _files(jdir)
    d = _rollup_of(jdir, cache)
    d.close()                                      # saves again at exit
    assert _files(jdir) == journal_files
    (saved,) = cache.iterdir()
    assert saved.name.startswith("rollup-") and stat.S_IMODE(saved.stat().st_mode) == 0o600
    write(jdir, mixed(now, n=60, span_s=300))     # while no console ran
    with Journal.open(jdir, readonly=True) as j:
        kept = Rollup.load(j, saved)
        assert sum(sum(c.values()) for _, c in kept._per.values()) == 200   # what was counted, no more
        fresh = Rollup()
        fresh.update(j)
        kept.update(j)                             # reads only the 60 after
        assert kept._per == fresh._per
    d = _rollup_of(jdir, cache)
    try:
        f = Filter(since_ns=now - 3600 * NS, until_ns=now + 3600 * NS)
        with Journal.open(jdir, readonly=True) as j:
            assert d._from_rollup(f, "outcome", 60 * NS) == histogram(j, f, 60 * NS, "outcome")
    finally:
        d.close()
    # another journal's rows at the saved seq: the saved counts are not this journal's
    other = tmp_path / "other"
    write(other, mixed(now, n=300))
    with Journal.open(other, readonly=True) as j:
        doc = json.loads(saved.read_text())
        doc["journal"] = j.id
        saved.write_text(json.dumps(doc))
        assert Rollup.load(j, saved)._per == {}
    saved.write_text("{not json")
    with Journal.open(jdir, readonly=True) as j:
        assert Rollup.load(j, saved)._per == {}


def test_a_cache_dir_inside_the_journal_is_not_used(tmp_path):
    jdir = tmp_path / "journal"
    write(jdir, mixed(time.time_ns(), n=20))
    before = _files(jdir)
    port = free_port()
    c = Console("--journal", jdir, "--listen", f"127.0.0.1:{port}", "--cache-dir", jdir / "cache",
                url=f"http://127.0.0.1:{port}")
    try:
        assert c.client.get("/api/chart").status_code == 200
    finally:
        err = c.stop()
    assert "is inside the journal" in err and "Traceback" not in err
    assert _files(jdir) == before


def _files(jdir: Path) -> dict[str, tuple[int, int]]:
    """The journal's files with their sizes and times (a reader's empty -wal and -shm aside)."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in jdir.iterdir()
            if not p.name.endswith(("-wal", "-shm"))}


def test_a_reconnecting_stream_resumes_after_its_last_event_id(jdir, console):
    with Journal.open(jdir) as j:
        first = j.append([decision(time.time_ns(), outcome=Outcome.REJECTED, rule="no-mail", port=25)])
        second = j.append([decision(time.time_ns(), outcome=Outcome.REJECTED, rule="no-mail", port=25)])
    with console.client.stream("GET", f"/live/stream?after={first - 1}", headers={"Last-Event-ID": str(first)}) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                assert [x["seq"] for x in json.loads(line[6:])["rows"]] == [second]
                break


def test_kernel_counters_from_the_daemons_metrics_endpoint(jdir, files):
    """--metrics URL: the per-rule counters parsed with prometheus_client's parser, from the
    project's own metrics Endpoint serving the daemon's metric names (the real daemon's, with
    the kernel's counters, is the kernel suite's: this host loads no BPF in these tests)."""
    from prometheus_client.core import CounterMetricFamily

    from sockgate.console.data import Data
    from sockgate.metrics import Endpoint

    class Counters:   # what DaemonCollector._kernel yields for these names (metrics_per_rule = true)
        def collect(self):
            hits = CounterMetricFamily("sockgate_rule_hits", "per rule", labels=["rule"])
            for name, n in (("no-mail", 41), ("audit-telnet", 7), ("never-fires", 0)):
                hits.add_metric([name], n)
            yield hits
            defaults = CounterMetricFamily("sockgate_default_decisions", "defaults", labels=["exit"])
            for ex, n in (("connect", 1000), ("listen", 2), ("accept", 3)):
                defaults.add_metric([ex], n)
            yield defaults

    port = free_port()
    ep = Endpoint.bind(f"127.0.0.1:{port}")
    ep.serve(Counters())
    d = Data(str(jdir), policy_file=str(files["policy"]), metrics_url=f"http://127.0.0.1:{port}/metrics")
    try:
        rows, where = d.rules(Filter.build(since="24h"))
        got = {r.name: r.kernel_hits for r in rows}
        assert got["no-mail"] == 41 and got["audit-telnet"] == 7 and got["never-fires"] == 0
        assert got["default:connect"] == 1000 and got["default:accept"] == 3
        assert f"127.0.0.1:{port}" in where
    finally:
        d.close()
        ep.close()
    d = Data(str(jdir), policy_file=str(files["policy"]), metrics_url=f"http://127.0.0.1:{free_port()}/metrics")
    try:
        rows, where = d.rules(Filter.build(since="24h"))   # nothing listens there
        assert all(r.kernel_hits is None for r in rows) and "kernel counters unavailable" in where
    finally:
        d.close()


def test_console_connections_have_nagle_off():
    """The socket server.bind makes is one asyncio turns Nagle off on (TCP_NODELAY on each
    accepted connection): with it on, every small write after another waited for the
    client's delayed ACK (40 ms a response, 40 ms a Live event)."""
    import asyncio
    import socket

    from sockgate.console.server import bind

    s = bind(plan(f"127.0.0.1:{free_port()}", None, None, None, None))
    nodelay = []

    async def main() -> None:
        async def accepted(reader, writer) -> None:
            nodelay.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=s)
        async with server:
            r, w = await asyncio.open_connection(*s.getsockname())
            await r.read()
            w.close()

    try:
        asyncio.run(main())
    finally:
        s.close()
    assert nodelay and nodelay[0] != 0
