"""fleet show/top/export/status over several hosts, with the journal's filters and --host;
journal retain keeps what was not shipped; the CLI's errors."""

from __future__ import annotations

import csv
import io
import json

from .conftest import run_cli
from sockgate.journal import Journal, Outcome


def test_show_top_export_status(db, collector, hosts):
    expect = {}
    for n, (count, remote) in {"web1": (300, "10.1.2.{}"), "web2": (200, "10.7.0.{}")}.items():
        h = hosts(n)
        with Journal.open(h.journal_dir) as j:
            j.record("policy", digest=f"digest-{n}", rules=3, policy_file="/etc/sockgate/policy.toml")
        h.write(count, remote=None)
        # some rejections from one /24, some allowed
        from .conftest import decision
        with Journal.open(h.journal_dir) as j:
            j.append([decision(i, remote=remote.format(i % 200), outcome=Outcome.REJECTED if i % 3 else Outcome.ALLOWED,
                               program="/usr/bin/\x1b[31mevil" if i == 0 else "/usr/sbin/nginx")
                      for i in range(150)])
            j.seal()
        expect[n] = sum(1 for i in range(150) if i % 3)
        h.enroll(collector)
        h.shipper().ship_once()
    code, out, err = run_cli("fleet", "show", "--db", db, "--remote", "10.1.2.0/24", "--outcome", "rejected",
                             "--since", "2d", "--format", "json")
    assert code == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert len(lines) == expect["web1"] and {x["fleet_host"] for x in lines} == {"web1"}
    assert all(x["remote_addr"].startswith("10.1.2.") and x["outcome"] == "rejected" for x in lines)
    code, out, err = run_cli("fleet", "show", "--db", db, "--host", "web2", "--outcome", "rejected", "--format", "csv")
    assert code == 0 and len(list(csv.DictReader(io.StringIO(out)))) == expect["web2"] + 200
    code, out, err = run_cli("fleet", "show", "--db", db, "--host", "web2", "--last", "3")
    assert code == 0 and len(out.splitlines()) == 4 and out.splitlines()[0].split()[0] == "HOST"
    assert "\x1b" not in out
    code, out, err = run_cli("fleet", "show", "--db", db, "--program", "/usr/bin/*", "--host", "web1")
    assert code == 0 and "\\x1b[31mevil" in out and "\x1b" not in out     # escaped for the terminal
    code, out, err = run_cli("fleet", "top", "--db", db, "--by", "host", "--outcome", "rejected", "--json")
    assert code == 0 and json.loads(out) == [{"host": "web1", "count": expect["web1"] + 300},
                                            {"host": "web2", "count": expect["web2"] + 200}]
    code, out, err = run_cli("fleet", "top", "--db", db, "--remote", "10.7.0.0/16", "--count", "1", "--json")
    assert code == 0 and json.loads(out)[0]["count"] == 1 and json.loads(out)[0]["remote_addr"].startswith("10.7.0.")
    code, out, err = run_cli("fleet", "export", "--db", db, "--format", "cef", "--host", "web1", "--remote", "10.1.2.0/24")
    assert code == 0 and len(out.splitlines()) == 150 and out.startswith("CEF:")
    code, out, err = run_cli("fleet", "status", "--db", db, "--json")
    st = {r["host"]: r for r in json.loads(out)}
    assert st["web1"]["shipped_seq"] == 451 and st["web2"]["shipped_seq"] == 351
    assert st["web1"]["policy_digest"] == "digest-web1" and st["web1"]["lag_s"] is not None
    code, out, err = run_cli("fleet", "status", "--db", db)
    assert code == 0 and "web1" in out and "never verified" in out
    # usage errors: exit 2, one line, no traceback
    for args in (("--remote", "10.1.2.0/33"), ("--since", "yesterday-ish"), ("--outcome", "nope")):
        code, out, err = run_cli("fleet", "show", "--db", db, *args)
        assert code == 2 and "Traceback" not in err and err.startswith("sockgate: "), (args, err)
    code, out, err = run_cli("fleet", "status", "--db", "postgresql://nobody@127.0.0.1:1/x")
    assert code == 1 and "cannot connect to the fleet database" in err and "Traceback" not in err


def test_retain_keeps_unshipped_receivers(db, collector, hosts):
    h = hosts("web1")
    h.write(100)
    with Journal.open(h.journal_dir) as j:
        j.rotate()
    h.enroll(collector)
    shipped = h.shipper().ship_once()
    h.write(100)
    with Journal.open(h.journal_dir) as j:
        j.rotate()
    h.write(50)
    assert shipped == 101        # the first receiver and its rotate record
    jd, fd = str(h.journal_dir), str(h.fleet_dir)
    code, out, err = run_cli("journal", "retain", "--journal", jd, "--fleet-dir", fd, "--max-size", "1")
    assert code == 0, err
    assert "deleted 1 receiver(s): r000001.sgj" in out and "through seq 101" in out
    code, out, err = run_cli("journal", "retain", "--journal", jd, "--fleet-dir", fd, "--max-size", "1")
    assert "deleted 0 receiver(s)" in out
    code, out, err = run_cli("journal", "retain", "--journal", jd, "--fleet-dir", fd, "--max-size", "1",
                             "--discard-unshipped")
    assert code == 0 and "deleted 1 receiver(s): r000002.sgj" in out
    with Journal.open(jd, readonly=True) as j:
        cut = [e for e in j.entries() if e.type.value == "cut"][-1]
    assert cut.extra["unshipped_from"] == 102
    code, out, err = run_cli("journal", "verify", "--journal", jd)
    assert code == 0, out + err
