"""The static plan of a graph migration: what each forward statement is and which labels
and relationship types it names, with the findings that refuse it before anything runs.

The same scope check reads the labels and types of the server's EXPLAIN plan in the
session's preflight (``scope_findings``).
"""

from __future__ import annotations

from airflow_kfm_migrations.contracts.models import Finding, GraphDeclaration
from airflow_kfm_migrations.declaration.approvals import approval_covers
from airflow_kfm_migrations.declaration.bundle import Bundle, display
from airflow_kfm_migrations.stores.base import Plan, PlannedStatement
from airflow_kfm_migrations.stores.graph.cypher import (
    classify,
    in_transactions,
    mentions,
    schema_name,
    split_cypher,
    uses_graph,
)
from airflow_kfm_migrations.stores.graph.governance import GOVERNANCE_SCHEMA
from airflow_kfm_migrations.stores.graph.scope import GraphScope


def static_plan(bundle: Bundle, store: str) -> Plan:
    """The plan of the bundle's forward scripts (``store``: the kind the plan names)."""
    decl = bundle.declaration
    assert isinstance(decl, GraphDeclaration)
    scope = GraphScope(decl)
    statements: list[PlannedStatement] = []
    findings: list[Finding] = []
    i = 0
    for art in bundle.by_role("forward"):
        for st in split_cypher(art.text, display(art.path)):
            i += 1
            kind, name = classify(st.masked)
            labels, types, dynamic = mentions(st.masked)
            targets = [f"label:{x}" for x in sorted(labels)] + [f"rel:{x}" for x in sorted(types)]
            note = None
            if kind == "schema":
                sname = schema_name(st.masked)
                if sname:
                    targets.append(f"{name.split('_', 1)[1]}:{sname}")
                note = "schema: own transaction, cannot be rolled back (compensated by the rollback artifact)"
            elif kind == "other" and name == "procedure_call":
                note = "procedure call: effects are only visible in the observed diff"
            if dynamic:
                note = "dynamic labels or types hide from the static plan; the observed diff decides"
            batched = in_transactions(st.masked)
            if batched:
                note = "CALL … IN TRANSACTIONS commits in batches"
            statements.append(
                PlannedStatement(
                    index=i,
                    kind={"schema": "DDL", "data": "DML"}.get(kind, "other"),
                    statement=name,
                    targets=tuple(targets),
                    transactional=kind == "data" and not batched,
                    note=note,
                )
            )
            where = f"{art.rel}:{st.line}"
            if kind == "schema" and schema_name(st.masked) in GOVERNANCE_SCHEMA:
                findings.append(
                    Finding(
                        code="plan_forbidden_target",
                        tier="hard_fail",
                        object=where,
                        message=f"statement {i} changes the governance schema ({schema_name(st.masked)})",
                    )
                )
            if kind == "admin":
                findings.append(
                    Finding(
                        code="plan_admin_command",
                        tier="hard_fail",
                        object=where,
                        message=f"statement {i} is an administration command (databases, users, privileges)",
                    )
                )
            if uses_graph(st.masked):
                findings.append(
                    Finding(
                        code="plan_use_clause",
                        tier="hard_fail",
                        object=where,
                        message=f"statement {i} switches graphs with USE; the scope cannot be enforced",
                    )
                )
            findings.extend(scope_findings(decl, scope, i, labels, types))
    return Plan(decl.migration_id, store, tuple(statements), tuple(findings))


def scope_findings(
    decl: GraphDeclaration, scope: GraphScope, i: int, labels: set[str], types: set[str]
) -> list[Finding]:
    """The hard failures of statement ``i`` naming ``labels`` and ``types``: forbidden ones,
    protected labels no approval covers, and anything outside the allowed ones."""
    out: list[Finding] = []
    for label in sorted(labels):
        if scope.forbidden_label(label):
            out.append(
                Finding(
                    code="plan_forbidden_target",
                    tier="hard_fail",
                    object=f"label:{label}",
                    message=f"statement {i} targets the forbidden label :{label}",
                )
            )
        elif scope.protected_label(label):
            if not approval_covers(decl, f"protected:{label}"):
                out.append(
                    Finding(
                        code="plan_protected_target",
                        tier="hard_fail",
                        object=f"label:{label}",
                        message=f"statement {i} targets the protected label :{label} "
                        f"without an approval covering 'protected:{label}'",
                    )
                )
        elif not scope.allowed_label(label):
            out.append(
                Finding(
                    code="plan_out_of_scope",
                    tier="hard_fail",
                    object=f"label:{label}",
                    message=f"statement {i} targets :{label}, outside allowed_labels",
                )
            )
    for t in sorted(types):
        if scope.forbidden_type(t):
            out.append(
                Finding(
                    code="plan_forbidden_target",
                    tier="hard_fail",
                    object=f"rel:{t}",
                    message=f"statement {i} targets the forbidden relationship type :{t}",
                )
            )
        elif not scope.allowed_type(t):
            out.append(
                Finding(
                    code="plan_out_of_scope",
                    tier="hard_fail",
                    object=f"rel:{t}",
                    message=f"statement {i} targets [:{t}], outside allowed_relationship_types",
                )
            )
    return out
