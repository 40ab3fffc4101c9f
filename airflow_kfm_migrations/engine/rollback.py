"""Undoing an applied migration: by hand (``rollback``), or as the compensation of a run
that committed before its gate refused (non-transactional stores, backfills)."""

from __future__ import annotations

import time
from collections.abc import Callable

from airflow_kfm_migrations.contracts.models import Baseline, DiffSummary, Finding
from airflow_kfm_migrations.declaration.bundle import Bundle
from airflow_kfm_migrations.engine.receipts import output_of_run
from airflow_kfm_migrations.engine.run import RunOptions, RunRecorder, RunResult, cancellable, cycle_collector_paused
from airflow_kfm_migrations.errors import LockedError
from airflow_kfm_migrations.evidence.diff import diff_objects
from airflow_kfm_migrations.stores.base import (
    BackfillEngine,
    Backfilling,
    BackfillSession,
    LegacyFingerprints,
    Store,
    StoreSession,
    open_store,
)


@cycle_collector_paused
def rollback_migration(bundle: Bundle, opts: RunOptions, reason: str | None = None) -> RunResult:
    """Run the rollback by hand; verify the store returns to the apply's pre-baseline.

    With a declared backfill, committed batches are first reversed (``rollback_set``,
    batched) and the ``verify_columns`` digest must equal its pre-backfill value. ``reason``
    (why it was asked for) is kept in the receipt's policy notes."""
    run = RunRecorder(bundle, opts, "rollback")
    if reason:
        run.policy.append(f"rollback requested by hand: {reason}")
    has_reverse = bool(getattr(getattr(bundle.declaration, "backfill", None), "rollback_set", None))
    if not bundle.by_role("rollback") and not has_reverse:
        run.check("rollback_artifact", False)
        return run.finish("failed", "the bundle has no rollback artifact")
    store = open_store(bundle.type, opts.conn_id, use_hook=opts.use_hook)
    status, reason, session = rollback_core(run, store, None)
    result = run.finish(status, reason)
    if status == "rolled_back" and session is not None:
        run.note_receipt(session, result)
    return result


def compensate(run: RunRecorder, s: StoreSession, why: str) -> RunResult:
    """Non-transactional: run the rollback artifact and verify the store equals pre."""
    assert run.pre is not None
    if not run.bundle.by_role("rollback"):
        run.check("rollback", False, "no rollback artifact")
        return run.finish("rollback_failed", f"{why}; no rollback artifact to compensate with")
    outcome = s.rollback()
    after = s.baseline()
    # The schema fingerprint leaves database- and cluster-level objects out; the store says
    # whether the run changed any (a non-transactional PostGIS run: any that changed).
    same = (
        after.schema_fingerprint == run.pre.schema_fingerprint
        and after.protected_fingerprint == run.pre.protected_fingerprint
        and not s.rollback_findings(run.pre, after)
    )
    run.post = after
    run.check(
        "rollback", outcome.ok and same, outcome.error or ("store equals pre" if same else "store differs from pre")
    )
    if outcome.ok and same:
        s.commit()
        return run.finish("rolled_back", f"{why}; compensated by the rollback artifact, store equals pre")
    s.abort()
    if same:  # the store is back at pre, but the rollback artifact itself failed on the way
        return run.finish("rollback_failed", f"{why}; the rollback artifact failed: {outcome.error}")
    differs = record_differences(run, run.pre, after)
    return run.finish("rollback_failed", f"{why}; rollback did not restore the pre-baseline{differs}")


ROLLBACK_DIFF = "diffs/rollback.json"  # what still differs after a refused or failed rollback
Outcome = tuple[str, str | None, StoreSession | None]
Say = Callable[[str | None], str | None]  # prefixes a reason with why the rollback runs


def rollback_core(run: RunRecorder, store: Store, why: str | None, eng: BackfillEngine | None = None) -> Outcome:
    """Undo an applied migration: reverse its backfill batches (when declared), then run the
    rollback artifact through the guard. Returns (status, reason, guard session or None).

    Shared by ``rollback`` and by a backfill that stopped (``why`` is then its reason)."""

    def say(text: str | None) -> str | None:
        return f"{why}; {text}" if why and text else (why or text)

    if getattr(run.bundle.declaration, "backfill", None) is not None:
        done = _reverse_backfill(run, store, say, eng)
        if done is not None:
            return done
    try:
        with store.session(run.bundle, run.run_id) as s, cancellable(run.opts, s):
            run.check("lock", True)
            return _guarded_rollback(run, store, s, say, why)
    except LockedError as exc:
        run.check("lock", False, str(exc))
        return "failed", say(str(exc)), None


def _reverse_backfill(run: RunRecorder, store: Store, say: Say, eng: BackfillEngine | None) -> Outcome | None:
    """Reverse a declared backfill's committed batches. Returns an outcome when the rollback
    ends here (refused, failed, or nothing more to undo), None to go on to the guard."""
    bundle = run.bundle
    bf = getattr(bundle.declaration, "backfill", None)
    assert bf is not None
    own = None
    if eng is None:
        if not isinstance(store, Backfilling):
            run.check("reverse_backfill", False, f"the {bundle.type} store does not run backfills")
            return "failed", say(f"the {bundle.type} store does not run backfills"), None
        own = eng = store.backfill_engine(bundle, run.opts.log, run.opts.progress)
    try:
        try:
            eng.lock()
        except LockedError as exc:
            run.check("lock", False, str(exc))
            return "failed", str(exc), None
        led = eng.ledger()
        if led is None or led[1] != "apply":
            run.check("ledger", False, "no applied run to roll back")
            return "noop", say("nothing to roll back (not applied, or already rolled back)"), None
        started = time.monotonic()
        ok, problem, forward_batches = eng.reverse()
        metrics = eng.metrics("reverse", started)
        if metrics["reverse_batches"]:
            run.metrics.update(metrics)
        if bf.rollback_set:
            run.check("reverse_backfill", ok, problem or f"{metrics['reverse_batches']} reverse batch(es)")
        if not ok:
            return "rollback_failed", say(f"{problem}; reverse progress kept, a re-run resumes it"), None
        if bf.rollback_set and forward_batches:
            same, detail = eng.verify_after_reverse()
            run.check("verify_columns", same, detail)
            if not same:
                return "rollback_failed", say(f"after the reverse backfill the {detail}"), None
        if not bundle.by_role("rollback"):
            eng.retire(run.run_id, eng.ROLLED_BACK)
            return "rolled_back", say("backfill reversed; the schema part stays (no rollback artifact)"), None
        return None
    finally:
        eng.unlock()
        if own is not None:
            own.close()


def _guarded_rollback(run: RunRecorder, store: Store, s: StoreSession, say: Say, why: str | None) -> Outcome:
    last = s.ledger_last()
    if last is None or last.operation != "apply":
        s.abort()
        run.check("ledger", False, "no applied run to roll back")
        return "noop", say("nothing to roll back (not applied, or already rolled back)"), None
    run.check("ledger", True, f"rolling back run {last.run_id[:12]}")
    run.pre = s.baseline()
    outcome = s.rollback()
    if run.opts.cancelled:  # asked to stop (Airflow's on_kill): the session stopped the script
        run.check("rollback", False, outcome.error or "stopped after its last statement")
        run.check("cancelled", False, run.opts.cancelled)
        s.abort()
        stopped = f"the rollback was stopped ({outcome.error or 'after its last statement'})"
        return "rollback_failed", say(f"{run.opts.cancelled}: {stopped}; nothing was recorded, run it again"), None
    if not outcome.ok:
        run.check("rollback", False, outcome.error)
        s.abort()
        return "rollback_failed", say(f"rollback script failed: {outcome.error}"), None
    run.post = s.baseline()
    same_schema = run.post.schema_fingerprint == last.pre_schema_fingerprint
    same_protected = run.post.protected_fingerprint == last.pre_protected_fingerprint
    if not (same_schema and same_protected) and isinstance(s, LegacyFingerprints):
        # An apply recorded by an earlier release, whose fingerprints meant something else.
        legacy_schema, legacy_protected = s.legacy_restored(
            _apply_pre_baseline(run, last.run_id), run.post, last.pre_schema_fingerprint, last.pre_protected_fingerprint
        )
        same_schema, same_protected = same_schema or legacy_schema, same_protected or legacy_protected
    run.check("schema_equals_pre", same_schema)
    run.check("protected_equals_pre", same_protected)
    # What the fingerprints leave out: a database- or cluster-level object the rollback changed.
    blockers = s.rollback_findings(run.pre, run.post)
    run.check(
        "global_objects_unchanged", not blockers, "; ".join(f"{f.object}: {f.message}" for f in blockers[:3]) or None
    )
    if blockers:
        s.abort()
        first = blockers[0]
        return (
            "rollback_failed",
            say(f"the rollback changed {first.object} ({first.code}: {first.message}); rollback not committed"),
            None,
        )
    same_rows = True
    if getattr(run.bundle.declaration, "backfill", None) is not None and isinstance(s, BackfillSession):
        for name, passed, detail in s.backfill_rollback_checks(run.run_id):
            run.check(name, passed, detail)
            same_rows = same_rows and passed
    if not (same_schema and same_protected and same_rows):
        s.abort()
        apply_pre = _apply_pre_baseline(run, last.run_id)
        if apply_pre is None:
            differs = "; the apply's pre-baseline is not in this artifacts folder, so only fingerprints were compared"
        else:
            differs = record_differences(run, apply_pre, run.post)
        return (
            "rollback_failed",
            say(f"after rollback the store does not equal the apply's pre-baseline{differs}; rollback not committed"),
            None,
        )
    s.record(run.ledger_record(store, "rollback", "rolled_back"))
    s.commit()
    return "rolled_back", say("compensated: store equals the apply's pre-baseline" if why else None), s


def _apply_pre_baseline(run: RunRecorder, apply_run_id: str) -> Baseline | None:
    """The pre-baseline the apply being undone recorded, when its receipt is in this folder."""
    path = output_of_run(run.dir, apply_run_id, "baseline_pre")
    if path is None:
        return None
    try:
        return Baseline.model_validate_json(path.read_bytes())
    except ValueError:  # unreadable evidence: say so through the fingerprint-only message
        return None


def record_differences(run: RunRecorder, target: Baseline, after: Baseline) -> str:
    """Write ``diffs/rollback.json`` (a diff_summary.v1 of what still differs from ``target``
    after a rollback, one hard-fail finding per object) and return a clause naming the first
    objects for the refusal's reason."""
    changes = diff_objects(target, after)
    findings = [
        Finding(
            code="rollback_incomplete",
            tier="hard_fail",
            object=c.id,
            message=f"{c.kind} {c.change} compared with the pre-baseline the rollback must restore",
        )
        for c in changes
    ]
    if target.protected_fingerprint != after.protected_fingerprint and not changes:
        findings.append(
            Finding(
                code="rollback_incomplete",
                tier="hard_fail",
                message="the protected-domain fingerprint differs from the pre-baseline",
            )
        )
    summary = DiffSummary(
        schema_version="diff_summary.v1",
        migration_id=run.bundle.migration_id,
        store=run.bundle.type,  # type: ignore[arg-type]
        pre_schema_fingerprint=target.schema_fingerprint,
        post_schema_fingerprint=after.schema_fingerprint,
        pre_protected_fingerprint=target.protected_fingerprint,
        post_protected_fingerprint=after.protected_fingerprint,
        changes=changes,
        writes=[],
        limits=[],
        findings=findings,
        verdict="fail",
    )
    run.add_output("rollback_diff", ROLLBACK_DIFF, summary.model_dump(mode="json", by_alias=True))
    for f in findings[:5]:
        run.opts.log(f"  differs: {f.object or '-'}: {f.message}")
    named = ", ".join(f"{c.id} ({c.change})" for c in changes[:3])
    more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
    if not changes:
        return f" (no object differs, but the fingerprints do; see {ROLLBACK_DIFF})"
    return f" ({len(changes)} object(s) differ: {named}{more}; see {ROLLBACK_DIFF})"
