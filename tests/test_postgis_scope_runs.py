"""Issue #15 against the real server: dropping an allowed table, routines, operators and
casts named in SQL terms, and scripts that COMMIT inside procedural code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import LEDGER_SCHEMA, PgDatabase
from test_postgis import blocking_findings, edit_declaration, has_index, plan_refusals, receipt, run, summary

from airflow_kfm_migrations.cli import main

pytestmark = pytest.mark.postgis

APPROVE = (
    "  change_class: governance-critical",
    "  change_class: governance-critical\n  recorded:\n"
    "    - by: kfm-governance\n      at: '2026-03-01T10:00:00+00:00'\n      ref: GOV-15\n"
    "      covers: ['review:table_dropped']",
)


def forward(bundle: Path, sql: str) -> None:
    (bundle / "forward.sql").write_text(sql + "\n")


def planned(bundle: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    """``kfm-migrations plan --format json``, which must pass."""
    capsys.readouterr()
    assert main(["plan", str(bundle), "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


# ------------------------------------------------------------ 1. DROP TABLE


def test_dropping_an_allowed_table_is_table_dropped_not_rls_disabled(example: Path, pgdb: PgDatabase) -> None:
    """The table had RLS, a policy and a primary key: the drop is one review_required
    table_dropped, not rls_disabled, policy_dropped or constraint_dropped for what went with it."""
    pgdb.sql(
        "ALTER TABLE parcels ENABLE ROW LEVEL SECURITY; ALTER TABLE parcels FORCE ROW LEVEL SECURITY; "
        "CREATE POLICY p_read ON parcels USING (true)"
    )
    edit_declaration(example, "max_row_backfill: 0", "max_row_backfill: 0\n  max_constraint_delta: 1")
    forward(example, "DROP TABLE public.parcels;")
    before = pgdb.state()
    assert run(example, pgdb) == 1
    assert receipt(example)["reason"] == (
        "gate refused (table_dropped: table dropped, and every row in it); transaction rolled back, store unchanged"
    )
    assert [(f["code"], f["tier"], f["object"]) for f in blocking_findings(example)] == [
        ("table_dropped", "review_required", "public.parcels")
    ]
    codes = {f["code"] for f in summary(example)["findings"]}
    assert not codes & {"rls_disabled", "policy_dropped", "constraint_dropped"}
    assert pgdb.state() == before
    edit_declaration(example, *APPROVE)
    assert run(example, pgdb) == 0
    assert pgdb.sql("SELECT to_regclass('public.parcels')") == [(None,)]
    assert [(f["code"], f["approved_by"]) for f in summary(example)["findings"] if f["tier"] != "informational"] == [
        ("table_dropped", "kfm-governance (GOV-15)")
    ]


def test_renaming_a_table_with_rls_is_not_a_drop(example: Path, pgdb: PgDatabase) -> None:
    """Its storage survives under the new name: no table_dropped, and its RLS is compared
    under the new name, so disabling it there is still rls_disabled, and keeping it passes."""
    pgdb.sql("CREATE TABLE public.scratch (id int); ALTER TABLE public.scratch ENABLE ROW LEVEL SECURITY")
    edit_declaration(example, "    - parcels\n", "    - parcels\n    - scratch\n    - scratch_v2\n")
    edit_declaration(example, "max_table_count_touched: 1", "max_table_count_touched: 2")
    rename = "ALTER TABLE public.scratch RENAME TO scratch_v2;"
    forward(example, rename + "\nALTER TABLE public.scratch_v2 DISABLE ROW LEVEL SECURITY;")
    assert run(example, pgdb) == 1
    assert [(f["code"], f["object"]) for f in blocking_findings(example)] == [("rls_disabled", "public.scratch")]
    forward(example, rename)
    assert run(example, pgdb) == 0
    codes = {f["code"] for f in summary(example)["findings"]}
    assert not codes & {"table_dropped", "rls_disabled"}
    assert pgdb.sql("SELECT relrowsecurity FROM pg_class WHERE oid = 'public.scratch_v2'::regclass") == [(True,)]


# ----------------------------------------------- 2. routines, operators, casts

APP_SETUP = """
CREATE SCHEMA app;
CREATE FUNCTION app.f() RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE PROCEDURE app.p() LANGUAGE sql AS 'SELECT 1';
CREATE AGGREGATE app.a(integer) (SFUNC = int4pl, STYPE = integer);
CREATE FUNCTION app.eq(integer, integer) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT $1 = $2';
CREATE OPERATOR app.=== (LEFTARG = integer, RIGHTARG = integer, FUNCTION = app.eq);
CREATE TYPE app.t AS (a int);
CREATE CAST (app.t AS text) WITH INOUT;
"""
APP_SCOPE = ("  allowed_schemas:\n    - public\n  allowed_tables:\n    - parcels\n", "  allowed_schemas:\n    - app\n")

ROUTINES = {
    "drop_function": ("DROP FUNCTION app.f();", ["app.f()"], [("removed", "function:app.f()")]),
    "drop_function_search_path": (
        "SET search_path = app;\nDROP FUNCTION f;",
        ["app.f"],
        [("removed", "function:app.f()")],
    ),
    "drop_procedure": ("DROP PROCEDURE app.p();", ["app.p()"], [("removed", "function:app.p()")]),
    "drop_aggregate": ("DROP AGGREGATE app.a(integer);", ["app.a(integer)"], [("removed", "function:app.a(integer)")]),
    "alter_function_owner": ("ALTER FUNCTION app.f() OWNER TO CURRENT_USER;", ["app.f()"], []),
    "rename_function": (
        "ALTER FUNCTION app.f() RENAME TO g;",
        ["app.f()"],
        [("added", "function:app.g()"), ("removed", "function:app.f()")],
    ),
    "comment_on_function": ("COMMENT ON FUNCTION app.f() IS 'one';", ["app.f()"], [("changed", "function:app.f()")]),
    "drop_operator": (
        "DROP OPERATOR app.===(integer, integer);",
        ["app.===(integer,integer)"],
        [("removed", "operator:app.===(integer,integer)")],
    ),
}


@pytest.mark.parametrize("case", sorted(ROUTINES))
def test_routines_and_operators_in_an_allowed_schema_pass_the_plan_and_the_run(
    example: Path, pgdb: PgDatabase, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sql, targets, changes = ROUTINES[case]
    pgdb.sql(APP_SETUP)
    edit_declaration(example, *APP_SCOPE)
    forward(example, sql)
    plan = planned(example, capsys)
    assert plan["statements"][-1]["targets"] == targets
    assert [f for f in plan["findings"] if f["tier"] == "hard_fail"] == []
    assert run(example, pgdb) == 0
    assert receipt(example)["status"] == "succeeded"
    # Other tests create databases and roles on the same server meanwhile: only app's objects are this run's.
    observed = [(c["change"], c["id"]) for c in summary(example)["changes"] if ":app." in c["id"]]
    assert sorted(observed) == changes


def test_a_function_outside_the_allowed_schema_is_refused_by_name(
    example: Path, pgdb: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    pgdb.sql(APP_SETUP + "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1';")
    edit_declaration(example, *APP_SCOPE)
    forward(example, "DROP FUNCTION public.f();")
    assert plan_refusals(example, capsys) == [
        ("plan_out_of_scope", "public.f()", "statement 1 targets public.f(), outside the allowed scope")
    ]
    assert run(example, pgdb) == 1
    assert (
        receipt(example)["reason"] == "static plan refused: statement 1 targets public.f(), outside the allowed scope"
    )
    assert pgdb.sql("SELECT to_regprocedure('public.f()') IS NOT NULL") == [(True,)]


def test_a_cast_of_an_allowed_type_passes_the_plan_and_the_gate_keeps_casts_database_level(
    example: Path, pgdb: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    """The plan names the cast and judges it by its user-defined type's schema. The gate
    still treats every cast as a database-level object (docs/stores/postgis.md), so the
    run is refused there, and nothing changes."""
    pgdb.sql(APP_SETUP)
    edit_declaration(example, *APP_SCOPE)
    forward(example, "DROP CAST (app.t AS text);")
    plan = planned(example, capsys)
    assert plan["statements"][-1]["targets"] == ["(app.t AS text)"]
    before = pgdb.state()
    assert run(example, pgdb) == 1
    assert [(f["code"], f["object"]) for f in blocking_findings(example)] == [
        ("cluster_object_changed", "cast:app.t->text")
    ]
    assert pgdb.state() == before


# ------------------------------------------------------ 3. procedural batches

BATCHES = """DO $$
DECLARE
    i int;
BEGIN
    FOR i IN 1..2 LOOP
        UPDATE public.parcels SET name = name WHERE id = i;
        COMMIT;
    END LOOP;
END $$;"""
ADVICE = (
    "a governed run owns its transaction, whether transactional or not; batched data changes that commit as they "
    "go belong in the declaration's `backfill:` section (docs/operations.md#backfills)"
)
RUNTIME = (
    "2D000: invalid transaction termination: procedural code (a DO block, a procedure, or a function or trigger "
    f"they run) tried to COMMIT or ROLLBACK; {ADVICE}"
)
NON_TRANSACTIONAL = 'transactional: false\nnon_transactional_reason: "CONCURRENTLY keeps parcels writable"\n'
CONCURRENT_INDEX = "CREATE INDEX CONCURRENTLY parcels_geom_gist ON public.parcels USING gist (geom);"
COMMITTING_PROCEDURE = (
    "CREATE PROCEDURE public.batches() LANGUAGE plpgsql AS $$ BEGIN\n  PERFORM 1;\n  ROLLBACK;\nEND $$"
)


def test_a_do_block_that_commits_points_at_backfill_in_a_transactional_run(
    example: Path, pgdb: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    before = pgdb.state()
    forward(example, BATCHES)
    message = f"the DO block runs COMMIT (line 7 of its body): {ADVICE}"
    assert plan_refusals(example, capsys) == [("procedural_transaction_control", "statement 1", message)]
    assert run(example, pgdb) == 1
    assert receipt(example)["reason"] == f"static plan refused: {message}"
    assert pgdb.state() == before


def test_a_call_of_a_procedure_the_script_creates_that_commits_points_at_backfill(
    example: Path, pgdb: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    edit_declaration(example, "    - parcels\n", "    - parcels\n    - batches\n")
    forward(example, COMMITTING_PROCEDURE + ";\nCALL batches();")
    message = f"CALL public.batches runs ROLLBACK (line 3 of the body statement 1 creates): {ADVICE}"
    assert plan_refusals(example, capsys) == [("procedural_transaction_control", "statement 2", message)]


def test_a_do_block_that_commits_points_at_backfill_in_a_non_transactional_run(
    example: Path, pgdb: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not the circular 'run it in a transactional migration' of opaque_non_transactional."""
    (example / "migration.yml").write_text((example / "migration.yml").read_text() + NON_TRANSACTIONAL)
    forward(example, CONCURRENT_INDEX + "\n" + BATCHES)
    before = pgdb.state()
    message = f"the DO block runs COMMIT (line 7 of its body): {ADVICE}"
    assert plan_refusals(example, capsys) == [("procedural_transaction_control", "statement 2", message)]
    assert run(example, pgdb) == 1
    assert receipt(example)["reason"] == f"static plan refused: {message}"
    assert pgdb.state() == before and not has_index(pgdb)


def test_a_procedure_that_commits_at_run_time_points_at_backfill_in_a_transactional_run(
    example: Path, pgdb: PgDatabase
) -> None:
    """The procedure was there before: the plan cannot read it, the server raises 2D000."""
    pgdb.sql(COMMITTING_PROCEDURE)
    before = pgdb.state()
    forward(example, "CALL public.batches();")
    assert run(example, pgdb) == 1
    r = receipt(example)
    assert r["reason"] == f"forward failed, transaction rolled back: statement 1 of forward.sql: {RUNTIME}"
    assert pgdb.state() == before
    assert not pgdb.ledger_schema_exists()


def test_a_trigger_that_commits_at_run_time_points_at_backfill_in_a_non_transactional_run(
    example: Path, pgdb: PgDatabase
) -> None:
    """An UPDATE the plan allows fires a trigger whose procedure commits; the run is
    compensated and the reason names the backfill."""
    pgdb.sql(
        COMMITTING_PROCEDURE + ";\n"
        "CREATE FUNCTION public.tick() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN CALL public.batches(); "
        "RETURN NEW; END $$;\n"
        "CREATE TRIGGER tick AFTER UPDATE ON public.parcels FOR EACH ROW EXECUTE FUNCTION public.tick();"
    )
    before = pgdb.state(exclude_schemas=(LEDGER_SCHEMA,))
    (example / "migration.yml").write_text((example / "migration.yml").read_text() + NON_TRANSACTIONAL)
    forward(example, CONCURRENT_INDEX + "\nUPDATE public.parcels SET name = name WHERE id = 1;")
    (example / "rollback.sql").write_text("DROP INDEX CONCURRENTLY IF EXISTS public.parcels_geom_gist;\n")
    assert run(example, pgdb) == 1
    r = receipt(example)
    assert r["status"] == "rolled_back"
    assert r["reason"] == (
        f"forward failed: statement 2 of forward.sql: {RUNTIME}; compensated by the rollback artifact, store equals pre"
    )
    assert pgdb.state(exclude_schemas=(LEDGER_SCHEMA,)) == before
