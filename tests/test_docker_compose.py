"""docker/compose.yml and docker/Dockerfile: no Docker engine runs here, so check the files'
shape and hygiene, and that they agree with the rest of the project: the image's Airflow and
Python are the lock's, the store servers are the versions the tests run against
(scripts/stores/*.sh), the connections use the providers' extras (docs/connections.md), and
every example migration's world is seeded before Airflow starts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml
from conftest import MIGRATIONS, REPO

from airflow_kfm_migrations.kinds import KINDS, kind_of_conn_type

COMPOSE = REPO / "docker" / "compose.yml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
SEED = REPO / "scripts" / "demo" / "seed.py"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_for_airflow_and_every_store() -> None:
    services = _compose()["services"]
    assert set(services) == {"airflow", "postgis", "elasticsearch", "neo4j", "seed"}
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


# ------------------------------------------------------------------ consistency with the project


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and not line.startswith("#"):
            pins[name.lower()] = version.split(";")[0].strip()
    return pins


def _uri(value: str) -> str:
    """A connection URI of the compose file with its ``${VAR...}`` placeholders filled in."""
    return re.sub(r"\$\{[^}]*\}", "placeholder", value)


def _image(service: str) -> tuple[str, str]:
    name, _, tag = _compose()["services"][service]["image"].rpartition(":")
    return name, tag


def _script_default(script: str, pattern: str) -> str:
    m = re.search(pattern, (REPO / "scripts" / "stores" / script).read_text(), re.M)
    assert m, (script, pattern)
    return m.group(1)


def test_the_airflow_image_is_the_locked_airflow_on_the_locked_python() -> None:
    base = re.search(r"^FROM apache/airflow:(\S+)-python(\d+\.\d+)\s*$", DOCKERFILE.read_text(), re.M)
    assert base, "docker/Dockerfile: FROM apache/airflow:<version>-python<X.Y>"
    assert base.group(1) == _lock()["apache-airflow"]
    setup_python = _script_default("../setup.sh", r"^PY=\$\{KFM_PYTHON:-python(\d+\.\d+)\}")
    assert base.group(2) == setup_python  # the interpreter the lock is resolved and tested with


def test_the_image_installs_the_stores_extras_pinned_by_the_lock() -> None:
    run = " ".join(DOCKERFILE.read_text().replace("\\\n", " ").split())
    m = re.search(r'pip install .*--constraint /opt/kfm-src/requirements\.lock .*"/opt/kfm-src\[([a-z0-9,]+)\]"', run)
    assert m, "docker/Dockerfile: pip install --constraint requirements.lock '/opt/kfm-src[<extras>]'"
    extras = set(m.group(1).split(","))
    env = _compose()["x-airflow-env"]
    for var, uri in env.items():
        if not var.startswith("AIRFLOW_CONN_"):
            continue
        scheme = urlsplit(_uri(uri)).scheme
        kind = kind_of_conn_type(scheme)
        assert kind, (var, scheme)
        # the extra that brings this connection type's client and provider
        wanted = {extra for extra, _c, _h in KINDS[kind].clients}
        if kind == "search":
            wanted = {"elasticsearch" if scheme in ("elasticsearch", "elastic") else "opensearch"}
        assert wanted <= extras, (var, wanted, extras)
    ignore = (REPO / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore and not {"scripts", "airflow_kfm_migrations"} & set(ignore)


def test_elasticsearch_server_is_the_tested_version_and_the_client_is_told_its_major() -> None:
    _name, tag = _image("elasticsearch")
    tested = _script_default("elasticsearch.sh", r'^VERSION="\$\{KFM_ELASTICSEARCH_VERSION:-([0-9.]+)\}"')
    assert tag == tested
    server_major = int(tag.split(".")[0])
    client_major = int(_lock()["elasticsearch"].split(".")[0])
    env = _compose()["x-airflow-env"]
    if server_major < client_major:
        assert env.get("AIRFLOW__ELASTICSEARCH__ES_COMPAT_WITH") == str(server_major)
    else:
        assert "AIRFLOW__ELASTICSEARCH__ES_COMPAT_WITH" not in env


def test_neo4j_and_postgis_servers_are_the_tested_majors() -> None:
    _name, neo = _image("neo4j")
    assert re.search(r"Neo4j (\d+\.\d+) LTS", (REPO / "scripts" / "stores" / "neo4j.sh").read_text()).group(1) == neo.split("-")[0]
    _name, pg = _image("postgis")
    pg_major, postgis = pg.split("-")
    assert pg_major == _script_default("postgis.sh", r"^PGVER=(\d+)$")
    assert postgis.split(".")[0] == "3"  # postgis.sh installs postgresql-<PGVER>-postgis-3


def test_connections_use_the_providers_extras_only() -> None:
    deprecated = {"bolt_scheme", "compatible_with", "use_ssl", "timeout"}
    for var, uri in _compose()["x-airflow-env"].items():
        if var.startswith("AIRFLOW_CONN_"):
            parts = urlsplit(_uri(uri))
            assert parts.port, (var, "the providers need the port")
            assert not deprecated & {k for k, _v in parse_qsl(parts.query)}, var


def test_every_example_world_is_seeded_before_airflow_starts() -> None:
    services = _compose()["services"]
    seed = services["seed"]
    assert seed["entrypoint"] == ["python", "/opt/kfm-src/scripts/demo/seed.py"]
    assert seed["build"] == services["airflow"]["build"] and seed["image"] == services["airflow"]["image"]
    assert all(seed["depends_on"][s]["condition"] == "service_healthy" for s in ("postgis", "elasticsearch", "neo4j"))
    assert services["airflow"]["depends_on"]["seed"]["condition"] == "service_completed_successfully"
    registry = json.loads((MIGRATIONS / "registry" / "migrations.v1.json").read_text())
    kinds = {e["type"] for e in registry["migrations"]}
    assert kinds <= set(seed["command"])
    # Each example connection id is one the compose defines.
    env = services["airflow"]["environment"]
    for e in registry["migrations"]:
        assert f"AIRFLOW_CONN_{(e.get('conn_id') or KINDS[e['type']].default_conn_id).upper()}" in env
    # What the example forward scripts start from is created by seed.py.
    seeded = SEED.read_text()
    for e in registry["migrations"]:
        folder = MIGRATIONS / e["type"] / e["migration_id"]
        if e["type"] == "postgis":
            needs = set(re.findall(r"\bON\s+(?:public\.)?(\w+)", (folder / "forward.sql").read_text(), re.I))
            assert all(f"public.{t}" in seeded for t in needs), needs
        elif e["type"] == "search":
            doc = json.loads((folder / "forward.json").read_text())
            needs = {a["reindex"]["source"] for a in doc["actions"] if "reindex" in a}
            needs |= {
                op["remove"]["index"] for a in doc["actions"] if "aliases" in a for op in a["aliases"]["actions"]
                if "remove" in op
            }
            assert all(f'"{ix}"' in seeded for ix in needs), needs
        elif e["type"] == "graph":
            needs = set(re.findall(r"MATCH \(\w+:(\w+)\)", (folder / "forward.cypher").read_text()))
            assert all(f":{label} " in seeded for label in needs), needs
