"""The search store over elasticsearch-py (``ElasticsearchBinding``) against a real
Elasticsearch node (scripts/stores/elasticsearch.sh: the integ-test distribution 8.19.x
from Maven Central, security off, 127.0.0.1:9201).

That distribution has no reindex module, so these are the cases without a ``reindex``
action (plus one proving a reindex the server cannot run fails closed): blue/green alias
flip after the gate, the gate refusing a hidden change before the flip, rollback, the
lock, gc and break-lock.

elasticsearch-py 9 asks for ``compatible-with=9``; the 8.x server only accepts 7 or 8, so
the tests set Airflow's ``[elasticsearch] es_compat_with = 8``, which the elasticsearch
provider's hook applies.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import MIGRATIONS, port_open, server_missing

from airflow_kfm_migrations.cli import main as cli_main
from airflow_kfm_migrations.declaration.bundle import load_bundle
from airflow_kfm_migrations.errors import LockedError
from airflow_kfm_migrations.stores.search.client import CallError, ElasticsearchBinding
from airflow_kfm_migrations.stores.search.governance import GOVERNANCE_INDEX
from airflow_kfm_migrations.stores.search.store import SearchStore

pytestmark = pytest.mark.elasticsearch

ES_PORT = int(os.environ.get("KFM_ELASTICSEARCH_PORT", "9201"))
CONN_ID = "kfm_es_test"
CONN_URI = f'elasticsearch://127.0.0.1:{ES_PORT}?__extra__={{"request_timeout": 60}}'
MIG = "SEARCH-MIG-2026-03-02-01"


def main(argv: list[str]) -> int:
    return cli_main(argv)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def es_server() -> Iterator[None]:
    if not port_open(ES_PORT):
        server_missing("Elasticsearch", "bash scripts/stores/elasticsearch.sh start")
    yield


@pytest.fixture
def es(es_server: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A clean node: parcels_v1 (50 docs) behind alias ``parcels``, the protected
    authority_sites_v1 (2 docs). Yields the raw elasticsearch-py client."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", CONN_URI)
    monkeypatch.setenv("AIRFLOW__ELASTICSEARCH__ES_COMPAT_WITH", "8")
    b = SearchStore.from_conn_id(CONN_ID).client
    assert isinstance(b, ElasticsearchBinding)
    c = b.c
    _wipe(c)
    one_shard = {"number_of_shards": 1, "number_of_replicas": 0}
    c.indices.create(
        index="parcels_v1",
        settings=one_shard,
        mappings={"properties": {"parcel_id": {"type": "keyword"}, "name": {"type": "text"}}},
    )
    ops: list[dict[str, Any]] = []
    for i in range(50):
        ops += [{"index": {"_index": "parcels_v1", "_id": f"p-{i}"}}, {"parcel_id": f"p-{i}", "name": f"parcel {i}"}]
    c.bulk(operations=ops, refresh=True)
    c.indices.update_aliases(actions=[{"add": {"index": "parcels_v1", "alias": "parcels"}}])
    c.indices.create(index="authority_sites_v1", settings=one_shard)
    c.index(index="authority_sites_v1", id="1", document={"name": "Fort Larned"}, refresh=True)
    c.index(index="authority_sites_v1", id="2", document={"name": "Pawnee Rock"}, refresh=True)
    yield c
    _wipe(c)
    c.close()


def _wipe(c: Any) -> None:
    names = [n for n in c.indices.get(index="*", expand_wildcards="all") if not n.startswith(".")]
    for n in [*names, GOVERNANCE_INDEX]:
        if c.indices.exists(index=n):
            c.indices.delete(index=n)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """The example without its reindex action (the integ-test node has no reindex module)."""
    src = MIGRATIONS / "search" / MIG
    dst = tmp_path / "search" / MIG
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("baselines", "diffs", "receipts"))
    p = dst / "forward.json"
    doc = json.loads(p.read_text())
    doc["actions"] = [a for a in doc["actions"] if "reindex" not in a]
    p.write_text(json.dumps(doc, indent=2))
    return dst


def run(bundle: Path, out: Path, *extra: str) -> int:
    return main(["run", str(bundle), "--conn-id", CONN_ID, "--artifacts", str(out), "--quiet", *extra])


def receipt(out: Path) -> dict[str, Any]:
    return json.loads((out / "receipts" / "run_receipt.json").read_text())


def checks(out: Path) -> dict[str, bool]:
    return {c["name"]: c["passed"] for c in receipt(out)["validation"]}


def alias_on(c: Any) -> list[str]:
    return sorted(c.indices.get_alias(name="parcels").body)


def ledger(c: Any) -> list[dict[str, Any]]:
    c.indices.refresh(index=GOVERNANCE_INDEX)
    res = c.search(index=GOVERNANCE_INDEX, query={"term": {"type": "ledger"}}, sort=["applied_ns"], size=50)
    return [h["_source"] for h in res["hits"]["hits"]]


def untouched(c: Any) -> None:
    assert alias_on(c) == ["parcels_v1"] and not c.indices.exists(index="parcels_v2")
    assert c.count(index="parcels_v1")["count"] == 50 and c.count(index="authority_sites_v1")["count"] == 2


# ------------------------------------------------------------------ tests


def test_binding_talks_to_a_real_elasticsearch(es: Any) -> None:
    b = ElasticsearchBinding(es)
    assert b.info()["version"]["number"].startswith("8.")
    assert b.count("parcels_v1") == 50 and b.index_exists("parcels_v1") and not b.index_exists("nope")
    assert b.get_alias()["parcels_v1"]["aliases"] == {"parcels": {}}
    with pytest.raises(CallError) as exc:
        b.create_index("parcels_v1", {})
    assert exc.value.status == 400 and exc.value.kind == "resource_already_exists_exception"
    assert b.get_doc("parcels_v1", "missing") is None
    b.create_index("scratch_v1", {"settings": {"number_of_shards": 1}})
    b.index_doc("scratch_v1", "1", {"a": 1}, create=True, refresh=True)
    with pytest.raises(CallError) as conflict:
        b.index_doc("scratch_v1", "1", {"a": 2}, create=True)
    assert conflict.value.status == 409
    doc = b.get_doc("scratch_v1", "1")
    assert doc is not None and doc["_source"] == {"a": 1}
    with pytest.raises(CallError) as stale:
        b.delete_doc("scratch_v1", "1", if_seq_no=doc["_seq_no"] + 5, if_primary_term=doc["_primary_term"])
    assert stale.value.status == 409
    b.delete_doc("scratch_v1", "1", if_seq_no=doc["_seq_no"], if_primary_term=doc["_primary_term"])
    b.refresh("scratch_v1")
    assert b.search("scratch_v1", {"query": {"match_all": {}}}) == []


def test_blue_green_end_to_end(es: Any, bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(bundle, out) == 0, receipt(out)["reason"]
    assert alias_on(es) == ["parcels_v2"] and es.indices.exists(index="parcels_v1")
    r = receipt(out)
    assert r["status"] == "succeeded" and checks(out)["gate"] is True
    assert r["metrics"]["old_indices_kept_names"] == "parcels_v1"
    pre = json.loads((out / "baselines" / "pre.json").read_text())
    assert pre["store_version"].startswith("Elasticsearch 8.") and pre["protected_rows"] == {"authority_sites_v1": 2}
    (entry,) = ledger(es)
    assert entry["operation"] == "apply" and entry["receipt_digest"] == r["receipt_digest"]
    assert entry["retained_indices"][0]["index"] == "parcels_v1"
    assert not es.exists(index=GOVERNANCE_INDEX, id=f"lock:{MIG}")
    assert main(["verify", str(out)]) == 0
    # No-op rerun without drift.
    assert run(bundle, out) == 0 and receipt(out)["status"] == "noop" and checks(out)["drift"] is True
    # Rollback restores v1 and deletes v2.
    assert main(["rollback", str(bundle), "--conn-id", CONN_ID, "--artifacts", str(out), "--quiet"]) == 0
    assert receipt(out)["status"] == "rolled_back"
    untouched(es)


def test_gate_refuses_a_hidden_change_before_the_flip(
    es: Any, bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_kfm_migrations.stores.search import session as search_session

    original = search_session.SearchSession.apply

    def sneaky(self: Any) -> Any:
        outcome = original(self)
        es.index(index="authority_sites_v1", id="3", document={"name": "x"}, refresh=True)
        return outcome

    monkeypatch.setattr(search_session.SearchSession, "apply", sneaky)
    out = tmp_path / "out"
    assert run(bundle, out) == 1
    r = receipt(out)
    assert r["status"] == "rollback_failed" and "protected_domain_changed" in r["reason"]
    assert alias_on(es) == ["parcels_v1"] and not es.indices.exists(index="parcels_v2")
    assert ledger(es) == []


def test_reindex_the_server_cannot_run_fails_closed(es: Any, tmp_path: Path) -> None:
    src = MIGRATIONS / "search" / MIG
    full = tmp_path / "full" / MIG
    shutil.copytree(src, full, ignore=shutil.ignore_patterns("baselines", "diffs", "receipts"))
    out = tmp_path / "out"
    assert run(full, out) == 1
    r = receipt(out)
    assert r["status"] == "rolled_back" and "action 2 (reindex)" in r["reason"] and "405" in r["reason"]
    untouched(es)


def test_lock_gc_and_break_lock(es: Any, bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert run(bundle, out) == 0
    b = load_bundle(bundle)
    with SearchStore.from_conn_id(CONN_ID).session(b, "a" * 32):
        with pytest.raises(LockedError, match="holds the lock"), SearchStore.from_conn_id(CONN_ID).session(b, "b" * 32):
            pass
        later = (datetime.now(UTC) + timedelta(days=8)).isoformat()
        gc = ["gc", str(bundle), "--conn-id", CONN_ID, "--artifacts", str(out), "--quiet", "--now", later]
        assert main(gc) == 1 and "holds the lock" in receipt(out)["reason"]
        # The holder "dies" here: break its lock by hand.
        brk = ["break-lock", str(bundle), "--conn-id", CONN_ID, "--artifacts", str(out), "--quiet"]
        assert main([*brk, "--reason", "test: holder gone"]) == 0
        assert f"lock held by run {'a' * 32}" in capsys.readouterr().out
        r = receipt(out)
        assert r["operation"] == "break_lock" and r["metrics"]["previous_holder"] == "a" * 32
        assert main(gc) == 0
        r = receipt(out)
        assert r["operation"] == "gc" and r["metrics"]["gc_deleted_indices"] == "parcels_v1"
    assert not es.indices.exists(index="parcels_v1") and alias_on(es) == ["parcels_v2"]
    assert main(["verify", str(out)]) == 0


def test_stale_lock_is_replaced(es: Any, bundle: Path) -> None:
    b = load_bundle(bundle)
    store = SearchStore.from_conn_id(CONN_ID)
    with store.session(b, "e" * 32):
        pass
    es.index(
        index=GOVERNANCE_INDEX,
        id=f"lock:{MIG}",
        document={"type": "lock", "owner": "f" * 32, "ts": time.time() - 7200, "at": "long ago"},
        refresh=True,
    )
    with store.session(b, "1" * 32):
        assert es.get(index=GOVERNANCE_INDEX, id=f"lock:{MIG}")["_source"]["owner"] == "1" * 32
    assert not es.exists(index=GOVERNANCE_INDEX, id=f"lock:{MIG}")


def test_write_counters_see_an_overwrite_on_elasticsearch(
    es: Any, bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An overwrite of a protected document keeps its count, mappings and settings; the write
    counters (primary shards' sequence numbers) move on Elasticsearch too."""
    from airflow_kfm_migrations.stores.search import session as search_session

    original = search_session.SearchSession.apply

    def sneaky(self: Any) -> Any:
        outcome = original(self)
        es.index(index="authority_sites_v1", id="1", document={"name": "Fort Larned?"}, refresh=True)
        return outcome

    monkeypatch.setattr(search_session.SearchSession, "apply", sneaky)
    out = tmp_path / "out"
    assert run(bundle, out) == 1
    r = receipt(out)
    assert r["status"] == "rollback_failed" and "gate refused: foreign_index_written" in r["reason"]
    assert "authority_sites_v1" in r["reason"]
    assert alias_on(es) == ["parcels_v1"] and not es.indices.exists(index="parcels_v2")


def _blocked(es: Any) -> str | None:
    s = es.indices.get_settings(index="authority_sites_v1")["authority_sites_v1"]["settings"]["index"]
    return (s.get("blocks") or {}).get("write")


def test_write_block_on_elasticsearch(es: Any, bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_kfm_migrations.stores.search import session as search_session

    p = bundle / "migration.yml"
    p.write_text(
        p.read_text().replace(
            "old_index_retention_days: 7", "old_index_retention_days: 7\nprotect_with_write_block: true"
        )
    )
    seen: list[Any] = []
    original = search_session.SearchSession.apply

    def spy(self: Any) -> Any:
        outcome = original(self)
        seen.append(_blocked(es))
        try:
            es.index(index="authority_sites_v1", id="9", document={"name": "x"})
        except Exception as exc:  # broad: the client's error type
            seen.append(getattr(exc, "status_code", None) or getattr(getattr(exc, "meta", None), "status", None))
        return outcome

    monkeypatch.setattr(search_session.SearchSession, "apply", spy)
    out = tmp_path / "out"
    assert run(bundle, out) == 0, receipt(out)["reason"]
    assert seen == ["true", 403]
    assert receipt(out)["metrics"]["write_blocked_indices"] == "authority_sites_v1"
    assert _blocked(es) is None and alias_on(es) == ["parcels_v2"]


def test_dead_run_is_recovered_on_elasticsearch(es: Any, bundle: Path, tmp_path: Path) -> None:
    """What a run killed on another host leaves (stale lock, in-flight record, its index and
    write block) is undone by the next run, which then applies."""
    with SearchStore.from_conn_id(CONN_ID).session(load_bundle(bundle), "0" * 32):
        pass
    dead = "d" * 32
    es.indices.create(index="parcels_v2", settings={"number_of_shards": 1, "number_of_replicas": 0})
    es.index(index="parcels_v2", id="half", document={"parcel_id": "half-done"}, refresh=True)
    es.indices.put_settings(index="authority_sites_v1", settings={"index.blocks.write": True})
    lock = {"type": "lock", "owner": dead, "ts": time.time() - 3600, "at": "an hour ago", "host": "elsewhere", "pid": 1}
    es.index(index=GOVERNANCE_INDEX, id=f"lock:{MIG}", document=lock, refresh=True)
    es.index(
        index=GOVERNANCE_INDEX,
        id=f"inflight:{MIG}",
        document={
            "type": "inflight",
            "migration_id": MIG,
            "run_id": dead,
            "operation": "apply",
            "phase": "applying",
            "indices": [{"index": "parcels_v2", "state": "creating"}],
            "tasks": [],
            "write_blocks": [{"index": "authority_sites_v1", "previous": None}],
        },
        refresh=True,
    )
    out = tmp_path / "out"
    assert run(bundle, out) == 0, receipt(out)["reason"]
    line = receipt(out)["metrics"]["recovered_interrupted_run"]
    assert f"recovered interrupted run {dead[:12]}" in line and "no heartbeat for" in line
    assert "index(es) parcels_v2 it created deleted" in line and "write block lifted from authority_sites_v1" in line
    assert not es.exists(index="parcels_v2", id="half") and alias_on(es) == ["parcels_v2"]
    assert _blocked(es) is None
    assert not es.exists(index=GOVERNANCE_INDEX, id=f"inflight:{MIG}")


def test_elasticsearch_py_refuses_opensearch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The product check: the Elasticsearch binding pointed at the OpenSearch node fails
    closed with a clear error (no receipt-leaking host)."""
    if not port_open(9200):
        server_missing("OpenSearch", "bash scripts/stores/opensearch.sh start")
    monkeypatch.setenv("AIRFLOW_CONN_KFM_ES_ON_OS", "elasticsearch://127.0.0.1:9200")
    b = SearchStore.from_conn_id("kfm_es_on_os").client
    assert isinstance(b, ElasticsearchBinding)
    with pytest.raises(CallError) as exc:
        b.info()
    assert exc.value.kind in {"unsupported_product", "media_type_header_exception"}


# ------------------------------------------------------------------ contract (no server)
#
# elasticsearch-py 9's own transport with a node class that records what it would send
# and answers with canned bodies recorded from the Elasticsearch 8.19 node (and, for the
# reindex task calls it cannot run, from the OpenSearch node), with the product header.
# This proves the binding speaks the 9.x wire format (compatible-with=9 media types) that
# the 8.x node in the tests above only accepts with es_compat_with = 8.

CANNED: dict[tuple[str, str], tuple[int, Any]] = {
    ("GET", "/"): (200, {"name": "n", "cluster_name": "c", "version": {"number": "9.1.0", "build_flavor": "default"}}),
    ("PUT", "/parcels_v2"): (200, {"acknowledged": True, "shards_acknowledged": True, "index": "parcels_v2"}),
    ("PUT", "/.kfm-governance/_doc/lock%3AM"): (
        409,
        {
            "error": {
                "type": "version_conflict_engine_exception",
                "reason": "[lock:M]: version conflict, document already exists (current version [1])",
            },
            "status": 409,
        },
    ),
    ("POST", "/_reindex"): (200, {"task": "oTUltX4IQMOUUVeiohTt8A:12345"}),
    ("GET", "/_tasks/oTUltX4IQMOUUVeiohTt8A%3A12345"): (
        200,
        {
            "completed": True,
            "task": {"node": "oTUltX4IQMOUUVeiohTt8A", "id": 12345, "action": "indices:data/write/reindex"},
            "response": {"took": 120, "total": 50, "created": 50, "updated": 0, "deleted": 0, "failures": []},
        },
    ),
    ("POST", "/_aliases"): (200, {"acknowledged": True}),
    ("POST", "/parcels_v1/_count"): (200, {"count": 10, "_shards": {"total": 1, "successful": 1}}),
    ("GET", "/nope/_doc/x"): (404, {"_index": "nope", "_id": "x", "found": False}),
    ("HEAD", "/parcels_v1"): (200, None),
}


def _canned_client(product: bool = True) -> tuple[Any, list[tuple[str, str, dict[str, str], Any]]]:
    from elastic_transport import ApiResponseMeta, BaseNode, HttpHeaders
    from elastic_transport._node._base import NodeApiResponse
    from elasticsearch import Elasticsearch

    sent: list[tuple[str, str, dict[str, str], Any]] = []

    class CannedNode(BaseNode):
        def perform_request(self, method: str, target: str, body: Any = None, headers: Any = None, **_: Any) -> Any:
            sent.append((method, target, {k.lower(): v for k, v in (headers or {}).items()}, body))
            path = target.split("?", 1)[0]
            status, payload = CANNED.get((method, path), (404, {"error": {"type": "not_canned", "reason": path}}))
            if path.endswith("/_count") and not body:
                payload = {**payload, "count": 50}  # no query: the whole index
            h = HttpHeaders({"content-type": "application/json"})
            if product:
                h["x-elastic-product"] = "Elasticsearch"
            meta = ApiResponseMeta(status=status, http_version="1.1", headers=h, duration=0.0, node=self.config)
            return NodeApiResponse(meta, b"" if payload is None else json.dumps(payload).encode())

    client = Elasticsearch("http://127.0.0.1:9", node_class=CannedNode, max_retries=0)
    return client, sent


def test_contract_requests_and_responses() -> None:
    client, sent = _canned_client()
    b = ElasticsearchBinding(client)
    assert b.info()["version"]["number"] == "9.1.0"
    b.create_index("parcels_v2", {"settings": {"number_of_shards": 1}, "mappings": {"properties": {}}})
    method, target, headers, body = sent[-1]
    assert (method, target) == ("PUT", "/parcels_v2")
    assert headers["accept"] == "application/vnd.elasticsearch+json; compatible-with=9"
    assert headers["content-type"] == "application/vnd.elasticsearch+json; compatible-with=9"
    assert json.loads(body) == {"settings": {"number_of_shards": 1}, "mappings": {"properties": {}}}

    with pytest.raises(CallError) as exc:
        b.index_doc(GOVERNANCE_INDEX, "lock:M", {"type": "lock"}, create=True, refresh=True)
    assert (exc.value.status, exc.value.kind) == (409, "version_conflict_engine_exception")
    method, target, _, body = sent[-1]
    assert method == "PUT" and target.startswith("/.kfm-governance/_doc/lock%3AM?")  # id is URL-encoded
    assert "op_type=create" in target and "refresh=true" in target and json.loads(body) == {"type": "lock"}

    task = b.reindex_async({"source": {"index": "parcels_v1"}, "dest": {"index": "parcels_v2"}}, slices=2, rps=None)
    assert task == "oTUltX4IQMOUUVeiohTt8A:12345"
    method, target, _, body = sent[-1]
    assert method == "POST" and target.startswith("/_reindex?")
    assert {"wait_for_completion=false", "refresh=true", "slices=2"} <= set(target.split("?", 1)[1].split("&"))
    assert json.loads(body) == {"source": {"index": "parcels_v1"}, "dest": {"index": "parcels_v2"}}
    t = b.get_task(task)
    assert t["completed"] and t["response"]["created"] == 50

    b.update_aliases([{"remove": {"index": "parcels_v1", "alias": "parcels", "must_exist": True}}])
    assert json.loads(sent[-1][3]) == {
        "actions": [{"remove": {"index": "parcels_v1", "alias": "parcels", "must_exist": True}}]
    }
    assert b.count("parcels_v1") == 50 and not sent[-1][3]
    assert b.count("parcels_v1", {"range": {"area_m2": {"lt": 100}}}) == 10
    assert json.loads(sent[-1][3]) == {"query": {"range": {"area_m2": {"lt": 100}}}}
    assert b.get_doc("nope", "x") is None
    assert b.index_exists("parcels_v1")


def test_contract_refuses_a_server_without_the_product_header() -> None:
    client, _ = _canned_client(product=False)
    with pytest.raises(CallError) as exc:
        ElasticsearchBinding(client).info()
    assert exc.value.kind == "unsupported_product" and "not Elasticsearch" in exc.value.detail
