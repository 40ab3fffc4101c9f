"""Estimated row counts of tables, from the planner's statistics (``pg_class.reltuples``),
read in a read-only transaction that is rolled back: what a reviewer weighs a lock against
(``kfm-migrations plan --format markdown --conn-id ID``)."""

from __future__ import annotations

from typing import Any

from airflow_kfm_migrations.errors import RefusedError
from airflow_kfm_migrations.stores.postgis.client import Connect, db_error

_QUERY = """
SELECT n.nspname, c.relname, c.reltuples::float8
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN unnest(%s::text[], %s::text[]) AS want(nsp, rel) ON want.nsp = n.nspname AND want.rel = c.relname
WHERE c.relkind IN ('r', 'p', 'm', 'f')
"""


def estimated_rows(connect: Connect, conn_id: str, names: list[str]) -> dict[str, int | None]:
    """``schema.table`` -> the planner's estimate of its rows (None: never analysed or
    vacuumed); names that are not tables, views with data or foreign tables are left out."""
    import psycopg

    pairs = sorted({(s, r) for s, dot, r in (n.partition(".") for n in names) if dot and s and r})
    if not pairs:
        return {}
    conn: Any = connect()
    try:
        conn.read_only = True
        with conn.cursor() as cur:
            cur.execute(_QUERY, ([s for s, _ in pairs], [r for _, r in pairs]))
            rows = cur.fetchall()
        conn.rollback()
    except psycopg.Error as exc:
        raise RefusedError(f"cannot read table statistics on {conn_id}: {db_error(exc)}") from None
    finally:
        conn.close()
    return {f"{s}.{r}": (int(t) if t is not None and t >= 0 else None) for s, r, t in rows}
