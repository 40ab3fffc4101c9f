"""Printing for the commands a reviewer reads: ``validate``'s tables and ``plan``'s table.

Tables are never cut to the terminal: a migration id or a path is printed whole (the
console widens to the table, and the terminal wraps what it must), so what CI logs can be
searched for and copied.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_kfm_migrations.cli.common import console
from airflow_kfm_migrations.stores.base import Plan


def print_wide(table: Any, *, stderr: bool = False) -> None:
    """Print ``table`` at its natural width, however narrow the terminal (or pipe) is."""
    from rich.measure import Measurement

    con = console(stderr=stderr)
    needed = Measurement.get(con, con.options.update_width(100_000), table).maximum
    if needed > con.width:
        con.width = needed
    con.print(table)


def validate_tables(results: Sequence[Any]) -> list[Any]:
    """One table for bundles, registries and paths, one for fixtures (their expected outcomes)."""
    from rich.table import Table

    real = [r for r in results if r.kind != "fixture"]
    fixtures = [r for r in results if r.kind == "fixture"]
    tables = []
    for title, rows in (
        ("kfm-migrations validate", real),
        ("fixtures (each must end as its expected.txt says)", fixtures),
    ):
        if not rows:
            continue
        table = Table(title=title, show_lines=False)
        for col in ("target", "kind", "id", "result", "detail"):
            table.add_column(col, no_wrap=col in {"target", "id"}, overflow="fold")
        for r in rows:
            detail = r.note or (f"{len(r.problems)} problem(s)" if r.problems else (r.digest or "")[:16])
            result = "[green]pass[/]" if r.ok else "[red]FAIL[/]"
            table.add_row(r.target, r.kind, r.migration_id or "", result, detail)
        tables.append(table)
    return tables


def plan_table(plan: Plan) -> Any:
    from rich.table import Table

    table = Table(title=f"plan {plan.migration_id} ({plan.store})")
    for col in ("#", "where", "kind", "statement", "targets", "in txn", "note"):
        table.add_column(col, no_wrap=col in {"where", "statement"}, overflow="fold")
    for st in plan.statements:
        table.add_row(
            str(st.index),
            st.where or "",
            st.kind,
            st.statement,
            "\n".join(st.targets),
            "yes" if st.transactional else "NO",
            st.note or "",
        )
    return table
