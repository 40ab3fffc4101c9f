"""Preflight: every check that writes nothing, before a store is touched."""

from __future__ import annotations

from airflow_kfm_migrations.declaration.approvals import approval_covers
from airflow_kfm_migrations.declaration.bundle import DECLARATION_FILE, Bundle, display
from airflow_kfm_migrations.declaration.policy import check_bundle
from airflow_kfm_migrations.declaration.registry import (
    RUNNABLE_IN,
    SKIP_STAGE,
    find_entry,
    find_registry_for,
    load_registry,
)
from airflow_kfm_migrations.engine.run import RunRecorder
from airflow_kfm_migrations.errors import InputError, PolicyError
from airflow_kfm_migrations.stores.base import Backfilling, LedgerRecord, Store, open_store

APPLIED = "succeeded"  # the ledger status of an apply that is complete (its backfill too)


def backfill_problems(bundle: Bundle) -> list[str]:
    """Static checks of a declared backfill, by the store kind that runs it (no connection)."""
    if getattr(bundle.declaration, "backfill", None) is None:
        return []
    store = open_store(bundle.type, "-", plan_only=True)
    if not isinstance(store, Backfilling):
        return [f"backfill: the {bundle.type} store does not run backfills"]
    return store.backfill_problems(bundle)


def bundle_problems(bundle: Bundle) -> list[InputError]:
    """What ``validate`` and preflight refuse in a loaded bundle: the declaration's policy,
    then the static checks of its backfill."""
    problems = check_bundle(bundle)
    f = display(bundle.root / DECLARATION_FILE)
    problems += [PolicyError(f, "backfill", reason) for reason in backfill_problems(bundle)]
    return problems


def preflight(run: RunRecorder) -> str | None:
    """Checks that write nothing. Returns a refusal reason, or None."""
    bundle, opts = run.bundle, run.opts
    problems = bundle_problems(bundle)
    run.check("policy", not problems, "; ".join(p.line() for p in problems[:3]) or None)
    if problems:
        return problems[0].line()
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
        skipped_by = approval_covers(bundle.declaration, SKIP_STAGE)
        if opts.environment == "prod" and entry.status == "executed_dev" and skipped_by:
            # Straight from dev to prod, on an approval covering skip:executed_stage.
            run.policy.append(f"prod run without stage, approved by {skipped_by}")
        elif entry.status not in RUNNABLE_IN[opts.environment]:
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


def applied_ids(entries: list[LedgerRecord]) -> set[str]:
    """The migrations whose newest ledger entry (``entries`` newest first) is a complete apply."""
    seen: set[str] = set()
    applied: set[str] = set()
    for e in entries:
        if e.migration_id in seen:
            continue
        seen.add(e.migration_id)
        if e.operation == "apply" and e.status == APPLIED:
            applied.add(e.migration_id)
    return applied


def unmet_requirements(bundle: Bundle, store: Store, applied: set[str] | None = None) -> list[str]:
    """The ids in the declaration's ``requires`` that are not applied in ``store`` (read from
    its ledger, without locks or writes, unless ``applied`` says already)."""
    required = list(getattr(bundle.declaration, "requires", None) or [])
    if not required:
        return []
    if applied is None:
        applied = applied_ids(store.ledger_entries(None))
    return [r for r in required if r not in applied]


def requirements_check(run: RunRecorder, store: Store, applied: set[str] | None = None) -> str | None:
    """Preflight's last check, the one that reads the store: every migration the declaration
    ``requires`` must be applied there. Returns a refusal reason, or None."""
    if not getattr(run.bundle.declaration, "requires", None):
        return None
    missing = unmet_requirements(run.bundle, store, applied)
    run.check("requires", not missing, f"not applied: {', '.join(missing)}" if missing else "all applied")
    if missing:
        return (
            f"{run.bundle.migration_id} requires {', '.join(missing)}, not applied on {run.opts.conn_id}; "
            "apply them first (kfm-migrations migrate applies pending migrations in order)"
        )
    return None
