"""`policy shadow` / `policy promote` before anything reaches a daemon: bad input gets a
clear error and nothing is left behind (the kernel side: tests/kernel/test_shadow.py)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from sockgate.cli import cli
from sockgate.daemon import control_path

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the request file lives in root's /run/sockgate")


def _run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def pin_dir():
    return f"/sys/fs/bpf/sockgate-clitest-{uuid.uuid4().hex[:8]}"


def test_a_candidate_and_off_are_exclusive(pin_dir):
    for args in ((), ("x.toml", "--off")):
        r = _run("policy", "shadow", *args, "--pin-dir", pin_dir)
        assert r.exit_code == 2 and "give a CANDIDATE policy file, or --off" in r.output


def test_a_bad_candidate_is_refused_with_its_place_before_any_request(tmp_path, pin_dir):
    bad = tmp_path / "bad.toml"
    bad.write_text('mode = "enforce"\n[[rule]]\nname = "x"\nexit = "conect"\naction = "reject"\n')
    r = _run("policy", "shadow", str(bad), "--pin-dir", pin_dir)
    assert r.exit_code == 1 and f"{bad}:4:" in r.output and "Traceback" not in r.output
    assert not control_path(pin_dir).exists()


def test_without_a_daemon_shadow_and_promote_say_so_and_leave_nothing(tmp_path, pin_dir):
    good = tmp_path / "good.toml"
    good.write_text('[[rule]]\nname = "x"\nexit = "connect"\nremote_port = 25\naction = "reject"\n')
    for args in (("policy", "shadow", str(good)), ("policy", "shadow", "--off"), ("policy", "promote")):
        r = _run(*args, "--pin-dir", pin_dir)
        assert r.exit_code == 1 and f"no sockgate daemon is running for {pin_dir}" in r.output, r.output
        assert not control_path(pin_dir).exists()
    r = _run("policy", "promote", "--pin-dir", pin_dir, "--json")
    assert r.exit_code == 1 and '"ok": false' in r.output


def test_an_unprivileged_user_is_refused_clearly(tmp_path, pin_dir):
    """The request file and the daemon's signal are root's: as another user, a clear error
    (not a traceback from creating /run/sockgate), and nothing is written."""
    from sockgate import safedir
    from sockgate.errors import KernelError

    import shutil
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="sg-shadow-cli-", dir="/tmp"))  # readable by that user
    shared.chmod(0o755)
    good = shared / "good.toml"
    good.write_text('[[rule]]\nname = "x"\nexit = "connect"\nremote_port = 25\naction = "reject"\n')
    good.chmod(0o644)
    os.seteuid(65534)
    try:
        for args in (("policy", "shadow", str(good)), ("policy", "promote"), ("policy", "shadow", "--off")):
            r = _run(*args, "--pin-dir", pin_dir)
            assert r.exit_code == 1 and "needs root" in r.output and "Traceback" not in r.output, r.output
        with pytest.raises(KernelError, match="cannot create run state directory"):
            safedir.private_dir(shared / "not-mine", error=KernelError, what="run state directory")
    finally:
        os.seteuid(0)
    try:
        assert not control_path(pin_dir).exists() and not (shared / "not-mine").exists()
    finally:
        shutil.rmtree(shared)
