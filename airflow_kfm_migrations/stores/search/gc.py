"""Retention of old indices: the indices an apply moves an alias away from stay for
``old_index_retention_days`` (a rollback needs them); the apply's ledger document names
them and the time they are kept until, and :func:`collect_garbage` (``kfm-migrations gc``)
deletes them once that time passed, never while an alias points to them."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow_kfm_migrations.contracts.models import SearchDeclaration
from airflow_kfm_migrations.declaration.bundle import Bundle
from airflow_kfm_migrations.stores.base import GcDecision
from airflow_kfm_migrations.stores.search.actions import created_by, load_actions
from airflow_kfm_migrations.stores.search.client import SearchClient
from airflow_kfm_migrations.stores.search.governance import GOVERNANCE_INDEX, now_iso
from airflow_kfm_migrations.stores.search.scope import SearchScopeRules


def retained_indices(pending: list[dict[str, Any]], built: set[str], retention_days: int) -> list[dict[str, str]]:
    """The old indices the held-back flip moves an alias away from (not built by this run):
    a rollback needs them, so they are kept for ``old_index_retention_days``."""
    until = (datetime.now(UTC) + timedelta(days=retention_days)).isoformat()
    old: list[str] = []
    for spec in pending:
        ((op, body),) = spec.items()
        ix = body["index"]
        if op == "remove" and ix not in built and ix not in old:
            old.append(ix)
    return [{"index": ix, "keep_until": until} for ix in old]


def collect_garbage(
    client: SearchClient,
    bundle: Bundle,
    decl: SearchDeclaration,
    run_id: str,
    last: dict[str, Any] | None,
    now: datetime,
    *,
    dry_run: bool,
    heartbeat: Callable[[], None],
) -> list[GcDecision]:
    """Delete the old indices the last apply kept whose retention expired at ``now``.

    Never an index an alias points to, a forbidden or protected one, one outside the
    allowed patterns or one this migration's forward creates. Call it holding the lock
    (inside :meth:`SearchStore.session`); ``last`` is the migration's last ledger document.
    Records a ``gc`` document in the governance index (not a ledger entry: the migration
    stays applied)."""
    if last is None or last.get("operation") != "apply":
        return []
    rules = SearchScopeRules(decl)
    forward_creates = set(created_by(load_actions(bundle.by_role("forward"))))
    aliased = {ix for ix, meta in client.get_alias().items() if meta.get("aliases")}
    out: list[GcDecision] = []
    for item in last.get("retained_indices") or []:
        ix, until_s = str(item.get("index", "")), str(item.get("keep_until", ""))
        try:
            until = datetime.fromisoformat(until_s)
        except ValueError:
            out.append(GcDecision(ix, until_s, "kept", "unreadable keep_until in the ledger"))
            continue
        if rules.index_forbidden(ix):
            out.append(GcDecision(ix, until_s, "kept", "forbidden index: never deleted"))
        elif rules.index_protected(ix):
            out.append(GcDecision(ix, until_s, "kept", "protected index: never deleted"))
        elif not rules.index_allowed(ix):
            out.append(GcDecision(ix, until_s, "kept", "outside the allowed index patterns"))
        elif ix in forward_creates:
            out.append(GcDecision(ix, until_s, "kept", "created by this migration's forward"))
        elif now < until:
            out.append(GcDecision(ix, until_s, "kept", f"retained until {until_s}"))
        elif not client.index_exists(ix):
            out.append(GcDecision(ix, until_s, "gone", "already deleted"))
        elif ix in aliased:
            out.append(GcDecision(ix, until_s, "kept", "an alias points to it"))
        elif dry_run:
            out.append(GcDecision(ix, until_s, "would_delete", f"retention expired at {until_s}"))
        else:
            heartbeat()
            # Re-check right before the delete: an alias added meanwhile keeps the index.
            if client.get_alias().get(ix, {}).get("aliases"):
                out.append(GcDecision(ix, until_s, "kept", "an alias points to it"))
                continue
            client.delete_index(ix)
            out.append(GcDecision(ix, until_s, "deleted", f"retention expired at {until_s}"))
    deleted = [d.index for d in out if d.action == "deleted"]
    if deleted:
        client.index_doc(
            GOVERNANCE_INDEX,
            f"gc:{decl.migration_id}:{run_id}",
            {
                "type": "gc",
                "migration_id": decl.migration_id,
                "run_id": run_id,
                "operation": "gc",
                "applied_at": now_iso(),
                "applied_ns": time.time_ns(),
                "apply_run_id": last.get("run_id"),
                "deleted_indices": deleted,
                "now": now.isoformat(),
            },
            refresh=True,
        )
    return out
