"""Policy delivery, the central side: bundles pushed into PostgreSQL, host groups, the
hosts' reports (tables in store.POLICY_DDL).

    administrator: fleet policy push ──(owner)──▶ policy_bundle (the signed bytes, as signed)
    collector:     GET /v1/policy ──(ingest role)──▶ the newest bundle of the caller's group
                   POST /v1/policy/report ──▶ policy_report, host.policy_version

The collector never signs and never needs the administrator's key: it hands out the exact
bytes signed offline, and each host verifies them against its own trusted keys
(sockgate.fleet.apply). A push is checked here too (signature against the keys the
administrator names, a version newer than what is stored for the group), so a mistake is
caught at the desk rather than on every host.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from typing import Any, Iterable

from sockgate.errors import FleetError, FleetRefused, UsageError
from sockgate.fleet.bundle import MAX_VERSION, Bundle, PublicKey, check_group, verify
from sockgate.record import format_time, oneline

RESULTS = ("applied", "installed", "refused")
MAX_REPORT = 256 << 10          # bytes of a report's JSON (a refusal carries at most 5 break groups)
MAX_MESSAGE = 4000
_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)


def _text(v: str | None) -> str | None:
    """A host's text as a PostgreSQL text can hold it (no NUL, no lone surrogate)."""
    return None if v is None else v.replace("\x00", "\ufffd").encode("utf-8", "replace").decode()


def bundle_sha256(raw: bytes) -> str:
    """A bundle file's identity for delivery: the SHA-256 of its exact bytes."""
    return hashlib.sha256(raw).hexdigest()


# -- the administrator's side (the schema owner's connection) --------------------------------

def newest_version(conn: Any, group: str) -> int | None:
    row = conn.execute("SELECT max(version) FROM policy_bundle WHERE grp = %s", (group,)).fetchone()
    conn.commit()
    return row[0]


def push(conn: Any, raw: bytes, trust: Iterable[PublicKey], source: str = "<bundle>",
         now_ns: int | None = None) -> dict[str, Any]:
    """Verify a signed bundle against `trust` and store it for its group. FleetRefused when
    the group already holds this version with other bytes, or a newer one (hosts would
    refuse it: rollback protection). Pushing the very same bundle again stores nothing."""
    return store_bundle(conn, raw, verify(raw, trust, source, policy=False), now_ns)


def store_bundle(conn: Any, raw: bytes, b: Bundle, now_ns: int | None = None) -> dict[str, Any]:
    """Store `raw` as bundle `b` (push's second half: `b` must be what verify made of `raw`)."""
    sha = bundle_sha256(raw)
    now = time.time_ns() if now_ns is None else now_ns
    out = {"group": b.group, "version": b.version, "digest": b.digest, "key_id": b.key_id,
           "max_breaks": b.max_breaks, "sha256": sha, "stored": True}
    with conn.transaction():
        conn.execute("LOCK TABLE policy_bundle IN SHARE ROW EXCLUSIVE MODE")   # two pushes at once
        same = conn.execute("SELECT sha256, digest FROM policy_bundle WHERE grp = %s AND version = %s",
                            (b.group, b.version)).fetchone()
        newest = conn.execute("SELECT max(version) FROM policy_bundle WHERE grp = %s", (b.group,)).fetchone()[0]
        if same is not None and same[0] == sha:
            out["stored"] = False
        elif newest is not None and newest > b.version:
            raise FleetRefused(f"group {b.group} already holds version {newest}: hosts refuse an older "
                               f"version (rollback protection); sign it as version {newest + 1}")
        elif same is not None:
            raise FleetRefused(f"group {b.group} already holds version {b.version} (policy sha256 {same[1]}): "
                               "sign the change as a new version")
        else:
            conn.execute("INSERT INTO policy_bundle (grp, version, digest, key_id, max_breaks, replay_window_ns, "
                         "created_ns, pushed_ns, sha256, raw) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                         (b.group, b.version, b.digest, b.key_id, b.max_breaks, b.replay_window_ns, b.created_ns,
                          now, sha, raw))
        out["hosts"] = [r[0] for r in conn.execute(
            "SELECT h.name FROM host_group g JOIN host h ON h.id = g.host_id WHERE g.grp = %s ORDER BY h.name",
            (b.group,)).fetchall()]
    return out


def set_group(conn: Any, host: str, group: str, now_ns: int | None = None) -> str | None:
    """Put an enrolled host in a group (the administrator's word; the host's own
    FLEET_DIR/group must say the same, or it refuses the group's bundles). Returns the
    previous group."""
    try:
        check_group(group)
    except ValueError as e:
        raise UsageError(f"GROUP: {e}") from None
    with conn.transaction():
        row = conn.execute("SELECT h.id, g.grp FROM host h LEFT JOIN host_group g ON g.host_id = h.id "
                           "WHERE h.name = %s FOR UPDATE OF h", (host,)).fetchone()
        if row is None:
            raise FleetError(f"no enrolled host named {oneline(host)}")
        conn.execute("INSERT INTO host_group (host_id, grp, set_ns, set_by) VALUES (%s, %s, %s, 'admin') "
                     "ON CONFLICT (host_id) DO UPDATE SET grp = excluded.grp, set_ns = excluded.set_ns, "
                     "set_by = excluded.set_by", (row[0], group, time.time_ns() if now_ns is None else now_ns))
    return row[1]


def bundles(conn: Any) -> list[dict[str, Any]]:
    """Every stored bundle (metadata, newest first per group)."""
    cur = conn.execute("SELECT grp, version, digest, key_id, max_breaks, replay_window_ns, created_ns, pushed_ns, "
                       "sha256 FROM policy_bundle ORDER BY grp, version DESC")
    names = [c.name for c in cur.description]
    out = [dict(zip(names, r)) for r in cur.fetchall()]
    conn.commit()
    for d in out:
        d["group"] = d.pop("grp")
    return out


def policy_status(conn: Any) -> dict[str, dict[str, Any]]:
    """Per host name: its group, the policy it runs by its own reports (version and digest
    applied or installed; after a refusal, what it kept), and its last report."""
    import psycopg

    try:
        cur = conn.execute(
            "SELECT h.name, g.grp, h.policy_version, r.result, r.reason, r.message, r.grp, r.version, r.digest, "
            "r.reported_ns, r.detail FROM host h LEFT JOIN host_group g ON g.host_id = h.id "
            "LEFT JOIN LATERAL (SELECT * FROM policy_report p WHERE p.host_id = h.id ORDER BY p.id DESC LIMIT 1) r "
            "ON true")
    except psycopg.errors.UndefinedTable:   # a schema from before policy delivery (the collector adds it)
        conn.rollback()
        return {}
    out = {}
    for name, grp, pver, result, reason, message, rgrp, version, digest, at, detail in cur.fetchall():
        last = None
        runs = {"version": int(pver) if pver and pver.isdigit() else None, "digest": None}
        if result is not None:
            last = {"result": result, "reason": reason, "message": message, "group": rgrp, "version": version,
                    "digest": digest, "reported_ns": at}
            if result != "refused":
                runs = {"version": version, "digest": digest}
            else:
                try:
                    prev = json.loads(detail).get("previous") or {}
                    runs = {"version": prev.get("version"), "digest": prev.get("digest")}
                except (ValueError, AttributeError):
                    pass
        out[name] = {"group": grp, "policy_applied": runs, "last_push": last}
    conn.commit()
    return out


# -- the collector's side (the ingest role) --------------------------------------------------

def newest_for(conn: Any, host_id: int, have: str | None = None) -> dict[str, Any]:
    """The answer to GET /v1/policy: the caller's group and the newest bundle stored for
    it (base64 of the exact bytes), or no bundle; the bytes are left out when `have` is
    their sha256 (the host handled that one already)."""
    row = conn.execute("SELECT grp FROM host_group WHERE host_id = %s", (host_id,)).fetchone()
    ans: dict[str, Any] = {"group": None if row is None else row[0], "version": None, "sha256": None,
                           "bundle": None}
    if row is not None:
        b = conn.execute("SELECT version, sha256, raw FROM policy_bundle WHERE grp = %s ORDER BY version DESC "
                         "LIMIT 1", (row[0],)).fetchone()
        if b is not None:
            ans.update(version=b[0], sha256=b[1])
            if b[1] != have:
                ans["bundle"] = base64.b64encode(bytes(b[2])).decode()
    conn.commit()
    return ans


def check_report(body: Any) -> dict[str, Any]:
    """A host's report (its ApplyResult record plus bundle_sha256), checked field by field;
    ValueError says what is wrong. Every text is the host's word: stored, escaped when shown."""
    if not isinstance(body, dict):
        raise ValueError("a report is a JSON object")
    if len(json.dumps(body, ensure_ascii=True)) > MAX_REPORT:
        raise ValueError(f"a report is at most {MAX_REPORT} bytes")
    from sockgate.fleet.apply import REASONS

    result, reason = body.get("result"), body.get("reason")
    if result not in RESULTS:
        raise ValueError(f"result must be one of {', '.join(RESULTS)}")
    if not (reason is None and result != "refused" or result == "refused" and reason in REASONS):
        raise ValueError("reason must be a refusal's reason code (and only for a refusal)")
    version, group, digest = body.get("version"), body.get("group"), body.get("digest")
    if version is not None and (type(version) is not int or not 1 <= version <= MAX_VERSION):
        raise ValueError("version must be an integer 1 .. 2^63-1")
    if group is not None and (not isinstance(group, str) or len(group) > 64):
        raise ValueError("group must be a text of at most 64 characters")
    for k in ("digest", "bundle_sha256"):
        v = body.get(k)
        if v is not None and (not isinstance(v, str) or not _HEX64.fullmatch(v)):
            raise ValueError(f"{k} must be 64 lowercase hex digits")
    if result != "refused" and (version is None or digest is None):
        raise ValueError("an applied or installed report names its version and digest")
    message = body.get("message", "")
    if not isinstance(message, str):
        raise ValueError("message must be a text")
    prev = body.get("previous")
    if prev is not None and (not isinstance(prev, dict) or type(prev.get("version")) is not int):
        raise ValueError("previous must be {version, digest}")
    return {"result": result, "reason": reason, "group": _text(group), "version": version, "digest": digest,
            "message": _text(message[:MAX_MESSAGE]), "bundle_sha256": body.get("bundle_sha256"),
            "runs": version if result != "refused" else (prev or {}).get("version"),
            "detail": json.dumps(body, ensure_ascii=True, sort_keys=True)}


def record_report(conn: Any, host_id: int, body: Any, now_ns: int | None = None) -> dict[str, Any]:
    """Store a checked report (ValueError if it does not check) and the version the host
    now runs; returns what was stored."""
    r = check_report(body)
    now = time.time_ns() if now_ns is None else now_ns
    with conn.transaction():
        conn.execute("INSERT INTO policy_report (host_id, bundle_sha256, grp, version, digest, result, reason, "
                     "message, detail, reported_ns) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                     (host_id, r["bundle_sha256"], r["group"], r["version"], r["digest"], r["result"], r["reason"],
                      r["message"], r["detail"], now))
        if r["runs"] is not None:
            conn.execute("UPDATE host SET policy_version = %s WHERE id = %s", (str(r["runs"]), host_id))
    return {"stored": True, "result": r["result"], "version": r["version"], "at": format_time(now)}
