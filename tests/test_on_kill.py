"""Killing ``apply`` while its reindex runs, against the real OpenSearch node: the run cancels
its reindex task, deletes the index it built, moves no alias, releases its lock and writes a
receipt saying it was killed; the next run is not blocked and needs no recovery. On PostGIS,
killing it during a long statement cancels the statement and rolls the transaction back.

The Airflow cases go through real Airflow: ``airflow dags test`` runs the task through the
task SDK's runner, whose SIGTERM handler is the one that calls ``on_kill`` when Airflow kills
a task (the supervisor sends SIGTERM to the task process).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import test_search as ts
from conftest import LEDGER_SCHEMA, REPO, PgDatabase
from test_airflow import DAG_ID as PG_DAG_ID
from test_airflow import (
    PG_ID,
    _world,
    airflow_env,  # noqa: F401  (a fixture)
)
from test_backfill import assert_filled, configure, items, progress  # noqa: F401  (items: a fixture)
from test_graph import CONN_ID as GRAPH_CONN_ID
from test_graph import gexample, graph, neo4j_server  # noqa: F401  (fixtures)
from test_graph import run as graph_run
from test_search import CONN_ID, MIG, alias_on, count, edit_forward, ledger, receipt, run
from test_search_recovery import EXTRA_DOCS, add_parcels, governance_doc, running_reindex, wait_for

from airflow_kfm_migrations.declaration.bundle import load_bundle
from airflow_kfm_migrations.engine import RunOptions, rollback_migration, run_backfill, run_migration
from airflow_kfm_migrations.util.cancel import KILLED_BY_AIRFLOW, Cancellation

os_client = ts.os_client
cluster = ts.cluster
example = ts.example

DAG_ID = "kfm_migration__" + MIG


def slow_reindex(c: Any, bundle: Path) -> None:
    """20,050 documents reindexed at 2,000 per second: the reindex task runs for about 10 s."""
    add_parcels(c, EXTRA_DOCS)
    edit_forward(bundle, lambda a: a[1]["reindex"].update(requests_per_second=2000))


def reindex_writing(c: Any) -> dict[str, Any] | None:
    """The run's reindex task into parcels_v2 (tasks API, with its id) once it has written
    documents and the run's in-flight record names it; None before."""
    t = running_reindex(c, "parcels_v2")
    if not t or t["status"]["created"] == 0:
        return None
    r = governance_doc(c, f"inflight:{MIG}")
    return dict(t) if r and t["id"] in r["tasks"] else None


@contextmanager
def cancelled_when(
    cancel: Cancellation, what: str, ready: Callable[[], Any], reason: str, then: Callable[[], None] = lambda: None
) -> Iterator[dict[str, Any]]:
    """While inside (the run), a thread waits until ``ready()`` and then cancels the run with
    ``reason`` and calls ``then()``; ``seen["ready"]`` is what ``ready()`` returned (absent:
    the run ended first)."""
    seen: dict[str, Any] = {}
    done = threading.Event()

    def watch() -> None:
        got = wait_for(what, lambda: done.is_set() or ready())
        if not done.is_set():
            seen["ready"] = got
            cancel.cancel(reason)
        then()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield seen
    finally:
        done.set()
        watcher.join()


def assert_left_nothing(c: Any, task_id: str) -> None:
    """The killed run's task was cancelled, its index is gone, no alias moved, nothing was
    recorded, and its lock and in-flight record are gone (the next run has nothing to recover)."""
    t = c.tasks.get(task_id=task_id)
    assert t["completed"] is True and t["task"]["status"].get("canceled") == "by user request"
    assert not c.indices.exists(index="parcels_v2")
    assert alias_on(c) == ["parcels_v1"] and count(c, "parcels_v1") == 50 + EXTRA_DOCS
    assert ledger(c) == []
    assert governance_doc(c, f"lock:{MIG}") is None
    assert governance_doc(c, f"inflight:{MIG}") is None


def assert_next_run_not_blocked(c: Any, bundle: Path, out: Path) -> None:
    """The next run takes the free lock at once, recovers nothing, and applies."""
    edit_forward(bundle, lambda a: a[1]["reindex"].pop("requests_per_second"))
    assert run(bundle, out) == 0, receipt(out)["reason"]
    r = receipt(out)
    assert r["status"] == "succeeded" and "recovered_interrupted_run" not in r["metrics"]
    assert alias_on(c) == ["parcels_v2"] and count(c, "parcels_v2") == 50 + EXTRA_DOCS
    assert [e["run_id"] for e in ledger(c)] == [r["run_id"]]


@pytest.mark.opensearch
def test_a_cancelled_run_stops_its_reindex_and_fails_closed(example: Path, cluster: Any, tmp_path: Path) -> None:
    """The engine's cancel hook, from another thread, as ``on_kill`` calls it."""
    c = cluster
    slow_reindex(c, example)
    cancel = Cancellation()
    out = tmp_path / "killed"
    with cancelled_when(cancel, "the reindex to write", lambda: reindex_writing(c), "stopped by the test") as seen:
        result = run_migration(load_bundle(example), RunOptions(conn_id=CONN_ID, artifacts_dir=out, cancel=cancel))
    task = seen["ready"]["id"]
    assert result.status == "rolled_back" and result.exit_code == 1
    r = receipt(out)
    assert r["status"] == "rolled_back"
    assert r["reason"].startswith(
        "stopped by the test: the forward was stopped (action 2 (reindex) of forward.json: reindex parcels_v1 -> "
        f"parcels_v2 was cancelled (task {task}))"
    )
    assert r["reason"].endswith("compensated by the rollback artifact, store equals pre")
    assert {"name": "cancelled", "passed": False, "detail": "stopped by the test"} in r["validation"]
    assert_left_nothing(c, task)
    assert_next_run_not_blocked(c, example, tmp_path / "next")


@pytest.mark.opensearch
def test_a_cancel_before_the_lock_runs_nothing(example: Path, cluster: Any, tmp_path: Path) -> None:
    cancel = Cancellation()
    cancel.cancel(KILLED_BY_AIRFLOW)
    out = tmp_path / "out"
    result = run_migration(load_bundle(example), RunOptions(conn_id=CONN_ID, artifacts_dir=out, cancel=cancel))
    assert (result.status, result.reason) == (
        "failed",
        "killed by Airflow (on_kill); stopped before the store was locked; nothing was run",
    )
    assert receipt(out)["status"] == "failed"
    assert not cluster.indices.exists(index="parcels_v2") and alias_on(cluster) == ["parcels_v1"]


class TaskTimeout(BaseException):
    """Like Airflow's AirflowTaskTimeout: raised in ``execute``, before ``on_kill`` is called."""


@pytest.mark.opensearch
def test_a_run_interrupted_by_an_exception_cancels_its_reindex_on_the_way_out(
    example: Path, cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``execution_timeout``: the timeout error unwinds the run while its reindex task writes.
    The session's exit cancels the task before deleting the index (else the task would
    write on into a deleted index), and releases the lock; the run writes no receipt."""
    from airflow_kfm_migrations.stores.search.lock import DocumentLock

    c = cluster
    slow_reindex(c, example)
    beat = DocumentLock.heartbeat
    seen: dict[str, Any] = {}

    def timing_out(self: Any) -> None:
        t = running_reindex(c, "parcels_v2")
        if t and t["status"]["created"] > 0:
            seen["task"] = t["id"]
            raise TaskTimeout()
        beat(self)

    monkeypatch.setattr(DocumentLock, "heartbeat", timing_out)
    with pytest.raises(TaskTimeout):
        run_migration(load_bundle(example), RunOptions(conn_id=CONN_ID, artifacts_dir=tmp_path / "out"))
    monkeypatch.setattr(DocumentLock, "heartbeat", beat)
    assert_left_nothing(c, seen["task"])
    assert_next_run_not_blocked(c, example, tmp_path / "next")


# ------------------------------------------------------------------ through Airflow


def airflow_world(tmp_path: Path, bundle: Path, env: dict[str, str]) -> dict[str, str]:
    """A bundles root holding the search example (as edited by the test) with a registry
    entry on the test's connection, and the DAGs serialized."""
    root = tmp_path / "migrations"
    shutil.copytree(bundle, root / "search" / MIG)
    reg = json.loads((REPO / "migrations" / "registry" / "migrations.v1.json").read_text())
    entry = next(e for e in reg["migrations"] if e["migration_id"] == MIG)
    entry["conn_id"] = CONN_ID
    (root / "registry").mkdir(parents=True)
    (root / "registry" / "migrations.v1.json").write_text(
        json.dumps({"schema_version": "migrations.v1", "migrations": [entry]})
    )
    out = dict(env, KFM_BUNDLES_ROOT=str(root), KFM_ARTIFACTS_ROOT=str(tmp_path / "artifacts"))
    out[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"]
    subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "reserialize"], env=out, check=True, capture_output=True, timeout=300
    )
    return out


def dags_test(env: dict[str, str], dag_id: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "airflow", "dags", "test", dag_id],
            env=env,
            cwd=REPO,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )


def kill_when(proc: subprocess.Popen[bytes], log: Path, what: str, ready: Callable[[], Any]) -> Any:
    """Wait until ``ready()`` (the process still running), then SIGTERM the process, as the
    supervisor does, and wait for it to end; what ``ready`` returned."""

    def probe() -> Any:
        if proc.poll() is not None:
            pytest.fail(f"airflow dags test ended before {what}:\n{log.read_text()[-4000:]}")
        return ready()

    try:
        got = wait_for(what, probe, 600)  # Airflow starts and runs the tasks before apply
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return got


@pytest.mark.opensearch
@pytest.mark.airflow
def test_airflow_kills_apply_during_a_long_reindex(
    example: Path,
    cluster: Any,
    airflow_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    """SIGTERM to the process running ``apply`` while its reindex task writes: the task
    runner's handler calls ``ApplyOperator.on_kill``, which cancels the task; the run fails
    closed with a receipt saying it was killed, and the next run is not blocked."""
    c = cluster
    slow_reindex(c, example)
    env = airflow_world(tmp_path, example, airflow_env)
    log = tmp_path / "dags-test.log"
    proc = dags_test(env, DAG_ID, log)
    task = kill_when(proc, log, "the reindex to write", lambda: reindex_writing(c))
    out = log.read_text()
    assert f"{MIG}: rolled_back: {KILLED_BY_AIRFLOW}: the forward was stopped" in out, out[-4000:]
    r = json.loads((tmp_path / "artifacts" / MIG / "receipts" / "run_receipt.json").read_text())
    assert r["operation"] == "apply" and r["status"] == "rolled_back"
    assert r["reason"].startswith(
        f"{KILLED_BY_AIRFLOW}: the forward was stopped (action 2 (reindex) of forward.json: reindex parcels_v1 -> "
        f"parcels_v2 was cancelled (task {task['id']}))"
    )
    assert {"name": "cancelled", "passed": False, "detail": KILLED_BY_AIRFLOW} in r["validation"]
    assert r["actor"].startswith(f"airflow:{DAG_ID}/")
    assert_left_nothing(c, task["id"])
    assert_next_run_not_blocked(c, example, tmp_path / "next")


SLEEP = "SELECT pg_sleep(600);"


def sleeping(db: PgDatabase) -> list[tuple]:
    """The run's statement still running on the server (pg_stat_activity)."""
    return db.sql(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND state = 'active' AND query LIKE %s",
        (db.name, "SELECT pg_sleep(600)%"),
    )


@pytest.mark.postgis
@pytest.mark.airflow
def test_airflow_kills_apply_during_a_long_postgis_statement(
    pgdb: PgDatabase,
    airflow_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    """SIGTERM while the forward's third statement sleeps, after it created the index: the
    statement is cancelled on the server at once, the transaction rolled back (no index, no
    ledger entry), the run's locks gone with it, a receipt saying it was killed."""
    before = pgdb.state()
    env = _world(tmp_path, pgdb, airflow_env, extra_sql=SLEEP)
    log = tmp_path / "dags-test.log"
    proc = dags_test(env, PG_DAG_ID, log)
    kill_when(proc, log, "the statement to run", lambda: sleeping(pgdb))
    out = log.read_text()
    assert sleeping(pgdb) == []
    assert f"{PG_ID}: failed: {KILLED_BY_AIRFLOW}: the forward was stopped" in out, out[-4000:]
    r = json.loads((tmp_path / "artifacts" / PG_ID / "receipts" / "run_receipt.json").read_text())
    assert r["operation"] == "apply" and r["status"] == "failed"
    assert r["reason"] == (
        f"{KILLED_BY_AIRFLOW}: the forward was stopped (statement 3 of forward.sql: 57014: canceling statement "
        "due to user request); transaction rolled back, store unchanged"
    )
    assert {"name": "cancelled", "passed": False, "detail": KILLED_BY_AIRFLOW} in r["validation"]
    assert pgdb.state() == before  # nothing committed: no index, no ledger entry
    # The transaction's advisory locks went with it: the next run takes them at once.
    bundle = Path(env["KFM_BUNDLES_ROOT"]) / "postgis" / PG_ID
    forward = bundle / "forward.sql"
    forward.write_text(forward.read_text().replace(SLEEP, ""))
    from airflow_kfm_migrations.cli import main

    nxt = tmp_path / "next"
    argv = ["run", str(bundle), "--conn-id", pgdb.conn_id, "--artifacts", str(nxt), "--quiet"]
    assert main(argv) == 0
    assert json.loads((nxt / "receipts" / "run_receipt.json").read_text())["status"] == "succeeded"
    assert pgdb.sql("SELECT 1 FROM pg_indexes WHERE indexname = 'parcels_geom_gist'")


@pytest.mark.postgis
def test_a_cancelled_backfill_keeps_its_committed_batches_and_resumes(
    tmp_path: Path,
    items: PgDatabase,  # noqa: F811
) -> None:
    """What ``BackfillOperator.on_kill`` asks: the running batch rolls back, the committed ones
    stay, the receipt says why it stopped, and the next run resumes without repeating a batch."""
    example = tmp_path / "postgis" / PG_ID
    shutil.copytree(
        REPO / "migrations" / "postgis" / PG_ID,
        example,
        ignore=shutil.ignore_patterns("baselines", "diffs", "receipts"),
    )
    configure(example, pause_ms=40)
    bundle = load_bundle(example)
    assert run_migration(bundle, RunOptions(conn_id=items.conn_id)).status == "succeeded"  # the schema part
    cancel = Cancellation()
    with cancelled_when(cancel, "8 committed batches", lambda: len(progress(items)) >= 8, KILLED_BY_AIRFLOW):
        result = run_backfill(bundle, RunOptions(conn_id=items.conn_id, cancel=cancel))
    assert (result.status, result.resumable) == ("failed", True)
    r = json.loads((example / "receipts" / "run_receipt.json").read_text())
    assert r["operation"] == "backfill" and r["status"] == "failed"
    assert r["reason"].startswith(
        f"{KILLED_BY_AIRFLOW}: backfill interrupted, committed batches kept; a re-run resumes: forward batch "
    )
    assert {"name": "cancelled", "passed": False, "detail": KILLED_BY_AIRFLOW} in r["validation"]
    done = progress(items)
    assert 8 <= len(done) < 41 and done[-1][1] is not None  # stopped mid-backfill
    committed = done[-1][2]
    assert items.sql("SELECT count(*) FROM public.items WHERE counter = 1")[0][0] == committed
    held = "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database WHERE l.locktype = 'advisory' "
    assert items.sql(held + "AND d.datname = current_database()")[0][0] == 0  # the lock was released
    # The next run resumes after the last committed batch, and no batch ran twice.
    from airflow_kfm_migrations.cli import main

    assert main(["run", str(example), "--conn-id", items.conn_id, "--quiet"]) == 0
    r = json.loads((example / "receipts" / "run_receipt.json").read_text())
    assert r["status"] == "succeeded" and r["metrics"]["resumed_from_batch"] == done[-1][0]
    assert_filled(items)


HEAVY = "MATCH (n:LegacyDataset) WITH n, reduce(s = 0, x IN range(1, 40000000) | s + x % 7) AS t SET n.kfm_sum = t;"


@pytest.mark.neo4j
def test_a_cancelled_graph_run_terminates_its_transaction_and_compensates(
    gexample: Path,  # noqa: F811
    graph: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The statement's transaction is terminated on the server, no further statement runs,
    and the rollback script compensates what committed before (the constraint)."""
    forward = gexample / "forward.cypher"
    lines = forward.read_text().splitlines(keepends=True)
    constraint = next(i for i, line in enumerate(lines) if line.startswith("CREATE CONSTRAINT"))
    lines.insert(constraint + 1, HEAVY + "\n")
    forward.write_text("".join(lines))
    query = (
        "SHOW TRANSACTIONS YIELD currentQuery, metaData "
        "WHERE currentQuery STARTS WITH 'MATCH (n:LegacyDataset) WITH n, reduce(' RETURN metaData"
    )
    cancel = Cancellation()
    out = tmp_path / "killed"
    with cancelled_when(cancel, "the heavy statement to run", lambda: graph.q(query), "stopped by the test") as seen:
        result = run_migration(
            load_bundle(gexample), RunOptions(conn_id=GRAPH_CONN_ID, artifacts_dir=out, cancel=cancel)
        )
    assert "ready" in seen, receipt(out)["reason"]
    assert result.status == "rolled_back"
    r = json.loads((out / "receipts" / "run_receipt.json").read_text())
    assert r["reason"].startswith("stopped by the test: the forward was stopped (statement 2 of forward.cypher ")
    assert "(line 4): Neo.ClientError.Transaction.Terminated: " in r["reason"]
    assert r["reason"].endswith("compensated by the rollback artifact, store equals pre")
    assert graph.q(query) == []  # its transaction is gone
    assert "dataset_id_unique" not in graph.constraints() and graph.count("LegacyDataset") == 5
    assert graph.q("MATCH (n) WHERE n.kfm_sum IS NOT NULL RETURN n") == []
    assert graph.q("MATCH (l:KfmLock) RETURN l") == []  # the lock was released, nothing in flight
    forward.write_text(forward.read_text().replace(HEAVY + "\n", ""))
    assert graph_run(gexample, tmp_path / "next") == 0


def pg_bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "postgis" / PG_ID
    shutil.copytree(
        REPO / "migrations" / "postgis" / PG_ID, bundle, ignore=shutil.ignore_patterns("baselines", "diffs", "receipts")
    )
    return bundle


@pytest.mark.postgis
def test_a_cancelled_non_transactional_run_is_compensated(tmp_path: Path, pgdb: PgDatabase) -> None:
    """What committed before the stopped statement is undone by the rollback script: a stop
    request stops the forward, never the compensation. The stopped statement waits for a
    lock that another session holds (released once the run was cancelled)."""
    before = pgdb.state(exclude_schemas=(LEDGER_SCHEMA,))  # a non-transactional run leaves the ledger schema
    bundle = pg_bundle(tmp_path)
    text = (bundle / "migration.yml").read_text()
    text += 'transactional: false\nnon_transactional_reason: "each statement commits on its own"\n'
    (bundle / "migration.yml").write_text(text + "timeouts:\n  lock_timeout: 10min\n")
    (bundle / "forward.sql").write_text(
        "CREATE INDEX parcels_geom_gist ON public.parcels USING gist (geom);\n"
        "ALTER TABLE public.parcels ADD COLUMN kfm_note text;\n"
    )
    (bundle / "rollback.sql").write_text(
        "DROP INDEX IF EXISTS public.parcels_geom_gist;\nALTER TABLE public.parcels DROP COLUMN IF EXISTS kfm_note;\n"
    )
    blocker: Any = pgdb.connect()
    blocker.execute("SELECT count(*) FROM public.parcels")  # its open transaction keeps an ACCESS SHARE lock
    waiting = (
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock' "
        "AND query LIKE 'ALTER TABLE public.parcels ADD COLUMN kfm_note%%'"
    )
    cancel = Cancellation()
    out = tmp_path / "out"
    try:
        with cancelled_when(
            cancel,
            "the statement to wait",
            lambda: pgdb.sql(waiting, (pgdb.name,)),
            "stopped by the test",
            blocker.close,
        ) as seen:
            result = run_migration(
                load_bundle(bundle), RunOptions(conn_id=pgdb.conn_id, artifacts_dir=out, cancel=cancel)
            )
    finally:
        blocker.close()
    assert "ready" in seen, result.reason
    assert (result.status, result.reason) == (
        "rolled_back",
        "stopped by the test: the forward was stopped (statement 2 of forward.sql: 57014: canceling statement due "
        "to user request); compensated by the rollback artifact, store equals pre",
    )
    assert pgdb.state(exclude_schemas=(LEDGER_SCHEMA,)) == before


@pytest.mark.postgis
def test_a_cancelled_rollback_commits_nothing_and_can_run_again(tmp_path: Path, pgdb: PgDatabase) -> None:
    """``kfm_migration_rollback`` killed while its script runs: the rollback's transaction is
    rolled back, the ledger still shows the apply, and the rollback runs again."""
    bundle = pg_bundle(tmp_path)
    out = tmp_path / "out"
    assert run_migration(load_bundle(bundle), RunOptions(conn_id=pgdb.conn_id, artifacts_dir=out)).status == (
        "succeeded"
    )
    rollback_sql = (bundle / "rollback.sql").read_text()
    (bundle / "rollback.sql").write_text(rollback_sql + SLEEP + "\n")
    cancel = Cancellation()
    with cancelled_when(cancel, "the statement to run", lambda: sleeping(pgdb), KILLED_BY_AIRFLOW) as seen:
        result = rollback_migration(
            load_bundle(bundle), RunOptions(conn_id=pgdb.conn_id, artifacts_dir=out, cancel=cancel)
        )
    assert "ready" in seen, result.reason
    assert (result.status, result.reason) == (
        "rollback_failed",
        f"{KILLED_BY_AIRFLOW}: the rollback was stopped (statement 3 of rollback.sql: 57014: canceling statement "
        "due to user request); nothing was recorded, run it again",
    )
    assert sleeping(pgdb) == []
    assert pgdb.sql("SELECT 1 FROM pg_indexes WHERE indexname = 'parcels_geom_gist'")  # rolled back: still there
    assert pgdb.sql("SELECT operation FROM kfm_governance.ledger ORDER BY id") == [("apply",)]
    (bundle / "rollback.sql").write_text(rollback_sql)
    again = rollback_migration(load_bundle(bundle), RunOptions(conn_id=pgdb.conn_id, artifacts_dir=out))
    assert again.status == "rolled_back", again.reason
    assert not pgdb.sql("SELECT 1 FROM pg_indexes WHERE indexname = 'parcels_geom_gist'")


@pytest.mark.postgis
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_cli_stopped_by_a_signal_fails_closed_with_a_receipt(
    tmp_path: Path, pgdb: PgDatabase, signum: signal.Signals
) -> None:
    """``kfm-migrations run`` stopped by SIGTERM (a CI job's timeout) or SIGINT (Ctrl-C) while
    its forward sleeps, after it created an index: the statement is cancelled on the server,
    the transaction rolled back, and the run ends with exit 1 and a receipt naming the signal.
    Without the handler the process dies on the signal: no receipt."""
    before = pgdb.state()
    bundle = pg_bundle(tmp_path)
    forward = bundle / "forward.sql"
    forward.write_text(forward.read_text() + "\n" + SLEEP + "\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "airflow_kfm_migrations.cli", "run", str(bundle), "--conn-id", pgdb.conn_id]
    proc = subprocess.Popen([*cmd, "--artifacts", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("the forward's sleep to run", lambda: sleeping(pgdb) or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    name = signal.Signals(signum).name
    assert proc.returncode == 1, stderr[-3000:]
    assert sleeping(pgdb) == []
    r = json.loads((out / "receipts" / "run_receipt.json").read_text())
    assert r["status"] == "failed" and r["reason"].startswith(f"stopped by {name}: the forward was stopped"), r
    assert "57014" in r["reason"] and r["reason"].endswith("store unchanged")
    assert f"failed: receipt {out / 'receipts' / 'run_receipt.json'}" in stdout
    assert pgdb.state() == before
