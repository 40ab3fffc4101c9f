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
from airflow_kfm_migrations.stores.postgis.reads import plan_reads
from airflow_kfm_migrations.stores.postgis.scope import PgScope
from airflow_kfm_migrations.stores.postgis.sql_text import split_sql

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


def _range_vars(node: Any) -> list[ast.RangeVar]:
    found: list[ast.RangeVar] = []

    def walk(n: Any) -> None:
        if isinstance(n, ast.RangeVar):
            found.append(n)
        if isinstance(n, ast.Node):
            for name in n.__slots__:  # type: ignore[attr-defined]
                walk(getattr(n, name, None))
        elif isinstance(n, (list, tuple)):
            for x in n:
                walk(x)

    walk(node)
    return found


def search_path_of(stmt: ast.VariableSetStmt) -> list[str] | None:
    if (stmt.name or "").lower() != "search_path" or not stmt.args:
        return None
    out = []
    for a in stmt.args:
        val = getattr(getattr(a, "val", None), "sval", None)
        if val:
            out.append(val)
    return out


def _names(obj: Any) -> list[str]:
    if isinstance(obj, (list, tuple)):
        return [getattr(x, "sval", str(x)) for x in obj]
    return [getattr(obj, "sval", str(obj))]


def plan_sql(text: str, file: str) -> list[tuple[str, Any]]:
    """Split and parse; unparseable SQL is an input error naming ``file:line:column``."""
    return [(st.text, st.stmt) for st in split_sql(text, file)]


def classify_statement(stmt: Any, search_path: list[str]) -> tuple[str, list[str], bool, str | None]:
    """(kind, qualified targets, can run in a transaction, note)."""
    name = type(stmt).__name__
    default_schema = next((s for s in search_path if s != "$user"), "public")
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
    targets: list[str] = []
    for rv in _range_vars(stmt):
        schema = rv.schemaname or default_schema
        targets.append(f"{schema}.{rv.relname}")
    if isinstance(stmt, ast.IndexStmt) and stmt.idxname and stmt.relation is not None:
        schema = stmt.relation.schemaname or default_schema
        targets.append(f"{schema}.{stmt.idxname}")
    if isinstance(stmt, ast.DropStmt) and stmt.objects:
        from pglast.enums.parsenodes import ObjectType

        on_table = stmt.removeType in (ObjectType.OBJECT_POLICY, ObjectType.OBJECT_TRIGGER, ObjectType.OBJECT_RULE)
        for obj in stmt.objects:
            parts = _names(obj)
            if on_table:  # DROP POLICY/TRIGGER/RULE name ON [schema.]table: the target is the table
                parts = parts[:-1]
            if len(parts) == 1:
                targets.append(f"{default_schema}.{parts[0]}")
            elif len(parts) >= 2:
                targets.append(".".join(parts[-2:]))
    if isinstance(stmt, ast.CreateSchemaStmt):
        targets.append(f"{stmt.schemaname}.*")
    if isinstance(stmt, (ast.CreateFunctionStmt,)) and stmt.funcname:
        parts = _names(stmt.funcname)
        targets.append(".".join(parts) if len(parts) > 1 else f"{default_schema}.{parts[0]}")
    if isinstance(stmt, ast.DoStmt) or isinstance(stmt, ast.CreateFunctionStmt):
        note = "procedural code hides from the static plan; the observed diff decides"
    if isinstance(stmt, ast.CallStmt):
        note = "procedure call: effects are only visible in the observed diff"
    kind = "DML" if name in _DML else "other" if name in _OTHER else "DDL"
    if isinstance(stmt, ast.SelectStmt) and stmt.intoClause is None:
        kind = "other"
    return kind, sorted(set(targets)), transactional, note


# ----------------------------------------------------------------------- findings


def static_plan(bundle: Bundle, store_kind: str) -> Plan:
    """The statements of the forward scripts, classified, and what the plan refuses or notes."""
    decl = bundle.declaration
    assert isinstance(decl, PostgisDeclaration)
    scope = PgScope(decl)
    statements: list[PlannedStatement] = []
    findings: list[Finding] = []
    i = 0
    for art in bundle.by_role("forward"):
        search_path = ["$user", "public"]
        for st in split_sql(art.text, display(art.path)):
            stmt = st.stmt
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
                    text=st.text,
                    lock=describe_lock(stmt, next((s for s in search_path if s != "$user"), "public")),
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
            if not decl.transactional and (note or isinstance(stmt, (ast.SelectStmt, ast.ExecuteStmt))):
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
            for t in targets:
                if t in only_read:
                    continue
                schema, _, table = t.partition(".")
                table = "" if table == "*" else table
                if scope.forbidden(schema, table or None):
                    findings.append(
                        Finding(
                            code="plan_forbidden_target",
                            tier="hard_fail",
                            object=t,
                            message=f"statement {i} targets forbidden {t}",
                        )
                    )
                elif scope.protected(schema, table or None) and not any(
                    approval_covers(decl, f"protected:{token}") for token in _protection_tokens(decl, t)
                ):
                    findings.append(
                        Finding(
                            code="plan_protected_target",
                            tier="hard_fail",
                            object=t,
                            message=f"statement {i} targets protected {t} without approval",
                        )
                    )
                elif not scope.allowed(schema, table or None) and not _index_of_allowed(stmt, scope, t):
                    findings.append(
                        Finding(
                            code="plan_out_of_scope",
                            tier="hard_fail",
                            object=t,
                            message=f"statement {i} targets {t}, outside the allowed scope",
                        )
                    )
    return Plan(bundle.migration_id, store_kind, tuple(statements), tuple(findings))


def _protection_tokens(decl: PostgisDeclaration, t: str) -> set[str]:
    """What ``protected:<token>`` may name to approve a statement on target ``t``
    (``schema.name``): the target itself, or a ``protected_tables`` / ``protected_schemas``
    pattern of the declaration, as written, that matches it (as the gate and the policy
    check accept: one approval satisfies all three)."""
    schema, _, name = t.partition(".")
    tokens = {t}
    for p in decl.scope.protected_tables:
        if name and fnmatch.fnmatchcase(t if "." in p else name, p):
            tokens.add(p)
    tokens.update(p for p in decl.scope.protected_schemas if fnmatch.fnmatchcase(schema, p))
    return tokens


def _index_of_allowed(stmt: Any, scope: PgScope, target: str) -> bool:
    """An index is in scope when its table is. CREATE INDEX names both; DROP INDEX names
    only the index, so its schema must be allowed and the observed diff decides."""
    from pglast.enums.parsenodes import ObjectType

    schema, _, _ = target.partition(".")
    if isinstance(stmt, ast.IndexStmt) and stmt.relation is not None:
        return scope.allowed(schema, stmt.relation.relname)
    if isinstance(stmt, ast.DropStmt) and stmt.removeType == ObjectType.OBJECT_INDEX:
        return scope.allowed(schema, None)
    return False
