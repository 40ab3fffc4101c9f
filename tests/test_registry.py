"""Registry: statuses, transitions, coverage, scaffolding and the --base history check."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import MIGRATIONS

from airflow_kfm_migrations.cli import main
from airflow_kfm_migrations.declaration.registry import TRANSITIONS, load_registry, record_transition
from airflow_kfm_migrations.errors import RefusedError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    dst = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, dst, ignore=shutil.ignore_patterns("fixtures", "baselines", "diffs", "receipts"))
    return dst


def test_record_transition_appends_and_refuses_illegal_moves(root: Path) -> None:
    reg = root / "registry" / "migrations.v1.json"
    entry = record_transition(reg, "PG-MIG-2026-02-28-01", "executed_dev", actor="ci", ref="run 1",
                              receipt_digest="a" * 64)
    assert entry.status == "executed_dev" and entry.events[-1].receipt_digest == "a" * 64
    with pytest.raises(RefusedError, match="illegal registry transition executed_dev -> merged"):
        record_transition(reg, "PG-MIG-2026-02-28-01", "merged", actor="ci", ref="x")
    # Straight to prod only with an approval covering skip:executed_stage (checked by the caller).
    with pytest.raises(RefusedError, match="no executed_stage event since its last rollback"):
        record_transition(reg, "PG-MIG-2026-02-28-01", "executed_prod", actor="ci", ref="x")
    assert load_registry(reg).migrations[0].status == "executed_dev"
    assert main(["validate", str(root)]) == 0


def test_superseded_is_terminal() -> None:
    assert TRANSITIONS["superseded"] == set()
    assert all("superseded" in targets for status, targets in TRANSITIONS.items() if status != "superseded")


def test_a_bundle_without_entry_and_an_entry_without_bundle_fail(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(root / "postgis" / "PG-MIG-2026-02-28-01", root / "postgis" / "PG-MIG-2026-02-28-02")
    text = (root / "postgis" / "PG-MIG-2026-02-28-02" / "migration.yml").read_text()
    (root / "postgis" / "PG-MIG-2026-02-28-02" / "migration.yml").write_text(
        text.replace("PG-MIG-2026-02-28-01", "PG-MIG-2026-02-28-02"))
    shutil.rmtree(root / "graph" / "GRAPH-MIG-2026-03-03-01")
    assert main(["validate", str(root)]) == 1
    err = capsys.readouterr().err
    assert "PG-MIG-2026-02-28-02: -: bundle has no registry entry" in err
    assert "no bundle at 'graph/GRAPH-MIG-2026-03-03-01'" in err


def test_new_scaffolds_the_next_free_id_and_it_validates(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for kind in ("postgis", "postgis", "search", "graph"):
        assert main(["new", "--type", kind, "--root", str(root), "--intent", f"A {kind} change for the demo"]) == 0
    reg = load_registry(root / "registry" / "migrations.v1.json")
    new = [e for e in reg.migrations if e.status == "draft"]
    assert len(new) == 4
    pg = sorted(e.migration_id for e in new if e.type == "postgis")
    assert pg[0].endswith("-01") and pg[1].endswith("-02")
    # validate plans every bundle: a search scaffold lists no action yet, and its plan refuses
    # that until the forward says what to do; the others validate as scaffolded.
    capsys.readouterr()
    assert main(["validate", str(root)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.endswith("forward.json: actions: must be a non-empty list")
    search = next(e for e in new if e.type == "search")
    (root / search.path / "forward.json").write_text(
        '{"actions": [{"create_index": {"index": "demo_v1"}}]}')
    (root / search.path / "rollback.json").write_text('{"actions": [{"delete_index": {"index": "demo_v1"}}]}')
    decl = root / search.path / "migration.yml"
    decl.write_text(decl.read_text().replace("allowed_index_patterns: []", "allowed_index_patterns:\n  - demo_*"))
    assert main(["validate", str(root)]) == 0


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t", *args], check=True,
                   capture_output=True)


def test_validate_base_refuses_rewriting_a_merged_migration(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = root.parent
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    assert main(["validate", str(root), "--base", "HEAD"]) == 0
    # Outputs of runs may change; inputs of a merged bundle may not.
    (root / "postgis" / "PG-MIG-2026-02-28-01" / "receipts").mkdir()
    (root / "postgis" / "PG-MIG-2026-02-28-01" / "receipts" / "run_receipt.json").write_text("{}")
    assert main(["validate", str(root), "--base", "HEAD"]) == 0
    with (root / "postgis" / "PG-MIG-2026-02-28-01" / "forward.sql").open("a") as fh:
        fh.write("-- tweak\n")
    capsys.readouterr()
    assert main(["validate", str(root), "--base", "HEAD"]) == 1
    assert "merged migrations are never rewritten" in capsys.readouterr().err


def test_validate_base_refuses_deleting_or_rewriting_history(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = root.parent
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    reg_path = root / "registry" / "migrations.v1.json"
    reg = json.loads(reg_path.read_text())
    reg["migrations"][0]["events"][0]["ref"] = "rewritten"
    reg["migrations"] = [reg["migrations"][0], *reg["migrations"][2:]]
    reg_path.write_text(json.dumps(reg))
    shutil.rmtree(root / "search" / "SEARCH-MIG-2026-03-02-01")
    capsys.readouterr()
    assert main(["validate", str(root), "--base", "HEAD"]) == 1
    err = capsys.readouterr().err
    assert "status history rewritten" in err
    assert "deleted from the registry; ids are never deleted" in err


def test_unknown_base_ref_is_bad_input(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _git(root.parent, "init", "-q")
    assert main(["validate", str(root), "--base", "no-such-ref"]) == 2
    assert "unknown git ref 'no-such-ref'" in capsys.readouterr().err
