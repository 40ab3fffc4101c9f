"""Catalog queries of the posture checks (``posture``): what enforces policy, read in clear
right before the script and again after it, and how the objects a run created or changed
are found with what they depend on.

The baselines hold digests only; these facts stay in the session (role names, privilege
letters, policy expressions and function bodies never leave it, except in a finding's
message about a reference to a guarded object).
"""

from __future__ import annotations

# Schemas whose objects a run may create or change: user schemas, the ledger's included
# (a function may refer to it), not the system or temporary ones.
_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname !~ '^pg_(toast_)?temp_'"

# A function's id as the capture writes it.
FUNCTION_ID = "'function:' || n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'"

# Who owns each object, and whether a function is SECURITY DEFINER: (catalog, oid, owner, secdef).
# Indexes, a table's row type and array types follow their table or type.
OWNERS_QUERY = f"""
    SELECT 'pg_class', c.oid, c.relowner, false FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c') AND {_SCHEMAS}
    UNION ALL SELECT 'pg_proc', p.oid, p.proowner, p.prosecdef FROM pg_catalog.pg_proc p
    JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE {_SCHEMAS}
    UNION ALL SELECT 'pg_namespace', n.oid, n.nspowner, false FROM pg_catalog.pg_namespace n WHERE {_SCHEMAS}
    UNION ALL SELECT 'pg_type', t.oid, t.typowner, false FROM pg_catalog.pg_type t
    JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
    WHERE t.typtype IN ('b', 'd', 'e', 'r') AND NOT (t.typtype = 'b' AND t.typcategory = 'A') AND {_SCHEMAS}
    UNION ALL SELECT 'pg_collation', x.oid, x.collowner, false FROM pg_catalog.pg_collation x
    JOIN pg_catalog.pg_namespace n ON n.oid = x.collnamespace WHERE {_SCHEMAS}
    UNION ALL SELECT 'pg_conversion', x.oid, x.conowner, false FROM pg_catalog.pg_conversion x
    JOIN pg_catalog.pg_namespace n ON n.oid = x.connamespace WHERE {_SCHEMAS}
    UNION ALL SELECT 'pg_operator', x.oid, x.oprowner, false FROM pg_catalog.pg_operator x
    JOIN pg_catalog.pg_namespace n ON n.oid = x.oprnamespace WHERE {_SCHEMAS}
    UNION ALL SELECT 'pg_opclass', x.oid, x.opcowner, false FROM pg_catalog.pg_opclass x
    JOIN pg_catalog.pg_namespace n ON n.oid = x.opcnamespace WHERE {_SCHEMAS}
    UNION ALL SELECT 'pg_opfamily', x.oid, x.opfowner, false FROM pg_catalog.pg_opfamily x
    JOIN pg_catalog.pg_namespace n ON n.oid = x.opfnamespace WHERE {_SCHEMAS}
    UNION ALL SELECT 'pg_ts_config', x.oid, x.cfgowner, false FROM pg_catalog.pg_ts_config x
    JOIN pg_catalog.pg_namespace n ON n.oid = x.cfgnamespace WHERE {_SCHEMAS}
    UNION ALL SELECT 'pg_ts_dict', x.oid, x.dictowner, false FROM pg_catalog.pg_ts_dict x
    JOIN pg_catalog.pg_namespace n ON n.oid = x.dictnamespace WHERE {_SCHEMAS}
    UNION ALL SELECT 'pg_statistic_ext', x.oid, x.stxowner, false FROM pg_catalog.pg_statistic_ext x
    JOIN pg_catalog.pg_namespace n ON n.oid = x.stxnamespace WHERE {_SCHEMAS}"""

# The ids (as the capture writes them), owners and earlier owners of some (catalog, oid) pairs,
# and whether an extension owns the object (its owner is the extension's business).
DESCRIBE_QUERY = f"""
    SELECT o.cls, o.oid,
           CASE o.cls
             WHEN 'pg_class' THEN (SELECT 'relation:' || n.nspname || '.' || c.relname FROM pg_catalog.pg_class c
                                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = o.oid)
             WHEN 'pg_proc' THEN (SELECT {FUNCTION_ID} FROM pg_catalog.pg_proc p
                                  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = o.oid)
             WHEN 'pg_namespace' THEN (SELECT 'schema:' || n.nspname FROM pg_catalog.pg_namespace n WHERE n.oid = o.oid)
             WHEN 'pg_type' THEN (SELECT 'type:' || n.nspname || '.' || t.typname FROM pg_catalog.pg_type t
                                  JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = o.oid)
             ELSE pg_catalog.pg_describe_object(o.cls::regclass, o.oid, 0)
           END,
           pg_catalog.pg_get_userbyid(o.owner), pg_catalog.pg_get_userbyid(o.before),
           EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = o.cls::regclass AND e.objid = o.oid
                   AND e.deptype = 'e')
    FROM unnest(%s::text[], %s::oid[], %s::oid[], %s::oid[]) o(cls, oid, owner, before)"""

CURRENT_USER_QUERY = "SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user"

# Triggers (not the internal ones) and rules, with whether they fire: table oid, kind, name,
# id, enabled. Matched by table oid and name, so that a renamed table keeps its triggers.
TRIGGERS_QUERY = f"""
    SELECT c.oid, 'trigger', t.tgname, 'trigger:' || n.nspname || '.' || c.relname || '.' || t.tgname,
           t.tgenabled::text
    FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE NOT t.tgisinternal AND {_SCHEMAS}
    UNION ALL
    SELECT c.oid, 'rule', r.rulename, 'rule:' || n.nspname || '.' || c.relname || '.' || r.rulename,
           r.ev_enabled::text
    FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE r.rulename <> '_RETURN' AND {_SCHEMAS}"""

# Row-level security policies in clear: table oid, name, id, table, permissive, command,
# roles, USING, WITH CHECK.
POLICIES_QUERY = f"""
    SELECT c.oid, po.polname, 'policy:' || n.nspname || '.' || c.relname || '.' || po.polname,
           n.nspname || '.' || c.relname, po.polpermissive, po.polcmd::text,
           ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_catalog.pg_get_userbyid(r) END
                 FROM unnest(po.polroles) r ORDER BY 1),
           pg_catalog.pg_get_expr(po.polqual, po.polrelid), pg_catalog.pg_get_expr(po.polwithcheck, po.polrelid)
    FROM pg_catalog.pg_policy po JOIN pg_catalog.pg_class c ON c.oid = po.polrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE {_SCHEMAS}"""

# Privileges the baseline's ``acls`` leave out: functions, types, and default
# privileges (``ALTER DEFAULT PRIVILEGES``, named as the capture's default_acl objects), each
# with a key that survives renames, its name, and its ACL. A NULL ACL means the built-in
# defaults and is not listed.
ACLS_QUERY = f"""
    SELECT 'pg_proc:' || p.oid, {FUNCTION_ID}, p.proacl::text FROM pg_catalog.pg_proc p
    JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE p.proacl IS NOT NULL AND {_SCHEMAS}
    UNION ALL
    SELECT 'pg_type:' || t.oid, 'type:' || n.nspname || '.' || t.typname, t.typacl::text FROM pg_catalog.pg_type t
    JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace WHERE t.typacl IS NOT NULL AND {_SCHEMAS}
    UNION ALL
    SELECT 'pg_default_acl:' || d.defaclrole || '.' || d.defaclnamespace || '.' || d.defaclobjtype::text,
           'default_acl:' || pg_catalog.pg_get_userbyid(d.defaclrole) || '.' || COALESCE(n.nspname, '*') || '.'
           || d.defaclobjtype::text, d.defaclacl::text
    FROM pg_catalog.pg_default_acl d LEFT JOIN pg_catalog.pg_namespace n ON n.oid = d.defaclnamespace"""

# Column privileges, as for ACLS_QUERY; all of them (a scan of pg_attribute), or those of
# the tables named (after the script: a column whose privileges changed is in the diff).
_COLUMN_ACLS = f"""
    SELECT 'pg_attribute:' || a.attrelid || '.' || a.attnum,
           'column:' || n.nspname || '.' || c.relname || '.' || a.attname, a.attacl::text
    FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE a.attacl IS NOT NULL AND a.attnum > 0 AND NOT a.attisdropped AND {_SCHEMAS}"""
COLUMN_ACLS_QUERY = _COLUMN_ACLS
COLUMN_ACLS_OF_QUERY = _COLUMN_ACLS + " AND c.relname = ANY(%s)"

# The catalog rows of the objects a run added or changed, by their ids: (id, catalog, oid).
# A view is found through its _RETURN rule, which holds its dependencies; a column through
# its default (or generation expression); a constraint only when it has an expression.
LOCATE_QUERY = f"""
    SELECT x.id, x.cls, x.oid FROM (
        SELECT {FUNCTION_ID} AS id, 'pg_proc' AS cls, p.oid
        FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE 'function:' || n.nspname || '.' || p.proname || '(' = ANY(%(prefixes)s)
        UNION ALL
        SELECT 'trigger:' || n.nspname || '.' || c.relname || '.' || t.tgname, 'pg_trigger', t.oid
        FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT t.tgisinternal AND c.relname = ANY(%(tables)s)
        UNION ALL
        SELECT CASE WHEN r.rulename = '_RETURN' THEN 'relation:' || n.nspname || '.' || c.relname
                    ELSE 'rule:' || n.nspname || '.' || c.relname || '.' || r.rulename END, 'pg_rewrite', r.oid
        FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relname = ANY(%(tables)s)
        UNION ALL
        SELECT 'policy:' || n.nspname || '.' || c.relname || '.' || po.polname, 'pg_policy', po.oid
        FROM pg_catalog.pg_policy po JOIN pg_catalog.pg_class c ON c.oid = po.polrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relname = ANY(%(tables)s)
        UNION ALL
        SELECT 'column:' || n.nspname || '.' || c.relname || '.' || a.attname, 'pg_attrdef', ad.oid
        FROM pg_catalog.pg_attrdef ad JOIN pg_catalog.pg_class c ON c.oid = ad.adrelid
        JOIN pg_catalog.pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relname = ANY(%(tables)s)
        UNION ALL
        SELECT 'constraint:' || n.nspname || '.' || c.relname || '.' || co.conname, 'pg_constraint', co.oid
        FROM pg_catalog.pg_constraint co JOIN pg_catalog.pg_class c ON c.oid = co.conrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = co.connamespace
        WHERE co.conbin IS NOT NULL AND c.relname = ANY(%(tables)s)
    ) x WHERE x.id = ANY(%(ids)s)"""

# What some objects depend on (normal dependencies: what their definition refers to), by
# (catalog, oid): the relations and the user-defined functions outside extensions.
DEPENDS_QUERY = """
    SELECT o.i, rn.nspname, rc.relname, rp.oid, pn.nspname, rp.proname
    FROM unnest(%s::text[], %s::oid[]) WITH ORDINALITY o(cls, oid, i)
    JOIN pg_catalog.pg_depend d ON d.classid = o.cls::regclass AND d.objid = o.oid AND d.deptype = 'n'
    LEFT JOIN pg_catalog.pg_class rc ON d.refclassid = 'pg_catalog.pg_class'::regclass AND rc.oid = d.refobjid
    LEFT JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
    LEFT JOIN pg_catalog.pg_proc rp ON d.refclassid = 'pg_catalog.pg_proc'::regclass AND rp.oid = d.refobjid
    LEFT JOIN pg_catalog.pg_namespace pn ON pn.oid = rp.pronamespace
    WHERE (rc.oid IS NOT NULL OR rp.oid IS NOT NULL)
      AND COALESCE(pn.nspname, '') NOT IN ('pg_catalog', 'information_schema')
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE rp.oid IS NOT NULL
                      AND e.classid = 'pg_catalog.pg_proc'::regclass AND e.objid = rp.oid AND e.deptype = 'e')"""

# What a function is: id, schema, language, kind, whether its body is stored parsed (BEGIN
# ATOMIC), its settings, owner, definition and source, and whether an extension owns it.
FUNCTIONS_QUERY = f"""
    SELECT p.oid, {FUNCTION_ID}, n.nspname, l.lanname, p.prokind::text, p.prosqlbody IS NOT NULL,
           p.proconfig, pg_catalog.pg_get_userbyid(p.proowner),
           CASE WHEN p.prokind IN ('f', 'p') AND l.lanname = 'plpgsql' THEN pg_catalog.pg_get_functiondef(p.oid) END,
           p.prosrc,
           EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = 'pg_catalog.pg_proc'::regclass
                   AND e.objid = p.oid AND e.deptype = 'e')
    FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    JOIN pg_catalog.pg_language l ON l.oid = p.prolang
    WHERE p.oid = ANY(%s::oid[])"""

# User-defined functions (outside extensions) by name: oid, schema, name.
FUNCTIONS_BY_NAME_QUERY = f"""
    SELECT p.oid, n.nspname, p.proname FROM pg_catalog.pg_proc p
    JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    WHERE p.proname = ANY(%s) AND {_SCHEMAS}
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = 'pg_catalog.pg_proc'::regclass
                      AND e.objid = p.oid AND e.deptype = 'e')"""

# Relations by name, in any user schema: schema, name.
RELATIONS_BY_NAME_QUERY = f"""
    SELECT n.nspname, c.relname FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relname = ANY(%s) AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {_SCHEMAS}"""
