"""Artifacts in object storage (issue #14): every task stages privately and writes through
ObjectStoragePath; the receipt task verifies what the store holds; ``verify`` reads a URL
or a receipt_ref.json pointer. Against the real s3proxy (scripts/stores/s3proxy.sh) and
PostGIS, through ``airflow dags test``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PgDatabase, S3Bucket
from test_airflow import (  # noqa: F401 - airflow_env is a fixture
    DAG_ID,
    PG_ID,
    _dags_test,
    _world,
    airflow_env,
    dags_test_with_drift,
)

from airflow_kfm_migrations.engine import receipts as engine_receipts
from airflow_kfm_migrations.engine.run import RUNS
from airflow_kfm_migrations.operators import artifacts

pytestmark = pytest.mark.airflow


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airflow_kfm_migrations.cli", *args],
        cwd=cwd,
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _s3_world(tmp_path: Path, db: PgDatabase, env: dict[str, str], s3: S3Bucket, **kw: str) -> dict[str, str]:
    """The PostGIS example with ``artifacts_root`` in the bucket, and a private TMPDIR to
    show that every task's staging folder is gone when the task ends."""
    out = _world(tmp_path, db, env, **kw)
    (tmp_path / "tmp").mkdir()
    out.update(
        {
            "KFM_ARTIFACTS_ROOT": s3.url(),
            f"AIRFLOW_CONN_{s3.conn_id.upper()}": s3.conn_uri,
            "TMPDIR": str(tmp_path / "tmp"),
        }
    )
    return out


def _no_local_artifacts(tmp_path: Path, env: dict[str, str]) -> None:
    """Nothing staged is left behind: no task's folder survives it, none went to AIRFLOW_HOME,
    and no artifacts folder was made beside the bundle."""
    assert not [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith(artifacts.STAGE_PREFIX)]
    assert not list(Path(env["AIRFLOW_HOME"]).rglob("kfm-staging"))
    assert not list(Path(env["AIRFLOW_HOME"]).rglob("run_receipt.json"))
    assert not (tmp_path / "artifacts").exists()
    assert not (tmp_path / "migrations" / "postgis" / PG_ID / "receipts" / "run_receipt.json").exists()


def test_module_names_agree_with_the_engine() -> None:
    """operators/artifacts.py keeps its imports light (DAG parse) and names the layout itself."""
    assert artifacts.RECEIPT.as_posix() == engine_receipts.RECEIPT.as_posix()
    assert artifacts.HISTORY.as_posix() == engine_receipts.HISTORY.as_posix()
    assert artifacts.REF.as_posix() == engine_receipts.REF.as_posix()
    assert artifacts.RUNS == RUNS


def test_dag_run_keeps_its_artifacts_in_s3_and_verify_reads_them_there(
    pgdb: PgDatabase, airflow_env: dict[str, str], tmp_path: Path, s3: S3Bucket  # noqa: F811
) -> None:
    env = _s3_world(tmp_path, pgdb, airflow_env, s3)
    p = _dags_test(env)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-4000:]
    keys = s3.keys(PG_ID)
    receipt = json.loads(s3.read(f"{PG_ID}/receipts/run_receipt.json"))
    digest = receipt["receipt_digest"]
    assert receipt["status"] == "succeeded"
    for key in (
        "baselines/committed-pre.json",
        "baselines/committed-post.json",
        "baselines/pre.json",
        "baselines/post.json",
        "diffs/summary.json",
        "diffs/touched.csv",
        "receipts/run_receipt.json",
        f"receipts/history/{digest}.json",
        "receipts/receipt_ref.json",
    ):
        assert f"{PG_ID}/{key}" in keys, (key, keys)
    for out in receipt["outputs"]:  # every output the receipt lists is in the bucket, unchanged
        assert f"{PG_ID}/{out['path']}" in keys
    ref = json.loads(s3.read(f"{PG_ID}/receipts/receipt_ref.json"))
    assert ref["receipt_digest"] == digest and ref["run_id"] == receipt["run_id"]
    assert ref["uri"] == s3.url(PG_ID, "receipts", "history", f"{digest}.json")  # the absolute URL
    assert s3.read(f"{PG_ID}/receipts/history/{digest}.json") == s3.read(f"{PG_ID}/receipts/run_receipt.json")
    assert ref["uri"] in log  # the receipt task logs the receipt's URL
    assert "receipt verified" in log
    assert s3.secret_key not in log and "kfm-local-only" not in log
    _no_local_artifacts(tmp_path, env)

    # verify from the store: the folder, the latest receipt, the history entry, the pointer
    cli_env = dict(env)
    for target in (s3.url(PG_ID), s3.url(PG_ID, "receipts", "run_receipt.json"), ref["uri"]):
        v = _cli("verify", target, cwd=tmp_path, env=cli_env)
        assert v.returncode == 0, (target, v.stdout, v.stderr)
        assert v.stdout.startswith("verified: ") and ref["uri"] in v.stdout
    pointer = tmp_path / "migrations" / "postgis" / PG_ID / "receipts" / "receipt_ref.json"  # committed with it
    v = _cli("verify", s3.url(PG_ID), "--write-ref", str(pointer), cwd=tmp_path, env=cli_env)
    assert v.returncode == 0, v.stderr
    assert json.loads(pointer.read_text())["uri"] == ref["uri"]
    v = _cli("verify", str(pointer), cwd=tmp_path, env=cli_env)
    assert v.returncode == 0, v.stderr
    beside = pointer.parent.parent / "receipt_ref.json"  # would become an input of the bundle
    v = _cli("verify", s3.url(PG_ID), "--write-ref", str(beside), cwd=tmp_path, env=cli_env)
    assert v.returncode == 2 and not beside.exists(), v.stderr
    assert v.stderr.strip().startswith(f"{beside}: --write-ref: ")

    # a re-run is a no-op whose receipt chains to the first, all in the bucket
    p = _dags_test(env)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    again = json.loads(s3.read(f"{PG_ID}/receipts/run_receipt.json"))
    assert again["status"] == "noop" and again["previous_receipt_digest"] == digest
    v = _cli("verify", s3.url(PG_ID), cwd=tmp_path, env=cli_env)
    assert v.returncode == 0, v.stderr
    assert "digests match" in v.stdout
    # the committed pointer still names the first receipt, which still verifies
    v = _cli("verify", str(pointer), cwd=tmp_path, env=cli_env)
    assert v.returncode == 0, v.stderr
    _no_local_artifacts(tmp_path, env)

    # tampering with an object in the bucket: verify exits 1 naming that object's URL
    out = next(o for o in receipt["outputs"] if o["role"] == "baseline_post")
    key = f"{s3.prefix}/{PG_ID}/{out['path']}"
    original = s3.read(f"{PG_ID}/{out['path']}")
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=original.replace(b'"objects"', b'"objects" ', 1))  # type: ignore[attr-defined]
    v = _cli("verify", str(pointer), cwd=tmp_path, env=cli_env)
    assert v.returncode == 1, (v.stdout, v.stderr)
    assert v.stderr.strip() == f"{s3.url(PG_ID, out['path'])}: output artifact changed since the run (sha256 mismatch)"
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=original)  # type: ignore[attr-defined]
    assert _cli("verify", str(pointer), cwd=tmp_path, env=cli_env).returncode == 0

    # a pointer whose digest is not the receipt's: exit 1, one line naming the pointer and both digests
    wrong = json.loads(pointer.read_text())
    wrong["receipt_digest"] = "0" * 64
    bad = tmp_path / "wrong_receipt_ref.json"
    bad.write_text(json.dumps(wrong))
    v = _cli("verify", str(bad), cwd=tmp_path, env=cli_env)
    assert v.returncode == 1, (v.stdout, v.stderr)
    line = v.stderr.strip()
    assert "\n" not in line and line.startswith(f"{bad}: receipt_digest: ")
    assert "0" * 64 in line and digest in line


def test_verify_refuses_a_bad_url_or_connection_in_one_line(tmp_path: Path, s3: S3Bucket) -> None:
    env = dict(os.environ)
    cases = {
        f"s3://kfm_nope@{s3.bucket}/{s3.prefix}/{PG_ID}": "no Airflow connection 'kfm_nope'",
        "nosuch://bucket/x": "cannot open this store",
        f"s3://kfm_s3:{s3.secret_key}@{s3.bucket}/x": "never credentials",
        s3.url(PG_ID): "no such receipt",  # a folder with nothing in it
    }
    for url, why in cases.items():
        v = _cli("verify", url, cwd=tmp_path, env=env)
        assert v.returncode == 2, (url, v.stdout, v.stderr)
        assert len(v.stderr.strip().splitlines()) == 1 and why in v.stderr, (url, v.stderr)
        assert "Traceback" not in v.stderr and s3.secret_key not in v.stderr + v.stdout
    pointer = tmp_path / "receipt_ref.json"
    pointer.write_text(json.dumps({"schema_version": "receipt_ref.v1", "uri": "x"}))
    v = _cli("verify", str(pointer), cwd=tmp_path, env=env)
    assert v.returncode == 2 and len(v.stderr.strip().splitlines()) == 1, v.stderr


def test_a_failed_run_still_puts_its_failure_receipt_in_s3(
    pgdb: PgDatabase, airflow_env: dict[str, str], tmp_path: Path, s3: S3Bucket  # noqa: F811
) -> None:
    env = _s3_world(
        tmp_path,
        pgdb,
        airflow_env,
        s3,
        extra_sql="DO $$ BEGIN EXECUTE 'UPDATE public.authority_sites SET name = ''x'''; END $$;",
    )
    p = _dags_test(env)
    assert p.returncode != 0
    receipt = json.loads(s3.read(f"{PG_ID}/receipts/run_receipt.json"))
    assert receipt["status"] == "failed" and "gate refused" in receipt["reason"]
    keys = s3.keys(PG_ID)
    assert f"{PG_ID}/receipts/history/{receipt['receipt_digest']}.json" in keys
    assert all(f"{PG_ID}/{o['path']}" in keys for o in receipt["outputs"])
    ref = json.loads(s3.read(f"{PG_ID}/receipts/receipt_ref.json"))
    assert ref["status"] == "failed" and ref["uri"].startswith("s3://kfm_s3@")
    v = _cli("verify", s3.url(PG_ID), cwd=tmp_path, env=env)
    assert v.returncode == 0, v.stderr  # a failure's evidence verifies too
    _no_local_artifacts(tmp_path, env)


def test_a_refusal_before_apply_gets_its_receipt_in_a_file_url_root(
    pgdb: PgDatabase, airflow_env: dict[str, str], tmp_path: Path  # noqa: F811
) -> None:
    """A file:// root goes through the same staging: the refusal receipt the receipt task
    writes reaches the folder, with a pointer holding its file:// URL."""
    env = _world(tmp_path, pgdb, airflow_env)
    store = tmp_path / "store"
    (tmp_path / "tmp").mkdir()
    env.update({"KFM_ARTIFACTS_ROOT": f"file://{store}", "TMPDIR": str(tmp_path / "tmp")})
    p = _dags_test(env, "-c", json.dumps({"environment": "prod"}))  # a merged entry: refused in preflight
    assert p.returncode != 0
    receipt = json.loads((store / PG_ID / "receipts" / "run_receipt.json").read_text())
    assert receipt["status"] == "failed" and "preflight" in receipt["reason"]
    ref = json.loads((store / PG_ID / "receipts" / "receipt_ref.json").read_text())
    assert ref["uri"] == f"file://{store}/{PG_ID}/receipts/history/{receipt['receipt_digest']}.json"
    _no_local_artifacts(tmp_path, env)
    v = _cli("verify", f"file://{store}/{PG_ID}", cwd=tmp_path)
    assert v.returncode == 0, v.stderr


def test_the_rollback_path_reads_and_writes_through_the_store(
    pgdb: PgDatabase, airflow_env: dict[str, str], tmp_path: Path, s3: S3Bucket  # noqa: F811
) -> None:
    """apply commits, the store drifts before diff_gate (injected by wrapping its execute),
    rollback runs in its own staging folder from the apply's receipt in the bucket, and the
    receipt task verifies the chain rollback -> apply from the bucket."""
    env = _s3_world(tmp_path, pgdb, airflow_env, s3)
    _out, states = dags_test_with_drift(env, pgdb.dsn)
    assert states["apply"] == "success" and states["diff_gate"] == "failed"
    assert states["rollback"] == "success" and states["receipt"] == "failed"
    receipt = json.loads(s3.read(f"{PG_ID}/receipts/run_receipt.json"))
    assert receipt["operation"] == "rollback" and receipt["status"] == "rolled_back"
    applied = json.loads(s3.read(f"{PG_ID}/receipts/history/{receipt['previous_receipt_digest']}.json"))
    assert applied["operation"] == "apply" and applied["status"] == "succeeded"
    ref = json.loads(s3.read(f"{PG_ID}/receipts/receipt_ref.json"))
    assert ref["receipt_digest"] == receipt["receipt_digest"] and ref["status"] == "rolled_back"
    v = _cli("verify", s3.url(PG_ID), cwd=tmp_path, env=env)
    assert v.returncode == 0, v.stderr
    assert v.stdout.startswith("verified: ")
    _no_local_artifacts(tmp_path, env)


def _receipt_with(folder: Path, bundle: object, operation: str, files: dict[str, str]) -> dict:
    """A receipt of ``operation`` listing ``files`` (rel path -> role) written under ``folder``."""
    from datetime import UTC, datetime

    from airflow_kfm_migrations.contracts.models import DigestRef
    from airflow_kfm_migrations.engine.receipts import write_receipt
    from airflow_kfm_migrations.util.digest import publish_copy, sha256_file

    run_id = os.urandom(16).hex()
    refs = []
    for rel, role in files.items():
        own = folder / RUNS / f"{operation}-{run_id}" / rel
        own.parent.mkdir(parents=True, exist_ok=True)
        own.write_text(json.dumps({"role": role, "run": run_id}))
        publish_copy(own, folder / rel)
        refs.append(DigestRef(path=own.relative_to(folder).as_posix(), sha256=sha256_file(own), role=role))
    _path, receipt = write_receipt(
        folder, bundle, run_id=run_id, operation=operation, actor="t@unit",  # type: ignore[arg-type]
        started_at=datetime(2026, 3, 1, tzinfo=UTC), environment="dev", status="succeeded", reason=None,
        store={"kind": "postgis", "conn_id": "kfm_unit"}, registry={"in_registry": False},
        outputs=refs, validation=[], policy=[], metrics={},
    )
    return receipt.model_dump(mode="json")


def test_each_step_fetches_what_it_reads_from_a_file_url(example: Path, tmp_path: Path) -> None:
    """No servers: an apply then a backfill receipt in a file:// store; the latest receipt for
    most tasks, the outputs back to the apply for a rollback, the checked receipt's outputs
    and views and the whole chain for verify; then the engine's own relative pointer, and a
    pointer with a wrong digest."""
    import shutil

    from airflow_kfm_migrations.cli import main
    from airflow_kfm_migrations.declaration.bundle import load_bundle

    bundle = load_bundle(example)
    applied = _receipt_with(example, bundle, "apply", {"baselines/pre.json": "baseline_pre"})
    filled = _receipt_with(example, bundle, "backfill", {"diffs/backfill.json": "backfill_summary"})
    store = tmp_path / "store" / bundle.migration_id
    for sub in ("receipts", RUNS, "baselines", "diffs"):
        shutil.copytree(example / sub, store / sub)
    history = {f"receipts/history/{d}.json" for d in (applied["receipt_digest"], filled["receipt_digest"])}
    apply_out = {o["path"] for o in applied["outputs"]}
    fill_out = {o["path"] for o in filled["outputs"]}

    def fetched(mode: str) -> set[str]:
        stage = artifacts.Stage(f"file://{store}")
        try:
            stage.pull(mode)
            return set(stage.fetched)
        finally:
            stage.close()
            assert not stage.dir.exists()

    latest = "receipts/run_receipt.json"
    assert fetched(artifacts.LATEST) == {latest, f"receipts/history/{filled['receipt_digest']}.json"}
    assert fetched(artifacts.APPLY) == {latest, *history, *apply_out, *fill_out}
    assert fetched(artifacts.ALL) == {latest, *history, *fill_out, "diffs/backfill.json"}

    # a step's writes go back, the pointer with the receipt's absolute URL
    stage = artifacts.Stage(f"file://{store}")
    stage.pull(artifacts.LATEST)
    (stage.dir / "baselines").mkdir()
    (stage.dir / "baselines" / "committed-pre.json").write_text("{}")
    (stage.dir / "receipts" / "receipt_ref.json").write_bytes((example / "receipts" / "receipt_ref.json").read_bytes())
    assert stage.push() == ["baselines/committed-pre.json", "receipts/receipt_ref.json"]
    stage.close()
    ref = json.loads((store / "receipts" / "receipt_ref.json").read_text())
    assert ref["uri"] == f"file://{store}/receipts/history/{filled['receipt_digest']}.json"

    # the engine's pointer in the bundle (relative uri) verifies; a wrong digest is exit 1
    pointer = example / "receipts" / "receipt_ref.json"
    assert json.loads(pointer.read_text())["uri"] == f"receipts/history/{filled['receipt_digest']}.json"
    assert main(["verify", str(pointer)]) == 0
    doc = json.loads(pointer.read_text())
    doc["receipt_digest"] = applied["receipt_digest"]
    pointer.write_text(json.dumps(doc))
    assert main(["verify", str(pointer)]) == 1
    assert main(["verify", f"file://{store}", "--write-ref", str(pointer)]) == 0
    assert json.loads(pointer.read_text())["uri"] == ref["uri"]
    assert main(["verify", str(pointer)]) == 0


def test_a_task_stages_once_and_writes_back_even_when_it_fails(tmp_path: Path) -> None:
    """No servers: the stage of one execute is shared by a subclass's super().execute(),
    removed afterwards, and what a failing step wrote still reaches the store."""
    root = f"file://{tmp_path / 'store'}"

    class Task:
        class log:  # stands in for the operator's logger
            @staticmethod
            def info(*_args: object) -> None:
                return None

        artifacts_fetch = artifacts.LATEST

    seen: list[Path] = []

    def inner(self: object, _ctx: object) -> None:
        seen.append(artifacts.task_workdir(root, "ID"))
        (seen[-1] / "baselines").mkdir()
        (seen[-1] / "baselines" / "committed-pre.json").write_text("{}")

    wrapped_inner = artifacts.staged_execute(inner)

    def outer(self: object, ctx: object) -> None:
        seen.append(artifacts.task_workdir(root, "ID"))
        wrapped_inner(self, ctx)

    artifacts.staged_execute(outer)(Task(), {})
    assert len(seen) == 2 and seen[0] == seen[1] and not seen[0].exists()
    assert (tmp_path / "store" / "ID" / "baselines" / "committed-pre.json").read_text() == "{}"
    with pytest.raises(RuntimeError):
        artifacts.task_workdir(root, "ID")  # outside an execute: no stage to write into

    def failing(self: object, _ctx: object) -> None:
        d = artifacts.task_workdir(root, "ID2")
        (d / "receipts").mkdir()
        (d / "receipts" / "run_receipt.json").write_text('{"status": "failed"}')
        raise ValueError("the step failed")

    with pytest.raises(ValueError, match="the step failed"):
        artifacts.staged_execute(failing)(Task(), {})
    assert json.loads((tmp_path / "store" / "ID2" / "receipts" / "run_receipt.json").read_text())["status"] == "failed"
