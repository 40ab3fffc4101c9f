"""Catalog queries of the objects that belong to no relation: schemas, functions,
extensions, types, operators and the other schema-level objects, and the database- and
cluster-level ones (roles, databases, publications, the built-in objects' privileges...).

Each query returns: kind, id, schema, table, digest, and NULL (no family). Objects that
belong to an extension are covered by the extension's own object (name + version), as
pg_dump does.
"""

from __future__ import annotations

from airflow_kfm_migrations.stores.postgis.catalog_sql import (
    USER_SCHEMAS,
    description,
    not_ext,
    role_names,
    row_sha256,
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
def _attached(legacy: bool) -> str:
    return (
        "(SELECT md5(string_agg(x, E'\\n' ORDER BY x)) FROM ("
        "SELECT pg_get_indexdef(i.indexrelid) AS x FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid "
        "UNION ALL SELECT pg_get_triggerdef(t.oid) || ' ' || t.tgenabled::text FROM pg_catalog.pg_trigger t "
        "WHERE t.tgrelid = c.oid AND NOT t.tgisinternal "
        "UNION ALL SELECT pg_get_ruledef(r.oid) || ' ' || r.ev_enabled::text FROM pg_catalog.pg_rewrite r "
        "WHERE r.ev_class = c.oid "
        "UNION ALL SELECT row(p.polname, p.polcmd, p.polpermissive, "
        + ("p.polroles::text" if legacy else role_names("p.polroles"))
        + ", pg_get_expr(p.polqual, c.oid), "
        "pg_get_expr(p.polwithcheck, c.oid))::text FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid "
        "UNION ALL SELECT co.conname || ' ' || pg_get_constraintdef(co.oid) FROM pg_catalog.pg_constraint co "
        "WHERE co.conrelid = c.oid "
        "UNION ALL SELECT 'default ' || ad.adnum || ' ' || pg_get_expr(ad.adbin, c.oid) FROM pg_catalog.pg_attrdef ad "
        "WHERE ad.adrelid = c.oid) attached)"
    )


# Extension members are not baselined one by one, but replacing a member function's body,
# its privileges or security, or altering a member table still changes the extension.
def _extension(legacy: bool) -> str:
    return f"""
        SELECT 'extension', 'extension:' || e.extname, n.nspname, NULL::text,
               {
        row_sha256(
            "e.extname",
            "e.extversion",
            "n.nspname",
            "e.extrelocatable",
            "pg_get_userbyid(e.extowner)",
            "e.extconfig::text" if legacy else "e.extconfig::regclass[]::text",
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
            + _attached(legacy)
            + ")::text) AS h FROM pg_catalog.pg_depend d "
            "JOIN pg_catalog.pg_class c ON c.oid = d.objid WHERE d.refclassid = 'pg_extension'::regclass "
            "AND d.refobjid = e.oid AND d.classid = 'pg_class'::regclass AND d.deptype = 'e') x)",
        )
    }, NULL::oid
        FROM pg_catalog.pg_extension e
        JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
        WHERE e.extname <> 'plpgsql'"""


def _foreign_server(legacy: bool) -> str:
    return f"""
        SELECT 'foreign_server', 'foreign_server:' || s.srvname, NULL::text, NULL::text,
               {
        row_sha256(
            "s.srvtype",
            "s.srvversion",
            "s.srvoptions::text",
            "pg_get_userbyid(s.srvowner)",
            (
                "(SELECT array_agg(um.umuser::text ORDER BY 1) FROM pg_catalog.pg_user_mapping um "
                "WHERE um.umserver = s.oid)::text"
                if legacy
                else role_names("ARRAY(SELECT um.umuser FROM pg_catalog.pg_user_mapping um WHERE um.umserver = s.oid)")
            ),
        )
    }, NULL::oid
        FROM pg_catalog.pg_foreign_server s
        WHERE {not_ext("pg_foreign_server", "s.oid")}"""


# Built-in objects are not captured one by one, but granting on them (pg_read_file to
# PUBLIC, pg_authid to anyone) or adding objects to the system schemas changes what every
# role may do: one digest over all of it, which no scope can allow changing. Objects added
# to the system schemas are those with OIDs past the built-in range, named (their OIDs
# differ from one database to the next).
def _builtin(legacy: bool) -> str:
    return f"""
        WITH sys AS (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname IN ('pg_catalog', 'information_schema'))
        SELECT 'builtin', 'builtin:privileges-and-additions', NULL::text, NULL::text,
               {
        row_sha256(
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
            "SELECT 'r' || " + ("c.oid" if legacy else "c.oid::regclass::text") + " FROM pg_catalog.pg_class c "
            "WHERE c.oid >= 16384 AND c.relnamespace IN (SELECT oid FROM sys) "
            "UNION ALL SELECT 'p' || "
            + ("p.oid" if legacy else "p.oid::regprocedure::text")
            + " FROM pg_catalog.pg_proc p "
            "WHERE p.oid >= 16384 AND p.pronamespace IN (SELECT oid FROM sys) "
            "UNION ALL SELECT 't' || " + ("t.oid" if legacy else "t.oid::regtype::text") + " FROM pg_catalog.pg_type t "
            "WHERE t.oid >= 16384 AND t.typnamespace IN (SELECT oid FROM sys)) added(x))",
        )
    }, NULL::oid"""


_DATABASES = (
    "(SELECT string_agg(row(d.datname, pg_get_userbyid(d.datdba), d.datacl::text, d.datconnlimit, "
    "d.datallowconn, d.datistemplate, shobj_description(d.oid, 'pg_database'), (SELECT array_agg("
    "array_to_string(rs.setconfig, ',') ORDER BY 1) FROM pg_catalog.pg_db_role_setting rs "
    "WHERE rs.setdatabase = d.oid AND rs.setrole = 0)::text)::text, ',' ORDER BY d.datname) "
    "FROM pg_catalog.pg_database d)"
)
_TABLESPACES = (
    "(SELECT string_agg(row(t.spcname, pg_get_userbyid(t.spcowner), t.spcacl::text, t.spcoptions::text, "
    "shobj_description(t.oid, 'pg_tablespace'))::text, ',' ORDER BY t.spcname) "
    "FROM pg_catalog.pg_tablespace t)"
)
_SLOTS = (
    "(SELECT string_agg(row(s.slot_name, s.plugin, s.slot_type, s.database, s.temporary)::text, ',' "
    "ORDER BY s.slot_name) FROM pg_catalog.pg_replication_slots s WHERE NOT s.temporary)"
)
_ORIGINS = "(SELECT string_agg(o.roname, ',' ORDER BY o.roname) FROM pg_catalog.pg_replication_origin o)"

_CLUSTER = " UNION ALL ".join(
    f"SELECT 'cluster', 'cluster:{name}', NULL::text, NULL::text, {row_sha256(what)}, NULL::oid"
    for name, what in (
        ("databases", _DATABASES),
        ("tablespaces", _TABLESPACES),
        ("replication-slots", _SLOTS),
        ("replication-origins", _ORIGINS),
    )
)
# Earlier releases digested the four as one object (see ``legacy``).
_LEGACY_CLUSTER = f"""
        SELECT 'cluster', 'cluster:databases-tablespaces-replication', NULL::text, NULL::text,
               {row_sha256(_DATABASES, _TABLESPACES, _SLOTS, _ORIGINS)}, NULL::oid"""


GLOBAL_QUERIES: dict[str, str] = {
    "schema": f"""
        SELECT 'schema', 'schema:' || n.nspname, n.nspname, NULL::text,
               {
        row_sha256("n.nspname", "pg_get_userbyid(n.nspowner)", "n.nspacl::text", description("pg_namespace", "n.oid"))
    },
               NULL::oid
        FROM pg_catalog.pg_namespace n
        WHERE {USER_SCHEMAS} AND {not_ext("pg_namespace", "n.oid")}""",
    "function": f"""
        SELECT CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' WHEN 'w' THEN 'window'
                              ELSE 'function' END,
               'function:' || n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
               n.nspname, NULL::text,
               {
        row_sha256(
            "CASE WHEN p.prokind IN ('f', 'p') THEN md5(pg_get_functiondef(p.oid)) "
            "ELSE md5(COALESCE(p.prosrc, '')) END",
            "pg_get_userbyid(p.proowner)",
            "p.proacl::text",
            description("pg_proc", "p.oid"),
            "p.prosecdef",
            "p.proconfig::text",
            _AGGREGATE,
        )
    }, NULL::oid
        FROM pg_catalog.pg_proc p
        JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE {USER_SCHEMAS} AND {not_ext("pg_proc", "p.oid")}""",
    "extension": _extension(False),
    "type": f"""
        SELECT CASE ty.typtype WHEN 'e' THEN 'enum' WHEN 'd' THEN 'domain' ELSE 'type' END,
               'type:' || n.nspname || '.' || ty.typname, n.nspname, NULL::text,
               {
        row_sha256(
            "ty.typtype",
            "format_type(ty.typbasetype, ty.typtypmod)",
            "ty.typnotnull",
            "ty.typdefault",
            "pg_get_userbyid(ty.typowner)",
            "ty.typacl::text",
            description("pg_type", "ty.oid"),
            "(SELECT array_agg(en.enumlabel ORDER BY en.enumsortorder) FROM pg_catalog.pg_enum en "
            "WHERE en.enumtypid = ty.oid)::text",
        )
    }, NULL::oid
        FROM pg_catalog.pg_type ty
        JOIN pg_catalog.pg_namespace n ON n.oid = ty.typnamespace
        WHERE ty.typtype IN ('e', 'd', 'r', 'm') AND {USER_SCHEMAS} AND {not_ext("pg_type", "ty.oid")}""",
    # Database- and cluster-level objects no schema scope can allow: any change is out of scope.
    "event_trigger": f"""
        SELECT 'event_trigger', 'event_trigger:' || e.evtname, NULL::text, NULL::text,
               {
        row_sha256(
            "e.evtevent",
            "e.evtenabled",
            "e.evttags::text",
            "e.evtfoid::regprocedure::text",
            "pg_get_userbyid(e.evtowner)",
        )
    }, NULL::oid
        FROM pg_catalog.pg_event_trigger e
        WHERE {not_ext("pg_event_trigger", "e.oid")}""",
    "default_acl": f"""
        SELECT 'default_acl', 'default_acl:' || pg_get_userbyid(d.defaclrole) || '.' || COALESCE(n.nspname, '*')
               || '.' || d.defaclobjtype::text, n.nspname, NULL::text,
               {row_sha256("d.defaclacl::text")}, NULL::oid
        FROM pg_catalog.pg_default_acl d
        LEFT JOIN pg_catalog.pg_namespace n ON n.oid = d.defaclnamespace""",
    "role": f"""
        SELECT 'role', 'role:' || r.rolname, NULL::text, NULL::text,
               {
        row_sha256(
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
        row_sha256(
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
    "foreign_server": _foreign_server(False),
    # Schema-level objects that belong to no table: out of scope unless the scope allows
    # their name (as for functions).
    "operator": f"""
        SELECT 'operator', 'operator:' || n.nspname || '.' || o.oprname || '(' || o.oprleft::regtype::text || ','
               || o.oprright::regtype::text || ')', n.nspname, NULL::text,
               {
        row_sha256(
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
            description("pg_operator", "o.oid"),
        )
    }, NULL::oid
        FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
        WHERE {USER_SCHEMAS} AND {not_ext("pg_operator", "o.oid")}""",
    "opfamily": f"""
        SELECT 'opfamily', 'opfamily:' || n.nspname || '.' || f.opfname || '(' || am.amname || ')', n.nspname,
               NULL::text,
               {
        row_sha256(
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
        WHERE {USER_SCHEMAS} AND {not_ext("pg_opfamily", "f.oid")}""",
    "opclass": f"""
        SELECT 'opclass', 'opclass:' || n.nspname || '.' || c.opcname || '(' || am.amname || ')', n.nspname,
               NULL::text,
               {
        row_sha256(
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
        WHERE {USER_SCHEMAS} AND {not_ext("pg_opclass", "c.oid")}""",
    # Every collation column but the ids: the locale columns differ between server versions.
    "collation": f"""
        SELECT 'collation', 'collation:' || n.nspname || '.' || c.collname, n.nspname, NULL::text,
               {
        row_sha256(
            "(to_jsonb(c) - 'oid' - 'collnamespace' - 'collowner')::text",
            "pg_get_userbyid(c.collowner)",
            description("pg_collation", "c.oid"),
        )
    }, NULL::oid
        FROM pg_catalog.pg_collation c JOIN pg_catalog.pg_namespace n ON n.oid = c.collnamespace
        WHERE {USER_SCHEMAS} AND {not_ext("pg_collation", "c.oid")}""",
    "conversion": f"""
        SELECT 'conversion', 'conversion:' || n.nspname || '.' || c.conname, n.nspname, NULL::text,
               {
        row_sha256(
            "pg_encoding_to_char(c.conforencoding)",
            "pg_encoding_to_char(c.contoencoding)",
            "c.conproc::regprocedure::text",
            "c.condefault",
            "pg_get_userbyid(c.conowner)",
        )
    }, NULL::oid
        FROM pg_catalog.pg_conversion c JOIN pg_catalog.pg_namespace n ON n.oid = c.connamespace
        WHERE {USER_SCHEMAS} AND {not_ext("pg_conversion", "c.oid")}""",
    "text_search": f"""
        SELECT 'text_search', 'text_search:config:' || n.nspname || '.' || c.cfgname, n.nspname, NULL::text,
               {
        row_sha256(
            "c.cfgparser::regproc::text",
            "(SELECT np.nspname || '.' || pr.prsname FROM pg_catalog.pg_ts_parser pr JOIN pg_catalog.pg_namespace np "
            "ON np.oid = pr.prsnamespace WHERE pr.oid = c.cfgparser)",
            "(SELECT array_agg(row(m.maptokentype, m.mapseqno, m.mapdict::regdictionary::text)::text ORDER BY 1) "
            "FROM pg_catalog.pg_ts_config_map m WHERE m.mapcfg = c.oid)::text",
            "pg_get_userbyid(c.cfgowner)",
        )
    }, NULL::oid
        FROM pg_catalog.pg_ts_config c JOIN pg_catalog.pg_namespace n ON n.oid = c.cfgnamespace
        WHERE {USER_SCHEMAS} AND {not_ext("pg_ts_config", "c.oid")}
        UNION ALL
        SELECT 'text_search', 'text_search:dictionary:' || n.nspname || '.' || d.dictname, n.nspname, NULL::text,
               {
        row_sha256(
            "(SELECT nt.nspname || '.' || t.tmplname FROM pg_catalog.pg_ts_template t JOIN pg_catalog.pg_namespace nt "
            "ON nt.oid = t.tmplnamespace WHERE t.oid = d.dicttemplate)",
            "d.dictinitoption",
            "pg_get_userbyid(d.dictowner)",
        )
    }, NULL::oid
        FROM pg_catalog.pg_ts_dict d JOIN pg_catalog.pg_namespace n ON n.oid = d.dictnamespace
        WHERE {USER_SCHEMAS} AND {not_ext("pg_ts_dict", "d.oid")}
        UNION ALL
        SELECT 'text_search', 'text_search:parser:' || n.nspname || '.' || pr.prsname, n.nspname, NULL::text,
               {
        row_sha256(
            "pr.prsstart::regproc::text",
            "pr.prstoken::regproc::text",
            "pr.prsend::regproc::text",
            "pr.prsheadline::regproc::text",
            "pr.prslextype::regproc::text",
        )
    }, NULL::oid
        FROM pg_catalog.pg_ts_parser pr JOIN pg_catalog.pg_namespace n ON n.oid = pr.prsnamespace
        WHERE {USER_SCHEMAS} AND {not_ext("pg_ts_parser", "pr.oid")}
        UNION ALL
        SELECT 'text_search', 'text_search:template:' || n.nspname || '.' || t.tmplname, n.nspname, NULL::text,
               {row_sha256("t.tmplinit::regproc::text", "t.tmpllexize::regproc::text")}, NULL::oid
        FROM pg_catalog.pg_ts_template t JOIN pg_catalog.pg_namespace n ON n.oid = t.tmplnamespace
        WHERE {USER_SCHEMAS} AND {not_ext("pg_ts_template", "t.oid")}""",
    # Database-level objects: no schema scope can allow changing them.
    "database": f"""
        SELECT 'database', 'database:current', NULL::text, NULL::text,
               {
        row_sha256(
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
    "builtin": _builtin(False),
    # What else of the cluster a migration could change: the other databases' settings,
    # privileges and limits, tablespaces, and replication slots and origins (a slot holds WAL
    # for as long as it exists). One object each, so that a change is attributed to the
    # catalog behind it (see ``attribution``).
    "cluster": _CLUSTER,
    "cast": f"""
        SELECT 'cast', 'cast:' || c.castsource::regtype::text || '->' || c.casttarget::regtype::text, NULL::text,
               NULL::text, {row_sha256("c.castfunc::regprocedure::text", "c.castcontext", "c.castmethod")}, NULL::oid
        FROM pg_catalog.pg_cast c
        WHERE c.oid >= 16384 AND {not_ext("pg_cast", "c.oid")}""",
    "language": f"""
        SELECT 'language', 'language:' || l.lanname, NULL::text, NULL::text,
               {
        row_sha256(
            "l.lanpltrusted",
            "l.lanplcallfoid::regproc::text",
            "l.laninline::regproc::text",
            "l.lanvalidator::regproc::text",
            "l.lanacl::text",
            "pg_get_userbyid(l.lanowner)",
        )
    }, NULL::oid
        FROM pg_catalog.pg_language l
        WHERE l.oid >= 16384 AND {not_ext("pg_language", "l.oid")}""",
    "foreign_data_wrapper": f"""
        SELECT 'foreign_data_wrapper', 'foreign_data_wrapper:' || w.fdwname, NULL::text, NULL::text,
               {
        row_sha256(
            "w.fdwhandler::regproc::text",
            "w.fdwvalidator::regproc::text",
            "w.fdwoptions::text",
            "w.fdwacl::text",
            "pg_get_userbyid(w.fdwowner)",
        )
    }, NULL::oid
        FROM pg_catalog.pg_foreign_data_wrapper w
        WHERE {not_ext("pg_foreign_data_wrapper", "w.oid")}""",
    "access_method": f"""
        SELECT 'access_method', 'access_method:' || a.amname, NULL::text, NULL::text,
               {row_sha256("a.amtype", "a.amhandler::regproc::text")}, NULL::oid
        FROM pg_catalog.pg_am a
        WHERE a.oid >= 16384 AND {not_ext("pg_am", "a.oid")}""",
    "large_objects": f"""
        SELECT 'large_objects', 'large_objects:metadata', NULL::text, NULL::text,
               {
        row_sha256(
            "count(*)",
            "md5(string_agg(row(lo.oid, pg_get_userbyid(lo.lomowner), lo.lomacl::text)::text, ',' ORDER BY lo.oid))",
        )
    }, NULL::oid
        FROM pg_catalog.pg_largeobject_metadata lo""",
    "subscription": f"""
        SELECT 'subscription', 'subscription:' || s.subname, NULL::text, NULL::text,
               {row_sha256("s.subenabled", "s.subpublications::text", "pg_get_userbyid(s.subowner)")}, NULL::oid
        FROM pg_catalog.pg_subscription s
        WHERE s.subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())""",
}

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

# The kinds whose digests held per-database OIDs before they were named (see
# ``catalog_sql.FIRST_USER_OID``), as those releases computed them, and the old cluster object.
LEGACY_GLOBAL_QUERIES: dict[str, str] = {
    "extension": _extension(True),
    "foreign_server": _foreign_server(True),
    "builtin": _builtin(True),
    "cluster": _LEGACY_CLUSTER,
}
