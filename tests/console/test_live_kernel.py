"""The console's Live view against the real daemon (issue 16): a connect the kernel refuses
appears in the browser within a second, with its rule, and the Rules view shows the
kernel's hit counter read from the daemon's metrics endpoint. A kernel test (it loads BPF
in the kernel tests' own cgroup and network namespace), host only: the browser does not
run in the LSM guest, and the console does not depend on the backend."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernelscope import kconf, kernel_ok, leaves_nothing_behind, scope  # noqa: E402,F401  (fixtures)

from consolekit import Console, free_port  # noqa: E402
from test_browser import ARGS, CHROMIUM, shot, sync_api  # noqa: E402

pytestmark = pytest.mark.kernel
PORT = 7371


def test_a_kernel_rejection_shows_in_live_within_a_second(scope, tmp_path):
    journal = tmp_path / "journal"
    policy = scope.write_policy(f"""
audit_levels = ["*NETFAIL"]
metrics_per_rule = true
[[rule]]
name = "no-{PORT}"
exit = "connect"
remote_port = {PORT}
action = "reject"
""")
    metrics = f"127.0.0.1:{free_port()}"
    d = scope.daemon(policy, "--metrics", metrics, journal=journal)
    kconf.wait_loaded(d)
    port = free_port()
    c = Console("--journal", journal, "--policy", policy, "--metrics", f"http://{metrics}/metrics",
                "--listen", f"127.0.0.1:{port}", url=f"http://127.0.0.1:{port}")
    try:
        with sync_api.sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
            ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=ARGS, headless=True)
            try:
                page = ctx.new_page()
                page.goto(f"{c.url}/live")
                sync_api.expect(page.locator("#status")).to_have_text("live", timeout=10000)
                assert scope.client("connect", addr="127.0.0.1", port=PORT)["error"] == "EPERM"
                t0 = time.monotonic()
                row = page.locator("#entries tbody tr", has_text=f"no-{PORT}").first
                row.wait_for(timeout=1000)
                took = time.monotonic() - t0
                assert took < 1.0, took
                assert "rejected" in row.inner_text() and f"127.0.0.1:{PORT}" in row.inner_text()
                shot(page, "live-kernel")
                page.goto(f"{c.url}/rules")
                rules = page.locator("body").inner_text()
                assert f"no-{PORT}" in rules and "metrics" in rules.lower(), rules[:2000]
                shot(page, "rules-kernel")
            finally:
                ctx.close()
    finally:
        err = c.stop()
        assert "Traceback" not in err, err
