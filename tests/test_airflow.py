"""The provider through real Airflow 3: DagBag import, and `airflow dags test` against PostGIS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import LEDGER_SCHEMA, MIGRATIONS, REPO, PgDatabase

from airflow_kfm_migrations import get_provider_info

pytestmark = pytest.mark.airflow
PG_ID = "PG-MIG-2026-02-28-01"
DAG_ID = "kfm_migration__" + PG_ID


def test_provider_info_declares_config_and_operators() -> None:
    info = get_provider_info()
    assert info["package-name"] == "airflow-kfm-migrations"
    assert set(info["config"]["kfm_migrations"]["options"]) == {
        "environment",
        "artifacts_root",
        "registry_path",
        "bundles_root",
        "fail_on_drift",
    }
    assert info["operators"][0]["python-modules"] == ["airflow_kfm_migrations.operators"]


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("airflow-home")
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        }
    )
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True, timeout=300
    )
    return env


def test_dagbag_imports_with_zero_errors_and_no_deprecation_warnings(airflow_env: dict[str, str]) -> None:
    env = dict(airflow_env, KFM_BUNDLES_ROOT=str(MIGRATIONS))
    code = (
        "from airflow.dag_processing.dagbag import DagBag\n"
        "b = DagBag(dag_folder='dags')\n"
        "import json; print(json.dumps({'errors': {k: str(v) for k, v in b.import_errors.items()},"
        " 'dags': sorted(b.dag_ids)}))\n"
    )
    p = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads(p.stdout.strip().splitlines()[-1])
    registry = json.loads((MIGRATIONS / "registry" / "migrations.v1.json").read_text())
    assert doc["errors"] == {}
    assert doc["dags"] == sorted(
        ["kfm_migration_rollback", *("kfm_migration__" + e["migration_id"] for e in registry["migrations"])]
    )


def _world(
    tmp_path: Path, db: PgDatabase, env: dict[str, str], *, extra_sql: str = "", status: str = "merged"
) -> dict[str, str]:
    root = tmp_path / "migrations"
    shutil.copytree(
        MIGRATIONS / "postgis" / PG_ID,
        root / "postgis" / PG_ID,
        ignore=shutil.ignore_patterns("baselines", "diffs", "receipts"),
    )
    if extra_sql:
        with (root / "postgis" / PG_ID / "forward.sql").open("a") as fh:
            fh.write(extra_sql + "\n")
    reg = json.loads((MIGRATIONS / "registry" / "migrations.v1.json").read_text())
    entry = next(e for e in reg["migrations"] if e["migration_id"] == PG_ID)
    entry["conn_id"] = db.conn_id
    entry["status"] = status
    entry["events"] = [ev for ev in entry["events"] if ev["status"] in ("draft", "approved", "merged")]
    (root / "registry").mkdir(parents=True)
    (root / "registry" / "migrations.v1.json").write_text(
        json.dumps({"schema_version": "migrations.v1", "migrations": [entry]})
    )
    out = dict(env, KFM_BUNDLES_ROOT=str(root), KFM_ARTIFACTS_ROOT=str(tmp_path / "artifacts"))
    out[f"AIRFLOW_CONN_{db.conn_id.upper()}"] = db.dsn
    subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "reserialize"], env=out, check=True, capture_output=True, timeout=300
    )
    return out


def _dags_test(env: dict[str, str], *conf: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", DAG_ID, *conf],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _receipt(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "artifacts" / PG_ID / "receipts" / "run_receipt.json").read_text())


def test_dag_succeeds_then_reruns_as_noop(pgdb: PgDatabase, airflow_env: dict[str, str], tmp_path: Path) -> None:
    env = _world(tmp_path, pgdb, airflow_env)
    p = _dags_test(env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert _receipt(tmp_path)["status"] == "succeeded"
    assert pgdb.sql("SELECT 1 FROM pg_indexes WHERE indexname = 'parcels_geom_gist'")
    log = p.stdout + p.stderr
    assert "max_index_count_delta" in log and "verdict: succeeded" in log  # tables in the task log
    assert "kfm-local-only" not in log  # never the password
    p = _dags_test(env)
    assert p.returncode == 0
    assert _receipt(tmp_path)["status"] == "noop"


def test_scope_violation_fails_the_dag_run_and_changes_nothing(
    pgdb: PgDatabase, airflow_env: dict[str, str], tmp_path: Path
) -> None:
    before = pgdb.state()
    env = _world(
        tmp_path,
        pgdb,
        airflow_env,
        extra_sql="DO $$ BEGIN EXECUTE 'UPDATE public.authority_sites SET name = ''x'''; END $$;",
    )
    p = _dags_test(env)
    assert p.returncode != 0
    assert "state=failed" in p.stdout + p.stderr
    r = _receipt(tmp_path)
    assert r["status"] == "failed" and "gate refused" in r["reason"] and "store unchanged" in r["reason"]
    assert pgdb.state() == before


def test_prod_run_of_a_merged_entry_is_refused_in_preflight(
    pgdb: PgDatabase, airflow_env: dict[str, str], tmp_path: Path
) -> None:
    before = pgdb.state()
    env = _world(tmp_path, pgdb, airflow_env)
    p = _dags_test(env, "-c", json.dumps({"environment": "prod"}))
    assert p.returncode != 0
    r = _receipt(tmp_path)
    assert r["status"] == "failed" and r["environment"] == "prod" and "preflight" in r["reason"]
    assert pgdb.state() == before


def test_factory_shapes_each_dag_and_isolates_a_broken_bundle(airflow_env: dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, root, ignore=shutil.ignore_patterns("fixtures", "baselines", "diffs", "receipts"))
    reg_path = root / "registry" / "migrations.v1.json"
    reg = json.loads(reg_path.read_text())
    for e in reg["migrations"]:
        if e["type"] == "search":
            e["schedule"] = "0 3 * * *"
    reg_path.write_text(json.dumps(reg))
    (root / "graph" / "GRAPH-MIG-2026-03-03-01" / "migration.yml").write_text("type: [unclosed\n")
    code = (
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "b = DagBag(dag_folder='dags')\n"
        "out = {'errors': {k: str(v) for k, v in b.import_errors.items()}, 'dags': {}}\n"
        "for dag_id, dag in b.dags.items():\n"
        "    if dag_id == 'kfm_migration_rollback': continue\n"
        "    apply = dag.get_task('apply')\n"
        "    out['dags'][dag_id] = {'tags': sorted(dag.tags), 'owner': dag.owner, 'doc': dag.doc_md,\n"
        "        'schedule': str(getattr(dag.timetable, 'expression', None)), 'max_active_runs': dag.max_active_runs,\n"
        "        'tasks': sorted(dag.task_ids), 'params': sorted(dag.params.keys()),\n"
        "        'outlets': sorted(a.name for a in apply.outlets),\n"
        "        'rollback_rule': str(dag.get_task('rollback').trigger_rule),\n"
        "        'receipt_rule': str(dag.get_task('receipt').trigger_rule)}\n"
        "print(json.dumps(out))\n"
    )
    env = dict(airflow_env, KFM_BUNDLES_ROOT=str(root))
    p = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads(p.stdout.strip().splitlines()[-1])
    assert doc["errors"] == {}
    dags = doc["dags"]
    assert len(dags) == 3
    pg = dags["kfm_migration__PG-MIG-2026-02-28-01"]
    assert pg["tags"] == ["governance-critical", "kfm-migration", "postgis"]
    assert pg["owner"] == "kfm-platform" and pg["max_active_runs"] == 1
    assert pg["params"] == ["dry_run", "environment"]
    assert pg["outlets"] == ["kfm-migrations/PG-MIG-2026-02-28-01"]  # the alias its asset events go through
    assert "Add spatial index to parcels" in pg["doc"] and "max_index_count_delta" in pg["doc"]
    assert pg["tasks"] == sorted(["preflight", "baseline_pre", "apply", "baseline_post", "diff_gate", "rollback",
                                  "receipt"])
    assert pg["rollback_rule"].lower().endswith("one_failed") and pg["receipt_rule"].lower().endswith("all_done")
    assert "0 3 * * *" in dags["kfm_migration__SEARCH-MIG-2026-03-02-01"]["schedule"]
    broken = dags["kfm_migration__GRAPH-MIG-2026-03-03-01"]
    assert "Broken bundle" in broken["doc"] and "invalid YAML" in broken["doc"]


def test_a_dag_whose_tasks_were_copied_runs_end_to_end(
    pgdb: PgDatabase, airflow_env: dict[str, str], tmp_path: Path
) -> None:
    """The factory copies the tasks of the second DAG of a shape from the first (issue 4).
    `airflow dags test` builds only the DAG it runs, so it never sees a copy: this runs
    `dag.test()` on a copied DAG from a full DagBag parse."""
    env = _world(tmp_path, pgdb, airflow_env)
    root = Path(env["KFM_BUNDLES_ROOT"])
    decoy = "PG-MIG-2026-02-28-02"
    shutil.copytree(root / "postgis" / PG_ID, root / "postgis" / decoy)
    decl = root / "postgis" / decoy / "migration.yml"
    decl.write_text(decl.read_text().replace(PG_ID, decoy))
    reg_path = root / "registry" / "migrations.v1.json"
    reg = json.loads(reg_path.read_text())
    first = dict(reg["migrations"][0], migration_id=decoy, path=f"postgis/{decoy}", owner="someone-else")
    reg["migrations"].insert(0, first)  # the prototype; the DAG under test is a copy
    reg_path.write_text(json.dumps(reg))
    code = (
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "b = DagBag(dag_folder='dags')\n"
        "assert not b.import_errors, b.import_errors\n"
        f"dag, proto = b.get_dag({DAG_ID!r}), b.get_dag('kfm_migration__{decoy}')\n"
        "for t in dag.tasks:\n"
        "    src = proto.get_task(t.task_id)\n"
        "    assert t is not src and t.params is not src.params and t.owner == 'kfm-platform'\n"
        "dr = dag.test()\n"
        "print(json.dumps({'state': str(dr.state)}))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert json.loads(p.stdout.strip().splitlines()[-1])["state"] == "success"
    assert _receipt(tmp_path)["status"] == "succeeded"
    assert pgdb.sql("SELECT 1 FROM pg_indexes WHERE indexname = 'parcels_geom_gist'")


def dags_test_with_drift(env: dict[str, str], dsn: str) -> tuple[dict[str, Any], dict[str, str]]:
    """``dag.test()`` of the example DAG in a subprocess, with the store changed after the
    commit (a comment on the new index, made by wrapping diff_gate's execute). Returns the
    run's JSON summary and each task's state."""
    code = (
        "import json, psycopg\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "from airflow_kfm_migrations.operators.diff_gate import DiffGateOperator\n"
        "original = DiffGateOperator.execute\n"
        "def drifted(self, context):\n"
        f"    with psycopg.connect({dsn!r}, autocommit=True) as c:\n"
        "        c.execute(\"COMMENT ON INDEX public.parcels_geom_gist IS 'changed after the commit'\")\n"
        "    return original(self, context)\n"
        "DiffGateOperator.execute = drifted\n"
        "b = DagBag(dag_folder='dags')\n"
        "assert not b.import_errors, b.import_errors\n"
        f"dr = b.get_dag({DAG_ID!r}).test()\n"
        "print(json.dumps({'state': str(dr.state), 'tasks': {ti.task_id: str(ti.state) "
        "for ti in dr.get_task_instances()}}))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    return out, {k: v.rsplit(".", 1)[-1].lower() for k, v in out["tasks"].items()}


def test_drift_after_the_commit_takes_the_rollback_path(
    pgdb: PgDatabase, airflow_env: dict[str, str], tmp_path: Path
) -> None:
    """apply commits, then the store changes before diff_gate re-checks it (injected here by
    wrapping diff_gate's execute): diff_gate fails, rollback runs rollback.sql and verifies
    the store equals the pre-baseline, and the DAG run still ends failed."""
    before = pgdb.state(exclude_schemas=(LEDGER_SCHEMA,))  # the ledger records the apply and the rollback
    env = _world(tmp_path, pgdb, airflow_env)
    out, states = dags_test_with_drift(env, pgdb.dsn)
    assert out["state"].endswith("failed")
    assert states["apply"] == "success" and states["diff_gate"] == "failed"
    assert states["rollback"] == "success" and states["receipt"] == "failed"
    r = _receipt(tmp_path)
    assert r["operation"] == "rollback" and r["status"] == "rolled_back"
    assert not pgdb.sql("SELECT 1 FROM pg_indexes WHERE indexname = 'parcels_geom_gist'")
    assert pgdb.state(exclude_schemas=(LEDGER_SCHEMA,)) == before
