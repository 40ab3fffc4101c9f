"""The governed search (OpenSearch) run against the real node (scripts/stores/opensearch.sh).

Blue/green: the alias flip is held back until the gate passed; an abort deletes the
indices the run created and never touches an alias.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MIGRATIONS, port_open, server_missing

from airflow_kfm_migrations.cli import main
from airflow_kfm_migrations.contracts.models import DiffSummary
from airflow_kfm_migrations.declaration.bundle import load_bundle
from airflow_kfm_migrations.errors import InputError, LockedError, RefusedError
from airflow_kfm_migrations.stores.search import session as search_session
from airflow_kfm_migrations.stores.search.actions import additive_problem, parse_actions
from airflow_kfm_migrations.stores.search.governance import GOVERNANCE_INDEX
from airflow_kfm_migrations.stores.search.store import SearchStore

pytestmark = pytest.mark.opensearch

OS_PORT = 9200
CONN_ID = "kfm_search_test"
MIG = "SEARCH-MIG-2026-03-02-01"


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def os_client() -> Iterator[Any]:
    if not port_open(OS_PORT):
        server_missing("OpenSearch", "bash scripts/stores/opensearch.sh start")
    from opensearchpy import OpenSearch

    # These tests wipe the node's indices: a second pytest process on the same node waits.
    with open(Path(tempfile.gettempdir()) / f"kfm-opensearch-{OS_PORT}.lock", "w") as fh:
        deadline = time.monotonic() + 900
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail("another test run kept the OpenSearch node busy for 15 minutes", pytrace=False)
                time.sleep(1)
        yield OpenSearch(hosts=[{"host": "127.0.0.1", "port": OS_PORT}], timeout=60)


@pytest.fixture
def cluster(os_client: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A clean node: no non-dot index, no governance index; parcels_v1 (50 docs) behind
    alias ``parcels`` and the protected authority_sites_v1 (2 docs)."""
    from opensearchpy import helpers

    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", f"opensearch://127.0.0.1:{OS_PORT}")
    c = os_client
    _wipe(c)
    one_shard = {"number_of_shards": 1, "number_of_replicas": 0}
    c.indices.create(
        index="parcels_v1",
        body={
            "settings": one_shard,
            "mappings": {
                "properties": {
                    "parcel_id": {"type": "keyword"},
                    "name": {"type": "text"},
                    "area_m2": {"type": "double"},
                }
            },
        },
    )
    helpers.bulk(
        c,
        (
            {
                "_index": "parcels_v1",
                "_id": f"p-{i}",
                "_source": {"parcel_id": f"p-{i}", "name": f"parcel {i}", "area_m2": float(i * 10)},
            }
            for i in range(50)
        ),
        refresh=True,
    )
    c.indices.update_aliases(body={"actions": [{"add": {"index": "parcels_v1", "alias": "parcels"}}]})
    c.indices.create(index="authority_sites_v1", body={"settings": one_shard})
    for i, name in enumerate(("Fort Larned", "Pawnee Rock"), 1):
        c.index(index="authority_sites_v1", id=str(i), body={"name": name}, params={"refresh": "true"})
    yield c
    _wipe(c)


def _wipe(c: Any) -> None:
    for t in c.indices.get_index_template().get("index_templates", []):
        if t["name"].startswith("kfm-test-"):
            c.indices.delete_index_template(name=t["name"])
    names = [n for n in c.indices.get(index="*", params={"expand_wildcards": "all"}) if not n.startswith(".")]
    for n in [*names, GOVERNANCE_INDEX]:
        if c.indices.exists(index=n):
            c.indices.delete(index=n)


@pytest.fixture
def example(tmp_path: Path) -> Path:
    src = MIGRATIONS / "search" / MIG
    dst = tmp_path / "search" / MIG
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("baselines", "diffs", "receipts"))
    return dst


# ------------------------------------------------------------------ helpers


def run(bundle: Path, out: Path, *extra: str) -> int:
    return main(["run", str(bundle), "--conn-id", CONN_ID, "--artifacts", str(out), "--quiet", *extra])


def rollback(bundle: Path, out: Path) -> int:
    return main(["rollback", str(bundle), "--conn-id", CONN_ID, "--artifacts", str(out), "--quiet"])


def receipt(out: Path) -> dict[str, Any]:
    return json.loads((out / "receipts" / "run_receipt.json").read_text())


def summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "diffs" / "summary.json").read_text())


def checks(out: Path) -> dict[str, bool]:
    return {c["name"]: c["passed"] for c in receipt(out)["validation"]}


def alias_on(c: Any, alias: str = "parcels") -> list[str]:
    return sorted(c.indices.get_alias(name=alias))


def count(c: Any, index: str) -> int:
    c.indices.refresh(index=index)
    return int(c.count(index=index)["count"])


def edit_forward(bundle: Path, fn: Any) -> None:
    p = bundle / "forward.json"
    doc = json.loads(p.read_text())
    fn(doc["actions"])
    p.write_text(json.dumps(doc, indent=2))


def ledger(c: Any) -> list[dict[str, Any]]:
    if not c.indices.exists(index=GOVERNANCE_INDEX):
        return []
    c.indices.refresh(index=GOVERNANCE_INDEX)
    hits = c.search(
        index=GOVERNANCE_INDEX, body={"size": 100, "query": {"term": {"type": "ledger"}}, "sort": ["applied_ns"]}
    )
    return [h["_source"] for h in hits["hits"]["hits"]]


def assert_untouched(c: Any) -> None:
    """The failure paths: readers still see v1, nothing of the new index is left."""
    assert alias_on(c) == ["parcels_v1"]
    assert not c.indices.exists(index="parcels_v2")
    assert count(c, "parcels_v1") == 50 and count(c, "authority_sites_v1") == 2


# ------------------------------------------------------------------ end to end


def test_example_end_to_end(example: Path, cluster: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(example, out) == 0
    c = cluster
    assert alias_on(c) == ["parcels_v2"]
    assert count(c, "parcels_v2") == count(c, "parcels_v1") == 50
    assert c.indices.get_mapping(index="parcels_v2")["parcels_v2"]["mappings"]["properties"]["name"]["fields"] == {
        "raw": {"type": "keyword"}
    }
    r = receipt(out)
    assert r["status"] == "succeeded" and r["store"] == {"kind": "search", "conn_id": CONN_ID}
    assert checks(out)["gate"] is True and r["metrics"]["docs_reindexed"] == 50
    s = summary(out)
    assert s["verdict"] == "pass"
    assert [(ch["change"], ch["id"]) for ch in s["changes"]] == [
        ("added", "doc_count:parcels_v2"),
        ("added", "index:parcels_v2"),
    ]
    assert {lc["name"]: lc["observed"] for lc in s["limits"]} == {"max_index_count_delta": 1, "max_docs_reindexed": 50}
    assert any(f["code"] == "alias_flip_pending" for f in s["findings"])
    pre = json.loads((out / "baselines" / "pre.json").read_text())
    assert pre["store"] == "search" and pre["store_version"].startswith("OpenSearch ")
    assert pre["protected_rows"] == {"authority_sites_v1": 2}
    assert {o["id"] for o in pre["objects"]} >= {"index:parcels_v1", "alias:parcels", "index:authority_sites_v1"}
    assert not any(o["id"].startswith(("index:.", "doc_count:.")) for o in pre["objects"])
    assert "Fort Larned" not in json.dumps(pre)
    # One ledger entry, no lock left behind.
    entries = ledger(c)
    assert (
        len(entries) == 1
        and entries[0]["operation"] == "apply"
        and set(entries[0]["artifacts"])
        >= {
            "forward.json",
            "rollback.json",
        }
    )
    assert entries[0]["receipt_digest"] == r["receipt_digest"]
    assert not c.exists(index=GOVERNANCE_INDEX, id=f"lock:{MIG}")
    assert not c.exists(index=GOVERNANCE_INDEX, id=f"inflight:{MIG}")  # ended clean: no in-flight record
    assert set(pre["extra"]["write_counters"]) == {"parcels_v1", "authority_sites_v1"}
    assert main(["verify", str(out)]) == 0
    assert main(["verify", str(out), "--conn-id", CONN_ID]) == 0
    # The ledger is the independent witness: a receipt digest it does not hold is refused.
    c.update(
        index=GOVERNANCE_INDEX,
        id=f"ledger:{MIG}:{r['run_id']}",
        body={"doc": {"receipt_digest": "0" * 64}},
        refresh=True,
    )
    assert main(["verify", str(out), "--conn-id", CONN_ID]) == 1
    c.update(
        index=GOVERNANCE_INDEX,
        id=f"ledger:{MIG}:{r['run_id']}",
        body={"doc": {"receipt_digest": r["receipt_digest"]}},
        refresh=True,
    )
    assets = SearchStore.for_planning(CONN_ID).assets(load_bundle(example), DiffSummary.model_validate(s))
    assert assets == ["parcels", "parcels_v2"]  # the alias and the new index
    # A rerun is a no-op without drift (the ledger remembers the store after the flip).
    assert run(example, out) == 0
    again = receipt(out)
    assert again["status"] == "noop" and again["previous_receipt_digest"] == r["receipt_digest"]
    assert checks(out)["drift"] is True
    assert alias_on(c) == ["parcels_v2"]


def test_plan_json(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(example), "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [s["statement"] for s in plan["statements"]] == ["create_index", "reindex", "aliases"]
    assert plan["statements"][2]["targets"] == ["parcels_v1", "parcels_v2", "alias:parcels"]
    assert not plan["refused"]


def test_dry_run_rehearses_and_leaves_nothing(
    example: Path, cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    applied: list[bool] = []
    original = search_session.SearchSession.apply

    def spy(self: Any) -> Any:
        outcome = original(self)
        applied.append(cluster.indices.exists(index="parcels_v2"))
        return outcome

    monkeypatch.setattr(search_session.SearchSession, "apply", spy)
    assert SearchStore.for_planning("-").rehearsable(load_bundle(example))
    assert main(["run", str(example), "--conn-id", CONN_ID, "--quiet", "--dry-run"]) == 0
    assert applied == [True]  # really built and reindexed, then deleted by the abort
    assert_untouched(cluster)
    assert ledger(cluster) == []
    assert not (example / "receipts").exists()  # a dry run writes nothing


def test_in_place_changes_are_not_rehearsable(example: Path) -> None:
    p = example / "migration.yml"
    p.write_text(
        p.read_text().replace(
            "requires_rollback: true",
            "requires_rollback: true\ntransactional: false\n"
            "non_transactional_reason: refresh interval is tuned in place on the live index",
        )
    )
    edit_forward(
        example, lambda a: a.append({"put_settings": {"index": "parcels_v1", "settings": {"refresh_interval": "5s"}}})
    )
    bundle = load_bundle(example)
    store = SearchStore.for_planning("-")
    assert not store.plan(bundle).refused and not store.rehearsable(bundle)


# ------------------------------------------------------------------ refusals


def test_forward_touching_forbidden_index_is_refused_by_the_plan(example: Path, cluster: Any, tmp_path: Path) -> None:
    edit_forward(
        example,
        lambda a: a.insert(
            2, {"put_settings": {"index": "authority_sites_v1", "settings": {"refresh_interval": "5s"}}}
        ),
    )
    out = tmp_path / "out"
    assert run(example, out) == 1
    r = receipt(out)
    assert r["status"] == "failed" and "static plan refused" in r["reason"]
    assert_untouched(cluster)
    assert (
        cluster.indices.get_settings(index="authority_sites_v1")["authority_sites_v1"]["settings"]["index"].get(
            "refresh_interval"
        )
        is None
    )


SIDE_EFFECTS = {
    "forbidden_object_changed": lambda c: c.indices.put_mapping(
        index="authority_sites_v1", body={"properties": {"x": {"type": "keyword"}}}
    ),
    "protected_domain_changed": lambda c: c.index(
        index="authority_sites_v1", id="3", body={"name": "x"}, params={"refresh": "true"}
    ),
    "out_of_scope_change": lambda c: c.indices.put_index_template(
        name="kfm-test-sneaky", body={"index_patterns": ["sneaky-*"], "template": {"settings": {"number_of_shards": 1}}}
    ),
}


@pytest.mark.parametrize("code", sorted(SIDE_EFFECTS))
def test_hidden_change_is_seen_by_the_gate_before_the_flip(
    example: Path, cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str
) -> None:
    """A side effect the static plan cannot see (simulated) is caught on the post-baseline,
    before the alias flip: the new index is deleted and the alias stays on v1."""
    original = search_session.SearchSession.apply

    def sneaky(self: Any) -> Any:
        outcome = original(self)
        SIDE_EFFECTS[code](cluster)
        return outcome

    monkeypatch.setattr(search_session.SearchSession, "apply", sneaky)
    out = tmp_path / "out"
    assert run(example, out) == 1
    codes = {f["code"] for f in summary(out)["findings"] if f["tier"] == "hard_fail"}
    assert code in codes
    r = receipt(out)
    # The hidden change itself cannot be undone by the rollback artifact: reported, not hidden.
    assert r["status"] == "rollback_failed" and "gate refused" in r["reason"]
    assert alias_on(cluster) == ["parcels_v1"] and not cluster.indices.exists(index="parcels_v2")
    assert ledger(cluster) == []


def test_lock_taken_over_during_the_run_stops_it(example: Path, cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KFM_SEARCH_HEARTBEAT_SECONDS", "0")
    monkeypatch.setenv("KFM_SEARCH_LOCK_STALE_SECONDS", "3600")
    bundle = load_bundle(example)
    with SearchStore.from_conn_id(CONN_ID).session(bundle, "4" * 32) as s:
        cluster.index(
            index=GOVERNANCE_INDEX,
            id=f"lock:{MIG}",
            body={"type": "lock", "owner": "5" * 32, "ts": time.time(), "at": "now"},
            params={"refresh": "true"},
        )
        with pytest.raises(LockedError, match="taken over"):
            s.apply()
    assert_untouched(cluster)
    # The other owner's lock is not released by the loser.
    assert cluster.get(index=GOVERNANCE_INDEX, id=f"lock:{MIG}")["_source"]["owner"] == "5" * 32


def test_limit_exceeded_is_compensated(example: Path, cluster: Any, tmp_path: Path) -> None:
    p = example / "migration.yml"
    p.write_text(p.read_text().replace("max_docs_reindexed: 100000", "max_docs_reindexed: 10"))
    out = tmp_path / "out"
    assert run(example, out) == 1
    r = receipt(out)
    assert r["status"] == "rolled_back" and "limit_exceeded" in r["reason"]
    assert checks(out)["rollback"] is True
    assert_untouched(cluster)


def test_doc_count_mismatch_fails_closed(example: Path, cluster: Any, tmp_path: Path) -> None:
    def drop_one(actions: list[dict[str, Any]]) -> None:
        actions[1]["reindex"]["script"] = {
            "lang": "painless",
            "source": "if (ctx._source.parcel_id == 'p-7') { ctx._id = 'p-6' }",  # p-7 overwrites p-6
        }

    edit_forward(example, drop_one)
    out = tmp_path / "out"
    assert run(example, out) == 1
    r = receipt(out)
    assert r["status"] == "rolled_back" and "doc count mismatch" in r["reason"]
    assert {c["name"]: c for c in r["validation"]}["apply"]["passed"] is False
    assert_untouched(cluster)


def test_filtered_reindex_compares_with_the_filtered_count(example: Path, cluster: Any, tmp_path: Path) -> None:
    edit_forward(example, lambda a: a[1]["reindex"].update(query={"range": {"area_m2": {"lt": 100}}}))
    out = tmp_path / "out"
    assert run(example, out) == 0
    assert count(cluster, "parcels_v2") == 10 and alias_on(cluster) == ["parcels_v2"]
    assert receipt(out)["metrics"]["docs_reindexed"] == 10


def test_leftover_index_is_not_deleted_by_compensation(example: Path, cluster: Any, tmp_path: Path) -> None:
    cluster.indices.create(index="parcels_v2", body={"settings": {"number_of_shards": 1, "number_of_replicas": 0}})
    cluster.index(index="parcels_v2", id="keep", body={"note": "someone's data"}, params={"refresh": "true"})
    out = tmp_path / "out"
    assert run(example, out) == 1
    r = receipt(out)
    assert r["status"] == "rolled_back" and "resource_already_exists_exception" in r["reason"]
    assert count(cluster, "parcels_v2") == 1 and alias_on(cluster) == ["parcels_v1"]


def test_put_mapping_must_be_additive(example: Path, cluster: Any, tmp_path: Path) -> None:
    edit_forward(
        example,
        lambda a: a.insert(
            1, {"put_mapping": {"index": "parcels_v2", "mappings": {"properties": {"area_m2": {"type": "keyword"}}}}}
        ),
    )
    out = tmp_path / "out"
    assert run(example, out) == 1
    r = receipt(out)
    assert r["status"] == "rolled_back" and "additive only: area_m2" in r["reason"]
    assert_untouched(cluster)


def test_refused_flip_changes_no_alias(example: Path, cluster: Any) -> None:
    """The flip is one atomic call: if the cluster refuses it, no alias moved and the new index is gone."""
    bundle = load_bundle(example)
    with SearchStore.from_conn_id(CONN_ID).session(bundle, "2" * 32) as s:
        assert s.apply().ok
        assert cluster.indices.exists(index="parcels_v2") and alias_on(cluster) == ["parcels_v1"]
        cluster.indices.delete_alias(index="parcels_v1", name="parcels")  # someone else moves it meanwhile
        with pytest.raises(RefusedError, match="alias flip was refused"):
            s.commit()
    assert not cluster.indices.exists(index="parcels_v2")
    assert not cluster.indices.exists_alias(name="parcels")
    assert ledger(cluster) == []


def test_error_inside_the_session_cleans_up(example: Path, cluster: Any) -> None:
    bundle = load_bundle(example)
    with pytest.raises(RuntimeError), SearchStore.from_conn_id(CONN_ID).session(bundle, "3" * 32) as s:
        assert s.apply().ok
        raise RuntimeError("killed between apply and the gate")
    assert_untouched(cluster)
    assert not cluster.exists(index=GOVERNANCE_INDEX, id=f"lock:{MIG}")


def test_airflow_hook_client(example: Path, cluster: Any, tmp_path: Path) -> None:
    import airflow.providers.opensearch.hooks.opensearch  # noqa: F401  (a pinned dependency: never skipped)

    from airflow_kfm_migrations.engine import RunOptions, run_migration

    out = tmp_path / "out"
    result = run_migration(
        load_bundle(example),
        RunOptions(conn_id=CONN_ID, artifacts_dir=out, use_hook=True, log=lambda _l: None),
    )
    assert result.status == "succeeded", result.reason
    assert alias_on(cluster) == ["parcels_v2"]
    assert result.assets == ["parcels", "parcels_v2"]


# ------------------------------------------------------------------ rollback


def test_manual_rollback_restores_v1(example: Path, cluster: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(example, out) == 0
    assert alias_on(cluster) == ["parcels_v2"]
    assert rollback(example, out) == 0
    r = receipt(out)
    assert r["status"] == "rolled_back" and r["operation"] == "rollback"
    assert checks(out)["schema_equals_pre"] and checks(out)["protected_equals_pre"]
    assert_untouched(cluster)
    assert [e["operation"] for e in ledger(cluster)] == ["apply", "rollback"]
    assert main(["verify", str(out)]) == 0
    # Nothing left to roll back; the forward may run again.
    assert rollback(example, out) == 0 and receipt(out)["status"] == "noop"
    assert run(example, out) == 0 and receipt(out)["status"] == "succeeded"
    assert alias_on(cluster) == ["parcels_v2"]


# ------------------------------------------------------------------ lock


def test_two_concurrent_sessions_one_is_locked(example: Path, cluster: Any, tmp_path: Path) -> None:
    bundle = load_bundle(example)
    store = SearchStore.from_conn_id(CONN_ID)
    with store.session(bundle, "a" * 32):
        with (
            pytest.raises(LockedError, match="holds the lock"),
            SearchStore.from_conn_id(CONN_ID).session(bundle, "b" * 32),
        ):
            pass
        # The CLI refuses too, with a receipt.
        out = tmp_path / "out"
        assert run(example, out) == 1
        assert receipt(out)["status"] == "failed" and checks(out)["lock"] is False
    assert not cluster.exists(index=GOVERNANCE_INDEX, id=f"lock:{MIG}")

    # Truly concurrent: exactly one of two racing sessions gets the lock.
    barrier = threading.Barrier(2)
    results: list[str] = []

    def contender(run_id: str) -> None:
        s = SearchStore.from_conn_id(CONN_ID)
        barrier.wait()
        try:
            with s.session(bundle, run_id):
                results.append("locked")
                time.sleep(0.5)
        except LockedError:
            results.append("refused")

    threads = [threading.Thread(target=contender, args=(x * 32,)) for x in "cd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["locked", "refused"]


def test_stale_lock_is_replaced(example: Path, cluster: Any) -> None:
    bundle = load_bundle(example)
    store = SearchStore.from_conn_id(CONN_ID)
    with store.session(bundle, "e" * 32):
        pass  # creates the governance index
    cluster.index(
        index=GOVERNANCE_INDEX,
        id=f"lock:{MIG}",
        body={"type": "lock", "owner": "f" * 32, "ts": time.time() - 7200, "at": "long ago"},
        params={"refresh": "true"},
    )
    with store.session(bundle, "1" * 32):
        assert cluster.get(index=GOVERNANCE_INDEX, id=f"lock:{MIG}")["_source"]["owner"] == "1" * 32
    assert not cluster.exists(index=GOVERNANCE_INDEX, id=f"lock:{MIG}")


# ------------------------------------------------------------------ static (no node needed)


PLAN_REFUSALS = {
    "plan_forbidden_target": {"put_settings": {"index": "authority_sites_v2", "settings": {"refresh_interval": "5s"}}},
    "plan_out_of_scope": {"create_index": {"index": "other_v1"}},
    "plan_delete_not_created": {"delete_index": {"index": "parcels_v1"}},
    "non_transactional_statement": {"put_settings": {"index": "parcels_v1", "settings": {"refresh_interval": "5s"}}},
}


@pytest.mark.parametrize("code", sorted(PLAN_REFUSALS))
def test_plan_refusals(example: Path, code: str) -> None:
    edit_forward(example, lambda a: a.append(PLAN_REFUSALS[code]))
    plan = SearchStore.for_planning("-").plan(load_bundle(example))
    assert plan.refused and code in {f.code for f in plan.findings if f.tier == "hard_fail"}


def test_plan_refuses_forbidden_alias_and_protected_index(example: Path) -> None:
    edit_forward(
        example,
        lambda a: a.append({"aliases": {"actions": [{"add": {"index": "authority_sites_v1", "alias": "authority"}}]}}),
    )
    plan = SearchStore.for_planning("-").plan(load_bundle(example))
    found = {(f.code, f.object) for f in plan.findings}
    assert ("plan_forbidden_target", "alias:authority") in found
    assert ("plan_forbidden_target", "authority_sites_v1") in found  # authority_* is forbidden too


def test_plan_refuses_dot_indices(example: Path) -> None:
    edit_forward(example, lambda a: a.append({"create_index": {"index": ".kfm-governance2"}}))
    plan = SearchStore.for_planning("-").plan(load_bundle(example))
    assert ("plan_forbidden_target", ".kfm-governance2") in {(f.code, f.object) for f in plan.findings}


BAD_FILES = {
    "unknown action": ('{"actions": [{"drop_everything": {}}]}', "actions[0].drop_everything"),
    "unknown field": (
        '{"actions": [{"delete_index": {"index": "a", "force": true}}]}',
        "actions[0].delete_index.force",
    ),
    "top-level field": ('{"actions": [], "x": 1}', "x"),
    "empty": ('{"actions": []}', "actions"),
    "wildcard name": ('{"actions": [{"delete_index": {"index": "parcels_*"}}]}', "actions[0].delete_index.index"),
    "alias op": (
        '{"actions": [{"aliases": {"actions": [{"remove_index": {"index": "a"}}]}}]}',
        "actions[0].aliases.actions[0].remove_index",
    ),
    "mapping not additive": (
        '{"actions": [{"put_mapping": {"index": "a", "mappings": {"dynamic": false}}}]}',
        "actions[0].put_mapping.mappings",
    ),
    "duplicate key": ('{"actions": [{"delete_index": {"index": "a", "index": "b"}}]}', "-"),
    "script lang": (
        '{"actions": [{"reindex": {"source": "a", "dest": "b", "script": {"source": "x", "lang": "expr"}}}]}',
        "actions[0].reindex.script.lang",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_action_files_are_validated_strictly(case: str) -> None:
    text, where = BAD_FILES[case]
    with pytest.raises(InputError) as exc:
        parse_actions(text, "forward.json")
    assert exc.value.file == "forward.json" and exc.value.field == where


def test_bad_action_file_is_exit_2(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_forward(example, lambda a: a.append({"shrink": {"index": "parcels_v2"}}))
    assert main(["plan", str(example)]) == 2
    assert "forward.json: actions[3].shrink: unknown action" in capsys.readouterr().err


def test_put_mapping_additive_check() -> None:
    current = {"name": {"type": "text"}, "geo": {"properties": {"lat": {"type": "double"}}}}
    assert additive_problem(current, {"name": {"type": "text", "fields": {"raw": {"type": "keyword"}}}}) is None
    assert additive_problem(current, {"new": {"type": "keyword"}}) is None
    assert additive_problem(current, {"geo": {"properties": {"lon": {"type": "double"}}}}) is None
    assert additive_problem(current, {"name": {"type": "keyword"}}) == "name"
    assert additive_problem(current, {"geo": {"properties": {"lat": {"type": "float"}}}}) == "geo.lat"


def test_unreachable_cluster_fails_with_a_receipt_and_no_secret(
    example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_KFM_SEARCH_DOWN", "opensearch://kfm:s3cr3t-pw@127.0.0.1:1?timeout=2")
    out = tmp_path / "out"
    assert main(["run", str(example), "--conn-id", "kfm_search_down", "--artifacts", str(out), "--quiet"]) == 1
    r = receipt(out)
    assert r["status"] == "failed" and "did not answer" in r["reason"]
    for f in out.rglob("*"):
        if f.is_file():
            assert "s3cr3t-pw" not in f.read_text(errors="ignore"), f


def test_client_from_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_KFM_SEARCH_TLS",
        'opensearch://u:p@search.example:9243?__extra__={"use_ssl": true, "verify_certs": true}',
    )
    c = SearchStore.from_conn_id("kfm_search_tls").client.c
    conn = c.transport.get_connection()
    assert conn.host == "https://search.example:9243" and conn.use_ssl and conn.session.verify
