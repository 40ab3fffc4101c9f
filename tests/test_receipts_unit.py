"""Receipts without a server: ``write_receipt`` then ``verify``, and each kind of tampering
named by the ``VerifyMismatch`` it must raise."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_kfm_migrations.app.verify import verify
from airflow_kfm_migrations.cli import main
from airflow_kfm_migrations.contracts.models import DigestRef, RunReceipt, ValidationCheck
from airflow_kfm_migrations.declaration.bundle import load_bundle
from airflow_kfm_migrations.engine.receipts import receipt_digest, write_receipt
from airflow_kfm_migrations.errors import RefusedError, VerifyMismatch

RUN_ID = "0123456789abcdef0123456789abcdef"


def write(example: Path, *, reason: str | None = None, status: str = "succeeded",
          outputs: list[DigestRef] | None = None, run_id: str = RUN_ID) -> tuple[Path, RunReceipt]:
    return write_receipt(
        example,
        load_bundle(example),
        run_id=run_id,
        operation="apply",
        actor="tester@unit",
        started_at=datetime(2026, 3, 1, 10, 0, tzinfo=UTC),
        environment="dev",
        status=status,
        reason=reason,
        store={"kind": "postgis", "conn_id": "kfm_unit"},
        registry={"in_registry": False, "status": None, "note": "bundle is outside any registry"},
        outputs=outputs or [],
        validation=[ValidationCheck(name="gate", passed=True)],
        policy=["dev run of a bundle outside any registry"],
        metrics={"statements": 2},
    )


def with_output(example: Path) -> tuple[Path, RunReceipt, Path]:
    from airflow_kfm_migrations.util.digest import sha256_file

    out = example / "diffs" / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text('{"verdict": "pass"}\n')
    ref = DigestRef(path="diffs/summary.json", sha256=sha256_file(out), role="diff_summary")
    path, rec = write(example, outputs=[ref])
    return path, rec, out


def mismatch(target: Path) -> VerifyMismatch:
    with pytest.raises(VerifyMismatch) as exc:
        verify(target)
    return exc.value


def rewrite(example: Path, **changes: Any) -> dict[str, Any]:
    """A self-consistent forgery: the receipt, its digest and its content-addressed copy agree."""
    from airflow_kfm_migrations.util.digest import dump_json

    path = example / "receipts" / "run_receipt.json"
    doc = json.loads(path.read_text())
    doc.update(changes)
    doc["receipt_digest"] = receipt_digest(doc)
    path.write_bytes(dump_json(doc))
    (example / "receipts" / "history" / f"{doc['receipt_digest']}.json").write_bytes(dump_json(doc))
    return doc


# ------------------------------------------------------------------ writing


def test_a_written_receipt_verifies_and_lists_every_input(example: Path) -> None:
    path, rec, _ = with_output(example)
    assert path == example / "receipts" / "run_receipt.json"
    doc = json.loads(path.read_text())
    assert doc["receipt_digest"] == receipt_digest(doc) == rec.receipt_digest
    assert (example / "receipts" / "history" / f"{rec.receipt_digest}.json").read_bytes() == path.read_bytes()
    ref = json.loads((example / "receipts" / "receipt_ref.json").read_text())
    assert (ref["receipt_digest"], ref["run_id"], ref["status"]) == (rec.receipt_digest, RUN_ID, "succeeded")
    assert {i.path for i in rec.inputs} == {"migration.yml", "forward.sql", "rollback.sql", "notes.md"}
    assert rec.bundle_digest == load_bundle(example).digest and rec.previous_receipt_digest is None
    checked = verify(example)
    assert checked[0] == f"receipt {rec.receipt_digest[:12]}"
    assert set(checked[1:]) == {f"input {i.path}" for i in rec.inputs} | {"output diffs/summary.json"}
    assert verify(path) == checked  # the file or its folder


def test_receipts_chain_and_the_chain_verifies(example: Path) -> None:
    _, first = write(example)
    _, second = write(example, status="noop", run_id="f" * 32)
    assert second.previous_receipt_digest == first.receipt_digest
    assert f"chain {first.receipt_digest[:12]}" in verify(example)


def test_a_receipt_holding_a_secret_is_never_written(example: Path) -> None:
    with pytest.raises(RefusedError, match="refusing to write a receipt that contains a secret"):
        write(example, reason="could not connect to postgresql://kfm:hunter2-secret@db/kfm")
    assert not (example / "receipts").exists()


# ------------------------------------------------------------------ tampering


def test_an_edited_input_is_named(example: Path) -> None:
    write(example)
    with (example / "forward.sql").open("a") as fh:
        fh.write("-- edited after the run\n")
    e = mismatch(example)
    assert e.reason == "input artifact changed since the run (sha256 mismatch)"
    assert Path(e.file).name == "forward.sql"  # type: ignore[arg-type]


def test_a_missing_input_is_named(example: Path) -> None:
    write(example)
    (example / "rollback.sql").unlink()
    e = mismatch(example)
    assert (e.reason, Path(e.file).name) == ("input artifact is missing", "rollback.sql")  # type: ignore[arg-type]


def test_an_edited_output_is_named(example: Path) -> None:
    _, _, out = with_output(example)
    out.write_text('{"verdict": "fail"}\n')
    e = mismatch(example)
    assert (e.reason, Path(e.file).name) == (  # type: ignore[arg-type]
        "output artifact changed since the run (sha256 mismatch)", "summary.json")


def test_a_missing_output_is_named(example: Path) -> None:
    _, _, out = with_output(example)
    out.unlink()
    assert mismatch(example).reason == "output artifact is missing"


def test_an_edited_receipt_field_breaks_its_digest(example: Path) -> None:
    path, _ = write(example)
    doc = json.loads(path.read_text())
    doc["status"] = "failed"
    path.write_text(json.dumps(doc))
    assert mismatch(example).reason == "receipt_digest does not match the receipt's content"


def test_a_consistent_forgery_without_its_history_copy_is_caught(example: Path) -> None:
    from airflow_kfm_migrations.util.digest import dump_json

    path, _ = write(example)
    doc = json.loads(path.read_text())
    doc["actor"] = "someone-else"
    doc["receipt_digest"] = receipt_digest(doc)
    path.write_bytes(dump_json(doc))
    assert mismatch(example).reason == "the receipt is not the one kept in its content-addressed history"


def test_a_previous_receipt_removed_from_the_chain_is_named(example: Path) -> None:
    _, first = write(example)
    write(example, run_id="f" * 32)
    (example / "receipts" / "history" / f"{first.receipt_digest}.json").unlink()
    e = mismatch(example)
    assert e.reason == f"previous receipt {first.receipt_digest[:12]} is missing from the chain"


def test_a_previous_receipt_edited_in_the_history_is_named(example: Path) -> None:
    _, first = write(example)
    write(example, run_id="f" * 32)
    old = example / "receipts" / "history" / f"{first.receipt_digest}.json"
    doc = json.loads(old.read_text())
    doc["actor"] = "someone-else"
    old.write_text(json.dumps(doc))
    e = mismatch(example)
    assert (e.reason, Path(e.file).name) == ("previous receipt does not match its digest", old.name)  # type: ignore[arg-type]


def test_a_chain_that_mixes_migrations_is_refused(example: Path) -> None:
    from airflow_kfm_migrations.util.digest import dump_json

    write(example)
    other = json.loads((example / "receipts" / "run_receipt.json").read_text())
    other["migration_id"] = "PG-MIG-2026-02-28-02"
    other["previous_receipt_digest"] = None
    other["receipt_digest"] = receipt_digest(other)
    (example / "receipts" / "history" / f"{other['receipt_digest']}.json").write_bytes(dump_json(other))
    rewrite(example, previous_receipt_digest=other["receipt_digest"])
    assert mismatch(example).reason == "receipt chain mixes migrations"


def test_an_input_left_out_of_the_list_breaks_the_bundle_digest(example: Path) -> None:
    path, _ = write(example)
    inputs = [i for i in json.loads(path.read_text())["inputs"] if i["path"] != "rollback.sql"]
    rewrite(example, inputs=inputs)
    assert mismatch(example).reason == "bundle_digest does not match the listed inputs"


def test_a_receipt_without_its_declaration_is_refused(example: Path) -> None:
    path, _ = write(example)
    inputs = [i for i in json.loads(path.read_text())["inputs"] if i["path"] != "migration.yml"]
    rewrite(example, inputs=inputs)
    assert mismatch(example).reason == "the receipt lists no declaration input"


@pytest.mark.parametrize("where", ["inputs", "outputs"])
def test_a_listed_file_outside_the_folders_is_refused(example: Path, where: str) -> None:
    from airflow_kfm_migrations.util.digest import sha256_file

    path, _ = write(example)
    outside = example.parent / "elsewhere.sql"
    outside.write_text("SELECT 1;\n")
    doc = json.loads(path.read_text())
    doc[where].append({"path": "../elsewhere.sql", "sha256": sha256_file(outside), "role": "forward"})
    rewrite(example, **{where: doc[where]})
    assert mismatch(example).reason == "the receipt lists a file outside its folder: ../elsewhere.sql"


def test_a_receipt_that_is_not_schema_valid_is_refused(example: Path) -> None:
    write(example)
    rewrite(example, status="maybe")
    assert mismatch(example).reason.startswith("receipt is not schema-valid: status")


def test_verify_through_the_cli_names_the_file(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(example)
    assert main(["verify", str(example)]) == 0
    (example / "forward.sql").write_text("DROP TABLE parcels;\n")
    capsys.readouterr()
    assert main(["verify", str(example)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("forward.sql: input artifact changed since the run (sha256 mismatch)")


# ------------------------------------------------------------------ the digest

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(doc=st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k != "receipt_digest"), JSON,
                           min_size=1, max_size=6),
       stamp=st.one_of(st.none(), st.text(max_size=64)),
       data=st.data())
def test_the_receipt_digest_ignores_only_its_own_field(doc: dict[str, Any], stamp: str | None, data: Any) -> None:
    digest = receipt_digest(doc)
    assert receipt_digest({**doc, "receipt_digest": stamp}) == digest
    assert receipt_digest(dict(reversed(list(doc.items())))) == digest  # key order does not matter
    key = data.draw(st.sampled_from(sorted(doc)))
    assert receipt_digest({**doc, key: [doc[key]]}) != digest
