"""Running the provider on workers that share no disk: the object store they share instead
(scripts/stores/s3proxy.sh, the ``s3`` fixture) and the distributed demo
(scripts/demo-distributed.sh: CeleryExecutor, two workers, artifacts in S3)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, S3Bucket


def test_s3_fixture_reaches_the_bucket_through_the_airflow_connection(s3: S3Bucket) -> None:
    """What the operators do with artifacts_root = s3://kfm_s3@bucket/prefix: Airflow's
    ObjectStoragePath resolves the ``kfm_s3`` aws connection (endpoint_url in its extra)
    and writes to the local server with the client's default settings."""
    from airflow.sdk import ObjectStoragePath

    root = ObjectStoragePath(s3.url())
    (root / "receipts" / "r.json").write_text('{"ok": true}')
    assert s3.keys() == ["receipts/r.json"]
    assert s3.read("receipts/r.json") == b'{"ok": true}'
    assert [p.name for p in (root / "receipts").iterdir()] == ["r.json"]


MIGRATION = "PG-MIG-2026-02-28-01"
DEMO = REPO / "scripts" / "demo-distributed.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def distributed_run(pg_admin: object, s3: S3Bucket, tmp_path: Path) -> Iterator[tuple[dict, str]]:
    """scripts/demo-distributed.sh with its Airflow parts (homes, logs, metadata DB, the
    migrated database) private to this test and its artifacts in the test's bucket: the
    summary it writes and its output."""
    migrated, metadata = "t_" + uuid.uuid4().hex[:12], "t_af_" + uuid.uuid4().hex[:10]
    summary = tmp_path / "summary.json"
    env = {
        **os.environ,
        "KFM_DEMO_DIR": str(tmp_path / "demo"),
        "KFM_DEMO_DB": migrated,
        "KFM_DEMO_AIRFLOW_DB": metadata,
        "KFM_DEMO_BUCKET": s3.bucket,
        "KFM_DEMO_S3_PREFIX": s3.prefix,
        "KFM_DEMO_API_PORT": str(free_port()),
        "KFM_DEMO_SUMMARY": str(summary),
        "KFM_DEMO_TIMEOUT": "420",
    }
    env.pop("KFM_DEMO_KEEP", None)
    proc = subprocess.Popen(["bash", str(DEMO)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the script's trap stops what it started
        out, _ = proc.communicate(timeout=120)
    try:
        assert summary.is_file(), f"the demo wrote no summary (exit {proc.returncode}):\n{out[-6000:]}"
        yield json.loads(summary.read_text()), out
    finally:
        for name in (migrated, metadata):
            pg_admin.execute(  # type: ignore[attr-defined]
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            pg_admin.execute(f'DROP DATABASE IF EXISTS "{name}"')  # type: ignore[attr-defined]


def test_postgis_example_runs_on_two_celery_workers_with_artifacts_only_in_s3(
    distributed_run: tuple[dict, str], s3: S3Bucket
) -> None:
    """The issue's setup: CeleryExecutor, worker A on `default`, worker B on `kfm_apply` (a
    cluster policy routes apply there), each with its own AIRFLOW_HOME and working
    directory, artifacts_root = s3://kfm_s3@bucket/prefix. The run succeeds, apply ran on B
    and every other task on A, and the receipt verifies from the object store alone."""
    summary, out = distributed_run
    assert summary["state"] == "success", out[-6000:]
    ran = {t["task_id"]: t["hostname"] for t in summary["task_instances"] if t["state"] == "success"}
    assert ran["apply"] == "workerb.kfm-demo"
    assert {ran[t] for t in ("preflight", "baseline_pre", "baseline_post", "diff_gate", "receipt")} == {
        "workera.kfm-demo"
    }
    assert {t["queue"] for t in summary["task_instances"] if t["task_id"] == "apply"} == {"kfm_apply"}

    keys = s3.keys(MIGRATION)
    for key in ("baselines/pre.json", "baselines/post.json", "diffs/summary.json", "receipts/run_receipt.json"):
        assert f"{MIGRATION}/{key}" in keys, keys
    receipt = json.loads(s3.read(f"{MIGRATION}/receipts/run_receipt.json"))
    assert (receipt["migration_id"], receipt["status"]) == (MIGRATION, "succeeded")
    # `kfm-migrations verify s3://kfm_s3@<bucket>/<prefix>/<id>`, run by the demo from a
    # process that never saw a worker's disk
    assert summary["artifacts"] == s3.url(MIGRATION)
    assert summary["verify_exit"] == 0, summary["verify_output"]
    assert "verified:" in summary["verify_output"], summary["verify_output"]
