"""The table-level lock each planned statement takes, and what that lock blocks, for the
reviewer's view of a plan (``kfm-migrations plan --format markdown``).

The table (:data:`LOCK_TABLE`) is documented in ``docs/reference/postgis-locks.md``; each row
was checked against PostgreSQL 15 (``pg_locks`` inside a transaction, see
``tests/test_plan_locks.py``). It is advice for the reviewer, not a gate: the lock a
statement really takes can be stronger (a trigger, a rule or a volatile default does more),
and a statement waits for whatever lock the other sessions hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pglast import ast
from pglast.enums.parsenodes import AlterTableType as AT
from pglast.enums.parsenodes import ConstrType
from pglast.enums.parsenodes import ObjectType as O

# The modes from weakest to strongest (PostgreSQL's order), and what each blocks.
MODES = (
    "ACCESS SHARE",
    "ROW SHARE",
    "ROW EXCLUSIVE",
    "SHARE UPDATE EXCLUSIVE",
    "SHARE",
    "SHARE ROW EXCLUSIVE",
    "EXCLUSIVE",
    "ACCESS EXCLUSIVE",
)
BLOCKS = {
    "ACCESS SHARE": "only ACCESS EXCLUSIVE (DROP, TRUNCATE, most ALTER TABLE); reads and writes continue",
    "ROW SHARE": "EXCLUSIVE and ACCESS EXCLUSIVE; writers of the rows it locks wait",
    "ROW EXCLUSIVE": "SHARE and stronger (CREATE INDEX, most ALTER TABLE); writers of the same rows wait",
    "SHARE UPDATE EXCLUSIVE": "other schema changes, VACUUM, ANALYZE, CREATE INDEX; reads and writes continue",
    "SHARE": "writes (INSERT, UPDATE, DELETE) and schema changes; reads and other CREATE INDEX continue",
    "SHARE ROW EXCLUSIVE": "writes (INSERT, UPDATE, DELETE), schema changes, CREATE TRIGGER; reads continue",
    "EXCLUSIVE": "writes and SELECT ... FOR UPDATE; plain reads continue",
    "ACCESS EXCLUSIVE": "every read and write",
}


@dataclass(frozen=True)
class LockRule:
    """One row of the documented table: a statement form, its lock mode and on what."""

    key: str
    statement: str  # the statement form, as the documentation names it
    mode: str | None  # None: no table lock
    on: str  # what the lock is taken on
    note: str = ""


_RULES = (
    LockRule(
        "create_table",
        "CREATE TABLE",
        None,
        "-",
        "a new table; a foreign key also takes SHARE ROW EXCLUSIVE on the table it references",
    ),
    LockRule("create_table_fk", "CREATE TABLE ... REFERENCES", "SHARE ROW EXCLUSIVE", "the referenced table"),
    LockRule("create_table_partition", "CREATE TABLE ... PARTITION OF", "ACCESS EXCLUSIVE", "the parent table"),
    LockRule(
        "create_table_as",
        "CREATE TABLE AS, SELECT INTO, CREATE MATERIALIZED VIEW",
        "ACCESS SHARE",
        "the tables it reads",
    ),
    LockRule("drop_relation", "DROP TABLE / VIEW / MATERIALIZED VIEW / SEQUENCE", "ACCESS EXCLUSIVE", "the object"),
    LockRule("drop_index", "DROP INDEX", "ACCESS EXCLUSIVE", "the index's table"),
    LockRule("drop_index_concurrently", "DROP INDEX CONCURRENTLY", "SHARE UPDATE EXCLUSIVE", "the index's table"),
    LockRule("drop_on_table", "DROP TRIGGER / RULE / POLICY", "ACCESS EXCLUSIVE", "the table"),
    LockRule("drop_schema", "DROP SCHEMA ... CASCADE", "ACCESS EXCLUSIVE", "every table it drops"),
    LockRule("drop_other", "DROP FUNCTION / TYPE / other objects", None, "-", "no table lock"),
    LockRule(
        "add_column",
        "ALTER TABLE ADD COLUMN",
        "ACCESS EXCLUSIVE",
        "the table",
        "brief, unless a volatile default or a stored generated column rewrites the table",
    ),
    LockRule("drop_column", "ALTER TABLE DROP COLUMN", "ACCESS EXCLUSIVE", "the table", "brief: no rewrite"),
    LockRule(
        "alter_column_type",
        "ALTER TABLE ALTER COLUMN TYPE",
        "ACCESS EXCLUSIVE",
        "the table",
        "usually rewrites the table and its indexes",
    ),
    LockRule(
        "set_not_null", "ALTER TABLE ALTER COLUMN SET NOT NULL", "ACCESS EXCLUSIVE", "the table", "scans the table"
    ),
    LockRule("column_default", "ALTER TABLE ALTER COLUMN SET / DROP DEFAULT", "ACCESS EXCLUSIVE", "the table", "brief"),
    LockRule(
        "set_statistics",
        "ALTER TABLE ALTER COLUMN SET STATISTICS / SET (attribute options)",
        "SHARE UPDATE EXCLUSIVE",
        "the table",
    ),
    LockRule(
        "add_constraint",
        "ALTER TABLE ADD CONSTRAINT (CHECK, UNIQUE, PRIMARY KEY, EXCLUDE)",
        "ACCESS EXCLUSIVE",
        "the table",
        "scans the table (UNIQUE / PRIMARY KEY build an index)",
    ),
    LockRule(
        "add_constraint_not_valid",
        "ALTER TABLE ADD CONSTRAINT ... NOT VALID",
        "ACCESS EXCLUSIVE",
        "the table",
        "brief: no scan; VALIDATE CONSTRAINT checks the rows later under a weaker lock",
    ),
    LockRule(
        "add_foreign_key",
        "ALTER TABLE ADD FOREIGN KEY",
        "SHARE ROW EXCLUSIVE",
        "the table and the referenced table",
        "scans the table unless NOT VALID",
    ),
    LockRule(
        "validate_constraint",
        "ALTER TABLE VALIDATE CONSTRAINT",
        "SHARE UPDATE EXCLUSIVE",
        "the table",
        "a foreign key also takes ROW SHARE on the referenced table",
    ),
    LockRule("drop_constraint", "ALTER TABLE DROP CONSTRAINT", "ACCESS EXCLUSIVE", "the table"),
    LockRule("trigger_enable", "ALTER TABLE ENABLE / DISABLE TRIGGER", "SHARE ROW EXCLUSIVE", "the table"),
    LockRule(
        "rel_options",
        "ALTER TABLE SET (storage parameters), CLUSTER ON, SET WITHOUT CLUSTER",
        "SHARE UPDATE EXCLUSIVE",
        "the table",
        "a few storage parameters take ACCESS EXCLUSIVE",
    ),
    LockRule(
        "attach_partition",
        "ALTER TABLE ATTACH PARTITION",
        "SHARE UPDATE EXCLUSIVE",
        "the parent table",
        "ACCESS EXCLUSIVE on the partition",
    ),
    LockRule(
        "detach_partition_concurrently",
        "ALTER TABLE DETACH PARTITION CONCURRENTLY",
        "SHARE UPDATE EXCLUSIVE",
        "the parent table",
    ),
    LockRule(
        "alter_table",
        "ALTER TABLE (any other form: RLS, OWNER, SET SCHEMA, REPLICA IDENTITY, SET STORAGE, ...)",
        "ACCESS EXCLUSIVE",
        "the table",
    ),
    LockRule(
        "rename", "ALTER TABLE RENAME (table, column, constraint), ALTER VIEW RENAME", "ACCESS EXCLUSIVE", "the table"
    ),
    LockRule("rename_index", "ALTER INDEX RENAME", "SHARE UPDATE EXCLUSIVE", "the index"),
    LockRule(
        "rename_other", "RENAME or SET SCHEMA of a function, type, schema or other object", None, "-", "no table lock"
    ),
    LockRule("create_index", "CREATE INDEX", "SHARE", "the table", "for the whole build"),
    LockRule(
        "create_index_concurrently",
        "CREATE INDEX CONCURRENTLY",
        "SHARE UPDATE EXCLUSIVE",
        "the table",
        "waits for the transactions running on the table; outside a transaction",
    ),
    LockRule("reindex", "REINDEX", "SHARE", "the table", "and ACCESS EXCLUSIVE on each index rebuilt"),
    LockRule("reindex_concurrently", "REINDEX CONCURRENTLY", "SHARE UPDATE EXCLUSIVE", "the table"),
    LockRule("truncate", "TRUNCATE", "ACCESS EXCLUSIVE", "each table"),
    LockRule("vacuum", "VACUUM, ANALYZE", "SHARE UPDATE EXCLUSIVE", "each table"),
    LockRule("vacuum_full", "VACUUM FULL, CLUSTER", "ACCESS EXCLUSIVE", "each table", "rewrites the table"),
    LockRule(
        "grant",
        "GRANT, REVOKE",
        None,
        "-",
        "no table lock: the catalog row is updated (a concurrent GRANT on the same object waits)",
    ),
    LockRule("create_function", "CREATE FUNCTION / PROCEDURE", None, "-", "no table lock"),
    LockRule("create_view", "CREATE VIEW", "ACCESS SHARE", "the tables it reads"),
    LockRule(
        "replace_view",
        "CREATE OR REPLACE VIEW",
        "ACCESS EXCLUSIVE",
        "the view (when it exists)",
        "and ACCESS SHARE on the tables it reads",
    ),
    LockRule("create_trigger", "CREATE TRIGGER", "SHARE ROW EXCLUSIVE", "the table"),
    LockRule("policy_rule", "CREATE / ALTER POLICY, CREATE RULE", "ACCESS EXCLUSIVE", "the table"),
    LockRule(
        "comment",
        "COMMENT ON TABLE / COLUMN / INDEX / VIEW / CONSTRAINT / TRIGGER / POLICY",
        "SHARE UPDATE EXCLUSIVE",
        "the table or index",
    ),
    LockRule("comment_other", "COMMENT ON a function, type, schema or other object", None, "-", "no table lock"),
    LockRule("create_statistics", "CREATE STATISTICS", "SHARE UPDATE EXCLUSIVE", "the table"),
    LockRule("refresh_matview", "REFRESH MATERIALIZED VIEW", "ACCESS EXCLUSIVE", "the materialized view"),
    LockRule(
        "refresh_matview_concurrently", "REFRESH MATERIALIZED VIEW CONCURRENTLY", "EXCLUSIVE", "the materialized view"
    ),
    LockRule(
        "lock",
        "LOCK TABLE ... IN mode MODE",
        "ACCESS EXCLUSIVE",
        "each table",
        "the mode it names; ACCESS EXCLUSIVE when none",
    ),
    LockRule(
        "dml",
        "INSERT, UPDATE, DELETE, MERGE, COPY FROM",
        "ROW EXCLUSIVE",
        "the table",
        "and a row lock on each row it writes",
    ),
    LockRule("select", "SELECT, COPY TO", "ACCESS SHARE", "the tables it reads"),
    LockRule(
        "select_for_update",
        "SELECT ... FOR UPDATE / FOR SHARE",
        "ROW SHARE",
        "the tables it locks",
        "and a row lock on each row it returns",
    ),
    LockRule(
        "no_lock",
        "SET, CREATE SCHEMA / SEQUENCE / TYPE / DOMAIN / EXTENSION, ALTER TYPE / DEFAULT PRIVILEGES, EXPLAIN, NOTIFY",
        None,
        "-",
        "no table lock",
    ),
    LockRule("procedural", "DO, CALL", None, "-", "unknown: the code inside takes the locks of its statements"),
)
LOCK_TABLE: dict[str, LockRule] = {r.key: r for r in _RULES}

_LOCK_MODE_NAMES = {
    1: "ACCESS SHARE",
    2: "ROW SHARE",
    3: "ROW EXCLUSIVE",
    4: "SHARE UPDATE EXCLUSIVE",
    5: "SHARE",
    6: "SHARE ROW EXCLUSIVE",
    7: "EXCLUSIVE",
    8: "ACCESS EXCLUSIVE",
}


@dataclass(frozen=True)
class StatementLock:
    rule: LockRule
    mode: str | None  # the rule's mode, or the one LOCK TABLE names
    relations: tuple[str, ...]  # ``schema.name`` of what is locked, when the statement names it

    def describe(self) -> str:
        """``SHARE on public.parcels: blocks writes ...`` (one line)."""
        on = ", ".join(self.relations) or self.rule.on
        if self.mode is None:
            text = self.rule.note or "no table lock"
        else:
            text = f"{self.mode} on {on}: blocks {BLOCKS[self.mode]}"
            if self.rule.note and self.rule.key != "lock":
                text += f" ({self.rule.note})"
        return text


def _rv(rv: Any, default: str) -> str:
    return f"{rv.schemaname or default}.{rv.relname}"


# Objects of a table, named ``[schema.]table.member``: the lock is on the table.
_ON_TABLE = {O.OBJECT_COLUMN, O.OBJECT_TABCONSTRAINT, O.OBJECT_POLICY, O.OBJECT_TRIGGER, O.OBJECT_RULE}


def _names(objtype: O | None, objects: Any, default: str) -> tuple[str, ...]:
    """``schema.name`` of the relations a DROP or COMMENT names (the table of a column,
    constraint, trigger, rule or policy)."""
    out = []
    for obj in objects or ():
        if isinstance(obj, ast.RangeVar):
            out.append(_rv(obj, default))
            continue
        parts = [x.sval for x in obj if isinstance(x, ast.String)] if isinstance(obj, (list, tuple)) else []
        if objtype in _ON_TABLE:
            parts = parts[:-1]
        if parts:
            out.append(f"{parts[-2] if len(parts) > 1 else default}.{parts[-1]}")
    return tuple(out)


_SHARE_UPDATE_CMDS = {
    AT.AT_SetStatistics,
    AT.AT_SetOptions,
    AT.AT_ResetOptions,
    AT.AT_ClusterOn,
    AT.AT_DropCluster,
    AT.AT_SetRelOptions,
    AT.AT_ResetRelOptions,
}
_TRIGGER_CMDS = {
    AT.AT_EnableTrig,
    AT.AT_EnableAlwaysTrig,
    AT.AT_EnableReplicaTrig,
    AT.AT_DisableTrig,
    AT.AT_EnableTrigAll,
    AT.AT_DisableTrigAll,
    AT.AT_EnableTrigUser,
    AT.AT_DisableTrigUser,
}
_CMD_RULES = {
    AT.AT_AddColumn: "add_column",
    AT.AT_DropColumn: "drop_column",
    AT.AT_AlterColumnType: "alter_column_type",
    AT.AT_SetNotNull: "set_not_null",
    AT.AT_ColumnDefault: "column_default",
    AT.AT_ValidateConstraint: "validate_constraint",
    AT.AT_DropConstraint: "drop_constraint",
    AT.AT_AttachPartition: "attach_partition",
}


def _alter_cmd_rule(cmd: Any) -> str:
    sub = cmd.subtype
    if sub in _SHARE_UPDATE_CMDS:
        return "set_statistics" if sub in (AT.AT_SetStatistics, AT.AT_SetOptions, AT.AT_ResetOptions) else "rel_options"
    if sub in _TRIGGER_CMDS:
        return "trigger_enable"
    if sub == AT.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
        if cmd.def_.contype == ConstrType.CONSTR_FOREIGN:
            return "add_foreign_key"
        return "add_constraint_not_valid" if cmd.def_.skip_validation else "add_constraint"
    if sub == AT.AT_DetachPartition and getattr(cmd.def_, "concurrent", False):
        return "detach_partition_concurrently"
    return _CMD_RULES.get(sub, "alter_table")


def _strongest(keys: list[str]) -> str:
    def rank(key: str) -> int:
        mode = LOCK_TABLE[key].mode
        return MODES.index(mode) if mode else -1

    return max(keys, key=rank)


def _alter_table(stmt: ast.AlterTableStmt, d: str) -> StatementLock:
    keys = [_alter_cmd_rule(c) for c in stmt.cmds or () if isinstance(c, ast.AlterTableCmd)] or ["alter_table"]
    rule = LOCK_TABLE[_strongest(keys)]
    rels = [_rv(stmt.relation, d)]
    for c in stmt.cmds or ():
        if isinstance(c, ast.AlterTableCmd) and isinstance(c.def_, ast.Constraint) and c.def_.pktable is not None:
            rels.append(_rv(c.def_.pktable, d))
    return StatementLock(rule, rule.mode, tuple(dict.fromkeys(rels)))


def _create_table(stmt: ast.CreateStmt, d: str) -> StatementLock:
    if stmt.partbound is not None and stmt.inhRelations:
        rule = LOCK_TABLE["create_table_partition"]
        return StatementLock(rule, rule.mode, tuple(_rv(r, d) for r in stmt.inhRelations))
    refs: list[str] = []
    for elt in stmt.tableElts or ():
        cons = [elt] if isinstance(elt, ast.Constraint) else list(getattr(elt, "constraints", None) or ())
        refs += [_rv(c.pktable, d) for c in cons if isinstance(c, ast.Constraint) and c.pktable is not None]
    if refs:
        rule = LOCK_TABLE["create_table_fk"]
        return StatementLock(rule, rule.mode, tuple(dict.fromkeys(refs)))
    rule = LOCK_TABLE["create_table"]
    return StatementLock(rule, None, ())


_DROP_RELATIONS = {O.OBJECT_TABLE, O.OBJECT_VIEW, O.OBJECT_MATVIEW, O.OBJECT_SEQUENCE, O.OBJECT_FOREIGN_TABLE}


def _drop(stmt: ast.DropStmt, d: str) -> StatementLock:
    kind = stmt.removeType
    if kind in _DROP_RELATIONS:
        key = "drop_relation"
    elif kind == O.OBJECT_INDEX:
        key = "drop_index_concurrently" if stmt.concurrent else "drop_index"
    elif kind in (O.OBJECT_TRIGGER, O.OBJECT_RULE, O.OBJECT_POLICY):
        key = "drop_on_table"
    elif kind == O.OBJECT_SCHEMA:
        key = "drop_schema"
    else:
        key = "drop_other"
    rule = LOCK_TABLE[key]
    if key == "drop_other":
        return StatementLock(rule, None, ())
    if key == "drop_schema":
        return StatementLock(rule, rule.mode, ())
    names = _names(kind, stmt.objects, d)
    if key.startswith("drop_index"):
        names = tuple(f"the table of {n}" for n in names)
    return StatementLock(rule, rule.mode, names)


def _rename(stmt: ast.RenameStmt, d: str) -> StatementLock:
    kind = stmt.renameType
    if kind == O.OBJECT_INDEX and stmt.relation is not None:
        return _lock("rename_index", (_rv(stmt.relation, d),))
    if stmt.relation is not None:
        return _lock("rename", (_rv(stmt.relation, d),))
    return _lock("rename_other", ())


def _lock(key: str, relations: tuple[str, ...] = ()) -> StatementLock:
    rule = LOCK_TABLE[key]
    return StatementLock(rule, rule.mode, relations if rule.mode else ())


_COMMENT_ON = {
    O.OBJECT_TABLE,
    O.OBJECT_VIEW,
    O.OBJECT_MATVIEW,
    O.OBJECT_FOREIGN_TABLE,
    O.OBJECT_INDEX,
    O.OBJECT_SEQUENCE,
    O.OBJECT_COLUMN,
    O.OBJECT_TABCONSTRAINT,
    O.OBJECT_TRIGGER,
    O.OBJECT_RULE,
    O.OBJECT_POLICY,
}
_NO_LOCK = (
    ast.VariableSetStmt,
    ast.AlterEnumStmt,
    ast.AlterDefaultPrivilegesStmt,
    ast.ExplainStmt,
    ast.NotifyStmt,
    ast.CreateSchemaStmt,
    ast.CreateSeqStmt,
    ast.DefineStmt,
    ast.CreateEnumStmt,
    ast.CompositeTypeStmt,
    ast.CreateDomainStmt,
    ast.CreateExtensionStmt,
    ast.CreateRangeStmt,
)


def statement_lock(stmt: Any, default_schema: str) -> StatementLock | None:
    """The lock a parsed statement takes by the documented table; None when the table has
    no row for it (the markdown then says so)."""
    d = default_schema
    simple = _simple_lock(stmt, d)
    if simple is not None:
        return simple
    if isinstance(stmt, ast.SelectStmt):
        if stmt.intoClause is not None:
            return _lock("create_table_as")
        key = "select_for_update" if stmt.lockingClause else "select"
        return _lock(key, tuple(_rv(r, d) for r in _from_relations(stmt.fromClause)))
    if isinstance(stmt, ast.LockStmt):
        mode = _LOCK_MODE_NAMES.get(int(stmt.mode or 8), "ACCESS EXCLUSIVE")
        return StatementLock(LOCK_TABLE["lock"], mode, tuple(_rv(r, d) for r in stmt.relations or ()))
    if isinstance(stmt, ast.CommentStmt):
        if stmt.objtype in _COMMENT_ON:
            return _lock("comment", _names(stmt.objtype, [stmt.object], d))
        return _lock("comment_other")
    if isinstance(stmt, ast.VacuumStmt):
        full = any((o.defname or "").lower() == "full" for o in stmt.options or () if isinstance(o, ast.DefElem))
        rels = tuple(_rv(r.relation, d) for r in stmt.rels or () if getattr(r, "relation", None) is not None)
        return _lock("vacuum_full" if full and stmt.is_vacuumcmd else "vacuum", rels)
    if isinstance(stmt, ast.ReindexStmt):
        concurrently = any((p.defname or "").lower() == "concurrently" for p in stmt.params or ())
        on = (_rv(stmt.relation, d),) if stmt.relation is not None else ()
        return _lock("reindex_concurrently" if concurrently else "reindex", on)
    if isinstance(stmt, ast.ViewStmt):
        return _lock("replace_view", (_rv(stmt.view, d),)) if stmt.replace else _lock("create_view")
    return None


def _simple_lock(stmt: Any, d: str) -> StatementLock | None:
    """The statements whose row and relations follow from the node alone."""
    if isinstance(stmt, ast.AlterTableStmt):
        return _alter_table(stmt, d)
    if isinstance(stmt, ast.CreateStmt):
        return _create_table(stmt, d)
    if isinstance(stmt, ast.DropStmt):
        return _drop(stmt, d)
    if isinstance(stmt, ast.RenameStmt):
        return _rename(stmt, d)
    if isinstance(stmt, ast.IndexStmt):
        return _lock("create_index_concurrently" if stmt.concurrent else "create_index", (_rv(stmt.relation, d),))
    if isinstance(stmt, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)):
        return _lock("dml", (_rv(stmt.relation, d),))
    if isinstance(stmt, ast.CopyStmt):
        on = (_rv(stmt.relation, d),) if stmt.relation is not None else ()
        return _lock("dml" if stmt.is_from else "select", on)
    if isinstance(stmt, ast.TruncateStmt):
        return _lock("truncate", tuple(_rv(r, d) for r in stmt.relations or ()))
    if isinstance(stmt, ast.ClusterStmt):
        return _lock("vacuum_full", (_rv(stmt.relation, d),) if stmt.relation is not None else ())
    if isinstance(stmt, ast.CreateTrigStmt):
        return _lock("create_trigger", (_rv(stmt.relation, d),))
    if isinstance(stmt, (ast.CreatePolicyStmt, ast.AlterPolicyStmt)):
        return _lock("policy_rule", (_rv(stmt.table, d),))
    if isinstance(stmt, ast.RuleStmt):
        return _lock("policy_rule", (_rv(stmt.relation, d),))
    if isinstance(stmt, ast.CreateStatsStmt):
        rels = tuple(_rv(r, d) for r in stmt.relations or () if isinstance(r, ast.RangeVar))
        return _lock("create_statistics", rels)
    if isinstance(stmt, ast.RefreshMatViewStmt):
        return _lock("refresh_matview_concurrently" if stmt.concurrent else "refresh_matview", (_rv(stmt.relation, d),))
    if isinstance(stmt, ast.AlterObjectSchemaStmt):
        return _lock("alter_table", (_rv(stmt.relation, d),)) if stmt.relation is not None else _lock("rename_other")
    if isinstance(stmt, ast.CreateTableAsStmt):
        return _lock("create_table_as")
    if isinstance(stmt, ast.GrantStmt):
        return _lock("grant")
    if isinstance(stmt, ast.CreateFunctionStmt):
        return _lock("create_function")
    if isinstance(stmt, (ast.DoStmt, ast.CallStmt)):
        return _lock("procedural")
    if isinstance(stmt, _NO_LOCK):
        return _lock("no_lock")
    return None


def _from_relations(items: Any) -> list[Any]:
    """The tables named directly in a FROM list (joins included; subqueries left out)."""
    out: list[Any] = []
    for item in items or ():
        if isinstance(item, ast.RangeVar):
            out.append(item)
        elif isinstance(item, ast.JoinExpr):
            out += _from_relations([item.larg, item.rarg])
    return out


def describe(stmt: Any, default_schema: str) -> str:
    """One line for the plan: the statement's lock and what it blocks, or why none is known."""
    found = statement_lock(stmt, default_schema)
    if found is None:
        return f"not in the lock table ({type(stmt).__name__}): assume ACCESS EXCLUSIVE on what it names"
    return found.describe()


def lock_table_markdown() -> str:
    """The documented table (``docs/reference/postgis-locks.md``), generated from :data:`LOCK_TABLE`."""
    lines = ["| statement | lock | on | notes |", "|---|---|---|---|"]
    for r in _RULES:
        lines.append(f"| {r.statement} | {r.mode or 'none'} | {r.on} | {r.note} |")
    lines += ["", "| lock | blocks |", "|---|---|"]
    lines += [f"| {m} | {BLOCKS[m]} |" for m in reversed(MODES)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m airflow_kfm_migrations.stores.postgis.locks: print the documented table
    print(lock_table_markdown(), end="")
