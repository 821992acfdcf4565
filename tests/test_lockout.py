"""The lock-out guard (sockgate.lockout): a policy that would reject the administrator's
own session or an alert channel's connection is refused, naming the rule, unless forced.
Real sockets on loopback: a listener and an established client connection stand in for
sshd and the administrator's SSH session; a real alerts file names the channels."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sockgate import lockout
from sockgate.errors import LockoutError
from sockgate.policy.parse import parse_policy


@pytest.fixture
def session():
    """A listening socket and an established connection to it: (server port, client port)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    cli = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    try:
        yield srv.getsockname()[1], cli.getsockname()[1]
    finally:
        for s in (conn, cli, srv):
            s.close()


def _sockgate(*args, env=None):
    return subprocess.run([sys.executable, "-c", "from sockgate.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def _policy(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "policy.toml"
    p.write_text(text)
    return p


def test_the_ssh_session_in_the_environment_is_guarded(session, tmp_path):
    sport, cport = session
    env = {"SSH_CONNECTION": f"127.0.0.1 {cport} 127.0.0.1 {sport}"}
    text = f'[[rule]]\nname = "no-admin"\nexit = "accept"\nlocal_port = {sport}\naction = "reject"\n'
    found, _ = lockout.check(parse_policy(text, "p.toml"), None, env=env)
    assert len(found) == 1 and "this SSH session" in found[0] and "'no-admin' (p.toml:1)" in found[0]
    # the same decision a user gets from the CLI, with --force as the way past it
    p = _policy(tmp_path, text)
    r = _sockgate("policy", "check", str(p), env=env)
    assert r.returncode == 1 and "no-admin" in r.stderr and "Traceback" not in r.stderr
    assert _sockgate("policy", "check", "--force", str(p), env=env).returncode == 0
    j = _sockgate("policy", "check", "--json", str(p), env=env)
    assert j.returncode == 1 and "no-admin" in json.loads(j.stdout)["lockouts"][0]
    # a policy that leaves the session alone passes
    ok = _policy(tmp_path, f'[[rule]]\nexit = "accept"\nlocal_port = {sport + 1 if sport < 65535 else 1}\naction = "reject"\n')
    assert _sockgate("policy", "check", str(ok), env=env).returncode == 0


def test_a_default_reject_names_the_default(session):
    sport, cport = session
    env = {"SSH_CONNECTION": f"127.0.0.1 {cport} 127.0.0.1 {sport}"}
    found, _ = lockout.check(parse_policy('[defaults]\naccept = "reject"\n', "p.toml"), None, env=env)
    assert found and "the accept default" in found[0]


def test_established_sessions_to_a_login_server_are_guarded(session, monkeypatch):
    """Without $SSH_CONNECTION (the daemon's reload): every established connection to a
    listener whose program is a remote-login server. Here that server is this Python."""
    sport, cport = session
    exe = os.path.basename(os.readlink("/proc/self/exe"))
    text = f'[[rule]]\nname = "no-logins"\nexit = "accept"\nlocal_port = {sport}\naction = "reject"\n'
    policy = parse_policy(text, "p.toml")
    assert lockout.check(policy, None, env={})[0] == []          # python is no login server
    monkeypatch.setattr(lockout, "SESSION_SERVERS", (exe,))
    found = lockout.lockouts(policy, lockout.sessions(env={}, servers=(exe,)))
    assert len(found) == 1 and f"127.0.0.1:{cport} -> 127.0.0.1:{sport}" in found[0]


def test_alert_channels_are_guarded(tmp_path):
    alerts = tmp_path / "alerts.toml"
    alerts.write_text("""
[channel.ops-mail]
type = "email"
host = "127.0.0.1"
port = 2525
tls = "none"
from = "sockgate@example.org"
to = ["ops@example.org"]

[channel.siem]
type = "syslog"
url = "udp://127.0.0.1:5514"

[channel.hook]
type = "webhook"
url = "http://127.0.0.1:8080/alerts"

[[alert]]
name = "all"
channels = ["ops-mail", "siem", "hook"]
""")
    policy = parse_policy('[[rule]]\nname = "no-out"\nexit = "connect"\nremote_port = [2525, 5514]\naction = "reject"\n',
                          "p.toml")
    found, notes = lockout.check(policy, str(alerts), env={})
    assert notes == []
    assert len(found) == 2
    assert any("alert channel ops-mail (127.0.0.1:2525/tcp)" in f for f in found)
    assert any("alert channel siem (127.0.0.1:5514/udp)" in f for f in found)
    with pytest.raises(LockoutError, match="no-out"):
        lockout.guard(policy, str(alerts))
