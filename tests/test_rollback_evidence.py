"""Each run keeps its own evidence, and a rollback that fails says what still differs.

Against the real PostGIS: every run writes into ``runs/<operation>-<run_id>/`` and its
receipt lists those files, so a rollback (or a re-apply) never overwrites what the apply's
receipt points to; the top-level ``baselines/``/``diffs/`` files are the latest run's view.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import LEDGER_SCHEMA, PgDatabase

from airflow_kfm_migrations.cli import main
from airflow_kfm_migrations.util.digest import sha256_file


def run(bundle: Path, db: PgDatabase, *extra: str) -> int:
    return main(["run", str(bundle), "--conn-id", db.conn_id, "--quiet", *extra])


def rollback(bundle: Path, db: PgDatabase) -> int:
    return main(["rollback", str(bundle), "--conn-id", db.conn_id, "--quiet"])


def latest(bundle: Path) -> dict:
    return json.loads((bundle / "receipts" / "run_receipt.json").read_text())


def outputs_unchanged(bundle: Path, receipt: dict) -> dict[str, bool]:
    return {o["path"]: sha256_file(bundle / o["path"]) == o["sha256"] for o in receipt["outputs"]}


def test_a_rollback_keeps_the_applys_evidence(example: Path, pgdb: PgDatabase) -> None:
    assert run(example, pgdb) == 0
    applied = latest(example)
    assert {o["role"] for o in applied["outputs"]} >= {"baseline_pre", "baseline_post", "diff_summary"}
    assert all(o["path"].startswith(f"runs/apply-{applied['run_id']}/") for o in applied["outputs"])
    apply_pre = (example / "baselines" / "pre.json").read_bytes()

    assert rollback(example, pgdb) == 0
    rolled = latest(example)
    assert rolled["operation"] == "rollback" and rolled["status"] == "rolled_back"
    assert rolled["previous_receipt_digest"] == applied["receipt_digest"]
    # The latest view now shows the rollback's baselines ...
    assert (example / "baselines" / "pre.json").read_bytes() != apply_pre
    view = next(o for o in rolled["outputs"] if o["role"] == "baseline_pre")
    assert sha256_file(example / "baselines" / "pre.json") == view["sha256"]
    # ... and every file the apply's receipt lists is still there, unchanged.
    assert outputs_unchanged(example, applied) and all(outputs_unchanged(example, applied).values())
    assert main(["verify", str(example)]) == 0
    assert main(["verify", str(example / "receipts" / "history" / f"{applied['receipt_digest']}.json")]) == 0


def test_a_replaced_latest_view_fails_verify(example: Path, pgdb: PgDatabase, capsys) -> None:
    assert run(example, pgdb) == 0
    view = example / "diffs" / "summary.json"
    forged = view.with_name("forged.json")
    forged.write_text(view.read_text().replace('"verdict": "pass"', '"verdict": "pass" '))
    forged.replace(view)  # a new file under the old name: the run's own copy is untouched
    capsys.readouterr()
    assert main(["verify", str(example)]) == 1
    assert "latest run's view differs" in capsys.readouterr().err


def test_a_failed_rollback_names_what_still_differs(example: Path, pgdb: PgDatabase) -> None:
    assert run(example, pgdb) == 0
    before_rollback = pgdb.state(exclude_schemas=(LEDGER_SCHEMA,))
    (example / "rollback.sql").write_text("SET search_path = public;\nCREATE INDEX parcels_other ON parcels (name);\n")
    assert rollback(example, pgdb) == 1
    r = latest(example)
    assert r["status"] == "rollback_failed"
    diff_ref = next(o for o in r["outputs"] if o["role"] == "rollback_diff")
    assert diff_ref["path"] == f"runs/rollback-{r['run_id']}/diffs/rollback.json"
    doc = json.loads((example / diff_ref["path"]).read_text())
    changes = {(c["change"], c["kind"], c["id"]) for c in doc["changes"]}
    # What the rollback should have undone and did not, and what it added on top.
    assert any(change == "added" and "parcels_geom_gist" in oid for change, _kind, oid in changes), changes
    assert any(change == "added" and "parcels_other" in oid for change, _kind, oid in changes), changes
    assert {f["code"] for f in doc["findings"]} == {"rollback_incomplete"}
    assert doc["verdict"] == "fail"
    assert "object(s) differ" in r["reason"] and "parcels_" in r["reason"] and "diffs/rollback.json" in r["reason"]
    # Nothing of the refused rollback stayed: the approved post-state is still there.
    assert pgdb.state(exclude_schemas=(LEDGER_SCHEMA,)) == before_rollback
    assert main(["verify", str(example)]) == 0


def test_a_failed_compensation_names_what_still_differs(example: Path, pgdb: PgDatabase) -> None:
    text = (example / "migration.yml").read_text().replace("max_index_count_delta: 2", "max_index_count_delta: 0")
    text += 'transactional: false\nnon_transactional_reason: "CONCURRENTLY keeps parcels writable"\n'
    (example / "migration.yml").write_text(text)
    (example / "forward.sql").write_text(
        "CREATE INDEX CONCURRENTLY parcels_geom_gist ON public.parcels USING gist (geom);\n"
    )
    (example / "rollback.sql").write_text("SELECT 1;\n")  # undoes nothing
    assert run(example, pgdb) == 1
    r = latest(example)
    assert r["status"] == "rollback_failed"
    doc = json.loads((example / f"runs/apply-{r['run_id']}/diffs/rollback.json").read_text())
    assert [(c["change"], "parcels_geom_gist" in c["id"]) for c in doc["changes"]] == [("added", True)]
    assert "1 object(s) differ" in r["reason"]
