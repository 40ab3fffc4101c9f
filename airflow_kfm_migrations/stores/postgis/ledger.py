"""The in-store ledger (``kfm_governance.ledger``): a run's entry, written in the run's own
transaction after its gate; the last entry of a migration; the receipt's digest, added after
the receipt is written; one run's entry read back for ``verify``; and every entry, read
back for ``history`` and ``status``.

The table itself is created by the session that opens a run (``catalog.LEDGER_DDL``).
"""

from __future__ import annotations

import json
from typing import Any

from airflow_kfm_migrations.errors import RefusedError
from airflow_kfm_migrations.stores.base import LedgerRecord
from airflow_kfm_migrations.stores.postgis.catalog_sql import LEDGER_SCHEMA
from airflow_kfm_migrations.stores.postgis.client import Connect, db_error


def last_record(cur: Any, migration_id: str) -> LedgerRecord | None:
    """The newest entry of ``migration_id``, or None."""
    cur.execute(
        f"SELECT migration_id, operation, status, bundle_digest, artifacts, environment, run_id, "
        f"pre_schema_fingerprint, pre_protected_fingerprint, post_schema_fingerprint, "
        f"post_scope_fingerprint, applied_at::text, receipt_digest, actor FROM {LEDGER_SCHEMA}.ledger "
        f"WHERE migration_id = %s ORDER BY id DESC LIMIT 1",
        (migration_id,),
    )
    row = cur.fetchone()
    if row is None:
        return None
    return LedgerRecord(*row[:4], dict(row[4]), *row[5:])  # type: ignore[arg-type,call-arg]


def insert_record(cur: Any, rec: LedgerRecord, capture_state: str | None = None) -> None:
    """``capture_state``: the sha256 of the capture state the run leaves (``shared_state``)."""
    cur.execute(
        f"INSERT INTO {LEDGER_SCHEMA}.ledger (migration_id, operation, status, bundle_digest, artifacts, "
        f"environment, run_id, pre_schema_fingerprint, pre_protected_fingerprint, post_schema_fingerprint, "
        f"post_scope_fingerprint, actor, capture_state) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            rec.migration_id,
            rec.operation,
            rec.status,
            rec.bundle_digest,
            json.dumps(rec.artifacts),
            rec.environment,
            rec.run_id,
            rec.pre_schema_fingerprint,
            rec.pre_protected_fingerprint,
            rec.post_schema_fingerprint,
            rec.post_scope_fingerprint,
            rec.actor,
            capture_state,
        ),
    )


def set_receipt_digest(connect: Connect, run_id: str, digest: str) -> None:
    """On a connection of its own (the run's transaction has ended)."""
    conn = connect()
    try:
        conn.autocommit = True
        conn.execute(f"UPDATE {LEDGER_SCHEMA}.ledger SET receipt_digest = %s WHERE run_id = %s", (digest, run_id))
    finally:
        conn.close()


def read_entry(connect: Connect, conn_id: str, migration_id: str, run_id: str) -> dict[str, Any] | None:
    """The ledger row of one run, read without locks or writes (for ``verify --conn-id``)."""
    import psycopg

    try:
        with connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", (f"{LEDGER_SCHEMA}.ledger",))
            if cur.fetchone()[0] is None:
                return None
            cur.execute(
                f"SELECT operation, status, receipt_digest, post_schema_fingerprint FROM {LEDGER_SCHEMA}.ledger "
                "WHERE migration_id = %s AND run_id = %s",
                (migration_id, run_id),
            )
            row = cur.fetchone()
    except psycopg.Error as exc:
        raise RefusedError(f"cannot read the ledger on {conn_id}: {db_error(exc)}") from None
    if row is None:
        return None
    return dict(zip(("operation", "status", "receipt_digest", "post_schema_fingerprint"), row, strict=True))


_ENTRY_COLUMNS = (
    "migration_id, operation, status, bundle_digest, artifacts, environment, run_id, pre_schema_fingerprint, "
    "pre_protected_fingerprint, post_schema_fingerprint, post_scope_fingerprint, "
    "to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), receipt_digest"
)


def entries(connect: Connect, conn_id: str, migration_id: str | None) -> list[LedgerRecord]:
    """Every entry (of ``migration_id``, or all), newest first, read in a read-only
    transaction that is rolled back; [] when no run has created the ledger yet. A ledger an
    earlier release created may lack ``actor`` until the next run adds it: None then."""
    import psycopg

    try:
        with connect() as conn:
            conn.read_only = True
            try:
                with conn.cursor() as cur:
                    cur.execute(
                        "SELECT to_regclass(%s) IS NOT NULL, EXISTS (SELECT 1 FROM pg_catalog.pg_attribute "
                        "WHERE attrelid = to_regclass(%s) AND attname = 'actor' AND NOT attisdropped)",
                        (f"{LEDGER_SCHEMA}.ledger", f"{LEDGER_SCHEMA}.ledger"),
                    )
                    exists, has_actor = cur.fetchone()
                    if not exists:
                        return []
                    where = "WHERE migration_id = %s " if migration_id else ""
                    cur.execute(
                        f"SELECT {_ENTRY_COLUMNS}, {'actor' if has_actor else 'NULL'} FROM {LEDGER_SCHEMA}.ledger "
                        f"{where}ORDER BY id DESC",
                        (migration_id,) if migration_id else None,
                    )
                    rows = cur.fetchall()
            finally:
                conn.rollback()
                conn.read_only = None
    except psycopg.Error as exc:
        raise RefusedError(f"cannot read the ledger on {conn_id}: {db_error(exc)}") from None
    return [LedgerRecord(*row[:4], dict(row[4]), *row[5:]) for row in rows]  # type: ignore[arg-type,call-arg,misc]
