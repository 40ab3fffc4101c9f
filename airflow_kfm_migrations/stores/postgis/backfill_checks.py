"""What a declared backfill (PostGIS) may do: the checks that need no connection (scope of
the target and of every statement, one statement per template, approvals), the key check,
and the stops a batch's writes trigger. The batch statements are built here too.

The engine that runs the batches is ``backfill.Engine``.
"""

from __future__ import annotations

from typing import Any

from airflow_kfm_migrations.config import settings
from airflow_kfm_migrations.contracts.models import Backfill, PostgisDeclaration
from airflow_kfm_migrations.declaration.approvals import approval_covers
from airflow_kfm_migrations.declaration.bundle import Bundle
from airflow_kfm_migrations.errors import BackfillStop
from airflow_kfm_migrations.stores.postgis.catalog_sql import qident
from airflow_kfm_migrations.stores.postgis.plan import classify_statement
from airflow_kfm_migrations.stores.postgis.scope import PgScope

PLACEHOLDERS = ("{lo}", "{hi}")


# ----------------------------------------------------------------------- static checks


def split_table(name: str) -> tuple[str, str]:
    """(schema, table) of a declared table name; ``public`` when unqualified."""
    schema, _, table = name.rpartition(".")
    return schema or "public", table


def run_key(bundle: Bundle) -> str:
    """Identifies one logical backfill: the migration id (its own column) + the bundle digest."""
    return bundle.digest


def batch_statement(bf: Backfill, key_type: str = "text") -> str:
    """The batch statement as text, with ``{lo}`` / ``{hi}`` left for the runner."""
    schema, table = split_table(bf.table)
    if bf.sql_template is not None:
        return bf.sql_template
    where = f" AND ({bf.where})" if bf.where else ""
    return (
        f"UPDATE {qident(schema)}.{qident(table)} SET {bf.set} WHERE {qident(bf.key_column)} >= {{lo}} "
        f"AND {qident(bf.key_column)} <= {{hi}}{where}"
    )


def reverse_statement(bf: Backfill) -> str:
    """The reverse batch statement (``rollback_set``), with ``{lo}`` / ``{hi}`` left for the runner."""
    schema, table = split_table(bf.table)
    return (
        f"UPDATE {qident(schema)}.{qident(table)} SET {bf.rollback_set} WHERE {qident(bf.key_column)} >= {{lo}} "
        f"AND {qident(bf.key_column)} <= {{hi}}"
    )


def static_problems(bundle: Bundle) -> list[str]:
    """Checks that need no connection: scope of the target and of every statement the
    backfill runs, one statement per template, approvals for large backfills."""
    decl = bundle.declaration
    if not isinstance(decl, PostgisDeclaration) or decl.backfill is None:
        return []
    import pglast
    from pglast import ast

    review_rows = settings().review_backfill_rows

    bf = decl.backfill
    scope = PgScope(decl)
    problems: list[str] = []
    schema, table = split_table(bf.table)
    if scope.forbidden(schema, table) or (
        scope.protected(schema, table) and not approval_covers(decl, f"protected:{schema}.{table}")
    ):
        problems.append(f"backfill.table {schema}.{table} is forbidden or protected")
    elif not scope.allowed(schema, table):
        problems.append(f"backfill.table {schema}.{table} is outside the allowed scope")
    if bf.max_rows > review_rows and not approval_covers(decl, "review:large_backfill"):
        problems.append(
            f"backfill.max_rows {bf.max_rows} is over {review_rows}: needs an approval covering review:large_backfill"
        )
    if bf.sql_template is not None and not all(p in bf.sql_template for p in PLACEHOLDERS):
        problems.append("backfill.sql_template must use both {lo} and {hi} (the batch's key range, inclusive)")
    bodies = [("backfill", batch_statement(bf))]
    if bf.rollback_set:
        bodies.append(("backfill.rollback_set", reverse_statement(bf)))
    for label, text in bodies:
        probe = text.replace("{lo}", "'0'").replace("{hi}", "'0'")
        try:
            parsed = pglast.parse_sql(probe)
        except pglast.parser.ParseError as exc:
            problems.append(f"{label}: SQL does not parse: {exc.args[0]}")
            continue
        if len(parsed) != 1:
            problems.append(f"{label}: must be exactly one statement, found {len(parsed)}")
            continue
        stmt = parsed[0].stmt
        if not isinstance(stmt, (ast.UpdateStmt, ast.InsertStmt, ast.DeleteStmt, ast.MergeStmt)):
            problems.append(f"{label}: must be one UPDATE, INSERT, DELETE or MERGE, not {type(stmt).__name__}")
            continue
        _kind, targets, _txn, _note = classify_statement(stmt, ["public"])
        for t in targets:
            ts, _, tt = t.partition(".")
            if scope.forbidden(ts, tt) or (scope.protected(ts, tt) and not approval_covers(decl, f"protected:{t}")):
                problems.append(f"{label}: targets forbidden or protected {t}")
            elif not scope.allowed(ts, tt):
                problems.append(f"{label}: targets {t}, outside the allowed scope")
    if bf.verify_columns and not bf.rollback_set and not bundle.by_role("rollback"):
        problems.append("backfill.verify_columns needs rollback_set or a rollback artifact to verify against")
    return problems


# ------------------------------------------------------------------------ the key

_KEY_QUERY = """
SELECT a.attnotnull, format_type(a.atttypid, a.atttypmod),
       EXISTS (SELECT 1 FROM pg_catalog.pg_index i
               WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid AND i.indimmediate
                 AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts = 1 AND i.indkey[0] = a.attnum)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = %s AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')"""


def check_key(cur: Any, bf: Backfill) -> tuple[str | None, str]:
    """(problem or None, key type). The key must be NOT NULL and alone carry a unique index."""
    schema, table = split_table(bf.table)
    cur.execute(_KEY_QUERY, (bf.key_column, schema, table))
    row = cur.fetchone()
    if row is None:
        return f"backfill table {schema}.{table} does not exist", "text"
    notnull, key_type, unique = row
    if key_type is None:
        return f"backfill key column {bf.key_column} does not exist on {schema}.{table}", "text"
    if not notnull:
        return f"backfill key column {schema}.{table}.{bf.key_column} is nullable; it must be NOT NULL", key_type
    if not unique:
        return (
            f"backfill key column {schema}.{table}.{bf.key_column} has no unique index of its own; "
            "batches need a unique, ordered key",
            key_type,
        )
    return None, key_type


# ------------------------------------------------------------------- batch stops


def rewrite_stop(
    decl: PostgisDeclaration, before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]]
) -> BackfillStop | None:
    """TRUNCATE or a table rewrite replaces storage without counting rows: caught by relfilenode."""
    scope = PgScope(decl)
    for oid, (name, fn) in sorted(after.items()):
        if oid in before and before[oid][1] != fn:
            schema, _, table = name.partition(".")
            if not scope.allowed(schema, table) or scope.guarded(schema, table):
                return BackfillStop("forbidden_rewrite", f"storage of {name} replaced (TRUNCATE or rewrite)")
            if not approval_covers(decl, "review:table_rewritten"):
                return BackfillStop(
                    "table_rewritten", f"storage of {name} replaced (TRUNCATE or rewrite) without approval"
                )
    return None


def scope_stop(decl: PostgisDeclaration, writes: dict[str, tuple[int, int, int]]) -> BackfillStop | None:
    """Rows a batch wrote outside the scope, or into forbidden or unapproved protected tables."""
    scope = PgScope(decl)
    for t, (i, u, d) in sorted(writes.items()):
        n = i + u + d
        if not n:
            continue
        schema, _, table = t.partition(".")
        if scope.forbidden(schema, table):
            return BackfillStop("forbidden_write", f"{n} row(s) written into forbidden {t}")
        if scope.protected(schema, table) and not approval_covers(decl, f"protected:{t}"):
            return BackfillStop("protected_write", f"{n} row(s) written into protected {t}")
        if not scope.protected(schema, table) and not scope.allowed(schema, table):
            return BackfillStop("out_of_scope_write", f"{n} row(s) written into {t}, outside the allowed scope")
    return None
