"""``kfm-migrations history``: the store's ledger, newest first.

Every entry a run committed in the store: applies (``succeeded``, or ``backfill_pending``
until the backfill's last batch, ``backfill_rolled_back`` once its batches were reversed),
rollbacks, and the compensations of stopped backfills (a ``rollback`` entry). Runs that
changed nothing in the store (no-ops, refusals, failures, and compensations that put a
non-transactional store back to its pre-state) write no ledger entry: their receipts are
their record. Read without locks or writes.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from airflow_kfm_migrations.app.inventory import store_kind
from airflow_kfm_migrations.stores.base import ConnectionHolding, LedgerRecord, open_store


@dataclass
class HistoryReport:
    conn_id: str
    kind: str
    migration_id: str | None
    entries: list[LedgerRecord]

    def as_json(self) -> dict[str, Any]:
        return {
            "conn_id": self.conn_id,
            "kind": self.kind,
            "migration_id": self.migration_id,
            "entries": [
                {
                    "migration_id": e.migration_id,
                    "operation": e.operation,
                    "outcome": e.status,
                    "at": e.applied_at,
                    "actor": e.actor,
                    "receipt_digest": e.receipt_digest,
                    "run_id": e.run_id,
                    "environment": e.environment,
                    "bundle_digest": e.bundle_digest,
                }
                for e in self.entries
            ],
        }


def history(conn_id: str, migration_id: str | None = None, *, kind: str | None = None) -> HistoryReport:
    kind = store_kind(conn_id, kind, migration_id=migration_id)
    store = open_store(kind, conn_id)
    with store.held() if isinstance(store, ConnectionHolding) else nullcontext():
        entries = store.ledger_entries(migration_id)
    return HistoryReport(conn_id, kind, migration_id, entries)
