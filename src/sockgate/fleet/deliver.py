"""Policy delivery, the host side: fetch the newest bundle of this host's group from the
collector (GET /v1/policy, over the enrolment's mutual TLS), run the one apply path
(sockgate.fleet.apply.apply_bundle: signature against this host's own trusted keys, group,
version, policy check, lock-out guard, replay gate, swap, reload), and report the result
(POST /v1/policy/report).

Once per bundle: `<fleet dir>/policy-delivery.json` remembers the bundle last handled (the
SHA-256 of its bytes, with this host's group at the time) and whether the collector
acknowledged the report. The same bundle is never applied twice and a refused one is not
retried: it is reported once (again only if the report was lost), and the collector is
asked with `?have=SHA256` so it does not send the bytes again. A new version (or the host's
group file changed) is a new delivery. Problems of the host rather than the bundle (no
trusted keys, no journal, another apply running) are not results: nothing is recorded and
the next round tries again.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

from sockgate import safedir
from sockgate.errors import BundleError, FleetError, FleetRefused, SockgateError
from sockgate.fleet.apply import GROUP_FILE, KEYS_DIR, RELOAD_TIMEOUT_S, apply_bundle, host_group, trusted_keys
from sockgate.fleet.push import bundle_sha256
from sockgate.fleet.ship import Client, read_fleet
from sockgate.record import POLICY_FILE, oneline

DELIVERY_FILE = "policy-delivery.json"
POLL_S = 30.0                   # how often the daemon asks the collector for a newer bundle


def read_delivery(fleet_dir: str | os.PathLike) -> dict[str, Any]:
    """{group, bundle_sha256, report, reported} of the bundle last handled, or {}."""
    try:
        d = json.loads((Path(fleet_dir) / DELIVERY_FILE).read_text())
        return d if isinstance(d, dict) else {}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, UnicodeDecodeError):
        return {}   # a cache: at worst the bundle is applied again, which apply refuses as not newer


class PolicyFetcher:
    """One host's policy delivery. `once()` is one round; `run(stop)` rounds every
    `interval` seconds (the daemon's thread, `fleet policy fetch`)."""

    def __init__(self, fleet_dir: str | os.PathLike, journal_dir: str | os.PathLike, *,
                 policy_path: str | os.PathLike = POLICY_FILE, pin_dir: str | None = None,
                 alerts_file: str | None = None, trust: Iterable[str | os.PathLike] = (),
                 reload_timeout: float = RELOAD_TIMEOUT_S, interval: float = POLL_S,
                 log: Callable[[str], None] | None = None):
        self.fleet = Path(fleet_dir)
        self.info = read_fleet(self.fleet)
        self.journal_dir, self.policy_path, self.pin_dir = journal_dir, policy_path, pin_dir
        self.alerts_file, self.trust, self.reload_timeout = alerts_file, list(trust), reload_timeout
        self.interval = interval
        self.log = log or (lambda m: None)
        self.client = Client(self.fleet, self.info["server"])
        self.last_error: str | None = None

    def close(self) -> None:
        self.client.close()

    def _save(self, d: dict[str, Any]) -> None:
        safedir.write_atomic(self.fleet / DELIVERY_FILE, json.dumps(d, indent=1, sort_keys=True) + "\n", 0o600)

    def once(self) -> dict[str, Any] | None:
        """Fetch, apply if new, report. Returns the report sent (or re-sent), None when
        there was nothing new. FleetError: the collector unreachable (try again later);
        BundleError/SockgateError: a problem of this host (nothing recorded)."""
        group = host_group(self.fleet)
        if not group:
            raise BundleError(f"{self.fleet / GROUP_FILE} is missing: this host's policy group is not known "
                              "(fleet enroll --group, or write the group's name there)")
        done = read_delivery(self.fleet)
        mine = done.get("group") == group
        have = done.get("bundle_sha256") if mine and done.get("reported") else None
        ans = self.client.call("GET", "/v1/policy" + (f"?have={have}" if isinstance(have, str) else ""))
        b64 = ans.get("bundle") if isinstance(ans, dict) else None
        if b64 is None:
            return None    # no bundle for this host's group, or the one handled already
        try:
            raw = base64.b64decode(b64, validate=True) if isinstance(b64, str) else None
        except (binascii.Error, ValueError):
            raw = None
        if raw is None:
            raise FleetError("the collector's policy answer is malformed (bundle is not base64)")
        sha = bundle_sha256(raw)
        if mine and done.get("bundle_sha256") == sha and isinstance(done.get("report"), dict):
            if done.get("reported"):
                return None
            report = done["report"]          # handled, but the report was lost: send it again
        else:
            result = apply_bundle(raw, trust=trusted_keys(self.fleet, self.trust), group=group,
                                  fleet_dir=self.fleet, journal_dir=self.journal_dir, policy_path=self.policy_path,
                                  pin_dir=self.pin_dir, alerts_file=self.alerts_file,
                                  reload_timeout=self.reload_timeout, source="collector")
            report = {**result.to_dict(), "bundle_sha256": sha}
            self._save({"group": group, "bundle_sha256": sha, "report": report, "reported": False})
            self.log(f"fleet: policy from the collector: {result.text().splitlines()[0]}"
                     + (f" ({result.reason})" if result.reason else ""))
        self.client.call("POST", "/v1/policy/report", report)
        self._save({"group": group, "bundle_sha256": sha, "report": report, "reported": True})
        return report

    def run(self, stop: threading.Event) -> None:
        """Rounds until stop is set; each problem is logged once until it changes."""
        while not stop.is_set():
            try:
                self.once()
                self.last_error = None
            except (FleetRefused, FleetError, SockgateError) as e:
                if str(e) != self.last_error:
                    self.log(f"fleet: policy delivery: {e}")
                self.last_error = str(e)
            stop.wait(self.interval)
        self.close()


def start_fetcher(fleet_dir: str | os.PathLike, journal_dir: str | os.PathLike, stop: threading.Event,
                  log: Callable[[str], None], **kw: Any) -> threading.Thread | None:
    """The daemon's policy-delivery thread (sockgate run --fleet-dir), or None (and a log
    line) when this host trusts no administrator key: then it takes no bundles."""
    try:
        trusted_keys(fleet_dir)
    except SockgateError as e:
        log(f"fleet: policy delivery off: {e}")
        return None
    fetcher = PolicyFetcher(fleet_dir, journal_dir, log=log, **kw)
    t = threading.Thread(target=fetcher.run, args=(stop,), name="fleet-policy", daemon=True)
    t.start()
    group = host_group(fleet_dir)
    log(f"fleet: asking {fetcher.info['server']} for policy bundles every {fetcher.interval:g} s (group "
        + (oneline(group) if group else f"unknown: no {Path(fleet_dir) / GROUP_FILE}")
        + f", trusted keys in {Path(fleet_dir) / KEYS_DIR})")
    return t
