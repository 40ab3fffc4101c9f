"""The PostGIS static plan names every target in SQL terms (no server needed).

A property over every statement kind pglast can produce: statements are generated from
templates with hypothesis-drawn identifiers and argument types, and every target the plan
yields is a plain string (never a parser node's repr), whose schema and name are the ones
the statement wrote, so that a scope naming them allows it and a scope naming another
schema does not. The templates are checked to cover every ``ObjectType`` and every
statement node class of ``pglast.ast``.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pglast
import pytest
from conftest import MIGRATIONS
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast import ast
from pglast.enums.parsenodes import ObjectType

from airflow_kfm_migrations.contracts.models import PostgisDeclaration
from airflow_kfm_migrations.declaration.bundle import load_bundle
from airflow_kfm_migrations.stores.postgis.plan import classify_statement, static_plan
from airflow_kfm_migrations.stores.postgis.scope import PgScope
from airflow_kfm_migrations.stores.postgis.targets import SYSTEM_SCHEMAS, Target, statement_targets

RESERVED_ROLES = {"none", "public", "current_user", "current_role", "session_user", "all"}
# Identifiers as a migration may write them, quoted: keywords, spaces and dots included.
# Glob characters (* ? [) are left out so that a name can stand for itself in a scope.
IDENT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_ .$-", min_size=1, max_size=12).filter(
    lambda s: s.strip() == s and s not in SYSTEM_SCHEMAS and not s.startswith("pg_") and s not in RESERVED_ROLES
)
OPERATOR = st.text(alphabet="~!@#%^&|", min_size=1, max_size=4)
ARG_TYPES = st.lists(
    st.sampled_from(
        [
            "integer",
            "text",
            "double precision",
            "varchar(10)",
            "numeric(8, 2)",
            "text[]",
            "int4range",
            "timestamp with time zone",
            "bigint",
            "USER",
        ]
    ),
    max_size=3,
)


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# (SQL template, what it must name). {s}.{n}: an object; {s}.{t}: a table; {u}: a user-defined
# type {s}.{n}; {m}: another identifier; {r}: a role; {args}: argument types; {op}: an operator.
# Expectations: "obj" (schema s, name n), "op" (schema s, name op), "tab" (s, t), "schema"
# (s.*), "db" (a database-level target), None (names nothing the plan judges by name).
TEMPLATES: list[tuple[str, str | None]] = [
    # DROP, for every object type it takes
    *[
        (f"DROP {k} {{s}}.{{n}}", "obj")
        for k in (
            "TABLE",
            "SEQUENCE",
            "VIEW",
            "MATERIALIZED VIEW",
            "INDEX",
            "FOREIGN TABLE",
            "TYPE",
            "DOMAIN",
            "COLLATION",
            "CONVERSION",
            "STATISTICS",
            "TEXT SEARCH PARSER",
            "TEXT SEARCH DICTIONARY",
            "TEXT SEARCH TEMPLATE",
            "TEXT SEARCH CONFIGURATION",
        )
    ],
    ("DROP INDEX CONCURRENTLY {s}.{n}", "obj"),
    *[(f"DROP {k} {{s}}.{{n}}({{args}})", "obj") for k in ("FUNCTION", "PROCEDURE", "ROUTINE")],
    ("DROP AGGREGATE {s}.{n}(integer, {args1})", "obj"),
    ("DROP FUNCTION {s}.{n}", "obj"),
    ("DROP AGGREGATE {s}.{n}(*)", "obj"),
    ("DROP OPERATOR {s}.{op}(integer, {u})", "op"),
    ("DROP OPERATOR {s}.{op}(NONE, integer)", "op"),
    ("DROP OPERATOR CLASS {s}.{n} USING btree", "obj"),
    ("DROP OPERATOR FAMILY {s}.{n} USING gist", "obj"),
    ("DROP CAST ({u} AS text)", "obj"),
    ("DROP CAST (text AS {u}[])", "obj"),
    ("DROP CAST (text AS integer)", "db"),
    ("DROP TRANSFORM FOR {u} LANGUAGE plpython3u", "obj"),
    ("DROP TRANSFORM FOR integer LANGUAGE {m}", "db"),
    *[(f"DROP {k} {{m}} ON {{s}}.{{t}}", "tab") for k in ("POLICY", "TRIGGER", "RULE")],
    ("DROP SCHEMA {s} CASCADE", "schema"),
    ("DROP EXTENSION {n}", None),
    *[
        (f"DROP {k} {{m}}", "db")
        for k in ("LANGUAGE", "ACCESS METHOD", "EVENT TRIGGER", "FOREIGN DATA WRAPPER", "SERVER", "PUBLICATION")
    ],
    ("DROP DATABASE {m}", None),
    ("DROP ROLE {r}", None),
    ("DROP TABLESPACE {m}", None),
    ("DROP SUBSCRIPTION {m}", None),
    ("DROP USER MAPPING FOR {r} SERVER {m}", None),
    ("DROP OWNED BY {r}", "db"),
    # COMMENT ON and SECURITY LABEL ON
    *[
        (f"{c} ON {k} {{s}}.{{n}} IS 'x'", "obj")
        for c in ("COMMENT", "SECURITY LABEL")
        for k in ("TABLE", "SEQUENCE", "VIEW", "MATERIALIZED VIEW", "FOREIGN TABLE", "TYPE", "DOMAIN")
    ],
    *[
        (f"COMMENT ON {k} {{s}}.{{n}} IS 'x'", "obj")
        for k in (
            "INDEX",
            "COLLATION",
            "CONVERSION",
            "STATISTICS",
            "TEXT SEARCH PARSER",
            "TEXT SEARCH DICTIONARY",
            "TEXT SEARCH TEMPLATE",
            "TEXT SEARCH CONFIGURATION",
        )
    ],
    *[
        (f"{c} ON {k} {{s}}.{{n}}({{args}}) IS 'x'", "obj")
        for c in ("COMMENT", "SECURITY LABEL")
        for k in ("FUNCTION", "PROCEDURE", "ROUTINE")
    ],
    ("COMMENT ON AGGREGATE {s}.{n}({args1}) IS 'x'", "obj"),
    ("COMMENT ON OPERATOR {s}.{op}({u}, {u}) IS 'x'", "op"),
    ("COMMENT ON OPERATOR CLASS {s}.{n} USING btree IS 'x'", "obj"),
    ("COMMENT ON OPERATOR FAMILY {s}.{n} USING btree IS 'x'", "obj"),
    ("COMMENT ON CAST ({u} AS integer) IS 'x'", "obj"),
    ("COMMENT ON TRANSFORM FOR {u} LANGUAGE sql IS 'x'", "obj"),
    ("COMMENT ON COLUMN {s}.{t}.{m} IS 'x'", "tab"),
    ("SECURITY LABEL ON COLUMN {s}.{t}.{m} IS 'x'", "tab"),
    *[(f"COMMENT ON {k} {{m}} ON {{s}}.{{t}} IS 'x'", "tab") for k in ("CONSTRAINT", "POLICY", "TRIGGER", "RULE")],
    ("COMMENT ON CONSTRAINT {m} ON DOMAIN {s}.{n} IS 'x'", "obj"),
    ("COMMENT ON SCHEMA {s} IS 'x'", "schema"),
    ("SECURITY LABEL ON SCHEMA {s} IS 'x'", "schema"),
    ("COMMENT ON EXTENSION {n} IS 'x'", None),
    *[
        (f"COMMENT ON {k} {{m}} IS 'x'", "db")
        for k in (
            "LANGUAGE",
            "ACCESS METHOD",
            "EVENT TRIGGER",
            "FOREIGN DATA WRAPPER",
            "SERVER",
            "PUBLICATION",
            "DATABASE",
            "ROLE",
            "TABLESPACE",
            "SUBSCRIPTION",
        )
    ],
    ("COMMENT ON LARGE OBJECT 1234 IS 'x'", "db"),
    ("SECURITY LABEL ON LARGE OBJECT 1234 IS 'x'", "db"),
    ("SECURITY LABEL ON EVENT TRIGGER {m} IS 'x'", "db"),
    # ALTER ... OWNER TO
    *[
        (f"ALTER {k} {{s}}.{{n}} OWNER TO {{r}}", "obj")
        for k in (
            "TABLE",
            "SEQUENCE",
            "VIEW",
            "MATERIALIZED VIEW",
            "FOREIGN TABLE",
            "TYPE",
            "DOMAIN",
            "COLLATION",
            "CONVERSION",
            "STATISTICS",
            "TEXT SEARCH DICTIONARY",
            "TEXT SEARCH CONFIGURATION",
        )
    ],
    *[(f"ALTER {k} {{s}}.{{n}}({{args}}) OWNER TO {{r}}", "obj") for k in ("FUNCTION", "PROCEDURE", "ROUTINE")],
    ("ALTER AGGREGATE {s}.{n}({args1}) OWNER TO {r}", "obj"),
    ("ALTER OPERATOR {s}.{op}(integer, integer) OWNER TO {r}", "op"),
    ("ALTER OPERATOR CLASS {s}.{n} USING hash OWNER TO {r}", "obj"),
    ("ALTER OPERATOR FAMILY {s}.{n} USING hash OWNER TO {r}", "obj"),
    ("ALTER SCHEMA {s} OWNER TO {r}", "schema"),
    *[
        (f"ALTER {k} {{m}} OWNER TO {{r}}", "db")
        for k in (
            "LANGUAGE",
            "EVENT TRIGGER",
            "FOREIGN DATA WRAPPER",
            "SERVER",
            "PUBLICATION",
            "DATABASE",
            "TABLESPACE",
            "SUBSCRIPTION",
        )
    ],
    ("ALTER LARGE OBJECT 1234 OWNER TO {r}", "db"),
    # ALTER ... RENAME
    *[
        (f"ALTER {k} {{s}}.{{n}} RENAME TO {{m}}", "obj")
        for k in (
            "TABLE",
            "SEQUENCE",
            "VIEW",
            "MATERIALIZED VIEW",
            "INDEX",
            "FOREIGN TABLE",
            "TYPE",
            "DOMAIN",
            "COLLATION",
            "CONVERSION",
            "STATISTICS",
            "TEXT SEARCH PARSER",
            "TEXT SEARCH DICTIONARY",
            "TEXT SEARCH TEMPLATE",
            "TEXT SEARCH CONFIGURATION",
        )
    ],
    *[(f"ALTER {k} {{s}}.{{n}}({{args}}) RENAME TO {{m}}", "obj") for k in ("FUNCTION", "PROCEDURE", "ROUTINE")],
    ("ALTER AGGREGATE {s}.{n}({args1}) RENAME TO {m}", "obj"),
    ("ALTER OPERATOR CLASS {s}.{n} USING btree RENAME TO {m}", "obj"),
    ("ALTER OPERATOR FAMILY {s}.{n} USING btree RENAME TO {m}", "obj"),
    ("ALTER TABLE {s}.{t} RENAME COLUMN {m} TO x", "tab"),
    ("ALTER TABLE {s}.{t} RENAME CONSTRAINT {m} TO x", "tab"),
    ("ALTER TRIGGER {m} ON {s}.{t} RENAME TO x", "tab"),
    ("ALTER POLICY {m} ON {s}.{t} RENAME TO x", "tab"),
    ("ALTER RULE {m} ON {s}.{t} RENAME TO x", "tab"),
    ("ALTER TYPE {s}.{n} RENAME ATTRIBUTE {m} TO x", "obj"),
    ("ALTER TYPE {s}.{n} RENAME VALUE 'a' TO 'b'", "obj"),
    ("ALTER DOMAIN {s}.{n} RENAME CONSTRAINT {m} TO x", "obj"),
    ("ALTER SCHEMA {s} RENAME TO {m}", "schema"),
    *[
        (f"ALTER {k} {{m}} RENAME TO x", "db")
        for k in (
            "LANGUAGE",
            "EVENT TRIGGER",
            "FOREIGN DATA WRAPPER",
            "SERVER",
            "PUBLICATION",
            "DATABASE",
            "TABLESPACE",
            "SUBSCRIPTION",
            "ROLE",
        )
    ],
    # ALTER ... SET SCHEMA and DEPENDS ON EXTENSION
    *[
        (f"ALTER {k} {{s}}.{{n}} SET SCHEMA {{m}}", "obj")
        for k in (
            "TABLE",
            "SEQUENCE",
            "VIEW",
            "MATERIALIZED VIEW",
            "FOREIGN TABLE",
            "TYPE",
            "DOMAIN",
            "COLLATION",
            "CONVERSION",
            "STATISTICS",
            "TEXT SEARCH PARSER",
            "TEXT SEARCH DICTIONARY",
            "TEXT SEARCH TEMPLATE",
            "TEXT SEARCH CONFIGURATION",
        )
    ],
    *[(f"ALTER {k} {{s}}.{{n}}({{args}}) SET SCHEMA {{m}}", "obj") for k in ("FUNCTION", "PROCEDURE", "ROUTINE")],
    ("ALTER AGGREGATE {s}.{n}({args1}) SET SCHEMA {m}", "obj"),
    ("ALTER OPERATOR {s}.{op}(integer, integer) SET SCHEMA {m}", "op"),
    ("ALTER OPERATOR CLASS {s}.{n} USING btree SET SCHEMA {m}", "obj"),
    ("ALTER OPERATOR FAMILY {s}.{n} USING btree SET SCHEMA {m}", "obj"),
    ("ALTER EXTENSION {n} SET SCHEMA {m}", None),
    *[(f"ALTER {k} {{s}}.{{n}}({{args}}) DEPENDS ON EXTENSION {{m}}", "obj") for k in ("FUNCTION", "PROCEDURE")],
    ("ALTER FUNCTION {s}.{n}({args}) NO DEPENDS ON EXTENSION {m}", "obj"),
    ("ALTER INDEX {s}.{n} DEPENDS ON EXTENSION {m}", "obj"),
    ("ALTER MATERIALIZED VIEW {s}.{n} DEPENDS ON EXTENSION {m}", "obj"),
    ("ALTER TRIGGER {m} ON {s}.{t} DEPENDS ON EXTENSION x", "tab"),
    # GRANT and REVOKE
    *[
        (f"{g} SELECT ON {k} {{s}}.{{n}} {w} {{r}}", "obj")
        for g, w in (("GRANT", "TO"), ("REVOKE", "FROM"))
        for k in ("TABLE", "SEQUENCE")
    ],
    ("GRANT SELECT ({m}) ON {s}.{t} TO {r}", "tab"),
    *[(f"GRANT EXECUTE ON {k} {{s}}.{{n}}({{args}}) TO {{r}}", "obj") for k in ("FUNCTION", "PROCEDURE", "ROUTINE")],
    ("REVOKE EXECUTE ON FUNCTION {s}.{n} FROM {r}", "obj"),
    *[(f"GRANT USAGE ON {k} {{s}}.{{n}} TO {{r}}", "obj") for k in ("TYPE", "DOMAIN")],
    ("GRANT USAGE ON SCHEMA {s} TO {r}", "schema"),
    *[(f"GRANT SELECT ON ALL {k} IN SCHEMA {{s}} TO {{r}}", "schema") for k in ("TABLES", "SEQUENCES")],
    *[(f"GRANT EXECUTE ON ALL {k} IN SCHEMA {{s}} TO {{r}}", "schema") for k in ("FUNCTIONS", "PROCEDURES")],
    ("GRANT USAGE ON LANGUAGE {m} TO {r}", "db"),
    ("GRANT USAGE ON FOREIGN DATA WRAPPER {m} TO {r}", "db"),
    ("GRANT USAGE ON FOREIGN SERVER {m} TO {r}", "db"),
    ("GRANT CONNECT ON DATABASE {m} TO {r}", "db"),
    ("GRANT CREATE ON TABLESPACE {m} TO {r}", "db"),
    ("GRANT SET ON PARAMETER work_mem TO {r}", "db"),
    ("GRANT SELECT ON LARGE OBJECT 1234 TO {r}", "db"),
    ("ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT ON TABLES TO {r}", "schema"),
    ("ALTER DEFAULT PRIVILEGES FOR ROLE {r} REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC", "db"),
    ("GRANT {r} TO {m}", None),
    # CREATE
    ("CREATE TABLE {s}.{t} (a integer)", "tab"),
    ("CREATE TABLE {s}.{t} AS SELECT 1", "tab"),
    ("CREATE MATERIALIZED VIEW {s}.{t} AS SELECT 1", "tab"),
    ("CREATE VIEW {s}.{t} AS SELECT 1", "tab"),
    ("CREATE SEQUENCE {s}.{t}", "tab"),
    ("CREATE FOREIGN TABLE {s}.{t} (a integer) SERVER {m}", "tab"),
    ("CREATE INDEX {n} ON {s}.{t} (a)", "tab"),
    ("CREATE TYPE {s}.{n} AS (a integer)", "obj"),
    ("CREATE TYPE {s}.{n} AS ENUM ('a')", "obj"),
    ("CREATE TYPE {s}.{n} AS RANGE (subtype = integer)", "obj"),
    ("CREATE TYPE {s}.{n}", "obj"),
    ("CREATE DOMAIN {s}.{n} AS integer", "obj"),
    ("CREATE FUNCTION {s}.{n}({args}) RETURNS integer LANGUAGE sql AS 'SELECT 1'", "obj"),
    ("CREATE FUNCTION {s}.{n}() RETURNS integer LANGUAGE sql RETURN 1", "obj"),
    ("CREATE PROCEDURE {s}.{n}({args}) LANGUAGE sql AS 'SELECT 1'", "obj"),
    ("CREATE AGGREGATE {s}.{n}({args1}) (sfunc = f, stype = integer)", "obj"),
    ("CREATE AGGREGATE {s}.{n}(*) (sfunc = f, stype = integer)", "obj"),
    ("CREATE AGGREGATE {s}.{n} (basetype = integer, sfunc = f, stype = integer)", "obj"),
    ("CREATE OPERATOR {s}.{op} (leftarg = integer, rightarg = {u}, function = f)", "op"),
    ("CREATE OPERATOR {s}.{op} (rightarg = integer, function = f)", "op"),
    ("CREATE OPERATOR CLASS {s}.{n} FOR TYPE integer USING btree FAMILY {s}.{m} AS OPERATOR 1 <", "obj"),
    ("CREATE OPERATOR FAMILY {s}.{n} USING btree", "obj"),
    ("ALTER OPERATOR FAMILY {s}.{n} USING btree ADD OPERATOR 1 <(integer, integer)", "obj"),
    ("ALTER OPERATOR FAMILY {s}.{n} USING btree DROP FUNCTION 1 (integer, integer)", "obj"),
    ("ALTER OPERATOR {s}.{op}(integer, integer) SET (RESTRICT = eqsel)", "op"),
    ("CREATE COLLATION {s}.{n} (locale = 'C')", "obj"),
    ("ALTER COLLATION {s}.{n} REFRESH VERSION", "obj"),
    ("CREATE CONVERSION {s}.{n} FOR 'LATIN1' TO 'UTF8' FROM f", "obj"),
    ("CREATE STATISTICS {s}.{n} ON a, b FROM {s}.{t}", "obj"),
    ("ALTER STATISTICS {s}.{n} SET STATISTICS 10", "obj"),
    *[
        (f"CREATE TEXT SEARCH {k} {{s}}.{{n}} ({d})", "obj")
        for k, d in (
            ("PARSER", "start = f, gettoken = f, end = f, lextypes = f"),
            ("DICTIONARY", "template = simple"),
            ("TEMPLATE", "lexize = f"),
            ("CONFIGURATION", "parser = default"),
        )
    ],
    ("ALTER TEXT SEARCH DICTIONARY {s}.{n} (stopwords = english)", "obj"),
    ("ALTER TEXT SEARCH CONFIGURATION {s}.{n} DROP MAPPING FOR word", "obj"),
    ("CREATE CAST ({u} AS text) WITH INOUT", "obj"),
    ("CREATE CAST (integer AS text) WITH INOUT AS IMPLICIT", "db"),
    ("CREATE TRANSFORM FOR {u} LANGUAGE sql (FROM SQL WITH FUNCTION f(internal))", "obj"),
    ("CREATE TRIGGER {m} AFTER INSERT ON {s}.{t} FOR EACH ROW EXECUTE FUNCTION f()", "tab"),
    ("CREATE POLICY {m} ON {s}.{t} USING (true)", "tab"),
    ("ALTER POLICY {m} ON {s}.{t} USING (true)", "tab"),
    ("CREATE RULE {m} AS ON INSERT TO {s}.{t} DO NOTHING", "tab"),
    ("CREATE SCHEMA {s}", "schema"),
    ("CREATE SCHEMA {s} CREATE TABLE {t} (a integer) CREATE VIEW {m} AS SELECT 1", "schema"),
    ("CREATE SCHEMA AUTHORIZATION {r}", None),
    ("CREATE EXTENSION {n} SCHEMA {s}", "obj"),
    ("ALTER EXTENSION {n} UPDATE", None),
    ("ALTER EXTENSION {n} ADD FUNCTION {s}.{m}({args})", None),
    ("ALTER EXTENSION {n} DROP TABLE {s}.{t}", "tab"),
    ("IMPORT FOREIGN SCHEMA {m} FROM SERVER x INTO {s}", "schema"),
    ("CREATE LANGUAGE {m} HANDLER h", "db"),
    ("CREATE ACCESS METHOD {m} TYPE INDEX HANDLER h", "db"),
    ("CREATE FOREIGN DATA WRAPPER {m}", "db"),
    ("ALTER FOREIGN DATA WRAPPER {m} OPTIONS (ADD x '1')", "db"),
    ("CREATE SERVER {m} FOREIGN DATA WRAPPER x", "db"),
    ("ALTER SERVER {m} VERSION '2'", "db"),
    ("CREATE PUBLICATION {m} FOR TABLE {s}.{t}", "db"),
    ("ALTER PUBLICATION {m} ADD TABLE {s}.{t}", "db"),
    ("ALTER PUBLICATION {m} ADD TABLES IN SCHEMA {s}", "db"),
    ("CREATE USER MAPPING FOR {r} SERVER {m}", None),
    ("ALTER USER MAPPING FOR {r} SERVER {m} OPTIONS (ADD u 'x')", None),
    ("CREATE EVENT TRIGGER {m} ON ddl_command_start EXECUTE FUNCTION f()", None),
    ("ALTER EVENT TRIGGER {m} DISABLE", None),
    ("CREATE SUBSCRIPTION {m} CONNECTION 'x' PUBLICATION p", None),
    ("ALTER SUBSCRIPTION {m} DISABLE", None),
    ("CREATE ROLE {r}", None),
    ("ALTER ROLE {r} NOLOGIN", None),
    ("ALTER ROLE {r} SET work_mem = '1MB'", None),
    ("REASSIGN OWNED BY {r} TO {m}", None),
    ("CREATE DATABASE {m}", None),
    ("ALTER DATABASE {m} CONNECTION LIMIT 5", None),
    ("ALTER DATABASE {m} SET work_mem = '1MB'", None),
    ("ALTER DATABASE {m} REFRESH COLLATION VERSION", None),
    ("CREATE TABLESPACE {m} LOCATION '/x'", None),
    ("ALTER TABLESPACE {m} SET (seq_page_cost = 1)", None),
    ("ALTER TABLE ALL IN TABLESPACE {m} SET TABLESPACE x", "db"),
    ("ALTER SYSTEM SET work_mem = '1MB'", None),
    ("LOAD 'x'", None),
    # ALTER on relations and types
    ("ALTER TABLE {s}.{t} ADD COLUMN {m} integer", "tab"),
    ("ALTER TABLE {s}.{t} ALTER COLUMN {m} SET DEFAULT 1", "tab"),
    ("ALTER TABLE {s}.{t} REPLICA IDENTITY FULL", "tab"),
    ("ALTER INDEX {s}.{t} SET (fillfactor = 50)", "tab"),
    ("ALTER SEQUENCE {s}.{t} RESTART", "tab"),
    ("ALTER VIEW {s}.{t} SET (security_barrier)", "tab"),
    ("ALTER TYPE {s}.{n} ADD VALUE 'x'", "obj"),
    ("ALTER TYPE {s}.{n} SET (receive = NONE)", "obj"),
    ("ALTER TYPE {s}.{n} ADD ATTRIBUTE {m} integer", "obj"),
    ("ALTER DOMAIN {s}.{n} SET NOT NULL", "obj"),
    *[(f"ALTER {k} {{s}}.{{n}}({{args}}) IMMUTABLE", "obj") for k in ("FUNCTION", "ROUTINE")],
    ("ALTER PROCEDURE {s}.{n}({args}) SECURITY DEFINER", "obj"),
    # data, maintenance, session
    ("INSERT INTO {s}.{t} VALUES (1)", "tab"),
    ("UPDATE {s}.{t} SET a = 1", "tab"),
    ("DELETE FROM {s}.{t}", "tab"),
    ("MERGE INTO {s}.{t} t USING (SELECT 1 AS a) v ON t.a = v.a WHEN MATCHED THEN DELETE", "tab"),
    ("COPY {s}.{t} FROM STDIN", "tab"),
    ("TRUNCATE {s}.{t}", "tab"),
    ("SELECT * FROM {s}.{t} UNION SELECT 1", "tab"),
    ("SELECT 1 INTO {s}.{t}", "tab"),
    ("LOCK TABLE {s}.{t}", "tab"),
    ("EXPLAIN SELECT 1 FROM {s}.{t}", "tab"),
    ("REFRESH MATERIALIZED VIEW {s}.{t}", "tab"),
    ("CLUSTER {s}.{t} USING {m}", "tab"),
    ("VACUUM {s}.{t}", "tab"),
    ("REINDEX TABLE {s}.{t}", "tab"),
    ("REINDEX SCHEMA {s}", "schema"),
    ("REINDEX DATABASE {m}", "db"),
    ("CALL {s}.{n}(1)", None),
    ("DO $$ BEGIN NULL; END $$", None),
    ("SET search_path = {s}", None),
    ("SHOW work_mem", None),
    ("SET CONSTRAINTS ALL IMMEDIATE", None),
    ("BEGIN", None),
    ("CHECKPOINT", None),
    ("DISCARD ALL", None),
    ("LISTEN {m}", None),
    ("UNLISTEN {m}", None),
    ("NOTIFY {m}", None),
    ("PREPARE {m} AS SELECT 1", None),
    ("EXECUTE {m}", None),
    ("DEALLOCATE {m}", None),
    ("DECLARE {m} CURSOR FOR SELECT 1", None),
    ("FETCH 1 FROM {m}", None),
    ("CLOSE {m}", None),
]
# Statement node classes no top-level statement produces: PL/pgSQL's assignment, and a set
# operation's inner node (the parser gives a SelectStmt).
NOT_TOP_LEVEL = {"PLAssignStmt", "SetOperationStmt"}
# Object types the parser never puts in a statement (they name catalog entries internally).
NEVER_PARSED = {
    ObjectType.OBJECT_AMOP,
    ObjectType.OBJECT_AMPROC,
    ObjectType.OBJECT_DEFAULT,
    ObjectType.OBJECT_DEFACL,
    ObjectType.OBJECT_PUBLICATION_REL,
    ObjectType.OBJECT_PUBLICATION_NAMESPACE,
    ObjectType.OBJECT_USER_MAPPING,
}
_OBJECT_TYPE_FIELDS = ("removeType", "objtype", "objectType", "renameType", "kind")
_REPR = re.compile(r"<[A-Z][A-Za-z]*[ >]|[A-Z][a-z]+[A-Z][A-Za-z]*\b|\bsval=|\bNone\b|String\(")


def render(template: str, s: str, n: str, t: str, m: str, op: str, args: list[str]) -> str:
    user = f"{q(s)}.{q(n)}"
    return template.format(
        s=q(s),
        n=q(n),
        t=q(t),
        m=q(m),
        r=q("role " + m),
        op=op,
        u=user,
        args=", ".join(user if a == "USER" else a for a in args),
        args1=", ".join(user if a == "USER" else a for a in args or ["integer"]),
    )


def _walk(node: object, seen_nodes: set[str], seen_types: set[ObjectType]) -> None:
    if isinstance(node, ast.Node):
        seen_nodes.add(type(node).__name__)
        for name in node.__slots__:  # type: ignore[attr-defined]
            value = getattr(node, name, None)
            if name in _OBJECT_TYPE_FIELDS and isinstance(value, ObjectType):
                seen_types.add(value)
            _walk(value, seen_nodes, seen_types)
    elif isinstance(node, (list, tuple)):
        for x in node:
            _walk(x, seen_nodes, seen_types)


def test_the_templates_cover_every_statement_kind_and_object_type() -> None:
    seen_nodes: set[str] = {"RawStmt"}
    seen_types: set[ObjectType] = set()
    for template, _ in TEMPLATES:
        for raw in pglast.parse_sql(render(template, "s", "n", "t", "m", "+", ["integer"])):
            _walk(raw.stmt, seen_nodes, seen_types)
    statements = {name for name in dir(ast) if name.endswith("Stmt") and isinstance(getattr(ast, name), type)}
    assert statements - NOT_TOP_LEVEL - seen_nodes == set()
    assert set(ObjectType) - NEVER_PARSED - seen_types == set()
    assert NEVER_PARSED & seen_types == set()


@functools.cache
def _example_declaration() -> PostgisDeclaration:
    decl = load_bundle(MIGRATIONS / "postgis" / "PG-MIG-2026-02-28-01").declaration
    assert isinstance(decl, PostgisDeclaration)
    return decl


def _scope_allows(schema: str, name: str | None, allowed_schema: str) -> bool:
    """Whether a scope of one schema (and, for a named object, ``schema.name`` as its only
    allowed table: qualified, so that dots in the name stay literal) allows the object."""
    decl = _example_declaration()
    scope = decl.scope.model_copy(
        update={
            "allowed_schemas": [allowed_schema],
            "allowed_tables": [f"{schema}.{name}"] if name else [],
            "forbidden_schemas": [],
            "forbidden_tables": [],
            "protected_schemas": [],
            "protected_tables": [],
        }
    )
    return PgScope(decl.model_copy(update={"scope": scope})).allowed(schema, name)


@pytest.mark.parametrize(("template", "expect"), TEMPLATES, ids=[t for t, _ in TEMPLATES])
@settings(max_examples=15, deadline=None, database=None)
@given(s=IDENT, n=IDENT, t=IDENT, m=IDENT, op=OPERATOR, args=ARG_TYPES)
def test_every_target_is_a_plain_name_a_scope_can_match(
    template: str, expect: str | None, s: str, n: str, t: str, m: str, op: str, args: list[str]
) -> None:
    sql = render(template, s, n, t, m, op, args)
    (raw,) = pglast.parse_sql(sql)
    _kind, texts, _txn, _note = classify_statement(raw.stmt, ["$user", "public"])
    drawn = (s, n, t, m)
    for text in texts:  # what the plan reports: no parser node's repr
        assert not _REPR.search(functools.reduce(lambda x, d: x.replace(d, ""), drawn, text)), (sql, text)
    targets = statement_targets(raw.stmt, "public")
    assert texts == sorted({x.text for x in targets})
    for x in targets:
        assert isinstance(x, Target) and isinstance(x.text, str) and x.text, sql
        if x.schema is None:
            assert x.name is None, (sql, x)
            continue
        assert isinstance(x.schema, str) and (x.name is None or isinstance(x.name, str)), (sql, x)
        # A scope that names the target's schema and name allows it; one naming another schema does not.
        assert _scope_allows(x.schema, x.name, x.schema), (sql, x)
        assert not _scope_allows(x.schema, x.name, x.schema + "-other"), (sql, x)
    by_name = {(x.schema, x.name) for x in targets}
    if expect == "obj":
        assert (s, n) in by_name, (sql, targets)
    elif expect == "op":
        assert (s, op) in by_name, (sql, targets)
    elif expect == "tab":
        assert (s, t) in by_name, (sql, targets)
    elif expect == "schema":
        assert Target(f"{s}.*", s, None, "schema") in targets, (sql, targets)
    elif expect == "db":
        assert any(x.schema is None for x in targets), (sql, targets)


@pytest.mark.parametrize(
    ("sql", "texts"),
    [
        ("DROP FUNCTION public.f()", ["public.f()"]),
        (
            "DROP FUNCTION f(int, varchar(3), text[], app.money, double precision)",
            ["public.f(integer, varchar, text[], app.money, double precision)"],
        ),
        ("DROP FUNCTION public.f(IN a int, OUT b int, VARIADIC c int[])", ["public.f(integer, integer[])"]),
        ("CREATE FUNCTION app.f(a int, OUT b int) RETURNS int LANGUAGE sql AS 'SELECT 1'", ["app.f(integer)"]),
        ("DROP PROCEDURE public.p(text)", ["public.p(text)"]),
        ("DROP AGGREGATE public.a(*)", ["public.a(*)"]),
        ("DROP AGGREGATE public.a(int ORDER BY text)", ["public.a(integer, text)"]),
        ("ALTER FUNCTION public.f() OWNER TO someone", ["public.f()"]),
        ("DROP OPERATOR public.+(integer, integer)", ["public.+(integer,integer)"]),
        ("DROP OPERATOR public.<->(geometry, geometry)", ["public.<->(geometry,geometry)"]),
        ("DROP OPERATOR ~(NONE, int)", ["public.~(NONE,integer)"]),
        ("DROP CAST (app.money AS numeric)", ["(app.money AS numeric)"]),
        ("DROP OPERATOR CLASS app.oc USING btree", ["app.oc USING btree"]),
        ("GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_file(text) TO PUBLIC", ["pg_catalog.pg_read_file(text)"]),
        ("DROP LANGUAGE plpython3u", ["language plpython3u"]),
        ("DROP POLICY p ON parcels", ["public.parcels"]),
    ],
)
def test_targets_are_named_in_sql_terms(sql: str, texts: list[str]) -> None:
    (raw,) = pglast.parse_sql(sql)
    assert classify_statement(raw.stmt, ["$user", "public"])[1] == texts


def _bundle(tmp_path: Path, forward: str, extra: str = "") -> Path:
    import shutil

    src = MIGRATIONS / "postgis" / "PG-MIG-2026-02-28-01"
    dst = tmp_path / src.name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("baselines", "diffs", "receipts"))
    (dst / "forward.sql").write_text(forward)
    text = (
        (dst / "migration.yml").read_text().replace("    - parcels\n", "    - parcels\n    - f\n    - p\n    - a\n", 1)
    )
    (dst / "migration.yml").write_text(text + extra)
    return dst


@pytest.mark.parametrize(
    ("sql", "target"),
    [
        ("DROP FUNCTION public.f()", "public.f()"),
        ("DROP PROCEDURE public.p()", "public.p()"),
        ("DROP AGGREGATE public.a(integer)", "public.a(integer)"),
        ("ALTER FUNCTION public.f() OWNER TO CURRENT_USER", "public.f()"),
        ("COMMENT ON FUNCTION f() IS 'x'", "public.f()"),
        ("GRANT EXECUTE ON FUNCTION public.f() TO PUBLIC", "public.f()"),
    ],
)
def test_a_routine_in_the_allowed_scope_passes_the_plan(tmp_path: Path, sql: str, target: str) -> None:
    plan = static_plan(load_bundle(_bundle(tmp_path, sql + ";\n")), "postgis")
    assert [s.targets for s in plan.statements] == [(target,)]
    assert [f.code for f in plan.findings if f.tier == "hard_fail"] == []


@pytest.mark.parametrize(
    ("sql", "code", "obj"),
    [
        ("DROP FUNCTION public.g()", "plan_out_of_scope", "public.g()"),
        ("DROP FUNCTION governance.f(integer)", "plan_forbidden_target", "governance.f(integer)"),
        ("DROP CAST (audit.t AS text)", "plan_forbidden_target", "(audit.t AS text)"),
        ("DROP CAST (text AS integer)", "plan_out_of_scope", "(text AS integer)"),
        (
            "GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_file(text) TO PUBLIC",
            "plan_out_of_scope",
            "pg_catalog.pg_read_file(text)",
        ),
        ("CREATE LANGUAGE plperl HANDLER plperl_call_handler", "plan_out_of_scope", "language plperl"),
        ("CREATE LANGUAGE plperl", "plan_out_of_scope", "extension plperl"),  # the parser makes it an extension
    ],
)
def test_a_routine_or_cast_outside_the_scope_is_refused_by_the_plan(
    tmp_path: Path, sql: str, code: str, obj: str
) -> None:
    plan = static_plan(load_bundle(_bundle(tmp_path, sql + ";\n")), "postgis")
    assert [(f.code, f.object) for f in plan.findings if f.tier == "hard_fail"] == [(code, obj)]
