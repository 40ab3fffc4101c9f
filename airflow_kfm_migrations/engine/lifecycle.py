"""The one governed lifecycle, shared by the CLI and the Airflow operators.

preflight (no writes) → lock → ledger (no-op / changed artifact / drift) → baseline pre
→ apply → baseline post → diff → gate → commit, or abort / compensate → receipt.
Every outcome but invalid input (exit 2, nothing written) ends with a receipt.
"""

from __future__ import annotations

import functools
import gc
import importlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from airflow_kfm_migrations.contracts.models import Baseline, DiffSummary, ValidationCheck, baseline_json
from airflow_kfm_migrations.declaration.bundle import Bundle
from airflow_kfm_migrations.declaration.policy import check_bundle
from airflow_kfm_migrations.declaration.registry import RUNNABLE_IN, find_entry, find_registry_for, load_registry
from airflow_kfm_migrations.engine.gate import blocking, verdict
from airflow_kfm_migrations.engine.receipts import carried_outputs, output_refs, write_receipt
from airflow_kfm_migrations.errors import KfmError, LockedError, RefusedError
from airflow_kfm_migrations.evidence.diff import touched_csv
from airflow_kfm_migrations.stores.base import ApplyOutcome, LedgerRecord, Plan, Store
from airflow_kfm_migrations.util.digest import write_bytes_atomic, write_json

STORES = {
    "postgis": "airflow_kfm_migrations.stores.postgis.store:PostgisStore",
    "search": "airflow_kfm_migrations.stores.search.store:SearchStore",
    "graph": "airflow_kfm_migrations.stores.graph.store:GraphStore",
}

_P = ParamSpec("_P")
_R = TypeVar("_R")

EXIT = {"succeeded": 0, "noop": 0, "failed": 1, "rolled_back": 1, "rollback_failed": 1}


def open_store(kind: str, conn_id: str, *, use_hook: bool = False, plan_only: bool = False) -> Store:
    if kind not in STORES:
        raise RefusedError(f"no governed runner for type {kind!r}; scope cannot be enforced, refusing")
    module, _, cls = STORES[kind].partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError:
        raise RefusedError(f"the {kind} store is not available in this version") from None
    klass = getattr(mod, cls)
    if plan_only:
        return klass.for_planning(conn_id)  # type: ignore[no-any-return]
    return klass.from_conn_id(conn_id, use_hook=use_hook)  # type: ignore[no-any-return]


@dataclass
class RunOptions:
    conn_id: str
    environment: str = "dev"
    artifacts_dir: Path | None = None
    dry_run: bool = False
    fail_on_drift: bool = False
    actor: str = "unknown"
    registry_path: Path | None = None
    use_hook: bool = False
    prov: bool = True
    log: Callable[[str], None] = print
    progress: Callable[[Any], None] | None = None  # backfill.BatchEvent after each batch


@dataclass
class RunResult:
    status: str
    reason: str | None
    receipt_path: Path | None
    summary: DiffSummary | None = None
    plan: Plan | None = None
    pre: Baseline | None = None
    post: Baseline | None = None
    receipt_digest: str | None = None
    checks: list[ValidationCheck] = field(default_factory=list)
    assets: list[str] = field(default_factory=list)
    operation: str = "apply"
    resumable: bool = False  # a backfill interrupted with its progress kept: a re-run resumes

    @property
    def exit_code(self) -> int:
        if self.operation == "rollback" and self.status == "rolled_back":
            return 0  # a rollback asked for and verified is a success
        return EXIT[self.status]


class _Run:
    """State of one run; every exit path goes through ``finish``."""

    def __init__(self, bundle: Bundle, opts: RunOptions, operation: str) -> None:
        self.bundle = bundle
        self.opts = opts
        self.operation = operation
        self.run_id = uuid.uuid4().hex
        self.started = datetime.now(UTC)
        self.dir = opts.artifacts_dir or bundle.root
        self.checks: list[ValidationCheck] = []
        self.policy: list[str] = []
        self.metrics: dict[str, int | float | str] = {}
        self.registry: dict[str, str | bool | None] = {"in_registry": False, "status": None, "note": None}
        self.pre: Baseline | None = None
        self.post: Baseline | None = None
        self.summary: DiffSummary | None = None
        self.plan: Plan | None = None
        self.outputs: list[tuple[str, Path]] = []
        self.assets: list[str] = []

    def check(self, name: str, passed: bool, detail: str | None = None) -> None:
        self.checks.append(ValidationCheck(name=name, passed=passed, detail=detail))
        self.opts.log(f"[{'pass' if passed else 'FAIL'}] {name}" + (f": {detail}" if detail else ""))

    def write_outputs(self) -> None:
        paths = self.bundle.declaration.artifacts
        if self.pre is not None:
            p = self.dir / paths.baselines.pre
            write_bytes_atomic(p, baseline_json(self.pre))
            self.outputs.append(("baseline_pre", p))
        if self.post is not None:
            p = self.dir / paths.baselines.post
            write_bytes_atomic(p, baseline_json(self.post))
            self.outputs.append(("baseline_post", p))
        if self.summary is not None:
            p = self.dir / paths.diffs.summary
            write_json(p, self.summary.model_dump(mode="json", by_alias=True))
            self.outputs.append(("diff_summary", p))
            t = self.dir / paths.diffs.touched
            writes = [(w.table, w.inserted, w.updated, w.deleted) for w in self.summary.writes]
            write_bytes_atomic(t, touched_csv(self.summary.changes, writes).encode())
            self.outputs.append(("diff_touched", t))

    def finish(self, status: str, reason: str | None) -> RunResult:
        if self.opts.dry_run:
            self.opts.log(f"dry run: {status}" + (f" ({reason})" if reason else "") + "; nothing was written")
            return RunResult(
                status,
                reason,
                None,
                self.summary,
                self.plan,
                self.pre,
                self.post,
                None,
                self.checks,
                operation=self.operation,
            )
        self.write_outputs()
        outputs = output_refs(self.dir, self.outputs)
        if status == "noop" and not outputs:
            # A no-op produced nothing new: the evidence of the state is still the last
            # run's outputs, carried forward so that verify keeps guarding them.
            outputs = carried_outputs(self.dir)
        path, receipt = write_receipt(
            self.dir,
            self.bundle,
            run_id=self.run_id,
            operation=self.operation,
            actor=self.opts.actor,
            started_at=self.started,
            environment=self.opts.environment,
            status=status,
            reason=reason,
            store={"kind": self.bundle.type, "conn_id": self.opts.conn_id},
            registry=self.registry,
            outputs=outputs,
            validation=self.checks,
            policy=self.policy,
            metrics=self.metrics,
        )
        prov_rel = self.bundle.declaration.artifacts.receipts.prov
        if self.opts.prov and prov_rel:
            from airflow_kfm_migrations.evidence.prov import prov_jsonld

            write_bytes_atomic(self.dir / prov_rel, prov_jsonld(receipt))
        return RunResult(
            status,
            reason,
            path,
            self.summary,
            self.plan,
            self.pre,
            self.post,
            receipt.receipt_digest,
            self.checks,
            self.assets,
            self.operation,
        )


def preflight(run: _Run) -> str | None:
    """Checks that write nothing. Returns a refusal reason, or None."""
    bundle, opts = run.bundle, run.opts
    problems = check_bundle(bundle)
    run.check("policy", not problems, "; ".join(p.line() for p in problems[:3]) or None)
    if problems:
        return problems[0].line()
    if getattr(bundle.declaration, "backfill", None) is not None:
        from airflow_kfm_migrations.engine.backfill import static_problems

        bf_problems = static_problems(bundle)
        run.check("backfill_plan", not bf_problems, "; ".join(bf_problems[:3]) or None)
        if bf_problems:
            return bf_problems[0]
    reg_path = opts.registry_path or find_registry_for(bundle.root)
    entry = None
    if reg_path is not None and reg_path.exists():
        entry = find_entry(load_registry(reg_path), bundle.migration_id)
    if entry is None:
        run.registry.update({"in_registry": False, "note": "bundle is outside any registry"})
        if opts.environment != "dev":
            run.check("registry", False, f"{opts.environment} runs need a registry entry")
            return f"{bundle.migration_id} is not in the registry; only dev runs may use unregistered bundles"
        run.policy.append("dev run of a bundle outside any registry")
        run.check("registry", True, "not registered (allowed in dev)")
    else:
        run.registry.update({"in_registry": True, "status": entry.status})
        if entry.status not in RUNNABLE_IN[opts.environment]:
            run.check("registry", False, f"status {entry.status}")
            return (
                f"registry status {entry.status!r} does not allow a {opts.environment} run "
                f"(needs one of {', '.join(sorted(RUNNABLE_IN[opts.environment]))})"
            )
        run.check("registry", True, f"status {entry.status}")
    decl = bundle.declaration
    if opts.environment in {"stage", "prod"}:
        approvers = {r.by for r in decl.approvals.recorded}
        missing = [r for r in decl.approvals.required_reviewers if r not in approvers]
        run.check("approvals", not missing, f"missing {', '.join(missing)}" if missing else None)
        if missing:
            return f"{opts.environment} run needs recorded approvals from: {', '.join(missing)}"
    return None


def _cycle_collector_paused(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` with Python's cyclic garbage collector paused (reference counting still
    frees everything as usual). A PostGIS run holds two baselines of 120k objects each, and
    every collection of the oldest generation would walk all of them: about a tenth of a run
    of a 10,000-table catalog. Cycles made meanwhile are collected once the run is over."""

    @functools.wraps(fn)
    def paused(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        collecting = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if collecting:
                gc.enable()

    return paused


@_cycle_collector_paused
def run_migration(bundle: Bundle, opts: RunOptions) -> RunResult:
    run = _Run(bundle, opts, "apply")
    reason = preflight(run)
    if reason:
        return run.finish("failed", reason)
    store = open_store(bundle.type, opts.conn_id, use_hook=opts.use_hook)
    run.plan = store.plan(bundle)
    hard = [f for f in run.plan.findings if f.tier == "hard_fail"]
    run.check(
        "static_plan", not hard, "; ".join(f.message for f in hard[:3]) or f"{len(run.plan.statements)} statements"
    )
    if hard:
        return run.finish("failed", f"static plan refused: {hard[0].message}")
    # Only a store that can undo a run without a trace rehearses it (PostgreSQL in one
    # transaction; blue/green search before the flip). Others stop after the plan.
    rehearsable = getattr(store, "rehearsable", None)
    if opts.dry_run and not (rehearsable and rehearsable(bundle)):
        return run.finish("succeeded", "plan only: this migration cannot be rehearsed without side effects")
    try:
        with store.session(bundle, run.run_id) as s:
            run.check("lock", True)
            last = s.ledger_last()
            if last is not None and last.operation == "apply":
                current = {a.rel: a.sha256 for a in bundle.artifacts}
                changed = sorted(
                    k for k in set(current) | set(last.artifacts) if current.get(k) != last.artifacts.get(k)
                )
                if changed:
                    run.check("ledger", False, f"changed since apply: {', '.join(changed)}")
                    s.abort()
                    return run.finish(
                        "failed",
                        f"{changed[0]} changed after {bundle.migration_id} was applied "
                        f"(run {last.run_id[:12]}); write a new migration instead",
                    )
                pre = s.baseline()
                live = store.scope_fingerprint(bundle, pre)
                drift = live != last.post_scope_fingerprint
                run.check("ledger", True, f"already applied by run {last.run_id[:12]}")
                run.check(
                    "drift", not drift, "in-scope objects differ from the recorded post-baseline" if drift else None
                )
                s.abort()
                if drift:
                    run.policy.append("drift: live in-scope fingerprint differs from the last recorded post-baseline")
                    if opts.fail_on_drift:
                        return run.finish("failed", "drift detected and --fail-on-drift is set")
                run.metrics["drift"] = int(drift)
                return run.finish("noop", f"already applied (run {last.run_id[:12]}); nothing to do")
            run.check("ledger", True, "not applied yet" if last is None else f"last operation {last.operation}")
            run.pre = s.baseline()
            outcome = s.apply()
            run.metrics.update(outcome.metrics)
            run.metrics["statements"] = outcome.statements_run
            if not outcome.ok:
                run.check("apply", False, outcome.error)
                s.abort()
                if not s.transactional:
                    return _compensate(run, store, s, f"forward failed: {outcome.error}")
                return run.finish("failed", f"forward failed, transaction rolled back: {outcome.error}")
            run.check("apply", True, f"{outcome.statements_run} statements")
            bf = getattr(bundle.declaration, "backfill", None)
            if bf is not None:  # checked in the guard's transaction: the schema part may create the key
                from airflow_kfm_migrations.engine.backfill import check_key

                with s.conn.cursor() as cur:  # type: ignore[attr-defined]
                    problem, key_type = check_key(cur, bf)
                run.check("backfill_key", problem is None, problem or f"{bf.key_column} ({key_type}) unique, not null")
                if problem:
                    s.abort()
                    return run.finish("failed", f"{problem}; transaction rolled back, store unchanged")
            run.post = s.baseline()
            run.summary = verdict(bundle, store, run.pre, run.post, outcome.writes, s.facts(run.pre, run.post))
            _log_summary(run)
            blockers = blocking(run.summary)
            run.check("gate", not blockers, "; ".join(f"{f.code}: {f.message}" for f in blockers[:3]) or None)
            if blockers:
                s.abort()
                if not s.transactional:
                    return _compensate(run, store, s, f"gate refused: {blockers[0].code}: {blockers[0].message}")
                return run.finish(
                    "failed",
                    f"gate refused ({blockers[0].code}: {blockers[0].message}); "
                    "transaction rolled back, store unchanged",
                )
            if opts.dry_run:
                s.abort()
                return run.finish("succeeded", "rehearsed in a transaction that was rolled back")
            # With a backfill the entry stays pending until its last batch commits.
            pending = getattr(bundle.declaration, "backfill", None) is not None
            from airflow_kfm_migrations.engine.backfill import PENDING

            s.record(_ledger(run, store, "apply", PENDING if pending else "succeeded"))
            s.commit()
            run.assets = store.assets(bundle, run.summary)
            result = run.finish("succeeded", None)
            _note_receipt(s, run, result)
            return result
    except LockedError as exc:
        run.check("lock", False, str(exc))
        return run.finish("failed", str(exc))
    except KfmError as exc:
        if isinstance(exc, RefusedError):
            run.check("store", False, str(exc))
            return run.finish("failed", str(exc))
        raise


def _ledger(run: _Run, store: Store, operation: str, status: str) -> LedgerRecord:
    assert run.pre is not None and run.post is not None
    return LedgerRecord(
        migration_id=run.bundle.migration_id,
        operation=operation,
        status=status,
        bundle_digest=run.bundle.digest,
        artifacts={a.rel: a.sha256 for a in run.bundle.artifacts},
        environment=run.opts.environment,
        run_id=run.run_id,
        pre_schema_fingerprint=run.pre.schema_fingerprint,
        pre_protected_fingerprint=run.pre.protected_fingerprint,
        post_schema_fingerprint=run.post.schema_fingerprint,
        post_scope_fingerprint=store.scope_fingerprint(run.bundle, run.post),
    )


def _note_receipt(session: Any, run: _Run, result: RunResult) -> None:
    setter = getattr(session, "set_receipt_digest", None)
    if setter and result.receipt_digest and not run.opts.dry_run:
        try:
            setter(run.run_id, result.receipt_digest)
        except Exception as exc:  # the run itself is done; record the gap in the log
            run.opts.log(f"note: could not store the receipt digest in the ledger ({type(exc).__name__})")


def _compensate(run: _Run, store: Store, s: Any, why: str) -> RunResult:
    """Non-transactional: run the rollback artifact and verify the store equals pre."""
    assert run.pre is not None
    if not run.bundle.by_role("rollback"):
        run.check("rollback", False, "no rollback artifact")
        return run.finish("rollback_failed", f"{why}; no rollback artifact to compensate with")
    outcome: ApplyOutcome = s.rollback()
    after = s.baseline()
    same = after.schema_fingerprint == run.pre.schema_fingerprint and (
        after.protected_fingerprint == run.pre.protected_fingerprint
    )
    run.post = after
    run.check(
        "rollback", outcome.ok and same, outcome.error or ("store equals pre" if same else "store differs from pre")
    )
    if outcome.ok and same:
        s.commit()
        return run.finish("rolled_back", f"{why}; compensated by the rollback artifact, store equals pre")
    s.abort()
    return run.finish("rollback_failed", f"{why}; rollback did not restore the pre-baseline")


@_cycle_collector_paused
def rollback_migration(bundle: Bundle, opts: RunOptions) -> RunResult:
    """Run the rollback by hand; verify the store returns to the apply's pre-baseline.

    With a declared backfill, committed batches are first reversed (``rollback_set``,
    batched) and the ``verify_columns`` digest must equal its pre-backfill value."""
    run = _Run(bundle, opts, "rollback")
    has_reverse = bool(getattr(getattr(bundle.declaration, "backfill", None), "rollback_set", None))
    if not bundle.by_role("rollback") and not has_reverse:
        run.check("rollback_artifact", False)
        return run.finish("failed", "the bundle has no rollback artifact")
    store = open_store(bundle.type, opts.conn_id, use_hook=opts.use_hook)
    status, reason, session = rollback_core(run, store, None)
    result = run.finish(status, reason)
    if status == "rolled_back" and session is not None:
        _note_receipt(session, run, result)
    return result


def rollback_core(run: _Run, store: Store, why: str | None, eng: Any = None) -> tuple[str, str | None, Any]:
    """Undo an applied migration: reverse its backfill batches (when declared), then run the
    rollback artifact through the guard. Returns (status, reason, guard session or None).

    Shared by ``rollback`` and by a backfill that stopped (``why`` is then its reason)."""
    bundle, opts = run.bundle, run.opts
    bf = getattr(bundle.declaration, "backfill", None)

    def say(text: str | None) -> str | None:
        return f"{why}; {text}" if why and text else (why or text)

    own = None
    if bf is not None:
        import time as _time

        from airflow_kfm_migrations.engine.backfill import (
            ROLLED_BACK,
            Engine,
            Totals,
            _metrics,
            reverse,
            verify_after_reverse,
        )

        if eng is None:
            conn = store._connect()  # type: ignore[attr-defined]
            conn.autocommit = False
            own = eng = Engine(conn, bundle, opts.log, opts.progress)
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
            t0 = _time.monotonic()
            totals = Totals()
            ok, problem, forward_batches = reverse(eng, totals, t0)
            if totals.batches:
                _metrics(run, totals, t0, "reverse")
            if bf.rollback_set:
                run.check("reverse_backfill", ok, problem or f"{totals.batches} reverse batch(es)")
            if not ok:
                return "rollback_failed", say(f"{problem}; reverse progress kept, a re-run resumes it"), None
            if bf.rollback_set and forward_batches:
                same, detail = verify_after_reverse(eng)
                run.check("verify_columns", same, detail)
                if not same:
                    return "rollback_failed", say(f"after the reverse backfill the {detail}"), None
            if not bundle.by_role("rollback"):
                with eng.conn.cursor() as cur:
                    eng.retire(cur, run.run_id)
                    eng.set_ledger_status(cur, ROLLED_BACK)
                eng.conn.commit()
                return "rolled_back", say("backfill reversed; the schema part stays (no rollback artifact)"), None
        finally:
            eng.unlock()
            if own is not None:
                try:
                    own.conn.close()
                except Exception:
                    pass
    try:
        with store.session(bundle, run.run_id) as s:
            run.check("lock", True)
            last = s.ledger_last()
            if last is None or last.operation != "apply":
                s.abort()
                run.check("ledger", False, "no applied run to roll back")
                return "noop", say("nothing to roll back (not applied, or already rolled back)"), None
            run.check("ledger", True, f"rolling back run {last.run_id[:12]}")
            run.pre = s.baseline()
            outcome = s.rollback()
            if not outcome.ok:
                run.check("rollback", False, outcome.error)
                s.abort()
                return "rollback_failed", say(f"rollback script failed: {outcome.error}"), None
            run.post = s.baseline()
            same_schema = run.post.schema_fingerprint == last.pre_schema_fingerprint
            same_protected = run.post.protected_fingerprint == last.pre_protected_fingerprint
            run.check("schema_equals_pre", same_schema)
            run.check("protected_equals_pre", same_protected)
            same_rows = True
            if bf is not None:
                same_rows = _backfill_rollback_checks(run, s, bf)
            if not (same_schema and same_protected and same_rows):
                s.abort()
                return (
                    "rollback_failed",
                    say("after rollback the store does not equal the apply's pre-baseline; rollback not committed"),
                    None,
                )
            s.record(_ledger(run, store, "rollback", "rolled_back"))
            s.commit()
            return "rolled_back", say("compensated: store equals the apply's pre-baseline" if why else None), s
    except LockedError as exc:
        run.check("lock", False, str(exc))
        return "failed", say(str(exc)), None


def _backfill_rollback_checks(run: _Run, s: Any, bf: Any) -> bool:
    """Inside the rollback transaction: verify_columns (when no rollback_set reversed them
    already) and retiring the backfill's progress, atomically with the rollback."""
    import psycopg

    from airflow_kfm_migrations.engine.backfill import Engine

    eng = Engine(s.conn, run.bundle, run.opts.log, None)
    try:
        with s.conn.cursor() as cur:
            if bf.verify_columns and not bf.rollback_set:
                from airflow_kfm_migrations.stores.postgis.catalog import LEDGER_SCHEMA

                cur.execute(
                    f"SELECT last_key FROM {LEDGER_SCHEMA}.backfill_progress WHERE migration_id = %s "
                    "AND run_key = %s AND batch_no = 0",
                    (run.bundle.migration_id, eng.key),
                )
                row = cur.fetchone()
                if row is not None:
                    same = eng.verify_digest(cur) == row[0]
                    run.check("verify_columns", same, "digest equals pre" if same else "digest differs from pre")
                    if not same:
                        return False
            eng.retire(cur, run.run_id)
    except psycopg.Error as exc:
        from airflow_kfm_migrations.stores.postgis.store import _db_error

        run.check("verify_columns", False, _db_error(exc))
        return False
    return True


def _log_summary(run: _Run) -> None:
    s = run.summary
    if s is None:
        return
    run.opts.log(f"diff: {len(s.changes)} object change(s), {sum(1 for w in s.writes)} table(s) written")
    for lc in s.limits:
        run.opts.log(
            f"  limit {lc.name}: observed {lc.observed} / declared {lc.declared} {'ok' if lc.ok else 'EXCEEDED'}"
        )
    for f in s.findings:
        if f.tier != "informational":
            run.opts.log(
                f"  {f.tier} {f.code} {f.object or ''}: {f.message}"
                + (f" (approved by {f.approved_by})" if f.approved_by else "")
            )
    run.opts.log(f"verdict: {s.verdict}")
