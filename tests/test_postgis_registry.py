"""What the registry promises around real PostGIS runs: runs read it and never rewrite it;
``kfm-migrations record`` verifies the receipt it is given and writes nothing when that fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import MIGRATIONS, PgDatabase

from airflow_kfm_migrations.cli import main

pytestmark = pytest.mark.postgis

MIG = "PG-MIG-2026-02-28-01"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A private copy of the migrations root: its registry lists the example as merged."""
    dst = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, dst, ignore=shutil.ignore_patterns("fixtures", "baselines", "diffs", "receipts"))
    return dst


def registry(root: Path) -> Path:
    return root / "registry" / "migrations.v1.json"


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of the registry folder, byte for byte (a lock file appearing counts too)."""
    return {p.name: p.read_bytes() for p in sorted((root / "registry").rglob("*")) if p.is_file()}


def receipt(bundle: Path) -> dict:
    return json.loads((bundle / "receipts" / "run_receipt.json").read_text())


def test_runs_never_rewrite_the_registry(root: Path, pgdb: PgDatabase) -> None:
    bundle = root / "postgis" / MIG
    before = snapshot(root)
    assert json.loads(before["migrations.v1.json"])["migrations"][0]["status"] == "merged"

    def run(*extra: str) -> int:  # the registry is found from the bundle's migrations root
        return main(["run", str(bundle), "--conn-id", pgdb.conn_id, "--quiet", *extra])

    assert run() == 0
    r = receipt(bundle)
    assert r["status"] == "succeeded" and r["registry"]["in_registry"] is True and r["registry"]["status"] == "merged"
    assert snapshot(root) == before
    assert run() == 0 and receipt(bundle)["status"] == "noop"
    assert snapshot(root) == before
    assert main(["rollback", str(bundle), "--conn-id", pgdb.conn_id, "--quiet"]) == 0
    assert receipt(bundle)["status"] == "rolled_back"
    assert snapshot(root) == before
    # Refused by the preflight (a merged migration may not run in prod) ...
    assert run("--env", "prod") == 1
    assert receipt(bundle)["reason"].startswith("registry status 'merged' does not allow a prod run")
    assert snapshot(root) == before
    # ... and by the gate.
    with (bundle / "forward.sql").open("a") as fh:
        fh.write("DO $$ BEGIN EXECUTE 'CREATE TABLE public.sneaky (id int)'; END $$;\n")
    assert run() == 1
    assert receipt(bundle)["reason"].startswith("gate refused (out_of_scope_change: ")
    assert snapshot(root) == before


@pytest.mark.parametrize("tamper", ["receipt_field", "forged_receipt", "input"])
def test_record_refuses_a_tampered_receipt_and_leaves_the_registry_alone(
    root: Path, pgdb: PgDatabase, tamper: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from airflow_kfm_migrations.engine.receipts import receipt_digest

    bundle = root / "postgis" / MIG
    assert main(["run", str(bundle), "--conn-id", pgdb.conn_id, "--quiet"]) == 0
    path = bundle / "receipts" / "run_receipt.json"
    good = path.read_bytes()
    forward = (bundle / "forward.sql").read_bytes()
    record = ["record", MIG, "executed_dev", "--ref", "PR-42", "--receipt", str(bundle), "--registry",
              str(registry(root))]

    doc = json.loads(good)
    if tamper == "receipt_field":
        doc["status"] = "noop"
        path.write_text(json.dumps(doc))
        expected = "receipt_digest does not match the receipt's content"
    elif tamper == "forged_receipt":  # digest recomputed, but no content-addressed copy of it
        doc["actor"] = "someone-else"
        doc["receipt_digest"] = receipt_digest(doc)
        path.write_text(json.dumps(doc))
        expected = "the receipt is not the one kept in its content-addressed history"
    else:
        (bundle / "forward.sql").write_bytes(forward + b"DROP INDEX parcels_geom_gist;\n")
        expected = "forward.sql: input artifact changed since the run (sha256 mismatch)"
    before = snapshot(root)
    capsys.readouterr()
    assert main(record) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith(expected) and len(err.splitlines()) == 1
    assert snapshot(root) == before

    # The same command with the receipt as the run left it records the transition.
    path.write_bytes(good)
    (bundle / "forward.sql").write_bytes(forward)
    assert main(record) == 0
    entry = json.loads(registry(root).read_text())["migrations"][0]
    assert entry["status"] == "executed_dev"
    assert entry["events"][-1]["receipt_digest"] == json.loads(good)["receipt_digest"]
    assert entry["events"][-1]["ref"] == "PR-42"
