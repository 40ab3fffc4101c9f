"""The core without any store stack (issue #14): with psycopg, neo4j, opensearch-py,
elasticsearch and their Airflow providers made unimportable, ``validate``, ``plan`` and the
DAG file's DAG building work; a run of a kind whose extra is missing fails with one line naming
the ``pip install``, exit 1, with a receipt; and its DAG's preflight fails the same way."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import MIGRATIONS, REPO

# Raises ModuleNotFoundError for every store package, as if it were not installed. The
# providers' distributions stay visible to Airflow's provider discovery, which loads their
# ``get_provider_info``; everything else of them is blocked. (scripts/lowest-airflow.sh checks a
# venv where they are really absent.)
PRELUDE = """
import sys
_BLOCKED = ("psycopg", "psycopg2", "psycopg_binary", "psycopg_c", "neo4j", "neo4j_rust_ext", "opensearchpy",
            "elasticsearch", "elastic_transport", "airflow.providers.postgres.", "airflow.providers.common.sql.",
            "airflow.providers.neo4j.", "airflow.providers.opensearch.", "airflow.providers.elasticsearch.")
def _blocked(name):
    if name.endswith(".get_provider_info"):
        return False
    return any(name.startswith(b) if b.endswith(".") else (name == b or name.startswith(b + ".")) for b in _BLOCKED)
class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if _blocked(name):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NotInstalled())
for _m in [m for m in sys.modules if _blocked(m)]:
    del sys.modules[_m]
try:
    import psycopg
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("the prelude did not block psycopg")
"""
CLI = PRELUDE + (
    "sys.argv = ['kfm-migrations', *sys.argv[1:]]\n"
    "from airflow_kfm_migrations.cli import main\n"
    "rc = main()\n"
    "assert not [m for m in sys.modules if _blocked(m)]\n"
    "sys.exit(rc)\n"
)
GRAPH = "GRAPH-MIG-2026-03-03-01"
SEARCH = "SEARCH-MIG-2026-03-02-01"


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(tmp_path / "airflow-home"),
        KFM_BUNDLES_ROOT=str(tmp_path / "migrations"),
        KFM_ARTIFACTS_ROOT=str(tmp_path / "artifacts"),
        KFM_PARSE_CACHE="off",
        AIRFLOW_CONN_KFM_GRAPH="neo4j://neo4j:unused@127.0.0.1:1",
        AIRFLOW_CONN_KFM_SEARCH="opensearch://127.0.0.1:1",
    )
    return env


def _kfm(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLI, *args],
        env=_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _world(tmp_path: Path) -> Path:
    root = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, root, symlinks=True, ignore=shutil.ignore_patterns("baselines", "diffs", "receipts"))
    return root


def test_validate_and_plan_need_no_store_stack(tmp_path: Path) -> None:
    root = _world(tmp_path)
    p = _kfm(tmp_path, "validate", str(root))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for kind, mid in (("search", SEARCH), ("graph", GRAPH), ("postgis", "PG-MIG-2026-02-28-01")):
        p = _kfm(tmp_path, "plan", str(root / kind / mid), "--format", "json")
        assert p.returncode == 0, (kind, p.stdout[-2000:] + p.stderr[-2000:])
        plan = json.loads(p.stdout)
        assert plan["migration_id"] == mid and plan["statements"] and not plan["refused"]


def test_the_dag_file_builds_every_dag_without_store_stacks(tmp_path: Path) -> None:
    root = _world(tmp_path)
    code = PRELUDE + (
        "import runpy\n"
        f"ns = runpy.run_path({str(REPO / 'dags' / 'kfm_migrations.py')!r})\n"
        "dags = {k: v for k, v in ns.items() if k.startswith('kfm_migration__')}\n"
        "print(sorted(dags))\n"
        "for d in dags.values():\n"
        "    assert 'preflight' in d.task_dict and 'apply' in d.task_dict, d.dag_id\n"
        "    assert 'Broken bundle' not in (d.doc_md or ''), d.doc_md\n"
        "from airflow_kfm_migrations.stores.base import missing_packages\n"
        "print(missing_packages('graph', use_hook=True))\n"
        "print(missing_packages('search', use_hook=True))\n"
        "assert not [m for m in sys.modules if _blocked(m)]\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    dags, graph, search = p.stdout.strip().splitlines()[-3:]
    registry = json.loads((root / "registry" / "migrations.v1.json").read_text())
    assert dags == str(sorted("kfm_migration__" + e["migration_id"] for e in registry["migrations"]))
    assert graph.endswith("pip install 'airflow-kfm-migrations[neo4j]'") and "(neo4j" in graph
    assert "pip install 'airflow-kfm-migrations[opensearch]'" in search
    assert "pip install 'airflow-kfm-migrations[elasticsearch]'" in search


def test_a_run_without_the_extra_fails_with_one_line_and_a_receipt(tmp_path: Path) -> None:
    root = _world(tmp_path)
    art = tmp_path / "run-artifacts"
    p = _kfm(tmp_path, "run", str(root / "graph" / GRAPH), "--env", "dev", "--conn-id", "kfm_graph",
             "--artifacts", str(art))
    out = p.stdout + p.stderr
    assert p.returncode == 1, out[-3000:]
    assert "Traceback" not in out
    hint = "the graph store needs packages that are not installed (neo4j); pip install 'airflow-kfm-migrations[neo4j]'"
    assert any(line.strip().endswith(hint) for line in out.splitlines()), out[-3000:]
    receipt = json.loads((art / "receipts" / "run_receipt.json").read_text())
    assert receipt["status"] == "failed" and hint in receipt["reason"]
