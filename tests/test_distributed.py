"""Running the provider on workers that share no disk: the object store they share instead
(scripts/stores/s3proxy.sh, the ``s3`` fixture) and the distributed demo
(scripts/demo-distributed.sh: CeleryExecutor, two workers, artifacts in S3)."""

from __future__ import annotations

from conftest import S3Bucket


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
