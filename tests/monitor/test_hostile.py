"""Hostile input against the monitor, as an attacker would send it (issue 13, findings 3-6 and
9): poison alerts at real receivers (aiosmtpd, HTTP, syslog UDP/TCP, a real command), markup
meant for Slack/Teams and terminals, rule values meant to crash `--check`, unsafe state
directories, AUTH over plaintext. Each test is the attack; it failed before the fix."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import stat
import sys
import unicodedata
from pathlib import Path

import pytest

from sockgate.errors import RulesErrors, StateError
from sockgate.journal import Journal
from sockgate.monitor import Monitor, load_rules
from sockgate.monitor.parse import parse_rules
from sockgate.monitor.state import State
from sockgate.record import EntryType, oneline

from .conftest import SMTPReceiver, SyslogReceiver, entry, wait_for
from .test_cli import sockgate

# Every character str.splitlines() breaks at, every C0/C1 control and DEL.
LINE_BREAKERS = sorted({chr(c) for c in range(0x3000) if len(f"a{chr(c)}b".splitlines()) > 1})
CONTROLS = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))]
HOSTILE = sorted(set(LINE_BREAKERS) | set(CONTROLS))


def unsafe_in(text: str) -> list[str]:
    """The line breakers and controls left in text."""
    return sorted({c for c in text if c in HOSTILE or unicodedata.category(c) == "Cc"})


def test_oneline_leaves_no_line_breaker_and_no_control():
    for c in HOSTILE:
        out = oneline(f"a{c}b")
        assert len(out.splitlines()) == 1 and not unsafe_in(out), repr(c)
        assert out != "ab"          # shown, not silently dropped
    assert oneline("plain /usr/bin/curl ünïcode") == "plain /usr/bin/curl ünïcode"


def rules_for(tmp_path: Path, channel: str, message: str = "{user} {program} on {host}") -> Path:
    p = tmp_path / "alerts.toml"
    p.write_text(f"""
[monitor]
start = "beginning"
channels = ["c"]
storm = 0
[channel.c]
retry_initial = "10ms"
retry_max = "20ms"
timeout = "3s"
{channel}
[[alert]]
name = "rejected"
suppress = 0
match = {{ outcome = "rejected" }}
message = "{message}"
""")
    return p


def run_monitor(tmp_path: Path, rules: Path, entries: list, steps: int = 3) -> Monitor:
    with Journal.open(tmp_path / "journal") as j:
        j.append(entries)
    m = Monitor.open(rules, tmp_path / "journal", tmp_path / "state")
    for _ in range(steps):
        m.step()
    return m


def poison_then_clean(field: str, values: list[str], **kw) -> list:
    """One entry per hostile value (from an IBM i import), then one clean entry."""
    out = [entry("C", "rejected", ts=i, source="ibmi", **{**kw, field: v}) for i, v in enumerate(values)]
    return out + [entry("C", "rejected", ts=len(values), source="ibmi", **{**kw, field: "clean"})]


# --------------------------------------------------------------------------- finding 3: poison


def test_email_subject_poison_does_not_block_the_channel(tmp_path):
    """The default subject names {host}; an IBM i host name with \\r, \\v, U+2028 (every line
    breaker, every control) made the header raise, the alert was retried forever and every
    later alert waited behind it."""
    rec = SMTPReceiver().start()
    try:
        rules = rules_for(tmp_path, f'type = "email"\nhost = "127.0.0.1"\nport = {rec.port}\ntls = "none"\n'
                                    'from = "sockgate@example.org"\nto = ["oncall@example.org"]')
        hosts = [f"ibmi{c}Bcc: victim@example.org" for c in HOSTILE]
        with run_monitor(tmp_path, rules, poison_then_clean("host", hosts, user="QUSER")) as m:
            assert m.state.queue_sizes() == {} and m.state.dead_count() == 0
        assert len(rec.messages) == len(hosts) + 1
        for env in rec.messages:
            assert env.rcpt_tos == ["oncall@example.org"]
            msg = email.message_from_bytes(env.original_content, policy=email.policy.default)
            assert msg["Bcc"] is None
            subject = str(msg["Subject"])
            assert subject.startswith("[sockgate] warning: rejected on ibmi") or subject.endswith("on clean")
            assert not unsafe_in(subject), subject
            body = msg.get_content()
            assert all(not unsafe_in(line) for line in body.splitlines()), body
        assert str(email.message_from_bytes(rec.messages[-1].original_content)["Subject"]).endswith("on clean")
    finally:
        rec.stop()


def test_command_env_nul_does_not_block_the_channel(tmp_path):
    """A NUL in SOCKGATE_MESSAGE (a user name from an import) made subprocess raise ValueError;
    retried forever."""
    out = tmp_path / "got"
    script = tmp_path / "hook.py"
    script.write_text("import os, sys, json\n"
                      "a = json.load(sys.stdin)\n"
                      f"open({str(out)!r}, 'a').write(json.dumps([a['id'], os.environ['SOCKGATE_MESSAGE']]) + '\\n')\n")
    rules = rules_for(tmp_path, f'type = "command"\nargv = [{json.dumps(sys.executable)}, {json.dumps(str(script))}]')
    with run_monitor(tmp_path, rules, poison_then_clean("user", ["a\x00b", "x\ny=1"])) as m:
        assert m.state.queue_sizes() == {} and m.state.dead_count() == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g[1].split()[0] for g in got] == ["a\\x00b", "x\\ny=1", "clean"]


def test_command_env_and_argv_nul_in_rules_file_is_a_located_error():
    text = ('[channel.c]\ntype = "command"\nargv = ["/bin/true", "a\\u0000"]\nenv = { X = "a\\u0000b" }\n'
            '[[alert]]\nname = "a"\nchannels = ["c"]\n')
    with pytest.raises(RulesErrors) as ei:
        parse_rules(text, "f.toml")
    msgs = [str(e) for e in ei.value.errors]
    assert any(m.startswith("f.toml:3:") and "NUL" in m for m in msgs), msgs
    assert any(m.startswith("f.toml:4:") and "NUL" in m for m in msgs), msgs


def test_oversized_udp_syslog_is_sent_truncated_and_the_next_follows(tmp_path):
    """A 70,000-byte program name made a datagram the kernel refuses (EMSGSIZE): retried
    forever. Now the message is cut to max_size (still RFC 5424) and marked."""
    rec = SyslogReceiver("udp").start()
    try:
        rules = rules_for(tmp_path, f'type = "syslog"\nurl = "udp://127.0.0.1:{rec.port}"')
        with run_monitor(tmp_path, rules, poison_then_clean("program", ["/opt/" + "x" * 70_000])) as m:
            assert m.state.queue_sizes() == {} and m.state.dead_count() == 0
        assert wait_for(lambda: len(rec.messages) == 2)
        big, clean = rec.messages
        assert len(big) <= 8192 and big.startswith(b"<") and b"[sockgate@32473 id=\"rejected/1\"" in big
        assert b"[truncated]" in big
        assert b"clean" in clean
    finally:
        rec.stop()


def test_syslog_max_size_is_checked():
    head = '[channel.c]\ntype = "syslog"\nurl = "udp://127.0.0.1"\nmax_size = {}\n[[alert]]\nname = "a"\nchannels = ["c"]\n'
    parse_rules(head.format(480), "f")
    for bad in (100, 70000, '"big"'):
        with pytest.raises(RulesErrors, match="f:4: .*max_size"):
            parse_rules(head.format(bad), "f")


def test_a_message_that_can_never_be_sent_goes_dead_at_once(tmp_path, http_receiver):
    """A queued alert the channel cannot even format (a payload written by another version,
    or a bug) was retried forever; now it goes to the dead table on its first try and the
    next alert is delivered."""
    rules = rules_for(tmp_path, f'type = "webhook"\nurl = "{http_receiver.url}"\nformat = "slack"')
    with run_monitor(tmp_path, rules, [entry(user="first")]) as m:
        assert len(http_receiver.bodies) == 1
        m.state.db.execute("INSERT INTO outbox (channel, alert_id, payload, created) VALUES ('c', 'bad/1', '{}', 0)")
        with Journal.open(tmp_path / "journal") as j:
            j.append([entry(ts=5, user="second")])
        m.step()
        assert m.state.queue_sizes() == {}
        assert m.state.db.execute("SELECT alert_id, attempts FROM dead").fetchall() == [("bad/1", 1)]
        assert "second" in json.dumps(http_receiver.bodies[-1])


# --------------------------------------------------------------------------- finding 4: escaping


def test_syslog_lf_framing_newline_in_program_forges_no_line(tmp_path):
    rec = SyslogReceiver("tcp").start()
    try:
        rules = rules_for(tmp_path, f'type = "syslog"\nurl = "tcp://127.0.0.1:{rec.port}"\nframing = "lf"')
        forged = '<33>1 2024-01-01T00:00:00Z web1 sshd - - - root login accepted'
        progs = [f"/tmp/x{c}{forged}" for c in HOSTILE]
        with run_monitor(tmp_path, rules, poison_then_clean("program", progs, user="u]\"\\")) as m:
            assert m.state.queue_sizes() == {}
        assert wait_for(lambda: len(rec.messages) >= len(progs) + 1)
        assert len(rec.messages) == len(progs) + 1
        for raw in rec.messages:
            text = raw.decode("utf-8")
            assert not unsafe_in(text), text
            assert text.startswith("<36>1 ")       # every line the receiver read is one of ours
            # the SD-PARAM values stay escaped and on the one line (RFC 5424 6.3.3)
            assert 'user="u\\]\\"\\\\"' in text
    finally:
        rec.stop()


SLACK_MARKUP = ["<!channel>", "<!here>", "<@U024BE7LH>", "<#C024BE7LH>", "<!subteam^S1>",
                "<https://evil.example/login|Reset your password>"]


def test_slack_markup_is_neutralized(tmp_path, http_receiver):
    rules = rules_for(tmp_path, f'type = "webhook"\nurl = "{http_receiver.url}"\nformat = "slack"',
                      message="{user} ran {program} rule {rule}")
    es = [entry(ts=i, user=m, program=f"/bin/{m}", rule=m) for i, m in enumerate(SLACK_MARKUP)]
    with run_monitor(tmp_path, rules, es) as m:
        assert m.state.queue_sizes() == {}
    assert len(http_receiver.bodies) == len(SLACK_MARKUP)
    for body, markup in zip(http_receiver.bodies, SLACK_MARKUP):
        wire = json.dumps(body, ensure_ascii=False)
        assert "<" not in wire and ">" not in wire, wire
        assert markup.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in body["text"]


def test_teams_markdown_is_neutralized(tmp_path, http_receiver):
    rules = rules_for(tmp_path, f'type = "webhook"\nurl = "{http_receiver.url}"\nformat = "teams"',
                      message="{user} ran {program}")
    es = [entry(user="[Reset password](https://evil.example)", program="**urgent** _x_ `y` <at>all</at>")]
    with run_monitor(tmp_path, rules, es) as m:
        assert m.state.queue_sizes() == {}
    [body] = http_receiver.bodies
    card = body["attachments"][0]["content"]
    texts = [b["text"] for b in card["body"] if b["type"] == "TextBlock"]
    texts += [f["value"] for b in card["body"] if b["type"] == "FactSet" for f in b["facts"]]
    for t in texts:
        assert not re.search(r"(?<!\\)\[[^\]]*(?<!\\)\]\(", t), t      # no live [text](url) link
        assert not re.search(r"(?<!\\)\*\*", t) and "<at>" not in t, t
    assert any("\\[Reset password\\]\\(https://evil.example\\)" in t for t in texts), texts


def test_monitor_test_output_is_free_of_escapes_and_markup(tmp_path):
    with Journal.open(tmp_path / "journal") as j:
        j.append([entry(user="\x1b[2J\x1b[1;1Hroot", program="[bold red]/bin/sh[/]\u202e\x9b31m", host="h\rX")])
    rules = rules_for(tmp_path, 'type = "command"\nargv = ["true"]')
    p = sockgate("monitor", "--test", str(rules), "--journal", str(tmp_path / "journal"))
    assert p.returncode == 0, p.stderr
    out = p.stdout + p.stderr
    for line in out.splitlines():
        assert not unsafe_in(line), repr(line)
    assert "\\x1b[2J" in p.stdout and "[bold red]" in p.stdout   # shown as text, inert


# --------------------------------------------------------------------------- finding 5: located errors


BASE = '[monitor]\nchannels = ["x"]\n[channel.x]\ntype = "command"\nargv = ["true"]\n{chan}\n[[alert]]\nname = "a"\n{alert}\n'


@pytest.mark.parametrize("chan, alert, line, word", [
    ("", "suppress = inf", 9, "suppress"),
    ("", "suppress = -inf", 9, "suppress"),
    ("", "suppress = nan", 9, "suppress"),
    ("", "suppress = 1e300", 9, "suppress"),
    ("", 'suppress = "99999999999999999999d"', 9, "suppress"),
    ("", "suppress = " + "9" * 5000, 9, "digits"),
    ("", 'kind = "threshold"\ncount = 2\nwindow = inf', 11, "window"),
    ("", 'kind = "first_seen"\nkey = ["user"]\nforget = 1e19', 11, "forget"),
    ("", "count = " + "9" * 20 + '\nkind = "threshold"\nwindow = "1m"', 9, "count"),
    ("timeout = inf", "", 6, "timeout"),
    ('timeout = "99999999999d"', "", 6, "timeout"),
    ('retry_max = "999999d"', "", 6, "retry_max"),
    ("", "match = { user = " + "[" * 3000 + '"x"' + "]" * 3000 + " }", 9, "nested"),
    ("", "match = { remote_port = " + "[" * 40 + "1" + "]" * 40 + " }", 9, "nested"),
])
def test_check_hostile_values_are_located_errors(tmp_path, chan, alert, line, word):
    f = tmp_path / "r.toml"
    f.write_text(BASE.format(chan=chan, alert=alert))
    p = sockgate("monitor", "--check", str(f))
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and "internal error" not in p.stderr, p.stderr
    assert p.stderr.startswith(f"{f}:{line}: ") and word in p.stderr.splitlines()[0], p.stderr
    assert len(p.stderr) < 2000


# --------------------------------------------------------------------------- finding 6: files


def test_state_files_are_private_under_umask_000(tmp_path):
    old = os.umask(0)
    try:
        d = tmp_path / "a" / "state"
        st = State.open(d)
        st.db.execute("INSERT INTO meta VALUES ('x', 'y')")
        files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in d.iterdir()}
        st.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert not d.parent.stat().st_mode & 0o022     # a missing parent too: nobody else writes there
    assert {"state.db", "state.db-wal", "state.db-shm", "lock"} <= set(files)
    assert set(files.values()) == {0o600}, files


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777, 0o702])
def test_unsafe_existing_state_directory_is_refused(tmp_path, mode):
    d = tmp_path / "state"
    d.mkdir()
    d.chmod(mode)
    with pytest.raises(StateError, match=f"mode {mode & 0o7777:04o}: others may write to it"):
        State.open(d)
    assert list(d.iterdir()) == []


def test_state_directory_of_another_owner_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    os.chown(d, 12345, 12345)
    with pytest.raises(StateError, match="owned by uid 12345"):
        State.open(d)


def test_state_db_symlink_is_refused(tmp_path):
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    (d / "state.db").symlink_to(tmp_path / "elsewhere.db")
    with pytest.raises(StateError, match="state.db"):
        State.open(d)
    assert not (tmp_path / "elsewhere.db").exists()


# --------------------------------------------------------------------------- finding 9: AUTH


def test_auth_over_plaintext_is_refused_at_check():
    head = ('[channel.m]\ntype = "email"\nhost = "{host}"\ntls = "none"\nfrom = "a@example.org"\n'
            'to = ["b@example.org"]\nusername = "alerts"\npassword_env = "PW"\n{more}'
            '[[alert]]\nname = "a"\nchannels = ["m"]\n')
    with pytest.raises(RulesErrors, match=r"f:4: .*AUTH.*plaintext"):
        parse_rules(head.format(host="mail.example.org", more=""), "f")
    # the opt-in is for loopback only
    with pytest.raises(RulesErrors, match=r"plaintext_auth.*loopback"):
        parse_rules(head.format(host="mail.example.org", more="plaintext_auth = true\n"), "f")
    parse_rules(head.format(host="127.0.0.1", more="plaintext_auth = true\n"), "f")


def test_auth_is_never_sent_in_plaintext_even_if_the_server_offers_it(tmp_path, monkeypatch):
    """aiosmtpd offering AUTH without TLS (auth_require_tls=False): the channel must not send
    the credentials; before the fix it logged in over the plaintext connection."""
    rec = SMTPReceiver(auth=("alerts", "s3cret")).start()
    try:
        from sockgate.monitor.channels import make_channel
        from sockgate.errors import ChannelError
        monkeypatch.setenv("SG_PW", "s3cret")
        opts = {"host": "127.0.0.1", "port": rec.port, "tls": "none", "from": "a@example.org",
                "to": ["b@example.org"], "username": "alerts", "password_env": "SG_PW", "timeout": "3s"}
        alert = {"id": "a/1", "alert": "a", "kind": "every", "severity": "error", "message": "m", "count": 1,
                 "first_time": "-", "last_time": "-", "group": {}, "entry": {}, "monitor_host": "h"}
        with pytest.raises(ChannelError, match="plaintext"):
            make_channel("m", "email", opts).send(alert)
        assert rec.messages == []
        # the documented opt-in for a loopback relay
        make_channel("m", "email", dict(opts, plaintext_auth=True)).send(alert)
        assert len(rec.messages) == 1
    finally:
        rec.stop()


# --------------------------------------------------------------------------- finding 3: storms


STORM_RULES = """
[monitor]
channels = ["c"]
{monitor}
[channel.c]
type = "command"
argv = ["true"]
[[alert]]
name = "rejected"
match = {{ outcome = "rejected" }}
message = "{{user}} refused {{remote}}"
"""


def rejections(n: int, spacing: float = 0.001, every: int = 1) -> list:
    """n entries (seq 1..n) of which every `every`-th is a rejection, each to its own port:
    every alert is distinct, so dedup cannot fold any of them."""
    return [entry("C", "rejected" if i % every == 0 else "allowed", ts=i * spacing, seq=i + 1, user="u",
                  remote_addr="192.0.2.1", remote_port=i % 65535 + 1) for i in range(n)]


def expand(ranges: str) -> list[int]:
    out = []
    for part in ranges.split(","):
        a, _, b = part.partition("-")
        out += range(int(a), int(b or a) + 1)
    return out


def test_storm_of_10000_distinct_rejections_folds_into_counted_reports():
    """10,000 distinct rejections raised 10,000 alerts. Now a rule sends `storm` (20) per
    storm_window (1m) and folds the rest into one report per window: exact counts, and
    which entries (their seqs)."""
    from sockgate.monitor import replay
    rs = parse_rules(STORM_RULES.format(monitor=""))
    es = rejections(10_000, spacing=0.03)             # 300 s: five storm windows
    alerts = replay(rs, es)
    sent = [a for a in alerts if not a.payload.get("storm")]
    storms = [a for a in alerts if a.payload.get("storm")]
    assert len(sent) == 5 * 20 and len(storms) == 5
    assert sum(a.payload["count"] for a in alerts) == 10_000            # nothing dropped
    folded = [s for a in storms for s in expand(a.payload["folded"]["seqs"])]
    assert all(a.payload["folded"]["seqs_complete"] for a in storms)
    assert sorted(folded + [a.payload["entry"]["seq"] for a in sent]) == list(range(1, 10_001))
    first = storms[0].payload
    assert first["id"] == "rejected/storm/21" and first["count"] == 1980 and first["folded"]["entries"] == 1980
    assert "1980 more alerts folded" in first["message"] and "journal seq 21-2000" in first["message"]


def test_storm_report_of_scattered_entries_keeps_exact_count_and_span():
    from sockgate.monitor import replay
    rs = parse_rules(STORM_RULES.format(monitor="storm = 5\nstorm_window = \"1h\""))
    es = rejections(10_000, every=3)                  # every third entry: 3,334 ranges
    alerts = replay(rs, es)
    [storm] = [a.payload for a in alerts if a.payload.get("storm")]
    assert len(alerts) == 6 and storm["count"] == 3334 - 5
    f = storm["folded"]
    assert f["seqs_complete"] is False and f["first_seq"] == 16 and f["last_seq"] == 10_000
    assert "journal seq 16-10000" in storm["message"]


def test_storm_zero_is_off_and_bad_knobs_are_located():
    from sockgate.monitor import replay
    rs = parse_rules(STORM_RULES.format(monitor="storm = 0"))
    assert len(replay(rs, rejections(500))) == 500
    for bad, word in (("storm = -1", "storm"), ("storm = true", "storm"), ('storm_window = inf', "storm_window"),
                      ('storm_window = "0s"', "storm_window")):
        with pytest.raises(RulesErrors, match=f"f:4: .*{word}"):
            parse_rules(STORM_RULES.format(monitor=bad), "f")


def test_storm_across_restarts_counts_add_up_at_the_receiver(tmp_path, http_receiver):
    """The storm window is state: a monitor restarted in the middle of a storm goes on
    counting, and every rejection is accounted for at a real HTTP receiver."""
    from .conftest import T0
    rules = tmp_path / "alerts.toml"
    rules.write_text(STORM_RULES.format(monitor='start = "beginning"').replace(
        'type = "command"\nargv = ["true"]', f'type = "webhook"\nurl = "{http_receiver.url}"'))
    es = rejections(10_000, spacing=0.01)                 # 100 s of journal time
    now = [T0]
    with Journal.open(tmp_path / "journal") as j:
        j.append(es[:4000])
    with Monitor.open(rules, tmp_path / "journal", tmp_path / "state", clock=lambda: now[0], batch=700) as m:
        m.step()
    with Journal.open(tmp_path / "journal") as j:
        j.append([entry("C", "rejected", ts=e.ts_ns / 1e9 - T0 / 1e9, user="u", remote_addr="192.0.2.1",
                        remote_port=e.remote_port) for e in es[4000:]])
    with Monitor.open(rules, tmp_path / "journal", tmp_path / "state", clock=lambda: now[0], batch=700) as m:
        m.step()
        now[0] = T0 + 10**12                               # the wall clock passes the last window
        m.step()
        assert m.state.queue_sizes() == {}
    bodies = http_receiver.bodies
    assert len(bodies) == 2 * 20 + 2
    assert sum(b["count"] for b in bodies) == 10_000
    assert len({b["id"] for b in bodies}) == len(bodies)


# --------------------------------------------------------------------------- finding 9: detach


def test_detach_record_raises_the_example_alert(tmp_path):
    """The daemon journals `detach` (by, programs) when someone else detaches its programs:
    the example rule fires on it, through a real command channel, with what was detached."""
    example = Path(__file__).resolve().parents[2] / "examples" / "alerts.toml"
    out = tmp_path / "got"
    text = example.read_text()
    text = re.sub(r'argv    = \[.*\]', f'argv = ["sh", "-c", "cat >> {out}"]', text)
    rules = tmp_path / "alerts.toml"
    text = re.sub(r'start +=  *"end"', 'start = "beginning"', text)
    rules.write_text(text.replace('channels = ["syslog", "oncall-mail", "pager"]', 'channels = ["pager"]'))
    with Journal.open(tmp_path / "journal") as j:
        j.record(EntryType.DETACHED, by="detached by someone else while running", programs="sg_accept,sg_connect")
    with Monitor.open(rules, tmp_path / "journal", tmp_path / "state") as m:
        m.step()
        assert m.state.queue_sizes().get("pager") is None
    [a] = [json.loads(line) for line in out.read_text().splitlines()]
    assert a["alert"] == "sockgate-detached" and a["severity"] == "critical"
    assert a["message"].endswith("detached by someone else while running: sg_accept,sg_connect")
