"""sockgate.record: the one time rule (zone-less = local time) in every command, the
vocabulary tables, and that the record module works without the journal's C writer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sockgate.record import (  # noqa: E402
    NS, Code, Entry, EntryType, Outcome, Source, addr_key, endpoint, format_time, ipv4_packed, parse_duration,
    parse_range, parse_time,
)

BERLIN = "Europe/Berlin"
# 2026-05-01T10:00:00 in Berlin (CEST, UTC+2) is 08:00:00Z
T_BERLIN_10 = 1_777_622_400 * NS


def sockgate(*args: str, tz: str = BERLIN, pre: str = "") -> subprocess.CompletedProcess:
    code = pre + "import sys; from sockgate.cli import main; main(sys.argv[1:])"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), TZ=tz, COLUMNS="200")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture
def berlin(monkeypatch):
    monkeypatch.setenv("TZ", BERLIN)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_time_rule(berlin):
    assert parse_time("2026-05-01T10:00:00") == T_BERLIN_10           # no zone: local time
    assert parse_time("2026-05-01T08:00:00Z") == T_BERLIN_10          # Z honoured
    assert parse_time("2026-05-01T09:00:00+01:00") == T_BERLIN_10     # offset honoured
    assert parse_time("2026-05-01T10:00:00.25") == T_BERLIN_10 + NS // 4
    assert parse_time("2026-05-01") == T_BERLIN_10 - 10 * 3600 * NS   # local midnight
    now = T_BERLIN_10 + 3 * 3600 * NS                                 # 13:00 local
    assert parse_time("90s", now) == now - 90 * NS                    # durations: that long ago
    assert parse_time("1h30m", now) == now - 5400 * NS
    assert parse_time("now", now) == now
    assert parse_time("today", now) == T_BERLIN_10 - 10 * 3600 * NS
    assert format_time(T_BERLIN_10 + 1500) == "2026-05-01T08:00:00.000001Z"
    with pytest.raises(ValueError, match="bad time"):
        parse_time("yesterday-ish")


def test_durations_are_nanoseconds():
    assert parse_duration("15m") == 900 * NS
    assert parse_duration("7d") == 7 * 86400 * NS
    assert parse_duration("1 h") == 3600 * NS
    assert parse_duration(2.5) == 2_500_000_000
    assert parse_duration("250ms") == NS // 4
    for bad in ("", "5x", "-1s", True):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_vocabulary():
    assert EntryType.parse("tls-failed") is EntryType.SECURE_FAILED
    assert EntryType.parse("c") is EntryType.CONNECT is EntryType.parse("connect")
    assert EntryType.parse("udp_inbound") is EntryType.UDP_INBOUND
    assert Outcome.parse("AUDIT_REJECTED") is Outcome.AUDIT_REJECTED
    assert (EntryType.SECURE_OK.alias, EntryType.SECURE_OK.title, EntryType.SECURE_OK.ibm_text) == \
        ("secure-ok", "Secure connection", "Successful secure connection")
    assert EntryType.GAP.alias == "gap" and not EntryType.GAP.is_socket
    assert endpoint("2001:db8::1", 443) == "[2001:db8::1]:443"
    assert endpoint("10.0.0.1", None) == "10.0.0.1" and endpoint(None, 22) == "*:22"
    assert endpoint(None, None) is None
    assert addr_key("::ffff:10.0.0.1") == addr_key("10.0.0.1") is not None
    assert parse_range("1-1023") == (1, 1023) and parse_range(22) == (22, 22)
    with pytest.raises(ValueError, match="reversed"):
        parse_range("9-1")
    e = Entry(Code.SOCKET, EntryType.CONNECT, 1, Source.KERNEL, outcome=Outcome.ALLOWED)
    assert Entry.from_dict(e.to_dict()) == e


def _journal(tmp_path: Path) -> Path:
    from sockgate.journal import Journal

    jdir = tmp_path / "j"
    with Journal.open(jdir, host="h") as j:
        j.append([Entry(Code.SOCKET, EntryType.CONNECT, T_BERLIN_10 + d * NS, Source.KERNEL,
                        outcome=Outcome.REJECTED, user="u", remote_addr="10.0.0.1", remote_port=25)
                  for d in (-1, 0, 3600)])
    return jdir


def test_journal_show_since_zoneless_is_local(tmp_path):
    jdir = _journal(tmp_path)
    for since, n in (("2026-05-01T10:00:00", 2), ("2026-05-01T08:00:00Z", 2), ("2026-05-01T09:59:59", 3),
                     ("2026-05-01T10:00:01+02:00", 1)):
        p = sockgate("journal", "show", "--journal", str(jdir), "--since", since, "--type", "C",
                     "--format", "json")
        assert p.returncode == 0, p.stderr
        assert len(p.stdout.splitlines()) == n, (since, p.stdout)
    p = sockgate("journal", "show", "--journal", str(jdir), "--until", "2026-05-01T10:00:00", "--type", "C",
                 "--format", "json")
    assert len(p.stdout.splitlines()) == 1


def test_monitor_test_since_zoneless_is_local(tmp_path):
    jdir = _journal(tmp_path)
    rules = tmp_path / "alerts.toml"
    rules.write_text('[channel.log]\ntype = "command"\nargv = ["true"]\n\n'
                     '[[alert]]\nname = "all"\nchannels = ["log"]\nsuppress = "0s"\nmatch = { type = "C" }\n')
    for since, n in (("2026-05-01T10:00:00", 2), ("2026-05-01T08:00:00Z", 2), ("2026-05-01T09:59:59", 3)):
        p = sockgate("monitor", "--journal", str(jdir), "--test", str(rules), "--since", since, "--json")
        assert p.returncode == 0, p.stderr
        alerts = [json.loads(line) for line in p.stdout.splitlines()]
        assert len(alerts) == n, (since, p.stdout, p.stderr)
    assert "since 2026-05-01T08:00:00.000000Z" in sockgate(
        "monitor", "--journal", str(jdir), "--test", str(rules), "--since", "2026-05-01T10:00:00").stderr


NO_C_WRITER = "import sys; sys.modules['sockgate.journal._append'] = None; "


def test_monitor_ibmi_and_check_import_without_the_c_writer():
    probe = NO_C_WRITER + (
        "import sockgate.record, sockgate.monitor, sockgate.monitor.parse, sockgate.ibmi.importer, "
        "sockgate.ibmi.records, sockgate.ibmi.delimited, sockgate.journal.export, sockgate.cli; "
        "from sockgate.journal import Entry, Filter\n"
        "try:\n    import sockgate.journal.journal\nexcept ImportError:\n    print('no C writer')\n")
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    assert p.returncode == 0 and p.stdout.strip() == "no C writer", p.stderr
    p = sockgate("monitor", "--check", str(ROOT / "examples" / "alerts.toml"), pre=NO_C_WRITER)
    assert p.returncode == 0 and "ok (7 alert rules" in p.stdout, p.stderr


ADDRESS_TEXT = st.one_of(
    st.tuples(*[st.integers(0, 300) | st.sampled_from(["00", "01", "0x1", " 1", "1 ", "+1", "١"])] * 4).map(
        lambda t: ".".join(map(str, t))),
    st.sampled_from(["1.2.3", "1.2.3.4.5", "1..2.3", "::ffff:1.2.3.4", "fe80::1%eth0", "::1", "1.2.3.4\x00",
                     "1.2.3.4/32", "", "x"]),
    st.text(alphabet="0123456789.:abcdef%x ", max_size=20),
)


@settings(max_examples=400, deadline=None)
@given(ADDRESS_TEXT)
def test_ipv4_fast_path_reads_as_ipaddress(text):
    """ipv4_packed is only a shortcut: addr_as_v6 and network_of say what ipaddress says."""
    import ipaddress

    from sockgate.policy.compile import addr_as_v6
    from sockgate.policy.replay import network_of

    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        ip = None
    packed = ipv4_packed(text)
    assert packed is None or (ip is not None and ip.version == 4 and ip.packed == packed)
    if ip is None:
        with pytest.raises(ValueError):
            addr_as_v6(text)
        assert network_of.__wrapped__(text) == (text or "-")
        return
    assert addr_as_v6(text) == ((0xFFFF << 32) | int(ip) if ip.version == 4 else int(ip))
    v4 = ip if ip.version == 4 else ip.ipv4_mapped
    want = str(ipaddress.ip_network(f"{v4 or ip}/{24 if v4 else 64}", strict=False))
    assert network_of.__wrapped__(text) == want
