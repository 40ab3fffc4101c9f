"""The DAG factory's parse-time shortcuts (issue 4) change nothing but speed.

- Tasks copied from a prototype DAG serialize exactly like tasks built by the operator
  constructors, and hold the same state (with their own params and containers).
- The declaration cache is used only on a content-hash match: an edited declaration is
  parsed again, a corrupt or foreign cache file is rebuilt, and a broken bundle still breaks
  only its own DAG, with its reason, whether or not the cache is present.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import MIGRATIONS

pytestmark = pytest.mark.airflow

PG = "PG-MIG-2026-02-28-01"


def _add_pg(root: Path, reg: dict[str, Any], mid: str, **entry: Any) -> Path:
    dst = root / "postgis" / mid
    shutil.copytree(root / "postgis" / PG, dst)
    (dst / "migration.yml").write_text((dst / "migration.yml").read_text().replace(PG, mid))
    base = next(e for e in reg["migrations"] if e["migration_id"] == PG)
    reg["migrations"].append(dict(base, migration_id=mid, path=f"postgis/{mid}", **entry))
    return dst


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every shape: postgis (several owners and connections, one with a backfill, one with
    another table), search with a schedule, graph, a broken bundle and a missing one."""
    root = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, root, ignore=shutil.ignore_patterns("fixtures", "baselines", "diffs", "receipts"))
    reg_path = root / "registry" / "migrations.v1.json"
    reg = json.loads(reg_path.read_text())
    for e in reg["migrations"]:
        if e["type"] == "search":
            e["schedule"] = "0 3 * * *"
    _add_pg(root, reg, "PG-MIG-2026-02-28-02", owner="team-b", conn_id="pg_other")
    third = _add_pg(root, reg, "PG-MIG-2026-02-28-03", conn_id=None)
    doc = yaml.safe_load((third / "migration.yml").read_text())
    doc["scope"]["allowed_tables"] = ["parcels", "other.roads", "items"]
    doc["runner"]["conn_id"] = "pg_from_runner"
    (third / "migration.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    for n in (4, 5):
        bf = _add_pg(root, reg, f"PG-MIG-2026-02-28-0{n}", owner=f"team-{n}")
        doc = yaml.safe_load((bf / "migration.yml").read_text())
        doc["limits"]["max_row_backfill"] = 10
        doc["backfill"] = {"table": "public.parcels", "key_column": "id", "set": "x = 1", "max_rows": 10}
        (bf / "migration.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    broken = _add_pg(root, reg, "PG-MIG-2026-02-28-06")
    (broken / "migration.yml").write_text("type: [unclosed\n")
    base = next(e for e in reg["migrations"] if e["migration_id"] == PG)
    reg["migrations"].append(dict(base, migration_id="PG-MIG-2026-02-28-07", path="postgis/PG-MIG-2026-02-28-07"))
    reg_path.write_text(json.dumps(reg))
    monkeypatch.setenv("KFM_BUNDLES_ROOT", str(root))
    monkeypatch.setenv("KFM_PARSE_CACHE", str(tmp_path / "cache"))
    return root


def _build(root: Path, **kw: Any) -> dict[str, Any]:
    from airflow_kfm_migrations.dag_factory import build_dags

    return build_dags(root / "registry" / "migrations.v1.json", root, "dev", **kw)


def _serialized(dag: Any) -> dict[str, Any]:
    try:
        from airflow.serialization.serialized_objects import DagSerialization
    except ImportError:  # Airflow < 3.2
        from airflow.serialization.serialized_objects import SerializedDAG as DagSerialization

    doc = DagSerialization.to_dict(dag)
    doc["dag"].pop("fileloc", None)  # where build_dags was called from
    doc["dag"].pop("relative_fileloc", None)
    return doc


def _state(task: Any) -> dict[str, Any]:
    """An operator's attributes, with the references to its DAG replaced by the DAG id."""
    out: dict[str, Any] = {}
    for k, v in vars(task).items():
        if k in {"_dag", "task_group"}:
            out[k] = getattr(v, "dag_id", None) or getattr(getattr(v, "dag", None), "dag_id", None)
        elif k == "_BaseOperator__init_kwargs":
            out[k] = {
                ik: (iv.dag_id if ik == "dag" else type(iv).__name__ if ik == "task_group" else iv)
                for ik, iv in v.items()
            }
        elif k == "params":
            out[k] = (v.dump(), {p: (v.get_param(p).schema, getattr(v.get_param(p), "source", None)) for p in v})
        else:
            out[k] = v
    return out


def test_copied_tasks_equal_constructed_tasks(world: Path) -> None:
    from airflow_kfm_migrations.dag_factory import DAG_PREFIX

    slow = _build(world, copy_tasks=False, cache=False)
    fast = _build(world)
    assert list(fast) == list(slow) and len(fast) == 10  # nine migrations and the rollback DAG
    for dag_id, dag in fast.items():
        assert _serialized(dag) == _serialized(slow[dag_id]), dag_id
        assert dag.task_group.children.keys() == slow[dag_id].task_group.children.keys()
        assert dag.task_group.used_group_ids == slow[dag_id].task_group.used_group_ids
        for task_id, task in dag.task_dict.items():
            ref = slow[dag_id].task_dict[task_id]
            assert type(task) is type(ref) and _state(task) == _state(ref), (dag_id, task_id)
            assert task.dag is dag and dag.task_group.children[task_id] is task
    # The copies really happened, and share nothing mutable with their prototype.
    proto, copied = fast[DAG_PREFIX + PG], fast[DAG_PREFIX + "PG-MIG-2026-02-28-02"]
    for task_id, task in copied.task_dict.items():
        src = proto.task_dict[task_id]
        for k, v in vars(task).items():
            if isinstance(v, list | set | dict) and k not in {"_dag", "task_group"}:
                assert v is not vars(src)[k], (task_id, k)
        assert task.params is not src.params
        assert task.params.get_param("environment") is not src.params.get_param("environment")
    apply = copied.get_task("apply")
    assert apply.owner == "team-b" and apply.conn_id == "pg_other" and apply.migration_id.endswith("-02")
    # The folders given to build_dags are carried on every task, copies included (issue #14).
    assert (apply.bundles_root, apply.registry_path) == (str(world), str(world / "registry" / "migrations.v1.json"))
    assert [a.name for a in apply.outlets] == ["kfm-migrations/PG-MIG-2026-02-28-02"]  # its asset alias
    third = fast[DAG_PREFIX + "PG-MIG-2026-02-28-03"].get_task("apply")
    assert third.conn_id == "pg_from_runner"
    assert [a.name for a in third.outlets] == ["kfm-migrations/PG-MIG-2026-02-28-03"]
    assert "backfill" in fast[DAG_PREFIX + "PG-MIG-2026-02-28-05"].task_dict


def test_cache_is_used_only_on_a_hash_match(world: Path, tmp_path: Path) -> None:
    from airflow_kfm_migrations.dag_factory import DAG_PREFIX
    from airflow_kfm_migrations.decl_cache import DeclarationFacts

    cold = _build(world)
    files = list((tmp_path / "cache").glob("decl-facts-*.json"))
    assert len(files) == 1
    entries = json.loads(files[0].read_text())["entries"]
    assert len(entries) == 7  # the valid declarations only (each names its own id)

    reader = DeclarationFacts(world)
    for mid in ("PG-MIG-2026-02-28-01", "SEARCH-MIG-2026-03-02-01", "GRAPH-MIG-2026-03-03-01"):
        reader.get(world / ("postgis" if mid[0] == "P" else mid.split("-")[0].lower()) / mid)
    assert reader.hits == 3 and reader.misses == 0

    # An edited declaration is parsed again at once.
    decl = world / "postgis" / PG / "migration.yml"
    decl.write_text(decl.read_text().replace("Add spatial index", "Add a GiST index"))
    edited = _build(world)[DAG_PREFIX + PG]
    assert "Add a GiST index" in edited.doc_md and "Add a GiST index" not in cold[DAG_PREFIX + PG].doc_md

    # A declaration that becomes invalid breaks its own DAG only, although its old facts are cached.
    decl.write_text(decl.read_text().replace("change_class: governance-critical", "change_class: 42"))
    dags = _build(world)
    assert "Broken bundle" in dags[DAG_PREFIX + PG].doc_md and "change_class" in dags[DAG_PREFIX + PG].doc_md
    assert "Broken bundle" not in dags[DAG_PREFIX + "PG-MIG-2026-02-28-02"].doc_md


def test_a_tampered_or_corrupt_cache_is_not_trusted(world: Path, tmp_path: Path) -> None:
    from airflow_kfm_migrations.dag_factory import DAG_PREFIX
    from airflow_kfm_migrations.decl_cache import CACHE_FORMAT

    reference = {k: _serialized(v) for k, v in _build(world, cache=False).items()}
    _build(world)
    path = next((tmp_path / "cache").glob("decl-facts-*.json"))
    doc = json.loads(path.read_text())
    for facts in doc["entries"].values():
        facts["intent"] = 7  # malformed entries are parsed again
    doc["registry"]["entries"][0][3] = 5
    path.write_text(json.dumps(doc))
    assert {k: _serialized(v) for k, v in _build(world).items()} == reference
    for bad in ("{not json", json.dumps({"format": "other", "entries": {}}), json.dumps(dict(doc, code="old"))):
        path.write_text(bad)
        assert {k: _serialized(v) for k, v in _build(world).items()} == reference
        assert json.loads(path.read_text())["format"] == CACHE_FORMAT  # rebuilt
    # A broken bundle and a missing one break only their own DAGs, with the cache present.
    dags = _build(world)
    assert "invalid YAML" in dags[DAG_PREFIX + "PG-MIG-2026-02-28-06"].doc_md
    assert "file not found" in dags[DAG_PREFIX + "PG-MIG-2026-02-28-07"].doc_md
    assert sum("Broken bundle" in d.doc_md for d in dags.values()) == 2


def test_cache_off_and_unwritable_cache_cost_only_speed(world: Path, tmp_path: Path, monkeypatch: Any) -> None:
    reference = {k: _serialized(v) for k, v in _build(world, cache=False).items()}
    monkeypatch.setenv("KFM_PARSE_CACHE", "off")
    assert {k: _serialized(v) for k, v in _build(world).items()} == reference
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("KFM_PARSE_CACHE", str(blocker / "cache"))  # cannot be created
    assert {k: _serialized(v) for k, v in _build(world).items()} == reference


def test_constants_copied_to_keep_a_warm_parse_light() -> None:
    from airflow_kfm_migrations import config, decl_cache
    from airflow_kfm_migrations.declaration import bundle, registry

    assert decl_cache.DECLARATION_FILE == bundle.DECLARATION_FILE
    assert decl_cache.REGISTRY_CAP == registry.MAX_REGISTRY_BYTES
    assert config.REGISTRY_REL == registry.REGISTRY_REL


def test_registry_cache_follows_the_registry(world: Path, tmp_path: Path) -> None:
    from airflow_kfm_migrations.dag_factory import DAG_PREFIX
    from airflow_kfm_migrations.decl_cache import DeclarationFacts

    _build(world)
    reg_path = world / "registry" / "migrations.v1.json"
    reader = DeclarationFacts(world)
    assert [e.migration_id for e in reader.registry(reg_path)][:2] == [PG, "SEARCH-MIG-2026-03-02-01"]
    assert reader.hits == 1 and reader.misses == 0
    reg = json.loads(reg_path.read_text())
    reg["migrations"][0]["owner"] = "new-owner"
    reg_path.write_text(json.dumps(reg))
    assert _build(world)[DAG_PREFIX + PG].get_task("apply").owner == "new-owner"
    reg["migrations"][0]["status"] = "not-a-status"  # invalid: the DAG file fails, cache or not
    reg_path.write_text(json.dumps(reg))
    with pytest.raises(Exception, match="status"):
        _build(world)


def test_copies_only_on_a_verified_airflow(world: Path, monkeypatch: Any) -> None:
    """The copies write Airflow's private operator attributes: on an Airflow minor version not
    verified by the test above, every task comes from the constructors, and the DAGs are the
    same (issue #14)."""
    from airflow import __version__

    from airflow_kfm_migrations import dag_factory

    # The suite's Airflow is a verified one, so the comparison above tests real copies.
    assert dag_factory.copies_verified(), f"Airflow {__version__}: run the copy test, then list it"
    reference = _build(world, copy_tasks=False, cache=False)
    made: list[Any] = []
    real = dag_factory._TaskCopier

    class Spy(real):  # type: ignore[misc, valid-type]
        def __init__(self, prototype: Any) -> None:
            made.append(prototype.dag_id)
            super().__init__(prototype)

    monkeypatch.setattr(dag_factory, "_TaskCopier", Spy)
    _build(world, cache=False)
    assert made, "a verified Airflow copies tasks"
    made.clear()
    monkeypatch.setattr(dag_factory, "COPIES_VERIFIED_ON", frozenset({"2.99"}))
    dag_factory.copies_verified.cache_clear()
    try:
        assert not dag_factory.copies_verified()
        built = _build(world, cache=False)
    finally:  # recomputed with the real COPIES_VERIFIED_ON when monkeypatch restores it
        dag_factory.copies_verified.cache_clear()
    assert made == []  # no copier at all: every task through the constructors
    assert list(built) == list(reference)
    for dag_id, dag in built.items():
        assert _serialized(dag) == _serialized(reference[dag_id]), dag_id
        for task_id, task in dag.task_dict.items():
            assert _state(task) == _state(reference[dag_id].task_dict[task_id]), (dag_id, task_id)
