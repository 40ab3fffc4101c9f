"""Catalog snapshot of a PostgreSQL database, and what else a run asks the catalog.

A capture is one digest per object, computed in SQL: the object kinds' queries live in
``catalog_family`` (objects of one relation) and ``catalog_global`` (the others); this
module puts them together (the whole catalog, the global part, some families) and holds the
queries of the run around them: privileges and row-level security kept in clear, the
tables and their write counters, the governance schema's checks and the ledger's DDL.
"""

from __future__ import annotations

from collections.abc import Iterable

from airflow_kfm_migrations.stores.postgis.catalog_family import FAMILY_QUERIES
from airflow_kfm_migrations.stores.postgis.catalog_global import GLOBAL_QUERIES
from airflow_kfm_migrations.stores.postgis.catalog_sql import EXT_CTE, LEDGER_SCHEMA, USER_SCHEMAS, not_ext

# Each query returns: kind, id, schema, table, digest, family (the caller sorts by id).
QUERIES: dict[str, str] = {**FAMILY_QUERIES, **GLOBAL_QUERIES}
_COLUMNS = "o(kind, id, schema, tbl, digest, fam)"


def _select(queries: Iterable[str]) -> str:
    return EXT_CTE + "SELECT * FROM (" + " UNION ALL ".join(f"({q})" for q in queries) + ") " + _COLUMNS


# All of the above in one statement (the caller sorts by id).
CATALOG_QUERY = _select(QUERIES.values())
# The kinds that belong to no family, and domain constraints (``fam`` 0).
GLOBAL_QUERY = _select(
    [*GLOBAL_QUERIES.values(), f"SELECT * FROM ({FAMILY_QUERIES['constraint']}) {_COLUMNS} WHERE fam = 0"]
)


def family_query(fams: Iterable[int]) -> str:
    """The family kinds' objects of the given relations only."""
    arr = "'{" + ",".join(str(int(f)) for f in sorted(set(fams))) + "}'::oid[]"
    return _select(f"SELECT * FROM ({q}) {_COLUMNS} WHERE fam = ANY({arr})" for q in FAMILY_QUERIES.values())


# Policy-enforcement facts kept in clear (role names and privilege letters; no secrets).
ACL_QUERY = f"""{EXT_CTE}
    SELECT 'relation:' || n.nspname || '.' || c.relname, c.relacl::text
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relacl IS NOT NULL AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {USER_SCHEMAS}
      AND {not_ext("pg_class", "c.oid")}
    UNION ALL
    SELECT 'schema:' || n.nspname, n.nspacl::text FROM pg_catalog.pg_namespace n
    WHERE n.nspacl IS NOT NULL AND {USER_SCHEMAS} AND {not_ext("pg_namespace", "n.oid")}
    ORDER BY 1"""

RLS_QUERY = f"""
    SELECT n.nspname || '.' || c.relname, c.relrowsecurity, c.relforcerowsecurity
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND (c.relrowsecurity OR c.relforcerowsecurity) AND {USER_SCHEMAS}
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
    applied_at timestamptz NOT NULL DEFAULT now(),
    actor text,
    capture_state text
);
-- A ledger created by an earlier release gains the columns added since. Only when one is
-- missing: ALTER TABLE would otherwise lock the ledger against readers for the whole run.
-- (capture_state: the sha256 of the capture state the run left, see shared_state.py.)
DO $kfm$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = '{LEDGER_SCHEMA}.ledger'::regclass
                   AND attname = 'actor' AND NOT attisdropped) THEN
        ALTER TABLE {LEDGER_SCHEMA}.ledger ADD COLUMN IF NOT EXISTS actor text;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = '{LEDGER_SCHEMA}.ledger'::regclass
                   AND attname = 'capture_state' AND NOT attisdropped) THEN
        ALTER TABLE {LEDGER_SCHEMA}.ledger ADD COLUMN IF NOT EXISTS capture_state text;
    END IF;
END $kfm$;
CREATE TABLE IF NOT EXISTS {LEDGER_SCHEMA}.backfill_progress (
    migration_id text NOT NULL,
    run_key text NOT NULL,
    batch_no integer NOT NULL,
    last_key text,
    rows_total bigint NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (migration_id, run_key, batch_no)
);
-- PUBLIC gets nothing in the schema. Revoked only when it has something: a REVOKE writes the
-- schema's catalog row again even when nothing changes, and the next capture would then
-- recompute what depends on it (see state.py).
DO $kfm$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
               WHERE n.nspname = '{LEDGER_SCHEMA}' AND a.grantee = 0) THEN
        REVOKE ALL ON SCHEMA {LEDGER_SCHEMA} FROM PUBLIC;
    END IF;
END $kfm$;
"""
