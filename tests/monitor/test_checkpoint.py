"""Off-host checkpoints from the monitor ([monitor.checkpoint], issue 13): the journal's
newest seal sent on a schedule through the alert outbox, received by real receivers (HTTP,
aiosmtpd, syslog TCP, a command), saved to a file and checked with `journal verify
--checkpoint FILE`, which must fail once the journal is truncated or replaced.

The schedule runs on the monitor's clock (Monitor.open(clock=...)): a fake clock steps
through minutes without sleeping, and every = "1m" is the shortest the file allows."""

from __future__ import annotations

import email
import email.policy
import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest

from sockgate.journal import Journal
from sockgate.journal.verify import checkpoint, format_checkpoint, parse_checkpoint, verify
from sockgate.monitor import Monitor, parse_rules
from sockgate.errors import RulesErrors

from .conftest import HTTPReceiver, S, SMTPReceiver, SyslogReceiver, entry, wait_for
from .test_cli import no_traceback, sockgate

M = 60 * S
NOW = 1_800_000_000 * S + 10 * S     # 10 s into a minute slot (1.8e9 is a multiple of 60)


class Clock:
    def __init__(self, now: int = NOW):
        self.now = now

    def __call__(self) -> int:
        return self.now


def rules(tmp_path: Path, channel: str, alerts: str = "") -> Path:
    """A rules file: a checkpoint every minute (the shortest allowed) to channel "out"."""
    p = tmp_path / "alerts.toml"
    p.write_text(f"""
[monitor]
start = "beginning"
channels = ["out"]

[monitor.checkpoint]
every = "1m"
channels = ["out"]

[channel.out]
{channel}
timeout = "2s"
retry_initial = "1s"
retry_max = "1s"
{alerts}
""")
    return p


def webhook(url: str) -> str:
    return f'type = "webhook"\nurl = "{url}"'


def fill(j: Journal, n: int = 50, start: int = 0) -> dict:
    """Append n entries, seal them; the journal's checkpoint now."""
    j.append(entry("C", "rejected", ts=start + i, user=f"u{i}", remote_addr="10.0.0.1", remote_port=start + i)
             for i in range(n))
    j.seal()
    return checkpoint(j.directory)


@pytest.fixture
def journal(tmp_path):
    j = Journal.open(tmp_path / "journal", host="h")
    yield j
    j.close()


def checkpoints(rec: HTTPReceiver) -> list[dict]:
    return [b for b in rec.bodies if b.get("kind") == "checkpoint"]


def cut_back_to(jdir: Path, seq: int) -> None:
    """The intruder's truncation: entries after seq and the seals that covered them."""
    for name in sorted(os.listdir(jdir)):
        if name.startswith("r0") and name.endswith(".sgj"):
            c = sqlite3.connect(jdir / name, isolation_level=None)
            c.execute("DELETE FROM entry WHERE seq > ?", (seq,))
            c.execute("DELETE FROM seal WHERE seq > ?", (seq,))
            c.close()


def verify_cli(jdir: Path, cp_file: Path):
    p = sockgate("journal", "verify", "--journal", str(jdir), "--checkpoint", str(cp_file))
    no_traceback(p)
    return p


# ----------------------------------------------------------------------------- the file


def test_rules_checkpoint_setting():
    rs = parse_rules('[monitor]\nchannels = ["a"]\n[monitor.checkpoint]\nevery = "1h"\n'
                     '[channel.a]\ntype = "command"\nargv = ["true"]\n[channel.b]\ntype = "command"\nargv = ["true"]\n')
    assert rs.checkpoint.every_ns == 3600 * S and rs.checkpoint.channels == ("a",)   # [monitor] channels
    assert rs.checkpoint.severity == "info" and rs.checkpoint.line == 3 and not rs.rules  # no [[alert]] needed
    rs = parse_rules('[monitor]\ncheckpoint = { every = "90s", channels = ["b"], severity = "notice" }\n'
                     '[channel.b]\ntype = "command"\nargv = ["true"]\n')
    assert (rs.checkpoint.every_ns, rs.checkpoint.channels, rs.checkpoint.severity) == (90 * S, ("b",), "notice")
    assert parse_rules('[channel.b]\ntype = "command"\nargv = ["true"]\n[[alert]]\nname = "x"\nchannels = ["b"]\n'
                       ).checkpoint is None


BAD = """[monitor]
channels = ["out"]
[monitor.checkpoint]
every = "{every}"
channels = {channels}
{extra}
[channel.out]
type = "command"
argv = ["true"]
"""


@pytest.mark.parametrize("every, channels, extra, line, message", [
    ("1h", '["ops-mail"]', "", 5, "[monitor.checkpoint]: unknown channel 'ops-mail' (define [channel.ops-mail])"),
    ("1h", '"out"', "", 5, "[monitor.checkpoint]: channels: expected a list of channel names"),
    ("soon", '["out"]', "", 4, "[monitor.checkpoint] every: bad duration \"soon\""),
    ("30s", '["out"]', "", 4, "[monitor.checkpoint] every: at least 1m (got '30s')"),
    ("59.9s", '["out"]', "", 4, "[monitor.checkpoint] every: at least 1m"),
    ("0s", '["out"]', "", 4, "[monitor.checkpoint] every: must be greater than zero"),
    ("inf", '["out"]', "", 4, "[monitor.checkpoint] every:"),
    ("99999999999d", '["out"]', "", 4, "[monitor.checkpoint] every:"),
    ("1h", '["out"]', 'severity = "loud"', 6, "severity: unknown 'loud'"),
    ("1h", '["out"]', 'interval = "1h"', 6, "[monitor.checkpoint]: unknown key 'interval' (known: channels, every, severity)"),
])
def test_check_errors_are_located(tmp_path, every, channels, extra, line, message):
    f = tmp_path / "bad.toml"
    f.write_text(BAD.format(every=every, channels=channels, extra=extra))
    with pytest.raises(RulesErrors) as ei:
        parse_rules(f.read_text(), str(f))
    assert [(e.line, message in e.message) for e in ei.value.errors] == [(line, True)], ei.value.errors
    p = sockgate("monitor", "--check", str(f))
    no_traceback(p)
    assert p.returncode == 1 and p.stderr.startswith(f"{f}:{line}: "), p.stderr
    assert message in p.stderr
    p = sockgate("monitor", "--check", str(f), "--json")
    no_traceback(p)
    assert json.loads(p.stdout)["errors"][0]["line"] == line


@pytest.mark.parametrize("text, line, message", [
    ('[monitor]\ncheckpoint = "1h"\n', 2, "[monitor.checkpoint]: expected a table"),
    ('[monitor]\nchannels = ["out"]\n[monitor.checkpoint]\nseverity = "info"\n', 3, "every is required"),
    ('[monitor.checkpoint]\nevery = "1h"\n', 1, "[monitor.checkpoint]: no channels"),
])
def test_check_errors_whole_table(tmp_path, text, line, message):
    f = tmp_path / "bad.toml"
    f.write_text(text + '[channel.out]\ntype = "command"\nargv = ["true"]\n')
    p = sockgate("monitor", "--check", str(f))
    no_traceback(p)
    assert p.returncode == 1 and p.stderr.startswith(f"{f}:{line}: ") and message in p.stderr, p.stderr


def test_example_file_has_a_checkpoint():
    example = Path(__file__).resolve().parents[2] / "examples" / "alerts.toml"
    rs = parse_rules(example.read_text())
    assert rs.checkpoint is not None and rs.checkpoint.every_ns >= M
    p = sockgate("monitor", "--check", str(example))
    assert p.returncode == 0 and "; checkpoint every 1h to ops-mail)" in p.stdout, p.stdout
    p = sockgate("monitor", "--check", str(example), "--json")
    assert json.loads(p.stdout)["checkpoint"] == {"every": "1h", "channels": ["ops-mail"]}


def test_due_slots():
    from sockgate.monitor.checkpoint import due
    from sockgate.monitor.model import CheckpointConfig

    cfg = CheckpointConfig(3600 * S, ("x",))
    hour = NOW // (3600 * S) * (3600 * S)
    assert due(cfg, NOW, None) == hour                      # a new monitor: at once
    assert due(cfg, NOW, hour) is None                      # taken
    assert due(cfg, hour + 3600 * S, hour) == hour + 3600 * S
    assert due(cfg, NOW + 50 * 3600 * S, hour) == hour + 50 * 3600 * S    # one, not fifty
    assert due(cfg, NOW, hour + 24 * 3600 * S) == hour      # the clock was set back: not held for a day


# ----------------------------------------------------------------------------- end to end


def test_checkpoint_arrives_on_schedule_and_verifies(tmp_path, journal, http_receiver):
    f = rules(tmp_path, webhook(http_receiver.url))
    clock = Clock()
    cp1 = fill(journal)
    with Monitor.open(f, journal.directory, tmp_path / "state", clock=clock) as m:
        m.step()                                   # the first slot: at once
        got = checkpoints(http_receiver)
        assert len(got) == 1
        body = got[0]
        assert body["checkpoint"] == cp1 and body["alert"] == "checkpoint" and body["severity"] == "info"
        assert body["id"] == "checkpoint/20270115T080000Z"        # the slot NOW falls in
        h = {k.lower(): v for k, v in http_receiver.headers[-1].items()}
        assert h["idempotency-key"] == body["id"]
        # the message is `journal checkpoint`'s line, byte for byte
        p = sockgate("journal", "checkpoint", "--journal", str(journal.directory))
        assert p.returncode == 0 and body["message"] == p.stdout.strip() == format_checkpoint(cp1)
        for _ in range(5):                         # the rest of the minute: nothing more
            clock.now += 9 * S
            m.step()
        assert len(checkpoints(http_receiver)) == 1
        cp2 = fill(journal, start=100)
        clock.now += 10 * S                        # the next minute
        m.step()
        got = checkpoints(http_receiver)
        assert len(got) == 2 and got[1]["checkpoint"] == cp2 and cp2["epoch"] > cp1["epoch"]
        assert got[1]["id"] == "checkpoint/20270115T080100Z"
    journal.close()
    saved = [tmp_path / "cp1.json", tmp_path / "cp2.json"]
    for b, path in zip(got, saved):
        path.write_text(b["message"] + "\n")
        p = verify_cli(journal.directory, path)
        assert p.returncode == 0 and "checkpoint found" in p.stdout, p.stderr
    # truncated back to the first checkpoint: the second is no longer in the journal
    cut_back_to(journal.directory, cp1["seq"])
    p = verify_cli(journal.directory, saved[1])
    assert p.returncode == 1 and "the checkpoint (seal" in p.stderr and "truncated or replaced" in p.stderr, p.stderr


def test_checkpoint_fails_after_the_journal_is_rewritten(tmp_path, journal, http_receiver):
    f = rules(tmp_path, webhook(http_receiver.url))
    fill(journal)
    with Monitor.open(f, journal.directory, tmp_path / "state", clock=Clock()) as m:
        m.step()
    saved = tmp_path / "cp.json"
    saved.write_text(checkpoints(http_receiver)[0]["message"])
    journal.close()
    assert verify_cli(journal.directory, saved).returncode == 0
    jdir = journal.directory        # replaced wholesale: a fresh journal with the same entries
    for name in os.listdir(jdir):
        os.unlink(jdir / name)
    with Journal.open(jdir, host="h") as j:
        fill(j)
    p = verify_cli(jdir, saved)
    assert p.returncode == 1 and "checkpoint" in p.stderr, p.stderr
    assert not verify(jdir, None, checkpoint=parse_checkpoint(saved.read_text())).ok


def test_restart_neither_resends_nor_skips(tmp_path, journal, http_receiver):
    f = rules(tmp_path, webhook(http_receiver.url))
    clock = Clock()
    fill(journal)

    def run_once() -> None:
        with Monitor.open(f, journal.directory, tmp_path / "state", clock=clock) as m:
            m.step()
            m.step()

    run_once()
    for _ in range(3):              # restarts within the slot: nothing again
        clock.now += 10 * S
        run_once()
    assert len(checkpoints(http_receiver)) == 1
    clock.now += 5 * M              # down for five slots: one checkpoint, not five
    run_once()
    ids = [b["id"] for b in checkpoints(http_receiver)]
    assert len(ids) == 2 and len(set(ids)) == 2
    clock.now += M                  # and the schedule goes on from there
    run_once()
    assert len(checkpoints(http_receiver)) == 3


def test_receiver_down_keeps_one_per_slot_in_order(tmp_path, journal):
    rec = HTTPReceiver()            # not started: down
    f = rules(tmp_path, webhook(rec.url), alerts='[[alert]]\nname = "rej"\nsuppress = 0\n'
                                                'match = { outcome = "rejected" }\n')
    clock = Clock()
    fill(journal, n=2)
    with Monitor.open(f, journal.directory, tmp_path / "state", clock=clock) as m:
        m.step()
        for _ in range(10):          # two slots while down
            clock.now += 10 * S
            m.step()
        assert m.state.queue_sizes()["out"][0] == 2 + 2   # 2 alerts, 2 checkpoints
        rec.start()
        try:
            clock.now += 2 * S
            m.step()
            ids = rec.ids()
            assert ids == ["rej/1", "rej/2", "checkpoint/20270115T080000Z", "checkpoint/20270115T080100Z"]
        finally:
            rec.stop()


def test_waits_for_a_first_seal(tmp_path, http_receiver, caplog):
    f = rules(tmp_path, webhook(http_receiver.url))
    clock = Clock()
    jdir = tmp_path / "journal"
    with Monitor.open(f, jdir, tmp_path / "state", clock=clock) as m:
        m.step()                    # no journal at all
        with Journal.open(jdir, host="h") as j:
            m.step()                # nothing sealed yet
            assert not http_receiver.bodies and "no checkpoint to send yet" in caplog.text
            cp = fill(j)
            clock.now += 20 * S
            m.step()                # retried after a minute at most, not at every poll
            assert not http_receiver.bodies
            clock.now += 40 * S
            m.step()
            assert [b["checkpoint"] for b in checkpoints(http_receiver)] == [cp]


# ----------------------------------------------------------------------------- every channel


def _verifies(jdir: Path, text: str, tmp_path: Path) -> None:
    """The received text, saved as a file, is a checkpoint `journal verify` finds."""
    path = tmp_path / "received.json"
    path.write_text(text)
    p = verify_cli(jdir, path)
    assert p.returncode == 0 and "checkpoint found" in p.stdout, (text, p.stderr)


def test_email_body_first_line(tmp_path, journal):
    rec = SMTPReceiver().start()
    try:
        f = rules(tmp_path, f'type = "email"\nhost = "127.0.0.1"\nport = {rec.port}\ntls = "none"\n'
                            'from = "sg@example.org"\nto = ["ops@example.org"]')
        cp = fill(journal)
        with Monitor.open(f, journal.directory, tmp_path / "state", clock=Clock(), monitor_host="web1") as m:
            m.step()
        assert wait_for(lambda: len(rec.messages) == 1)
        raw = rec.messages[0].original_content
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert msg["Subject"] == "[sockgate] info: checkpoint on web1"
        assert msg["X-Sockgate-Alert-Id"] == "checkpoint/20270115T080000Z"
        body = msg.get_content()
        first = body.splitlines()[0]
        assert first == format_checkpoint(cp)
        assert format_checkpoint(cp).encode() in raw        # one line in the raw message too
        assert ["checkpoint.seq", str(cp["seq"])] in [line.split() for line in body.splitlines()]
    finally:
        rec.stop()
    journal.close()
    _verifies(journal.directory, first + "\n", tmp_path)


@pytest.mark.parametrize("max_size", [8192, 480])
def test_syslog_msg(tmp_path, journal, max_size):
    rec = SyslogReceiver("tcp").start()
    try:
        f = rules(tmp_path, f'type = "syslog"\nurl = "tcp://127.0.0.1:{rec.port}"\nmax_size = {max_size}')
        cp = fill(journal)
        with Monitor.open(f, journal.directory, tmp_path / "state", clock=Clock(), monitor_host="web1") as m:
            m.step()
        assert wait_for(lambda: len(rec.messages) == 1)
        line = rec.messages[0].decode()
        assert " CHECKPOINT [sockgate@32473 id=\"checkpoint/20270115T080000Z\" alert=\"checkpoint\" " \
               "kind=\"checkpoint\" severity=\"info\"" in line and len(line) <= max_size
        msg = line.split("] ", 1)[1]
        assert msg == format_checkpoint(cp)
    finally:
        rec.stop()
    journal.close()
    _verifies(journal.directory, msg, tmp_path)


def test_syslog_never_cuts_a_checkpoint():
    """A checkpoint cut to fit max_size would be useless: the SD params go instead, and if
    even that does not fit it is refused for good (dead, logged), not sent broken."""
    from sockgate.errors import PermanentChannelError
    from sockgate.monitor.channels.syslog import format_rfc5424
    from sockgate.monitor.checkpoint import checkpoint_alert
    from sockgate.monitor.model import CheckpointConfig

    cp = {"checkpoint": "sgcp1", "journal": "0" * 32, "epoch": 41, "seq": 410233, "hash": "a" * 64,
          "ts_ns": 1767225600 * S, "time": "2026-01-01T00:00:00.000000Z", "mac": "b" * 64}
    a = checkpoint_alert(CheckpointConfig(M, ("x",)), cp, NOW // M * M, NOW, "h").payload
    line = format_rfc5424(a, hostname="web1.example.org", procid=123456, max_size=480).decode()
    assert len(line) <= 480 and line.endswith("] " + format_checkpoint(cp)) and 'alert="' not in line
    with pytest.raises(PermanentChannelError, match="does not fit max_size = 480"):
        format_rfc5424(a, hostname="h" * 200, max_size=480)


def test_command_stdin_and_env(tmp_path, journal):
    out = tmp_path / "got"
    script = ("import json, os, sys; d = json.load(sys.stdin); "
              f"open({str(out)!r}, 'w').write(json.dumps([d, os.environ['SOCKGATE_MESSAGE'], "
              "os.environ['SOCKGATE_KIND']]))")
    f = rules(tmp_path, f'type = "command"\nargv = [{json.dumps(sys.executable)}, "-c", {json.dumps(script)}]')
    cp = fill(journal)
    with Monitor.open(f, journal.directory, tmp_path / "state", clock=Clock()) as m:
        m.step()
    d, env_msg, kind = json.loads(out.read_text())
    assert d["checkpoint"] == cp and d["message"] == env_msg == format_checkpoint(cp) and kind == "checkpoint"
    journal.close()
    _verifies(journal.directory, env_msg, tmp_path)
    _verifies(journal.directory, json.dumps(d["checkpoint"]), tmp_path)


@pytest.mark.parametrize("fmt", ["slack", "teams"])
def test_chat_formats_carry_it(tmp_path, journal, http_receiver, fmt):
    f = rules(tmp_path, webhook(http_receiver.url) + f'\nformat = "{fmt}"')
    cp = fill(journal)
    with Monitor.open(f, journal.directory, tmp_path / "state", clock=Clock()) as m:
        m.step()
    body = json.dumps(http_receiver.bodies)
    if fmt == "slack":
        assert json.dumps(format_checkpoint(cp))[1:-1] in body    # Slack's text: & < > only, none in it
    else:
        assert cp["hash"] in body and "ts\\\\_ns" in body          # markdown-escaped, shows as the JSON
