"""What a pull-request reviewer reads: ``validate`` plans every bundle (parse errors named
``file:line:column``, the plan's hard failures), ``plan --format markdown`` (statement text
and position, locks, estimated rows with a connection, scope, findings), and ``validate``'s
tables (ids printed whole, fixtures apart)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import MIGRATIONS, PgDatabase

from airflow_kfm_migrations.cli import main
from airflow_kfm_migrations.errors import InputError
from airflow_kfm_migrations.stores.graph.cypher import split_cypher
from airflow_kfm_migrations.stores.search.actions import parse_actions

PG = "PG-MIG-2026-02-28-01"
SEARCH = "SEARCH-MIG-2026-03-02-01"
GRAPH = "GRAPH-MIG-2026-03-03-01"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A private copy of the example migrations root, without fixtures or run outputs."""
    dst = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, dst, ignore=shutil.ignore_patterns("fixtures", "baselines", "diffs", "receipts"))
    return dst


def forward(root: Path) -> Path:
    return root / "postgis" / PG / "forward.sql"


def validate(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(["validate", str(root)])
    return code, capsys.readouterr().err.strip().splitlines()


# ------------------------------------------------------------------ validate plans


def test_validate_fails_on_a_forward_sql_that_does_not_parse(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert validate(root, capsys)[0] == 0
    forward(root).write_text(
        "-- é: a comment with a multi-byte character before the error\n"
        "SET search_path = public;\n"
        "CREATE INDX parcels_name ON parcels (name);\n"
    )
    code, err = validate(root, capsys)
    assert code == 2
    (line,) = err
    assert line.endswith(
        f'postgis/{PG}/forward.sql:3:8: statement 2: SQL does not parse: syntax error at or near "INDX"'
    ), line


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("SET search_path = 'é';\nSELECT 'ü', 'ö';\n   SELEC 1;\n", "3:4: statement 3"),  # after multi-byte text
        ("SELECT 1;\nCREATE TABLE t (a int", "2:22: statement 2"),  # at the end of the script
        ("SELECT 1;\n\n  ALTER TABLE parcels ADD COLUMN;\n", "3:33: statement 2"),
    ],
)
def test_sql_parse_errors_name_line_and_column(
    root: Path, capsys: pytest.CaptureFixture[str], text: str, where: str
) -> None:
    forward(root).write_text(text)
    capsys.readouterr()
    assert main(["plan", str(root / "postgis" / PG)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"forward.sql:{where}: SQL does not parse" in line, line


def test_search_and_graph_parse_errors_name_line_and_column(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InputError) as exc:
        parse_actions('{\n  "actions": [\n    {"delete_index": {"index": "a"},}\n  ]\n}', "forward.json")
    assert exc.value.line().startswith("forward.json:3:37: -: invalid JSON: ")
    with pytest.raises(InputError) as exc:
        split_cypher("MATCH (n) RETURN n;\n  CREATE (n {name: 'open})", "forward.cypher")
    assert exc.value.line() == "forward.cypher:2:20: -: unterminated string literal"
    # Through validate: the file is named from the migrations root.
    (root / "graph" / GRAPH / "forward.cypher").write_text("MATCH (n:Dataset)\n/* never closed\nRETURN n;\n")
    code, err = validate(root, capsys)
    assert code == 2 and len(err) == 1
    assert err[0].endswith(f"/graph/{GRAPH}/forward.cypher:2:1: -: unterminated block comment"), err


def test_validate_fails_on_a_plan_hard_fail(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    forward(root).write_text("SET search_path = public;\nCREATE INDEX audit_what ON audit.events (what);\n")
    code, err = validate(root, capsys)
    assert code == 1
    assert {e.split(f"postgis/{PG}: ", 1)[1] for e in err} == {
        "plan.plan_forbidden_target: statement 2 targets forbidden audit.events",
        "plan.plan_forbidden_target: statement 2 targets forbidden audit.audit_what",
    }, err
    # A search bundle whose reindex reads a protected index, and a graph USE clause: refused too.
    (root / "graph" / GRAPH / "forward.cypher").write_text("USE other MATCH (n:Dataset) SET n.x = 1;\n")
    code, err = validate(root, capsys)
    assert code == 1 and any(f"graph/{GRAPH}: plan.plan_use_clause: " in e for e in err), err


# ------------------------------------------------------------------ plan markdown


def plan_md(bundle: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["plan", str(bundle), "--format", "markdown", *extra])
    return code, capsys.readouterr().out


def test_plan_markdown_shows_text_position_lock_scope_and_findings(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forward(root).write_text(
        "-- widen parcels\n"
        "SET search_path = public;\n\n"
        "ALTER TABLE parcels\n  ADD COLUMN area_m2 double precision;\n"
        "CREATE INDEX CONCURRENTLY parcels_area ON parcels (area_m2);\n"
        "ALTER TABLE parcels ADD CONSTRAINT area_positive CHECK (area_m2 > 0) NOT VALID;\n"
        "UPDATE authority_sites SET name = name;\n"
    )
    code, md = plan_md(root / "postgis" / PG, capsys)
    assert code == 1  # a forbidden target refuses the plan
    assert md.startswith(f"### Migration plan `{PG}` (postgis)")
    assert "❌ **refused**" in md
    # Each statement: its file:line, its text, its lock and what the lock blocks.
    assert (
        "| 2 | `forward.sql:4` | DDL `AlterTableStmt` | `public.parcels` | ACCESS EXCLUSIVE on public.parcels: " in md
    )
    assert "| 3 | `forward.sql:6` | DDL `IndexStmt` |" in md
    assert "SHARE UPDATE EXCLUSIVE on public.parcels: blocks other schema changes" in md
    assert "ACCESS EXCLUSIVE on public.parcels: blocks every read and write (brief: no scan;" in md
    assert "ROW EXCLUSIVE on public.authority_sites" in md
    assert "```sql\nALTER TABLE parcels\n  ADD COLUMN area_m2 double precision\n```" in md
    assert "**4.** `forward.sql:7`" in md
    # Declared scope beside the detected targets, then the findings with their tiers.
    assert "| declared `forbidden_tables` | `authority_sites` |" in md
    assert "| detected targets | `public.authority_sites`, `public.parcels`, `public.parcels_area` |" in md
    assert re.search(r"\| \*\*hard_fail\*\* \| `plan_forbidden_target` \| public.authority_sites \| .*forbidden", md)
    assert re.search(r"\| \*\*hard_fail\*\* \| `non_transactional_statement` \|", md)
    assert "_run `plan --format markdown --conn-id ID` for estimated rows (read-only)._" in md


def test_plan_markdown_of_search_and_graph(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, md = plan_md(root / "search" / SEARCH, capsys)
    assert code == 0 and "✅ **ok**" in md
    assert "| 1 | `forward.json:3` | DDL `create_index` | `parcels_v2` |" in md
    assert '```json\n{"create_index": {"index": "parcels_v2"' in md
    assert "| declared `allowed_index_patterns` |" in md and "#### Findings" in md
    code, md = plan_md(root / "graph" / GRAPH, capsys)
    assert code == 0
    assert "| 2 | `forward.cypher:4` | DML `write` | `label:Dataset`, `label:LegacyDataset` | yes |" in md
    assert "```cypher\nMATCH (n:LegacyDataset)" in md
    assert "| declared `protected_labels` | `AuthoritySite` |" in md


@pytest.mark.postgis
def test_plan_markdown_estimates_rows_read_only(
    root: Path, pgdb: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    pgdb.sql("ANALYZE public.parcels")
    (estimate,) = pgdb.sql("SELECT reltuples::bigint FROM pg_class WHERE oid = 'public.parcels'::regclass")[0]
    assert estimate == 200
    before = pgdb.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
    code, md = plan_md(root / "postgis" / PG, capsys, "--conn-id", pgdb.conn_id)
    assert code == 0
    assert "| table | estimated rows |" in md and "| `public.parcels` | 200 |" in md
    assert "Not a table there (an index, a new object, or absent): `public.parcels_geom_gist`" in md
    assert f"statistics on `{pgdb.conn_id}` (`pg_class.reltuples`), read-only" in md
    # Read-only: nothing was created (no ledger), no session left behind.
    assert not pgdb.ledger_schema_exists()
    assert pgdb.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()") == before
    # A table never analysed says so.
    pgdb.sql("CREATE TABLE public.fresh (id int)")
    forward(root).write_text("CREATE INDEX fresh_id ON public.fresh (id);\n")
    decl = root / "postgis" / PG / "migration.yml"
    decl.write_text(decl.read_text().replace("    - parcels\n", "    - parcels\n    - fresh\n", 1))
    code, md = plan_md(root / "postgis" / PG, capsys, "--conn-id", pgdb.conn_id)
    assert code == 0 and "| `public.fresh` | never analysed |" in md


# ------------------------------------------------------------------ validate's tables


def test_validate_tables_print_ids_whole_and_fixtures_apart(capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["validate", str(MIGRATIONS)]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    first, _, second = out.partition("fixtures (each must end as its expected.txt says)")
    assert second, "the fixtures have a table of their own"
    for mid in (PG, SEARCH, GRAPH):
        assert re.search(rf"│ \S*{mid}\s+│ bundle\s+│ {mid}\s+│ pass", first), mid
    assert "fixture" not in first
    assert "registry/fixtures/invalid/45-registry-unknown-status" in second
    assert "registry/fixtures/valid/PG-MIG-2026-03-08-01" in second
    assert "refused as expected" in second
