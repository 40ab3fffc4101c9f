"""Registry → one Airflow DAG per entry (``kfm_migration__<migration_id>``).

Parse-time discipline: no database, network or hook at parse time; only the registry
and each bundle's declaration are read. When a task runs, ``get_parsing_context()``
names its DAG and only that one is built. A broken bundle yields a DAG whose preflight
fails with the reason; it never breaks the other DAGs of the file.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

DAG_PREFIX = "kfm_migration__"


def _doc_md(entry: Any, decl: Any) -> str:
    lines = [
        f"### {entry.migration_id}",
        "",
        f"**Intent:** {decl.intent}" if decl else "",
        "",
        f"**Status:** `{entry.status}` · **Owner:** {entry.owner} · **Type:** {entry.type}",
        "",
    ]
    if decl is not None:
        lines += ["**Scope**", "", "| field | values |", "|---|---|"]
        for k, v in decl.scope.model_dump().items():
            if v:
                lines.append(f"| {k} | {', '.join(map(str, v)) if isinstance(v, list) else v} |")
        lines += ["", "**Limits**", "", "| limit | declared |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in decl.limits.model_dump().items()]
        lines += [
            "",
            f"**Change class:** {decl.approvals.change_class} · reviewers: "
            f"{', '.join(decl.approvals.required_reviewers)}",
        ]
    return "\n".join(lines)


def _assets(entry: Any, decl: Any, conn_id: str) -> list[Any]:
    if decl is None:
        return []
    uris: list[str] = []
    if decl.type == "postgis":
        schemas = [s for s in decl.scope.allowed_schemas if "*" not in s] or ["public"]
        for t in decl.scope.allowed_tables:
            if "*" in t:
                continue
            if "." in t:
                uris.append(f"postgis://{conn_id}/{t.replace('.', '/', 1)}")
            else:
                uris += [f"postgis://{conn_id}/{s}/{t}" for s in schemas]
    elif decl.type == "search":
        uris += [f"opensearch://{conn_id}/{a}" for a in decl.scope.allowed_aliases if "*" not in a]
    elif decl.type == "graph":
        uris += [f"neo4j://{conn_id}/{label}" for label in decl.scope.allowed_labels if "*" not in label]
    return [_asset(u) for u in sorted(set(uris))]


@functools.cache
def _asset(uri: str) -> Any:
    """Assets are immutable values, and building one costs ~0.4 ms (URI normalisation):
    migrations that touch the same table share one."""
    from airflow.sdk import Asset

    return Asset(uri)


def build_dag(entry: Any, bundles_root: Path, environment: str) -> Any:
    from airflow.sdk import DAG, Param, TriggerRule

    from .bundle import load_declaration
    from .operators import (
        ApplyOperator,
        BackfillOperator,
        BaselineOperator,
        DiffGateOperator,
        PreflightOperator,
        ReceiptOperator,
        RollbackOperator,
    )

    decl = None
    broken = None
    try:
        decl = load_declaration(bundles_root / entry.path)
    except Exception as exc:
        broken = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    conn_id = entry.conn_id or (decl.runner.conn_id if decl else None) or f"kfm_{entry.type}"
    tags = ["kfm-migration", entry.type]
    if decl is not None:
        tags.append(decl.approvals.change_class)
    schedule = entry.schedule if entry.type == "search" else None
    dag = DAG(
        dag_id=DAG_PREFIX + entry.migration_id,
        schedule=schedule,
        catchup=False,
        max_active_runs=1,
        tags=tags,
        params={
            "environment": Param(environment, enum=["dev", "stage", "prod"]),
            "dry_run": Param(False, type="boolean"),
        },
        doc_md=_doc_md(entry, decl) + (f"\n\n**Broken bundle:** {broken}" if broken else ""),
        description=(decl.intent if decl else f"broken bundle: {broken}")[:200],
    )
    # The owner goes to each task directly: DAG-level default_args would be deep-copied into
    # every operator at parse time (measured: most of a 1,000-DAG file's overhead).
    common = {"migration_id": entry.migration_id, "conn_id": conn_id, "dag": dag, "owner": entry.owner}
    pre = PreflightOperator(task_id="preflight", **common)
    b_pre = BaselineOperator(task_id="baseline_pre", phase="pre", **common)
    apply = ApplyOperator(task_id="apply", outlets=_assets(entry, decl, conn_id), **common)
    b_post = BaselineOperator(task_id="baseline_post", phase="post", **common)
    gate = DiffGateOperator(task_id="diff_gate", **common)
    rollback = RollbackOperator(task_id="rollback", trigger_rule=TriggerRule.ONE_FAILED, **common)
    receipt = ReceiptOperator(task_id="receipt", trigger_rule=TriggerRule.ALL_DONE, **common)
    chain = [pre, b_pre, apply, b_post, gate]
    if decl is not None and getattr(decl, "backfill", None) is not None:
        # Batches commit one by one with their progress: a retry resumes, never repeats a batch.
        chain.insert(3, BackfillOperator(task_id="backfill", **common))
    for a, b in zip(chain, chain[1:], strict=False):
        a >> b
    chain[2:] >> rollback
    [gate, rollback] >> receipt
    return dag


def build_dags(
    registry_path: str | Path | None = None, bundles_root: str | Path | None = None, environment: str | None = None
) -> dict[str, Any]:
    """All DAGs of the registry, or only the one a running task needs."""
    from airflow.sdk import get_parsing_context

    from .operators.common import settings
    from .registry import load_registry

    s = settings()
    reg_path = Path(registry_path) if registry_path else s.registry_path
    root = Path(bundles_root) if bundles_root else s.bundles_root
    env = environment or s.environment
    wanted = get_parsing_context().dag_id
    registry = load_registry(reg_path)
    dags: dict[str, Any] = {}
    for entry in registry.migrations:
        dag_id = DAG_PREFIX + entry.migration_id
        if wanted and wanted != dag_id:
            continue
        dags[dag_id] = build_dag(entry, root, env)
    return dags
