"""`sockgate monitor` on the command line: --check, --test, --once; exit codes 0/1/2 and
no traceback for user mistakes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sockgate.journal import Journal

from .conftest import entry

ROOT = Path(__file__).resolve().parents[2]


def sockgate(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from sockgate.cli import main; main(sys.argv[1:])",
                           *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))


def no_traceback(p: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, p.stderr


def test_check_ok_and_errors(tmp_path):
    p = sockgate("monitor", "--check", str(ROOT / "examples" / "alerts.toml"))
    assert p.returncode == 0 and "ok (7 alert rules" in p.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[monitor]\nchannels = ["x"]\n[[alert]]\nname = "a"\nmatch = { remote = "300.1.1.1" }\n'
                   'severity = "meh"\n')
    p = sockgate("monitor", "--check", str(bad))
    no_traceback(p)
    lines = p.stderr.splitlines()
    assert p.returncode == 1
    assert f"{bad}:2: [monitor]: unknown channel 'x' (define [channel.x])" in lines
    assert any(line.startswith(f"{bad}:5: ") and "bad address or CIDR" in line for line in lines)
    assert any(line.startswith(f"{bad}:6: ") and "severity" in line for line in lines)
    assert lines[-1] == f"{bad}: 4 errors"
    p = sockgate("monitor", "--check", str(tmp_path / "nope.toml"))
    assert p.returncode == 1 and "cannot read: No such file" in p.stderr
    no_traceback(p)


@pytest.mark.parametrize("args", [["--check", "a", "--test", "b"], ["--since", "1h"], ["--json"],
                                  ["--test", "x", "--since", "yesterday-ish"], ["--bogus"]])
def test_usage_errors_exit_2(args, tmp_path):
    (tmp_path / "x").write_text(Path(ROOT / "examples" / "alerts.toml").read_text())
    jdir = tmp_path / "j"
    Journal.open(jdir).close()
    p = sockgate("monitor", "--journal", str(jdir), *args, cwd=tmp_path)
    no_traceback(p)
    assert p.returncode == 2, p.stderr


def test_test_replays_without_sending_or_state(tmp_path):
    jdir = tmp_path / "j"
    now = 0
    import time
    now = time.time_ns()
    with Journal.open(jdir) as j:
        old = [entry("A", "rejected", remote_addr="192.0.2.9", local_port=22) for _ in range(30)]
        for i, e in enumerate(old):
            e.ts_ns = now - 7200 * 10**9 + i * 10**9          # 2h ago: outside --since 1h
        new = [entry("A", "rejected", remote_addr="192.0.2.7", local_port=22) for _ in range(25)]
        for i, e in enumerate(new):
            e.ts_ns = now - 600 * 10**9 + i * 10**9           # 10 minutes ago, 1/s
        j.append(old + new)
    rules = ROOT / "examples" / "alerts.toml"
    p = sockgate("monitor", "--test", str(rules), "--journal", str(jdir), "--since", "1h", "--json")
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    alerts = [json.loads(line) for line in p.stdout.splitlines()]
    assert [a["alert"] for a in alerts] == ["accept-flood", "accept-flood"]   # alert + its repeat count
    assert alerts[0]["group"] == {"remote_addr": "192.0.2.7"} and alerts[0]["count"] == 20
    assert alerts[1]["repeat"] and alerts[1]["count"] == 5
    assert "2 alerts would fire since" in p.stderr and "55 entries read" in p.stderr
    p = sockgate("monitor", "--test", str(rules), "--journal", str(jdir))
    assert p.returncode == 0 and p.stdout.count("accept-flood") == 4   # both addresses, whole journal
    assert not (tmp_path / "state").exists()


def test_once_with_command_channel(tmp_path):
    jdir = tmp_path / "j"
    with Journal.open(jdir) as j:
        j.append([entry("C", "rejected", user="svc-x", remote_addr="10.0.0.1", remote_port=25)])
    out = tmp_path / "out.jsonl"
    rules = tmp_path / "alerts.toml"
    rules.write_text(f"""
[monitor]
start = "beginning"
[channel.cmd]
type = "command"
argv = ["sh", "-c", "cat >> {out}"]
[[alert]]
name = "svc"
channels = ["cmd"]
match = {{ type = "C", user = "svc-*" }}
message = "{{user}} -> {{remote}}"
""")
    args = ["monitor", "--rules", str(rules), "--journal", str(jdir), "--state", str(tmp_path / "st"), "--once"]
    p = sockgate(*args)
    assert p.returncode == 0, p.stderr
    assert "1 alert raised, 1 delivered" in p.stderr
    [a] = [json.loads(line) for line in out.read_text().splitlines()]
    assert a["message"] == "svc-x -> 10.0.0.1:25" and a["id"] == "svc/1"
    p = sockgate(*args)
    assert "0 alerts raised" in p.stderr and len(out.read_text().splitlines()) == 1


def test_check_json(tmp_path):
    p = sockgate("monitor", "--check", str(ROOT / "examples" / "alerts.toml"), "--json")
    d = json.loads(p.stdout)
    assert p.returncode == 0 and d["ok"] is True and d["errors"] == [] and d["rules"] == 7
    bad = tmp_path / "bad.toml"
    bad.write_text('[[alert]]\nname = "a"\nchannels = ["x"]\nmatch = { remote = "300.1.1.1" }\n')
    p = sockgate("monitor", "--check", str(bad), "--json")
    no_traceback(p)
    d = json.loads(p.stdout)
    assert p.returncode == 1 and d["ok"] is False and p.stderr == ""
    assert [(e["file"], e["line"]) for e in d["errors"]] == [(str(bad), 3), (str(bad), 4)]
    assert "bad address or CIDR" in d["errors"][1]["message"]
