"""The PostGIS posture tier against the real server: what reduces policy enforcement is
review_required (refused without an approval covering ``review:<code>``, passed with one),
code that reads or writes a guarded object is a hard fail whatever the approvals, reads of
guarded tables need ``read:<schema>.<table>``, and honest changes pass.

Each case starts from the contract's example bundle (a spatial index on public.parcels) with
a declaration that allows ``parcels``, ``parcels_*`` and the schema ``app``, forbids
``governance``, ``audit`` and ``public.authority_sites`` and protects ``public.registry``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PgDatabase

from airflow_kfm_migrations.cli import main

pytestmark = pytest.mark.postgis

SETUP = """
CREATE TABLE public.registry (id int PRIMARY KEY, owner text NOT NULL);
INSERT INTO public.registry VALUES (1, 'alice'), (2, 'bob');
CREATE SCHEMA app;
CREATE FUNCTION public.parcels_touch() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN NEW.name := lower(NEW.name); RETURN NEW; END $$;
CREATE TRIGGER parcels_audit BEFORE INSERT OR UPDATE ON public.parcels
  FOR EACH ROW EXECUTE FUNCTION public.parcels_touch();
CREATE RULE parcels_keep AS ON DELETE TO public.parcels DO INSTEAD NOTHING;
"""

DECLARATION = """
scope:
  allowed_schemas: [public, app]
  allowed_tables: [parcels, "parcels_*", "app.*"]
  forbidden_schemas: [governance, audit]
  forbidden_tables: [authority_sites]
  protected_tables: [public.registry]

limits:
  max_table_count_touched: 10
  max_index_count_delta: 5
  max_row_backfill: 1000
  max_constraint_delta: 5
"""


def run(bundle: Path, db: PgDatabase) -> int:
    return main(["run", str(bundle), "--conn-id", db.conn_id, "--quiet"])


def summary(bundle: Path) -> dict:
    return json.loads((bundle / "diffs" / "summary.json").read_text())


def receipt(bundle: Path) -> dict:
    return json.loads((bundle / "receipts" / "run_receipt.json").read_text())


def blocking(bundle: Path) -> set[tuple[str, str]]:
    """(code, tier) of the findings that refused the run."""
    return {
        (f["code"], f["tier"])
        for f in summary(bundle)["findings"]
        if f["tier"] == "hard_fail" or (f["tier"] == "review_required" and not f.get("approved_by"))
    }


def findings(bundle: Path, code: str) -> list[dict]:
    return [f for f in summary(bundle)["findings"] if f["code"] == code]


def plan_hard_fails(bundle: Path, capsys: pytest.CaptureFixture[str]) -> list[tuple[str, str]]:
    capsys.readouterr()
    code = main(["plan", str(bundle), "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    hard = [(f["code"], f.get("object")) for f in doc["findings"] if f["tier"] == "hard_fail"]
    assert (code == 1) == bool(hard)
    return hard


def forward(bundle: Path, sql: str) -> None:
    with (bundle / "forward.sql").open("a") as fh:
        fh.write(sql + "\n")


def approve(bundle: Path, *tokens: str) -> None:
    text = (bundle / "migration.yml").read_text()
    text = text.replace(
        "  change_class: governance-critical",
        "  change_class: governance-critical\n  recorded:\n"
        "    - by: kfm-governance\n      at: '2026-03-01T10:00:00+00:00'\n      ref: GOV-15\n"
        f"      covers: {json.dumps(list(tokens))}",
        1,
    )
    (bundle / "migration.yml").write_text(text)


@pytest.fixture
def bundle(example: Path) -> Path:
    """The example bundle with the wider declaration above."""
    text = (example / "migration.yml").read_text()
    head, _, rest = text.partition("scope:")
    _, _, tail = rest.partition("requires_rollback:")
    (example / "migration.yml").write_text(head + DECLARATION.strip() + "\n\nrequires_rollback:" + tail)
    return example


@pytest.fixture
def db(pgdb: PgDatabase) -> PgDatabase:
    pgdb.sql(SETUP)
    return pgdb


@pytest.fixture
def role(db: PgDatabase) -> Iterator[str]:
    """A role of this test's own (named so that the state oracle counts it as this database's)."""
    name = f"kfm_state_{db.name}"
    db.sql(f'CREATE ROLE "{name}" NOLOGIN')
    yield name
    db.sql(f'DROP OWNED BY "{name}"')
    db.sql(f'DROP ROLE "{name}"')


def refused_then_approved(bundle: Path, db: PgDatabase, code: str, obj: str | None = None) -> None:
    """The run is refused by ``code`` (review_required, the only blocking finding, on
    ``obj``) and leaves the store as it was; with an approval covering it, it passes."""
    before = db.state()
    assert run(bundle, db) == 1
    assert blocking(bundle) == {(code, "review_required")}, summary(bundle)["findings"]
    if obj is not None:
        assert [f["object"] for f in findings(bundle, code)] == [obj]
    assert receipt(bundle)["reason"].startswith(f"gate refused ({code}: ")
    assert db.state() == before
    approve(bundle, f"review:{code}")
    assert run(bundle, db) == 0, summary(bundle)["findings"]
    assert [f["approved_by"] for f in findings(bundle, code)] == ["kfm-governance (GOV-15)"] * len(
        findings(bundle, code)
    )


def always_refused(bundle: Path, db: PgDatabase, code: str, obj: str | None = None) -> list[dict]:
    """The gate refuses with hard fail ``code`` even with every review approved."""
    before = db.state()
    assert run(bundle, db) == 1
    assert (code, "hard_fail") in blocking(bundle), summary(bundle)["findings"]
    got = findings(bundle, code)
    if obj is not None:
        assert obj in {f["object"] for f in got}
    reviews = sorted({c for c, tier in blocking(bundle) if tier == "review_required"})
    if reviews:
        approve(bundle, *(f"review:{c}" for c in reviews))
        assert run(bundle, db) == 1
        assert (code, "hard_fail") in blocking(bundle)
        assert {t for _c, t in blocking(bundle)} == {"hard_fail"}
    assert db.state() == before
    return got


# ----------------------------------------------------------------- review_required


def test_dropping_a_trigger_needs_review(bundle: Path, db: PgDatabase) -> None:
    forward(bundle, "DROP TRIGGER parcels_audit ON public.parcels;")
    refused_then_approved(bundle, db, "trigger_dropped", "trigger:public.parcels.parcels_audit")
    assert not db.sql("SELECT 1 FROM pg_trigger WHERE tgname = 'parcels_audit'")


@pytest.mark.parametrize(
    "how", ["DISABLE TRIGGER parcels_audit", "ENABLE REPLICA TRIGGER parcels_audit", "DISABLE TRIGGER USER"]
)
def test_disabling_a_trigger_needs_review(bundle: Path, db: PgDatabase, how: str) -> None:
    forward(bundle, f"ALTER TABLE public.parcels {how};")
    refused_then_approved(bundle, db, "trigger_disabled", "trigger:public.parcels.parcels_audit")


def test_disabling_a_rule_needs_review(bundle: Path, db: PgDatabase) -> None:
    forward(bundle, "ALTER TABLE public.parcels DISABLE RULE parcels_keep;")
    refused_then_approved(bundle, db, "rule_disabled", "rule:public.parcels.parcels_keep")


def test_dropping_a_rule_needs_review(bundle: Path, db: PgDatabase) -> None:
    forward(bundle, "DROP RULE parcels_keep ON public.parcels;")
    refused_then_approved(bundle, db, "rule_dropped", "rule:public.parcels.parcels_keep")


LOOSENED = {
    "using_true": "ALTER POLICY parcels_own ON public.parcels USING (true);",
    "condition_dropped": "ALTER POLICY parcels_own ON public.parcels USING (name = current_user);",
    "condition_or": "ALTER POLICY parcels_own ON public.parcels USING (name = current_user OR id > 0 OR id < 0);",
    "to_public": "ALTER POLICY parcels_own ON public.parcels TO PUBLIC;",
    "check_loosened": "ALTER POLICY parcels_own ON public.parcels WITH CHECK (true);",
    "recreated_for_all": "DROP POLICY parcels_own ON public.parcels; "
    "CREATE POLICY parcels_own ON public.parcels FOR ALL TO kfm USING (name = current_user AND id > 0);",
}


@pytest.mark.parametrize("case", sorted(LOOSENED))
def test_loosening_a_policy_needs_review(bundle: Path, db: PgDatabase, case: str) -> None:
    db.sql(
        "ALTER TABLE public.parcels ENABLE ROW LEVEL SECURITY; "
        "CREATE POLICY parcels_own ON public.parcels FOR UPDATE TO kfm USING (name = current_user AND id > 0)"
    )
    forward(bundle, LOOSENED[case])
    refused_then_approved(bundle, db, "policy_loosened", "policy:public.parcels.parcels_own")


def test_restrictive_policy_loosened_needs_review(bundle: Path, db: PgDatabase) -> None:
    db.sql(
        "ALTER TABLE public.parcels ENABLE ROW LEVEL SECURITY; "
        "CREATE POLICY parcels_all ON public.parcels USING (true); "
        "CREATE POLICY parcels_guard ON public.parcels AS RESTRICTIVE USING (id > 10)"
    )
    forward(bundle, "ALTER POLICY parcels_guard ON public.parcels USING (id > 0 OR true);")
    refused_then_approved(bundle, db, "policy_loosened", "policy:public.parcels.parcels_guard")


def test_adding_a_permissive_policy_to_a_table_with_rls_needs_review(bundle: Path, db: PgDatabase) -> None:
    db.sql(
        "ALTER TABLE public.parcels ENABLE ROW LEVEL SECURITY; "
        "CREATE POLICY parcels_own ON public.parcels USING (name = current_user)"
    )
    forward(bundle, "CREATE POLICY parcels_everyone ON public.parcels FOR SELECT USING (true);")
    refused_then_approved(bundle, db, "policy_permissive_added", "policy:public.parcels.parcels_everyone")


def test_a_security_definer_function_needs_review(bundle: Path, db: PgDatabase) -> None:
    forward(
        bundle,
        "CREATE FUNCTION public.parcels_count() RETURNS bigint LANGUAGE sql SECURITY DEFINER "
        "SET search_path = pg_catalog AS 'SELECT count(*) FROM public.parcels';",
    )
    refused_then_approved(bundle, db, "security_definer_added", "function:public.parcels_count()")


def test_making_a_function_security_definer_needs_review(bundle: Path, db: PgDatabase) -> None:
    db.sql(
        "CREATE FUNCTION public.parcels_count() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM public.parcels'"
    )
    forward(bundle, "ALTER FUNCTION public.parcels_count() SECURITY DEFINER;")
    refused_then_approved(bundle, db, "security_definer_added", "function:public.parcels_count()")


def test_changing_an_owner_needs_review(bundle: Path, db: PgDatabase, role: str) -> None:
    db.sql(
        "CREATE FUNCTION public.parcels_count() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM public.parcels'"
    )
    forward(bundle, f'ALTER FUNCTION public.parcels_count() OWNER TO "{role}";')
    refused_then_approved(bundle, db, "owner_changed", "function:public.parcels_count()")
    assert db.sql("SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = 'parcels_count'") == [(role,)]


@pytest.mark.parametrize(
    ("grant", "obj"),
    [
        ('GRANT EXECUTE ON FUNCTION public.parcels_count() TO "{role}";', "function:public.parcels_count()"),
        ('GRANT SELECT (name) ON public.parcels TO "{role}";', "column:public.parcels.name"),
        ('GRANT USAGE ON TYPE public.parcels_kind TO "{role}";', "type:public.parcels_kind"),
    ],
)
def test_widening_grants_on_functions_columns_and_types_needs_review(
    bundle: Path, db: PgDatabase, role: str, grant: str, obj: str
) -> None:
    db.sql(
        "CREATE FUNCTION public.parcels_count() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM public.parcels';"
        "REVOKE EXECUTE ON FUNCTION public.parcels_count() FROM PUBLIC;"
        "CREATE TYPE public.parcels_kind AS ENUM ('field', 'forest'); REVOKE USAGE ON TYPE public.parcels_kind FROM PUBLIC"
    )
    forward(bundle, grant.format(role=role))
    refused_then_approved(bundle, db, "grant_widened", obj)


def test_widening_default_privileges_needs_review(bundle: Path, db: PgDatabase, role: str) -> None:
    forward(bundle, f'ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT ON TABLES TO "{role}";')
    refused_then_approved(bundle, db, "default_privileges_widened", "default_acl:kfm.app.r")


def test_dynamic_sql_in_a_new_function_needs_review(bundle: Path, db: PgDatabase) -> None:
    forward(
        bundle,
        "CREATE FUNCTION public.parcels_rows(t text) RETURNS bigint LANGUAGE plpgsql AS "
        "$$ DECLARE n bigint; BEGIN EXECUTE format('SELECT count(*) FROM public.%I', t) INTO n; RETURN n; END $$;",
    )
    refused_then_approved(bundle, db, "body_dynamic_sql", "function:public.parcels_rows(t text)")


def test_code_the_parser_cannot_read_needs_review(bundle: Path, db: PgDatabase) -> None:
    forward(
        bundle,
        "CREATE FUNCTION public.parcels_first() RETURNS text LANGUAGE plpgsql AS "
        "$$ DECLARE r public.parcels%ROWTYPE; BEGIN r.name := 'x'; RETURN r.name; END $$;",
    )
    refused_then_approved(bundle, db, "body_unanalysable", "function:public.parcels_first()")


# ------------------------------------------------------------------ hard fails


def test_a_security_definer_function_reading_a_forbidden_table_is_refused(bundle: Path, db: PgDatabase) -> None:
    forward(
        bundle,
        "CREATE FUNCTION public.parcels_peek() RETURNS text LANGUAGE sql SECURITY DEFINER AS "
        "'SELECT string_agg(name, '','') FROM public.authority_sites';",
    )
    got = always_refused(bundle, db, "body_references_guarded", "function:public.parcels_peek()")
    assert "forbidden public.authority_sites" in got[0]["message"]


def test_a_time_bomb_trigger_is_refused(bundle: Path, db: PgDatabase) -> None:
    """A trigger whose function writes into a forbidden schema on every future insert."""
    forward(
        bundle,
        "CREATE FUNCTION public.parcels_log() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO audit.events (what) VALUES (NEW.name); RETURN NEW; END $$;\n"
        "CREATE TRIGGER parcels_log AFTER INSERT ON public.parcels FOR EACH ROW EXECUTE FUNCTION public.parcels_log();",
    )
    got = always_refused(bundle, db, "body_references_guarded")
    assert {f["object"] for f in got} == {"function:public.parcels_log()", "trigger:public.parcels.parcels_log"}
    assert any("forbidden audit.events (through function:public.parcels_log())" in f["message"] for f in got)


def test_a_trigger_on_an_existing_function_that_writes_a_forbidden_table_is_refused(
    bundle: Path, db: PgDatabase
) -> None:
    db.sql(
        "CREATE FUNCTION public.parcels_helper(x text) RETURNS void LANGUAGE sql AS "
        "'INSERT INTO audit.events (what) VALUES (x)';"
        "CREATE FUNCTION public.parcels_log() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM parcels_helper(NEW.name); RETURN NEW; END $$"
    )
    forward(
        bundle,
        "CREATE TRIGGER parcels_log AFTER INSERT ON public.parcels FOR EACH ROW EXECUTE FUNCTION public.parcels_log();",
    )
    got = always_refused(bundle, db, "body_references_guarded", "trigger:public.parcels.parcels_log")
    assert "through function:public.parcels_helper(x text)" in got[0]["message"]


HIDDEN = {
    # views and rules: the catalog knows what they reference (pg_depend)
    "view": (
        "CREATE VIEW public.parcels_sites AS SELECT name FROM public.authority_sites",
        "relation:public.parcels_sites",
        "forbidden public.authority_sites",
    ),
    "rule": (
        "CREATE RULE parcels_copy AS ON UPDATE TO public.parcels DO ALSO "
        "INSERT INTO audit.events (what) VALUES (NEW.name)",
        "rule:public.parcels.parcels_copy",
        "forbidden audit.events",
    ),
    "policy": (
        "CREATE POLICY parcels_registered ON public.parcels AS RESTRICTIVE "
        "USING (EXISTS (SELECT 1 FROM public.registry r WHERE r.id = parcels.id))",
        "policy:public.parcels.parcels_registered",
        "protected public.registry",
    ),
    "default": (
        "ALTER TABLE public.parcels ALTER COLUMN name SET DEFAULT public.parcels_default()",
        "column:public.parcels.name",
        "forbidden public.authority_sites",
    ),
    "constant_execute": (
        "CREATE FUNCTION public.parcels_n() RETURNS bigint LANGUAGE plpgsql AS "
        "$f$ DECLARE n bigint; BEGIN EXECUTE 'SELECT count(*) FROM governance.rules' INTO n; "
        "RETURN n; END $f$",
        "function:public.parcels_n()",
        "forbidden governance.rules",
    ),
}


@pytest.mark.parametrize("case", sorted(HIDDEN))
def test_code_that_reads_or_writes_a_guarded_object_is_refused(bundle: Path, db: PgDatabase, case: str) -> None:
    """Hidden from the static plan in dynamic SQL: the gate reads the code itself."""
    sql, obj, what = HIDDEN[case]
    db.sql(
        "CREATE FUNCTION public.parcels_default() RETURNS text LANGUAGE sql AS "
        "'SELECT min(name) FROM public.authority_sites'"
    )
    forward(bundle, "DO $do$ BEGIN EXECUTE $x$" + sql + "$x$; END $do$;")
    got = always_refused(bundle, db, "body_references_guarded", obj)
    assert any(what in f["message"] for f in got if f["object"] == obj), got


# ---------------------------------------------------------------------- reads


def test_copying_a_forbidden_table_in_dynamic_sql_is_refused(bundle: Path, db: PgDatabase) -> None:
    forward(
        bundle,
        "DO $$ BEGIN EXECUTE 'INSERT INTO public.parcels (name) SELECT name FROM public.authority_sites'; END $$;",
    )
    got = always_refused(bundle, db, "forbidden_read", "public.authority_sites")
    assert "read:public.authority_sites" in got[0]["message"]
    approve(bundle, "read:public.authority_sites")
    assert run(bundle, db) == 0, summary(bundle)["findings"]
    assert [f["tier"] for f in findings(bundle, "guarded_read_approved")] == ["informational"]
    assert db.sql("SELECT count(*) FROM public.parcels") == [(202,)]


def test_copying_a_protected_table_in_dynamic_sql_is_refused(bundle: Path, db: PgDatabase) -> None:
    forward(
        bundle, "DO $$ BEGIN EXECUTE 'INSERT INTO public.parcels (name) SELECT owner FROM public.registry'; END $$;"
    )
    always_refused(bundle, db, "protected_copy", "public.registry")
    approve(bundle, "read:public.registry")
    assert run(bundle, db) == 0, summary(bundle)["findings"]


def test_the_plan_refuses_direct_reads_of_guarded_tables(
    bundle: Path, db: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    forward(
        bundle,
        "INSERT INTO public.parcels (name) SELECT name FROM public.authority_sites;\n"
        "CREATE TABLE public.parcels_owners AS SELECT * FROM public.registry;",
    )
    assert plan_hard_fails(bundle, capsys) == [
        ("plan_forbidden_read", "public.authority_sites"),
        ("plan_protected_copy", "public.registry"),
    ]
    before = db.state()
    assert run(bundle, db) == 1
    assert receipt(bundle)["reason"].startswith(
        "static plan refused: statement 3 reads forbidden public.authority_sites"
    )
    assert db.state() == before
    approve(bundle, "read:public.authority_sites", "read:public.registry")
    assert plan_hard_fails(bundle, capsys) == []
    assert run(bundle, db) == 0, summary(bundle)["findings"]
    assert sorted(f["object"] for f in findings(bundle, "guarded_read_approved")) == [
        "public.authority_sites",
        "public.registry",
    ]


# ---------------------------------------------------------------- honest changes

HONEST = {
    "plain_index": "",
    "restrictive_policy": "CREATE POLICY parcels_guard ON public.parcels AS RESTRICTIVE USING (id > 0);",
    "narrowed_policy": "ALTER POLICY parcels_own ON public.parcels USING (name = current_user AND id > 0);",
    "policy_fewer_roles": "ALTER POLICY parcels_two ON public.parcels TO kfm;",
    "normal_function": "CREATE FUNCTION public.parcels_area(p public.parcels) RETURNS float8 LANGUAGE sql "
    "STABLE AS 'SELECT ST_Area(p.geom)';",
    "plpgsql_function": "CREATE FUNCTION public.parcels_rename(i int, n text) RETURNS void LANGUAGE plpgsql AS "
    "$$ BEGIN UPDATE public.parcels SET name = n WHERE id = i; END $$;",
    "view": "CREATE VIEW public.parcels_named AS SELECT id, name FROM public.parcels;",
    "trigger_enabled": "ALTER TABLE public.parcels ENABLE ALWAYS TRIGGER parcels_audit;",
    "revoke": "REVOKE ALL ON public.parcels FROM PUBLIC; REVOKE EXECUTE ON FUNCTION public.parcels_touch() FROM PUBLIC;",
    "protected_read": "DO $$ DECLARE n int; BEGIN EXECUTE 'SELECT count(*) FROM public.registry' INTO n; END $$;",
    "update_allowed": "UPDATE public.parcels SET name = upper(name) WHERE id < 3;",
}


@pytest.mark.parametrize("case", sorted(HONEST))
def test_honest_changes_pass(bundle: Path, db: PgDatabase, case: str) -> None:
    """Narrowing or neutral changes raise no posture finding, and the runner's own reads
    of the forbidden and protected tables (the baselines' row digests) are not the script's."""
    db.sql(
        "ALTER TABLE public.parcels ENABLE ROW LEVEL SECURITY; "
        "CREATE POLICY parcels_own ON public.parcels USING (name = current_user); "
        "CREATE POLICY parcels_two ON public.parcels TO kfm, public USING (id > 5)"
    )
    forward(bundle, HONEST[case])
    assert run(bundle, db) == 0, summary(bundle)["findings"]
    assert {f["tier"] for f in summary(bundle)["findings"]} == {"informational"}
