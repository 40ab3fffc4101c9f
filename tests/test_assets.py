"""Asset events and OpenLineage of `apply` through a real Airflow (issue #14, part 4).

`airflow dags test` runs the example PostGIS DAG against a throwaway database; a second DAG
in the same DAGs folder is scheduled on the official postgres provider's URI of the table the
migration changes. The events, the downstream DAG's queue and the asset alias are read from
the test's own SQLite metadata database.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MIGRATIONS, PG_PORT, REPO, PgDatabase
from test_airflow import DAG_ID, PG_ID, _dags_test, _receipt, _world
from test_graph import BOLT_PORT, graph, neo4j_server  # noqa: F401  (fixtures: the example's graph)
from test_graph import CONN_ID as GRAPH_CONN_ID
from test_graph import MIG as GRAPH_ID
from test_graph import URI as GRAPH_URI
from test_search import CONN_ID as SEARCH_CONN_ID
from test_search import MIG as SEARCH_ID
from test_search import OS_PORT, cluster, os_client  # noqa: F401  (fixtures: a clean node, one test at a time)

pytestmark = pytest.mark.airflow
DOWNSTREAM = "kfm_test_downstream"
ALIAS = "kfm-migrations/" + PG_ID
DOWNSTREAM_DAG = f"""
import json, os
from airflow.sdk import DAG, Asset
from airflow.providers.standard.operators.empty import EmptyOperator

uris = json.loads(os.environ.get("KFM_TEST_DOWNSTREAM", "[]"))
if uris:
    with DAG({DOWNSTREAM!r}, schedule=[Asset(u) for u in uris]):
        EmptyOperator(task_id="consume")
"""


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("airflow-home")
    dags = home / "dags"
    dags.mkdir()
    shutil.copy(REPO / "dags" / "kfm_migrations.py", dags / "kfm_migrations.py")
    (dags / "downstream.py").write_text(DOWNSTREAM_DAG)
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__OPENLINEAGE__DISABLED": "True",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",  # a paused DAG is never queued
        }
    )
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True, timeout=300
    )
    return env


def test_uri_forms_per_store() -> None:
    """PostGIS: exactly what the postgres provider's own factory builds, unchanged by Airflow's
    normalisation. Search and graph (no provider registers a scheme): ours, host:port + path."""
    from airflow.providers.postgres.assets.postgres import create_asset
    from airflow.sdk import Asset

    from airflow_kfm_migrations.kinds import KINDS, Endpoint

    pg = Endpoint("postgres", "db.example", None, "gis", "kfm")
    uri = KINDS["postgis"].asset_uri(pg, "public/parcels")
    assert uri == "postgres://db.example:5432/gis/public/parcels"
    assert uri == create_asset(host="db.example", database="gis", schema="public", table="parcels").uri
    assert Asset(uri).uri == uri
    assert KINDS["postgis"].lineage_dataset(pg, "public/parcels") == (
        "postgres://db.example:5432",
        "gis.public.parcels",
    )
    assert KINDS["postgis"].asset_uri(Endpoint("postgres", "h", 6432, None, "kfm"), "a/b") == (
        "postgres://h:6432/kfm/a/b"  # no database named: libpq's default, the user's name
    )
    os_ep, es_ep = Endpoint("opensearch", "search.example", 9243), Endpoint("elasticsearch", "https://es.example", None)
    assert KINDS["search"].asset_uri(os_ep, "parcels") == "opensearch://search.example:9243/parcels"
    assert KINDS["search"].asset_uri(es_ep, "parcels") == "elasticsearch://es.example:9200/parcels"
    neo4j = KINDS["graph"]
    assert neo4j.asset_uri(Endpoint("neo4j", "g.example", None), "Dataset") == "neo4j://g.example:7687/neo4j/Dataset"
    assert neo4j.asset_uri(Endpoint("bolt", "g", 7688, "kfm"), "Dataset") == "neo4j://g:7688/kfm/Dataset"
    for u in ("opensearch://search.example:9243/parcels", "neo4j://g:7688/kfm/Dataset"):
        assert Asset(u).uri == u


def _official_uri(db: PgDatabase, table: str = "parcels") -> str:
    return f"postgres://127.0.0.1:{PG_PORT}/{db.name}/public/{table}"


def _metadata(env: dict[str, str], sql: str, params: tuple = ()) -> list[tuple]:
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as c:
        return c.execute(sql, params).fetchall()


def _events(env: dict[str, str], db: PgDatabase) -> list[tuple[str, dict]]:
    """Asset events of this test's database (by any URI form naming it: the old scheme named
    the connection id, ``kfm_test_<database>``)."""
    rows = _metadata(
        env,
        "SELECT a.uri, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.uri LIKE ? ORDER BY e.id",
        (f"%{db.name}%",),
    )
    return [(uri, json.loads(extra) if isinstance(extra, str) else extra) for uri, extra in rows]


def _queued(env: dict[str, str], db: PgDatabase) -> list[tuple[str, str]]:
    return _metadata(
        env,
        "SELECT a.uri, q.target_dag_id FROM asset_dag_run_queue q JOIN asset a ON a.id = q.asset_id WHERE a.uri LIKE ?",
        (f"%{db.name}%",),
    )


def test_a_change_fires_the_official_uri_and_queues_the_downstream_dag_a_noop_fires_nothing(
    pgdb: PgDatabase, airflow_env: dict[str, str], tmp_path: Path
) -> None:
    uri = _official_uri(pgdb)
    env = _world(tmp_path, pgdb, dict(airflow_env, KFM_TEST_DOWNSTREAM=json.dumps([uri])))
    p = _dags_test(env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = _receipt(tmp_path)
    assert r["status"] == "succeeded"
    events = _events(env, pgdb)
    assert [u for u, _ in events] == [uri]  # exactly the changed table, in the provider's form
    extra = events[0][1]
    assert extra == {
        "migration_id": PG_ID,
        "run_id": r["run_id"],
        "receipt_digest": _receipt_digest(tmp_path),
        "bundle_digest": r["bundle_digest"],
        "environment": "dev",
        "store": "postgis",
    }
    assert _queued(env, pgdb) == [(uri, DOWNSTREAM)]  # the downstream DAG gets a run
    # Through the migration's alias, which now resolves to the table.
    assert _metadata(
        env,
        "SELECT a.uri FROM asset_alias al JOIN asset_alias_asset aa ON aa.alias_id = al.id "
        "JOIN asset a ON a.id = aa.asset_id WHERE al.name = ? AND a.uri LIKE ?",
        (ALIAS, f"%{pgdb.name}%"),
    ) == [(uri,)]
    _metadata(env, "DELETE FROM asset_dag_run_queue")  # as the scheduler does when it creates the run

    p = _dags_test(env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert _receipt(tmp_path)["status"] == "noop"
    assert len(_events(env, pgdb)) == 1  # no new event
    assert _queued(env, pgdb) == []  # and nothing queued downstream


def _receipt_digest(tmp_path: Path) -> str:
    from airflow_kfm_migrations.engine.receipts import receipt_digest

    return receipt_digest(_receipt(tmp_path))


def test_a_dry_run_fires_nothing(pgdb: PgDatabase, airflow_env: dict[str, str], tmp_path: Path) -> None:
    uri = _official_uri(pgdb)
    env = _world(tmp_path, pgdb, dict(airflow_env, KFM_TEST_DOWNSTREAM=json.dumps([uri])))
    p = _dags_test(env, "-c", json.dumps({"dry_run": True}))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "rehearsed in a transaction that was rolled back" in p.stdout + p.stderr
    assert not pgdb.sql("SELECT 1 FROM pg_indexes WHERE indexname = 'parcels_geom_gist'")
    assert _events(env, pgdb) == []
    assert _queued(env, pgdb) == []


def test_a_refused_run_fires_nothing(pgdb: PgDatabase, airflow_env: dict[str, str], tmp_path: Path) -> None:
    uri = _official_uri(pgdb)
    env = _world(
        tmp_path,
        pgdb,
        dict(airflow_env, KFM_TEST_DOWNSTREAM=json.dumps([uri, _official_uri(pgdb, "authority_sites")])),
        extra_sql="DO $$ BEGIN EXECUTE 'UPDATE public.authority_sites SET name = ''x'''; END $$;",
    )
    # apply's one outlet is the migration's alias (registered when the DAG was serialized)
    assert _metadata(env, "SELECT name FROM asset_alias WHERE name = ?", (ALIAS,)) == [(ALIAS,)]
    p = _dags_test(env)
    assert p.returncode != 0
    r = _receipt(tmp_path)
    assert r["status"] == "failed" and "gate refused" in r["reason"]
    assert _events(env, pgdb) == []
    assert _queued(env, pgdb) == []


def test_openlineage_complete_event_names_the_changed_table(
    pgdb: PgDatabase, airflow_env: dict[str, str], tmp_path: Path
) -> None:
    """With the OpenLineage provider on (file transport), the COMPLETE event of `apply` lists
    the changed table as an output, named the OpenLineage way, with its columns and change."""
    events_file = tmp_path / "openlineage.ndjson"
    env = _world(
        tmp_path,
        pgdb,
        dict(
            airflow_env,
            AIRFLOW__OPENLINEAGE__DISABLED="False",
            AIRFLOW__OPENLINEAGE__TRANSPORT=json.dumps(
                {"type": "file", "log_file_path": str(events_file), "append": True}
            ),
        ),
    )
    p = _dags_test(env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
    complete = [e for e in events if e["eventType"] == "COMPLETE" and e["job"]["name"] == f"{DAG_ID}.apply"]
    assert len(complete) == 1, [(e["eventType"], e["job"]["name"]) for e in events]
    assert complete[0]["inputs"] == []
    outputs = complete[0]["outputs"]
    assert [(o["namespace"], o["name"]) for o in outputs] == [
        (f"postgres://127.0.0.1:{PG_PORT}", f"{pgdb.name}.public.parcels")
    ]
    facets = outputs[0]["facets"]
    assert facets["lifecycleStateChange"]["lifecycleStateChange"] == "ALTER"
    assert [f["name"] for f in facets["schema"]["fields"]] == ["geom", "id", "name"]
    assert "kfm-local-only" not in events_file.read_text()


BLOCK_OPENLINEAGE = """
import sys
class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name == "openlineage" or name.startswith(("openlineage.", "airflow.providers.openlineage.")):
            if not name.endswith(".get_provider_info"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NotInstalled())
"""


def test_apply_without_the_openlineage_provider_still_emits_its_events(
    pgdb: PgDatabase, airflow_env: dict[str, str], tmp_path: Path
) -> None:
    uri = _official_uri(pgdb)
    env = _world(tmp_path, pgdb, dict(airflow_env, KFM_TEST_DOWNSTREAM=json.dumps([uri])))
    code = BLOCK_OPENLINEAGE + (
        "import json\n"
        "try:\n    from airflow.dag_processing.dagbag import DagBag\nexcept ImportError:  # Airflow 3.1\n    from airflow.models.dagbag import DagBag\n"
        "b = DagBag(dag_folder=__import__('os').environ['AIRFLOW__CORE__DAGS_FOLDER'])\n"
        "assert not b.import_errors, b.import_errors\n"
        f"dr = b.get_dag({DAG_ID!r}).test()\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('openlineage', 'airflow.providers.openlineage.'))\n"
        "                and not m.endswith('.get_provider_info'))\n"
        "print(json.dumps({'state': str(dr.state), 'openlineage': loaded}))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["state"] == "success" and out["openlineage"] == []
    assert [u for u, _ in _events(env, pgdb)] == [uri]


def test_a_committed_run_whose_asset_uris_cannot_be_built_still_succeeds(
    pgdb: PgDatabase, airflow_env: dict[str, str], tmp_path: Path
) -> None:
    """The events come after the commit: when they cannot be built (here the connection's
    endpoint lookup raises), the task logs it and succeeds, rather than failing a committed
    run into the rollback path."""
    env = _world(tmp_path, pgdb, airflow_env)
    code = (
        "import json, os\n"
        "try:\n    from airflow.dag_processing.dagbag import DagBag\nexcept ImportError:  # Airflow 3.1\n    from airflow.models.dagbag import DagBag\n"
        "from airflow_kfm_migrations.operators import lineage\n"
        "def unreadable(conn_id):\n"
        "    raise RuntimeError('no endpoint')\n"
        "lineage.endpoint = unreadable\n"
        "b = DagBag(dag_folder=os.environ['AIRFLOW__CORE__DAGS_FOLDER'])\n"
        "assert not b.import_errors, b.import_errors\n"
        f"dr = b.get_dag({DAG_ID!r}).test()\n"
        "print(json.dumps({'state': str(dr.state), 'tasks': {ti.task_id: str(ti.state) "
        "for ti in dr.get_task_instances()}}))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["state"] == "success", out
    assert out["tasks"]["apply"].lower().endswith("success") and out["tasks"]["rollback"].lower().endswith("skipped")
    assert "asset events not emitted: RuntimeError" in p.stdout + p.stderr
    assert _receipt(tmp_path)["status"] == "succeeded"
    assert _events(env, pgdb) == []


def _search_world(
    tmp_path: Path,
    env: dict[str, str],
    kind: str = "search",
    mig: str = SEARCH_ID,
    conn: tuple[str, str] = (SEARCH_CONN_ID, f"opensearch://127.0.0.1:{OS_PORT}"),
) -> dict[str, str]:
    root = tmp_path / "migrations"
    shutil.copytree(
        MIGRATIONS / kind / mig,
        root / kind / mig,
        ignore=shutil.ignore_patterns("baselines", "diffs", "receipts"),
    )
    reg = json.loads((MIGRATIONS / "registry" / "migrations.v1.json").read_text())
    entry = next(e for e in reg["migrations"] if e["migration_id"] == mig)
    entry["conn_id"] = conn[0]
    (root / "registry").mkdir(parents=True)
    (root / "registry" / "migrations.v1.json").write_text(
        json.dumps({"schema_version": "migrations.v1", "migrations": [entry]})
    )
    out = dict(env, KFM_BUNDLES_ROOT=str(root), KFM_ARTIFACTS_ROOT=str(tmp_path / "artifacts"))
    out[f"AIRFLOW_CONN_{conn[0].upper()}"] = conn[1]
    subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "reserialize"], env=out, check=True, capture_output=True, timeout=300
    )
    return out


@pytest.mark.opensearch
@pytest.mark.usefixtures("cluster")
def test_a_blue_green_flip_fires_the_alias_and_the_new_index(airflow_env: dict[str, str], tmp_path: Path) -> None:
    """OpenSearch: the flip fires the alias and the index it now points to, in our documented
    form; the old index and the untouched protected index fire nothing; a no-op re-run neither."""
    base = f"opensearch://127.0.0.1:{OS_PORT}"
    env = _search_world(tmp_path, dict(airflow_env, KFM_TEST_DOWNSTREAM=json.dumps([f"{base}/parcels"])))
    dag_id = "kfm_migration__" + SEARCH_ID
    cmd = [sys.executable, "-m", "airflow", "dags", "test", dag_id]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    events = _metadata(
        env,
        "SELECT a.uri, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.uri LIKE ? ORDER BY a.uri",
        (f"{base}/%",),
    )
    assert [u for u, _ in events] == [f"{base}/parcels", f"{base}/parcels_v2"]
    assert {json.loads(x)["store"] for _, x in events} == {"search"}
    assert _metadata(
        env,
        "SELECT q.target_dag_id FROM asset_dag_run_queue q JOIN asset a ON a.id = q.asset_id WHERE a.uri = ?",
        (f"{base}/parcels",),
    ) == [(DOWNSTREAM,)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    again = _metadata(
        env, "SELECT count(*) FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.uri LIKE ?", (f"{base}/%",)
    )
    assert again == [(2,)]


@pytest.mark.opensearch
@pytest.mark.usefixtures("cluster")
def test_openlineage_of_a_reindex_reads_the_source_and_writes_the_new_index_and_alias(
    airflow_env: dict[str, str], tmp_path: Path
) -> None:
    events_file = tmp_path / "openlineage.ndjson"
    env = _search_world(
        tmp_path,
        dict(
            airflow_env,
            AIRFLOW__OPENLINEAGE__DISABLED="False",
            AIRFLOW__OPENLINEAGE__TRANSPORT=json.dumps(
                {"type": "file", "log_file_path": str(events_file), "append": True}
            ),
        ),
    )
    dag_id = "kfm_migration__" + SEARCH_ID
    p = subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", dag_id], env=env, capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
    (complete,) = [e for e in events if e["eventType"] == "COMPLETE" and e["job"]["name"] == f"{dag_id}.apply"]
    namespace = f"opensearch://127.0.0.1:{OS_PORT}"
    assert [(d["namespace"], d["name"]) for d in complete["inputs"]] == [(namespace, "parcels_v1")]
    outputs = {d["name"]: d for d in complete["outputs"]}
    assert sorted(outputs) == ["parcels", "parcels_v2"] and {d["namespace"] for d in outputs.values()} == {namespace}
    assert outputs["parcels_v2"]["facets"]["lifecycleStateChange"]["lifecycleStateChange"] == "CREATE"


@pytest.mark.neo4j
@pytest.mark.usefixtures("graph")
def test_a_graph_relabel_fires_its_labels(airflow_env: dict[str, str], tmp_path: Path) -> None:
    """Neo4j: the example's constraint and relabel fire the labels it changed, in our
    documented form (the connection names no database: the server's default, neo4j)."""
    base = f"neo4j://127.0.0.1:{BOLT_PORT}/neo4j"
    env = _search_world(
        tmp_path,
        dict(airflow_env, KFM_TEST_DOWNSTREAM=json.dumps([f"{base}/Dataset"])),
        "graph",
        GRAPH_ID,
        (GRAPH_CONN_ID, GRAPH_URI),
    )
    cmd = [sys.executable, "-m", "airflow", "dags", "test", "kfm_migration__" + GRAPH_ID]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    events = _metadata(
        env,
        "SELECT a.uri FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.uri LIKE ? ORDER BY a.uri",
        (f"{base}/%",),
    )
    assert events == [(f"{base}/Dataset",), (f"{base}/LegacyDataset",)]
    assert _metadata(
        env,
        "SELECT q.target_dag_id FROM asset_dag_run_queue q JOIN asset a ON a.id = q.asset_id WHERE a.uri = ?",
        (f"{base}/Dataset",),
    ) == [(DOWNSTREAM,)]
