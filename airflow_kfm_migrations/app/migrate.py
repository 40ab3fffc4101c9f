"""``kfm-migrations migrate``: apply a store's pending migrations in order, in one process
over one connection.

The pending migrations are the registry entries of the store's kind whose registry status
allows a run in the environment and that the store's ledger does not hold as applied
(never applied, rolled back, or with a backfill still pending). They run in dependency
order (``requires`` first), then by id; ``--to ID`` stops after ID. Each one is a full
governed run (``run_migration``, then its backfill when it declares one): its own lock,
ledger entry, baselines, gate and receipt. The first run that does not succeed stops the
series: the migrations before it stay applied, it has its receipt saying why, and the ones
after it are not touched.

What concerns the series is refused before the first run, with nothing written: a bundle of
the kind that does not load (malformed or invalid declaration), a ``requires`` problem
(unknown id, cycle, another type), an unknown ``--to``. Each migration's own policy checks
and static plan are its run's preflight: a migration they refuse stops the series at its
turn, with a receipt saying why (``kfm-migrations validate`` checks them all ahead, in CI).

What a series shares, and a run of one migration would do again: the interpreter, the
registry (read and validated once, ``declaration.registry``), the bundles (loaded once),
the secret scans of unchanged files (``util.secret_scan``), the store and its connection
(``ConnectionHolding``), and the store's capture state (PostGIS: the catalog state of the
last baseline stays in memory, so the next capture computes only what changed).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from airflow_kfm_migrations.app.inventory import (
    Inventory,
    inventory,
    ledger_state,
    newest_by_migration,
    registry_of,
    store_kind,
)
from airflow_kfm_migrations.app.status import PENDING_STATES
from airflow_kfm_migrations.declaration import requires
from airflow_kfm_migrations.declaration.bundle import Bundle
from airflow_kfm_migrations.declaration.policy import prescan
from airflow_kfm_migrations.declaration.registry import RUNNABLE_IN
from airflow_kfm_migrations.engine import RunOptions, RunRecorder, RunResult, run_backfill, run_migration
from airflow_kfm_migrations.engine.preflight import preflight
from airflow_kfm_migrations.errors import InputError, InvalidInput, RefusedError
from airflow_kfm_migrations.stores.base import ConnectionHolding, Store, open_store


@dataclass
class MigrateRow:
    migration_id: str
    outcome: str  # a run status | not run | would apply | would be refused
    receipt: str | None = None
    reason: str | None = None
    seconds: float | None = None


@dataclass
class MigrateReport:
    conn_id: str
    kind: str
    environment: str
    dry_run: bool
    rows: list[MigrateRow] = field(default_factory=list)
    exit_code: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "conn_id": self.conn_id,
            "kind": self.kind,
            "environment": self.environment,
            "dry_run": self.dry_run,
            "exit_code": self.exit_code,
            "migrations": [r.__dict__ for r in self.rows],
        }


def migrate(
    root: Path,
    opts: RunOptions,
    *,
    to: str | None = None,
    kind: str | None = None,
    artifacts_root: Path | None = None,
    on_result: Callable[[MigrateRow], None] | None = None,
) -> MigrateReport:
    """Apply the pending migrations of ``opts.conn_id``'s store under ``root``. ``opts`` is
    the template of every run (``artifacts_dir`` is set per migration: ``artifacts_root/<id>``
    or the bundle folder); ``on_result`` hears of each migration as it finishes."""
    reg_path, registry = registry_of(root)
    kind = store_kind(opts.conn_id, kind, registry=registry)
    inv = inventory(root, reg_path, registry, kind)
    declared = inv.declared()
    problems = requires.problems(declared, requires.known_ids(root))
    if problems:
        err = InvalidInput(problems)
        err.exit_code = max(p.exit_code for p in problems)
        raise err
    if to is not None and to not in inv.bundles:
        raise InputError("--to", "-", f"{to} is not a {kind} migration of {reg_path}")
    report = MigrateReport(opts.conn_id, kind, opts.environment, opts.dry_run)
    store = open_store(kind, opts.conn_id, use_hook=opts.use_hook)
    with store.held() if isinstance(store, ConnectionHolding) else nullcontext():
        newest = newest_by_migration(store.ledger_entries(None))
        states = {mid: ledger_state(newest.get(mid)) for mid in inv.bundles}
        runnable = RUNNABLE_IN[opts.environment]
        pending = [
            e.migration_id for e in inv.entries if e.status in runnable and states[e.migration_id] in PENDING_STATES
        ]
        applied = {mid for mid, st in states.items() if st == "applied"}
        order = requires.order(pending, declared, applied)
        if to is not None:
            if to not in order:
                if states[to] == "applied":
                    return report  # nothing to do up to an applied migration
                entry = next(e for e in inv.entries if e.migration_id == to)
                raise RefusedError(
                    f"{to} is not pending in {opts.environment} (registry status {entry.status}, "
                    f"ledger {states[to]}); nothing to migrate to"
                )
            order = order[: order.index(to) + 1]
        if opts.dry_run:
            _plan_only(report, inv, store, order, opts, applied, on_result)
        else:
            _apply(report, inv, store, order, opts, artifacts_root, on_result)
    return report


def _options(opts: RunOptions, bundle: Bundle, artifacts_root: Path | None) -> RunOptions:
    return replace(opts, artifacts_dir=artifacts_root / bundle.migration_id if artifacts_root else None)


def run_one(bundle: Bundle, opts: RunOptions, store: Store) -> RunResult:
    """One governed run, as ``kfm-migrations run`` does it: the apply, then the backfill
    when the bundle declares one (it resumes one that is pending)."""
    result = run_migration(bundle, opts, store)
    if getattr(bundle.declaration, "backfill", None) is None or result.status not in {"succeeded", "noop"}:
        return result
    filled = run_backfill(bundle, opts, store)
    if filled.receipt_path is None and filled.status in {"noop", "succeeded"}:
        return result
    return filled


def _apply(
    report: MigrateReport,
    inv: Inventory,
    store: Store,
    order: list[str],
    opts: RunOptions,
    artifacts_root: Path | None,
    on_result: Callable[[MigrateRow], None] | None,
) -> None:
    # A worker thread overlaps the CPU work that needs no store with the runs, which mostly
    # wait for the store: the secret scan of the next bundle (preflight then finds it done,
    # unless a file changed), and each run's PROV document.
    deferred: list[Future[None]] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kfm-migrate") as worker:
        run_opts = replace(opts, defer=lambda fn: deferred.append(worker.submit(fn)))
        if order:
            prescan(inv.bundles[order[0]])
        for i, mid in enumerate(order):
            if report.exit_code != 0:
                report.rows.append(MigrateRow(mid, "not run"))
                continue
            if i + 1 < len(order):
                deferred.append(worker.submit(prescan, inv.bundles[order[i + 1]]))
            bundle = inv.bundles[mid]
            started = time.monotonic()
            result = run_one(bundle, _options(run_opts, bundle, artifacts_root), store)
            row = MigrateRow(
                mid,
                result.status,
                str(result.receipt_path) if result.receipt_path else None,
                result.reason,
                round(time.monotonic() - started, 3),
            )
            report.rows.append(row)
            report.exit_code = result.exit_code
            if on_result is not None:
                on_result(row)
    for fut in deferred:
        fut.result()  # an error there is the run's own: raised, never swallowed
    if report.exit_code != 0 and on_result is not None:
        for row in report.rows:
            if row.outcome == "not run":
                on_result(row)


def _plan_only(
    report: MigrateReport,
    inv: Inventory,
    store: Store,
    order: list[str],
    opts: RunOptions,
    applied: set[str],
    on_result: Callable[[MigrateRow], None] | None,
) -> None:
    """A dry run: what would run, in which order, and what preflight and the static plan
    would refuse already. Nothing is rehearsed (a migration's rehearsal would not see the
    changes of the ones before it); ``run --dry-run`` rehearses one."""
    will_be_applied = set(applied)
    for mid in order:
        bundle = inv.bundles[mid]
        run = RunRecorder(bundle, opts, "apply")
        reason = preflight(run)
        if reason is None:
            hard = [f for f in store.plan(bundle).findings if f.tier == "hard_fail"]
            reason = f"static plan refused: {hard[0].message}" if hard else None
        if reason is None:
            missing = [r for r in bundle.declaration.requires if r not in will_be_applied]
            reason = f"requires {', '.join(missing)}, which would not be applied" if missing else None
        row = MigrateRow(mid, "would be refused" if reason else "would apply", None, reason)
        report.rows.append(row)
        if reason:
            report.exit_code = 1
        else:
            will_be_applied.add(mid)
        if on_result is not None:
            on_result(row)
