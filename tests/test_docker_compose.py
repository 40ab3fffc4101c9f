"""docker/compose.yml: no Docker engine runs here, so check the file's shape and hygiene."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml
from conftest import REPO

COMPOSE = REPO / "docker" / "compose.yml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_for_airflow_and_every_store() -> None:
    services = _compose()["services"]
    assert set(services) == {"airflow", "postgis", "elasticsearch", "neo4j"}
    deps = services["airflow"]["depends_on"]
    assert all(deps[s]["condition"] == "service_healthy" for s in ("postgis", "elasticsearch", "neo4j"))
    assert all("healthcheck" in services[s] for s in ("postgis", "elasticsearch", "neo4j"))


def test_ports_bind_to_loopback_only() -> None:
    for name, svc in _compose()["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_no_secret_is_committed_in_the_compose_file() -> None:
    text = COMPOSE.read_text()
    # Passwords only come from the environment (.env), never as literals.
    for m in re.finditer(r"(?im)^\s*\w*password\w*:\s*(\S+)", text):
        assert m.group(1).startswith("${"), m.group(0)
    for m in re.finditer(r"://[^/\s:@]+:([^@\s]+)@", text):
        assert m.group(1).startswith("${"), m.group(0)


def test_airflow_is_configured_through_the_provider_section() -> None:
    env = _compose()["services"]["airflow"]["environment"]
    assert env["AIRFLOW__KFM_MIGRATIONS__BUNDLES_ROOT"] == "/opt/airflow/migrations"
    assert {"AIRFLOW_CONN_KFM_POSTGIS", "AIRFLOW_CONN_KFM_SEARCH", "AIRFLOW_CONN_KFM_GRAPH"} <= set(env)


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_compose_config_when_the_plugin_exists() -> None:
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the docker client has no compose plugin here")
    p = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True,
                       text=True, env={"KFM_PG_PASSWORD": "x", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
