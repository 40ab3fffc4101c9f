"""Catalog queries of the objects that belong to one relation, its *family*: the relation
itself, its columns, indexes, constraints, triggers, policies, statistics, rules and disabled
enforcement triggers.

Each query returns: kind, id, schema, table, digest, and the family (the relation's OID).
A capture can reuse an earlier capture's objects family by family (see ``state``); every
other kind (``catalog_global``) is captured in full each time.
"""

from __future__ import annotations

from airflow_kfm_migrations.stores.postgis.catalog_sql import (
    USER_SCHEMAS,
    description,
    expr_tree,
    not_ext,
    oid_names,
    row_sha256,
    tree_has_user_oid,
    tree_may_have_user_oid,
    vector_has_user_oid,
)

# A column's options (ALTER COLUMN ... SET (...)), in their order, without ``pg_attver``: since
# 15.20 the server stamps every column it creates or rewrites with that opaque version, which
# an ALTER of one column can change on another. NULL when no other option is set, as before.
_ATTOPTIONS = (
    "CASE WHEN a.attoptions IS NOT NULL THEN NULLIF(ARRAY(SELECT u.o FROM unnest(a.attoptions) "
    "WITH ORDINALITY u(o, i) WHERE u.o NOT LIKE 'pg\\_attver=%' ORDER BY u.i), '{}')::text END"
)


def _tree(tree: str, deparsed: str, legacy: bool) -> str:
    """A stored expression tree without parse locations; deparsed instead when it names an
    object by a per-database OID (see ``catalog_sql.tree_has_user_oid``). A cheap test first:
    most trees hold no number of five digits and no reg* constant."""
    if legacy:
        return expr_tree(tree)
    return (
        f"CASE WHEN NOT {tree_may_have_user_oid(tree)} THEN {expr_tree(tree)} "
        f"WHEN {tree_has_user_oid(tree)} THEN {deparsed} ELSE {expr_tree(tree)} END"
    )


def _shown(column: str, catalog: str, name: str, namespace: str, alias: str) -> str:
    """A join of ``column`` (an oidvector of pg_index) to how a digest shows it: as it is when
    it holds built-in objects only, else by their names. Computed once per distinct vector
    (a 10,000-table catalog has a handful), not once per index."""
    vec = "d.v"
    shown = f"CASE WHEN {vector_has_user_oid(vec)} THEN {oid_names(vec, catalog, name, namespace)} ELSE {vec}::text END"
    return (
        f"LEFT JOIN (SELECT d.v, {shown} AS shown FROM (SELECT DISTINCT {column} AS v FROM pg_catalog.pg_index) d) "
        f"{alias} ON {alias}.v = x.{column}"
    )


def _operators(ops: str) -> str:
    """An exclusion constraint's operators: by OID when built-in, else by name."""
    return f"CASE WHEN {vector_has_user_oid(ops)} THEN {ops}::regoperator[]::text ELSE {ops}::text END"


def family_queries(legacy: bool = False) -> dict[str, str]:
    """The family kinds' queries. ``legacy``: the digests of releases before digests left out
    per-database OIDs (see ``legacy``), which a rollback of an apply they recorded compares."""
    return {
        # Inheritance is digested both ways: attaching a child changes what a parent's queries return.
        # A typed table (OF type) is digested with its type, since it is dropped with it: a
        # temporary type would take it along when the session ends. A sequence, with who owns it
        # (OWNED BY, identity): the table and column.
        "relation": f"""
            SELECT CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view'
                                  WHEN 'm' THEN 'matview' WHEN 'S' THEN 'sequence' WHEN 'f' THEN 'foreign_table'
                                  WHEN 'c' THEN 'type' END,
                   'relation:' || n.nspname || '.' || c.relname, n.nspname,
                   COALESCE(owner_tbl.relname, c.relname),
                   {
            row_sha256(
                "c.relkind",
                "pg_get_userbyid(c.relowner)",
                "c.relacl::text",
                "dsc.description",
                "c.relpersistence",
                "c.relrowsecurity",
                "c.relforcerowsecurity",
                "c.reloptions::text",
                "CASE WHEN c.relkind IN ('v', 'm') THEN md5(pg_get_viewdef(c.oid)) END",
                "c.relispartition",
                "CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END",
                "CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END",
                "c.relreplident",
                "CASE WHEN c.reltablespace <> 0 THEN (SELECT sp.spcname FROM pg_catalog.pg_tablespace sp "
                "WHERE sp.oid = c.reltablespace) END",
                "(SELECT array_agg(ih.inhparent::regclass::text ORDER BY ih.inhseqno) FROM pg_catalog.pg_inherits ih "
                "WHERE ih.inhrelid = c.oid)::text",
                "CASE WHEN c.relhassubclass THEN (SELECT array_agg(ih.inhrelid::regclass::text ORDER BY 1) "
                "FROM pg_catalog.pg_inherits ih WHERE ih.inhparent = c.oid)::text END",
                "CASE WHEN c.relkind = 'S' THEN (SELECT json_build_array(s.seqtypid::regtype::text, s.seqstart, "
                "s.seqincrement, s.seqmax, s.seqmin, s.seqcache, s.seqcycle) FROM pg_catalog.pg_sequence s "
                "WHERE s.seqrelid = c.oid) END",
                "CASE WHEN c.reloftype <> 0 THEN (SELECT tn.nspname || '.' || ty.typname FROM pg_catalog.pg_type ty "
                "JOIN pg_catalog.pg_namespace tn ON tn.oid = ty.typnamespace WHERE ty.oid = c.reloftype) END",
                "owner_tbl.owner",
                "(SELECT ts.reloptions FROM pg_catalog.pg_class ts WHERE ts.oid = c.reltoastrelid)::text",
            )
        }, c.oid
            FROM pg_catalog.pg_class c
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_catalog.pg_description dsc
              ON dsc.objoid = c.oid AND dsc.classoid = 'pg_class'::regclass AND dsc.objsubid = 0
            LEFT JOIN LATERAL (
                SELECT t.relname, d.deptype::text || ':' || tn.nspname || '.' || t.relname || '.'
                       || COALESCE((SELECT a.attname FROM pg_catalog.pg_attribute a
                                    WHERE a.attrelid = t.oid AND a.attnum = d.refobjsubid), '') AS owner
                FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
                JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
                WHERE c.relkind = 'S' AND d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') LIMIT 1
            ) owner_tbl ON true
            WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c') AND {USER_SCHEMAS}
              AND {not_ext("pg_class", "c.oid")}""",
        "column": f"""
            SELECT 'column', 'column:' || n.nspname || '.' || c.relname || '.' || a.attname, n.nspname, c.relname,
                   {
            row_sha256(
                "a.attname",
                "format_type(a.atttypid, a.atttypmod)",
                "a.attnotnull",
                "pg_get_expr(ad.adbin, CASE WHEN a.attgenerated = '' THEN 0 ELSE ad.adrelid END)",
                "a.attidentity",
                "a.attgenerated",
                "(SELECT co.collname FROM pg_catalog.pg_collation co WHERE co.oid = a.attcollation "
                "AND a.attcollation NOT IN (0, 100))",
                "a.attacl::text",
                "dsc.description",
                "a.attnum",
                "a.attstorage",
                "a.attcompression",
                "a.attstattarget",
                _ATTOPTIONS,
            )
        }, c.oid
            FROM pg_catalog.pg_attribute a
            JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
            LEFT JOIN pg_catalog.pg_description dsc
              ON dsc.objoid = c.oid AND dsc.classoid = 'pg_class'::regclass AND dsc.objsubid = a.attnum
            WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
              AND {USER_SCHEMAS} AND {not_ext("pg_class", "c.oid")}""",
        # Indexes are digested from their catalog structure (access method, key columns by
        # number, operator classes, collations, options), which pg_get_indexdef renders as text;
        # only expression and partial indexes are deparsed. Operator classes and collations
        # are digested by OID: a built-in or extension one never changes OID, and a
        # user-defined one that is dropped and recreated shows as a change (fail closed).
        "index": f"""
            SELECT 'index', 'index:' || n.nspname || '.' || i.relname, n.nspname, t.relname,
                   {
            row_sha256(
                "tn.nspname",
                "t.relname",
                "i.relkind",
                "(SELECT am.amname FROM pg_catalog.pg_am am WHERE am.oid = i.relam)",
                "x.indisunique",
                "x.indisprimary",
                "x.indisexclusion",
                "x.indimmediate",
                "x.indnullsnotdistinct",
                "x.indnkeyatts",
                "x.indkey::text",
                "x.indoption::text",
                "x.indclass::text" if legacy else "opc.shown",
                "x.indcollation::text" if legacy else "coll.shown",
                "CASE WHEN x.indexprs IS NOT NULL OR x.indpred IS NOT NULL THEN pg_get_indexdef(i.oid) END",
                "dsc.description",
                "x.indisvalid",
                "x.indisclustered",
                "i.reloptions::text",
            )
        }, x.indrelid
            FROM pg_catalog.pg_index x
            JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
            JOIN pg_catalog.pg_class t ON t.oid = x.indrelid
            JOIN pg_catalog.pg_namespace n ON n.oid = i.relnamespace
            JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
            LEFT JOIN pg_catalog.pg_description dsc
              ON dsc.objoid = i.oid AND dsc.classoid = 'pg_class'::regclass AND dsc.objsubid = 0
            {"" if legacy else _shown("indclass", "pg_opclass", "opcname", "opcnamespace", "opc")}
            {"" if legacy else _shown("indcollation", "pg_collation", "collname", "collnamespace", "coll")}
            WHERE {USER_SCHEMAS} AND {not_ext("pg_class", "t.oid")}""",
        "constraint": f"""
            SELECT 'constraint',
                   'constraint:' || n.nspname || '.' || COALESCE(t.relname, ty.typname) || '.' || co.conname,
                   n.nspname, t.relname,
                   {
            row_sha256(
                "co.contype",
                "co.conkey::text",
                "fn.nspname",
                "ft.relname",
                "co.confkey::text",
                "co.confupdtype",
                "co.confdeltype",
                "co.confmatchtype",
                "co.confdelsetcols::text",
                "co.conexclop::text" if legacy else _operators("co.conexclop"),
                "co.connoinherit",
                _tree("co.conbin", "pg_get_constraintdef(co.oid)", legacy),
                "co.condeferrable",
                "co.condeferred",
                "co.convalidated",
                "dsc.description",
            )
        }, co.conrelid
            FROM pg_catalog.pg_constraint co
            JOIN pg_catalog.pg_namespace n ON n.oid = co.connamespace
            LEFT JOIN pg_catalog.pg_class t ON t.oid = co.conrelid AND co.conrelid <> 0
            LEFT JOIN pg_catalog.pg_type ty ON ty.oid = co.contypid AND co.contypid <> 0
            LEFT JOIN pg_catalog.pg_class ft ON ft.oid = co.confrelid AND co.confrelid <> 0
            LEFT JOIN pg_catalog.pg_namespace fn ON fn.oid = ft.relnamespace
            LEFT JOIN pg_catalog.pg_description dsc
              ON dsc.objoid = co.oid AND dsc.classoid = 'pg_constraint'::regclass AND dsc.objsubid = 0
            WHERE {USER_SCHEMAS} AND {not_ext("pg_constraint", "co.oid")}
              AND (co.conrelid = 0 OR {not_ext("pg_class", "co.conrelid")})""",
        # A trigger's digest includes what its function does: replacing the function of a trigger
        # on a protected table changes that table's behaviour, wherever the function lives.
        "trigger": f"""
            SELECT 'trigger', 'trigger:' || n.nspname || '.' || c.relname || '.' || tg.tgname, n.nspname, c.relname,
                   {
            row_sha256(
                "pg_get_triggerdef(tg.oid)",
                "tg.tgenabled",
                description("pg_trigger", "tg.oid"),
                "(SELECT md5(row(p.prosrc, p.probin, p.prosecdef, p.proconfig::text, "
                "pg_get_userbyid(p.proowner))::text) FROM pg_catalog.pg_proc p WHERE p.oid = tg.tgfoid)",
            )
        }, c.oid
            FROM pg_catalog.pg_trigger tg
            JOIN pg_catalog.pg_class c ON c.oid = tg.tgrelid
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE NOT tg.tgisinternal AND {USER_SCHEMAS} AND {not_ext("pg_class", "c.oid")}""",
        "policy": f"""
            SELECT 'policy', 'policy:' || n.nspname || '.' || c.relname || '.' || po.polname, n.nspname, c.relname,
                   {
            row_sha256(
                "po.polcmd",
                "po.polpermissive",
                "(SELECT array_agg(CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r) END ORDER BY 1) "
                "FROM unnest(po.polroles) r)::text",
                "pg_get_expr(po.polqual, po.polrelid)",
                "pg_get_expr(po.polwithcheck, po.polrelid)",
            )
        }, c.oid
            FROM pg_catalog.pg_policy po
            JOIN pg_catalog.pg_class c ON c.oid = po.polrelid
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE {USER_SCHEMAS}""",
        "statistics": f"""
            SELECT 'statistics', 'statistics:' || n.nspname || '.' || x.stxname, tn.nspname, t.relname,
                   {
            row_sha256(
                "x.stxkeys::text",
                "x.stxkind::text",
                _tree("x.stxexprs", "pg_get_statisticsobjdef_expressions(x.oid)::text", legacy),
                "x.stxstattarget",
                "pg_get_userbyid(x.stxowner)",
                description("pg_statistic_ext", "x.oid"),
            )
        }, x.stxrelid
            FROM pg_catalog.pg_statistic_ext x JOIN pg_catalog.pg_namespace n ON n.oid = x.stxnamespace
            JOIN pg_catalog.pg_class t ON t.oid = x.stxrelid JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
            WHERE {USER_SCHEMAS} AND {not_ext("pg_statistic_ext", "x.oid")}""",
        "rule": f"""
            SELECT 'rule', 'rule:' || n.nspname || '.' || c.relname || '.' || r.rulename, n.nspname, c.relname,
                   {row_sha256("md5(pg_get_ruledef(r.oid))", "r.ev_enabled", description("pg_rewrite", "r.oid"))}, c.oid
            FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE r.rulename <> '_RETURN' AND {USER_SCHEMAS} AND {not_ext("pg_class", "c.oid")}""",
        # Foreign keys are enforced by internal triggers; ALTER TABLE ... DISABLE TRIGGER ALL
        # turns them off. Present only while disabled, so disabling one shows as an addition.
        "enforcement_disabled": f"""
            SELECT 'enforcement_disabled', 'enforcement_disabled:' || n.nspname || '.' || c.relname || '.'
                   || COALESCE(co.conname, tg.tgname), n.nspname, c.relname,
                   encode(sha256(convert_to(string_agg(tg.tgenabled::text, '' ORDER BY tg.tgenabled), 'UTF8')), 'hex'),
                   c.oid
            FROM pg_catalog.pg_trigger tg JOIN pg_catalog.pg_class c ON c.oid = tg.tgrelid
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_catalog.pg_constraint co ON co.oid = tg.tgconstraint
            WHERE tg.tgisinternal AND tg.tgenabled <> 'O' AND {USER_SCHEMAS}
            GROUP BY n.nspname, c.relname, c.oid, COALESCE(co.conname, tg.tgname)""",
    }


FAMILY_QUERIES = family_queries()

# Kinds whose objects belong to one relation, in the order a family's objects are queried.
FAMILY_KINDS = tuple(FAMILY_QUERIES)
