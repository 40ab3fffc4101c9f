"""The PostGIS catalog digests against the real server: what counts as a change, and what
must not (the same object recreated from differently written SQL, as a rollback does)."""

from __future__ import annotations

import pytest
from conftest import PgDatabase

from airflow_kfm_migrations.bundle import load_bundle
from airflow_kfm_migrations.contracts.models import Baseline
from airflow_kfm_migrations.stores.postgis import PostgisStore

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
    a = {o.id: o.digest for o in pre.objects}
    b = {o.id: o.digest for o in post.objects}
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
