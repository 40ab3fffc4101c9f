"""The backfill phase of a governed migration, after its schema part committed.

The store's batch engine (``Backfilling.backfill_engine``) runs the batches, each its own
short transaction with durable progress; this module drives it: lock, ledger, resume,
run, and on a governance stop compensate the whole migration through ``rollback_core``.
"""

from __future__ import annotations

import time

from airflow_kfm_migrations.declaration.bundle import Bundle
from airflow_kfm_migrations.engine.preflight import preflight
from airflow_kfm_migrations.engine.rollback import rollback_core
from airflow_kfm_migrations.engine.run import RunOptions, RunRecorder, RunResult, cancellable
from airflow_kfm_migrations.errors import BackfillInterrupted, BackfillStop, LockedError, RefusedError
from airflow_kfm_migrations.stores.base import (
    BackfillEngine,
    Backfilling,
    Store,
    open_store,
)

SUMMARY = "diffs/backfill.json"


def run_backfill(bundle: Bundle, opts: RunOptions, store: Store | None = None) -> RunResult:
    """The backfill phase: after the schema part is committed (ledger ``backfill_pending``).

    Shared by the CLI (after ``run_migration``) and the Airflow BackfillOperator. A re-run
    (or an Airflow retry) resumes after the last committed batch; after completion it is a
    no-op. Every outcome but "already complete" writes a receipt with ``operation: backfill``.
    """
    if getattr(bundle.declaration, "backfill", None) is None:
        return RunResult("noop", "no backfill declared", None, operation="backfill")
    run = RunRecorder(bundle, opts, "backfill")
    if opts.dry_run:
        opts.log("dry run: the backfill is not rehearsed (its batches commit one by one)")
        return RunResult("succeeded", "dry run: backfill not rehearsed", None, operation="backfill")
    reason = preflight(run)
    if reason:
        return run.finish("failed", reason)
    if store is None:
        store = open_store(bundle.type, opts.conn_id, use_hook=opts.use_hook)
    if not isinstance(store, Backfilling):
        run.check("store", False, f"the {bundle.type} store does not run backfills")
        return run.finish("failed", f"the {bundle.type} store does not run backfills")
    try:
        eng = store.backfill_engine(bundle, opts.log, opts.progress)
    except RefusedError as exc:
        run.check("store", False, str(exc))
        return run.finish("failed", str(exc))
    locked = False
    try:
        try:
            eng.lock()
            locked = True
        except LockedError as exc:
            run.check("lock", False, str(exc))
            return run.finish("failed", str(exc))
        run.check("lock", True)
        return _locked(run, store, eng)
    finally:
        if locked:
            eng.unlock()
        eng.close()


def _locked(run: RunRecorder, store: Store, eng: BackfillEngine) -> RunResult:
    bundle, opts = run.bundle, run.opts
    bf = getattr(bundle.declaration, "backfill", None)
    assert bf is not None
    led = eng.ledger()
    if led is None or led[1] != "apply":
        run.check("ledger", False, "the schema part is not applied")
        return run.finish("failed", "the schema part of this migration is not applied; run it first")
    current = {a.rel: a.sha256 for a in bundle.artifacts}
    changed = sorted(k for k in set(current) | set(led[3]) if current.get(k) != led[3].get(k))
    if changed:
        run.check("ledger", False, f"changed since apply: {', '.join(changed)}")
        return run.finish("failed", f"{changed[0]} changed after the schema part was applied")
    if led[2] == "succeeded":
        run.check("ledger", True, "backfill already complete")
        return RunResult("noop", "backfill already complete", None, operation="backfill")
    run.check("ledger", True, f"schema part applied, backfill {led[2]}")
    reverse_left = eng.reverse_pending()
    if reverse_left:
        opts.log(f"an interrupted compensation left {reverse_left} reverse batch(es); resuming it")
        run.metrics["resumed_compensation"] = 1
        return _compensate(run, store, eng, "resuming an interrupted compensation")
    problem = eng.check_key()
    run.check("backfill_key", problem is None, problem or eng.key_summary())
    if problem:
        return run.finish("failed", problem)
    if eng.complete_if_done():  # completed, ledger not flipped
        return RunResult("noop", "backfill already complete", None, operation="backfill")
    last = eng.last_progress() or eng.start(mark_pending=led[2] != eng.PENDING)
    run.metrics.update(
        {
            "resumed_from_batch": last[0],
            "resumed_at_rows": last[2],
            "run_key": eng.key[:16],
            "batch_size": bf.batch_size,
            "max_rows": bf.max_rows,
        }
    )
    if last[0] > 0:
        opts.log(f"resuming the backfill after batch {last[0]} ({last[2]} rows written so far)")
    started = time.monotonic()
    try:
        with cancellable(opts, eng):
            total = eng.run_forward(last)
    except BackfillStop as stop:
        run.metrics.update(eng.metrics("forward", started))
        run.check("backfill", False, f"{stop.code}: {stop}")
        return _compensate(run, store, eng, f"backfill stopped ({stop.code}: {stop}); that batch was rolled back")
    except BackfillInterrupted as exc:
        run.metrics.update(eng.metrics("forward", started))
        run.check("backfill", False, str(exc))
        _write_summary(run, eng, "interrupted")
        why = f"{opts.cancelled}: " if opts.cancelled else ""
        if opts.cancelled:
            run.check("cancelled", False, opts.cancelled)
        result = run.finish("failed", f"{why}backfill interrupted, committed batches kept; a re-run resumes: {exc}")
        result.resumable = True
        return result
    run.metrics.update(eng.metrics("forward", started))
    run.metrics["rows_total"] = total
    batches, rows = run.metrics["batches"], run.metrics["rows"]
    run.check("backfill", True, f"{batches} batch(es), {rows} rows this run, {total} in total")
    _write_summary(run, eng, "complete")
    return run.finish("succeeded", None)


def _write_summary(run: RunRecorder, eng: BackfillEngine, state: str) -> None:
    doc = eng.summary(state)
    doc.update(run_id=run.run_id, metrics=dict(run.metrics))
    run.add_output("backfill_summary", SUMMARY, doc)


def _compensate(run: RunRecorder, store: Store, eng: BackfillEngine, why: str) -> RunResult:
    """Undo the whole migration: reverse batches (rollback_set), then rollback.sql through the
    guard; the store must equal the apply's pre-baseline and the verify digest its pre value."""
    eng.unlock()  # rollback_core takes the lock again and frees it before the guard session
    status, reason, session = rollback_core(run, store, why, eng=eng)
    if status == "noop":
        status = "failed"
    _write_summary(run, eng, status)
    result = run.finish(status, reason)
    if session is not None:
        run.note_receipt(session, result)
    return result
