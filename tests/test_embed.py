"""Embedding (issue #14): the TaskGroup builder in a user's DAG, settings carried from
``build_dags`` to the task run, a ``bundles_root`` that leads nowhere, and the manual
rollback DAG, through real Airflow 3 (``airflow dags test``) against PostGIS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LEDGER_SCHEMA, MIGRATIONS, PgDatabase

pytestmark = pytest.mark.airflow
PG_ID = "PG-MIG-2026-02-28-01"


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("airflow-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KFM_") or k == "KFM_PARSE_CACHE"}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        }
    )
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True, timeout=300
    )
    return env


def _root(tmp_path: Path, db: PgDatabase) -> Path:
    """A migrations root with the PostGIS example, registered against ``db``."""
    root = tmp_path / "migrations"
    shutil.copytree(
        MIGRATIONS / "postgis" / PG_ID,
        root / "postgis" / PG_ID,
        ignore=shutil.ignore_patterns("baselines", "diffs", "receipts", "runs"),
    )
    reg = json.loads((MIGRATIONS / "registry" / "migrations.v1.json").read_text())
    entry = next(e for e in reg["migrations"] if e["migration_id"] == PG_ID)
    entry.update(conn_id=db.conn_id, status="merged")
    entry["events"] = [ev for ev in entry["events"] if ev["status"] in ("draft", "approved", "merged")]
    (root / "registry").mkdir(parents=True)
    (root / "registry" / "migrations.v1.json").write_text(
        json.dumps({"schema_version": "migrations.v1", "migrations": [entry]})
    )
    return root


def _env(base: dict[str, str], dags: Path, db: PgDatabase, **extra: str) -> dict[str, str]:
    env = dict(base, AIRFLOW__CORE__DAGS_FOLDER=str(dags), **extra)
    env[f"AIRFLOW_CONN_{db.conn_id.upper()}"] = db.dsn
    subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "reserialize"], env=env, check=True, capture_output=True, timeout=300
    )
    return env


def _dags_test(env: dict[str, str], dag_id: str, conf: dict | None = None) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "airflow", "dags", "test", dag_id]
    if conf is not None:
        args += ["-c", json.dumps(conf)]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=env["AIRFLOW_HOME"])


def _receipt(folder: Path) -> dict:
    return json.loads((folder / "receipts" / "run_receipt.json").read_text())


GROUPS_DAG = '''
import json
from airflow.sdk import DAG, Param, dag, task
from airflow_kfm_migrations.task_group import kfm_migration_group

ROOT = {root!r}

with DAG("user_pipeline", schedule=None, params={{"mid": Param({pg!r}), "conn": Param({conn!r})}}) as d:
    first = kfm_migration_group({pg!r}, {conn!r}, group_id="first", bundles_root=ROOT)
    again = kfm_migration_group(
        "{{{{ params.mid }}}}", "{{{{ params.conn }}}}", group_id="again", bundles_root=ROOT, environment="dev"
    )

    @task
    def report(ti=None):
        out = {{g: ti.xcom_pull(task_ids=g + ".apply", key="apply") for g in ("first", "again")}}
        with open({out!r}, "w") as fh:
            json.dump(out, fh)

    first >> again >> report()


@dag(schedule=None)
def decorated():
    kfm_migration_group({pg!r}, group_id="only", bundles_root=ROOT)


decorated()
'''


def test_two_groups_in_one_user_dag_run_green_each_with_its_own_xcoms(
    pgdb: PgDatabase, airflow_home: dict[str, str], tmp_path: Path
) -> None:
    """Two kfm_migration_group()s in one DAG (the second with a templated migration_id and
    conn_id): the run succeeds; the first group applies, the second, after it, is a no-op;
    each group's tasks read their own group's XComs (``first.apply``, ``again.apply``)."""
    root = _root(tmp_path, pgdb)
    dags = tmp_path / "dags"
    dags.mkdir()
    out = tmp_path / "xcoms.json"
    (dags / "user_dags.py").write_text(GROUPS_DAG.format(root=str(root), pg=PG_ID, conn=pgdb.conn_id, out=str(out)))
    env = _env(airflow_home, dags, pgdb)
    code = (
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "b = DagBag(dag_folder='.')\n"
        "out = {'errors': {k: str(v) for k, v in b.import_errors.items()}}\n"
        "for dag_id in ('user_pipeline', 'decorated'):\n"
        "    d = b.get_dag(dag_id)\n"
        "    out[dag_id] = {t.task_id: [sorted(t.upstream_task_ids), str(t.trigger_rule)] for t in d.tasks}\n"
        "g = b.get_dag('user_pipeline').get_task('again.apply')\n"
        "out['fields'] = [g.migration_id, g.conn_id, g.environment, g.bundles_root, list(type(g).template_fields)]\n"
        "print(json.dumps(out))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=dags, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(p.stdout.strip().splitlines()[-1])
    assert doc["errors"] == {}
    tasks = doc["user_pipeline"]
    assert tasks["again.preflight"][0] == ["first.receipt"]  # the group is one unit: first >> again
    assert tasks["again.rollback"] == [
        ["again.apply", "again.baseline_post", "again.diff_gate"],
        tasks["again.rollback"][1],
    ]
    assert tasks["again.rollback"][1].lower().endswith("one_failed")
    assert tasks["again.receipt"][1].lower().endswith("all_done")
    assert sorted(doc["decorated"]) == sorted(
        f"only.{t}" for t in ("preflight", "baseline_pre", "apply", "baseline_post", "diff_gate", "rollback", "receipt")
    )
    assert doc["fields"][:3] == ["{{ params.mid }}", "{{ params.conn }}", "dev"]
    assert doc["fields"][3] == str(root)
    assert {"migration_id", "conn_id", "environment"} <= set(doc["fields"][4])

    p = _dags_test(env, "user_pipeline")
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    xcoms = json.loads(out.read_text())
    assert xcoms["first"]["status"] == "succeeded" and xcoms["again"]["status"] == "noop"
    assert xcoms["first"]["receipt_digest"] != xcoms["again"]["receipt_digest"]
    assert pgdb.sql("SELECT 1 FROM pg_indexes WHERE indexname = 'parcels_geom_gist'")
    assert _receipt(root / "postgis" / PG_ID)["status"] == "noop"  # the second group's run, rendered and run


def test_build_dags_carries_bundles_root_to_the_task_run(
    pgdb: PgDatabase, airflow_home: dict[str, str], tmp_path: Path
) -> None:
    """A DAG file calling build_dags(registry_path=R, bundles_root=X) runs green with no
    KFM_BUNDLES_ROOT (nor [kfm_migrations] bundles_root) where the task runs: the tasks carry
    X (before, the DAG parsed and every task then looked for ./migrations)."""
    root = _root(tmp_path, pgdb)
    dags = tmp_path / "dags"
    dags.mkdir()
    registry = root / "registry" / "migrations.v1.json"
    (dags / "migrations_dag.py").write_text(
        "from airflow_kfm_migrations.dag_factory import build_dags\n\n"
        f"globals().update(build_dags(registry_path={str(registry)!r}, bundles_root={str(root)!r}))\n"
    )
    env = _env(airflow_home, dags, pgdb)
    assert not any(k in env for k in ("KFM_BUNDLES_ROOT", "KFM_REGISTRY_PATH", "AIRFLOW__KFM_MIGRATIONS__BUNDLES_ROOT"))
    p = _dags_test(env, "kfm_migration__" + PG_ID)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    assert _receipt(root / "postgis" / PG_ID)["status"] == "succeeded"
    assert pgdb.sql("SELECT 1 FROM pg_indexes WHERE indexname = 'parcels_geom_gist'")


def test_a_bundles_root_that_leads_nowhere_names_the_setting(airflow_home: dict[str, str], tmp_path: Path) -> None:
    """At parse: one DAG, kfm_migrations_config_error, whose doc names the setting to fix (the
    DAG file imports without error); when it runs: its task fails with that line."""
    dags = tmp_path / "dags"
    dags.mkdir()
    missing = tmp_path / "nowhere"
    (dags / "by_argument.py").write_text(
        "from airflow_kfm_migrations.dag_factory import build_dags\n\n"
        f"globals().update(build_dags(bundles_root={str(missing)!r}))\n"
    )
    code = (
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "b = DagBag(dag_folder='.')\n"
        "print(json.dumps({'errors': {k: str(v) for k, v in b.import_errors.items()},\n"
        "    'dags': {k: d.description for k, d in b.dags.items()}}))\n"
    )
    env = dict(airflow_home, AIRFLOW__CORE__DAGS_FOLDER=str(dags))
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=dags, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(p.stdout.strip().splitlines()[-1])
    assert doc["errors"] == {}
    assert list(doc["dags"]) == ["kfm_migrations_config_error"]
    line = doc["dags"]["kfm_migrations_config_error"]
    assert f"bundles_root {missing} is not a folder (the bundles_root= argument)" in line
    assert "[kfm_migrations] bundles_root, KFM_BUNDLES_ROOT or the bundles_root= argument" in line

    # The same through the variable, and through an existing folder without a registry.
    (dags / "by_argument.py").write_text(
        "from airflow_kfm_migrations.dag_factory import build_dags\n\nglobals().update(build_dags())\n"
    )
    missing.mkdir()
    env["KFM_BUNDLES_ROOT"] = str(missing)
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=dags, capture_output=True, text=True, timeout=300)
    doc = json.loads(p.stdout.strip().splitlines()[-1])
    assert doc["errors"] == {}
    assert f"bundles_root {missing} has no registry/migrations.v1.json (KFM_BUNDLES_ROOT)" in (
        doc["dags"]["kfm_migrations_config_error"]
    )
    subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "reserialize"], env=env, check=True, capture_output=True, timeout=300
    )
    p = _dags_test(env, "kfm_migrations_config_error")
    assert p.returncode != 0
    assert f"bundles_root {missing} has no registry/migrations.v1.json (KFM_BUNDLES_ROOT)" in p.stdout + p.stderr


def test_a_task_whose_bundles_root_leads_nowhere_fails_naming_the_setting(tmp_path: Path) -> None:
    from airflow_kfm_migrations.operators import ApplyOperator
    from airflow_kfm_migrations.operators.compat import AirflowFailException

    task = ApplyOperator(task_id="apply", migration_id=PG_ID, bundles_root=str(tmp_path / "gone"))
    with pytest.raises(AirflowFailException) as exc:
        task.resolved()
    assert str(exc.value) == (
        f"{PG_ID}: bundles_root {tmp_path / 'gone'} is not a folder (the bundles_root= argument): set "
        "[kfm_migrations] bundles_root, KFM_BUNDLES_ROOT or the bundles_root= argument to the folder that holds "
        "registry/migrations.v1.json"
    )
    task = ApplyOperator(task_id="apply", migration_id=PG_ID, registry_path=str(tmp_path / "reg.json"))
    with pytest.raises(AirflowFailException, match=r"registry_path .*reg\.json is not a file \(the registry_path= arg"):
        task.resolved()


def test_manual_rollback_dag_refuses_when_not_applied_then_rolls_back_an_applied_migration(
    pgdb: PgDatabase, airflow_home: dict[str, str], tmp_path: Path
) -> None:
    """kfm_migration_rollback: before any apply it fails, with a receipt (nothing to roll
    back); after the migration DAG applied, it rolls back: the store equals its state before
    the apply, the receipt verifies and keeps the reason, the ledger records the rollback."""
    from airflow_kfm_migrations.app.verify import verify

    before = pgdb.state(exclude_schemas=(LEDGER_SCHEMA,))
    root = _root(tmp_path, pgdb)
    artifacts = tmp_path / "artifacts"
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "migrations_dag.py").write_text(
        "from airflow_kfm_migrations.dag_factory import build_dags\n\n"
        f"globals().update(build_dags(bundles_root={str(root)!r}))\n"
    )
    env = _env(airflow_home, dags, pgdb, KFM_ARTIFACTS_ROOT=str(artifacts))
    conf = {"migration_id": PG_ID, "environment": "dev", "reason": "INC-42 parcels index bloats the nightly load"}

    p = _dags_test(env, "kfm_migration_rollback", conf)
    assert p.returncode != 0
    assert f"rollback of {PG_ID} refused: nothing to roll back" in p.stdout + p.stderr
    refused = _receipt(artifacts / PG_ID)
    assert refused["operation"] == "rollback" and refused["status"] == "noop"
    assert "nothing to roll back" in refused["reason"]
    assert pgdb.state(exclude_schemas=(LEDGER_SCHEMA,)) == before

    p = _dags_test(env, "kfm_migration__" + PG_ID)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    assert pgdb.sql("SELECT 1 FROM pg_indexes WHERE indexname = 'parcels_geom_gist'")

    p = _dags_test(env, "kfm_migration_rollback", conf)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    r = _receipt(artifacts / PG_ID)
    assert r["operation"] == "rollback" and r["status"] == "rolled_back"
    assert r["actor"].startswith("airflow:kfm_migration_rollback/")
    assert f"rollback requested by hand: {conf['reason']}" in r["policy"]
    assert verify(artifacts / PG_ID, bundle=root / "postgis" / PG_ID)
    assert not pgdb.sql("SELECT 1 FROM pg_indexes WHERE indexname = 'parcels_geom_gist'")
    assert pgdb.state(exclude_schemas=(LEDGER_SCHEMA,)) == before
    ledger = pgdb.sql(
        f"SELECT operation, status, receipt_digest, actor FROM {LEDGER_SCHEMA}.ledger "
        "WHERE migration_id = %s ORDER BY id",
        (PG_ID,),
    )
    assert [(op, st) for op, st, _d, _a in ledger] == [("apply", "succeeded"), ("rollback", "rolled_back")]
    assert ledger[-1][2] == r["receipt_digest"] and ledger[-1][3] == r["actor"]


def test_the_environment_of_a_run_argument_then_params_then_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_kfm_migrations.operators import PreflightOperator
    from airflow_kfm_migrations.operators.common import settings
    from airflow_kfm_migrations.operators.compat import AirflowFailException

    monkeypatch.setenv("KFM_ENVIRONMENT", "stage")
    s = settings()

    def env(argument: str | None, params: dict) -> str:
        task = PreflightOperator(task_id="preflight", migration_id=PG_ID, environment=argument)
        return task.environment_of(s, params)

    assert env("prod", {"environment": "dev"}) == "prod"  # the argument (rendered) first
    assert env(None, {"environment": "dev"}) == "dev"  # then the DAG run's params.environment
    assert env("", {}) == "stage"  # then KFM_ENVIRONMENT / [kfm_migrations] environment
    with pytest.raises(AirflowFailException) as exc:
        env("qa", {"environment": "dev"})
    assert str(exc.value) == f"{PG_ID}: environment 'qa' (the environment= argument) is not one of dev, stage, prod"


def test_cli_rollback_keeps_its_reason_like_the_rollback_dag(example: Path, pgdb: PgDatabase) -> None:
    from airflow_kfm_migrations.cli import main

    args = [str(example), "--conn-id", pgdb.conn_id, "--quiet"]
    assert main(["run", *args]) == 0
    assert main(["rollback", *args, "--reason", "  INC-42:\n parcels index  "]) == 0
    receipt = _receipt(example)
    assert receipt["operation"] == "rollback" and receipt["status"] == "rolled_back"
    assert receipt["policy"] == ["rollback requested by hand: INC-42: parcels index"]
