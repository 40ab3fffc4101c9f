"""PostGIS static plan: statements parsed with pglast, classified, their targets named, and
the plan's findings (cluster statements, transaction control, targets outside the scope)."""

from __future__ import annotations

import fnmatch
from typing import Any

from pglast import ast

from airflow_kfm_migrations.contracts.models import Finding, PostgisDeclaration
from airflow_kfm_migrations.declaration.approvals import approval_covers
from airflow_kfm_migrations.declaration.bundle import Bundle, display
from airflow_kfm_migrations.stores.base import Plan, PlannedStatement
from airflow_kfm_migrations.stores.postgis.locks import describe as describe_lock
from airflow_kfm_migrations.stores.postgis.procedural import TransactionControl
from airflow_kfm_migrations.stores.postgis.reads import plan_reads
from airflow_kfm_migrations.stores.postgis.scope import PgScope
from airflow_kfm_migrations.stores.postgis.sql_text import split_sql
from airflow_kfm_migrations.stores.postgis.targets import Target, statement_targets

# ----------------------------------------------------------------------------- plan

_NON_TRANSACTIONAL = {
    "VacuumStmt",
    "CreatedbStmt",
    "DropdbStmt",
    "AlterSystemStmt",
    "CreateTableSpaceStmt",
    "DropTableSpaceStmt",
    "ReindexStmt",
    "CreateSubscriptionStmt",
    "DropSubscriptionStmt",
}
CLUSTER_STATEMENTS = {
    "CreateRoleStmt",
    "AlterRoleStmt",
    "AlterRoleSetStmt",
    "DropRoleStmt",
    "GrantRoleStmt",
    "ReassignOwnedStmt",
    "AlterSystemStmt",
    "CreatedbStmt",
    "DropdbStmt",
    "AlterDatabaseStmt",
    "AlterDatabaseSetStmt",
    "AlterDatabaseRefreshCollStmt",
    "CreateTableSpaceStmt",
    "DropTableSpaceStmt",
    "AlterTableSpaceOptionsStmt",
    "LoadStmt",
    "CreateEventTrigStmt",
    "AlterEventTrigStmt",
    "CreateSubscriptionStmt",
    "AlterSubscriptionStmt",
    "DropSubscriptionStmt",
    "CreateUserMappingStmt",
    "AlterUserMappingStmt",
    "DropUserMappingStmt",
}
_DML = {"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "CopyStmt", "TruncateStmt", "SelectStmt"}
_OTHER = {
    "VariableSetStmt",
    "VariableShowStmt",
    "TransactionStmt",
    "DoStmt",
    "CallStmt",
    "ExplainStmt",
    "LockStmt",
    "NotifyStmt",
    "CheckPointStmt",
    "DiscardStmt",
}


def search_path_of(stmt: ast.VariableSetStmt) -> list[str] | None:
    if (stmt.name or "").lower() != "search_path" or not stmt.args:
        return None
    out = []
    for a in stmt.args:
        val = getattr(getattr(a, "val", None), "sval", None)
        if val:
            out.append(val)
    return out


def plan_sql(text: str, file: str) -> list[tuple[str, Any]]:
    """Split and parse; unparseable SQL is an input error naming ``file:line:column``."""
    return [(st.text, st.stmt) for st in split_sql(text, file)]


def default_schema(search_path: list[str]) -> str:
    """Where an unqualified name goes: the first schema of the search path."""
    return next((s for s in search_path if s != "$user"), "public")


def classify_statement(stmt: Any, search_path: list[str]) -> tuple[str, list[str], bool, str | None]:
    """(kind, targets in SQL terms, can run in a transaction, note)."""
    name = type(stmt).__name__
    transactional = name not in _NON_TRANSACTIONAL
    note = None
    if isinstance(stmt, ast.IndexStmt) and stmt.concurrent:
        transactional = False
    if isinstance(stmt, ast.DropStmt) and getattr(stmt, "concurrent", False):
        transactional = False
    if isinstance(stmt, ast.ReindexStmt) and any(
        getattr(getattr(p, "defname", None), "lower", lambda: "")() == "concurrently" for p in (stmt.params or [])
    ):
        transactional = False
    targets = sorted({t.text for t in statement_targets(stmt, default_schema(search_path))})
    if isinstance(stmt, ast.DoStmt) or isinstance(stmt, ast.CreateFunctionStmt):
        note = "procedural code hides from the static plan; the observed diff decides"
    if isinstance(stmt, ast.CallStmt):
        note = "procedure call: effects are only visible in the observed diff"
    kind = "DML" if name in _DML else "other" if name in _OTHER else "DDL"
    if isinstance(stmt, ast.SelectStmt) and stmt.intoClause is None:
        kind = "other"
    return kind, targets, transactional, note


# ----------------------------------------------------------------------- findings


def static_plan(bundle: Bundle, store_kind: str) -> Plan:
    """The statements of the forward scripts, classified, and what the plan refuses or notes."""
    decl = bundle.declaration
    assert isinstance(decl, PostgisDeclaration)
    scope = PgScope(decl)
    statements: list[PlannedStatement] = []
    findings: list[Finding] = []
    i = 0
    procedural = TransactionControl()
    for art in bundle.by_role("forward"):
        search_path = ["$user", "public"]
        for st in split_sql(art.text, display(art.path)):
            text, stmt = st.text, st.stmt
            i += 1
            if isinstance(stmt, ast.VariableSetStmt):
                sp = search_path_of(stmt)
                if sp:
                    search_path = sp
            kind, targets, transactional, note = classify_statement(stmt, search_path)
            statements.append(
                PlannedStatement(
                    i,
                    kind,
                    type(stmt).__name__,
                    tuple(targets),
                    transactional,
                    note,
                    file=display(art.path),
                    line=st.line,
                    text=text,
                    lock=describe_lock(stmt, default_schema(search_path)),
                )
            )
            if type(stmt).__name__ in CLUSTER_STATEMENTS or (
                isinstance(stmt, ast.CopyStmt) and getattr(stmt, "is_program", False)
            ):
                findings.append(
                    Finding(
                        code="cluster_statement",
                        tier="hard_fail",
                        object=f"statement {i}",
                        message=f"{type(stmt).__name__} acts outside any schema (roles, databases, system "
                        "settings, server programs); a migration may not run it",
                    )
                )
            if isinstance(stmt, ast.TransactionStmt):
                findings.append(
                    Finding(
                        code="transaction_control",
                        tier="hard_fail",
                        object=f"statement {i}",
                        message="the runner owns the transaction; remove BEGIN/COMMIT/ROLLBACK",
                    )
                )
            # COMMIT inside a DO block or a procedure: no mode can run it, and the way out is a backfill.
            commits = procedural.check(i, stmt, text, default_schema(search_path))
            if commits:
                findings.append(
                    Finding(
                        code="procedural_transaction_control",
                        tier="hard_fail",
                        object=f"statement {i}",
                        message=procedural.message(commits),
                    )
                )
            if not transactional and decl.transactional:
                findings.append(
                    Finding(
                        code="non_transactional_statement",
                        tier="hard_fail",
                        object=f"statement {i}",
                        message=f"{type(stmt).__name__} cannot run in a transaction; declare "
                        "transactional: false with a reason",
                    )
                )
            if not decl.transactional and not commits and (note or isinstance(stmt, (ast.SelectStmt, ast.ExecuteStmt))):
                # Without the transaction nothing undoes what the gate refuses, so the
                # static plan must see every effect before the first write.
                findings.append(
                    Finding(
                        code="opaque_non_transactional",
                        tier="hard_fail",
                        object=f"statement {i}",
                        message=f"{type(stmt).__name__} can hide its effects from the static plan, and a "
                        "transactional: false run cannot roll them back; run it in a transactional migration",
                    )
                )
            elif note:
                findings.append(
                    Finding(code="opaque_statement", tier="informational", object=f"statement {i}", message=note)
                )
            # Guarded tables it only reads (SELECT, INSERT ... SELECT, CTAS...): judged as reads.
            only_read, read_findings = plan_reads(decl, scope, stmt, search_path, i)
            findings.extend(read_findings)
            for t in statement_targets(stmt, default_schema(search_path)):
                if t.text in only_read:
                    continue
                found = _target_finding(i, stmt, t, scope, decl)
                if found is not None:
                    findings.append(found)
    return Plan(bundle.migration_id, store_kind, tuple(statements), tuple(findings))


def _target_finding(i: int, stmt: Any, t: Target, scope: PgScope, decl: PostgisDeclaration) -> Finding | None:
    """What the scope says about one target of statement ``i``: forbidden, protected without
    approval, outside the allowed scope (a database-level object always is), or nothing."""
    if t.schema is None:
        return Finding(
            code="plan_out_of_scope",
            tier="hard_fail",
            object=t.text,
            message=f"statement {i} targets {t.text}, a database-level object no scope can allow",
        )
    if scope.forbidden(t.schema, t.name):
        return Finding(
            code="plan_forbidden_target",
            tier="hard_fail",
            object=t.text,
            message=f"statement {i} targets forbidden {t.text}",
        )
    if scope.protected(t.schema, t.name) and not any(
        approval_covers(decl, f"protected:{token}") for token in protection_tokens(decl, t)
    ):
        return Finding(
            code="plan_protected_target",
            tier="hard_fail",
            object=t.text,
            message=f"statement {i} targets protected {t.text} without approval",
        )
    if not scope.allowed(t.schema, t.name) and not _index_of_allowed(stmt, scope, t):
        return Finding(
            code="plan_out_of_scope",
            tier="hard_fail",
            object=t.text,
            message=f"statement {i} targets {t.text}, outside the allowed scope",
        )
    return None


def protection_tokens(decl: PostgisDeclaration, t: Target) -> set[str]:
    """What ``protected:<token>`` may name to approve a statement on target ``t``: its name as
    the plan writes it, ``schema.name``, or a ``protected_tables`` / ``protected_schemas``
    pattern of the declaration, as written, that matches it (as the gate and the policy
    check accept: one approval satisfies all three)."""
    tokens = {t.text, f"{t.schema}.{t.name}"}
    for p in decl.scope.protected_tables:
        if t.name and fnmatch.fnmatchcase(f"{t.schema}.{t.name}" if "." in p else t.name, p):
            tokens.add(p)
    tokens.update(p for p in decl.scope.protected_schemas if t.schema and fnmatch.fnmatchcase(t.schema, p))
    return tokens


def _index_of_allowed(stmt: Any, scope: PgScope, target: Target) -> bool:
    """An index is in scope when its table is. CREATE INDEX names both; DROP INDEX (and
    COMMENT ON INDEX...) names only the index, so its schema must be allowed and the
    observed diff decides."""
    if isinstance(stmt, ast.IndexStmt) and stmt.relation is not None:
        return scope.allowed(target.schema, stmt.relation.relname)
    if target.kind == "index":
        return scope.allowed(target.schema, None)
    return False
