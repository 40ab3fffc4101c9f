"""A killed search run, against the real OpenSearch node: the next run takes the dead run's
lock over, cancels its reindex task, deletes the indices it created, lifts its write blocks,
moves no alias, says so in its receipt, and then applies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import test_search as ts
from test_search import CONN_ID, MIG, alias_on, count, edit_forward, ledger, receipt, run, summary
from test_search_protection import opt_in_write_block, write_blocked

from airflow_kfm_migrations.declaration.bundle import load_bundle
from airflow_kfm_migrations.stores.search import session as search_session
from airflow_kfm_migrations.stores.search.governance import GOVERNANCE_INDEX
from airflow_kfm_migrations.stores.search.store import SearchStore

pytestmark = pytest.mark.opensearch

os_client = ts.os_client
cluster = ts.cluster
example = ts.example

REPO = Path(__file__).resolve().parent.parent
EXTRA_DOCS = 20_000  # with requests_per_second 2000 (1000-document batches) the reindex lasts ~10 s


def wait_for(what: str, probe: Any, seconds: float = 120) -> Any:
    """Poll ``probe`` until it returns something truthy (a timeout fails the test; no timing is asserted)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def governance_doc(c: Any, doc_id: str) -> dict[str, Any] | None:
    if not c.indices.exists(index=GOVERNANCE_INDEX):
        return None
    if not c.exists(index=GOVERNANCE_INDEX, id=doc_id):
        return None
    return dict(c.get(index=GOVERNANCE_INDEX, id=doc_id)["_source"])


def governance_docs(c: Any, kind: str) -> list[dict[str, Any]]:
    c.indices.refresh(index=GOVERNANCE_INDEX)
    hits = c.search(index=GOVERNANCE_INDEX, body={"size": 50, "query": {"term": {"type": kind}}})
    return [h["_source"] for h in hits["hits"]["hits"]]


def running_reindex(c: Any, dest: str) -> dict[str, Any] | None:
    """The running reindex task into ``dest`` (tasks API), with its id, or None."""
    res = c.tasks.list(params={"actions": "*reindex", "detailed": "true"})
    for node in res.get("nodes", {}).values():
        for tid, t in node.get("tasks", {}).items():
            if t.get("description", "").endswith(f"to [{dest}]"):
                return {**t, "id": tid}
    return None


def add_parcels(c: Any, n: int) -> None:
    from opensearchpy import helpers

    helpers.bulk(
        c,
        (
            {"_index": "parcels_v1", "_id": f"p-{i}", "_source": {"parcel_id": f"p-{i}", "name": f"parcel {i}"}}
            for i in range(50, 50 + n)
        ),
        refresh=True,
        chunk_size=5000,
    )


def test_killed_run_is_recovered_by_the_next_run(
    example: Path, cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL of ``kfm-migrations run`` while its reindex task runs. The alias never moved,
    but the task goes on filling parcels_v2 and the lock stays. The next run recovers by
    itself (the dead process is gone on this host), then applies."""
    c = cluster
    add_parcels(c, EXTRA_DOCS)
    total = 50 + EXTRA_DOCS
    opt_in_write_block(example)
    edit_forward(example, lambda a: a[1]["reindex"].update(requests_per_second=2000))
    out = tmp_path / "killed"
    argv = ["run", str(example), "--conn-id", CONN_ID, "--artifacts", str(out), "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow_kfm_migrations.cli", *argv],
        cwd=REPO,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    record: dict[str, Any] = {}
    try:
        # The reindex task runs, has written documents, and the in-flight record names it.
        task = wait_for(
            "the reindex task to write",
            lambda: (t := running_reindex(c, "parcels_v2")) and t["status"]["created"] > 0 and t,
        )
        record = wait_for(
            "the in-flight record to name the task",
            lambda: (r := governance_doc(c, f"inflight:{MIG}")) and task["id"] in r["tasks"] and r,
        )
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()  # reaped: its PID no longer exists
    assert proc.returncode == -signal.SIGKILL
    dead = record["run_id"]
    assert record["indices"] == [{"index": "parcels_v2", "state": "created"}]
    assert record["write_blocks"] == [{"index": "authority_sites_v1", "previous": None}]
    # What the killed run left: its task still running (tasks API), its index, its lock, its block.
    left = c.tasks.get(task_id=task["id"])
    assert left["completed"] is False
    assert governance_doc(c, f"lock:{MIG}")["owner"] == dead
    assert alias_on(c) == ["parcels_v1"] and c.indices.exists(index="parcels_v2")
    assert write_blocked(c) == "true"
    dead_uuid = c.indices.get(index="parcels_v2")["parcels_v2"]["settings"]["index"]["uuid"]

    # The next run: faster (no throttle), and watched at the moment its apply starts.
    edit_forward(example, lambda a: a[1]["reindex"].pop("requests_per_second"))
    at_apply: dict[str, Any] = {}
    original = search_session.SearchSession.apply

    def spy(self: Any) -> Any:
        t = c.tasks.get(task_id=task["id"])
        at_apply.update(
            task_completed=t["completed"],
            task_canceled=t["task"]["status"].get("canceled"),
            v2_exists=c.indices.exists(index="parcels_v2"),
            alias=alias_on(c),
            blocked=write_blocked(c),
            lock_owner=governance_doc(c, f"lock:{MIG}")["owner"],
        )
        return original(self)

    monkeypatch.setattr(search_session.SearchSession, "apply", spy)
    out2 = tmp_path / "next"
    assert run(example, out2) == 0, receipt(out2)["reason"]
    assert at_apply == {
        "task_completed": True,
        "task_canceled": "by user request",
        "v2_exists": False,  # the dead run's parcels_v2 was deleted
        "alias": ["parcels_v1"],  # no alias moved by the recovery
        "blocked": None,  # its write block lifted (this run sets its own inside apply)
        "lock_owner": receipt(out2)["run_id"],
    }
    r = receipt(out2)
    assert r["status"] == "succeeded"
    line = r["metrics"]["recovered_interrupted_run"]
    assert line.startswith(f"recovered interrupted run {dead[:12]} (apply, phase applying;")
    assert f"its lock was taken over: its process {proc.pid} on this host is gone" in line
    assert f"reindex task(s) {task['id']} cancelled" in line and "index(es) parcels_v2 it created deleted" in line
    assert "write block lifted from authority_sites_v1" in line and line.endswith("no alias was moved")
    assert any(f["code"] == "interrupted_run_recovered" and f["message"] == line for f in summary(out2)["findings"])
    assert {"name": "recovery", "passed": True, "detail": line} in r["validation"]
    assert f"recovered an interrupted run: {line}" in r["policy"]
    (rec,) = governance_docs(c, "recovery")
    assert rec["interrupted_run_id"] == dead and rec["run_id"] == r["run_id"] and rec["summary"] == line
    # Then it applied: a new parcels_v2 with every document, the alias flipped, one ledger entry.
    assert c.indices.get(index="parcels_v2")["parcels_v2"]["settings"]["index"]["uuid"] != dead_uuid
    assert count(c, "parcels_v2") == total and alias_on(c) == ["parcels_v2"]
    assert [e["run_id"] for e in ledger(c)] == [r["run_id"]]
    assert write_blocked(c) is None and count(c, "authority_sites_v1") == 2
    assert governance_doc(c, f"inflight:{MIG}") is None and governance_doc(c, f"lock:{MIG}") is None


def plant_dead_run(c: Any, bundle: Path, *, phase: str = "applying", host: str = "another-host|boot|pid:[1]") -> str:
    """What a run killed on another host leaves: its lock (last heartbeat an hour ago), its
    in-flight record, the index it created (with a document of its own) and its write block."""
    with SearchStore.from_conn_id(CONN_ID).session(load_bundle(bundle), "0" * 32):
        pass  # creates the governance index
    dead = "d" * 32
    c.indices.create(index="parcels_v2", body={"settings": {"number_of_shards": 1, "number_of_replicas": 0}})
    c.index(index="parcels_v2", id="half", body={"parcel_id": "half-done"}, params={"refresh": "true"})
    c.indices.put_settings(index="authority_sites_v1", body={"index.blocks.write": True})
    lock = {"type": "lock", "migration_id": MIG, "owner": dead, "ts": time.time() - 3600, "at": "an hour ago"}
    c.index(index=GOVERNANCE_INDEX, id=f"lock:{MIG}", body={**lock, "host": host, "pid": 1}, params={"refresh": "true"})
    inflight = {
        "type": "inflight",
        "migration_id": MIG,
        "run_id": dead,
        "operation": "apply",
        "phase": phase,
        "indices": [{"index": "parcels_v2", "state": "created"}],
        "tasks": [],
        "write_blocks": [{"index": "authority_sites_v1", "previous": None}],
    }
    c.index(index=GOVERNANCE_INDEX, id=f"inflight:{MIG}", body=inflight, params={"refresh": "true"})
    return dead


def test_dead_holder_with_a_stale_heartbeat_is_recovered(example: Path, cluster: Any, tmp_path: Path) -> None:
    """A holder on another host cannot be checked by PID: its heartbeat is older than
    KFM_SEARCH_LOCK_STALE_SECONDS (default three heartbeats), so it is dead."""
    dead = plant_dead_run(cluster, example)
    out = tmp_path / "out"
    assert run(example, out) == 0, receipt(out)["reason"]
    line = receipt(out)["metrics"]["recovered_interrupted_run"]
    assert f"recovered interrupted run {dead[:12]}" in line and "no heartbeat for" in line
    assert "index(es) parcels_v2 it created deleted" in line and "write block lifted from authority_sites_v1" in line
    assert count(cluster, "parcels_v2") == 50 and not cluster.exists(index="parcels_v2", id="half")
    assert alias_on(cluster) == ["parcels_v2"] and write_blocked(cluster) is None


def test_live_holder_is_refused_with_the_way_out(example: Path, cluster: Any, tmp_path: Path) -> None:
    dead = plant_dead_run(cluster, example)
    cluster.update(
        index=GOVERNANCE_INDEX, id=f"lock:{MIG}", body={"doc": {"ts": time.time()}}, params={"refresh": "true"}
    )
    out = tmp_path / "out"
    assert run(example, out) == 1
    reason = receipt(out)["reason"]
    assert f"another run ({dead[:12]}) holds the lock" in reason and "last heartbeat" in reason
    assert "KFM_SEARCH_LOCK_STALE_SECONDS" in reason and "kfm-migrations break-lock" in reason
    assert cluster.exists(index="parcels_v2", id="half")  # a live holder's work is left alone
    # break-lock, then the next run recovers.
    argv = ["break-lock", str(example), "--conn-id", CONN_ID, "--artifacts", str(out), "--quiet"]
    assert ts.main([*argv, "--reason", "worker lost (INC-7)"]) == 0
    assert run(example, out) == 0
    line = receipt(out)["metrics"]["recovered_interrupted_run"]
    assert "its lock was gone" in line and "parcels_v2" in line
    assert alias_on(cluster) == ["parcels_v2"] and write_blocked(cluster) is None


def test_a_flip_that_may_have_happened_is_not_undone(example: Path, cluster: Any, tmp_path: Path) -> None:
    """Killed between the alias flip and the ledger entry: an alias already points to the
    index it created. Deleting it would break readers; the run refuses and deletes nothing."""
    plant_dead_run(cluster, example, phase="flipping")
    cluster.indices.update_aliases(
        body={
            "actions": [
                {"remove": {"index": "parcels_v1", "alias": "parcels"}},
                {"add": {"index": "parcels_v2", "alias": "parcels"}},
            ]
        }
    )
    out = tmp_path / "out"
    assert run(example, out) == 1
    r = receipt(out)
    assert r["status"] == "failed" and "an alias already points to parcels_v2" in r["reason"]
    assert "Nothing was deleted" in r["reason"]
    assert cluster.exists(index="parcels_v2", id="half") and alias_on(cluster) == ["parcels_v2"]
    assert governance_doc(cluster, f"inflight:{MIG}") is not None
