"""Catalog snapshot of a PostgreSQL database: one digest per object, computed in SQL.

Digests are computed server-side (sha256 over a json_build_array of the definition), so
function bodies, defaults and view texts never leave the server: the baseline carries
digests and counts only. Objects that belong to an extension are covered by the
extension's own object (name + version), as pg_dump does. The governance schema that
holds the ledger is excluded by name.
"""

from __future__ import annotations

from collections.abc import Iterable

LEDGER_SCHEMA = "kfm_governance"

_SYSTEM = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', '" + LEDGER_SCHEMA + "') "
    "AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'"
)


# Extension members are read once per capture (a materialised CTE probed through a hashed
# NOT IN) rather than with one pg_depend lookup per object. Membership rows always point at an
# extension: saying so lets the index on the referenced object find them, instead of a scan of
# every dependency (200k+ rows for a 10,000-table database).
_EXT_CTE = (
    "WITH ext AS MATERIALIZED (SELECT classid, objid FROM pg_catalog.pg_depend "
    "WHERE refclassid = 'pg_catalog.pg_extension'::regclass AND deptype = 'e') "
)


def _not_ext(catalog: str, oid: str) -> str:
    return f"{oid} NOT IN (SELECT objid FROM ext WHERE classid = '{catalog}'::regclass)"


def _descr(catalog: str, oid: str, sub: str = "0") -> str:
    """The comment on an object, as a scalar subquery (obj_description is an SQL function
    that is not inlined, and costs more than the join)."""
    return (
        f"(SELECT ds.description FROM pg_catalog.pg_description ds WHERE ds.objoid = {oid} "
        f"AND ds.classoid = '{catalog}'::regclass AND ds.objsubid = {sub})"
    )


def _tree(expr: str) -> str:
    """A stored expression tree without its parse locations (byte offsets into the SQL
    text that created it), so the same expression written differently digests the same.
    Used instead of deparsing (pg_get_expr and friends open the table's relcache entry,
    which dominates a 10,000-table capture)."""
    return f"regexp_replace({expr}::text, ' :location -?[0-9]+', '', 'g')"


def _h(*exprs: str) -> str:
    """sha256 (hex) of the fields' record text: ``row(...)::text`` quotes every field that
    needs it and writes NULL as nothing, so distinct field lists give distinct texts."""
    return "encode(sha256(convert_to(row(" + ", ".join(exprs) + ")::text, 'UTF8')), 'hex')"


# A column's options (ALTER COLUMN ... SET (...)), in their order, without ``pg_attver``: since
# 15.20 the server stamps every column it creates or rewrites with that opaque version, which
# an ALTER of one column can change on another. NULL when no other option is set, as before.
_ATTOPTIONS = (
    "CASE WHEN a.attoptions IS NOT NULL THEN NULLIF(ARRAY(SELECT u.o FROM unnest(a.attoptions) "
    "WITH ORDINALITY u(o, i) WHERE u.o NOT LIKE 'pg\\_attver=%' ORDER BY u.i), '{}')::text END"
)


# An aggregate's definition lives in pg_aggregate, not in its pg_proc row (whose body is a
# placeholder): CREATE OR REPLACE AGGREGATE with another initial state or final function
# changes what it returns.
_AGGREGATE = (
    "(SELECT row(a.aggkind, a.aggnumdirectargs, a.aggtransfn::text, a.aggfinalfn::text, a.aggcombinefn::text, "
    "a.aggserialfn::text, a.aggdeserialfn::text, a.aggmtransfn::text, a.aggminvtransfn::text, a.aggmfinalfn::text, "
    "a.aggfinalextra, a.aggmfinalextra, a.aggfinalmodify, a.aggmfinalmodify, a.aggsortop::regoper::text, "
    "a.aggtranstype::regtype::text, a.aggtransspace, a.aggmtranstype::regtype::text, a.aggmtransspace, "
    "a.agginitval, a.aggminitval)::text FROM pg_catalog.pg_aggregate a WHERE a.aggfnoid = p.oid)"
)


# What hangs off an extension's member table (c): its indexes, triggers, rules, policies,
# constraints and column defaults. The capture leaves the table to the extension's digest,
# and these with it, so a rule or trigger added to spatial_ref_sys shows there.
_ATTACHED = (
    "(SELECT md5(string_agg(x, E'\\n' ORDER BY x)) FROM ("
    "SELECT pg_get_indexdef(i.indexrelid) AS x FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid "
    "UNION ALL SELECT pg_get_triggerdef(t.oid) || ' ' || t.tgenabled::text FROM pg_catalog.pg_trigger t "
    "WHERE t.tgrelid = c.oid AND NOT t.tgisinternal "
    "UNION ALL SELECT pg_get_ruledef(r.oid) || ' ' || r.ev_enabled::text FROM pg_catalog.pg_rewrite r "
    "WHERE r.ev_class = c.oid "
    "UNION ALL SELECT row(p.polname, p.polcmd, p.polpermissive, p.polroles::text, pg_get_expr(p.polqual, c.oid), "
    "pg_get_expr(p.polwithcheck, c.oid))::text FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid "
    "UNION ALL SELECT co.conname || ' ' || pg_get_constraintdef(co.oid) FROM pg_catalog.pg_constraint co "
    "WHERE co.conrelid = c.oid "
    "UNION ALL SELECT 'default ' || ad.adnum || ' ' || pg_get_expr(ad.adbin, c.oid) FROM pg_catalog.pg_attrdef ad "
    "WHERE ad.adrelid = c.oid) attached)"
)


# Each query returns: kind, id, schema, table, digest (ordered by id for stable output).
QUERIES: dict[str, str] = {
    "schema": f"""
        SELECT 'schema', 'schema:' || n.nspname, n.nspname, NULL::text,
               {_h("n.nspname", "pg_get_userbyid(n.nspowner)", "n.nspacl::text", _descr("pg_namespace", "n.oid"))},
               NULL::oid
        FROM pg_catalog.pg_namespace n
        WHERE {_SYSTEM} AND {_not_ext("pg_namespace", "n.oid")}""",
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
        _h(
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
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c') AND {_SYSTEM}
          AND {_not_ext("pg_class", "c.oid")}""",
    "column": f"""
        SELECT 'column', 'column:' || n.nspname || '.' || c.relname || '.' || a.attname, n.nspname, c.relname,
               {
        _h(
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
          AND {_SYSTEM} AND {_not_ext("pg_class", "c.oid")}""",
    # Indexes are digested from their catalog structure (access method, key columns by
    # number, operator classes, collations, options), which pg_get_indexdef renders as text;
    # only expression and partial indexes are deparsed. Operator classes and collations
    # are digested by OID: a built-in or extension one never changes OID, and a
    # user-defined one that is dropped and recreated shows as a change (fail closed).
    "index": f"""
        SELECT 'index', 'index:' || n.nspname || '.' || i.relname, n.nspname, t.relname,
               {
        _h(
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
            "x.indclass::text",
            "x.indcollation::text",
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
        WHERE {_SYSTEM} AND {_not_ext("pg_class", "t.oid")}""",
    "constraint": f"""
        SELECT 'constraint',
               'constraint:' || n.nspname || '.' || COALESCE(t.relname, ty.typname) || '.' || co.conname,
               n.nspname, t.relname,
               {
        _h(
            "co.contype",
            "co.conkey::text",
            "fn.nspname",
            "ft.relname",
            "co.confkey::text",
            "co.confupdtype",
            "co.confdeltype",
            "co.confmatchtype",
            "co.confdelsetcols::text",
            "co.conexclop::text",
            "co.connoinherit",
            _tree("co.conbin"),
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
        WHERE {_SYSTEM} AND {_not_ext("pg_constraint", "co.oid")}
          AND (co.conrelid = 0 OR {_not_ext("pg_class", "co.conrelid")})""",
    "function": f"""
        SELECT CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' WHEN 'w' THEN 'window'
                              ELSE 'function' END,
               'function:' || n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
               n.nspname, NULL::text,
               {
        _h(
            "CASE WHEN p.prokind IN ('f', 'p') THEN md5(pg_get_functiondef(p.oid)) "
            "ELSE md5(COALESCE(p.prosrc, '')) END",
            "pg_get_userbyid(p.proowner)",
            "p.proacl::text",
            _descr("pg_proc", "p.oid"),
            "p.prosecdef",
            "p.proconfig::text",
            _AGGREGATE,
        )
    }, NULL::oid
        FROM pg_catalog.pg_proc p
        JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE {_SYSTEM} AND {_not_ext("pg_proc", "p.oid")}""",
    # A trigger's digest includes what its function does: replacing the function of a trigger
    # on a protected table changes that table's behaviour, wherever the function lives.
    "trigger": f"""
        SELECT 'trigger', 'trigger:' || n.nspname || '.' || c.relname || '.' || tg.tgname, n.nspname, c.relname,
               {
        _h(
            "pg_get_triggerdef(tg.oid)",
            "tg.tgenabled",
            _descr("pg_trigger", "tg.oid"),
            "(SELECT md5(row(p.prosrc, p.probin, p.prosecdef, p.proconfig::text, pg_get_userbyid(p.proowner))::text) "
            "FROM pg_catalog.pg_proc p WHERE p.oid = tg.tgfoid)",
        )
    }, c.oid
        FROM pg_catalog.pg_trigger tg
        JOIN pg_catalog.pg_class c ON c.oid = tg.tgrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT tg.tgisinternal AND {_SYSTEM} AND {_not_ext("pg_class", "c.oid")}""",
    "policy": f"""
        SELECT 'policy', 'policy:' || n.nspname || '.' || c.relname || '.' || po.polname, n.nspname, c.relname,
               {
        _h(
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
        WHERE {_SYSTEM}""",
    # Extension members are not baselined one by one, but replacing a member function's body,
    # its privileges or security, or altering a member table still changes the extension.
    "extension": f"""
        SELECT 'extension', 'extension:' || e.extname, n.nspname, NULL::text,
               {
        _h(
            "e.extname",
            "e.extversion",
            "n.nspname",
            "e.extrelocatable",
            "pg_get_userbyid(e.extowner)",
            "e.extconfig::text",
            "(SELECT md5(string_agg(h, '' ORDER BY h)) FROM (SELECT md5(row(p.proname, "
            "pg_get_function_identity_arguments(p.oid), p.prosrc, p.probin, p.prosecdef, p.proconfig::text, "
            "p.proacl::text, pg_get_userbyid(p.proowner), p.provolatile, p.proisstrict, p.proleakproof, "
            + _AGGREGATE
            + ", "
            "p.proparallel, p.prorettype::regtype::text)::text) AS h FROM pg_catalog.pg_depend d "
            "JOIN pg_catalog.pg_proc p ON p.oid = d.objid WHERE d.refclassid = 'pg_extension'::regclass "
            "AND d.refobjid = e.oid AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e') x)",
            "(SELECT md5(string_agg(h, '' ORDER BY h)) FROM (SELECT md5(row(c.relname, c.relkind, "
            "c.relacl::text, pg_get_userbyid(c.relowner), c.relrowsecurity, c.relforcerowsecurity, "
            "c.reloptions::text, (SELECT array_agg(row(a.attname, format_type(a.atttypid, a.atttypmod), "
            "a.attnotnull)::text ORDER BY a.attnum) FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid "
            "AND a.attnum > 0 AND NOT a.attisdropped)::text, "
            + _ATTACHED
            + ")::text) AS h FROM pg_catalog.pg_depend d "
            "JOIN pg_catalog.pg_class c ON c.oid = d.objid WHERE d.refclassid = 'pg_extension'::regclass "
            "AND d.refobjid = e.oid AND d.classid = 'pg_class'::regclass AND d.deptype = 'e') x)",
        )
    }, NULL::oid
        FROM pg_catalog.pg_extension e
        JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
        WHERE e.extname <> 'plpgsql'""",
    "type": f"""
        SELECT CASE ty.typtype WHEN 'e' THEN 'enum' WHEN 'd' THEN 'domain' ELSE 'type' END,
               'type:' || n.nspname || '.' || ty.typname, n.nspname, NULL::text,
               {
        _h(
            "ty.typtype",
            "format_type(ty.typbasetype, ty.typtypmod)",
            "ty.typnotnull",
            "ty.typdefault",
            "pg_get_userbyid(ty.typowner)",
            "ty.typacl::text",
            _descr("pg_type", "ty.oid"),
            "(SELECT array_agg(en.enumlabel ORDER BY en.enumsortorder) FROM pg_catalog.pg_enum en "
            "WHERE en.enumtypid = ty.oid)::text",
        )
    }, NULL::oid
        FROM pg_catalog.pg_type ty
        JOIN pg_catalog.pg_namespace n ON n.oid = ty.typnamespace
        WHERE ty.typtype IN ('e', 'd', 'r', 'm') AND {_SYSTEM} AND {_not_ext("pg_type", "ty.oid")}""",
    # Database- and cluster-level objects no schema scope can allow: any change is out of scope.
    "event_trigger": f"""
        SELECT 'event_trigger', 'event_trigger:' || e.evtname, NULL::text, NULL::text,
               {
        _h(
            "e.evtevent",
            "e.evtenabled",
            "e.evttags::text",
            "e.evtfoid::regprocedure::text",
            "pg_get_userbyid(e.evtowner)",
        )
    }, NULL::oid
        FROM pg_catalog.pg_event_trigger e
        WHERE {_not_ext("pg_event_trigger", "e.oid")}""",
    "default_acl": f"""
        SELECT 'default_acl', 'default_acl:' || pg_get_userbyid(d.defaclrole) || '.' || COALESCE(n.nspname, '*')
               || '.' || d.defaclobjtype::text, n.nspname, NULL::text,
               {_h("d.defaclacl::text")}, NULL::oid
        FROM pg_catalog.pg_default_acl d
        LEFT JOIN pg_catalog.pg_namespace n ON n.oid = d.defaclnamespace""",
    "role": f"""
        SELECT 'role', 'role:' || r.rolname, NULL::text, NULL::text,
               {
        _h(
            "r.rolsuper",
            "r.rolinherit",
            "r.rolcreaterole",
            "r.rolcreatedb",
            "r.rolcanlogin",
            "r.rolreplication",
            "r.rolbypassrls",
            "r.rolconnlimit",
            "r.rolvaliduntil::text",
            "(SELECT array_agg(COALESCE(sd.datname, '*') || ':' || array_to_string(rs.setconfig, ',') ORDER BY 1) "
            "FROM pg_catalog.pg_db_role_setting rs LEFT JOIN pg_catalog.pg_database sd ON sd.oid = rs.setdatabase "
            "WHERE rs.setrole = r.oid)::text",
            "(SELECT array_agg(g.rolname || CASE WHEN m.admin_option THEN '+admin' ELSE '' END ORDER BY g.rolname) "
            "FROM pg_catalog.pg_auth_members m "
            "JOIN pg_catalog.pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid)::text",
            "shobj_description(r.oid, 'pg_authid')",
        )
    }, NULL::oid
        FROM pg_catalog.pg_roles r
        WHERE r.rolname NOT LIKE 'pg\\_%'""",
    "publication": f"""
        SELECT 'publication', 'publication:' || p.pubname, NULL::text, NULL::text,
               {
        _h(
            "p.puballtables",
            "p.pubinsert",
            "p.pubupdate",
            "p.pubdelete",
            "p.pubtruncate",
            "(SELECT array_agg(pr.prrelid::regclass::text ORDER BY 1) FROM pg_catalog.pg_publication_rel pr "
            "WHERE pr.prpubid = p.oid)::text",
        )
    }, NULL::oid
        FROM pg_catalog.pg_publication p""",
    "foreign_server": f"""
        SELECT 'foreign_server', 'foreign_server:' || s.srvname, NULL::text, NULL::text,
               {
        _h(
            "s.srvtype",
            "s.srvversion",
            "s.srvoptions::text",
            "pg_get_userbyid(s.srvowner)",
            "(SELECT array_agg(um.umuser::text ORDER BY 1) FROM pg_catalog.pg_user_mapping um "
            "WHERE um.umserver = s.oid)::text",
        )
    }, NULL::oid
        FROM pg_catalog.pg_foreign_server s
        WHERE {_not_ext("pg_foreign_server", "s.oid")}""",
    # Schema-level objects that belong to no table: out of scope unless the scope allows
    # their name (as for functions).
    "operator": f"""
        SELECT 'operator', 'operator:' || n.nspname || '.' || o.oprname || '(' || o.oprleft::regtype::text || ','
               || o.oprright::regtype::text || ')', n.nspname, NULL::text,
               {
        _h(
            "o.oprkind",
            "o.oprresult::regtype::text",
            "o.oprcode::regprocedure::text",
            "o.oprcom::regoperator::text",
            "o.oprnegate::regoperator::text",
            "o.oprrest::regproc::text",
            "o.oprjoin::regproc::text",
            "o.oprcanmerge",
            "o.oprcanhash",
            "pg_get_userbyid(o.oprowner)",
            _descr("pg_operator", "o.oid"),
        )
    }, NULL::oid
        FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
        WHERE {_SYSTEM} AND {_not_ext("pg_operator", "o.oid")}""",
    "opfamily": f"""
        SELECT 'opfamily', 'opfamily:' || n.nspname || '.' || f.opfname || '(' || am.amname || ')', n.nspname,
               NULL::text,
               {
        _h(
            "pg_get_userbyid(f.opfowner)",
            "(SELECT array_agg(row(ao.amopstrategy, ao.amoplefttype::regtype::text, ao.amoprighttype::regtype::text, "
            "ao.amopopr::regoperator::text, ao.amoppurpose)::text ORDER BY 1) FROM pg_catalog.pg_amop ao "
            "WHERE ao.amopfamily = f.oid)::text",
            "(SELECT array_agg(row(ap.amprocnum, ap.amproclefttype::regtype::text, ap.amprocrighttype::regtype::text, "
            "ap.amproc::regprocedure::text)::text ORDER BY 1) FROM pg_catalog.pg_amproc ap "
            "WHERE ap.amprocfamily = f.oid)::text",
        )
    }, NULL::oid
        FROM pg_catalog.pg_opfamily f JOIN pg_catalog.pg_namespace n ON n.oid = f.opfnamespace
        JOIN pg_catalog.pg_am am ON am.oid = f.opfmethod
        WHERE {_SYSTEM} AND {_not_ext("pg_opfamily", "f.oid")}""",
    "opclass": f"""
        SELECT 'opclass', 'opclass:' || n.nspname || '.' || c.opcname || '(' || am.amname || ')', n.nspname,
               NULL::text,
               {
        _h(
            "(SELECT fn.nspname || '.' || f.opfname FROM pg_catalog.pg_opfamily f JOIN pg_catalog.pg_namespace fn "
            "ON fn.oid = f.opfnamespace WHERE f.oid = c.opcfamily)",
            "c.opcintype::regtype::text",
            "c.opcdefault",
            "c.opckeytype::regtype::text",
            "pg_get_userbyid(c.opcowner)",
        )
    }, NULL::oid
        FROM pg_catalog.pg_opclass c JOIN pg_catalog.pg_namespace n ON n.oid = c.opcnamespace
        JOIN pg_catalog.pg_am am ON am.oid = c.opcmethod
        WHERE {_SYSTEM} AND {_not_ext("pg_opclass", "c.oid")}""",
    # Every collation column but the ids: the locale columns differ between server versions.
    "collation": f"""
        SELECT 'collation', 'collation:' || n.nspname || '.' || c.collname, n.nspname, NULL::text,
               {
        _h(
            "(to_jsonb(c) - 'oid' - 'collnamespace' - 'collowner')::text",
            "pg_get_userbyid(c.collowner)",
            _descr("pg_collation", "c.oid"),
        )
    }, NULL::oid
        FROM pg_catalog.pg_collation c JOIN pg_catalog.pg_namespace n ON n.oid = c.collnamespace
        WHERE {_SYSTEM} AND {_not_ext("pg_collation", "c.oid")}""",
    "conversion": f"""
        SELECT 'conversion', 'conversion:' || n.nspname || '.' || c.conname, n.nspname, NULL::text,
               {
        _h(
            "pg_encoding_to_char(c.conforencoding)",
            "pg_encoding_to_char(c.contoencoding)",
            "c.conproc::regprocedure::text",
            "c.condefault",
            "pg_get_userbyid(c.conowner)",
        )
    }, NULL::oid
        FROM pg_catalog.pg_conversion c JOIN pg_catalog.pg_namespace n ON n.oid = c.connamespace
        WHERE {_SYSTEM} AND {_not_ext("pg_conversion", "c.oid")}""",
    "text_search": f"""
        SELECT 'text_search', 'text_search:config:' || n.nspname || '.' || c.cfgname, n.nspname, NULL::text,
               {
        _h(
            "c.cfgparser::regproc::text",
            "(SELECT np.nspname || '.' || pr.prsname FROM pg_catalog.pg_ts_parser pr JOIN pg_catalog.pg_namespace np "
            "ON np.oid = pr.prsnamespace WHERE pr.oid = c.cfgparser)",
            "(SELECT array_agg(row(m.maptokentype, m.mapseqno, m.mapdict::regdictionary::text)::text ORDER BY 1) "
            "FROM pg_catalog.pg_ts_config_map m WHERE m.mapcfg = c.oid)::text",
            "pg_get_userbyid(c.cfgowner)",
        )
    }, NULL::oid
        FROM pg_catalog.pg_ts_config c JOIN pg_catalog.pg_namespace n ON n.oid = c.cfgnamespace
        WHERE {_SYSTEM} AND {_not_ext("pg_ts_config", "c.oid")}
        UNION ALL
        SELECT 'text_search', 'text_search:dictionary:' || n.nspname || '.' || d.dictname, n.nspname, NULL::text,
               {
        _h(
            "(SELECT nt.nspname || '.' || t.tmplname FROM pg_catalog.pg_ts_template t JOIN pg_catalog.pg_namespace nt "
            "ON nt.oid = t.tmplnamespace WHERE t.oid = d.dicttemplate)",
            "d.dictinitoption",
            "pg_get_userbyid(d.dictowner)",
        )
    }, NULL::oid
        FROM pg_catalog.pg_ts_dict d JOIN pg_catalog.pg_namespace n ON n.oid = d.dictnamespace
        WHERE {_SYSTEM} AND {_not_ext("pg_ts_dict", "d.oid")}
        UNION ALL
        SELECT 'text_search', 'text_search:parser:' || n.nspname || '.' || pr.prsname, n.nspname, NULL::text,
               {
        _h(
            "pr.prsstart::regproc::text",
            "pr.prstoken::regproc::text",
            "pr.prsend::regproc::text",
            "pr.prsheadline::regproc::text",
            "pr.prslextype::regproc::text",
        )
    }, NULL::oid
        FROM pg_catalog.pg_ts_parser pr JOIN pg_catalog.pg_namespace n ON n.oid = pr.prsnamespace
        WHERE {_SYSTEM} AND {_not_ext("pg_ts_parser", "pr.oid")}
        UNION ALL
        SELECT 'text_search', 'text_search:template:' || n.nspname || '.' || t.tmplname, n.nspname, NULL::text,
               {_h("t.tmplinit::regproc::text", "t.tmpllexize::regproc::text")}, NULL::oid
        FROM pg_catalog.pg_ts_template t JOIN pg_catalog.pg_namespace n ON n.oid = t.tmplnamespace
        WHERE {_SYSTEM} AND {_not_ext("pg_ts_template", "t.oid")}""",
    # Objects that belong to a table: scoped, protected and forbidden with it.
    "statistics": f"""
        SELECT 'statistics', 'statistics:' || n.nspname || '.' || x.stxname, tn.nspname, t.relname,
               {
        _h(
            "x.stxkeys::text",
            "x.stxkind::text",
            _tree("x.stxexprs"),
            "x.stxstattarget",
            "pg_get_userbyid(x.stxowner)",
            _descr("pg_statistic_ext", "x.oid"),
        )
    }, x.stxrelid
        FROM pg_catalog.pg_statistic_ext x JOIN pg_catalog.pg_namespace n ON n.oid = x.stxnamespace
        JOIN pg_catalog.pg_class t ON t.oid = x.stxrelid JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
        WHERE {_SYSTEM} AND {_not_ext("pg_statistic_ext", "x.oid")}""",
    "rule": f"""
        SELECT 'rule', 'rule:' || n.nspname || '.' || c.relname || '.' || r.rulename, n.nspname, c.relname,
               {_h("md5(pg_get_ruledef(r.oid))", "r.ev_enabled", _descr("pg_rewrite", "r.oid"))}, c.oid
        FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE r.rulename <> '_RETURN' AND {_SYSTEM} AND {_not_ext("pg_class", "c.oid")}""",
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
        WHERE tg.tgisinternal AND tg.tgenabled <> 'O' AND {_SYSTEM}
        GROUP BY n.nspname, c.relname, c.oid, COALESCE(co.conname, tg.tgname)""",
    # Database-level objects: no schema scope can allow changing them.
    "database": f"""
        SELECT 'database', 'database:current', NULL::text, NULL::text,
               {
        _h(
            "pg_get_userbyid(d.datdba)",
            "d.datacl::text",
            "d.datconnlimit",
            "d.datallowconn",
            "d.datistemplate",
            "shobj_description(d.oid, 'pg_database')",
            "(SELECT array_agg(array_to_string(rs.setconfig, ',') ORDER BY 1) FROM pg_catalog.pg_db_role_setting rs "
            "WHERE rs.setdatabase = d.oid AND rs.setrole = 0)::text",
        )
    }, NULL::oid
        FROM pg_catalog.pg_database d WHERE d.datname = current_database()""",
    # Built-in objects are not captured one by one, but granting on them (pg_read_file to
    # PUBLIC, pg_authid to anyone) or adding objects to the system schemas changes what every
    # role may do: one digest over all of it, which no scope can allow changing. Objects added
    # to the system schemas are those with OIDs past the built-in range.
    "builtin": f"""
        WITH sys AS (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname IN ('pg_catalog', 'information_schema'))
        SELECT 'builtin', 'builtin:privileges-and-additions', NULL::text, NULL::text,
               {
        _h(
            "(SELECT string_agg(c.oid::text || '=' || c.relacl::text, ',' ORDER BY c.oid) "
            "FROM pg_catalog.pg_class c WHERE c.oid < 16384 AND c.relacl IS NOT NULL)",
            "(SELECT string_agg(p.oid::text || '=' || p.proacl::text, ',' ORDER BY p.oid) "
            "FROM pg_catalog.pg_proc p WHERE p.oid < 16384 AND p.proacl IS NOT NULL)",
            "(SELECT string_agg(t.oid::text || '=' || t.typacl::text, ',' ORDER BY t.oid) "
            "FROM pg_catalog.pg_type t WHERE t.oid < 16384 AND t.typacl IS NOT NULL)",
            "(SELECT string_agg(n.oid::text || '=' || n.nspacl::text, ',' ORDER BY n.oid) "
            "FROM pg_catalog.pg_namespace n WHERE n.oid < 16384 AND n.nspacl IS NOT NULL)",
            "(SELECT string_agg(l.lanname || '=' || COALESCE(l.lanacl::text, '') || '/' "
            "|| pg_get_userbyid(l.lanowner), ',' ORDER BY l.lanname) FROM pg_catalog.pg_language l)",
            "(SELECT string_agg(x, ',' ORDER BY x) FROM ("
            "SELECT 'r' || c.oid FROM pg_catalog.pg_class c "
            "WHERE c.oid >= 16384 AND c.relnamespace IN (SELECT oid FROM sys) "
            "UNION ALL SELECT 'p' || p.oid FROM pg_catalog.pg_proc p "
            "WHERE p.oid >= 16384 AND p.pronamespace IN (SELECT oid FROM sys) "
            "UNION ALL SELECT 't' || t.oid FROM pg_catalog.pg_type t "
            "WHERE t.oid >= 16384 AND t.typnamespace IN (SELECT oid FROM sys)) added(x))",
        )
    }, NULL::oid""",
    # What else of the cluster a migration could change: the other databases' settings,
    # privileges and limits, tablespaces, and replication slots and origins (a slot holds WAL
    # for as long as it exists).
    "cluster": f"""
        SELECT 'cluster', 'cluster:databases-tablespaces-replication', NULL::text, NULL::text,
               {
        _h(
            "(SELECT string_agg(row(d.datname, pg_get_userbyid(d.datdba), d.datacl::text, d.datconnlimit, "
            "d.datallowconn, d.datistemplate, shobj_description(d.oid, 'pg_database'), (SELECT array_agg("
            "array_to_string(rs.setconfig, ',') ORDER BY 1) FROM pg_catalog.pg_db_role_setting rs "
            "WHERE rs.setdatabase = d.oid AND rs.setrole = 0)::text)::text, ',' ORDER BY d.datname) "
            "FROM pg_catalog.pg_database d)",
            "(SELECT string_agg(row(t.spcname, pg_get_userbyid(t.spcowner), t.spcacl::text, t.spcoptions::text, "
            "shobj_description(t.oid, 'pg_tablespace'))::text, ',' ORDER BY t.spcname) "
            "FROM pg_catalog.pg_tablespace t)",
            "(SELECT string_agg(row(s.slot_name, s.plugin, s.slot_type, s.database, s.temporary)::text, ',' "
            "ORDER BY s.slot_name) FROM pg_catalog.pg_replication_slots s WHERE NOT s.temporary)",
            "(SELECT string_agg(o.roname, ',' ORDER BY o.roname) FROM pg_catalog.pg_replication_origin o)",
        )
    }, NULL::oid""",
    "cast": f"""
        SELECT 'cast', 'cast:' || c.castsource::regtype::text || '->' || c.casttarget::regtype::text, NULL::text,
               NULL::text, {_h("c.castfunc::regprocedure::text", "c.castcontext", "c.castmethod")}, NULL::oid
        FROM pg_catalog.pg_cast c
        WHERE c.oid >= 16384 AND {_not_ext("pg_cast", "c.oid")}""",
    "language": f"""
        SELECT 'language', 'language:' || l.lanname, NULL::text, NULL::text,
               {
        _h(
            "l.lanpltrusted",
            "l.lanplcallfoid::regproc::text",
            "l.laninline::regproc::text",
            "l.lanvalidator::regproc::text",
            "l.lanacl::text",
            "pg_get_userbyid(l.lanowner)",
        )
    }, NULL::oid
        FROM pg_catalog.pg_language l
        WHERE l.oid >= 16384 AND {_not_ext("pg_language", "l.oid")}""",
    "foreign_data_wrapper": f"""
        SELECT 'foreign_data_wrapper', 'foreign_data_wrapper:' || w.fdwname, NULL::text, NULL::text,
               {
        _h(
            "w.fdwhandler::regproc::text",
            "w.fdwvalidator::regproc::text",
            "w.fdwoptions::text",
            "w.fdwacl::text",
            "pg_get_userbyid(w.fdwowner)",
        )
    }, NULL::oid
        FROM pg_catalog.pg_foreign_data_wrapper w
        WHERE {_not_ext("pg_foreign_data_wrapper", "w.oid")}""",
    "access_method": f"""
        SELECT 'access_method', 'access_method:' || a.amname, NULL::text, NULL::text,
               {_h("a.amtype", "a.amhandler::regproc::text")}, NULL::oid
        FROM pg_catalog.pg_am a
        WHERE a.oid >= 16384 AND {_not_ext("pg_am", "a.oid")}""",
    "large_objects": f"""
        SELECT 'large_objects', 'large_objects:metadata', NULL::text, NULL::text,
               {
        _h(
            "count(*)",
            "md5(string_agg(row(lo.oid, pg_get_userbyid(lo.lomowner), lo.lomacl::text)::text, ',' ORDER BY lo.oid))",
        )
    }, NULL::oid
        FROM pg_catalog.pg_largeobject_metadata lo""",
    "subscription": f"""
        SELECT 'subscription', 'subscription:' || s.subname, NULL::text, NULL::text,
               {_h("s.subenabled", "s.subpublications::text", "pg_get_userbyid(s.subowner)")}, NULL::oid
        FROM pg_catalog.pg_subscription s
        WHERE s.subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())""",
}

# Kinds whose objects belong to one relation (its family: the relation's OID, in the ``fam``
# column). A capture can reuse an earlier capture's objects family by family (see
# postgis_state.py); every other kind is captured in full each time.
FAMILY_KINDS = (
    "relation",
    "column",
    "index",
    "constraint",
    "trigger",
    "policy",
    "statistics",
    "rule",
    "enforcement_disabled",
)
_COLUMNS = "o(kind, id, schema, tbl, digest, fam)"


def _select(queries: Iterable[str]) -> str:
    return _EXT_CTE + "SELECT * FROM (" + " UNION ALL ".join(f"({q})" for q in queries) + ") " + _COLUMNS


# All of the above in one statement (the caller sorts by id).
CATALOG_QUERY = _select(QUERIES.values())
# The kinds that belong to no family, and domain constraints (``fam`` 0).
GLOBAL_QUERY = _select(
    [q for k, q in QUERIES.items() if k not in FAMILY_KINDS]
    + [f"SELECT * FROM ({QUERIES['constraint']}) {_COLUMNS} WHERE fam = 0"]
)


def family_query(fams: Iterable[int]) -> str:
    """The family kinds' objects of the given relations only."""
    arr = "'{" + ",".join(str(int(f)) for f in sorted(set(fams))) + "}'::oid[]"
    return _select(f"SELECT * FROM ({QUERIES[k]}) {_COLUMNS} WHERE fam = ANY({arr})" for k in FAMILY_KINDS)


# Kinds that live outside any schema: a migration's scope can never allow changing them.
CLUSTER_KINDS = {
    "builtin",
    "cluster",
    "event_trigger",
    "role",
    "publication",
    "foreign_server",
    "database",
    "cast",
    "language",
    "foreign_data_wrapper",
    "access_method",
    "large_objects",
    "subscription",
}

# Policy-enforcement facts kept in clear (role names and privilege letters; no secrets).
ACL_QUERY = f"""{_EXT_CTE}
    SELECT 'relation:' || n.nspname || '.' || c.relname, c.relacl::text
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relacl IS NOT NULL AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {_SYSTEM}
      AND {_not_ext("pg_class", "c.oid")}
    UNION ALL
    SELECT 'schema:' || n.nspname, n.nspacl::text FROM pg_catalog.pg_namespace n
    WHERE n.nspacl IS NOT NULL AND {_SYSTEM} AND {_not_ext("pg_namespace", "n.oid")}
    ORDER BY 1"""

RLS_QUERY = f"""
    SELECT n.nspname || '.' || c.relname, c.relrowsecurity, c.relforcerowsecurity
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND (c.relrowsecurity OR c.relforcerowsecurity) AND {_SYSTEM}
    ORDER BY 1"""

TABLES_QUERY = """
    SELECT c.oid, n.nspname, c.relname, c.relfilenode
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
      AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'"""


def _writes_query(prefix: str, only_written: bool) -> str:
    """Rows inserted, updated and deleted per table, as pg_stat_{xact_,}all_tables report
    them, through the three counters only (the views compute a dozen per table)."""
    cols = [f"pg_catalog.pg_stat_get_{prefix}tuples_{k}(c.oid)" for k in ("inserted", "updated", "deleted")]
    return f"""
    SELECT n.nspname || '.' || c.relname, {", ".join(cols)}
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 't', 'm', 'p')
      AND ((n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'pg\\_temp\\_%')
           OR (n.nspname = 'pg_catalog' AND c.relname = 'pg_largeobject'))""" + (
        f" AND {' + '.join(cols)} > 0" if only_written else ""
    )


# Writes this backend made: pg_stat_xact_* counts statements, functions, DO blocks and
# triggers alike (it is per backend, not per statement).
XACT_WRITES_QUERY = _writes_query("xact_", True)
SHARED_WRITES_QUERY = _writes_query("", False)

# What the ledger and the backfill progress hold. A run writes them only after its gate, so
# the script must leave them as the session found them.
GOVERNANCE_ROWS_QUERY = f"""
    SELECT (SELECT md5(COALESCE(string_agg(l::text, E'\\n' ORDER BY l.id), '')) FROM {LEDGER_SCHEMA}.ledger l),
           (SELECT md5(COALESCE(string_agg(b::text, E'\\n' ORDER BY b::text), ''))
            FROM {LEDGER_SCHEMA}.backfill_progress b)"""

# Objects outside the session's temporary schema that depend on something in it: the server
# drops them with it (DROP ... CASCADE) when the session ends, after any gate.
TEMP_DEPENDANTS_QUERY = """
    WITH tmp AS (SELECT pg_catalog.pg_my_temp_schema() AS oid),
    objs AS (
        SELECT oid FROM pg_catalog.pg_type WHERE typnamespace = (SELECT oid FROM tmp)
        UNION ALL SELECT oid FROM pg_catalog.pg_proc WHERE pronamespace = (SELECT oid FROM tmp)
        UNION ALL SELECT oid FROM pg_catalog.pg_class WHERE relnamespace = (SELECT oid FROM tmp)
        UNION ALL SELECT oid FROM pg_catalog.pg_collation WHERE collnamespace = (SELECT oid FROM tmp)
        UNION ALL SELECT oid FROM pg_catalog.pg_operator WHERE oprnamespace = (SELECT oid FROM tmp))
    SELECT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid)
    FROM pg_catalog.pg_depend d
    WHERE (SELECT oid FROM tmp) <> 0 AND d.refobjid IN (SELECT oid FROM objs)
      AND COALESCE((pg_catalog.pg_identify_object(d.classid, d.objid, d.objsubid)).schema, '')
          !~ '^pg_(toast_)?temp_[0-9]+$'
    LIMIT 1"""

# The governance schema's definition, and how many triggers, rules and policies its tables
# have (ours have none). Captures leave the schema out by name, so a session checks it itself:
# anything a migration attached to the ledger would run when the run records itself, after
# the gate. Node trees and OIDs are compared as they are: only a change within one
# transaction matters.
GOVERNANCE_QUERY = f"""
    WITH ns AS (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = '{LEDGER_SCHEMA}'),
    -- Everything created in a schema depends on it: found through pg_depend's index, not by
    -- scanning the catalogs of a 10,000-table database.
    inside AS MATERIALIZED (SELECT d.classid, d.objid FROM pg_catalog.pg_depend d
        WHERE d.refclassid = 'pg_catalog.pg_namespace'::regclass AND d.refobjid = (SELECT oid FROM ns)),
    rel AS MATERIALIZED (SELECT objid AS oid FROM inside WHERE classid = 'pg_catalog.pg_class'::regclass)
    SELECT md5(COALESCE(string_agg(x, E'\\n' ORDER BY x), '')),
           (SELECT count(*) FROM pg_catalog.pg_trigger t WHERE t.tgrelid IN (SELECT oid FROM rel)
              AND NOT t.tgisinternal)
         + (SELECT count(*) FROM pg_catalog.pg_rewrite r WHERE r.ev_class IN (SELECT oid FROM rel))
         + (SELECT count(*) FROM pg_catalog.pg_policy p WHERE p.polrelid IN (SELECT oid FROM rel))
    FROM (
        SELECT row(n.oid, n.nspname, n.nspowner, n.nspacl)::text AS x
        FROM pg_catalog.pg_namespace n WHERE n.oid = (SELECT oid FROM ns)
        UNION ALL SELECT row(c.oid, c.relname, c.relkind, c.relowner, c.relacl, c.relrowsecurity,
                             c.relforcerowsecurity, c.reloptions, c.relpersistence, c.reltype)::text
        FROM pg_catalog.pg_class c WHERE c.oid IN (SELECT oid FROM rel)
        UNION ALL SELECT row(a.attrelid, a.attnum, a.attname, a.atttypid, a.atttypmod, a.attnotnull, a.attgenerated,
                             a.attidentity, a.attcollation, a.attacl, d.adbin)::text
        FROM pg_catalog.pg_attribute a
        LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid IN (SELECT oid FROM rel) AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL SELECT row(co.oid, co.conname, co.conrelid, co.contypid, co.contype, co.conbin, co.conkey,
                             co.confrelid, co.condeferrable, co.convalidated)::text
        FROM pg_catalog.pg_constraint co
        WHERE co.conrelid IN (SELECT oid FROM rel)
           OR co.oid IN (SELECT objid FROM inside WHERE classid = 'pg_catalog.pg_constraint'::regclass)
        UNION ALL SELECT row(t.oid, t.tgname, t.tgrelid, t.tgfoid, t.tgenabled, t.tgtype, t.tgdeferrable)::text
        FROM pg_catalog.pg_trigger t WHERE t.tgrelid IN (SELECT oid FROM rel)
        UNION ALL SELECT row(r.oid, r.rulename, r.ev_class, r.ev_enabled, r.ev_action)::text
        FROM pg_catalog.pg_rewrite r WHERE r.ev_class IN (SELECT oid FROM rel)
        UNION ALL SELECT row(p.oid, p.polname, p.polrelid, p.polcmd, p.polroles, p.polqual, p.polwithcheck)::text
        FROM pg_catalog.pg_policy p WHERE p.polrelid IN (SELECT oid FROM rel)
        UNION ALL SELECT row(i.indexrelid, i.indrelid, i.indkey, i.indclass, i.indexprs, i.indpred)::text
        FROM pg_catalog.pg_index i WHERE i.indrelid IN (SELECT oid FROM rel)
        UNION ALL SELECT row(p.oid, p.proname, p.prosrc, p.proconfig, p.prosecdef, p.proowner)::text
        FROM pg_catalog.pg_proc p
        WHERE p.oid IN (SELECT objid FROM inside WHERE classid = 'pg_catalog.pg_proc'::regclass)
        UNION ALL SELECT row(ty.oid, ty.typname, ty.typtype, ty.typbasetype, ty.typdefaultbin)::text
        FROM pg_catalog.pg_type ty
        WHERE ty.oid IN (SELECT objid FROM inside WHERE classid = 'pg_catalog.pg_type'::regclass)
    ) s"""

LEDGER_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {LEDGER_SCHEMA};
CREATE TABLE IF NOT EXISTS {LEDGER_SCHEMA}.ledger (
    id bigserial PRIMARY KEY,
    migration_id text NOT NULL,
    operation text NOT NULL,
    status text NOT NULL,
    bundle_digest text NOT NULL,
    artifacts jsonb NOT NULL,
    environment text NOT NULL,
    run_id text NOT NULL UNIQUE,
    pre_schema_fingerprint text NOT NULL,
    pre_protected_fingerprint text NOT NULL,
    post_schema_fingerprint text NOT NULL,
    post_scope_fingerprint text NOT NULL,
    receipt_digest text,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {LEDGER_SCHEMA}.backfill_progress (
    migration_id text NOT NULL,
    run_key text NOT NULL,
    batch_no integer NOT NULL,
    last_key text,
    rows_total bigint NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (migration_id, run_key, batch_no)
);
REVOKE ALL ON SCHEMA {LEDGER_SCHEMA} FROM PUBLIC;
"""
