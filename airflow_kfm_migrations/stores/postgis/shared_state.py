"""The capture state kept in the database (``kfm_governance.capture_state``), so that a
worker that never captured the database (a new Kubernetes pod, a fresh Celery worker) starts
from the state of the last committed run instead of computing every object.

One row per state key (``state.state_key``: code, connection id, database, server start),
holding the state exactly as the local cache file holds it (``state.encode``) and the sha256
of those bytes. Only a run that commits writes it:

- in the run's transaction, after the gate, the ledger row of the run records that sha256
  (``ledger.capture_state``), so it commits or rolls back with the run;
- after the commit, on a connection of its own, the state row is written (an upsert that
  never replaces a newer state with an older one). A run that was refused, failed, rolled
  back or killed writes nothing; a run that committed but could not write the row only
  leaves the next worker a slower capture.

A capture reads a row only when its sha256 is the one a ledger row recorded, and checks the
bytes against it before decoding them: a row that no committed run wrote is ignored. See
docs/stores/postgis.md ("Capture state shared by workers") for the trust model.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

from airflow_kfm_migrations.stores.postgis.catalog_sql import LEDGER_SCHEMA

TABLE = f"{LEDGER_SCHEMA}.capture_state"
KEEP = 4  # states kept (the newest saved): other connection ids, server starts or releases

# Created with the ledger (catalog.LEDGER_DDL). The payload is stored uncompressed and out of
# line (STORAGE EXTERNAL): it is mostly digests, which neither pglz nor zlib shrink by much,
# and compressing 20 MB costs more than moving it (bench/RESULTS.md).
DDL = f"""
DO $kfm$ BEGIN
    IF to_regclass('{TABLE}') IS NULL THEN
        CREATE TABLE {TABLE} (
            key text PRIMARY KEY,
            run_id text NOT NULL,
            snapshot_xmax bigint NOT NULL,
            digest text NOT NULL,
            payload bytea NOT NULL,
            saved_at timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        ALTER TABLE {TABLE} ALTER COLUMN payload SET STORAGE EXTERNAL;
    END IF;
END $kfm$;
"""

# Whether this session may read the shared state: the schema, the table and the ledger exist
# and are readable (a reviewer's role may see neither). Asked first, so that reading never
# fails inside the caller's transaction.
_READABLE = f"""
    SELECT count(*) = 2 AND bool_and(pg_catalog.has_table_privilege(c.oid, 'SELECT'))
       AND bool_or(c.relname = 'ledger' AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                   WHERE a.attrelid = c.oid AND a.attname = 'capture_state' AND NOT a.attisdropped))
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = '{LEDGER_SCHEMA}' AND c.relname IN ('capture_state', 'ledger')
      AND pg_catalog.has_schema_privilege(n.oid, 'USAGE')"""

# The row of a key, only if a committed run's ledger row names its digest.
_READ = f"""
    SELECT s.payload, s.digest FROM {TABLE} s WHERE s.key = %s
      AND s.digest = (SELECT l.capture_state FROM {LEDGER_SCHEMA}.ledger l WHERE l.run_id = s.run_id)"""

_WRITE = f"""
    INSERT INTO {TABLE} (key, run_id, snapshot_xmax, digest, payload) VALUES (%s, %s, %s, %s, %s)
    ON CONFLICT (key) DO UPDATE SET run_id = EXCLUDED.run_id, snapshot_xmax = EXCLUDED.snapshot_xmax,
        digest = EXCLUDED.digest, payload = EXCLUDED.payload, saved_at = EXCLUDED.saved_at
    WHERE {TABLE}.snapshot_xmax <= EXCLUDED.snapshot_xmax"""

_TRIM = f"""
    DELETE FROM {TABLE} WHERE key NOT IN (SELECT key FROM {TABLE} ORDER BY saved_at DESC LIMIT {KEEP})"""


def digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def fetch(cur: Any, key: str) -> tuple[bytes, str] | None:
    """(payload, its digest as the ledger recorded it) for ``key``, or None: no such row, none
    a ledger row vouches for, or nothing this session may read. Read in the transaction
    ``cur`` is in, under a savepoint: a failure here costs only speed."""
    import psycopg

    conn = getattr(cur, "connection", None)
    try:
        with conn.transaction() if conn is not None else contextlib.nullcontext():
            cur.execute(_READABLE)
            if not cur.fetchone()[0]:
                return None
            cur.execute(_READ, (key,), binary=True)
            row = cur.fetchone()
    except psycopg.Error:
        return None
    if row is None:
        return None
    return bytes(row[0]), str(row[1])


def verified(blob: tuple[bytes, str] | None) -> bytes | None:
    """The payload, if its bytes are those whose digest the ledger recorded."""
    if blob is None:
        return None
    payload, want = blob
    return payload if digest(payload) == want else None


def write(conn: Any, key: str, run_id: str, snapshot_xmax: int, sha: str, payload: bytes) -> None:
    """Store a committed run's state, in a transaction of its own on ``conn``."""
    with conn.transaction():
        conn.execute(_WRITE, (key, run_id, snapshot_xmax, sha, payload))
        conn.execute(_TRIM)
