"""COMMIT and ROLLBACK inside procedural code (DO blocks, procedures).

A governed run owns its transaction: a transactional run is one transaction from the lock
to the gate, and a non-transactional one runs each statement on its own but may not hide
effects in procedural code. Either way a script that commits as it goes cannot run; what
it usually wants, a large data change in batches that each commit, is the declaration's
``backfill:`` section. The static plan finds COMMIT and ROLLBACK in the PL/pgSQL bodies it
can read (pglast's PL/pgSQL parser): DO blocks, and CALLs of procedures the same scripts
create. The session names the same way out when the server refuses one at run time
(SQLSTATE 2D000, invalid_transaction_termination), for the bodies the plan cannot read.
"""

from __future__ import annotations

from typing import Any

import pglast
from pglast import ast

from airflow_kfm_migrations.stores.postgis.targets import statement_targets

INVALID_TRANSACTION_TERMINATION = "2D000"
BACKFILL_ADVICE = (
    "a governed run owns its transaction, whether transactional or not; batched data changes that commit "
    "as they go belong in the declaration's `backfill:` section (docs/operations.md#backfills)"
)
RUNTIME_REFUSAL = (
    "procedural code (a DO block, a procedure, or a function or trigger they run) tried to COMMIT or "
    f"ROLLBACK; {BACKFILL_ADVICE}"
)
_CONTROL = {"PLpgSQL_stmt_commit": "COMMIT", "PLpgSQL_stmt_rollback": "ROLLBACK"}


def body_transaction_control(text: str) -> tuple[str, int] | None:
    """(``COMMIT`` or ``ROLLBACK``, line in the body) of the first transaction control in the
    PL/pgSQL body of a DO, CREATE FUNCTION or CREATE PROCEDURE statement; None when there is
    none, the body is in another language, or it does not parse (the server decides then)."""
    try:
        tree = pglast.parse_plpgsql(text)
    except pglast.parser.ParseError:
        return None
    found: list[tuple[str, int]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _CONTROL and isinstance(value, dict):
                    found.append((_CONTROL[key], int(value.get("lineno", 0))))
                walk(value)
        elif isinstance(node, list):
            for x in node:
                walk(x)

    walk(tree)
    return min(found, key=lambda f: f[1]) if found else None


class TransactionControl:
    """Follows the scripts of one plan: the procedures they create whose bodies commit or
    roll back, and the statements that would run such a body."""

    def __init__(self) -> None:
        self._procedures: dict[str, tuple[int, str, int]] = {}  # schema.name -> (statement, what, line)

    def check(self, i: int, stmt: Any, text: str, default_schema: str) -> str | None:
        """Why statement ``i`` cannot run in a governed run, when it commits or rolls back inside
        procedural code the plan can read."""
        if isinstance(stmt, ast.DoStmt):
            found = body_transaction_control(text)
            if found:
                return f"the DO block runs {found[0]} (line {found[1]} of its body)"
        elif isinstance(stmt, ast.CreateFunctionStmt) and stmt.is_procedure:
            (target,) = statement_targets(stmt, default_schema)[:1] or (None,)
            if target is not None:
                key = f"{target.schema}.{target.name}"
                found = body_transaction_control(text)
                if found:
                    self._procedures[key] = (i, *found)
                else:
                    self._procedures.pop(key, None)
        elif isinstance(stmt, ast.CallStmt) and stmt.funccall is not None:
            parts = [p.sval or "" for p in stmt.funccall.funcname or () if isinstance(p, ast.String)]
            key = ".".join(parts[-2:]) if len(parts) > 1 else f"{default_schema}.{''.join(parts)}"
            if key in self._procedures:
                at, what, line = self._procedures[key]
                return f"CALL {key} runs {what} (line {line} of the body statement {at} creates)"
        return None

    @staticmethod
    def message(why: str) -> str:
        return f"{why}: {BACKFILL_ADVICE}"
