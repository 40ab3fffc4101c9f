"""PostGIS static plan: statements parsed with pglast, classified, their targets named."""

from __future__ import annotations

from typing import Any

import pglast
from pglast import ast

from airflow_kfm_migrations.errors import InputError

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
    """Split and parse; unparseable SQL is an input error naming the file and position."""
    try:
        parsed = pglast.parse_sql(text)
        pieces = list(pglast.split(text))
    except pglast.parser.ParseError as exc:
        where = getattr(exc, "location", None)
        line = text.encode()[: where or 0].count(b"\n") + 1 if where is not None else "-"
        raise InputError(file, f"line {line}", f"SQL does not parse: {exc.args[0]}") from None
    if len(parsed) != len(pieces):
        raise InputError(file, "-", "could not split the script into statements")
    return [(piece, raw.stmt) for piece, raw in zip(pieces, parsed, strict=True)]


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
