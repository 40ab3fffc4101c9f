from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from conftest import MIGRATIONS, REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_kfm_migrations.cli import main
from airflow_kfm_migrations.contracts import CONTRACTS, adapter, schema_errors, schema_text
from airflow_kfm_migrations.contracts.export import main as export_main
from airflow_kfm_migrations.declaration.bundle import load_bundle, parse_declaration
from airflow_kfm_migrations.errors import InvalidInput

CONTRACT_DOC = REPO.parent / "shared" / "spec" / "governed-migrations-contract.md"
FIXTURES = MIGRATIONS / "registry" / "fixtures"


def test_committed_schemas_are_generated_from_the_models() -> None:
    assert export_main(["--check", str(REPO)]) == 0
    for name in CONTRACTS:
        on_disk = (MIGRATIONS / "registry" / "schemas" / f"{name}.schema.json").read_text()
        assert on_disk == schema_text(name)
        assert json.loads(on_disk)["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def _contract_example() -> str:
    text = CONTRACT_DOC.read_text()
    m = re.search(r"### Example `migration.yml`\s*```yaml\n(.*?)```", text, re.S)
    assert m, "the contract's example migration.yml was not found"
    return m.group(1)


@pytest.mark.skipif(
    not CONTRACT_DOC.exists() and os.environ.get("CI", "").lower() != "true",
    reason="shared/ lies beside the checkout in the workspace and in CI, not in a plain clone",
)
def test_the_contract_example_validates_as_written() -> None:
    decl, raw = parse_declaration(_contract_example(), "contract-example")
    assert decl.migration_id == "PG-MIG-2026-02-28-01"
    assert schema_errors("migration_declaration.v1", raw) == []
    shipped = yaml.safe_load((MIGRATIONS / "postgis" / "PG-MIG-2026-02-28-01" / "migration.yml").read_text())
    assert shipped == yaml.safe_load(_contract_example())


def _declarations() -> list[tuple[str, object, bool]]:
    out = []
    for path in sorted(FIXTURES.rglob("migration.yml")) + sorted(MIGRATIONS.glob("*/*/migration.yml")):
        try:
            data = yaml.safe_load(path.read_bytes())
        except (yaml.YAMLError, UnicodeDecodeError):
            continue
        out.append((str(path.relative_to(MIGRATIONS)), data, True))
    return out


@pytest.mark.parametrize(("label", "data", "_"), _declarations(), ids=lambda v: v if isinstance(v, str) else "")
def test_json_schema_and_pydantic_agree(label: str, data: object, _: bool) -> None:
    from pydantic import ValidationError

    try:
        adapter("migration_declaration.v1").validate_python(data)
        model_ok = True
    except ValidationError:
        model_ok = False
    assert (schema_errors("migration_declaration.v1", data) == []) == model_ok, label


def test_unknown_fields_are_refused_by_every_contract() -> None:
    for name in CONTRACTS:
        schema = json.loads(schema_text(name))
        for definition in [schema, *schema.get("$defs", {}).values()]:
            if definition.get("type") == "object" and "properties" in definition:
                assert definition.get("additionalProperties") is False, (name, definition.get("title"))


def test_fixture_suite_has_enough_invalid_cases_each_with_a_reason() -> None:
    cases = sorted(p for p in (FIXTURES / "invalid").iterdir() if p.is_dir())
    assert len(cases) >= 25
    for case in cases:
        assert (case / "expected.txt").read_text().strip(), case


@pytest.mark.parametrize("case", sorted(p.name for p in (FIXTURES / "invalid").iterdir()))
def test_each_invalid_fixture_fails_with_its_expected_reason(case: str, capsys: pytest.CaptureFixture[str]) -> None:
    folder = FIXTURES / "invalid" / case
    target = folder / "migrations.v1.json"
    if not target.exists():
        target = next(p for p in folder.iterdir() if p.is_dir())
    code = main(["validate", str(target)])
    err = capsys.readouterr().err
    assert code in (1, 2)
    assert (folder / "expected.txt").read_text().strip() in err
    assert "Traceback" not in err


@pytest.mark.parametrize("case", sorted(p.name for p in (FIXTURES / "valid").iterdir()))
def test_each_valid_fixture_passes(case: str) -> None:
    assert main(["validate", str(FIXTURES / "valid" / case)]) == 0


def test_validate_the_repository_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(MIGRATIONS), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    kinds = {r["kind"] for r in doc["results"]}
    assert {"registry", "bundle", "fixture"} <= kinds


def test_validate_json_names_file_field_and_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = FIXTURES / "invalid" / "08-negative-limit" / "PG-MIG-2026-02-28-01"
    assert main(["validate", str(case), "--format", "json"]) == 2
    problem = json.loads(capsys.readouterr().out)["results"][0]["problems"][0]
    assert problem["file"].endswith("migration.yml")
    assert problem["field"] == "limits.max_index_count_delta"


# ------------------------------------------------------------------ hypothesis

yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


def _check_never_traceback(tmp_path: Path, payload: bytes) -> None:
    bundle = tmp_path / "PG-MIG-2026-01-01-01"
    bundle.mkdir(exist_ok=True)
    (bundle / "migration.yml").write_bytes(payload)
    try:
        load_bundle(bundle)
    except InvalidInput as exc:
        assert exc.exit_code == 2
        for p in exc.problems:
            assert "\n" not in p.line() and p.line().strip()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_random_bytes_never_raise_a_traceback(tmp_path: Path, payload: bytes) -> None:
    _check_never_traceback(tmp_path, payload)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(yaml_values)
def test_random_yaml_never_raises_a_traceback(tmp_path: Path, value: object) -> None:
    _check_never_traceback(tmp_path, yaml.safe_dump(value).encode())
