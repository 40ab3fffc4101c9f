"""One way to reach a store (issue #14): the same connection URI, given as ``AIRFLOW_CONN_<ID>``,
is resolved by the CLI's path and by the operators' path inside a real Airflow task
(``airflow dags test`` of a probe DAG), against the real PostGIS, OpenSearch, Elasticsearch
and Neo4j, and both reach the same server with the same settings: the ones the official
providers' hooks read from the connection. Plus the old extras' deprecation, values a URI
cannot carry, and a clean stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import PG_PASSWORD, PG_PORT, PG_USER, REPO, PgDatabase, port_open, server_missing
from conn_probe import probe, probe_all

from airflow_kfm_migrations.cli import main

pytestmark = [pytest.mark.postgis, pytest.mark.opensearch, pytest.mark.elasticsearch, pytest.mark.neo4j]

OS_PORT = int(os.environ.get("KFM_OPENSEARCH_PORT", "9200"))
ES_PORT = int(os.environ.get("KFM_ELASTICSEARCH_PORT", "9201"))
BOLT_PORT = int(os.environ.get("KFM_NEO4J_BOLT_PORT", "7687"))
TAG = uuid.uuid4().hex[:8]

PROBE_DAG = """
import json, os, sys
from pathlib import Path

import pendulum
from airflow.sdk import dag, get_current_context, task

sys.path.insert(0, os.environ["KFM_CONN_PROBE_PATH"])


@dag(dag_id="kfm_conn_probe", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False)
def kfm_conn_probe():
    @task
    def probe():
        from conn_probe import probe_all

        out = probe_all(json.loads(os.environ["KFM_CONN_PROBE_SPECS"]), use_hook=True)
        out["_task"] = get_current_context()["ti"].task_id  # ran as an Airflow task
        Path(os.environ["KFM_CONN_PROBE_OUT"]).write_text(json.dumps(out))

    probe()


kfm_conn_probe()
"""


def _servers() -> None:
    for port, name, script in (
        (PG_PORT, "PostgreSQL/PostGIS", "postgis"),
        (OS_PORT, "OpenSearch", "opensearch"),
        (ES_PORT, "Elasticsearch", "elasticsearch"),
        (BOLT_PORT, "Neo4j", "neo4j"),
    ):
        if not port_open(port):
            server_missing(name, f"bash scripts/stores/{script}.sh start")


def _connections(db: PgDatabase) -> dict[str, tuple[str, str, str]]:
    """name -> (kind, conn id, URI). Each sets extras the hooks read and today's CLI did not."""
    pg = f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{PG_PORT}/{db.name}"
    return {
        # libpq parameters in the extras, among them options -c: the hook passes them all.
        "pg_extras": (
            "postgis",
            f"kfm_conn_pg_x_{TAG}",
            f"{pg}?options=-c%20statement_timeout%3D4321&connect_timeout=7&sslmode=disable"
            f"&keepalives_idle=31&application_name=kfm-conn-{TAG}",
        ),
        # No extras: the package's defaults (connect_timeout, fallback_application_name) on both paths.
        "pg_plain": ("postgis", f"kfm_conn_pg_p_{TAG}", pg),
        "opensearch": (
            "search",
            f"kfm_conn_os_{TAG}",
            f"opensearch://127.0.0.1:{OS_PORT}?timeout=7&http_compress=true&opaque_id=kfm-conn-{TAG}",
        ),
        "elasticsearch": (
            "search",
            f"kfm_conn_es_{TAG}",
            f'elasticsearch://127.0.0.1:{ES_PORT}/http?__extra__={{"request_timeout": 45, "http_compress": true}}',
        ),
        # The Neo4j provider's default scheme is bolt://; neo4j_scheme asks for neo4j://.
        "neo4j_plain": ("graph", f"kfm_conn_neo_p_{TAG}", f"neo4j://127.0.0.1:{BOLT_PORT}"),
        "neo4j_routing": (
            "graph",
            f"kfm_conn_neo_r_{TAG}",
            f'neo4j://127.0.0.1:{BOLT_PORT}/neo4j?__extra__={{"neo4j_scheme": true, "encrypted": false}}',
        ),
    }


def _env(conns: dict[str, tuple[str, str, str]]) -> dict[str, str]:
    env = {f"AIRFLOW_CONN_{cid.upper()}": uri for _k, cid, uri in conns.values()}
    # The elasticsearch provider's setting for a server older than the client (8.19 vs 9).
    env["AIRFLOW__ELASTICSEARCH__ES_COMPAT_WITH"] = "8"
    return env


def _airflow_side(tmp_path: Path, env: dict[str, str], specs: list[list[str]]) -> dict[str, Any]:
    """The probe inside a real Airflow task: ``airflow dags test`` of a one-task DAG."""
    home, dags = tmp_path / "airflow-home", tmp_path / "dags"
    dags.mkdir()
    (dags / "kfm_conn_probe.py").write_text(PROBE_DAG)
    out = tmp_path / "airflow-side.json"
    full = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    full.update(
        env,
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
        KFM_CONN_PROBE_PATH=str(REPO / "tests"),
        KFM_CONN_PROBE_SPECS=json.dumps(specs),
        KFM_CONN_PROBE_OUT=str(out),
    )
    for argv in (["db", "migrate"], ["dags", "test", "kfm_conn_probe"]):
        p = subprocess.run(
            [sys.executable, "-m", "airflow", *argv], env=full, capture_output=True, text=True, timeout=600
        )
        assert p.returncode == 0, (argv, (p.stdout + p.stderr)[-4000:])
    return json.loads(out.read_text())


def test_cli_and_airflow_reach_the_same_server_with_the_same_settings(
    pgdb: PgDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _servers()
    conns = _connections(pgdb)
    env = _env(conns)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    specs = [[name, kind, cid] for name, (kind, cid, _u) in conns.items()]
    cli = probe_all(specs, use_hook=False)
    airflow = _airflow_side(tmp_path, env, specs)
    assert airflow.pop("_task") == "probe"

    for name in conns:
        assert "error" not in cli[name], (name, cli[name])
        assert cli[name] == airflow[name], name

    # ... and those settings are the ones the URI asks for, as the providers' hooks read them.
    p = cli["pg_extras"]
    assert p["params"]["options"] == "-c statement_timeout=4321"
    assert (p["params"]["connect_timeout"], p["params"]["sslmode"], p["params"]["keepalives_idle"]) == ("7", "disable", "31")
    assert p["server"][:5] == [pgdb.name, PG_PORT, PG_USER, f"kfm-conn-{TAG}", "4321ms"]
    assert p["server"][5] is False  # sslmode=disable
    plain = cli["pg_plain"]
    assert plain["params"]["connect_timeout"] == "10" and plain["server"][3] == "kfm-migrations"
    assert plain["server"][6] == p["server"][6]  # the same cluster

    assert cli["opensearch"]["connection"] == ["RequestsHttpConnection", f"http://127.0.0.1:{OS_PORT}", False, 7, True]
    assert cli["opensearch"]["opaque_id"] == f"kfm-conn-{TAG}"

    assert cli["elasticsearch"]["binding"] == "ElasticsearchBinding"
    assert cli["elasticsearch"]["node"] == ["http", "127.0.0.1", ES_PORT, True, True]

    assert cli["neo4j_plain"]["driver"] == "BoltDriver" and cli["neo4j_plain"]["database"] is None
    assert cli["neo4j_routing"]["driver"] == "Neo4jDriver" and cli["neo4j_routing"]["database"] == "neo4j"
    assert cli["neo4j_routing"]["encrypted"] is False
    assert cli["neo4j_plain"]["server"] == cli["neo4j_routing"]["server"]
    for name in ("neo4j_plain", "neo4j_routing"):
        assert cli[name]["hook"] == [cli[name]["driver"], cli[name]["encrypted"]]  # what Neo4jHook makes
    for name in ("pg_extras", "pg_plain"):
        assert cli[name]["differs_from_hook"] == []  # PostgresHook's parameters, plus the defaults


# ------------------------------------------------------------------ old extras and bad values


def _history(conn_id: str, kind: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["history", "--conn-id", conn_id, "--type", kind, "--format", "json"])
    out, err = capsys.readouterr()
    return code, out, err


def test_bolt_scheme_is_deprecated_with_one_warning_naming_neo4j_scheme(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if not port_open(BOLT_PORT):
        server_missing("Neo4j", "bash scripts/stores/neo4j.sh start")
    cid = f"kfm_conn_bolt_{TAG}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{cid.upper()}", f"neo4j://127.0.0.1:{BOLT_PORT}?bolt_scheme=true")
    code, out, err = _history(cid, "graph", capsys)
    assert code == 0 and json.loads(out)["entries"] == []
    lines = [line for line in err.splitlines() if "bolt_scheme" in line]
    assert len(lines) == 1 and "'bolt_scheme' is deprecated" in lines[0] and "neo4j_scheme" in lines[0]
    assert probe("graph", cid, use_hook=False)["driver"] == "BoltDriver"  # bolt_scheme=true: the default now


@pytest.mark.parametrize(
    ("kind", "uri", "field", "says"),
    [
        ("search", f"elasticsearch://kfm:s3cr3t-pw@127.0.0.1:{ES_PORT}?compatible_with=8", "compatible_with",
         "[elasticsearch] es_compat_with"),
        ("search", f"elasticsearch://kfm:s3cr3t-pw@127.0.0.1:{ES_PORT}?use_ssl=true", "use_ssl", "https"),
        ("search", f"elasticsearch://kfm:s3cr3t-pw@127.0.0.1:{ES_PORT}?request_timeout=60", "request_timeout",
         "not a string"),
        ("search", f"elasticsearch://kfm:s3cr3t-pw@127.0.0.1:{ES_PORT}?verify_cert=true", "verify_cert",
         "not a parameter of the Elasticsearch client"),
        ("search", "elasticsearch://kfm:s3cr3t-pw@127.0.0.1", "port", "needs the port"),
        ("graph", f"neo4j://kfm:s3cr3t-pw@127.0.0.1:{BOLT_PORT}?encrypted=false", "encrypted", "read as true"),
    ],
)
def test_extras_the_hook_cannot_use_are_refused_with_exit_2_naming_the_fix(
    kind: str, uri: str, field: str, says: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cid = f"kfm_conn_bad_{TAG}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{cid.upper()}", uri)
    monkeypatch.chdir(tmp_path)
    code, out, err = _history(cid, kind, capsys)
    assert code == 2 and not out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"AIRFLOW_CONN_{cid.upper()}: {field}: ") and says in lines[0]
    assert "s3cr3t-pw" not in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_an_unknown_connection_names_the_variable_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cid = f"kfm_conn_none_{TAG}"
    monkeypatch.delenv(f"AIRFLOW_CONN_{cid.upper()}", raising=False)
    code, out, err = _history(cid, "postgis", capsys)
    assert code == 1 and not out
    assert f"connection {cid!r} not found (set AIRFLOW_CONN_{cid.upper()}" in err


def test_cli_stdout_carries_only_its_result_once_airflow_is_imported(tmp_path: Path) -> None:
    """Airflow logs to stdout once imported (here: its secrets masker warns about the short
    extra values it will not mask); in the CLI only this package's warnings and errors are
    logged, to stderr."""
    if not port_open(OS_PORT):
        server_missing("OpenSearch", "bash scripts/stores/opensearch.sh start")
    cid = f"kfm_conn_out_{TAG}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": str(tmp_path / "airflow-home"),
            f"AIRFLOW_CONN_{cid.upper()}": f"opensearch://127.0.0.1:{OS_PORT}?timeout=7",
        }
    )
    p = subprocess.run(
        [sys.executable, "-m", "airflow_kfm_migrations.cli", "history", "--conn-id", cid, "--type", "search",
         "--format", "json"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert isinstance(json.loads(p.stdout), (dict, list))
    assert "Skipping masking" not in p.stdout + p.stderr  # Airflow's warnings are not the CLI user's
