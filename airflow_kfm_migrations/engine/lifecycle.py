"""The governed apply, shared by the CLI and the Airflow operators, one function per stage:

preflight → plan → lock → ledger → baseline pre → apply → baseline post → diff → gate
→ commit, or abort / compensate → receipt.

Every outcome but invalid input (exit 2, nothing written) ends with a receipt.

A run asked to stop (``RunOptions.cancel``: Airflow's ``on_kill``) has its session stop the
server-side work (``Cancellable``) and fails closed at the next stage: the transaction rolled
back, or what the run built deleted and compensated, the lock released, and a receipt whose
reason starts with why it was stopped.
"""

from __future__ import annotations

from airflow_kfm_migrations.declaration.bundle import Bundle
from airflow_kfm_migrations.engine.gate import blocking, verdict
from airflow_kfm_migrations.engine.preflight import preflight, requirements_check
from airflow_kfm_migrations.engine.rollback import compensate
from airflow_kfm_migrations.engine.run import (
    RunOptions,
    RunRecorder,
    RunResult,
    cancellable,
    cycle_collector_paused,
)
from airflow_kfm_migrations.errors import LockedError, RefusedError
from airflow_kfm_migrations.stores.base import BackfillSession, Store, StoreSession, open_store

PENDING_BACKFILL = "backfill_pending"  # the ledger status of an apply whose backfill is not complete


@cycle_collector_paused
def run_migration(bundle: Bundle, opts: RunOptions, store: Store | None = None) -> RunResult:
    """One governed apply. ``store``: an open store of the bundle's kind to run on (``migrate``
    runs a series on one store and connection), else one is opened for ``opts.conn_id``."""
    run = RunRecorder(bundle, opts, "apply")
    reason = preflight(run)
    if reason:
        return run.finish("failed", reason)
    if store is None:
        try:  # a kind whose client packages are missing: a receipt naming the pip install
            store = open_store(bundle.type, opts.conn_id, use_hook=opts.use_hook)
        except RefusedError as exc:
            run.check("store", False, str(exc))
            return run.finish("failed", str(exc))
    refusal = _static_plan(run, store)
    if refusal:
        return run.finish("failed", refusal)
    try:
        refusal = requirements_check(run, store)
    except RefusedError as exc:
        run.check("requires", False, str(exc))
        return run.finish("failed", str(exc))
    if refusal:
        return run.finish("failed", refusal)
    # Only a store that can undo a run without a trace rehearses it (PostgreSQL in one
    # transaction; blue/green search before the flip). Others stop after the plan.
    if opts.dry_run and not store.rehearsable(bundle):
        return run.finish("succeeded", "plan only: this migration cannot be rehearsed without side effects")
    if opts.cancelled:
        return _killed(run, "stopped before the store was locked; nothing was run")
    try:
        with store.session(bundle, run.run_id) as s, cancellable(opts, s):
            run.check("lock", True)
            note_recovery(run, s)
            return _locked(run, store, s)
    except LockedError as exc:
        run.check("lock", False, str(exc))
        return run.finish("failed", str(exc))
    except RefusedError as exc:
        run.check("store", False, str(exc))
        return run.finish("failed", str(exc))
    except Exception as exc:  # broad on purpose: a store call the cancellation interrupted, any error type
        if not opts.cancelled:
            raise
        # The session's exit rolled back (or aborted) and released the lock already.
        return _killed(run, f"the store call it interrupted failed ({type(exc).__name__}); the session was closed")


def _killed(run: RunRecorder, detail: str) -> RunResult:
    """A run stopped on request where nothing is left to undo."""
    why = run.opts.cancelled
    run.check("cancelled", False, why)
    return run.finish("failed", f"{why}; {detail}")


def _stopped(run: RunRecorder, s: StoreSession, during: str) -> RunResult:
    """A run stopped on request after the forward began: undone as a refusal is."""
    why = run.opts.cancelled
    run.check("cancelled", False, why)
    return _refuse(run, s, f"{why}: {during}", f"{why}: {during}; transaction rolled back, store unchanged")


def note_recovery(run: RunRecorder, s: StoreSession) -> None:
    """A session that cleaned up after a run that died says so in this run's receipt."""
    recovered = s.recovered()
    if recovered:
        run.check("recovery", True, recovered)
        run.policy.append(f"recovered an interrupted run: {recovered}")


def _static_plan(run: RunRecorder, store: Store) -> str | None:
    run.plan = store.plan(run.bundle)
    hard = [f for f in run.plan.findings if f.tier == "hard_fail"]
    run.check(
        "static_plan", not hard, "; ".join(f.message for f in hard[:3]) or f"{len(run.plan.statements)} statements"
    )
    return f"static plan refused: {hard[0].message}" if hard else None


def _locked(run: RunRecorder, store: Store, s: StoreSession) -> RunResult:
    """Under the store's lock: the ledger decides between a no-op, a refusal and a run."""
    last = s.ledger_last()
    if last is not None and last.operation == "apply":
        return _already_applied(run, store, s, last.artifacts, last.run_id, last.post_scope_fingerprint)
    run.check("ledger", True, "not applied yet" if last is None else f"last operation {last.operation}")
    run.pre = s.baseline()
    if run.opts.cancelled:
        s.abort()
        return _killed(run, "stopped before the forward ran; store unchanged")
    outcome = s.apply()
    run.metrics.update(outcome.metrics)
    run.metrics["statements"] = outcome.statements_run
    if run.opts.cancelled:
        run.check("apply", False, outcome.error or f"{outcome.statements_run} statements, then stopped")
        return _stopped(run, s, f"the forward was stopped ({outcome.error or 'after its last statement'})")
    if not outcome.ok:
        run.check("apply", False, outcome.error)
        return _refuse(
            run, s, f"forward failed: {outcome.error}", f"forward failed, transaction rolled back: {outcome.error}"
        )
    run.check("apply", True, f"{outcome.statements_run} statements")
    problem = _backfill_key(run, s)
    if problem:
        s.abort()
        return run.finish("failed", f"{problem}; transaction rolled back, store unchanged")
    run.post = s.baseline()
    run.summary = verdict(run.bundle, store, run.pre, run.post, outcome.writes, s.facts(run.pre, run.post))
    run.log_summary()
    blockers = blocking(run.summary)
    run.check("gate", not blockers, "; ".join(f"{f.code}: {f.message}" for f in blockers[:3]) or None)
    if blockers:
        first = f"{blockers[0].code}: {blockers[0].message}"
        return _refuse(
            run, s, f"gate refused: {first}", f"gate refused ({first}); transaction rolled back, store unchanged"
        )
    if run.opts.dry_run:
        s.abort()
        return run.finish("succeeded", "rehearsed in a transaction that was rolled back")
    if run.opts.cancelled:
        return _stopped(run, s, "stopped after the gate passed, before the commit")
    return _commit(run, store, s)


def _already_applied(
    run: RunRecorder, store: Store, s: StoreSession, artifacts: dict[str, str], last_run: str, post_scope: str
) -> RunResult:
    """The same migration was applied: a no-op, unless its artifacts changed since."""
    bundle, opts = run.bundle, run.opts
    current = {a.rel: a.sha256 for a in bundle.artifacts}
    changed = sorted(k for k in set(current) | set(artifacts) if current.get(k) != artifacts.get(k))
    if changed:
        run.check("ledger", False, f"changed since apply: {', '.join(changed)}")
        s.abort()
        return run.finish(
            "failed",
            f"{changed[0]} changed after {bundle.migration_id} was applied "
            f"(run {last_run[:12]}); write a new migration instead",
        )
    pre = s.baseline()
    drift = store.scope_fingerprint(bundle, pre) != post_scope
    run.check("ledger", True, f"already applied by run {last_run[:12]}")
    run.check("drift", not drift, "in-scope objects differ from the recorded post-baseline" if drift else None)
    s.abort()
    if drift:
        run.policy.append("drift: live in-scope fingerprint differs from the last recorded post-baseline")
        if opts.fail_on_drift:
            return run.finish("failed", "drift detected and --fail-on-drift is set")
    run.metrics["drift"] = int(drift)
    return run.finish("noop", f"already applied (run {last_run[:12]}); nothing to do")


def _backfill_key(run: RunRecorder, s: StoreSession) -> str | None:
    """With a declared backfill, its key is checked in the guard's transaction: the schema
    part may be what creates it."""
    if getattr(run.bundle.declaration, "backfill", None) is None:
        return None
    if not isinstance(s, BackfillSession):
        run.check("backfill_key", False, f"the {run.bundle.type} store does not run backfills")
        return f"the {run.bundle.type} store does not run backfills"
    problem, key = s.check_backfill_key()
    run.check("backfill_key", problem is None, problem or key)
    return problem


def _refuse(run: RunRecorder, s: StoreSession, compensate_why: str, rolled_back_why: str) -> RunResult:
    """Nothing of the run may stay: roll the transaction back, or compensate a store that
    committed as it went (``rollback`` artifact, then the store must equal pre)."""
    s.abort()
    if not s.transactional:
        return compensate(run, s, compensate_why)
    return run.finish("failed", rolled_back_why)


def _commit(run: RunRecorder, store: Store, s: StoreSession) -> RunResult:
    # With a backfill the entry stays pending until its last batch commits.
    pending = getattr(run.bundle.declaration, "backfill", None) is not None
    s.record(run.ledger_record(store, "apply", PENDING_BACKFILL if pending else "succeeded"))
    s.commit()
    assert run.summary is not None
    run.assets = store.assets(run.bundle, run.summary)
    result = run.finish("succeeded", None)
    run.note_receipt(s, result)
    return result
