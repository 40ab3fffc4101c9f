"""Reads of forbidden and protected tables, seen by the static plan and by the gate.

Reading a forbidden table, or copying rows out of a protected one, is a hard fail unless a
recorded approval covers ``read:<schema>.<table>``:

- the static plan reads the sources of SELECT, INSERT ... SELECT, CREATE TABLE AS,
  SELECT INTO, UPDATE ... FROM, DELETE ... USING, MERGE ... USING and COPY ... TO
  (``statement_reads``);
- the gate sees the reads the plan cannot (dynamic SQL, functions, triggers) through the
  transaction's own scan counters (``pg_stat_get_xact_numscans`` of each table and its
  indexes), taken right before and right after the script. The runner's own reads of
  guarded tables (the protected-row digests of the pre- and post-baseline) fall outside
  that window; its reads of the ledger inside it are left out by name.

A protected table may be read; it is a copy, and judged, when the run also wrote rows into
another table (or the statement copies out: COPY ... TO).
"""

from __future__ import annotations

from typing import Any

from pglast import ast

from airflow_kfm_migrations.contracts.models import Finding, PostgisDeclaration, WriteCount
from airflow_kfm_migrations.declaration.approvals import approval_covers
from airflow_kfm_migrations.stores.postgis.bodies import cte_names, nodes
from airflow_kfm_migrations.stores.postgis.catalog_sql import LEDGER_SCHEMA
from airflow_kfm_migrations.stores.postgis.scope import PgScope

# Scans of some tables (by oid) and their indexes by this transaction, for those scanned at
# all. The numbers only grow within a transaction; a run takes the difference around its script.
SCANS_QUERY = """
    SELECT s.name, s.scans FROM (
        SELECT n.nspname || '.' || c.relname AS name,
               pg_catalog.pg_stat_get_xact_numscans(c.oid)
               + COALESCE((SELECT sum(pg_catalog.pg_stat_get_xact_numscans(i.indexrelid))
                           FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid), 0) AS scans
        FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = ANY(%s::oid[])) s
    WHERE s.scans > 0"""


def guarded_tables(decl: PostgisDeclaration, tables: dict[int, tuple[int, str]]) -> list[int]:
    """The oids of the forbidden and protected tables among ``tables`` (oid -> (storage,
    schema.table)), the ledger's left out: the only ones whose scans are judged."""
    scope = PgScope(decl)
    out = []
    for oid, (_fn, name) in tables.items():
        schema, _, table = name.partition(".")
        if schema != LEDGER_SCHEMA and scope.guarded(schema, table):
            out.append(oid)
    return sorted(out)


def scans(cur: Any, oids: list[int]) -> dict[str, int]:
    """This transaction's scans of the tables ``oids`` (by schema.table), for those it scanned."""
    if not oids:
        return {}
    cur.execute(SCANS_QUERY, (oids,))
    return {name: int(n) for name, n in cur.fetchall()}


def scans_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {t: n - before.get(t, 0) for t, n in sorted(after.items()) if n > before.get(t, 0)}


def read_token(table: str) -> str:
    """The approval token that lets a run read ``table`` (schema.table)."""
    return f"read:{table}"


# ------------------------------------------------------------------ the static plan

_READING = (
    ast.SelectStmt,
    ast.InsertStmt,
    ast.UpdateStmt,
    ast.DeleteStmt,
    ast.MergeStmt,
    ast.CreateTableAsStmt,
    ast.CopyStmt,
)
_WRITING = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)


def statement_reads(stmt: Any, search_path: list[str]) -> tuple[set[str], bool]:
    """The tables (schema.table) a data statement reads without writing them, and whether
    it writes or copies out anything. Other statements read nothing here."""
    if not isinstance(stmt, _READING):
        return set(), False
    default = next((s for s in search_path if s != "$user"), "public")

    def qualified(rv: ast.RangeVar) -> str:
        return f"{rv.schemaname or default}.{rv.relname}"

    ctes = cte_names(stmt)
    written: set[str] = set()
    writes = False
    for n in nodes(stmt):
        if isinstance(n, _WRITING) and n.relation is not None:
            written.add(qualified(n.relation))
            writes = True
        elif isinstance(n, ast.IntoClause) and n.rel is not None:
            written.add(qualified(n.rel))
            writes = True
        elif isinstance(n, ast.CopyStmt):
            writes = True  # COPY FROM writes its table; COPY TO copies rows out of the database
            if n.is_from and n.relation is not None:
                written.add(qualified(n.relation))
    read = {
        qualified(n)
        for n in nodes(stmt)
        if isinstance(n, ast.RangeVar) and n.relname and not (n.schemaname is None and n.relname in ctes)
    }
    return read - written, writes


def plan_reads(
    decl: PostgisDeclaration, scope: PgScope, stmt: Any, search_path: list[str], i: int
) -> tuple[set[str], list[Finding]]:
    """The guarded tables statement ``i`` reads (the plan judges them here, not as targets),
    and the findings about them."""
    read, writes = statement_reads(stmt, search_path)
    judged: set[str] = set()
    findings: list[Finding] = []
    for t in sorted(read):
        schema, _, table = t.partition(".")
        forbidden = scope.forbidden(schema, table)
        if not forbidden and not scope.protected(schema, table):
            continue
        judged.add(t)
        if not forbidden and not writes:
            continue  # a protected table may be read; copying it out is what is judged
        who = approval_covers(decl, read_token(t))
        if who:
            findings.append(
                Finding(
                    code="guarded_read_approved",
                    tier="informational",
                    object=t,
                    message=f"statement {i} reads {'forbidden' if forbidden else 'protected'} {t}, "
                    f"approved ({read_token(t)})",
                    approved_by=who,
                )
            )
        elif forbidden:
            findings.append(
                Finding(
                    code="plan_forbidden_read",
                    tier="hard_fail",
                    object=t,
                    message=f"statement {i} reads forbidden {t}; needs an approval covering '{read_token(t)}'",
                )
            )
        else:
            findings.append(
                Finding(
                    code="plan_protected_copy",
                    tier="hard_fail",
                    object=t,
                    message=f"statement {i} copies rows out of protected {t}; needs an approval covering "
                    f"'{read_token(t)}'",
                )
            )
    return judged, findings


# ------------------------------------------------------------------ the gate


def read_findings(decl: PostgisDeclaration, scanned: dict[str, int] | None, writes: list[WriteCount]) -> list[Finding]:
    """Findings from the tables the script scanned (``scanned``: scans per table, None when
    the run could not count them)."""
    if not scanned:
        return []
    scope = PgScope(decl)
    written = {
        w.table
        for w in writes
        if (w.inserted or w.updated or w.deleted or w.rewritten) and not w.table.startswith(LEDGER_SCHEMA + ".")
    }
    findings: list[Finding] = []
    for t, n in sorted(scanned.items()):
        schema, _, table = t.partition(".")
        if schema == LEDGER_SCHEMA:
            continue  # the session reads the ledger itself, to see that the script left it alone
        forbidden = scope.forbidden(schema, table)
        if not forbidden and not scope.protected(schema, table):
            continue
        elsewhere = sorted(written - {t})
        if not forbidden and not elsewhere:
            continue  # a protected table read, and nothing written anywhere else
        who = approval_covers(decl, read_token(t))
        what = "forbidden" if forbidden else "protected"
        if who:
            findings.append(
                Finding(
                    code="guarded_read_approved",
                    tier="informational",
                    object=t,
                    message=f"{what} {t} read ({n} scan(s)), approved ({read_token(t)})",
                    approved_by=who,
                )
            )
        elif forbidden:
            findings.append(
                Finding(
                    code="forbidden_read",
                    tier="hard_fail",
                    object=t,
                    message=f"the script read forbidden {t} ({n} scan(s), by SQL, dynamic SQL, a function, a "
                    f"trigger or a foreign-key check); needs an approval covering '{read_token(t)}'",
                )
            )
        else:
            findings.append(
                Finding(
                    code="protected_copy",
                    tier="hard_fail",
                    object=t,
                    message=f"the script read protected {t} ({n} scan(s)) and wrote rows into "
                    f"{', '.join(elsewhere[:3])}{' ...' if len(elsewhere) > 3 else ''}; needs an approval covering "
                    f"'{read_token(t)}'",
                )
            )
    return findings
