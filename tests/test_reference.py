"""The generated reference (docs/reference/) and the finding-code catalogue stay in step with the code.

Regenerate with ``python -m airflow_kfm_migrations.contracts.reference .`` after changing a
contract model, a field description or the catalogue in ``contracts/finding_codes.py``.
"""

from __future__ import annotations

import ast
import re
import typing
from pathlib import Path

import pytest
from conftest import REPO
from pydantic import BaseModel

from airflow_kfm_migrations.contracts import CONTRACTS
from airflow_kfm_migrations.contracts import finding_scan as fscan
from airflow_kfm_migrations.contracts import models as m
from airflow_kfm_migrations.contracts import reference as ref
from airflow_kfm_migrations.contracts.finding_codes import FINDING_CODES, FindingCode

PACKAGE = REPO / "airflow_kfm_migrations"
REGENERATE = "run `python -m airflow_kfm_migrations.contracts.reference .`"

# ------------------------------------------------------------------ (a) not stale


def test_the_committed_reference_is_what_the_code_generates() -> None:
    for rel, text in ref.documents().items():
        path = REPO / rel
        assert path.exists(), f"{rel} is missing: {REGENERATE}"
        assert path.read_text(encoding="utf-8") == text, f"{rel} is stale: {REGENERATE}"
    assert ref.main(["--check", str(REPO)]) == 0


def test_generation_is_deterministic() -> None:
    assert ref.documents() == ref.documents()


def _write(root: Path) -> None:
    for rel, text in ref.documents().items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")


def test_check_fails_when_a_model_field_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path)
    assert ref.main(["--check", str(tmp_path)]) == 0
    monkeypatch.setattr(m.Backfill.model_fields["batch_size"], "description", "a changed meaning")
    assert ref.main(["--check", str(tmp_path)]) == 1
    monkeypatch.setattr(m.DiffEntry.model_fields["kind"], "description", None)
    assert "DiffEntry.kind" in ref.undocumented_fields()


def test_check_fails_when_a_code_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path)
    extra = FindingCode("never_emitted", ("hard_fail",), "A code nothing emits.", "Nothing.")
    monkeypatch.setitem(FINDING_CODES, extra.code, extra)
    assert ref.main(["--check", str(tmp_path)]) == 1
    assert any("never_emitted" in p for p in fscan.code_problems(fscan.scan_codes()))


def test_check_fails_when_a_generated_file_is_edited(tmp_path: Path) -> None:
    _write(tmp_path)
    path = tmp_path / "docs" / "reference" / "findings.md"
    path.write_text(path.read_text() + "\nedited by hand\n")
    assert ref.main(["--check", str(tmp_path)]) == 1


# ------------------------------------------------------------------ (b) every field


def _models(tp: object, out: list[type[BaseModel]]) -> list[type[BaseModel]]:
    """Every pydantic model reachable from ``tp``, walked independently of the generator."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if tp in out:
            return out
        out.append(tp)
        for info in tp.model_fields.values():
            _models(info.annotation, out)
            for meta in info.metadata:
                _models(meta, out)
        return out
    for arg in typing.get_args(tp):
        _models(arg, out)
    return out


def _documented() -> dict[str, dict[str, str]]:
    """model name -> {field name -> its table row}, parsed from the generated Markdown."""
    out: dict[str, dict[str, str]] = {}
    for rel in ("declaration.md", "contracts.md"):
        current = None
        for line in (REPO / "docs" / "reference" / rel).read_text().splitlines():
            heading = re.match(r"^### (\w+)$", line)
            if heading:
                current = heading.group(1)
                assert current not in out, f"{current} is documented twice"
                out[current] = {}
                continue
            row = re.match(r"^\| `([^`]+)` \|", line)
            if row and current is not None:
                out[current][row.group(1)] = line
    return out


def test_every_field_of_every_contract_model_is_in_the_reference() -> None:
    models: list[type[BaseModel]] = []
    for contract in CONTRACTS.values():
        _models(contract, models)
    assert {m.PostgisDeclaration, m.Backfill, m.RequiredRelationship, m.StatusEvent, m.Finding} <= set(models)
    documented = _documented()
    missing = []
    for model in models:
        rows = documented.get(model.__name__)
        if rows is None:
            missing.append(model.__name__)
            continue
        for name, info in model.model_fields.items():
            shown = info.alias or name
            row = rows.get(shown)
            if row is None:
                missing.append(f"{model.__name__}.{shown}")
            else:
                assert "**undocumented**" not in row, f"{model.__name__}.{shown} has no description"
        assert set(rows) == {info.alias or name for name, info in model.model_fields.items()}, model.__name__
    assert not missing, f"not in docs/reference: {missing}; {REGENERATE}"
    assert ref.undocumented_fields() == []


def test_every_finding_code_is_in_the_findings_reference() -> None:
    text = (REPO / "docs" / "reference" / "findings.md").read_text()
    for code, entry in FINDING_CODES.items():
        assert f"### {code}\n" in text
        assert entry.meaning in text and entry.next_step in text


# ------------------------------------------------------------------ (c) codes, both ways


def test_every_emitted_code_is_catalogued_and_every_catalogued_code_is_emitted() -> None:
    result = fscan.scan_codes(PACKAGE)
    assert result.sites, "the scan found no finding code at all"
    assert result.unresolved == []
    assert fscan.code_problems(result) == []


def test_the_scan_misses_nothing_a_plain_text_search_finds() -> None:
    """A cross-check of the syntax-tree scan with regular expressions over the source."""
    scanned = fscan.scan_codes(PACKAGE).codes()
    rules = (
        re.compile(r"""\bcode\s*=\s*["']([a-z][a-z0-9_]*)["']"""),
        re.compile(r"""\b\w*Stop\(\s*["']([a-z][a-z0-9_]*)["']"""),
        re.compile(r"""["']review:([a-z][a-z0-9_]*)"""),
    )
    found: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in {"finding_codes.py", "reference.py", "finding_scan.py"}:
            continue
        text = path.read_text()
        for rule in rules:
            for hit in rule.finditer(text):
                found.setdefault(hit.group(1), f"{path.relative_to(REPO)}:{text[: hit.start()].count(chr(10)) + 1}")
    assert found, "the plain-text search found nothing; are the rules out of date?"
    missed = {code: where for code, where in found.items() if code not in scanned}
    assert not missed, f"the syntax-tree scan missed {missed}"
    assert set(found) <= set(FINDING_CODES), sorted(set(found) - set(FINDING_CODES))


SAMPLE = """
from airflow_kfm_migrations.contracts import models
from airflow_kfm_migrations.contracts.models import Finding


class Halt(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)


def helper(code, message):
    return Finding(code=code, tier="review_required", message=message)


def emit(c, d):
    out = [
        Finding(code="new_thing", tier="hard_fail", message="x"),
        models.Finding(code="object_added" if c else "brand_new", tier="informational", message="x"),
        Finding(code=f"prefix_{c}", tier="informational", message="x"),
        Finding.model_validate({"code": "validated_code", "tier": "hard_fail", "message": "x"}),
        helper("via_helper", "x"),
        Finding(code=c.upper(), tier="hard_fail", message="x"),
    ]
    if approval_covers(d, "review:approved_code"):
        raise Halt("halted_code", "stopped")
    return out
"""


def test_the_scan_reports_a_code_added_without_documenting_it(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "module.py").write_text(SAMPLE)
    result = fscan.scan_codes(pkg)
    codes = result.codes()
    for code in ("new_thing", "brand_new", "object_added", "validated_code", "via_helper", "approved_code"):
        assert code in codes, code
    assert "halted_code" in codes
    assert any(s.pattern and s.code == "prefix_.+" for s in result.sites)
    assert len(result.unresolved) == 1 and "c.upper()" in result.unresolved[0]
    problems = "\n".join(fscan.code_problems(result))
    for code in ("new_thing", "brand_new", "validated_code", "via_helper", "approved_code", "halted_code"):
        assert f"'{code}' is not in contracts/finding_codes.py" in problems, code
    assert "prefix_" in problems
    assert "object_added" not in problems.split("is catalogued but nothing emits it")[0].split("\n")[0]


def test_a_catalogued_code_emitted_with_another_tier_is_reported(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "module.py").write_text('Finding(code="object_added", tier="hard_fail", message="x")\n')
    problems = fscan.code_problems(fscan.scan_codes(pkg))
    assert any("object_added is emitted as hard_fail" in p for p in problems)


# ------------------------------------------------------------------ the catalogue itself


def test_catalogue_entries_are_complete() -> None:
    code_rx = re.compile(r"^[a-z][a-z0-9_]*$")
    assert list(FINDING_CODES) == sorted(FINDING_CODES)
    for code, entry in FINDING_CODES.items():
        assert entry.code == code and code_rx.match(code)
        assert entry.tiers and set(entry.tiers) <= set(typing.get_args(m.Tier)), code
        assert len(set(entry.tiers)) == len(entry.tiers), code
        for text in (entry.meaning, entry.next_step):
            assert text.strip() and text.rstrip().endswith("."), f"{code}: {text!r}"


def test_the_catalogue_sits_in_the_contracts_layer() -> None:
    """finding_codes imports nothing of the package but the models; the scan only the
    catalogue; the generator only the contracts."""
    allowed = {
        "finding_codes.py": {"airflow_kfm_migrations.contracts.models"},
        "finding_scan.py": {"airflow_kfm_migrations.contracts.finding_codes"},
        "reference.py": {
            "airflow_kfm_migrations.contracts",
            "airflow_kfm_migrations.contracts.models",
            "airflow_kfm_migrations.contracts.finding_codes",
            "airflow_kfm_migrations.contracts.finding_scan",
        },
    }
    for name, ok in allowed.items():
        tree = ast.parse((PACKAGE / "contracts" / name).read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
        ours = {x for x in imported if x.split(".")[0] == "airflow_kfm_migrations"}
        assert ours <= ok, f"{name} imports {sorted(ours - ok)}"
