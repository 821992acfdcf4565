"""The daemon as a user runs it: a real `sockgate run` process in the test scope."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TEST_UID, backend, wait_loaded

from sockgate.journal import EntryType, Journal


def _sockgate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from sockgate.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=60)


POLICY = f"""
audit_levels = ["*NETFAIL"]
[[rule]]
name = "no-7001"
exit = "connect"
user = ["{TEST_UID}"]
remote_port = 7001
action = "reject"
"""


def test_kill9_keeps_enforcing_restart_picks_up_unload_leaves_nothing(scope, tmp_path):
    policy = scope.write_policy(POLICY)
    journal = tmp_path / "journal"
    d1 = scope.daemon(policy, journal=journal)
    wait_loaded(d1)
    assert scope.client("connect", addr="127.0.0.1", port=7001)["error"] == "EPERM"

    d1.send_signal(signal.SIGKILL)
    d1.wait(timeout=10)
    # nobody is running, the pinned programs still decide
    assert scope.client("connect", addr="127.0.0.1", port=7001)["error"] == "EPERM"
    assert scope.client("connect", addr="127.0.0.1", port=7002)["error"] == "ECONNREFUSED"

    d2 = scope.daemon(policy, journal=journal)
    log = wait_loaded(d2, generation=2)
    assert "reopened pinned programs" in log
    st = _sockgate("status", "--json", "--pin-dir", scope.pin_dir)
    import json
    s = json.loads(st.stdout)
    assert s["loaded"] and s["daemon_pid"] == d2.pid and s["policy"]["generation"] == 2
    assert s["rules"][0]["name"] == "no-7001"
    assert scope.client("connect", addr="127.0.0.1", port=7001)["error"] == "EPERM"
    time.sleep(0.5)
    s = json.loads(_sockgate("status", "--json", "--pin-dir", scope.pin_dir).stdout)
    assert s["rules"][0]["hits"] == 1  # counters restart with each generation

    r = _sockgate("unload", "--pin-dir", scope.pin_dir, "--journal", str(journal))
    assert r.returncode == 0, r.stderr
    d2.wait(timeout=15)
    assert not Path(scope.pin_dir).exists()
    shown = subprocess.run(["bpftool", "cgroup", "show", scope.cgroup], capture_output=True, text=True)
    assert shown.stdout.strip() == ""      # nothing attached to the scope any more
    assert scope.client("connect", addr="127.0.0.1", port=7001)["error"] == "ECONNREFUSED"

    with Journal.open(journal, readonly=True) as j:
        entries = list(j.entries())
    types = [e.type for e in entries]
    assert types.count(EntryType.DAEMON_START) == 2
    assert EntryType.INTERRUPTED in types     # the kill -9 is on record
    assert types[-1] is EntryType.DETACHED
    rejected = [e for e in entries if e.type is EntryType.CONNECT]
    # before the kill, while no daemon ran (kept in the pinned ring buffer), after the restart
    assert len(rejected) == 3, [(e.seq, e.ts_ns, e.extra.get("generation"), e.pid) for e in rejected]
    assert all(e.rule == "no-7001" and e.uid == TEST_UID and e.remote_port == 7001 for e in rejected)
    # the full path while the caller lives, else the file name the kernel recorded
    exe = os.path.basename(os.path.realpath(sys.executable))
    assert all(e.program and os.path.basename(e.program) == exe for e in rejected), [e.program for e in rejected]
    # the fact a program rule matched on, for replay: the kernel's dev_t and the inode. On
    # overlayfs (the LSM guest's root) the kernel sees the file underneath: another device
    # (the limit docs/policy.md states), so only the inode is compared there.
    from sockgate.policy.compile import kernel_dev
    exe_path = os.path.realpath(sys.executable)
    st = os.stat(exe_path)
    facts = {e.extra.get("exe") for e in rejected}
    fstype = subprocess.run(["stat", "-f", "-c", "%T", exe_path], capture_output=True, text=True).stdout.strip()
    if fstype == "overlayfs":
        assert len(facts) == 1 and next(iter(facts)).split(":")[1] == str(st.st_ino), facts
    else:
        assert facts == {f"{kernel_dev(st.st_dev)}:{st.st_ino}"}, facts


def test_sighup_reloads_and_a_bad_policy_keeps_the_old_one(scope):
    policy = scope.write_policy(POLICY)
    d = scope.daemon(policy)
    wait_loaded(d)
    assert scope.client("connect", addr="127.0.0.1", port=7001)["error"] == "EPERM"
    policy.write_text(POLICY.replace("7001", "7003"))
    d.send_signal(signal.SIGHUP)
    wait_loaded(d, generation=2)
    assert scope.client("connect", addr="127.0.0.1", port=7001)["error"] == "ECONNREFUSED"
    assert scope.client("connect", addr="127.0.0.1", port=7003)["error"] == "EPERM"

    policy.write_text("[[rule]]\nexit = 'connect'\naction = 'maybe'\n")
    d.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    err = ""
    while time.monotonic() < deadline and "reload refused" not in err:
        err += d.stderr.readline() or ""
        time.sleep(0.02)
    assert "reload refused" in err
    assert scope.client("connect", addr="127.0.0.1", port=7003)["error"] == "EPERM"
    d.send_signal(signal.SIGTERM)
    assert d.wait(timeout=15) == 0
    # a clean stop leaves enforcement in place
    assert scope.client("connect", addr="127.0.0.1", port=7003)["error"] == "EPERM"


def test_run_refuses_a_bad_policy_without_touching_the_kernel(scope):
    bad = scope.write_policy("mode = 'sometimes'\n")
    r = _sockgate("run", "--policy", str(bad), "--no-journal", "--scope-cgroup", scope.cgroup,
                  "--netns", scope.netns, "--pin-dir", scope.pin_dir)
    assert r.returncode == 1
    assert "policy.toml:1:" in r.stderr and "Traceback" not in r.stderr
    assert not Path(scope.pin_dir).exists()


def test_status_when_not_loaded(kernel_ok, tmp_path):
    r = _sockgate("status", "--pin-dir", "/sys/fs/bpf/sockgate-none-here")
    assert r.returncode == 3 and "not loaded" in r.stdout


def test_kill9_while_events_flow_keeps_every_committed_entry(scope, tmp_path):
    """Issue 3's crash test with the real daemon: every decision journaled (*NETCMN) while a
    connect loop runs; SIGKILL mid-stream; after a restart the journal verifies, holds
    every entry committed before the kill (by sequence number) and records the interruption."""
    policy = scope.write_policy('audit_levels = ["*NETCMN"]\n')
    journal = tmp_path / "journal"
    d1 = scope.daemon(policy, journal=journal)
    wait_loaded(d1)
    loop = scope.start("loop", uid=TEST_UID, addr="127.0.0.1", ports=[7201], seconds=6.0)
    deadline = time.monotonic() + 20
    committed = []
    while time.monotonic() < deadline:
        with Journal.open(journal, readonly=True) as j:
            committed = [(e.seq, e.ts_ns, e.remote_port) for e in j.entries() if e.type is EntryType.CONNECT]
        if len(committed) > 500:
            break
        time.sleep(0.2)
    assert len(committed) > 500, "events were flowing"
    d1.send_signal(signal.SIGKILL)
    d1.wait(timeout=10)
    loop.wait(timeout=30)

    d2 = scope.daemon(policy, journal=journal)
    wait_loaded(d2, generation=2)
    d2.send_signal(signal.SIGTERM)
    assert d2.wait(timeout=60) == 0
    r = _sockgate("journal", "verify", "--journal", str(journal), "--key", str(journal / "verification.key"))
    assert r.returncode == 0, r.stdout + r.stderr
    with Journal.open(journal, readonly=True) as j:
        after = {e.seq: (e.seq, e.ts_ns, e.remote_port) for e in j.entries() if e.type is EntryType.CONNECT}
        types = [e.type for e in j.entries()]
    missing = [row for row in committed if after.get(row[0]) != row]
    assert not missing, f"{len(missing)} committed entries changed or vanished, e.g. {missing[:3]}"
    assert EntryType.INTERRUPTED in types


def test_sigterm_while_starting_is_a_clean_stop(scope, tmp_path):
    """A stop asked for during startup (here: as soon as the journal is being opened) waits
    for the start to finish, then stops cleanly: exit 0, a stop record, a sealed journal."""
    journal = tmp_path / "journal"
    d = scope.daemon(scope.write_policy(POLICY), journal=journal)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "opening journal" not in d.stderr.readline():
        assert d.poll() is None, "daemon ended before opening its journal"
    d.send_signal(signal.SIGTERM)
    assert d.wait(timeout=60) == 0, d.stderr.read()
    with Journal.open(journal, readonly=True) as j:
        assert [e.type for e in j.entries()][-1] is EntryType.DAEMON_STOP
    r = _sockgate("journal", "verify", "--journal", str(journal), "--key", str(journal / "verification.key"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_one_daemon_per_pin_dir_and_unload_never_signals_a_recycled_pid(scope, tmp_path):
    """Liveness is the daemon's lock, not a pid number: a second daemon is refused while
    the first runs; after a kill -9 a pid written in the lock file (say it went to
    another process) is not signalled by `unload`."""
    from sockgate.daemon import lock_file
    policy = scope.write_policy(POLICY)
    d1 = scope.daemon(policy)
    wait_loaded(d1)
    second = _sockgate("run", "--policy", str(policy), "--no-journal", "--scope-cgroup", scope.cgroup,
                       "--netns", scope.netns, "--pin-dir", scope.pin_dir, "--backend", backend())
    assert second.returncode == 1 and f"pid {d1.pid}" in second.stderr and "Traceback" not in second.stderr
    d1.send_signal(signal.SIGKILL)
    d1.wait(timeout=10)
    bystander = subprocess.Popen(["sleep", "60"])
    scope.procs.append(bystander)
    lock_file(scope.pin_dir).write_text(str(bystander.pid))   # the pid number now names someone else
    r = _sockgate("unload", "--pin-dir", scope.pin_dir)
    assert r.returncode == 0, r.stderr
    assert bystander.poll() is None, "unload signalled a process that is not the daemon"
    assert not Path(scope.pin_dir).exists()
    assert not lock_file(scope.pin_dir).exists(), "unload left the killed daemon's lock file"
    d2 = scope.daemon(policy)   # a clean stop removes its lock file too
    wait_loaded(d2)
    d2.send_signal(signal.SIGTERM)
    assert d2.wait(timeout=30) == 0
    assert not lock_file(scope.pin_dir).exists(), "a stopped daemon left its lock file"


def test_someone_else_detaching_a_program_is_journaled(scope, tmp_path):
    policy = scope.write_policy(POLICY)
    journal = tmp_path / "journal"
    d = scope.daemon(policy, journal=journal)
    wait_loaded(d)
    link = Path(scope.pin_dir) / "links" / "sg_accept"
    r = subprocess.run(["bpftool", "link", "detach", "pinned", str(link)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 15
    detached = []
    while time.monotonic() < deadline and not detached:
        time.sleep(0.3)
        with Journal.open(journal, readonly=True) as j:
            detached = [e for e in j.entries() if e.type is EntryType.DETACHED]
    assert detached and "sg_accept" in detached[0].extra.get("programs", ""), detached
    assert d.poll() is None  # the rest still enforces and is still journaled
    assert scope.client("connect", addr="127.0.0.1", port=7001)["error"] == "EPERM"
    d.send_signal(signal.SIGTERM)
    assert d.wait(timeout=15) == 0


def test_a_pin_dir_made_first_by_another_user_is_taken_over_or_refused(scope, tmp_path):
    """bpffs is mounted 1777 on many hosts: an unprivileged user makes the pin directory
    (with a `links` subdirectory, so it looks loaded) before sockgate starts."""
    squat = subprocess.run(["mkdir", "-p", f"{scope.pin_dir}/links"], user=TEST_UID, group=TEST_UID,
                           capture_output=True, text=True)
    if squat.returncode != 0:  # bpffs mounted 0700 here: the attack itself is impossible
        assert "Permission denied" in squat.stderr
        os.makedirs(f"{scope.pin_dir}/links")
        os.chown(scope.pin_dir, TEST_UID, TEST_UID)
        os.chown(f"{scope.pin_dir}/links", TEST_UID, TEST_UID)
    st = _sockgate("status", "--pin-dir", scope.pin_dir)
    assert st.returncode == 3 and "not loaded" in st.stdout   # another user's directory is not a sockgate
    d = scope.daemon(scope.write_policy(POLICY))
    wait_loaded(d)
    pst = os.stat(scope.pin_dir)
    assert (pst.st_uid, pst.st_mode & 0o777) == (0, 0o700)
    assert scope.client("connect", addr="127.0.0.1", port=7001)["error"] == "EPERM"
    d.send_signal(signal.SIGTERM)
    assert d.wait(timeout=15) == 0
    assert _sockgate("unload", "--pin-dir", scope.pin_dir).returncode == 0

    # one that holds something sockgate did not put there is refused, with the reason
    os.makedirs(scope.pin_dir)
    os.symlink("/sys/fs/bpf", f"{scope.pin_dir}/maps")
    os.lchown(f"{scope.pin_dir}/maps", TEST_UID, TEST_UID)
    os.chown(scope.pin_dir, TEST_UID, TEST_UID)
    r = _sockgate("run", "--policy", str(scope.write_policy(POLICY)), "--no-journal", "--scope-cgroup",
                  scope.cgroup, "--netns", scope.netns, "--pin-dir", scope.pin_dir, "--backend", backend())
    assert r.returncode == 1 and "not sockgate's" in r.stderr and "Traceback" not in r.stderr
    u = _sockgate("unload", "--pin-dir", scope.pin_dir)   # must not delete through the planted symlink
    assert u.returncode == 1 and "nothing removed" in u.stderr and "Traceback" not in u.stderr
    assert os.path.islink(f"{scope.pin_dir}/maps")
    os.unlink(f"{scope.pin_dir}/maps")
    os.rmdir(scope.pin_dir)


def test_the_daemon_needs_no_cap_sys_admin(scope, tmp_path):
    """The shipped unit drops CAP_SYS_ADMIN: load, enforce, journal and reload without it
    (bpffs is mounted already, as systemd mounts it)."""
    policy = scope.write_policy(POLICY)
    journal = tmp_path / "journal"
    d = scope.daemon(policy, journal=journal, drop_caps="cap_sys_admin")
    wait_loaded(d)
    cap_eff = next(int(line.split()[1], 16) for line in Path(f"/proc/{d.pid}/status").read_text().splitlines()
                   if line.startswith("CapEff:"))
    assert not cap_eff & (1 << 21), "CAP_SYS_ADMIN is still effective"
    assert scope.client("connect", addr="127.0.0.1", port=7001)["error"] == "EPERM"
    d.send_signal(signal.SIGHUP)
    wait_loaded(d, generation=2)
    d.send_signal(signal.SIGTERM)
    assert d.wait(timeout=15) == 0
    with Journal.open(journal, readonly=True) as j:
        types = [e.type for e in j.entries()]
    assert EntryType.CONNECT in types and types.count(EntryType.POLICY_LOADED) == 2


def test_start_and_reload_refuse_a_policy_that_cuts_off_the_alert_channels(scope, tmp_path):
    """The lock-out guard in the daemon: a policy rejecting the syslog channel's connect is
    refused at start (nothing attached) and at reload (the old policy stays), unless forced."""
    alerts = tmp_path / "alerts.toml"
    alerts.write_text('[channel.siem]\ntype = "syslog"\nurl = "tcp://127.0.0.1:7514"\n\n'
                      '[[alert]]\nname = "never"\nchannels = ["siem"]\nmatch = { user = "no-such-user-here" }\n')
    cut = scope.write_policy('[[rule]]\nname = "no-7514"\nexit = "connect"\nremote_port = 7514\naction = "reject"\n',
                             "cut.toml")
    r = _sockgate("run", "--policy", str(cut), "--alerts", str(alerts), "--no-journal", "--scope-cgroup",
                  scope.cgroup, "--netns", scope.netns, "--pin-dir", scope.pin_dir, "--backend", backend())
    assert r.returncode == 1 and "alert channel siem (127.0.0.1:7514/tcp)" in r.stderr and "no-7514" in r.stderr
    assert "Traceback" not in r.stderr and not Path(scope.pin_dir).exists()

    policy = scope.write_policy(POLICY)
    d = scope.daemon(policy, "--alerts", str(alerts))
    wait_loaded(d)
    policy.write_text(cut.read_text())
    assert _sockgate("reload", "--pin-dir", scope.pin_dir).returncode == 0
    deadline, err = time.monotonic() + 20, ""
    while time.monotonic() < deadline and "no-7514" not in err:
        err += d.stderr.readline() or ""
        time.sleep(0.02)
    assert "reload refused" in err and "no-7514" in err
    assert scope.client("connect", addr="127.0.0.1", port=7001)["error"] == "EPERM"   # the old policy
    assert _sockgate("reload", "--force", "--pin-dir", scope.pin_dir).returncode == 0
    wait_loaded(d, generation=2)
    assert scope.client("connect", addr="127.0.0.1", port=7001)["error"] == "ECONNREFUSED"
    d.send_signal(signal.SIGTERM)
    assert d.wait(timeout=15) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int, timeout: float = 15) -> dict:
    """{(sample, sorted labels): value} of the daemon's metrics, parsed by prometheus_client's
    own parser (retried while the endpoint is not serving yet)."""
    import urllib.error
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                text = r.read().decode()
            break
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_count_rejections_name_the_policy_and_show_a_detach(scope, tmp_path):
    from sockgate.kernel.loader import BACKENDS

    policy = scope.write_policy("metrics_per_rule = true\n" + POLICY)
    port = _free_port()
    d = scope.daemon(policy, "--metrics", f"127.0.0.1:{port}", journal=tmp_path / "journal")
    wait_loaded(d)
    before = _scrape(port)
    for _ in range(3):
        assert scope.client("connect", addr="127.0.0.1", port=7001)["error"] == "EPERM"
    after = _scrape(port)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before[key]

    assert delta("sockgate_rule_decisions_total", outcome="rejected") == 3
    assert delta("sockgate_rule_decisions_total", outcome="allowed") == 0
    assert after[("sockgate_rule_hits_total", (("rule", "no-7001"),))] == 3   # metrics_per_rule = true
    assert delta("sockgate_events_selected_total") == 3                       # *NETFAIL: each rejection
    assert delta("sockgate_decisions_total") >= 3
    assert after[("sockgate_events_dropped_total", ())] == 0
    digest = hashlib.sha256(policy.read_bytes()).hexdigest()
    assert after[("sockgate_policy_info", (("digest", digest), ("mode", "enforce")))] == 1
    assert after[("sockgate_policy_generation", ())] == 1
    assert after[("sockgate_policy_default_info", (("exit", "connect"), ("outcome", "allowed")))] == 1
    (used,) = [dict(k[1])["backend"] for k in after if k[0] == "sockgate_backend_info"]
    attached = {dict(k[1])["program"]: v for k, v in after.items() if k[0] == "sockgate_program_attached"}
    assert attached == dict.fromkeys(BACKENDS[used], 1)
    assert after[("sockgate_journal_last_seq", ())] > 0 and ("sockgate_journal_queue_depth", ()) in after
    labels = {k for key in after for k, _ in key[1]}
    assert labels <= {"outcome", "exit", "rule", "digest", "mode", "backend", "program"}  # never an address or user

    link = Path(scope.pin_dir) / "links" / "sg_accept"
    r = subprocess.run(["bpftool", "link", "detach", "pinned", str(link)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    attached = {dict(k[1])["program"]: v for k, v in _scrape(port).items() if k[0] == "sockgate_program_attached"}
    assert attached == {**dict.fromkeys(BACKENDS[used], 1), "sg_accept": 0}
    d.send_signal(signal.SIGTERM)
    assert d.wait(timeout=15) == 0
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))   # the endpoint stops with the daemon


def test_metrics_on_a_non_loopback_address_are_refused_before_anything_loads(scope):
    r = _sockgate("run", "--policy", str(scope.write_policy(POLICY)), "--no-journal", "--scope-cgroup",
                  scope.cgroup, "--netns", scope.netns, "--pin-dir", scope.pin_dir, "--backend", backend(),
                  "--metrics", "0.0.0.0:9477")
    assert r.returncode == 2, r.stderr
    assert "0.0.0.0 is not a loopback address" in r.stderr and "Traceback" not in r.stderr
    assert not Path(scope.pin_dir).exists()
