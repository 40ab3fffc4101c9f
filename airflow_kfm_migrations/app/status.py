"""``kfm-migrations status``: every registry entry of a store's kind, as that store sees it.

For each migration: its registry status; its ledger state in the store (applied when, by
which run and receipt, rolled back, backfill pending, or never); whether the bundle's
input files still have the sha256s the apply recorded; whether the store drifted from the
post-state the apply recorded (the scope fingerprint of a baseline taken now against the
ledger's, read without the lock and without writing); and whether it is pending in the
environment (its registry status allows a run there and it is not applied).

Everything here reads; nothing is written, in the store or in the files.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from airflow_kfm_migrations.app.inventory import (
    inventory,
    last_apply_by_migration,
    ledger_state,
    newest_by_migration,
    registry_of,
    store_kind,
)
from airflow_kfm_migrations.declaration.registry import RUNNABLE_IN
from airflow_kfm_migrations.stores.base import ConnectionHolding, LedgerRecord, open_store

UNGOVERNED = (
    "in-scope objects differ from the post-state this apply recorded, and the store changed outside governed runs since"
)
# Ledger states a run (and so ``migrate``) would act on: apply, re-apply, or resume the backfill.
PENDING_STATES = {"never", "rolled_back", "backfill_pending"}


@dataclass
class StatusRow:
    migration_id: str
    registry_status: str
    state: str  # never | applied | rolled_back | backfill_pending | backfill_rolled_back
    applied_at: str | None = None  # of the newest ledger entry
    run_id: str | None = None
    receipt_digest: str | None = None
    actor: str | None = None
    environment: str | None = None
    checksums: str = "n/a"  # match | changed | n/a (not applied)
    changed_files: list[str] = field(default_factory=list)
    drift: bool | None = None  # None: not judged (not applied, or --no-drift)
    drift_note: str | None = None
    pending: bool = False

    @property
    def attention(self) -> bool:
        return self.checksums == "changed" or bool(self.drift)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "attention": self.attention}


@dataclass
class StatusReport:
    conn_id: str
    kind: str
    environment: str
    rows: list[StatusRow]
    fail_on_drift: bool = False

    @property
    def exit_code(self) -> int:
        """1 when something needs attention: changed checksums, or drift with --fail-on-drift."""
        if any(r.checksums == "changed" for r in self.rows):
            return 1
        if self.fail_on_drift and any(r.drift for r in self.rows):
            return 1
        return 0

    def as_json(self) -> dict[str, Any]:
        return {
            "conn_id": self.conn_id,
            "kind": self.kind,
            "environment": self.environment,
            "exit_code": self.exit_code,
            "migrations": [r.as_json() for r in self.rows],
        }


def status(
    root: Path,
    conn_id: str,
    environment: str,
    *,
    kind: str | None = None,
    drift: bool = True,
    fail_on_drift: bool = False,
) -> StatusReport:
    reg_path, registry = registry_of(root)
    kind = store_kind(conn_id, kind, registry=registry)
    inv = inventory(root, reg_path, registry, kind)
    store = open_store(kind, conn_id)
    rows: list[StatusRow] = []
    with store.held() if isinstance(store, ConnectionHolding) else nullcontext():
        entries = store.ledger_entries(None)
        newest = newest_by_migration(entries)
        applies = last_apply_by_migration(entries)
        for entry in sorted(inv.entries, key=lambda e: e.migration_id):
            mid = entry.migration_id
            bundle = inv.bundles[mid]
            last = newest.get(mid)
            row = StatusRow(mid, entry.status, ledger_state(last))
            if last is not None:
                row.applied_at, row.run_id, row.receipt_digest = last.applied_at, last.run_id, last.receipt_digest
                row.actor, row.environment = last.actor, last.environment
            apply = applies.get(mid)
            if row.state not in {"never", "rolled_back"} and apply is not None:
                now = {a.rel: a.sha256 for a in bundle.artifacts}
                row.changed_files = sorted(
                    k for k in set(now) | set(apply.artifacts) if now.get(k) != apply.artifacts.get(k)
                )
                row.checksums = "changed" if row.changed_files else "match"
                if drift and row.state == "applied":
                    live = store.observe(bundle)
                    if store.scope_fingerprint(bundle, live) == apply.post_scope_fingerprint:
                        row.drift = False
                    else:
                        row.drift, row.drift_note = judge_drift(apply, entries, live.schema_fingerprint)
            row.pending = entry.status in RUNNABLE_IN[environment] and row.state in PENDING_STATES
            rows.append(row)
    return StatusReport(conn_id, kind, environment, rows, fail_on_drift)


def judge_drift(apply: LedgerRecord, entries: list[LedgerRecord], live_schema: str) -> tuple[bool, str]:
    """The in-scope objects of ``apply`` differ from the post-state it recorded: drift, unless
    every change since went through governed runs (migrations whose scope overlaps change
    each other's in-scope objects). The ledger tells: each later entry's pre-state schema
    fingerprint must equal the post-state of the one before it, and the live schema the last
    one's post-state. Without a later entry, any change is drift; a change a schema
    fingerprint does not cover (protected rows) between two later runs is not seen this way."""
    chain = list(reversed(entries))  # oldest first
    at = next(i for i, e in enumerate(chain) if e.run_id == apply.run_id)
    later = chain[at + 1 :]
    if not later:
        return True, UNGOVERNED
    posts = [chain[at], *later]
    gaps = [b for a, b in zip(posts, later, strict=False) if a.post_schema_fingerprint != b.pre_schema_fingerprint]
    if gaps or later[-1].post_schema_fingerprint != live_schema:
        return True, UNGOVERNED
    ids = list(dict.fromkeys(e.migration_id for e in later))
    named = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
    return False, f"in-scope objects changed only through later governed runs ({named})"
