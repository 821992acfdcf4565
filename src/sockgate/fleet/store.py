"""The central store on PostgreSQL 15: every host's entries, chain hashes and seals.

Tables (schema `sockgate`):
- host: one row per enrolled host (name, certificate fingerprint, local journal id, what
  the collector holds of its chain: shipped_seq, head_hash, next_epoch; last seen, policy
  digest, a flag when the host was caught rewriting what it shipped, the last verify);
- entry: the journal rows as the host stored (and hashed) them, partitioned by day on
  ts_ns (declarative range partitions, created on demand by the collector), plus `inet`
  columns for the addresses with a GiST (inet_ops) index, so `--remote 10.1.2.0/24` is an
  index scan of the days asked for;
- seal: each host's seals (epoch, seq, chain hash, time, MAC), never dropped;
- token: one-time enrolment tokens, stored as sha256 of the secret, expiring;
- cut: retention cuts declared per host (entries up to through_seq were dropped);
- host_group, policy_bundle, policy_report: policy delivery (POLICY_DDL below).

Roles: the schema owner (whoever `--db` connects as: creates the schema, partitions,
tokens, drops partitions) and `sockgate_ingest`, which the collector takes (SET ROLE) for
everything it does on behalf of a host: INSERT and SELECT on entry/seal, UPDATE only of the
host's progress columns and of a token's use. No UPDATE or DELETE of entries or seals.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import threading
import time
from typing import Any

from sockgate.errors import FleetError
from sockgate.record import ipv4_packed

try:
    import psycopg
except ImportError:  # pragma: no cover - a dependency in pyproject.toml
    psycopg = None  # type: ignore[assignment]

SCHEMA = "sockgate"
INGEST_ROLE = "sockgate_ingest"
DAY_NS = 86_400 * 10**9

# Entry columns: the journal's hashed FIELDS (same names, same order), the derived inet
# columns, the chain hash and when the collector received it.
DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
SET search_path = {SCHEMA};
CREATE TABLE IF NOT EXISTS host (
    id serial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    cert_fp text NOT NULL UNIQUE,          -- sha256 of the client certificate (DER), hex
    journal_id text NOT NULL,
    enrolled_ns bigint NOT NULL,
    last_seen_ns bigint,
    first_seq bigint,                      -- first seq the collector holds (NULL: nothing yet)
    base_hash bytea,                       -- the chain hash just before first_seq
    shipped_seq bigint NOT NULL DEFAULT 0, -- last seq held, always at a seal
    head_hash bytea NOT NULL DEFAULT '\\x0000000000000000000000000000000000000000000000000000000000000000',
    next_epoch bigint,                     -- epoch the next seal must carry (NULL: any, first segment)
    policy_digest text,
    policy_version text,
    flag text,                             -- why the host is refused (rewrote shipped history)
    last_verify_ns bigint,
    last_verify text
);
-- revocation (the schema owner's `fleet revoke`; the ingest role has no UPDATE on these)
ALTER TABLE host ADD COLUMN IF NOT EXISTS revoked_ns bigint;
ALTER TABLE host ADD COLUMN IF NOT EXISTS revoked_why text;
CREATE TABLE IF NOT EXISTS entry (
    host_id int NOT NULL,
    seq bigint NOT NULL, ts_ns bigint NOT NULL,
    code text NOT NULL, type text NOT NULL, source text NOT NULL, host text NOT NULL,
    outcome text, rule text, uid bigint, "user" text, gid bigint, pid bigint,
    program text, family text,
    local_addr text, local_port int, remote_addr text, remote_port int,
    extra text NOT NULL, ident text,
    local_inet inet, remote_inet inet,
    raw text,                              -- the row's canonical JSON, only when a text value
                                           -- cannot be a PostgreSQL text (NUL, bad UTF-8)
    hash bytea NOT NULL,
    received_ns bigint NOT NULL
) PARTITION BY RANGE (ts_ns);
CREATE INDEX IF NOT EXISTS entry_host_seq ON entry (host_id, seq);
CREATE INDEX IF NOT EXISTS entry_ts ON entry (ts_ns);
CREATE INDEX IF NOT EXISTS entry_remote ON entry USING gist (remote_inet inet_ops);
CREATE INDEX IF NOT EXISTS entry_outcome_ts ON entry (outcome, ts_ns);
CREATE TABLE IF NOT EXISTS seal (
    host_id int NOT NULL REFERENCES host(id),
    epoch bigint NOT NULL, seq bigint NOT NULL, hash bytea NOT NULL, ts_ns bigint NOT NULL, mac bytea NOT NULL,
    PRIMARY KEY (host_id, epoch)
);
CREATE TABLE IF NOT EXISTS token (
    hash bytea PRIMARY KEY,                -- sha256 of the secret
    created_ns bigint NOT NULL, expires_ns bigint NOT NULL,
    used_ns bigint, used_by text
);
CREATE TABLE IF NOT EXISTS cut (
    host_id int NOT NULL REFERENCES host(id),
    through_seq bigint NOT NULL, hash bytea NOT NULL, declared_ns bigint NOT NULL, reason text NOT NULL,
    PRIMARY KEY (host_id, through_seq)
);
"""

GRANTS = f"""
GRANT USAGE ON SCHEMA {SCHEMA} TO {INGEST_ROLE};
GRANT SELECT, INSERT ON {SCHEMA}.entry, {SCHEMA}.seal TO {INGEST_ROLE};
GRANT SELECT, INSERT ON {SCHEMA}.host TO {INGEST_ROLE};
GRANT USAGE ON SEQUENCE {SCHEMA}.host_id_seq TO {INGEST_ROLE};
GRANT UPDATE (last_seen_ns, first_seq, base_hash, shipped_seq, head_hash, next_epoch, policy_digest, flag)
    ON {SCHEMA}.host TO {INGEST_ROLE};
GRANT SELECT ON {SCHEMA}.token, {SCHEMA}.cut TO {INGEST_ROLE};
GRANT UPDATE (used_ns, used_by) ON {SCHEMA}.token TO {INGEST_ROLE};
"""

# Policy delivery (docs/fleet-policy.md, "Delivery through the collector"): which group a
# host is in, the signed bundles the administrator pushed (stored as the exact bytes
# signed offline: the collector cannot forge one, hosts verify them against their own
# trusted keys), and what each host reported back. The ingest role (the collector) may
# read groups and bundles, record a group at enrolment, and insert reports; it may not
# insert, change or delete a bundle, nor change a group once set (the owner does:
# `fleet policy push`, `fleet group set`).
POLICY_DDL = f"""
SET search_path = {SCHEMA};
CREATE TABLE IF NOT EXISTS host_group (
    host_id int PRIMARY KEY REFERENCES host(id),
    grp text NOT NULL,
    set_ns bigint NOT NULL,
    set_by text NOT NULL                   -- 'enroll' or 'admin'
);
CREATE TABLE IF NOT EXISTS policy_bundle (
    id serial PRIMARY KEY,
    grp text NOT NULL,
    version bigint NOT NULL,
    digest text NOT NULL,                  -- sha256 of the policy bytes
    key_id text NOT NULL,
    max_breaks bigint NOT NULL,
    replay_window_ns bigint NOT NULL,
    created_ns bigint NOT NULL,            -- when it was signed
    pushed_ns bigint NOT NULL,
    sha256 text NOT NULL,                  -- of the bundle file's bytes: the host's idempotence key
    raw bytea NOT NULL,                    -- the bundle file's exact bytes
    UNIQUE (grp, version)
);
CREATE TABLE IF NOT EXISTS policy_report (
    id bigserial PRIMARY KEY,
    host_id int NOT NULL REFERENCES host(id),
    bundle_sha256 text,                    -- the bundle the host was given (NULL: unknown)
    grp text, version bigint, digest text, -- as the host reports them
    result text NOT NULL,                  -- applied | installed | refused
    reason text, message text,
    detail text NOT NULL,                  -- the host's whole result record, ASCII JSON
    reported_ns bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS policy_report_host ON policy_report (host_id, id);
"""

POLICY_GRANTS = f"""
GRANT SELECT, INSERT ON {SCHEMA}.host_group TO {INGEST_ROLE};
GRANT SELECT ON {SCHEMA}.policy_bundle TO {INGEST_ROLE};
GRANT SELECT, INSERT ON {SCHEMA}.policy_report TO {INGEST_ROLE};
GRANT USAGE ON SEQUENCE {SCHEMA}.policy_report_id_seq TO {INGEST_ROLE};
GRANT UPDATE (policy_version) ON {SCHEMA}.host TO {INGEST_ROLE};
"""

# Entry columns in COPY order (the journal's FIELDS, then derived, then collector's).
ENTRY_COLUMNS = ("host_id", "seq", "ts_ns", "code", "type", "source", "host", "outcome", "rule", "uid",
                 "user", "gid", "pid", "program", "family", "local_addr", "local_port", "remote_addr",
                 "remote_port", "extra", "ident", "local_inet", "remote_inet", "raw", "hash", "received_ns")


@functools.lru_cache(maxsize=1 << 16)
def inet(addr: Any) -> str | None:
    """The inet value of a stored address (IPv4-mapped IPv6 as IPv4, like the journal's
    keys, so one CIDR finds both spellings); None when it is not an address. Cached: the
    same addresses recur."""
    if not isinstance(addr, str) or not addr:
        return None
    if ":" not in addr and ipv4_packed(addr) is not None:   # the common case, checked in C
        return addr
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def connect(url: str, *, autocommit: bool = False, readonly: bool = False) -> "psycopg.Connection":
    """A connection with search_path set; a bad URL or an unreachable server is a FleetError.
    readonly: every transaction of the session is READ ONLY (PostgreSQL refuses any write)."""
    if psycopg is None:
        raise FleetError("the fleet needs psycopg (pip install 'psycopg[binary]')")
    try:
        conn = psycopg.connect(url, autocommit=autocommit, connect_timeout=10)
    except psycopg.Error as e:
        raise FleetError(f"cannot connect to the fleet database: {str(e).strip()}") from None
    except ValueError as e:   # a malformed conninfo string
        raise FleetError(f"bad --db {url!r}: {e}") from None
    conn.execute(f"SET search_path = {SCHEMA}")
    if readonly:
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    if not autocommit:
        conn.commit()
    return conn


def ensure_schema(conn: "psycopg.Connection") -> None:
    """Create the schema, the ingest role and its grants (idempotent; needs the owner)."""
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(471501)")   # two collectors starting at once
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (INGEST_ROLE,)).fetchone() is None:
                conn.execute(f"CREATE ROLE {INGEST_ROLE} NOLOGIN")
            conn.execute(DDL)
            conn.execute(GRANTS)
            conn.execute(POLICY_DDL)
            conn.execute(POLICY_GRANTS)
            me = conn.execute("SELECT current_user").fetchone()[0]
            if me != INGEST_ROLE:
                conn.execute(f'GRANT {INGEST_ROLE} TO "{me}"')
    except psycopg.Error as e:
        raise FleetError(f"cannot create the fleet schema: {str(e).strip()}") from None


def day_bounds(ts_ns: int) -> tuple[int, int, str]:
    """The day partition holding ts_ns: [start, end) in ns and its table name."""
    start = ts_ns - ts_ns % DAY_NS
    day = dt.datetime.fromtimestamp(start // 10**9, dt.timezone.utc)
    return start, start + DAY_NS, f"entry_{day:%Y%m%d}"


class Partitions:
    """Creates day partitions on demand, on the owner's connection (the ingest role may not
    create tables). Remembers what exists, so the hot path costs a set lookup."""

    def __init__(self, url: str):
        self.url = url
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def ensure(self, days: set[int]) -> None:
        want = {day_bounds(d) for d in days}
        missing = [w for w in want if w[2] not in self._known]
        if not missing:
            return
        with self._lock:
            with connect(self.url, autocommit=True) as conn:
                for start, end, name in sorted(missing):
                    conn.execute("SELECT pg_advisory_lock(471502)")
                    try:
                        conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.{name} PARTITION OF {SCHEMA}.entry "
                                     f"FOR VALUES FROM ({start}) TO ({end})")
                    finally:
                        conn.execute("SELECT pg_advisory_unlock(471502)")
                    self._known.add(name)


def partitions(conn: "psycopg.Connection") -> list[tuple[str, int, int]]:
    """(name, start ns, end ns) of every day partition, oldest first."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace "
        "WHERE p.relname = 'entry' AND n.nspname = %s ORDER BY c.relname", (SCHEMA,)).fetchall()
    out = []
    for (name,) in rows:
        day = dt.datetime.strptime(name[len("entry_"):], "%Y%m%d").replace(tzinfo=dt.timezone.utc)
        start = int(day.timestamp()) * 10**9
        out.append((name, start, start + DAY_NS))
    return out


def revoke(conn: "psycopg.Connection", name: str, why: str) -> dict[str, Any]:
    """Revoke a host's certificate: the collector refuses it from now on, on every endpoint.
    Its entries and seals stay (its history is still verified). FleetError for an unknown
    host; revoking again keeps the first time and reason."""
    with conn.transaction():
        h = host_row(conn, name)
        if h is None:
            known = [r["name"] for r in hosts(conn)]
            raise FleetError(f"no enrolled host {name!r}" + (f" (enrolled: {', '.join(known[:20])})" if known else ""))
        if h["revoked_ns"] is None:
            conn.execute("UPDATE host SET revoked_ns = %s, revoked_why = %s WHERE id = %s",
                         (time.time_ns(), why, h["id"]))
        return host_row(conn, name)


def host_row(conn: "psycopg.Connection", name: str) -> dict[str, Any] | None:
    cur = conn.execute("SELECT * FROM host WHERE name = %s", (name,))
    row = cur.fetchone()
    return None if row is None else dict(zip([c.name for c in cur.description], row))


def hosts(conn: "psycopg.Connection") -> list[dict[str, Any]]:
    cur = conn.execute("SELECT * FROM host ORDER BY name")
    names = [c.name for c in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


# --------------------------------------------------------------------------- fleet monitor
# The collector NOTIFYs this channel inside each segment's transaction (PostgreSQL delivers
# a NOTIFY at commit, never for a rolled-back transaction); `monitor --store` LISTENs on it.
NOTIFY_CHANNEL = "sockgate_entry"


def notify_stored(conn: "psycopg.Connection", host_id: int, last_seq: int) -> None:
    """Tell listening fleet monitors that host_id's entries through last_seq are stored
    (payload "HOST_ID:SEQ"; a monitor reads the store, the payload is only a hint)."""
    conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, f"{host_id}:{last_seq}"))
