"""What a statement names, in SQL terms: the targets of the PostGIS static plan.

A target is the object a statement creates, alters, drops, comments on, grants on or
renames, written as SQL writes it (``public.parcels``, ``public.f(integer, text)``,
``public.+(integer,integer)``, ``(app.money AS numeric)``, ``app.*`` for a whole schema,
``language plpython3u`` for a database-level object), together with what the scope is
matched against: the schema and the object's bare name (a function's or operator's name
without its arguments, as the gate matches ``allowed_tables``). Parser nodes never leak
into a target's text.

A target without a schema is a database-level object (a language, a foreign server, a
cast between built-in types...): no scope can allow it. Unqualified names take the first
schema of the search path, as the statement would.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pglast import ast
from pglast.enums.parsenodes import ObjectType as O
from pglast.enums.parsenodes import ReindexObjectType
from pglast.stream import RawStream

SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema"})


@dataclass(frozen=True, order=True)
class Target:
    text: str  # the object in SQL terms
    schema: str | None  # the schema whose scope decides; None: a database-level object
    name: str | None = None  # its bare name there (matched against allowed_tables); None: the whole schema
    kind: str = "relation"


# ----------------------------------------------------------------- names and types


def _strings(obj: Any) -> list[str]:
    """The names of a name list (``any_name``), a String or a TypeName."""
    if isinstance(obj, ast.String):
        return [obj.sval] if obj.sval is not None else []
    if isinstance(obj, ast.TypeName):
        return _strings(obj.names)
    if isinstance(obj, (list, tuple)):
        return [x.sval for x in obj if isinstance(x, ast.String) and x.sval is not None]
    return []


def _qualify(parts: list[str], default: str) -> tuple[str, str] | None:
    """(schema, name) of a possibly qualified name (``db.schema.name`` keeps the last two)."""
    if not parts:
        return None
    if len(parts) == 1:
        return default, parts[0]
    return parts[-2], parts[-1]


def _named(parts: list[str], default: str, kind: str) -> list[Target]:
    q = _qualify(parts, default)
    return [Target(f"{q[0]}.{q[1]}", q[0], q[1], kind)] if q else []


def type_text(t: Any) -> str:
    """A type as SQL writes it (``integer``, ``app.money``, ``text[]``), without typmods:
    a function's identity ignores them."""
    if not isinstance(t, ast.TypeName):
        return "NONE"
    bare = ast.TypeName(names=t.names, arrayBounds=t.arrayBounds, pct_type=t.pct_type, typemod=-1)
    return str(RawStream()(bare))


def _type_schema(t: Any) -> str | None:
    """The schema of an explicitly qualified, user-defined type; None for built-in and
    unqualified types (which the plan cannot resolve)."""
    names = _strings(t)
    return names[-2] if len(names) >= 2 and names[-2] not in SYSTEM_SCHEMAS else None


def _args(types: Any) -> str:
    return ", ".join(type_text(t) for t in types or ())


def _routine(obj: ast.ObjectWithArgs, default: str, objtype: O) -> list[Target]:
    """A function, procedure, routine or aggregate: ``schema.name(argtypes)``."""
    q = _qualify(_strings(obj.objname), default)
    if q is None:
        return []
    if obj.args_unspecified:
        text = f"{q[0]}.{q[1]}"
    elif objtype == O.OBJECT_AGGREGATE and not obj.objargs:
        text = f"{q[0]}.{q[1]}(*)"
    else:
        text = f"{q[0]}.{q[1]}({_args(obj.objargs)})"
    return [Target(text, q[0], q[1], "function")]


def _operator(parts: list[str], left: Any, right: Any, default: str) -> list[Target]:
    """An operator: ``schema.op(lefttype,righttype)``, NONE for a missing side."""
    q = _qualify(parts, default)
    if q is None:
        return []
    return [Target(f"{q[0]}.{q[1]}({type_text(left)},{type_text(right)})", q[0], q[1], "operator")]


def _with_method(parts: list[str], method: str | None, default: str, kind: str) -> list[Target]:
    """An operator class or family: ``schema.name USING method``."""
    q = _qualify(parts, default)
    return [Target(f"{q[0]}.{q[1]} USING {method}", q[0], q[1], kind)] if q else []


def _by_types(text: str, types: list[Any], kind: str) -> list[Target]:
    """A cast or transform belongs to no schema. It is judged by each user-defined type it
    names (one target per type: its schema, and its name for ``allowed_tables``), as only
    a type's owner may create one; without such a type it is database-level."""
    owned = sorted({(s, _strings(t)[-1]) for t in types if (s := _type_schema(t))})
    if not owned:
        return [Target(text, None, None, kind)]
    return [Target(text, s, name, kind) for s, name in owned]


def _cast(source: Any, target: Any) -> list[Target]:
    return _by_types(f"({type_text(source)} AS {type_text(target)})", [source, target], "cast")


def _transform(typ: Any, lang: str | None) -> list[Target]:
    return _by_types(f"FOR {type_text(typ)} LANGUAGE {lang}", [typ], "transform")


def _schema(name: str) -> Target:
    return Target(f"{name}.*", name, None, "schema")


def _schemas(names: list[str | None] | list[str]) -> list[Target]:
    return [_schema(n) for n in names if n]


# Database-level objects: named by their kind, judged by no schema.
_DATABASE_LEVEL = {
    O.OBJECT_ACCESS_METHOD: "access method",
    O.OBJECT_DATABASE: "database",
    O.OBJECT_EVENT_TRIGGER: "event trigger",
    O.OBJECT_FDW: "foreign data wrapper",
    O.OBJECT_FOREIGN_SERVER: "server",
    O.OBJECT_LANGUAGE: "language",
    O.OBJECT_LARGEOBJECT: "large object",
    O.OBJECT_PARAMETER_ACL: "parameter",
    O.OBJECT_PUBLICATION: "publication",
    O.OBJECT_ROLE: "role",
    O.OBJECT_SUBSCRIPTION: "subscription",
    O.OBJECT_TABLESPACE: "tablespace",
}


def _role(spec: ast.RoleSpec) -> str:
    """A role as SQL writes it: its name, or CURRENT_USER, SESSION_USER, PUBLIC..."""
    return spec.rolename or str(getattr(spec.roletype, "name", "")).removeprefix("ROLESPEC_")


def database_level(word: str, name: Any) -> Target:
    if isinstance(name, ast.Integer):
        name = name.ival
    elif isinstance(name, ast.Float):
        name = name.fval
    elif isinstance(name, ast.String):
        name = name.sval
    elif isinstance(name, ast.RoleSpec):
        name = _role(name)
    return Target(f"{word} {name}", None, None, word.replace(" ", "_"))


# Objects named by a (possibly qualified) name list, and the kind of target they make.
_NAMED = {
    O.OBJECT_TABLE: "relation",
    O.OBJECT_SEQUENCE: "relation",
    O.OBJECT_VIEW: "relation",
    O.OBJECT_MATVIEW: "relation",
    O.OBJECT_FOREIGN_TABLE: "relation",
    O.OBJECT_INDEX: "index",
    O.OBJECT_TYPE: "type",
    O.OBJECT_DOMAIN: "type",
    O.OBJECT_COLLATION: "collation",
    O.OBJECT_CONVERSION: "conversion",
    O.OBJECT_STATISTIC_EXT: "statistics",
    O.OBJECT_TSPARSER: "text_search",
    O.OBJECT_TSDICTIONARY: "text_search",
    O.OBJECT_TSTEMPLATE: "text_search",
    O.OBJECT_TSCONFIGURATION: "text_search",
}
# Objects of a table, named ``[schema.]table.member``: the target is the table.
_ON_TABLE = {O.OBJECT_COLUMN, O.OBJECT_TABCONSTRAINT, O.OBJECT_POLICY, O.OBJECT_TRIGGER, O.OBJECT_RULE}
_ROUTINES = {O.OBJECT_FUNCTION, O.OBJECT_PROCEDURE, O.OBJECT_ROUTINE, O.OBJECT_AGGREGATE}


def object_targets(objtype: O | None, obj: Any, default: str) -> list[Target]:
    """The targets of the object an ``ObjectType`` and its parser node name, in any
    statement that takes one (DROP, COMMENT, SECURITY LABEL, ALTER ... OWNER / RENAME /
    SET SCHEMA / DEPENDS ON, ALTER EXTENSION ... ADD/DROP, GRANT)."""
    if obj is None or objtype is None:
        return []
    if isinstance(obj, ast.RangeVar):
        schema, name = obj.schemaname or default, obj.relname or ""
        return [Target(f"{schema}.{name}", schema, name)]
    if objtype in _ROUTINES and isinstance(obj, ast.ObjectWithArgs):
        return _routine(obj, default, objtype)
    if objtype == O.OBJECT_OPERATOR and isinstance(obj, ast.ObjectWithArgs):
        args = [*(obj.objargs or ()), None, None]
        return _operator(_strings(obj.objname), args[0], args[1], default)
    if objtype in (O.OBJECT_OPCLASS, O.OBJECT_OPFAMILY):
        parts = _strings(obj)  # the access method first, then the name
        kind = "opclass" if objtype == O.OBJECT_OPCLASS else "opfamily"
        return _with_method(parts[1:], parts[0], default, kind) if len(parts) > 1 else []
    if objtype == O.OBJECT_CAST and isinstance(obj, (list, tuple)) and len(obj) == 2:
        return _cast(obj[0], obj[1])
    if objtype == O.OBJECT_TRANSFORM and isinstance(obj, (list, tuple)) and len(obj) == 2:
        return _transform(obj[0], _strings(obj[1])[0] if _strings(obj[1]) else "?")
    if objtype == O.OBJECT_DOMCONSTRAINT:  # [TypeName, constraint] or the domain's name list
        domain = obj[0] if isinstance(obj, (list, tuple)) and obj and isinstance(obj[0], ast.TypeName) else obj
        return _named(_strings(domain), default, "type")
    if objtype in _ON_TABLE:
        return _named(_strings(obj)[:-1], default, "relation")
    if objtype in _NAMED:
        return _named(_strings(obj), default, _NAMED[objtype])
    if objtype == O.OBJECT_SCHEMA:
        return [_schema(n) for n in _strings(obj)]
    if objtype == O.OBJECT_EXTENSION:
        # An extension lives in a schema the statement does not name: the search path's.
        return [Target(f"extension {n}", default, n, "extension") for n in _strings(obj)]
    if objtype in _DATABASE_LEVEL:
        return [database_level(_DATABASE_LEVEL[objtype], obj)]
    # An object type without a name of its own here (ATTRIBUTE, AMOP, AMPROC, DEFAULT, DEFACL,
    # USER_MAPPING, PUBLICATION_REL...): the statement's relation or the gate names it.
    return []


# ------------------------------------------------------------------ statements


def _range_vars(node: Any) -> Iterator[ast.RangeVar]:
    if isinstance(node, ast.RangeVar):
        yield node
    if isinstance(node, ast.Node):
        for name in node.__slots__:  # type: ignore[attr-defined]
            yield from _range_vars(getattr(node, name, None))
    elif isinstance(node, (list, tuple)):
        for x in node:
            yield from _range_vars(x)


def _def_arg(stmt: ast.DefineStmt, name: str) -> Any:
    for d in stmt.definition or ():
        if isinstance(d, ast.DefElem) and d.defname == name:
            return d.arg
    return None


def _define(stmt: ast.DefineStmt, default: str) -> list[Target]:
    parts = _strings(stmt.defnames)
    if stmt.kind == O.OBJECT_OPERATOR:
        return _operator(parts, _def_arg(stmt, "leftarg"), _def_arg(stmt, "rightarg"), default)
    if stmt.kind == O.OBJECT_AGGREGATE:
        q = _qualify(parts, default)
        if q is None:
            return []
        if stmt.oldstyle:
            base = _def_arg(stmt, "basetype")
            args = "*" if base is None or _strings(base) == ["any"] else type_text(base)
        else:
            params = stmt.args[0] if stmt.args else None
            args = ", ".join(type_text(p.argType) for p in params) if params else "*"
        return [Target(f"{q[0]}.{q[1]}({args})", q[0], q[1], "function")]
    return _named(parts, default, _NAMED.get(stmt.kind, "type") if stmt.kind is not None else "type")


_IDENTITY_MODES = {"i", "b", "v", "d"}  # IN, INOUT, VARIADIC, default: what identifies a function


def _create_function(stmt: ast.CreateFunctionStmt, default: str) -> list[Target]:
    q = _qualify(_strings(stmt.funcname), default)
    if q is None:
        return []
    args = [p.argType for p in stmt.parameters or () if str(getattr(p.mode, "value", p.mode)) in _IDENTITY_MODES]
    return [Target(f"{q[0]}.{q[1]}({_args(args)})", q[0], q[1], "function")]


def _grant(stmt: ast.GrantStmt, default: str) -> list[Target]:
    from pglast.enums.parsenodes import GrantTargetType

    if stmt.targtype == GrantTargetType.ACL_TARGET_ALL_IN_SCHEMA:
        return _schemas(_strings(stmt.objects))
    out: list[Target] = []
    objtype = O.OBJECT_TABLE if stmt.objtype == O.OBJECT_COLUMN else stmt.objtype
    for obj in stmt.objects or ():
        out += object_targets(objtype, obj, default)
    return out


def _default_privileges(stmt: ast.AlterDefaultPrivilegesStmt) -> list[Target]:
    schemas = [n for d in stmt.options or () if d.defname == "schemas" for n in _strings(d.arg)]
    return _schemas(schemas) or [database_level("default privileges", "in every schema")]


def _reindex(stmt: ast.ReindexStmt) -> list[Target]:
    if stmt.kind == ReindexObjectType.REINDEX_OBJECT_SCHEMA and stmt.name:
        return [_schema(stmt.name)]
    if stmt.kind in (ReindexObjectType.REINDEX_OBJECT_DATABASE, ReindexObjectType.REINDEX_OBJECT_SYSTEM):
        return [database_level("database", stmt.name or "current")]
    return []


def _rename(stmt: ast.RenameStmt, default: str) -> list[Target]:
    if stmt.renameType == O.OBJECT_SCHEMA and stmt.subname:
        return [_schema(stmt.subname)]
    if stmt.renameType in _DATABASE_LEVEL and stmt.object is None and stmt.subname:
        return [database_level(_DATABASE_LEVEL[stmt.renameType], stmt.subname)]
    return object_targets(stmt.renameType, stmt.object, default)


def _opclass(stmt: ast.CreateOpClassStmt, default: str) -> list[Target]:
    out = _with_method(_strings(stmt.opclassname), stmt.amname, default, "opclass")
    if stmt.opfamilyname:
        out += _with_method(_strings(stmt.opfamilyname), stmt.amname, default, "opfamily")
    return out


def _extension(name: str | None, options: Any, default: str) -> Target:
    schema = next((_strings(d.arg)[0] for d in options or () if d.defname == "schema" and _strings(d.arg)), default)
    return Target(f"extension {name}", schema, name, "extension")


def _own_targets(stmt: Any, d: str) -> list[Target]:
    """The targets a statement names besides its relations (which ``_range_vars`` finds)."""
    if isinstance(stmt, ast.DropStmt):
        return [t for obj in stmt.objects or () for t in object_targets(stmt.removeType, obj, d)]
    if isinstance(stmt, (ast.CommentStmt, ast.SecLabelStmt)):
        return object_targets(stmt.objtype, stmt.object, d)
    if isinstance(stmt, (ast.AlterOwnerStmt, ast.AlterObjectSchemaStmt, ast.AlterObjectDependsStmt)):
        return object_targets(stmt.objectType, stmt.object, d)
    if isinstance(stmt, ast.RenameStmt):
        return _rename(stmt, d)
    if isinstance(stmt, ast.GrantStmt):
        return _grant(stmt, d)
    if isinstance(stmt, ast.AlterDefaultPrivilegesStmt):
        return _default_privileges(stmt)
    if isinstance(stmt, ast.AlterFunctionStmt):
        return object_targets(stmt.objtype, stmt.func, d)
    if isinstance(stmt, ast.AlterOperatorStmt):
        return object_targets(O.OBJECT_OPERATOR, stmt.opername, d)
    if isinstance(stmt, ast.CreateFunctionStmt):
        return _create_function(stmt, d)
    if isinstance(stmt, ast.DefineStmt):
        return _define(stmt, d)
    if isinstance(stmt, ast.IndexStmt) and stmt.idxname and stmt.relation is not None:
        schema = stmt.relation.schemaname or d
        return [Target(f"{schema}.{stmt.idxname}", schema, stmt.idxname, "index")]
    if isinstance(stmt, (ast.CreateEnumStmt, ast.CreateRangeStmt, ast.AlterEnumStmt, ast.AlterTypeStmt)):
        return _named(_strings(stmt.typeName), d, "type")
    if isinstance(stmt, ast.AlterDomainStmt):
        return _named(_strings(stmt.typeName), d, "type")
    if isinstance(stmt, ast.CreateDomainStmt):
        return _named(_strings(stmt.domainname), d, "type")
    if isinstance(stmt, ast.CreateConversionStmt):
        return _named(_strings(stmt.conversion_name), d, "conversion")
    if isinstance(stmt, ast.AlterCollationStmt):
        return _named(_strings(stmt.collname), d, "collation")
    if isinstance(stmt, (ast.CreateStatsStmt, ast.AlterStatsStmt)):
        return _named(_strings(stmt.defnames), d, "statistics")
    if isinstance(stmt, ast.AlterTSDictionaryStmt):
        return _named(_strings(stmt.dictname), d, "text_search")
    if isinstance(stmt, ast.AlterTSConfigurationStmt):
        return _named(_strings(stmt.cfgname), d, "text_search")
    if isinstance(stmt, ast.CreateCastStmt):
        return _cast(stmt.sourcetype, stmt.targettype)
    if isinstance(stmt, ast.CreateTransformStmt):
        return _transform(stmt.type_name, stmt.lang)
    if isinstance(stmt, ast.CreateOpClassStmt):
        return _opclass(stmt, d)
    if isinstance(stmt, (ast.CreateOpFamilyStmt, ast.AlterOpFamilyStmt)):
        return _with_method(_strings(stmt.opfamilyname), stmt.amname, d, "opfamily")
    if isinstance(stmt, ast.CreateExtensionStmt):
        return [_extension(stmt.extname, stmt.options, d)]
    if isinstance(stmt, ast.AlterExtensionStmt):
        return [Target(f"extension {stmt.extname}", d, stmt.extname, "extension")]
    if isinstance(stmt, ast.AlterExtensionContentsStmt):
        ext = Target(f"extension {stmt.extname}", d, stmt.extname, "extension")
        return [ext, *object_targets(stmt.objtype, stmt.object, d)]
    if isinstance(stmt, ast.ImportForeignSchemaStmt):
        return _schemas([stmt.local_schema])
    if isinstance(stmt, ast.ReindexStmt):
        return _reindex(stmt)
    return _database_level_statement(stmt)


def _database_level_statement(stmt: Any) -> list[Target]:
    if isinstance(stmt, ast.CreatePLangStmt):
        return [database_level("language", stmt.plname)]
    if isinstance(stmt, ast.CreateAmStmt):
        return [database_level("access method", stmt.amname)]
    if isinstance(stmt, (ast.CreateFdwStmt, ast.AlterFdwStmt)):
        return [database_level("foreign data wrapper", stmt.fdwname)]
    if isinstance(stmt, (ast.CreateForeignServerStmt, ast.AlterForeignServerStmt)):
        return [database_level("server", stmt.servername)]
    if isinstance(stmt, (ast.CreatePublicationStmt, ast.AlterPublicationStmt)):
        return [database_level("publication", stmt.pubname)]
    if isinstance(stmt, ast.DropOwnedStmt):
        return [database_level("objects owned by", ", ".join(_role(r) for r in stmt.roles or ()))]
    if isinstance(stmt, ast.AlterTableMoveAllStmt):
        return [database_level("tablespace", stmt.orig_tablespacename)]
    return []


def statement_targets(stmt: Any, default_schema: str) -> list[Target]:
    """Every target of one parsed statement, sorted, without duplicates."""
    if isinstance(stmt, ast.CreateSchemaStmt):
        name = stmt.schemaname or (stmt.authrole.rolename if stmt.authrole is not None else None)
        out = [_schema(name)] if name else []
        for elt in stmt.schemaElts or ():  # CREATE SCHEMA s CREATE TABLE t ...: t is s.t
            out += statement_targets(elt, name or default_schema)
        return sorted(set(out))
    out = [object_targets(O.OBJECT_TABLE, rv, default_schema)[0] for rv in _range_vars(stmt)]
    return sorted(set(out + _own_targets(stmt, default_schema)))
