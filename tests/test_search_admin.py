"""``kfm-migrations gc`` and ``kfm-migrations break-lock`` against the real OpenSearch node.

gc deletes the old index an apply kept for a rollback only after the recorded retention,
never one an alias points to, never a protected or forbidden one; both commands write a
receipt through the lifecycle's receipt machinery.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import test_search as ts
from test_search import CONN_ID, MIG, alias_on, count, ledger, receipt, run

from airflow_kfm_migrations.cli import main as cli_main
from airflow_kfm_migrations.stores.search.governance import GOVERNANCE_INDEX

pytestmark = pytest.mark.opensearch

# The OpenSearch fixtures of test_search (the node lock, a clean node, the example bundle).
os_client = ts.os_client
cluster = ts.cluster
example = ts.example


def main(argv: list[str]) -> int:
    return cli_main(argv)


def gc(bundle: Path, out: Path, *extra: str) -> int:
    return main(["gc", str(bundle), "--conn-id", CONN_ID, "--artifacts", str(out), "--quiet", *extra])


def later(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


def governance_docs(c: Any, kind: str) -> list[dict[str, Any]]:
    c.indices.refresh(index=GOVERNANCE_INDEX)
    hits = c.search(index=GOVERNANCE_INDEX, body={"size": 50, "query": {"term": {"type": kind}}})
    return [h["_source"] for h in hits["hits"]["hits"]]


# ------------------------------------------------------------------ retention recorded


def test_apply_records_what_it_keeps_and_until_when(example: Path, cluster: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = datetime.now(UTC)
    assert run(example, out) == 0
    m = receipt(out)["metrics"]
    assert m["old_indices_kept"] == 1 and m["old_indices_kept_names"] == "parcels_v1"
    assert m["old_index_retention_days"] == 7
    until = datetime.fromisoformat(str(m["old_indices_kept_until"]))
    assert before + timedelta(days=7) <= until <= datetime.now(UTC) + timedelta(days=7)
    (entry,) = ledger(cluster)
    assert entry["old_index_retention_days"] == 7
    assert entry["retained_indices"] == [{"index": "parcels_v1", "keep_until": m["old_indices_kept_until"]}]


# ------------------------------------------------------------------ gc


def test_gc_waits_for_the_retention_then_deletes(example: Path, cluster: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(example, out) == 0
    applied = receipt(out)
    # Within the retention: nothing happens, but a receipt says so.
    assert gc(example, out) == 0
    r = receipt(out)
    assert r["operation"] == "gc" and r["status"] == "noop" and r["metrics"]["gc_kept_indices"] == "parcels_v1"
    assert r["previous_receipt_digest"] == applied["receipt_digest"]
    assert cluster.indices.exists(index="parcels_v1")
    # A dry run past the retention lists the index and writes nothing.
    assert gc(example, out, "--now", later(8), "--dry-run") == 0
    assert cluster.indices.exists(index="parcels_v1") and receipt(out) == r
    # Past the retention: deleted, under the lock, with a receipt.
    assert gc(example, out, "--now", later(8)) == 0
    r2 = receipt(out)
    assert r2["operation"] == "gc" and r2["status"] == "succeeded"
    assert r2["metrics"]["gc_deleted"] == 1 and r2["metrics"]["gc_deleted_indices"] == "parcels_v1"
    assert {c["name"]: c["passed"] for c in r2["validation"]}["lock"] is True
    assert not cluster.indices.exists(index="parcels_v1")
    assert alias_on(cluster) == ["parcels_v2"] and count(cluster, "parcels_v2") == 50
    assert not cluster.exists(index=GOVERNANCE_INDEX, id=f"lock:{MIG}")
    (doc,) = governance_docs(cluster, "gc")
    assert doc["deleted_indices"] == ["parcels_v1"] and doc["apply_run_id"] == applied["run_id"]
    # Still applied: the ledger is unchanged and a re-run is a no-op.
    assert [e["operation"] for e in ledger(cluster)] == ["apply"]
    assert main(["verify", str(out)]) == 0
    # Nothing left to collect.
    assert gc(example, out, "--now", later(9)) == 0
    assert receipt(out)["status"] == "noop" and receipt(out)["metrics"]["gc_already_gone"] == 1
    assert run(example, out) == 0 and receipt(out)["status"] == "noop"


def test_gc_never_deletes_an_aliased_index(example: Path, cluster: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(example, out) == 0
    cluster.indices.update_aliases(body={"actions": [{"add": {"index": "parcels_v1", "alias": "parcels_legacy"}}]})
    assert gc(example, out, "--now", later(30)) == 0
    r = receipt(out)
    assert r["status"] == "noop" and r["metrics"]["gc_kept_indices"] == "parcels_v1"
    assert "an alias points to it" in {c["name"]: c["detail"] for c in r["validation"]}["retention"]
    assert cluster.indices.exists(index="parcels_v1")


def test_gc_never_deletes_protected_or_forbidden_indices(example: Path, cluster: Any, tmp_path: Path) -> None:
    """Even with a ledger entry that names them (edited by hand), they stay."""
    out = tmp_path / "out"
    assert run(example, out) == 0
    cluster.indices.create(index="authority_sites_v0", body={"settings": {"number_of_shards": 1}})
    (hit,) = cluster.search(index=GOVERNANCE_INDEX, body={"query": {"term": {"type": "ledger"}}})["hits"]["hits"]
    src = hit["_source"]
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    src["retained_indices"] = [
        {"index": ix, "keep_until": past} for ix in ("authority_sites_v1", "authority_sites_v0", "parcels_v1")
    ]
    cluster.index(index=GOVERNANCE_INDEX, id=hit["_id"], body=src, params={"refresh": "true"})
    assert gc(example, out) == 0
    r = receipt(out)
    assert r["status"] == "succeeded" and r["metrics"]["gc_deleted_indices"] == "parcels_v1"
    detail = {c["name"]: c["detail"] for c in r["validation"]}["retention"]
    assert "authority_sites_v1: kept, forbidden index" in detail  # authority_* is forbidden
    assert cluster.indices.exists(index="authority_sites_v1") and cluster.indices.exists(index="authority_sites_v0")
    assert count(cluster, "authority_sites_v1") == 2


def test_gc_after_a_rollback_collects_nothing(example: Path, cluster: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(example, out) == 0
    assert main(["rollback", str(example), "--conn-id", CONN_ID, "--artifacts", str(out), "--quiet"]) == 0
    assert gc(example, out, "--now", later(30)) == 0
    assert receipt(out)["status"] == "noop"
    assert alias_on(cluster) == ["parcels_v1"] and count(cluster, "parcels_v1") == 50


def test_gc_waits_for_a_held_lock(example: Path, cluster: Any, tmp_path: Path) -> None:
    from airflow_kfm_migrations.declaration.bundle import load_bundle
    from airflow_kfm_migrations.stores.search.store import SearchStore

    out = tmp_path / "out"
    assert run(example, out) == 0
    with SearchStore.from_conn_id(CONN_ID).session(load_bundle(example), "9" * 32):
        assert gc(example, out, "--now", later(30)) == 1
        r = receipt(out)
        assert r["status"] == "failed" and "holds the lock" in r["reason"]
    assert cluster.indices.exists(index="parcels_v1")


def test_gc_bad_now_is_usage_error(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(p.relative_to(example) for p in example.rglob("*"))
    assert gc(example, example, "--now", "next tuesday") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == ["--now: -: not an ISO 8601 timestamp: 'next tuesday'"]
    assert sorted(p.relative_to(example) for p in example.rglob("*")) == before  # nothing written


# ------------------------------------------------------------------ break-lock


def test_break_lock_names_the_previous_holder(
    example: Path, cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_kfm_migrations.declaration.bundle import load_bundle
    from airflow_kfm_migrations.stores.search.store import SearchStore

    monkeypatch.setenv("KFM_SEARCH_LOCK_STALE_SECONDS", "3600")

    with SearchStore.from_conn_id(CONN_ID).session(load_bundle(example), "e" * 32):
        pass  # creates the governance index
    stuck = "7" * 32
    cluster.index(
        index=GOVERNANCE_INDEX,
        id=f"lock:{MIG}",
        body={"type": "lock", "owner": stuck, "ts": time.time() - 600, "at": "2026-11-29T10:00:00+00:00"},
        params={"refresh": "true"},
    )
    out = tmp_path / "out"
    # A run is refused while the lock is held (10 minutes old is not stale here), and told the way out.
    assert run(example, out) == 1 and "holds the lock" in receipt(out)["reason"]
    assert (
        "kfm-migrations break-lock" in receipt(out)["reason"]
        and "KFM_SEARCH_LOCK_STALE_SECONDS" in receipt(out)["reason"]
    )
    capsys.readouterr()
    argv = ["break-lock", str(example), "--conn-id", CONN_ID, "--artifacts", str(out), "--quiet"]
    assert main([*argv, "--reason", "worker killed by OOM (INC-42)"]) == 0
    printed = capsys.readouterr().out
    assert f"lock held by run {stuck} since 2026-11-29T10:00:00+00:00" in printed and "NOT stale" in printed
    r = receipt(out)
    assert r["operation"] == "break_lock" and r["status"] == "succeeded"
    assert r["metrics"]["previous_holder"] == stuck and r["metrics"]["previous_lock_stale"] == 0
    assert stuck in r["reason"] and "INC-42" in r["reason"]
    assert not cluster.exists(index=GOVERNANCE_INDEX, id=f"lock:{MIG}")
    (doc,) = governance_docs(cluster, "break_lock")
    assert doc["previous_owner"] == stuck and doc["run_id"] == r["run_id"]
    assert main(["verify", str(out)]) == 0
    # Nothing held any more: a no-op with a receipt; the run goes through.
    assert main([*argv, "--reason", "again"]) == 0 and receipt(out)["status"] == "noop"
    assert run(example, out) == 0 and alias_on(cluster) == ["parcels_v2"]


def test_break_lock_requires_a_reason(example: Path) -> None:
    with pytest.raises(SystemExit):
        main(["break-lock", str(example), "--conn-id", CONN_ID])


def test_break_lock_on_an_unreachable_cluster_fails_with_a_receipt(
    example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_KFM_SEARCH_DOWN", "opensearch://kfm:s3cr3t-pw@127.0.0.1:1?timeout=2")
    out = tmp_path / "out"
    argv = ["break-lock", str(example), "--conn-id", "kfm_search_down", "--artifacts", str(out), "--quiet"]
    assert main([*argv, "--reason", "stuck"]) == 1
    r = receipt(out)
    assert r["operation"] == "break_lock" and r["status"] == "failed" and "did not answer" in r["reason"]
    assert "s3cr3t-pw" not in json.dumps(r)


# ------------------------------------------------------------------ break-lock on graph


def test_break_lock_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The graph store's single ``:KfmLock`` node: shown, removed, named in the receipt."""
    import os
    import shutil

    from conftest import MIGRATIONS, port_open, server_missing

    port = int(os.environ.get("KFM_NEO4J_BOLT_PORT", "7687"))
    if not port_open(port):
        server_missing("Neo4j", "bash scripts/stores/neo4j.sh start")
    import neo4j

    from airflow_kfm_migrations.stores.graph.governance import LOCK_KEY, LOCK_LABEL

    uri = f"neo4j://127.0.0.1:{port}"
    monkeypatch.setenv("AIRFLOW_CONN_KFM_GRAPH_ADMIN", uri)
    src = MIGRATIONS / "graph" / "GRAPH-MIG-2026-03-03-01"
    bundle = tmp_path / "graph" / src.name
    shutil.copytree(src, bundle, ignore=shutil.ignore_patterns("baselines", "diffs", "receipts"))
    stuck = "6" * 32
    with neo4j.GraphDatabase.driver(uri, auth=None) as drv:
        drv.execute_query(
            f"MERGE (l:{LOCK_LABEL} {{key: $key}}) ON CREATE SET l.migration_id = 'GRAPH-MIG-X', l.run_id = $run, "
            "l.acquired_at = timestamp() - 60000",
            key=LOCK_KEY,
            run=stuck,
        )
        held = drv.execute_query(f"MATCH (l:{LOCK_LABEL} {{key: $key}}) RETURN l.run_id AS r", key=LOCK_KEY).records
        if held[0]["r"] != stuck:
            pytest.fail("another run holds the graph lock; the break-lock case needs the server to itself")
        out = tmp_path / "out"
        argv = ["break-lock", str(bundle), "--conn-id", "kfm_graph_admin", "--artifacts", str(out), "--quiet"]
        assert main([*argv, "--reason", "graph worker gone"]) == 0
        assert f"lock held by run {stuck}" in capsys.readouterr().out
        r = receipt(out)
        assert r["operation"] == "break_lock" and r["metrics"]["previous_holder"] == stuck
        assert r["metrics"]["previous_holder_migration"] == "GRAPH-MIG-X"
        left = drv.execute_query(f"MATCH (l:{LOCK_LABEL}) RETURN count(l) AS n").records[0]["n"]
        assert left == 0
        assert main([*argv, "--reason", "again"]) == 0 and receipt(out)["status"] == "noop"
