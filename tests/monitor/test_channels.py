"""Each channel against a real receiver on loopback."""

from __future__ import annotations

import email
import json
import re
import sys

import pytest

from sockgate.errors import ChannelError
from sockgate.monitor.channels import PermanentChannelError, make_channel, validate_channel
from sockgate.monitor.channels.syslog import format_rfc5424
from sockgate.monitor.engine import Engine
from sockgate.monitor.parse import parse_rules

from .conftest import SMTPReceiver, SyslogReceiver, entry, wait_for

RULES = """
[monitor]
channels = ["x"]
[channel.x]
type = "command"
argv = ["true"]
[[alert]]
name = "svc-refused"
severity = "error"
match = { type = "C", outcome = "rejected" }
message = "{user} refused connect to {remote} by \\"{rule}\\" ]"
"""


@pytest.fixture
def alert() -> dict:
    eng = Engine(parse_rules(RULES), monitor_host="mon1")
    e = entry("C", "rejected", ts=1.5, seq=42, user="svc-app", program="/usr/bin/curl", remote_addr="10.0.0.5",
              remote_port=25, rule="web-no-mail", host="web1", extra={"errno": 1})
    [a] = eng.process_all([e])
    return a.payload


# RFC 5424: <PRI>VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP SD [SP MSG]
RFC5424 = re.compile(
    rb'^<(\d{1,3})>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) ([!-~]{1,255}) ([!-~]{1,48}) ([!-~]{1,128}) '
    rb'([!-~]{1,32}) (\[sockgate@32473(?: [^ =\]"]+="(?:[^"\\\]]|\\["\\\]])*")*\]) (.*)$', re.S)


def check_rfc5424(msg: bytes, alert: dict, facility: int = 4) -> re.Match:
    m = RFC5424.match(msg)
    assert m, msg
    assert int(m.group(1)) == facility * 8 + 3          # facility auth, severity error
    assert m.group(2) == b"2023-11-14T22:13:21.500000Z"
    assert m.group(6) == b"ALERT"
    sd = m.group(7).decode()
    assert f'id="{alert["id"]}"' in sd and 'alert="svc-refused"' in sd and 'remote_port="25"' in sd
    assert 'rule="web-no-mail"' in sd
    assert m.group(8).decode() == alert["message"]
    return m


def test_rfc5424_format_and_escaping(alert):
    alert = dict(alert, alert='we"ird]')
    msg = format_rfc5424(alert, facility="local3", app_name="sock gate", hostname="h ost")
    m = RFC5424.match(msg)
    assert m, msg
    assert int(m.group(1)) == 19 * 8 + 3
    assert m.group(3) == b"h_ost" and m.group(4) == b"sock_gate"
    assert b'alert="we\\"ird\\]"' in m.group(7)


@pytest.mark.parametrize("proto", ["udp", "tcp", "tls"])
def test_syslog_receivers(proto, alert, cert):
    rec = SyslogReceiver(proto, cert).start()
    try:
        opts = {"url": f"{proto}://127.0.0.1:{rec.port}", "timeout": "3s"}
        if proto == "tls":
            opts["ca_file"] = cert[0]
        ch = make_channel("s", "syslog", opts)
        ch.send(alert)
        ch.send(dict(alert, id=alert["id"] + "/repeat/1", repeat=True, count=3))
        assert wait_for(lambda: len(rec.messages) == 2)
        check_rfc5424(rec.messages[0], alert)
        assert b" REPEAT [" in rec.messages[1] and b'count="3"' in rec.messages[1]
    finally:
        rec.stop()


def test_syslog_tcp_lf_framing(alert):
    rec = SyslogReceiver("tcp").start()
    try:
        make_channel("s", "syslog", {"url": f"tcp://127.0.0.1:{rec.port}", "framing": "lf"}).send(alert)
        assert wait_for(lambda: len(rec.messages) == 1)
        check_rfc5424(rec.messages[0], alert)
    finally:
        rec.stop()


def test_syslog_tls_rejects_unknown_cert(alert, cert):
    rec = SyslogReceiver("tls", cert).start()
    try:
        ch = make_channel("s", "syslog", {"url": f"tls://127.0.0.1:{rec.port}", "timeout": "3s"})
        with pytest.raises(ChannelError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            ch.send(alert)
    finally:
        rec.stop()


def test_syslog_tcp_down_is_retryable(alert):
    rec = SyslogReceiver("tcp")   # never started: connection refused
    ch = make_channel("s", "syslog", {"url": f"tcp://127.0.0.1:{rec.port}", "timeout": "1s"})
    with pytest.raises(ChannelError, match="refused"):
        ch.send(alert)


def test_email_plain(alert):
    rec = SMTPReceiver().start()
    try:
        ch = make_channel("m", "email", {"host": "127.0.0.1", "port": rec.port, "tls": "none",
                                         "from": "sockgate@example.org", "to": ["oncall@example.org"]})
        ch.send(alert)
        assert len(rec.messages) == 1
        env = rec.messages[0]
        assert env.mail_from == "sockgate@example.org" and env.rcpt_tos == ["oncall@example.org"]
        msg = email.message_from_bytes(env.original_content)
        assert msg["Subject"] == "[sockgate] error: svc-refused on web1"
        assert msg["X-Sockgate-Alert-Id"] == alert["id"]
        assert "@sockgate>" in msg["Message-ID"]
        body = msg.get_payload(decode=True).decode()
        assert alert["message"] in body and "10.0.0.5" in body and "extra.errno" in body
    finally:
        rec.stop()


def test_email_starttls_auth(alert, cert, tmp_path):
    rec = SMTPReceiver(cert=cert, auth=("alerts", "s3cret")).start()
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    try:
        base = {"host": "127.0.0.1", "port": rec.port, "tls": "starttls", "from": "a@example.org",
                "to": ["b@example.org", "c@example.org"], "username": "alerts", "ca_file": cert[0],
                "timeout": "5s"}
        make_channel("m", "email", dict(base, password_file=str(pw))).send(alert)
        assert len(rec.messages) == 1 and rec.messages[0].rcpt_tos == ["b@example.org", "c@example.org"]
        # a wrong password is a retryable failure (credentials get fixed), nothing delivered
        bad = tmp_path / "bad"
        bad.write_text("nope")
        with pytest.raises(ChannelError, match="authentication failed"):
            make_channel("m", "email", dict(base, password_file=str(bad))).send(alert)
        # without STARTTLS the server refuses (require_starttls): not delivered
        with pytest.raises(ChannelError):
            make_channel("m", "email", dict(base, tls="none", password_file=str(pw))).send(alert)
        assert len(rec.messages) == 1
    finally:
        rec.stop()


def test_email_server_down(alert):
    rec = SMTPReceiver()   # not started
    ch = make_channel("m", "email", {"host": "127.0.0.1", "port": rec.port, "tls": "none",
                                     "from": "a@example.org", "to": ["b@example.org"], "timeout": "1s"})
    with pytest.raises(ChannelError):
        ch.send(alert)


@pytest.mark.parametrize("fmt", ["json", "slack", "teams"])
def test_webhook_formats(fmt, alert, http_receiver):
    ch = make_channel("w", "webhook", {"url": http_receiver.url, "format": fmt, "headers": {"X-Token": "t"}})
    ch.send(alert)
    [body] = http_receiver.bodies
    hdr = {k.lower(): v for k, v in http_receiver.headers[0].items()}
    assert hdr["idempotency-key"] == alert["id"] and hdr["x-token"] == "t"
    if fmt == "json":
        assert body == json.loads(json.dumps(alert))
        assert body["entry"]["remote_addr"] == "10.0.0.5" and body["entry"]["seq"] == 42
    elif fmt == "slack":
        assert body["text"].startswith("[ERROR] svc-refused: ") and alert["message"] in body["text"]
        assert body["blocks"][0]["type"] == "header"
        assert any(f["text"].startswith("*remote_addr*") for f in body["blocks"][2]["fields"]) or \
            any("Alert" in f["text"] for f in body["blocks"][2]["fields"])
    else:
        assert body["type"] == "message"
        att = body["attachments"][0]
        assert att["contentType"] == "application/vnd.microsoft.card.adaptive"
        card = att["content"]
        from sockgate.monitor.channels.webhook import teams_text
        assert card["type"] == "AdaptiveCard" and card["body"][1]["text"] == teams_text(alert["message"])
        assert card["body"][1]["text"].endswith('"web-no-mail" \\]')   # markdown escaped
        facts = {f["title"].replace("\\", ""): f["value"] for f in card["body"][2]["facts"]}
        assert facts["remote_addr"] == "10.0.0.5" and facts["Id"] == alert["id"]


def test_webhook_status_codes(alert, http_receiver):
    ch = make_channel("w", "webhook", {"url": http_receiver.url, "timeout": "2s"})
    http_receiver.status = 503
    with pytest.raises(ChannelError) as ei:
        ch.send(alert)
    assert not isinstance(ei.value, PermanentChannelError)
    http_receiver.status = 400
    with pytest.raises(PermanentChannelError, match="HTTP 400"):
        ch.send(alert)
    http_receiver.stop()
    with pytest.raises(ChannelError):
        ch.send(alert)


def test_command_writes_file(alert, tmp_path):
    out = tmp_path / "out.json"
    script = tmp_path / "hook.py"
    script.write_text("import json, os, sys\n"
                      "a = json.load(sys.stdin)\n"
                      f"open({str(out)!r}, 'w').write(json.dumps({{'alert': a, 'env': os.environ['SOCKGATE_ALERT_ID'],"
                      " 'extra': os.environ['EXTRA']}))\n")
    ch = make_channel("c", "command", {"argv": [sys.executable, str(script)], "env": {"EXTRA": "yes"}})
    ch.send(alert)
    got = json.loads(out.read_text())
    assert got["alert"] == json.loads(json.dumps(alert)) and got["env"] == alert["id"] and got["extra"] == "yes"


def test_command_failures(alert, tmp_path):
    with pytest.raises(ChannelError, match="exit status 3: boom"):
        make_channel("c", "command", {"argv": ["sh", "-c", "echo boom >&2; exit 3"]}).send(alert)
    with pytest.raises(ChannelError, match="timed out"):
        make_channel("c", "command", {"argv": ["sleep", "5"], "timeout": "0.2s"}).send(alert)
    with pytest.raises(ChannelError, match="No such file"):
        make_channel("c", "command", {"argv": [str(tmp_path / "missing")]}).send(alert)


def test_validate_channel_options():
    assert validate_channel("syslog", {"url": "udp://h:514"}) == []
    msgs = [m for _, m in validate_channel("syslog", {"url": "http://h", "facility": "nope", "bogus": 1})]
    assert any("bad URL" in m for m in msgs) and any("facility" in m for m in msgs) and any("bogus" in m for m in msgs)
    msgs = [m for _, m in validate_channel("email", {"host": "h", "password_file": "/x"})]
    assert any("'from' is required" in m for m in msgs) and any("no username" in m for m in msgs)
    assert validate_channel("webhook", {"url": "https://hooks.example.org/x", "format": "teams"}) == []
    assert validate_channel("command", {"argv": []})


def test_email_subject_is_checked_and_rendered_by_the_one_template_engine(alert):
    """What --check accepts is what is rendered, and the other way round."""
    from sockgate.monitor.channels.email import build_message

    base = {"host": "h", "from": "a@example.org", "to": ["b@example.org"]}
    assert validate_channel("email", dict(base, subject="{alert}: {message}")) == []
    subject = "{remote} at {time} ({type_name}, {group}) {{x}}"
    assert validate_channel("email", dict(base, subject=subject)) == []
    msg = build_message(alert, "a@example.org", ["b@example.org"], subject)
    assert msg["Subject"] == "10.0.0.5:25 at 2023-11-14T22:13:21.500000Z (connect, all) {x}"
    assert build_message(alert, "a@x", ["b@x"], "{alert}: {message}")["Subject"] == \
        f"svc-refused: {alert['message']}"
    [(key, problem)] = validate_channel("email", dict(base, subject="{nope}"))
    assert key == "subject" and "unknown field {nope} in subject" in problem
    assert any("{window}" in m for _, m in validate_channel("email", dict(base, subject="{window}")))
