"""What stored code refers to, read with pglast: SQL statements and expressions, and PL/pgSQL
bodies through pglast's PL/pgSQL parser (the SQL inside is parsed again).

The result names the relations and functions the code refers to, as written (schema or
None when unqualified), and says what cannot be read statically: ``EXECUTE`` of a string
built at run time, functions that run a query given as a string, or a body that does not
parse. Nothing here touches a database; ``posture`` resolves the names in the catalog.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pglast
from pglast import ast
from pglast.parser import ParseError

# Functions that run a query given as text: with a constant argument the query is read
# here, with anything else the function is as opaque as EXECUTE.
QUERY_FUNCTIONS = frozenset({"query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "ts_stat"})
# ... that read a whole table or schema named by their first argument.
TABLE_FUNCTIONS = frozenset({"table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema"})
SCHEMA_FUNCTIONS = frozenset({"schema_to_xml", "schema_to_xmlschema", "schema_to_xml_and_xmlschema"})
# ... that read anything (a whole database, a cursor opened elsewhere, another connection).
OPAQUE_FUNCTIONS = frozenset(
    {
        "database_to_xml",
        "database_to_xmlschema",
        "database_to_xml_and_xmlschema",
        "cursor_to_xml",
        "cursor_to_xmlschema",
        "dblink",
        "dblink_exec",
        "dblink_open",
        "dblink_send_query",
    }
)
# ... that read or write a sequence named by their first argument.
SEQUENCE_FUNCTIONS = frozenset({"nextval", "setval", "currval", "pg_sequence_last_value"})

Name = tuple[str | None, str]  # (schema, name); schema None when the code does not qualify it


@dataclass
class Refs:
    """What a piece of code refers to, and what of it could not be read."""

    relations: set[Name] = field(default_factory=set)
    functions: set[Name] = field(default_factory=set)
    schemas: set[str] = field(default_factory=set)  # read whole (schema_to_xml)
    dynamic: list[str] = field(default_factory=list)  # why some of it runs text built at run time
    unparsed: str | None = None  # why it could not be parsed at all

    def merge(self, other: Refs) -> None:
        self.relations |= other.relations
        self.functions |= other.functions
        self.schemas |= other.schemas
        self.dynamic.extend(d for d in other.dynamic if d not in self.dynamic)
        self.unparsed = self.unparsed or other.unparsed


def split_name(text: str) -> list[str]:
    """'a."B".c' -> ['a', 'B', 'c']: unquoted parts lowercased, as the server reads them."""
    parts = re.findall(r'"((?:[^"]|"")*)"|([^."\s]+)', text.strip())
    return [q.replace('""', '"') if q else u.lower() for q, u in parts]


def _name(parts: list[str]) -> Name | None:
    if not parts:
        return None
    return (parts[-2] if len(parts) >= 2 else None, parts[-1])


def _string(node: Any) -> str | None:
    """The text of a string constant, through any casts (``'x'::regclass``)."""
    while isinstance(node, ast.TypeCast):
        node = node.arg
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.String):
        return str(node.val.sval)
    return None


def nodes(root: Any) -> Iterator[Any]:
    """Every pglast node under ``root`` (itself included), depth first."""
    stack = [root]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Node):
            yield n
            stack.extend(getattr(n, name, None) for name in n.__slots__)  # type: ignore[attr-defined]
        elif isinstance(n, (list, tuple)):
            stack.extend(n)


def cte_names(root: Any) -> set[str]:
    return {n.ctename for n in nodes(root) if isinstance(n, ast.CommonTableExpr) and n.ctename}


def _funcname(n: ast.FuncCall) -> Name | None:
    return _name([str(getattr(p, "sval", "")) for p in n.funcname or ()])


def statement_refs(stmt: Any) -> Refs:
    """What one parsed statement (or expression) refers to."""
    out = Refs()
    ctes = cte_names(stmt)
    for n in nodes(stmt):
        if isinstance(n, ast.RangeVar) and n.relname:
            if n.schemaname is None and n.relname in ctes:
                continue
            out.relations.add((n.schemaname, n.relname))
        elif isinstance(n, ast.FuncCall):
            fn = _funcname(n)
            if fn is None:
                continue
            out.functions.add(fn)
            first = _string(n.args[0]) if n.args else None
            name = fn[1]
            if name in SEQUENCE_FUNCTIONS or name in TABLE_FUNCTIONS:
                rel = _name(split_name(first)) if first is not None else None
                if rel is not None:
                    out.relations.add(rel)
                elif name in TABLE_FUNCTIONS:
                    out.dynamic.append(f"{name}() of a table chosen at run time")
            elif name in SCHEMA_FUNCTIONS:
                if first is not None:
                    out.schemas.add(split_name(first)[-1] if split_name(first) else first)
                else:
                    out.dynamic.append(f"{name}() of a schema chosen at run time")
            elif name in QUERY_FUNCTIONS:
                if first is not None:
                    out.merge(sql_refs(first))
                else:
                    out.dynamic.append(f"{name}() of a query built at run time")
            elif name in OPAQUE_FUNCTIONS:
                out.dynamic.append(f"{name}() runs what it is given")
        elif isinstance(n, ast.TypeCast):
            text = _string(n.arg)
            names = [str(getattr(p, "sval", "")) for p in ((n.typeName.names or ()) if n.typeName else ())]
            if text is not None and names and names[-1] == "regclass":
                rel = _name(split_name(text))
                if rel is not None:
                    out.relations.add(rel)
        elif isinstance(n, ast.ExecuteStmt):
            out.dynamic.append(f"EXECUTE of prepared statement {n.name}")
        elif isinstance(n, ast.DoStmt):
            out.merge(_do_refs(n))
    return out


def _do_refs(n: ast.DoStmt) -> Refs:
    code = lang = None
    for d in n.args or ():
        if d.defname == "as":
            code = getattr(d.arg, "sval", None)
        elif d.defname == "language":
            lang = getattr(d.arg, "sval", None)
    if code is None or (lang or "plpgsql").lower() != "plpgsql":
        return Refs(dynamic=["a DO block in a language other than PL/pgSQL"])
    tag = "$kfm_do$"
    if tag in code:
        return Refs(dynamic=["a DO block that cannot be quoted for parsing"])
    return plpgsql_refs(f"DO {tag}{code}{tag}")


def sql_refs(text: str) -> Refs:
    """What SQL statements (a function body, a query string) refer to."""
    try:
        stmts = pglast.parse_sql(text)
    except ParseError as exc:
        return Refs(unparsed=f"does not parse: {exc.args[0]}")
    out = Refs()
    for raw in stmts:
        out.merge(statement_refs(raw.stmt))
    return out


def _expr_refs(text: str) -> Refs:
    return sql_refs("SELECT " + text)


# An assignment's target in PL/pgSQL: a name, dotted names and subscripts, then := or =.
_ASSIGN_TARGET = re.compile(
    r'^\s*(?:"(?:[^"]|"")*"|[^\s.:=\["]+)(?:\s*\.\s*(?:"(?:[^"]|"")*"|[^\s.:=\["]+))*(?:\s*\[[^\]]*\])*\s*:?=\s*',
    re.S,
)
# PLpgSQL_expr.parseMode (RawParseMode): a statement, an expression, an assignment.
_MODE_STATEMENT = 0
_MODE_EXPRESSION = 2
_MODES_ASSIGN = (3, 4, 5)


def _constant(text: str) -> str | None:
    """The string, when the expression ``text`` is nothing but a string constant."""
    try:
        stmts = pglast.parse_sql("SELECT " + text)
    except ParseError:
        return None
    if len(stmts) != 1 or not isinstance(stmts[0].stmt, ast.SelectStmt):
        return None
    targets = stmts[0].stmt.targetList or ()
    if len(targets) != 1 or stmts[0].stmt.fromClause:
        return None
    value = targets[0].val
    return str(value.val.sval) if isinstance(value, ast.A_Const) and isinstance(value.val, ast.String) else None


def _plpgsql_expr(expr: dict[str, Any], dynamic: bool, line: int | None) -> Refs:
    """What one PL/pgSQL expression or statement refers to. Messages name its line in the
    body, never its text: function bodies stay in the database."""
    query = str(expr.get("query", ""))
    mode = int(expr.get("parseMode", 0))
    where = f" (line {line} of the body)" if line else ""
    if dynamic:
        const = _constant(query)
        if const is not None:
            return sql_refs(const)
        out = _expr_refs(query)  # what builds the string may itself read something
        out.dynamic.append(f"EXECUTE of a string built at run time{where}")
        return out
    if mode == _MODE_STATEMENT:
        return sql_refs(query)
    if mode == _MODE_EXPRESSION:
        return _expr_refs(query)
    if mode in _MODES_ASSIGN:
        m = _ASSIGN_TARGET.match(query)
        return _expr_refs(query[m.end() :]) if m else Refs(unparsed=f"an assignment does not parse{where}")
    return Refs()


_DYNAMIC_STATEMENTS = ("PLpgSQL_stmt_dynexecute", "PLpgSQL_stmt_dynfors")


def _walk_plpgsql(node: Any, out: Refs, dynamic: bool = False, line: int | None = None) -> None:
    if isinstance(node, list):
        for x in node:
            _walk_plpgsql(x, out, line=line)
        return
    if not isinstance(node, dict):
        return
    line = node.get("lineno", line) if isinstance(node.get("lineno", line), int) else line
    for key, value in node.items():
        if key == "PLpgSQL_expr" and isinstance(value, dict):
            out.merge(_plpgsql_expr(value, dynamic, line))
        elif key in _DYNAMIC_STATEMENTS and isinstance(value, dict):
            at = value.get("lineno", line)
            for k, v in value.items():
                _walk_plpgsql(v, out, dynamic=(k == "query"), line=at)
        elif key == "dynquery":
            _walk_plpgsql(value, out, dynamic=True, line=line)
        else:
            _walk_plpgsql(value, out, line=line)


def plpgsql_refs(definition: str) -> Refs:
    """What a PL/pgSQL function, procedure or DO block refers to; ``definition`` is its
    whole CREATE statement (``pg_get_functiondef``) or DO statement."""
    try:
        tree = pglast.parse_plpgsql(definition)
    except ParseError as exc:
        return Refs(unparsed=f"PL/pgSQL does not parse: {exc.args[0]}")
    except Exception as exc:  # the PL/pgSQL parser raises others on what it cannot compile
        return Refs(unparsed=f"PL/pgSQL does not parse: {exc}")
    out = Refs()
    _walk_plpgsql(tree, out)
    return out


def search_path(config: Iterable[str] | None, owner: str) -> list[str] | None:
    """The schemas a function's ``SET search_path`` names (``$user`` as its owner), or None
    when it does not pin one: then an unqualified name can mean any schema."""
    for item in config or ():
        key, _, value = item.partition("=")
        if key.strip().lower() == "search_path":
            out = []
            for part in value.split(","):
                s = part.strip().strip('"')
                out.append(owner if s == "$user" else s)
            return [s for s in out if s]
    return None


def conjuncts(expr: str | None) -> frozenset[str] | None:
    """The AND-ed conditions of an expression (as pg_get_expr writes it), each in one
    canonical form; the empty set for no expression (true); None when it does not parse."""
    if expr is None:
        return frozenset()
    from pglast.stream import RawStream

    try:
        stmt: Any = pglast.parse_sql("SELECT " + expr)[0].stmt
    except ParseError:
        return None
    todo = [stmt.targetList[0].val]
    out: set[str] = set()
    while todo:
        e = todo.pop()
        if isinstance(e, ast.BoolExpr) and e.boolop is not None and int(e.boolop) == 0:  # AND_EXPR
            todo.extend(e.args or ())
        else:
            out.add(RawStream()(e))
    return frozenset(out)
