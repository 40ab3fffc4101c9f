"""The package on the lowest supported Airflow with only the [postgis] extra (issue #14):
scripts/lowest-airflow.sh builds the wheel, installs it with apache-airflow==3.1.x into a fresh
venv, checks that no other store's stack came with it, and runs the PostGIS example DAG through
``airflow dags test`` against the local PostGIS (and the graph DAG, which must fail in preflight
naming the pip install). With CI=true a missing server or python3.11 fails the test."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from conftest import PG_PORT, REPO, port_open, server_missing

pytestmark = [pytest.mark.postgis, pytest.mark.airflow]


def test_lowest_airflow_with_postgis_only(tmp_path_factory: pytest.TempPathFactory) -> None:
    if not port_open(PG_PORT):
        server_missing("PostgreSQL/PostGIS", "bash scripts/stores/postgis.sh start")
    if shutil.which(os.environ.get("KFM_PYTHON", "python3.11")) is None:
        server_missing("python3.11", "bash scripts/setup.sh")
    work = tmp_path_factory.mktemp("lowest-airflow")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "KFM_BUNDLES", "KFM_ARTIFACTS"))}
    env["KFM_LOWEST_WORK"] = str(work)
    uv = REPO / ".venv" / "bin" / "uv"
    env.setdefault("UV", str(uv) if uv.exists() else "uv")
    p = subprocess.run(
        ["bash", str(REPO / "scripts" / "lowest-airflow.sh")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]
    assert "lowest-airflow: ok: Airflow 3.1." in out
    installed = (work / "installed.txt").read_text().lower().splitlines()
    names = {line.split("==")[0] for line in installed if "==" in line}
    assert "apache-airflow-providers-postgres" in names and "psycopg" in names
    assert not names & {
        "neo4j",
        "opensearch-py",
        "elasticsearch",
        "apache-airflow-providers-neo4j",
        "apache-airflow-providers-opensearch",
        "apache-airflow-providers-elasticsearch",
    }
