"""The in-store ledger: one ``:KfmMigration`` node per recorded run, its properties the
fields of a ``LedgerRecord`` (``artifacts`` as sorted JSON)."""

from __future__ import annotations

import json
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from airflow_kfm_migrations.errors import RefusedError
from airflow_kfm_migrations.stores.base import LedgerRecord
from airflow_kfm_migrations.stores.graph.client import RunQuery, WriteQuery, neo_error
from airflow_kfm_migrations.stores.graph.governance import LEDGER_LABEL

LEDGER_FIELDS = tuple(LedgerRecord.__dataclass_fields__)


def ledger_last(run: RunQuery, migration_id: str) -> LedgerRecord | None:
    """The latest ledger entry of ``migration_id``, or None."""
    rows = run(
        f"MATCH (m:{LEDGER_LABEL} {{migration_id: $mid}}) RETURN properties(m) AS p ORDER BY m.applied_at DESC LIMIT 1",
        mid=migration_id,
    )
    if not rows:
        return None
    return record_of(dict(rows[0]["p"]))


def record_of(m: dict[str, Any]) -> LedgerRecord:
    """The :class:`LedgerRecord` of a ledger node's properties."""
    kw: dict[str, Any] = {k: m.get(k) for k in LEDGER_FIELDS}
    kw["artifacts"] = json.loads(m.get("artifacts") or "{}")
    kw["applied_at"] = m.get("applied_at") or ""
    return LedgerRecord(**kw)


def record(write: WriteQuery, rec: LedgerRecord) -> None:
    props: dict[str, Any] = {k: getattr(rec, k) for k in LEDGER_FIELDS}
    props["artifacts"] = json.dumps(rec.artifacts, sort_keys=True)
    props["applied_at"] = rec.applied_at or datetime.now(UTC).isoformat(timespec="microseconds")
    props = {k: v for k, v in props.items() if v is not None}
    write(f"CREATE (m:{LEDGER_LABEL}) SET m = $props", props=props)


def set_receipt_digest(write: WriteQuery, run_id: str, digest: str) -> None:
    write(f"MATCH (m:{LEDGER_LABEL} {{run_id: $run}}) SET m.receipt_digest = $d", run=run_id, d=digest)


def read_entry(
    driver: Any, database: str | None, conn_id: str, migration_id: str, run_id: str
) -> dict[str, Any] | None:
    """The ledger node of one run, read without locks or writes; closes ``driver``."""
    try:
        with driver.session(database=database, default_access_mode="READ") as s:
            rec = s.run(
                f"MATCH (m:{LEDGER_LABEL} {{migration_id: $mid, run_id: $run}}) RETURN properties(m) AS p",
                mid=migration_id,
                run=run_id,
            ).single()
    except Exception as exc:  # broad: any driver or server failure refuses, reported policy-safe
        raise RefusedError(f"cannot read the ledger on {conn_id}: {neo_error(exc)}") from None
    finally:
        with suppress(Exception):  # broad: closing a driver whose connection is already gone
            driver.close()
    return dict(rec["p"]) if rec is not None else None


def entries(driver: Any, database: str | None, conn_id: str, migration_id: str | None) -> list[LedgerRecord]:
    """Every ledger node (of ``migration_id``, or all), newest first, read in a READ session."""
    where = " {migration_id: $mid}" if migration_id else ""
    try:
        with driver.session(database=database, default_access_mode="READ", notifications_min_severity="OFF") as s:
            rows = [
                dict(r["p"])
                for r in s.run(
                    f"MATCH (m:{LEDGER_LABEL}{where}) RETURN properties(m) AS p ORDER BY m.applied_at DESC",
                    mid=migration_id,
                )
            ]
    except Exception as exc:  # broad: any driver or server failure refuses, reported policy-safe
        raise RefusedError(f"cannot read the ledger on {conn_id}: {neo_error(exc)}") from None
    return [record_of(m) for m in rows]
