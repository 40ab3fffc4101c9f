"""The tests' own "store unchanged" oracle (``PgDatabase.state()`` in conftest) against the
real server: it must see every kind of change the PostGIS tests rely on it to rule out,
the governance ledger included, and nothing when nothing changed. It shares no code with
the product's capture (pg_dump, row md5s computed in SQL, catalog queries of its own)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import PgDatabase, StoreState

from airflow_kfm_migrations.cli import main

pytestmark = pytest.mark.postgis

# (label, SQL, the part of the state that must change)
CHANGES = [
    ("a row", "UPDATE public.authority_sites SET name = 'Fort Larned!' WHERE id = 1", "rows"),
    ("a deleted row", "DELETE FROM governance.rules", "rows"),
    ("an inserted row", "INSERT INTO audit.events (what) VALUES ('x')", "rows"),
    ("a column", "ALTER TABLE public.parcels ADD COLUMN extra int", "schema"),
    ("a column type", "ALTER TABLE public.authority_sites ALTER COLUMN name TYPE varchar(200)", "schema"),
    ("an index", "CREATE INDEX parcels_name ON public.parcels (name)", "schema"),
    ("a grant", "GRANT SELECT ON public.authority_sites TO PUBLIC", "schema"),
    ("a column grant", "GRANT UPDATE (name) ON public.parcels TO pg_monitor", "schema"),
    ("a comment", "COMMENT ON TABLE governance.rules IS 'x'", "schema"),
    ("a sequence owner", "ALTER SEQUENCE audit.events_id_seq OWNED BY NONE", "schema"),
    ("a grant on a built-in function", "GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_file(text) TO PUBLIC", "schema"),
    ("a database setting", "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET work_mem = ''2MB''', "
     "current_database()); END $$", "schema"),
    ("a database privilege", "DO $$ BEGIN EXECUTE format('GRANT CREATE ON DATABASE %I TO PUBLIC', "
     "current_database()); END $$", "schema"),
    ("an event trigger", "CREATE FUNCTION public.et() RETURNS event_trigger LANGUAGE plpgsql AS "
     "$$ BEGIN END $$; CREATE EVENT TRIGGER et ON ddl_command_start EXECUTE FUNCTION public.et()", "schema"),
    ("a function in pg_catalog", "CREATE FUNCTION pg_catalog.kfm_oracle_probe() RETURNS int LANGUAGE sql "
     "AS 'SELECT 1'", "cluster"),
    ("a large object", "SELECT lo_from_bytea(0, 'abc'::bytea)", "cluster"),
]


def _differs(a: StoreState, b: StoreState) -> set[str]:
    return {part for part in ("schema", "rows", "cluster") if getattr(a, part) != getattr(b, part)}


def test_an_untouched_database_has_a_stable_state(pgdb: PgDatabase) -> None:
    assert pgdb.state() == pgdb.state()


@pytest.mark.parametrize(("label", "sql", "part"), CHANGES, ids=[c[0] for c in CHANGES])
def test_the_oracle_sees_each_change(pgdb: PgDatabase, label: str, sql: str, part: str) -> None:
    before = pgdb.state()
    pgdb.sql(sql)
    after = pgdb.state()
    assert part in _differs(before, after), f"the oracle missed {label}"


def test_the_oracle_sees_a_changed_role_setting(pgdb: PgDatabase) -> None:
    """Role settings are cluster-wide: a role of this test's own, set and reset."""
    role = f"kfm_state_{pgdb.name}"
    pgdb.sql(f"CREATE ROLE {role}")
    try:
        before = pgdb.state()
        pgdb.sql(f"ALTER ROLE {role} SET work_mem = '3MB'")
        assert "cluster" in _differs(before, pgdb.state())
        pgdb.sql(f"ALTER ROLE {role} RESET work_mem")
        assert pgdb.state() == before
    finally:
        pgdb.sql(f"DROP ROLE {role}")


def test_the_oracle_covers_the_governance_ledger(example: Path, pgdb: PgDatabase) -> None:
    """The product's capture leaves ``kfm_governance`` out; the oracle must not."""
    assert not pgdb.ledger_schema_exists()
    empty = pgdb.state()
    assert main(["run", str(example), "--conn-id", pgdb.conn_id, "--quiet"]) == 0
    assert pgdb.ledger_schema_exists()
    applied = pgdb.state()
    assert {"schema", "rows"} <= _differs(empty, applied)
    assert applied.rows["kfm_governance.ledger"][0] == 1
    # One field of the one ledger row.
    pgdb.sql("UPDATE kfm_governance.ledger SET environment = 'stage'")
    assert _differs(applied, pgdb.state()) == {"rows"}
    pgdb.sql("UPDATE kfm_governance.ledger SET environment = 'dev'")
    assert pgdb.state() == applied
    # A trigger on the ledger, which the capture does not see.
    pgdb.sql(
        "CREATE FUNCTION public.on_ledger() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;"
        "CREATE TRIGGER on_ledger BEFORE INSERT ON kfm_governance.ledger FOR EACH ROW "
        "EXECUTE FUNCTION public.on_ledger()"
    )
    assert "schema" in _differs(applied, pgdb.state())


def test_excluding_a_schema_leaves_it_out_of_dump_and_rows(pgdb: PgDatabase) -> None:
    before = pgdb.state(exclude_schemas=("audit",))
    assert "audit.events" not in before.rows and "audit.events" not in before.schema
    pgdb.sql("INSERT INTO audit.events (what) VALUES ('x'); ALTER TABLE audit.events ADD COLUMN y int")
    assert pgdb.state(exclude_schemas=("audit",)) == before
    pgdb.sql("UPDATE governance.rules SET rule = 'changed'")
    assert pgdb.state(exclude_schemas=("audit",)) != before
