"""Operations from the command line (issue #16): ``status``, ``history``, ``migrate`` and the
declaration's ``requires``, against real servers (PostGIS fully; search and graph: status and
history with applied, pending, drifted and changed-checksum migrations)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import LEDGER_SCHEMA, PgDatabase

# The search node's fixture holds a lock that keeps the search test modules, which wipe the
# node, away while the search test here runs.
from test_search import os_client  # noqa: F401  (a fixture, requested by name)

from airflow_kfm_migrations.cli import main

# --------------------------------------------------------------------- a migrations root

PG_DECLARATION = """\
migration_id: {mid}
type: postgis
intent: "{intent}"
scope:
  allowed_schemas: [public]
  allowed_tables: [{tables}]
  forbidden_schemas: [kfm_governance, governance, audit]
  forbidden_tables: [authority_sites]
limits:
  max_table_count_touched: 1
  max_index_count_delta: 1
  max_row_backfill: 0
  max_constraint_delta: 1
requires_rollback: true
approvals:
  required_reviewers: [kfm-platform]
  change_class: standard
runner:
  tool: psycopg
artifacts:
  forward: [forward.sql]
  rollback: [rollback.sql]
{requires}"""


def pg_id(n: int) -> str:
    return f"PG-MIG-2030-01-01-{n:02d}"


def write_root(root: Path, bundles: list[dict[str, Any]]) -> Path:
    """A migrations root: each bundle dict has ``mid``, ``type`` (postgis), ``decl`` (the
    declaration text) and ``files`` (name -> text); ``status`` (default approved)."""
    entries = []
    for b in bundles:
        folder = root / b["type"] / b["mid"]
        folder.mkdir(parents=True)
        (folder / "migration.yml").write_text(b["decl"])
        for name, text in b["files"].items():
            (folder / name).write_text(text)
        events = [{"status": "draft", "at": "2030-01-01T00:00:00+00:00", "actor": "t", "ref": "t"}]
        if b.get("status", "approved") == "approved":
            events.append({"status": "approved", "at": "2030-01-01T00:00:01+00:00", "actor": "t", "ref": "t"})
        entries.append(
            {
                "migration_id": b["mid"],
                "type": b["type"],
                "path": f"{b['type']}/{b['mid']}",
                "owner": "kfm-platform",
                "status": b.get("status", "approved"),
                "events": events,
            }
        )
    reg = root / "registry" / "migrations.v1.json"
    reg.parent.mkdir(parents=True, exist_ok=True)
    reg.write_text(json.dumps({"schema_version": "migrations.v1", "migrations": entries}, indent=2) + "\n")
    return root


def pg_bundle(
    n: int, forward: str, rollback: str, tables: list[str], requires: list[int] = (), status: str = "approved"
) -> dict[str, Any]:
    req = f"requires: [{', '.join(pg_id(r) for r in requires)}]\n" if requires else ""
    decl = PG_DECLARATION.format(mid=pg_id(n), intent=f"operations test migration {n}", tables=", ".join(tables),
                                 requires=req)  # fmt: skip
    return {
        "mid": pg_id(n),
        "type": "postgis",
        "decl": decl,
        "files": {"forward.sql": forward, "rollback.sql": rollback, "notes.md": f"# {n}\n\ntest.\n"},
        "status": status,
    }


def table(n: int, name: str, requires: list[int] = (), status: str = "approved") -> dict[str, Any]:
    return pg_bundle(
        n,
        f"CREATE TABLE public.{name} (id int PRIMARY KEY, name text);\n",
        f"DROP TABLE public.{name};\n",
        [name],
        requires,
        status,
    )


def index(n: int, name: str, requires: list[int]) -> dict[str, Any]:
    return pg_bundle(
        n,
        f"CREATE INDEX {name}_name_idx ON public.{name} (name);\n",
        f"DROP INDEX public.{name}_name_idx;\n",
        [name],
        requires,
    )


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code, out, err = cli(capsys, *argv, "--format", "json")
    assert out.strip(), err
    return code, json.loads(out)


def receipt(root: Path, mid: str, kind: str = "postgis") -> dict[str, Any]:
    return json.loads((root / kind / mid / "receipts" / "run_receipt.json").read_text())


def ledger_rows(db: PgDatabase) -> list[tuple[str, str, str]]:
    return db.sql(f"SELECT migration_id, operation, status FROM {LEDGER_SCHEMA}.ledger ORDER BY id")


def tables_of(db: PgDatabase) -> set[str]:
    return {r[0] for r in db.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


# ----------------------------------------------------------------------------- migrate


def test_migrate_applies_pending_migrations_in_requires_then_id_order_over_one_connection(
    pgdb: PgDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_kfm_migrations.stores.postgis import store as pg_store

    opened: list[int] = []
    real = pg_store.connector

    def counting(conn_id: str) -> Any:
        connect = real(conn_id)

        def counted() -> Any:
            opened.append(1)
            return connect()

        return counted

    monkeypatch.setattr(pg_store, "connector", counting)
    root = write_root(
        tmp_path / "migrations",
        [index(1, "ops_a", requires=[2]), table(2, "ops_a"), table(3, "ops_c"), index(4, "ops_c", requires=[3])],
    )
    code, doc = cli_json(capsys, "migrate", str(root), "--conn-id", pgdb.conn_id, "--env", "dev")
    assert code == 0
    assert [(r["migration_id"], r["outcome"]) for r in doc["migrations"]] == [
        (pg_id(2), "succeeded"),
        (pg_id(1), "succeeded"),  # its requirement first, then by id
        (pg_id(3), "succeeded"),
        (pg_id(4), "succeeded"),
    ]
    assert len(opened) == 1  # one connection for the whole series
    assert ledger_rows(pgdb) == [(pg_id(n), "apply", "succeeded") for n in (2, 1, 3, 4)]
    for n in (1, 2, 3, 4):  # each its own run, with its own receipt, recorded with it in the ledger
        r = receipt(root, pg_id(n))
        assert r["status"] == "succeeded"
        assert main(["verify", str(root / "postgis" / pg_id(n)), "--conn-id", pgdb.conn_id]) == 0
        # Its PROV document (written by migrate's worker thread) is there, the run's own too.
        folder = root / "postgis" / pg_id(n)
        assert f"ns#run-{r['run_id']}" in (folder / "receipts" / "prov.jsonld").read_text()
        assert (folder / "runs" / f"apply-{r['run_id']}" / "receipts" / "prov.jsonld").is_file()
    assert {"ops_a", "ops_c"} <= tables_of(pgdb)
    # Nothing is pending any more: a second migrate runs nothing and writes nothing.
    before = sorted(p.name for p in (root / "postgis" / pg_id(1) / "receipts" / "history").iterdir())
    code, out, _err = cli(capsys, "migrate", str(root), "--conn-id", pgdb.conn_id, "--env", "dev")
    assert code == 0 and "nothing to migrate" in out
    assert sorted(p.name for p in (root / "postgis" / pg_id(1) / "receipts" / "history").iterdir()) == before
    assert len(ledger_rows(pgdb)) == 4


def test_migrate_stops_at_the_first_refusal_leaving_the_rest_untouched(
    pgdb: PgDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refused = pg_bundle(
        3,
        "CREATE TABLE public.ops_x (id int PRIMARY KEY);\n",  # ops_x is outside its scope (ops_c)
        "DROP TABLE public.ops_x;\n",
        ["ops_c"],
    )
    root = write_root(
        tmp_path / "migrations",
        [table(1, "ops_a"), table(2, "ops_b"), refused, table(4, "ops_d"), table(5, "ops_e")],
    )
    code, doc = cli_json(capsys, "migrate", str(root), "--conn-id", pgdb.conn_id, "--env", "dev")
    assert code == 1
    assert [(r["migration_id"], r["outcome"]) for r in doc["migrations"]] == [
        (pg_id(1), "succeeded"),
        (pg_id(2), "succeeded"),
        (pg_id(3), "failed"),
        (pg_id(4), "not run"),
        (pg_id(5), "not run"),
    ]
    # 1..k-1 applied, each with its receipt; k refused with a receipt saying why; k+1..n untouched.
    assert ledger_rows(pgdb) == [(pg_id(1), "apply", "succeeded"), (pg_id(2), "apply", "succeeded")]
    assert receipt(root, pg_id(1))["status"] == receipt(root, pg_id(2))["status"] == "succeeded"
    k = receipt(root, pg_id(3))
    assert k["status"] == "failed" and "ops_x" in k["reason"]
    assert doc["migrations"][2]["reason"] == k["reason"]
    for n in (4, 5):
        assert not (root / "postgis" / pg_id(n) / "receipts").exists()
        assert not (root / "postgis" / pg_id(n) / "runs").exists()
    assert {"ops_a", "ops_b"} <= tables_of(pgdb)
    assert not {"ops_x", "ops_d", "ops_e"} & tables_of(pgdb)


def test_migrate_dry_run_and_to(pgdb: PgDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_root(tmp_path / "migrations", [table(1, "ops_a"), index(2, "ops_a", requires=[1]), table(3, "ops_c")])
    before = pgdb.state()
    code, doc = cli_json(capsys, "migrate", str(root), "--conn-id", pgdb.conn_id, "--env", "dev", "--dry-run")
    assert code == 0
    assert [(r["migration_id"], r["outcome"]) for r in doc["migrations"]] == [
        (pg_id(1), "would apply"),
        (pg_id(2), "would apply"),  # its requirement would be applied just before it
        (pg_id(3), "would apply"),
    ]
    assert pgdb.state() == before
    assert not list(root.rglob("receipts"))
    code, doc = cli_json(capsys, "migrate", str(root), "--conn-id", pgdb.conn_id, "--env", "dev", "--to", pg_id(2))
    assert code == 0
    assert [r["migration_id"] for r in doc["migrations"]] == [pg_id(1), pg_id(2)]
    assert "ops_c" not in tables_of(pgdb)
    code, _out, err = cli(capsys, "migrate", str(root), "--conn-id", pgdb.conn_id, "--env", "dev", "--to",
                          "PG-MIG-2030-12-31-99")  # fmt: skip
    assert code == 2 and err.strip().startswith("--to: -: PG-MIG-2030-12-31-99 is not a postgis migration")


# ------------------------------------------------------------------- status / history


def test_status_and_history_on_postgis(
    pgdb: PgDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KFM_ACTOR", "ops-tester")
    root = write_root(
        tmp_path / "migrations",
        [table(1, "ops_a"), table(2, "ops_b", requires=[1]), table(3, "ops_c", status="draft")],
    )
    assert cli(capsys, "migrate", str(root), "--conn-id", pgdb.conn_id, "--env", "dev", "--to", pg_id(1))[0] == 0
    code, doc = cli_json(capsys, "status", str(root), "--conn-id", pgdb.conn_id, "--env", "dev")
    assert code == 0 and doc["kind"] == "postgis"
    rows = {r["migration_id"]: r for r in doc["migrations"]}
    applied = receipt(root, pg_id(1))
    expected = {
        "registry_status": "approved",
        "state": "applied",
        "run_id": applied["run_id"],
        "receipt_digest": applied["receipt_digest"],
        "actor": "ops-tester",
        "checksums": "match",
        "drift": False,
        "pending": False,
    }
    assert {k: rows[pg_id(1)][k] for k in expected} == expected
    assert (rows[pg_id(2)]["state"], rows[pg_id(2)]["pending"], rows[pg_id(2)]["checksums"]) == ("never", True, "n/a")
    assert (rows[pg_id(3)]["state"], rows[pg_id(3)]["pending"]) == ("never", False)  # a draft runs nowhere
    assert rows[pg_id(2)]["drift"] is None
    code, hist = cli_json(capsys, "history", "--conn-id", pgdb.conn_id)
    assert code == 0
    assert [(e["migration_id"], e["operation"], e["outcome"], e["actor"], e["receipt_digest"]) for e in hist["entries"]] == [
        (pg_id(1), "apply", "succeeded", "ops-tester", applied["receipt_digest"])
    ]  # fmt: skip

    # Drift: an in-scope change outside any governed run. Reported; an exit code only when asked.
    pgdb.sql("ALTER TABLE public.ops_a ADD COLUMN extra int")
    changed = pgdb.state()
    code, doc = cli_json(capsys, "status", str(root), "--conn-id", pgdb.conn_id, "--env", "dev")
    row = next(r for r in doc["migrations"] if r["migration_id"] == pg_id(1))
    assert code == 0 and row["drift"] is True and row["attention"] is True
    assert cli(capsys, "status", str(root), "--conn-id", pgdb.conn_id, "--fail-on-drift")[0] == 1
    assert pgdb.state() == changed  # status reads, never writes
    pgdb.sql("ALTER TABLE public.ops_a DROP COLUMN extra")

    # A changed input of an applied migration needs attention: exit 1, the file named.
    with (root / "postgis" / pg_id(1) / "forward.sql").open("a") as fh:
        fh.write("-- edited after the apply\n")
    code, doc = cli_json(capsys, "status", str(root), "--conn-id", pgdb.conn_id, "--env", "dev", "--no-drift")
    row = next(r for r in doc["migrations"] if r["migration_id"] == pg_id(1))
    assert code == 1 and (row["checksums"], row["changed_files"]) == ("changed", ["forward.sql"])
    code, out, _err = cli(capsys, "status", str(root), "--conn-id", pgdb.conn_id, "--format", "markdown")
    assert code == 1
    assert f"| {pg_id(1)} | approved | applied |" in out and "CHANGED: forward.sql" in out

    # A rollback: history newest first, the status rolled back and pending again.
    (root / "postgis" / pg_id(1) / "forward.sql").write_text(
        "CREATE TABLE public.ops_a (id int PRIMARY KEY, name text);\n"
    )
    assert main(["rollback", str(root / "postgis" / pg_id(1)), "--conn-id", pgdb.conn_id, "--quiet"]) == 0
    code, hist = cli_json(capsys, "history", "--conn-id", pgdb.conn_id, pg_id(1))
    assert [(e["operation"], e["outcome"]) for e in hist["entries"]] == [
        ("rollback", "rolled_back"),
        ("apply", "succeeded"),
    ]
    assert hist["entries"][0]["receipt_digest"] == receipt(root, pg_id(1))["receipt_digest"]
    code, doc = cli_json(capsys, "status", str(root), "--conn-id", pgdb.conn_id)
    row = next(r for r in doc["migrations"] if r["migration_id"] == pg_id(1))
    assert (code, row["state"], row["pending"], row["checksums"]) == (0, "rolled_back", True, "n/a")


def test_status_tells_later_governed_runs_from_drift(
    pgdb: PgDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two migrations with the same scope: the second changes the first's in-scope objects
    through a governed run, which is no drift; a change outside any run is."""
    first = pg_bundle(1, "CREATE TABLE public.ops_a (id int PRIMARY KEY);\n", "DROP TABLE public.ops_a;\n", [])
    second = pg_bundle(2, "CREATE TABLE public.ops_b (id int PRIMARY KEY);\n", "DROP TABLE public.ops_b;\n", [])
    root = write_root(tmp_path / "migrations", [first, second])
    assert cli(capsys, "migrate", str(root), "--conn-id", pgdb.conn_id, "--env", "dev")[0] == 0
    code, doc = cli_json(capsys, "status", str(root), "--conn-id", pgdb.conn_id, "--fail-on-drift")
    rows = {r["migration_id"]: r for r in doc["migrations"]}
    assert code == 0
    assert rows[pg_id(1)]["drift"] is False and pg_id(2) in rows[pg_id(1)]["drift_note"]
    assert rows[pg_id(2)]["drift"] is False and rows[pg_id(2)]["drift_note"] is None
    pgdb.sql("CREATE TABLE public.ops_z (id int)")
    code, doc = cli_json(capsys, "status", str(root), "--conn-id", pgdb.conn_id, "--fail-on-drift")
    assert code == 1 and all(r["drift"] is True for r in doc["migrations"])


def test_history_reads_a_ledger_an_earlier_release_created_and_a_run_adds_the_actor(
    pgdb: PgDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KFM_ACTOR", "ops-tester")
    pgdb.sql(
        f"CREATE SCHEMA {LEDGER_SCHEMA}; CREATE TABLE {LEDGER_SCHEMA}.ledger (id bigserial PRIMARY KEY, "
        "migration_id text NOT NULL, operation text NOT NULL, status text NOT NULL, bundle_digest text NOT NULL, "
        "artifacts jsonb NOT NULL, environment text NOT NULL, run_id text NOT NULL UNIQUE, "
        "pre_schema_fingerprint text NOT NULL, pre_protected_fingerprint text NOT NULL, "
        "post_schema_fingerprint text NOT NULL, post_scope_fingerprint text NOT NULL, receipt_digest text, "
        "applied_at timestamptz NOT NULL DEFAULT now());"
        f"INSERT INTO {LEDGER_SCHEMA}.ledger (migration_id, operation, status, bundle_digest, artifacts, environment, "
        f"run_id, pre_schema_fingerprint, pre_protected_fingerprint, post_schema_fingerprint, post_scope_fingerprint) "
        f"VALUES ('{pg_id(9)}', 'apply', 'succeeded', 'd', '{{}}', 'dev', 'old-run', 'a', 'b', 'c', 'e')"
    )
    code, hist = cli_json(capsys, "history", "--conn-id", pgdb.conn_id)
    assert code == 0 and [(e["migration_id"], e["actor"]) for e in hist["entries"]] == [(pg_id(9), None)]
    root = write_root(tmp_path / "migrations", [table(1, "ops_a")])
    assert cli(capsys, "migrate", str(root), "--conn-id", pgdb.conn_id, "--env", "dev")[0] == 0
    code, hist = cli_json(capsys, "history", "--conn-id", pgdb.conn_id)
    assert [(e["migration_id"], e["actor"]) for e in hist["entries"]] == [(pg_id(1), "ops-tester"), (pg_id(9), None)]
    assert pgdb.sql(
        "SELECT count(*) FROM pg_attribute WHERE attrelid = 'kfm_governance.ledger'::regclass AND attname = 'actor'"
    ) == [(1,)]


# ----------------------------------------------------------------------------- requires


def test_validate_and_migrate_refuse_unknown_cyclic_and_cross_kind_requires(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_KFM_OPS_NOWHERE", "postgresql://nobody@127.0.0.1:1/none")
    search_decl = (
        'migration_id: SEARCH-MIG-2030-01-01-01\ntype: search\nintent: "a search migration to require"\n'
        "scope:\n  allowed_index_patterns: [ops_*]\nlimits:\n  max_index_count_delta: 1\n"
        "requires_rollback: true\napprovals:\n  required_reviewers: [kfm-platform]\n  change_class: standard\n"
        "runner:\n  tool: opensearch-py\nartifacts:\n  forward: [forward.json]\n  rollback: [rollback.json]\n"
    )
    search = {
        "mid": "SEARCH-MIG-2030-01-01-01",
        "type": "search",
        "decl": search_decl,
        "files": {
            "forward.json": '{"actions": [{"create_index": {"index": "ops_x"}}]}\n',
            "rollback.json": '{"actions": [{"delete_index": {"index": "ops_x"}}]}\n',
        },
    }
    unknown = table(1, "ops_a")
    unknown["decl"] += "requires: [PG-MIG-2030-12-31-99]\n"
    cross = table(4, "ops_d")
    cross["decl"] += "requires: [SEARCH-MIG-2030-01-01-01]\n"
    root = write_root(
        tmp_path / "migrations",
        [unknown, table(2, "ops_b", requires=[3]), table(3, "ops_c", requires=[2]), cross, table(5, "ops_e"), search],
    )
    monkeypatch.chdir(tmp_path)
    code, _out, err = cli(capsys, "validate", "migrations")
    lines = err.strip().splitlines()
    assert code == 1
    assert lines == [
        f"migrations/postgis/{pg_id(1)}/migration.yml: requires.0: unknown migration 'PG-MIG-2030-12-31-99' "
        "(not in the registry)",
        f"migrations/postgis/{pg_id(2)}/migration.yml: requires: cycle: {pg_id(2)} -> {pg_id(3)} -> {pg_id(2)}",
        f"migrations/postgis/{pg_id(4)}/migration.yml: requires.0: SEARCH-MIG-2030-01-01-01 is a search migration; "
        "a postgis run checks its requirements in its own store's ledger, which cannot tell whether it is applied",
    ]
    # One bundle alone is judged within its root as well.
    code, _out, err = cli(capsys, "validate", f"migrations/postgis/{pg_id(3)}")
    assert code == 1 and err.strip() == lines[1]
    assert cli(capsys, "validate", f"migrations/postgis/{pg_id(5)}")[0] == 0
    # migrate refuses the whole series before anything connects or is written.
    code, out, err = cli(capsys, "migrate", "migrations", "--conn-id", "kfm_ops_nowhere", "--env", "dev")
    assert code == 1 and err.strip().splitlines() == lines and out == ""
    assert not list(root.rglob("receipts"))


def test_a_run_refuses_a_migration_whose_requirement_is_not_applied(
    pgdb: PgDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_root(tmp_path / "migrations", [table(1, "ops_a"), index(2, "ops_a", requires=[1])])
    before = pgdb.state()
    assert main(["run", str(root / "postgis" / pg_id(2)), "--conn-id", pgdb.conn_id, "--quiet"]) == 1
    r = receipt(root, pg_id(2))
    assert r["status"] == "failed"
    assert r["reason"].startswith(f"{pg_id(2)} requires {pg_id(1)}, not applied on {pgdb.conn_id}")
    assert {"name": "requires", "passed": False, "detail": f"not applied: {pg_id(1)}"} in r["validation"]
    assert pgdb.state() == before
    assert main(["run", str(root / "postgis" / pg_id(1)), "--conn-id", pgdb.conn_id, "--quiet"]) == 0
    assert main(["run", str(root / "postgis" / pg_id(2)), "--conn-id", pgdb.conn_id, "--quiet"]) == 0
    assert receipt(root, pg_id(2))["status"] == "succeeded"


@pytest.mark.airflow
def test_airflow_preflight_refuses_a_migration_whose_requirement_is_not_applied(
    pgdb: PgDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_kfm_migrations.operators import PreflightOperator

    root = write_root(tmp_path / "migrations", [table(1, "ops_a"), index(2, "ops_a", requires=[1])])
    monkeypatch.setenv("KFM_BUNDLES_ROOT", str(root))
    monkeypatch.delenv("KFM_REGISTRY_PATH", raising=False)
    before = pgdb.state()
    op = PreflightOperator(task_id="preflight", migration_id=pg_id(2), conn_id=pgdb.conn_id)
    with pytest.raises(AirflowFailException) as exc:
        op.execute({"params": {"environment": "dev"}})
    assert f"requires {pg_id(1)}, not applied on {pgdb.conn_id}" in str(exc.value)
    assert pgdb.state() == before
    assert cli(capsys, "migrate", str(root), "--conn-id", pgdb.conn_id, "--env", "dev", "--to", pg_id(1))[0] == 0
    assert op.execute({"params": {"environment": "dev"}})["environment"] == "dev"


# ------------------------------------------------------------------------ search, graph


def _status_rows(capsys: pytest.CaptureFixture[str], root: Path, conn_id: str, *extra: str) -> tuple[int, dict]:
    code, doc = cli_json(capsys, "status", str(root), "--conn-id", conn_id, "--env", "dev", *extra)
    return code, {r["migration_id"]: r for r in doc["migrations"]}


SEARCH_DECLARATION = """\
migration_id: {mid}
type: search
intent: "operations test: create the index {index}"
scope:
  allowed_index_patterns: ["{prefix}_*"]
  forbidden_index_patterns: [".kfm-governance*"]
limits:
  max_index_count_delta: 1
requires_rollback: true
approvals:
  required_reviewers: [kfm-platform]
  change_class: standard
runner:
  tool: opensearch-py
artifacts:
  forward: [forward.json]
  rollback: [rollback.json]
{requires}"""


@pytest.mark.opensearch
def test_search_status_and_history(
    request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = request.getfixturevalue("os_client")  # holds the node's test lock (see the imports)
    hexid = uuid.uuid4().hex[:8]
    prefix = f"kfmops_{hexid}"
    day = 1 + int(hexid, 16) % 28
    ids = [f"SEARCH-MIG-2031-02-{day:02d}-{n:02d}" for n in (1, 2)]
    conn_id = "kfm_ops_search"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", "opensearch://127.0.0.1:9200")
    monkeypatch.setenv("KFM_ACTOR", "ops-tester")
    one_shard = {"number_of_shards": 1, "number_of_replicas": 0}
    bundles = []
    for n, mid in enumerate(ids, 1):
        name = f"{prefix}_{n}"
        req = f"requires: [{ids[0]}]\n" if n == 2 else ""
        bundles.append(
            {
                "mid": mid,
                "type": "search",
                "decl": SEARCH_DECLARATION.format(mid=mid, index=name, prefix=prefix, requires=req),
                "files": {
                    "forward.json": json.dumps({"actions": [{"create_index": {"index": name, "settings": one_shard}}]}),
                    "rollback.json": json.dumps({"actions": [{"delete_index": {"index": name}}]}),
                    "notes.md": "# notes\n\ntest.\n",
                },
            }
        )
    root = write_root(tmp_path / "migrations", bundles)
    try:
        assert cli(capsys, "migrate", str(root), "--conn-id", conn_id, "--env", "dev", "--to", ids[0])[0] == 0
        code, rows = _status_rows(capsys, root, conn_id)
        applied = receipt(root, ids[0], "search")
        assert code == 0
        assert (rows[ids[0]]["state"], rows[ids[0]]["checksums"], rows[ids[0]]["drift"]) == ("applied", "match", False)
        assert rows[ids[0]]["receipt_digest"] == applied["receipt_digest"]
        assert (rows[ids[1]]["state"], rows[ids[1]]["pending"]) == ("never", True)
        code, hist = cli_json(capsys, "history", "--conn-id", conn_id, ids[0])
        assert [(e["operation"], e["outcome"], e["actor"], e["receipt_digest"]) for e in hist["entries"]] == [
            ("apply", "succeeded", "ops-tester", applied["receipt_digest"])
        ]
        # Drift: the applied index's mapping changed outside any run.
        client.indices.put_mapping(index=f"{prefix}_1", body={"properties": {"late": {"type": "keyword"}}})
        code, rows = _status_rows(capsys, root, conn_id, "--fail-on-drift")
        assert code == 1 and rows[ids[0]]["drift"] is True
        # A changed input of the applied migration.
        (root / "search" / ids[0] / "notes.md").write_text("# notes\n\nedited after the apply.\n")
        code, rows = _status_rows(capsys, root, conn_id, "--no-drift")
        assert code == 1 and rows[ids[0]]["changed_files"] == ["notes.md"]
    finally:
        for n in (1, 2):
            if client.indices.exists(index=f"{prefix}_{n}"):
                client.indices.delete(index=f"{prefix}_{n}")
        if client.indices.exists(index=".kfm-governance"):  # this test's ledger documents
            client.delete_by_query(
                index=".kfm-governance", body={"query": {"terms": {"migration_id": ids}}}, params={"refresh": "true"}
            )


GRAPH_DECLARATION = """\
migration_id: {mid}
type: graph
intent: "operations test: a constraint on {label}"
scope:
  allowed_labels: [{label}]
  forbidden_labels: [KfmMigration, KfmLock]
limits:
  max_schema_delta: 1
requires_rollback: true
approvals:
  required_reviewers: [kfm-platform]
  change_class: standard
runner:
  tool: neo4j
artifacts:
  forward: [forward.cypher]
  rollback: [rollback.cypher]
{requires}"""


@pytest.mark.neo4j
def test_graph_status_and_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import port_open, server_missing

    if not port_open(7687):
        server_missing("Neo4j", "bash scripts/stores/neo4j.sh start")
    import neo4j

    hexid = uuid.uuid4().hex[:8]
    day = 1 + int(hexid, 16) % 28
    ids = [f"GRAPH-MIG-2031-03-{day:02d}-{n:02d}" for n in (1, 2)]
    labels = [f"KfmOps{hexid}N{n}" for n in (1, 2)]
    conn_id = "kfm_ops_graph"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", "neo4j://127.0.0.1:7687")
    monkeypatch.setenv("KFM_ACTOR", "ops-tester")
    bundles = []
    for n, (mid, label) in enumerate(zip(ids, labels, strict=True), 1):
        name = f"kfmops_{hexid}_{n}"
        bundles.append(
            {
                "mid": mid,
                "type": "graph",
                "decl": GRAPH_DECLARATION.format(
                    mid=mid, label=label, requires=f"requires: [{ids[0]}]\n" if n == 2 else ""
                ),
                "files": {
                    "forward.cypher": f"CREATE CONSTRAINT {name} IF NOT EXISTS FOR (n:{label}) REQUIRE n.id IS UNIQUE;\n",
                    "rollback.cypher": f"DROP CONSTRAINT {name} IF EXISTS;\n",
                    "notes.md": "# notes\n\ntest.\n",
                },
            }
        )
    root = write_root(tmp_path / "migrations", bundles)
    driver = neo4j.GraphDatabase.driver("neo4j://127.0.0.1:7687", auth=None)
    try:
        assert cli(capsys, "migrate", str(root), "--conn-id", conn_id, "--env", "dev", "--to", ids[0])[0] == 0
        code, rows = _status_rows(capsys, root, conn_id)
        applied = receipt(root, ids[0], "graph")
        assert code == 0
        assert (rows[ids[0]]["state"], rows[ids[0]]["checksums"], rows[ids[0]]["drift"]) == ("applied", "match", False)
        assert rows[ids[0]]["receipt_digest"] == applied["receipt_digest"]
        assert (rows[ids[1]]["state"], rows[ids[1]]["pending"]) == ("never", True)
        code, hist = cli_json(capsys, "history", "--conn-id", conn_id, ids[0])
        assert [(e["operation"], e["outcome"], e["actor"], e["receipt_digest"]) for e in hist["entries"]] == [
            ("apply", "succeeded", "ops-tester", applied["receipt_digest"])
        ]
        # Drift: an index on the applied migration's label, created outside any run.
        with driver.session() as s:
            s.run(f"CREATE INDEX kfmops_{hexid}_late IF NOT EXISTS FOR (n:{labels[0]}) ON (n.late)").consume()
        code, rows = _status_rows(capsys, root, conn_id, "--fail-on-drift")
        assert code == 1 and rows[ids[0]]["drift"] is True
        (root / "graph" / ids[0] / "notes.md").write_text("# notes\n\nedited after the apply.\n")
        code, rows = _status_rows(capsys, root, conn_id, "--no-drift")
        assert code == 1 and rows[ids[0]]["changed_files"] == ["notes.md"]
    finally:
        with driver.session() as s:
            for name in (f"kfmops_{hexid}_1", f"kfmops_{hexid}_2"):
                s.run(f"DROP CONSTRAINT {name} IF EXISTS").consume()
            s.run(f"DROP INDEX kfmops_{hexid}_late IF EXISTS").consume()
            s.run("MATCH (m:KfmMigration) WHERE m.migration_id IN $ids DETACH DELETE m", ids=ids).consume()
        driver.close()
