"""The static plan of a graph migration: what each forward statement is and which labels
and relationship types it names, with the findings that refuse it before anything runs.

The same scope check reads the labels and types of the server's EXPLAIN plan in the
session's preflight (``scope_findings``), where batched statements are held to more
(``batched_findings``) and a DROP's object is looked up (``schema_findings``).
"""

from __future__ import annotations

import re

from airflow_kfm_migrations.contracts.models import Finding, GraphDeclaration
from airflow_kfm_migrations.declaration.approvals import approval_covers
from airflow_kfm_migrations.declaration.bundle import Bundle, display
from airflow_kfm_migrations.stores.base import Plan, PlannedStatement
from airflow_kfm_migrations.stores.graph.cypher import (
    CypherStatement,
    classify,
    in_transactions,
    mentions,
    plan_operators,
    schema_name,
    schema_targets,
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
            target = schema_targets(st.masked) if kind == "schema" else None
            if target:
                (types if target[0] == "relationship" else labels).update(target[1])
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
                note = "CALL … IN TRANSACTIONS commits in batches, while the protected nodes are held"
            statements.append(
                PlannedStatement(
                    index=i,
                    kind={"schema": "DDL", "data": "DML"}.get(kind, "other"),
                    statement=name,
                    targets=tuple(targets),
                    transactional=kind == "data" and not batched,
                    note=note,
                    file=display(art.path),
                    line=st.line,
                    text=st.text[len(st.masked) - len(st.masked.lstrip()) :],
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
            if kind == "schema" and name.startswith("create") and target is None:
                findings.append(unknown_schema_target(i, where))
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


def unknown_schema_target(i: int, where: str) -> Finding:
    return Finding(
        code="plan_schema_target_unknown",
        tier="hard_fail",
        object=where,
        message=f"statement {i} creates a constraint or index whose label or relationship type cannot be read "
        "(a token lookup index is for every label); schema statements commit at once and are never EXPLAINed",
    )


# Operators that bind nodes or relationships from the whole graph, without a label or type.
_UNBOUND = re.compile(r"AllNodesScan|AllRelationshipsScan|By(Element)?IdSeek")


def batched_findings(i: int, plan: dict | None) -> list[Finding]:
    """The hard failures of a batched statement (``CALL { … } IN TRANSACTIONS``, statement
    ``i``) read from its server plan: its batches commit before anything can check them, so
    it may not range over the whole graph (all-node or all-relationship scans, lookups by id),
    call procedures, or use labels or types built at run time. What it may still reach (a
    neighbour by expansion, a node that also carries a protected label) is held by the
    session's protected guard."""
    out: list[Finding] = []
    for op, details in plan_operators(plan):
        if _UNBOUND.search(op):
            why = f"binds nodes or relationships of any label ({op} {details})"
        elif op.startswith("ProcedureCall"):
            why = f"calls a procedure ({details.split('(')[0]})"
        elif ":" in details and mentions(details)[2]:
            why = f"uses a label or type built at run time ({op} {details})"
        else:
            continue
        out.append(
            Finding(
                code="plan_batched_unbound",
                tier="hard_fail",
                object=f"statement:{i}",
                message=f"statement {i} commits in batches (CALL … IN TRANSACTIONS) and {why}; "
                "a batched statement must reach its nodes through labels and relationship types",
            )
        )
    return out


SchemaObjects = dict[str, tuple[str, list[str]]]  # name -> (node | relationship, labels or types)


def schema_findings(
    decl: GraphDeclaration, scope: GraphScope, i: int, st: CypherStatement, live: SchemaObjects, known: SchemaObjects
) -> list[Finding]:
    """The hard failures of schema statement ``i``: the labels or types of what it creates
    (``scope_findings``; none readable: ``plan_schema_target_unknown``), or of the object a
    DROP names, looked up in the live schema (``live``) or else among the bundle's own
    CREATE statements (``known``). A DROP whose object exists nowhere drops nothing now; the
    session looks it up again just before it runs."""
    name = schema_name(st.masked)
    drop = classify(st.masked)[1].startswith("drop")
    if not drop:
        target = schema_targets(st.masked)
        if target is None:
            return [unknown_schema_target(i, f"statement:{i}")]
        entity, names = target
    elif name is not None and (name in live or name in known):
        entity, names = live[name] if name in live else known[name]
    else:
        return []  # nothing by that name exists now (a name given as a parameter fails at run time)
    if not names:
        return [
            Finding(
                code="plan_out_of_scope",
                tier="hard_fail",
                object=f"schema:{name}",
                message=f"statement {i} drops {name}, a token lookup index of every label or type",
            )
        ]
    if entity == "node":
        found = scope_findings(decl, scope, i, set(names), set())
    else:
        found = scope_findings(decl, scope, i, set(), set(names))
    if drop:
        found = [f.model_copy(update={"message": f"{f.message} (it drops {name})"}) for f in found]
    return found


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
