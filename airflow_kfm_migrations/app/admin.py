"""Maintenance operations: ``gc`` and ``break-lock``, each under a receipt.

``gc`` deletes the old indices a search apply kept for a rollback once their retention
(``old_index_retention_days``, recorded with the apply in the ledger and the receipt) has
expired; never an index an alias points to, never a forbidden or protected one. It runs
under the migration lock and writes a receipt (operation ``gc``).

``break-lock`` removes a stale or stuck lock (search: the ``lock:<migration_id>`` document
of ``.kfm-governance``; graph: the ``:KfmLock`` node), after printing who held it since
when, and writes a receipt (operation ``break_lock``) naming the previous holder.

Store-specific work is behind the ``GarbageCollecting`` and ``LockBreaking`` capabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from airflow_kfm_migrations.declaration.bundle import Bundle
from airflow_kfm_migrations.engine.receipts import carried_outputs
from airflow_kfm_migrations.engine.run import RunOptions, RunRecorder, RunResult
from airflow_kfm_migrations.errors import LockedError, RefusedError, StoreCallError
from airflow_kfm_migrations.kinds import kinds_with
from airflow_kfm_migrations.stores.base import GarbageCollecting, GcDecision, LockBreaking, LockHolder, open_store
from airflow_kfm_migrations.util.digest import sha256_file


def carry_outputs(run: RunRecorder) -> None:
    """Keep the evidence of the last run guarded: a maintenance receipt lists the previous
    receipt's outputs again, but only those whose files are still unchanged."""
    for ref in carried_outputs(run.dir):
        f = run.dir / ref.path
        if f.is_file() and sha256_file(f) == ref.sha256:
            run.outputs.append((ref.role, f))


# ------------------------------------------------------------------ gc


def gc_migration(bundle: Bundle, opts: RunOptions, now: datetime) -> RunResult:
    """Delete the expired old indices a migration kept for its rollback."""
    run = RunRecorder(bundle, opts, "gc")
    kinds = kinds_with("collects_garbage")
    if bundle.type not in kinds:
        run.check("store", False, f"gc is for {' and '.join(kinds)} bundles, not {bundle.type}")
        return run.finish("failed", f"gc only applies to {' and '.join(kinds)} migrations (this is {bundle.type})")
    store = open_store(bundle.type, opts.conn_id, use_hook=opts.use_hook)
    decisions: list[GcDecision] = []
    try:
        with store.session(bundle, run.run_id) as s:
            assert isinstance(s, GarbageCollecting)
            run.check("lock", True)
            last = s.last_entry()
            if last is None or last.get("operation") != "apply":
                run.check("ledger", True, "not applied" if last is None else f"last operation {last.get('operation')}")
                carry_outputs(run)
                return run.finish("noop", "no apply with old indices kept; nothing to collect")
            kept = last.get("retained_indices") or []
            run.check("ledger", True, f"apply run {str(last.get('run_id'))[:12]} kept {len(kept)} old index(es)")
            decisions = s.collect_garbage(now, dry_run=opts.dry_run)
    except LockedError as exc:
        run.check("lock", False, str(exc))
        return run.finish("failed", str(exc))
    except StoreCallError as exc:
        run.check("gc", False, exc.line())
        return run.finish("failed", f"gc stopped: {exc.line()}")
    except RefusedError as exc:
        run.check("store", False, str(exc))
        return run.finish("failed", str(exc))
    for d in decisions:
        opts.log(f"{d.action}: {d.index} ({d.why})")
    deleted = [d.index for d in decisions if d.action in {"deleted", "would_delete"}]
    held = [d for d in decisions if d.action == "kept"]
    run.check(
        "retention",
        True,
        "; ".join(f"{d.index}: {d.action}, {d.why}" for d in decisions) or "no old index recorded",
    )
    run.metrics.update(
        gc_now=now.isoformat(),
        gc_deleted=len(deleted),
        gc_kept=len(held),
        gc_already_gone=sum(1 for d in decisions if d.action == "gone"),
    )
    if deleted:
        run.metrics["gc_deleted_indices"] = ",".join(deleted)
    if held:
        run.metrics["gc_kept_indices"] = ",".join(d.index for d in held)
    carry_outputs(run)
    if not deleted:
        return run.finish("noop", "no old index is due for deletion")
    what = "would delete" if opts.dry_run else "deleted"
    return run.finish(
        "succeeded", f"{what} {', '.join(deleted)} (retention expired; a rollback needing them is no longer possible)"
    )


# ------------------------------------------------------------------ break-lock


def break_lock_migration(bundle: Bundle, opts: RunOptions, reason: str, say: Callable[[str], None]) -> RunResult:
    """Remove the lock of the bundle's store, naming the previous holder in the receipt."""
    run = RunRecorder(bundle, opts, "break_lock")
    run.policy.append(f"lock broken by hand: {reason}")
    run.metrics["break_lock_reason"] = reason[:200]
    kinds = kinds_with("lock_breakable")
    if bundle.type not in kinds:
        run.check("store", False, f"break-lock supports {' and '.join(kinds)}, not {bundle.type}")
        return run.finish("failed", f"break-lock is not available for {bundle.type} (its locks end with the session)")
    store = open_store(bundle.type, opts.conn_id, use_hook=opts.use_hook)
    assert isinstance(store, LockBreaking)
    try:
        holder = store.lock_holder(bundle)
        if holder is not None:
            say(describe_holder(holder))
            _note_holder(run, holder)
            if not opts.dry_run:
                store.break_lock(bundle, holder, run_id=run.run_id, reason=reason)
    except RefusedError as exc:
        run.check("break_lock", False, str(exc))
        return run.finish("failed", str(exc))
    carry_outputs(run)
    if holder is None:
        run.check("break_lock", True, "no lock held")
        return run.finish("noop", "no lock was held; nothing to break")
    run.check("break_lock", True, f"removed the lock of run {holder.owner[:12]} held since {holder.since}")
    return run.finish("succeeded", f"lock of run {holder.owner} (held since {holder.since}) broken: {reason}")


def describe_holder(holder: LockHolder) -> str:
    stale = "stale" if holder.stale else "NOT stale: the holder may still be running"
    return f"lock held by run {holder.owner} since {holder.since} ({holder.age_seconds:.0f} s ago; {stale})" + (
        f", migration {holder.migration}" if holder.migration else ""
    )


def _note_holder(run: RunRecorder, holder: LockHolder) -> None:
    run.metrics.update(
        previous_holder=holder.owner,
        previous_holder_since=holder.since,
        previous_lock_age_seconds=round(holder.age_seconds, 1),
        previous_lock_stale=int(holder.stale),
    )
    if holder.migration:
        run.metrics["previous_holder_migration"] = holder.migration
