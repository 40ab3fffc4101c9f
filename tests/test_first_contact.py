"""First contact: ``--version``, ``init``, ``new`` in a fresh root (one line, nothing
half-made), and receipts that name their bundle relative to the migrations root so that
``verify --bundle`` checks a receipt against a bundle that moved (old receipts still verify)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import MIGRATIONS, PgDatabase

from airflow_kfm_migrations import __version__
from airflow_kfm_migrations.cli import main
from airflow_kfm_migrations.contracts import schema_errors
from airflow_kfm_migrations.declaration.bundle import load_bundle
from airflow_kfm_migrations.engine.receipts import HISTORY, RECEIPT, receipt_digest
from airflow_kfm_migrations.engine.run import RunOptions, RunRecorder
from airflow_kfm_migrations.util.digest import dump_json

MIG = "PG-MIG-2026-02-28-01"


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (hidden ones too), with the bytes of files."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def err_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"kfm-migrations {__version__}"


def test_init_creates_a_root_that_new_and_validate_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "repo" / "migrations"
    assert main(["init", str(root)]) == 0
    registry = root / "registry" / "migrations.v1.json"
    doc = json.loads(registry.read_text())
    assert doc == {"schema_version": "migrations.v1", "migrations": []}
    assert schema_errors("migrations.v1", doc) == []
    assert {p.name for p in root.iterdir()} == {"registry", "postgis", "search", "graph", "README.md"}
    assert (root / "registry" / "schemas" / "migration_declaration.v1.schema.json").is_file()
    assert "kfm-migrations new --root" in (root / "README.md").read_text()
    assert main(["validate", str(root)]) == 0
    assert main(["new", "--root", str(root), "--type", "postgis", "--intent", "Index parcels by name"]) == 0
    capsys.readouterr()
    assert main(["validate", str(root)]) == 0, capsys.readouterr().err
    (entry,) = json.loads(registry.read_text())["migrations"]
    assert entry["status"] == "draft" and (root / entry["path"] / "migration.yml").is_file()


def test_init_refuses_a_root_that_has_a_registry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "migrations"
    assert main(["init", str(root)]) == 0
    (root / "README.md").write_text("our own notes\n")
    before = tree(root)
    capsys.readouterr()
    assert main(["init", str(root)]) == 2
    (line,) = err_lines(capsys)
    assert line.endswith("registry/migrations.v1.json: -: a registry is already there; init never overwrites one")
    assert tree(root) == before
    # The example root of this repository too.
    assert main(["init", str(MIGRATIONS)]) == 2


def test_init_in_the_current_folder_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 0
    assert (tmp_path / "migrations" / "registry" / "migrations.v1.json").is_file()


def test_new_without_a_registry_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # No migrations root at all (the default --root), then a folder without a registry.
    assert main(["new", "--type", "postgis", "--intent", "Index parcels by name"]) == 2
    (line,) = err_lines(capsys)
    assert line == "migrations: --root: no migrations root here; create one with: kfm-migrations init migrations"
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "migrations").mkdir()
    assert main(["new", "--type", "postgis", "--intent", "Index parcels by name"]) == 2
    (line,) = err_lines(capsys)
    assert line == (
        "migrations/registry/migrations.v1.json: --root: no registry here; create one with: "
        "kfm-migrations init migrations"
    )
    assert list((tmp_path / "migrations").iterdir()) == []


def test_new_leaves_nothing_half_made_when_the_registry_cannot_take_the_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "migrations"
    assert main(["init", str(root)]) == 0
    shutil.rmtree(root / "graph")  # new creates its type folder, and removes it again on failure
    before = tree(root)

    def full_disk(*_a: object, **_k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("airflow_kfm_migrations.declaration.scaffold.add_entry", full_disk)
    capsys.readouterr()
    assert main(["new", "--root", str(root), "--type", "graph", "--intent", "Relabel legacy datasets"]) == 2
    (line,) = err_lines(capsys)
    assert line.endswith("registry/migrations.v1.json: -: cannot add the entry: No space left on device"), line
    assert tree(root) == before
    # A broken registry is refused before anything is written.
    (root / "registry" / "migrations.v1.json").write_text('{"schema_version": "migrations.v1", "migrations": [1]}')
    before = tree(root)
    assert main(["new", "--root", str(root), "--type", "postgis", "--intent", "Index parcels by name"]) == 2
    assert len(err_lines(capsys)) == 1
    assert tree(root) == before


# ------------------------------------------------------------------ receipts and --bundle


def offline_receipt(bundle: Path, artifacts: Path) -> Path:
    """A schema-valid receipt of ``bundle`` written without a store (a refused run)."""
    opts = RunOptions(conn_id="kfm_postgis", artifacts_dir=artifacts, log=lambda _l: None)
    result = RunRecorder(load_bundle(bundle), opts, "apply").finish("failed", "refused before apply: test")
    assert result.receipt_path is not None
    return artifacts


def test_receipts_name_the_bundle_from_the_migrations_root_and_old_ones_still_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "repo" / "migrations" / "postgis" / MIG
    shutil.copytree(
        MIGRATIONS / "postgis" / MIG, bundle, ignore=shutil.ignore_patterns("baselines", "diffs", "receipts")
    )
    out = tmp_path / "repo" / "artifacts" / "dev"
    offline_receipt(bundle, out)
    doc = json.loads((out / RECEIPT).read_text())
    assert doc["bundle_path"] == f"postgis/{MIG}"
    assert main(["verify", str(out)]) == 0  # found as <folder above>/migrations/postgis/<id>
    # A receipt of an earlier release: bundle_path relative to the artifacts folder.
    old = dict(doc, bundle_path=os.path.relpath(bundle, out), previous_receipt_digest=None)
    old["receipt_digest"] = receipt_digest(old)
    data = dump_json(old)
    (out / RECEIPT).write_bytes(data)
    (out / HISTORY / f"{old['receipt_digest']}.json").write_bytes(data)
    assert old["bundle_path"].startswith("../../migrations/")
    assert main(["verify", str(out)]) == 0
    # The default: the artifacts folder is the bundle itself.
    offline_receipt(bundle, bundle)
    assert json.loads((bundle / RECEIPT).read_text())["bundle_path"] == f"postgis/{MIG}"
    monkeypatch.chdir(tmp_path)
    assert main(["verify", str(bundle)]) == 0


@pytest.mark.postgis
def test_verify_bundle_checks_a_receipt_against_a_bundle_that_moved(
    tmp_path: Path, pgdb: PgDatabase, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = tmp_path / "checkout"
    bundle = checkout / "migrations" / "postgis" / MIG
    shutil.copytree(
        MIGRATIONS / "postgis" / MIG, bundle, ignore=shutil.ignore_patterns("baselines", "diffs", "receipts")
    )
    out = tmp_path / "runs" / "dev"
    assert main(["run", str(bundle), "--conn-id", pgdb.conn_id, "--artifacts", str(out), "--quiet"]) == 0
    assert json.loads((out / RECEIPT).read_text())["bundle_path"] == f"postgis/{MIG}"
    monkeypatch.chdir(checkout)  # from the checkout, migrations/postgis/<id> is the bundle
    assert main(["verify", str(out), "--conn-id", pgdb.conn_id]) == 0
    # The checkout moves: without --bundle the receipt cannot find it; with it, it verifies.
    monkeypatch.chdir(tmp_path)
    moved = tmp_path / "elsewhere" / "bundle-copy"
    moved.parent.mkdir()
    bundle.rename(moved)
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    (line,) = err_lines(capsys)
    assert f"cannot find the bundle postgis/{MIG} of this receipt" in line and "--bundle PATH" in line
    assert main(["verify", str(out), "--bundle", str(moved)]) == 0
    assert main(["verify", str(out), "--bundle", str(moved), "--conn-id", pgdb.conn_id]) == 0
    # --bundle still checks every input: an edited script is named.
    with (moved / "forward.sql").open("a") as fh:
        fh.write("-- edited\n")
    capsys.readouterr()
    assert main(["verify", str(out), "--bundle", str(moved)]) == 1
    (line,) = err_lines(capsys)
    assert line.endswith("forward.sql: input artifact changed since the run (sha256 mismatch)")
