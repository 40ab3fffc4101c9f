"""Preflight: every check that writes nothing, before a store is touched."""

from __future__ import annotations

from airflow_kfm_migrations.declaration.bundle import DECLARATION_FILE, Bundle, display
from airflow_kfm_migrations.declaration.policy import check_bundle
from airflow_kfm_migrations.declaration.registry import RUNNABLE_IN, find_entry, find_registry_for, load_registry
from airflow_kfm_migrations.engine.run import RunRecorder
from airflow_kfm_migrations.errors import InputError, PolicyError
from airflow_kfm_migrations.stores.base import Backfilling, open_store


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
