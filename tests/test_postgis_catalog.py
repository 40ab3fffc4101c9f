"""The PostGIS catalog digests against the real server: what counts as a change, and what
must not (the same object recreated from differently written SQL, as a rollback does)."""

from __future__ import annotations

import pytest
from conftest import PgDatabase

from airflow_kfm_migrations.contracts.models import Baseline, baseline_json
from airflow_kfm_migrations.declaration.bundle import load_bundle
from airflow_kfm_migrations.stores.postgis.attribution import is_global
from airflow_kfm_migrations.stores.postgis.store import PostgisStore
from airflow_kfm_migrations.util.digest import dump_json

pytestmark = pytest.mark.postgis

SETUP = """
ALTER TABLE public.parcels ADD COLUMN code varchar(10) DEFAULT 'x', ADD COLUMN parent int;
ALTER TABLE public.parcels ADD CONSTRAINT parcels_name_len CHECK (length(name) > 0);
ALTER TABLE public.parcels ADD CONSTRAINT parcels_parent_fk FOREIGN KEY (parent) REFERENCES public.parcels (id);
CREATE INDEX parcels_code ON public.parcels (code);
CREATE INDEX parcels_lower_name ON public.parcels (lower(name)) WHERE id > 10;
"""


def capture(db: PgDatabase, example) -> Baseline:
    bundle = load_bundle(example)
    store = PostgisStore(lambda: db.connect(), db.conn_id)
    with db.connect() as c, c.cursor() as cur:
        return store.capture(cur, bundle.declaration)


def changed(pre: Baseline, post: Baseline) -> set[str]:
    """The schema objects that differ. Database- and cluster-level objects are left out:
    tests running alongside create databases and roles meanwhile (the schema fingerprint
    leaves them out as well)."""
    a = {o.id: o.digest for o in pre.objects if not is_global(o.kind, o.schema_)}
    b = {o.id: o.digest for o in post.objects if not is_global(o.kind, o.schema_)}
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


@pytest.mark.parametrize(
    "recreate",
    [
        "ALTER TABLE public.parcels DROP CONSTRAINT parcels_name_len;"
        "ALTER TABLE public.parcels  ADD CONSTRAINT parcels_name_len   CHECK ( length( name )  >  0 );",
        "ALTER TABLE public.parcels DROP CONSTRAINT parcels_parent_fk;"
        "ALTER TABLE public.parcels ADD CONSTRAINT parcels_parent_fk FOREIGN KEY(parent) REFERENCES parcels(id);",
        "DROP INDEX public.parcels_code; CREATE INDEX parcels_code ON public.parcels USING btree ( code );",
        "DROP INDEX public.parcels_lower_name;"
        "CREATE INDEX parcels_lower_name ON public.parcels ( lower ( name ) )   WHERE (id > 10);",
        "ALTER TABLE public.parcels ALTER COLUMN code DROP DEFAULT;"
        "ALTER TABLE public.parcels ALTER COLUMN code SET DEFAULT   'x' ;",
        # Adding and dropping a column leaves a dropped attribute behind in the catalog.
        "ALTER TABLE public.parcels ADD COLUMN tmp int; ALTER TABLE public.parcels DROP COLUMN tmp;",
    ],
)
def test_an_object_recreated_from_different_sql_digests_the_same(
    example, pgdb: PgDatabase, recreate: str
) -> None:
    pgdb.sql(SETUP)
    pre = capture(pgdb, example)
    pgdb.sql(recreate)
    post = capture(pgdb, example)
    assert changed(pre, post) == set()
    assert post.schema_fingerprint == pre.schema_fingerprint


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            "ALTER TABLE public.parcels DROP CONSTRAINT parcels_name_len;"
            "ALTER TABLE public.parcels ADD CONSTRAINT parcels_name_len CHECK (length(name) > 1);",
            {"constraint:public.parcels.parcels_name_len"},
        ),
        (
            "ALTER TABLE public.parcels DROP CONSTRAINT parcels_parent_fk;"
            "ALTER TABLE public.parcels ADD CONSTRAINT parcels_parent_fk FOREIGN KEY (parent) "
            "REFERENCES public.parcels (id) ON DELETE CASCADE;",
            {"constraint:public.parcels.parcels_parent_fk"},
        ),
        (
            "ALTER TABLE public.parcels ALTER CONSTRAINT parcels_parent_fk DEFERRABLE;",
            {"constraint:public.parcels.parcels_parent_fk"},
        ),
        (
            "DROP INDEX public.parcels_code; CREATE INDEX parcels_code ON public.parcels (code DESC);",
            {"index:public.parcels_code"},
        ),
        (
            "DROP INDEX public.parcels_code; CREATE UNIQUE INDEX parcels_code ON public.parcels (code, id);",
            {"index:public.parcels_code"},
        ),
        (
            "DROP INDEX public.parcels_code; CREATE INDEX parcels_code ON public.parcels (code varchar_pattern_ops);",
            {"index:public.parcels_code"},
        ),
        (
            "DROP INDEX public.parcels_code; CREATE INDEX parcels_code ON public.parcels USING hash (code);",
            {"index:public.parcels_code"},
        ),
        (
            "DROP INDEX public.parcels_code; CREATE INDEX parcels_code ON public.parcels (name);",
            {"index:public.parcels_code"},
        ),
        (
            "DROP INDEX public.parcels_code; CREATE INDEX parcels_code ON public.parcels (code) INCLUDE (name);",
            {"index:public.parcels_code"},
        ),
        (
            "DROP INDEX public.parcels_lower_name;"
            "CREATE INDEX parcels_lower_name ON public.parcels (lower(name)) WHERE id > 11;",
            {"index:public.parcels_lower_name"},
        ),
        (
            "ALTER INDEX public.parcels_code SET (fillfactor = 70);",
            {"index:public.parcels_code"},
        ),
        ("COMMENT ON INDEX public.parcels_code IS 'lookup';", {"index:public.parcels_code"}),
        (
            "COMMENT ON CONSTRAINT parcels_name_len ON public.parcels IS 'why';",
            {"constraint:public.parcels.parcels_name_len"},
        ),
        ("COMMENT ON COLUMN public.parcels.code IS 'the code';", {"column:public.parcels.code"}),
        ("COMMENT ON TABLE public.parcels IS 'parcels';", {"relation:public.parcels"}),
        ("ALTER TABLE public.parcels ALTER COLUMN code SET DEFAULT 'y';", {"column:public.parcels.code"}),
        ("ALTER TABLE public.parcels ALTER COLUMN code TYPE varchar(20);", {"column:public.parcels.code"}),
        ("ALTER TABLE public.parcels ALTER COLUMN code SET NOT NULL;", {"column:public.parcels.code"}),
        ("ALTER TABLE public.parcels ALTER COLUMN code SET (n_distinct = 5);", {"column:public.parcels.code"}),
    ],
)
def test_each_definition_change_changes_exactly_that_object(
    example, pgdb: PgDatabase, change: str, expected: set[str]
) -> None:
    pgdb.sql(SETUP)
    pre = capture(pgdb, example)
    pgdb.sql(change)
    post = capture(pgdb, example)
    assert changed(pre, post) == expected
    assert post.schema_fingerprint != pre.schema_fingerprint


def test_trusted_objects_equal_validated_ones(example, pgdb: PgDatabase) -> None:
    """The capture builds its 100k+ objects without per-object validation; they must be
    exactly what validation would have built."""
    b = capture(pgdb, example)
    again = Baseline.model_validate(b.model_dump(mode="json", by_alias=True))
    assert again == b
    assert again.objects == b.objects
    assert [o.model_dump(by_alias=True) for o in again.objects] == [o.model_dump(by_alias=True) for o in b.objects]
    assert [o.id for o in b.objects] == sorted(o.id for o in b.objects)
    assert baseline_json(b) == dump_json(b.model_dump(mode="json", by_alias=True))


def _dynamic(sql: str) -> str:
    """The statement hidden in dynamic SQL, where the static plan cannot see it."""
    return "DO $$ BEGIN EXECUTE '" + sql.replace("'", "''") + "'; END $$;"


def _on_db(sql: str) -> str:
    return "DO $$ BEGIN EXECUTE format('" + sql.replace("'", "''") + "', current_database()); END $$;"


# Changes that no declared scope covers, each of which once slipped past the gate: the
# catalog now baselines the object kinds they touch. (finding code, statement)
EVASIONS = {
    "rule_on_forbidden_table": (
        "protected_domain_changed",
        _dynamic("CREATE RULE r1 AS ON INSERT TO public.authority_sites DO INSTEAD NOTHING"),
    ),
    "statistics_on_forbidden_table": (
        "protected_domain_changed",
        _dynamic("CREATE STATISTICS public.s1 ON id, name FROM public.authority_sites"),
    ),
    "replica_identity_of_forbidden_table": (
        "protected_domain_changed",
        _dynamic("ALTER TABLE public.authority_sites REPLICA IDENTITY FULL"),
    ),
    "storage_of_forbidden_column": (
        "protected_domain_changed",
        _dynamic("ALTER TABLE public.authority_sites ALTER COLUMN name SET STORAGE EXTERNAL"),
    ),
    # parcels has the columns of authority_sites: SELECT FROM authority_sites would return them
    "inheriting_from_a_forbidden_table": (
        "protected_domain_changed",
        _dynamic("ALTER TABLE public.parcels INHERIT public.authority_sites"),
    ),
    "database_setting": ("cluster_object_changed", _on_db("ALTER DATABASE %I SET search_path = evil")),
    "database_privilege": ("cluster_object_changed", _on_db("GRANT CREATE ON DATABASE %I TO PUBLIC")),
    "database_connection_limit": ("cluster_object_changed", _on_db("ALTER DATABASE %I CONNECTION LIMIT 5")),
    "role_setting": ("cluster_object_changed", _dynamic("ALTER ROLE CURRENT_USER SET work_mem = '1GB'")),
    "implicit_cast": ("cluster_object_changed", _dynamic("CREATE CAST (text AS integer) WITH INOUT AS IMPLICIT")),
    "language": ("cluster_object_changed", _dynamic("CREATE LANGUAGE plx HANDLER plpgsql_call_handler")),
    "foreign_data_wrapper": ("cluster_object_changed", _dynamic("CREATE FOREIGN DATA WRAPPER evil_fdw")),
    "large_object": ("cluster_object_changed", "SELECT lo_create(4242);"),
    "operator": (
        "out_of_scope_change",
        _dynamic("CREATE OPERATOR public.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = int4eq)"),
    ),
    "operator_family": ("out_of_scope_change", _dynamic("CREATE OPERATOR FAMILY public.fam USING btree")),
    "collation": ("out_of_scope_change", _dynamic('CREATE COLLATION public.c2 FROM "C"')),
    "conversion": (
        "out_of_scope_change",
        _dynamic("CREATE CONVERSION public.conv FOR 'LATIN1' TO 'UTF8' FROM iso8859_1_to_utf8"),
    ),
    "text_search_configuration": (
        "out_of_scope_change",
        _dynamic("CREATE TEXT SEARCH CONFIGURATION public.x (COPY = english)"),
    ),
    # Extension members are covered by their extension's digest.
    "replaced_extension_function": (
        "out_of_scope_change",
        _dynamic(
            "CREATE OR REPLACE FUNCTION public.postgis_version() RETURNS text LANGUAGE sql AS 'SELECT ''x''::text'"
        ),
    ),
    "extension_function_privilege": (
        "out_of_scope_change",
        _dynamic("REVOKE EXECUTE ON FUNCTION public.postgis_version() FROM PUBLIC"),
    ),
    "extension_function_security_definer": (
        "out_of_scope_change",
        _dynamic("ALTER FUNCTION public.postgis_version() SECURITY DEFINER"),
    ),
    # The function lives in an allowed schema, but a forbidden table's trigger calls it.
    "replaced_function_of_a_forbidden_tables_trigger": (
        "protected_domain_changed",
        _dynamic(
            "CREATE OR REPLACE FUNCTION public.guard() RETURNS trigger LANGUAGE plpgsql AS "
            "$f$ BEGIN RETURN NULL; END $f$"
        ),
    ),
    # In scope, but it switches off foreign-key enforcement: needs an approval.
    "disabled_foreign_keys": (
        "enforcement_disabled",
        "ALTER TABLE public.parcels ADD COLUMN up int REFERENCES public.parcels (id);"
        "ALTER TABLE public.parcels DISABLE TRIGGER ALL;",
    ),
}


@pytest.mark.parametrize("case", sorted(EVASIONS))
def test_changes_outside_any_scope_are_refused_and_rolled_back(example, pgdb: PgDatabase, case: str) -> None:
    from test_postgis import append, receipt, run

    code, sql = EVASIONS[case]
    if case == "replaced_function_of_a_forbidden_tables_trigger":
        pgdb.sql(
            "CREATE FUNCTION public.guard() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN RETURN NEW; END $f$;"
            "CREATE TRIGGER guard BEFORE INSERT ON public.authority_sites FOR EACH ROW EXECUTE FUNCTION public.guard()"
        )
        # a scope that allows the whole public schema except the forbidden table
        text = (example / "migration.yml").read_text().replace("  allowed_tables:\n    - parcels\n", "")
        (example / "migration.yml").write_text(text)
    before = pgdb.state()
    settings = pgdb.sql("SELECT count(*) FROM pg_db_role_setting")
    append(example, sql)
    assert run(example, pgdb) == 1
    r = receipt(example)
    assert r["status"] == "failed"
    assert r["reason"].startswith(f"gate refused ({code}: ")
    assert pgdb.state() == before
    assert pgdb.sql("SELECT count(*) FROM pg_db_role_setting") == settings
    assert pgdb.sql("SELECT count(*) FROM pg_largeobject_metadata") == [(0,)]


@pytest.mark.parametrize(
    ("sql", "what"),
    [
        (_dynamic("SET session_replication_role = replica"), "session_replication_role origin -> replica"),
        (_dynamic("SET ROLE pg_read_all_data"), "current_user"),
        (_dynamic("SET SESSION AUTHORIZATION postgres"), "session_user"),
    ],
)
def test_a_script_that_changes_who_or_what_enforces_is_refused(example, pgdb: PgDatabase, sql: str, what: str) -> None:
    from test_postgis import append, receipt, run

    before = pgdb.state()
    append(example, sql)
    assert run(example, pgdb) == 1
    r = receipt(example)
    assert r["status"] == "failed" and what in r["reason"]
    assert r["reason"].startswith("forward failed, transaction rolled back: the script changed the session's enforcement (")
    assert pgdb.state() == before


def test_a_capture_leaves_the_sessions_settings_as_it_found_them(example, pgdb: PgDatabase) -> None:
    bundle = load_bundle(example)
    store = PostgisStore(lambda: pgdb.connect(), pgdb.conn_id)
    with pgdb.connect() as c, c.cursor() as cur:
        cur.execute("SET LOCAL search_path = public, audit; SET LOCAL work_mem = '5MB'")
        store.capture(cur, bundle.declaration)
        cur.execute("SELECT current_setting('search_path'), current_setting('work_mem')")
        assert cur.fetchone() == ("public, audit", "5MB")


def test_a_column_option_set_and_reset_digests_as_before(example, pgdb: PgDatabase) -> None:
    """Column options are digested, without the server's own ``pg_attver`` stamp (15.20+):
    setting one changes the column, resetting it gives the digest it had."""
    pgdb.sql(SETUP)
    pre = capture(pgdb, example)
    pgdb.sql("ALTER TABLE public.parcels ALTER COLUMN parent SET (n_distinct = 5)")
    mid = capture(pgdb, example)
    pgdb.sql("ALTER TABLE public.parcels ALTER COLUMN parent RESET (n_distinct)")
    post = capture(pgdb, example)
    assert changed(pre, mid) == {"column:public.parcels.parent"}
    assert changed(pre, post) == set()
