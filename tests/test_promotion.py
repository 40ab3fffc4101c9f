"""``kfm-migrations record``: a promotion is recorded only on its evidence, against real
PostGIS runs. ``executed_<env>`` needs a verifying receipt of this migration's apply in
``<env>`` (succeeded or no-op), ``executed_prod`` an ``executed_stage`` event since the last
rollback (or an approval covering ``skip:executed_stage``), ``rolled_back`` a verifying
rollback receipt; ``--conn-id`` also checks the ledger. Every refusal is one line, exit 1,
and leaves the registry folder byte-identical."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import MIGRATIONS, PgDatabase, drop_db, make_db

from airflow_kfm_migrations.cli import main

pytestmark = pytest.mark.postgis

MIG = "PG-MIG-2026-02-28-01"
OTHER = "SEARCH-MIG-2026-03-02-01"
APPROVALS = """  recorded:
    - by: kfm-platform
      at: '2026-03-01T10:00:00+00:00'
      ref: PR-7
    - by: kfm-governance
      at: '2026-03-01T11:00:00+00:00'
      ref: GOV-9
      covers: [{covers}]
"""


def make_root(tmp_path: Path, covers: str = "") -> Path:
    """A private migrations root whose example PostGIS migration is merged and approved by
    every required reviewer (stage and prod runs need that)."""
    root = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, root, ignore=shutil.ignore_patterns("fixtures", "baselines", "diffs", "receipts"))
    decl = root / "postgis" / MIG / "migration.yml"
    text = decl.read_text()
    anchor = "  change_class: governance-critical\n"
    decl.write_text(text.replace(anchor, anchor + APPROVALS.format(covers=covers), 1))
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of the registry folder, byte for byte (a lock file appearing counts too)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "registry").rglob("*")) if p.is_file()}


class Cli:
    def __init__(self, root: Path, db: PgDatabase, capsys: pytest.CaptureFixture[str]) -> None:
        self.root, self.db, self.capsys = root, db, capsys
        self.bundle = root / "postgis" / MIG
        self.registry = root / "registry" / "migrations.v1.json"

    def run(self, env: str, out: Path, *extra: str) -> dict:
        code = main(
            [
                "run",
                str(self.bundle),
                "--conn-id",
                self.db.conn_id,
                "--env",
                env,
                "--artifacts",
                str(out),
                "--quiet",
                *extra,
            ]
        )
        doc = json.loads((out / "receipts" / "run_receipt.json").read_text())
        assert code == 0, doc["reason"]
        return doc

    def record(self, status: str, receipt: Path | None, *extra: str, mid: str = MIG) -> int:
        argv = ["record", mid, status, "--ref", "PR-42", "--registry", str(self.registry), *extra]
        if receipt is not None:
            argv += ["--receipt", str(receipt)]
        self.capsys.readouterr()
        return main(argv)

    def refused(self, status: str, receipt: Path | None, *extra: str, mid: str = MIG) -> str:
        """Record, expecting a refusal: exit 1, one line, the registry folder untouched."""
        before = snapshot(self.root)
        assert self.record(status, receipt, *extra, mid=mid) == 1
        captured = self.capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and captured.out == "", captured
        assert snapshot(self.root) == before
        return lines[0]

    def status(self) -> str:
        entry = next(e for e in json.loads(self.registry.read_text())["migrations"] if e["migration_id"] == MIG)
        return str(entry["status"])


def test_promotion_needs_the_right_evidence(
    tmp_path: Path, pgdb: PgDatabase, pg_admin: object, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = Cli(make_root(tmp_path), pgdb, capsys)
    art = tmp_path / "artifacts"
    dev = art / "dev"
    assert cli.run("dev", dev)["status"] == "succeeded"

    # Without a receipt, with another environment's, another operation's or another migration's.
    assert cli.refused("executed_dev", None) == (
        "recording executed_dev needs --receipt: the receipt of an apply run in dev that ended noop or succeeded"
    )
    assert cli.refused("executed_stage", dev).endswith(
        "executed_stage needs the receipt of an apply run in stage that ended noop or succeeded; this run was in dev"
    )
    assert cli.refused("rolled_back", dev).endswith(
        "rolled_back needs the receipt of a rollback run that ended rolled_back; this one is of an apply run"
    )
    assert cli.refused("executed_dev", dev, mid=OTHER).endswith(f"the receipt is of {MIG}, not of {OTHER}")

    # A receipt that does not verify.
    forged = art / "forged"
    shutil.copytree(dev, forged)
    doc = json.loads((forged / "receipts" / "run_receipt.json").read_text())
    doc["environment"] = "stage"
    (forged / "receipts" / "run_receipt.json").write_text(json.dumps(doc))
    assert cli.refused("executed_stage", forged).endswith("receipt_digest does not match the receipt's content")

    # The ledger is the independent witness: a receipt of a run in another database is refused.
    elsewhere = make_db(pg_admin)
    try:
        line = cli.refused("executed_dev", dev, "--conn-id", elsewhere.conn_id)
    finally:
        drop_db(pg_admin, elsewhere)
    assert line.endswith(
        f"the receipt says succeeded, but the ledger on {elsewhere.conn_id} has no run {doc['run_id'][:12]}"
    )

    # The accepted path: dev, then stage (a no-op on this database), then prod.
    assert cli.record("executed_dev", dev, "--conn-id", pgdb.conn_id) == 0
    out = capsys.readouterr().out
    assert f"recorded in the ledger on {pgdb.conn_id} with this receipt digest" in out
    assert f"{MIG}: executed_dev" in out and cli.status() == "executed_dev"

    stage = art / "stage"
    assert cli.run("stage", stage)["status"] == "noop"
    # executed_prod before any stage event, with a prod receipt got through a registry that
    # (wrongly) said the migration was staged: refused.
    staged_copy = tmp_path / "staged-registry.json"
    reg = json.loads(cli.registry.read_text())
    reg["migrations"][0]["status"] = "executed_stage"
    reg["migrations"][0]["events"].append(dict(reg["migrations"][0]["events"][-1], status="executed_stage"))
    staged_copy.write_text(json.dumps(reg))
    early = art / "prod-early"
    assert cli.run("prod", early, "--registry", str(staged_copy))["status"] == "noop"
    assert cli.refused("executed_prod", early).endswith(
        f"{MIG} has no executed_stage event since its last rollback: record executed_stage first, or record an "
        "approval covering 'skip:executed_stage' in the declaration"
    )

    assert cli.record("executed_stage", stage, "--conn-id", pgdb.conn_id) == 0
    assert "correctly absent" in capsys.readouterr().out  # a no-op commits no ledger entry
    prod = art / "prod"
    assert cli.run("prod", prod)["status"] == "noop"
    assert cli.record("executed_prod", prod) == 0 and cli.status() == "executed_prod"

    # rolled_back needs a rollback receipt; then prod again needs stage again.
    rollback = art / "rollback"
    assert (
        main(
            [
                "rollback",
                str(cli.bundle),
                "--conn-id",
                pgdb.conn_id,
                "--env",
                "prod",
                "--artifacts",
                str(rollback),
                "--quiet",
            ]
        )
        == 0
    )
    assert cli.refused("rolled_back", prod).endswith("this one is of an apply run")
    assert cli.record("rolled_back", rollback, "--conn-id", pgdb.conn_id) == 0 and cli.status() == "rolled_back"
    assert cli.record("executed_dev", dev) == 0
    assert "no executed_stage event since its last rollback" in cli.refused("executed_prod", prod)

    events = json.loads(cli.registry.read_text())["migrations"][0]["events"]
    assert [e["status"] for e in events[-6:]] == [
        "merged",
        "executed_dev",
        "executed_stage",
        "executed_prod",
        "rolled_back",
        "executed_dev",
    ]
    digests = {
        json.loads((d / "receipts" / "run_receipt.json").read_text())["receipt_digest"] for d in (dev, stage, prod)
    }
    assert {e.get("receipt_digest") for e in events[-5:-2]} == digests
    assert main(["validate", str(cli.root)]) == 0


def test_prod_without_stage_on_a_skip_approval(
    tmp_path: Path, pgdb: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = Cli(make_root(tmp_path, covers="'skip:executed_stage'"), pgdb, capsys)
    dev = tmp_path / "artifacts" / "dev"
    assert cli.run("dev", dev)["status"] == "succeeded"
    assert cli.record("executed_dev", dev) == 0
    prod = tmp_path / "artifacts" / "prod"
    doc = cli.run("prod", prod)  # the preflight lets executed_dev run in prod on the approval
    assert doc["status"] == "noop" and "prod run without stage, approved by kfm-governance (GOV-9)" in doc["policy"]
    assert cli.record("executed_prod", prod, "--conn-id", pgdb.conn_id) == 0
    out = capsys.readouterr().out
    assert "stage skipped: approved by kfm-governance (GOV-9)" in out and cli.status() == "executed_prod"
    assert main(["validate", str(cli.root)]) == 0

    # validate checks the history too: the same history without the approval is refused.
    decl = cli.bundle / "migration.yml"
    decl.write_text(decl.read_text().replace("covers: ['skip:executed_stage']", "covers: []"))
    capsys.readouterr()
    assert main(["validate", str(cli.root)]) == 1
    err = capsys.readouterr().err
    assert (
        "executed_prod without an executed_stage event since the last rollback, and the declaration records no "
        "approval covering 'skip:executed_stage'" in err
    )
