"""Validate-time policy (``check_bundle``) on bundles written to tmp_path: no server.

Each case edits a private copy of the contract's PostGIS example and asserts the field and
reason of the problem it must cause, and that the unedited example has none."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_kfm_migrations.declaration.approvals import approval_covers
from airflow_kfm_migrations.declaration.bundle import load_bundle
from airflow_kfm_migrations.declaration.policy import check_bundle
from airflow_kfm_migrations.errors import PolicyError


def problems(bundle_dir: Path) -> list[tuple[str, str, str]]:
    found = check_bundle(load_bundle(bundle_dir))
    assert all(isinstance(p, PolicyError) for p in found)
    return [(Path(p.file).name, p.field, p.reason) for p in found]


def edit(bundle_dir: Path, old: str, new: str, file: str = "migration.yml") -> None:
    path = bundle_dir / file
    text = path.read_text()
    assert old in text, f"{old!r} is not in {file}"
    path.write_text(text.replace(old, new, 1))


APPROVAL = (
    "  change_class: governance-critical\n  recorded:\n"
    "    - by: kfm-governance\n      at: '2026-03-01T10:00:00+00:00'\n      ref: GOV-7\n"
    "      covers: [{covers}]\n"
)


def approve(bundle_dir: Path, *tokens: str) -> None:
    edit(bundle_dir, "  change_class: governance-critical\n",
         APPROVAL.format(covers=", ".join(f"'{t}'" for t in tokens)))


def test_the_example_has_no_policy_problem(example: Path) -> None:
    assert problems(example) == []


# ------------------------------------------------------------------ rollback posture


@pytest.mark.parametrize("body", ["", "\n\n", "-- nothing to undo\n", "/* block\ncomment */\n  -- and a line\n"])
def test_an_empty_rollback_is_refused_when_one_is_required(example: Path, body: str) -> None:
    (example / "rollback.sql").write_text(body)
    assert problems(example) == [
        ("rollback.sql", "artifacts.rollback", "rollback script is empty (requires_rollback: true)")
    ]


def test_a_rollback_with_a_statement_after_comments_is_enough(example: Path) -> None:
    (example / "rollback.sql").write_text("-- undo\n/* the index */ DROP INDEX IF EXISTS parcels_geom_gist;\n")
    assert problems(example) == []


def _irreversible(example: Path, notes: str | None) -> None:
    edit(example, "requires_rollback: true", "requires_rollback: false")
    if notes is None:
        (example / "notes.md").unlink()
    else:
        (example / "notes.md").write_text(notes)


def test_an_irreversible_migration_needs_notes(example: Path) -> None:
    _irreversible(example, None)
    assert problems(example) == [
        (
            "migration.yml",
            "requires_rollback",
            "false needs notes.md with the reason, approval reference and alternative safety strategy",
        )
    ]


FULL_NOTES = (
    "# Why\n\n## Reason\nThe table is rebuilt from the source anyway.\n\n"
    "## Approval reference\nGOV-12\n\n## Alternative safety strategy\nA snapshot is taken first.\n"
)


def test_notes_with_all_three_sections_are_enough(example: Path) -> None:
    _irreversible(example, FULL_NOTES)
    assert problems(example) == []


@pytest.mark.parametrize(
    ("drop", "what"),
    [
        ("## Reason\nThe table is rebuilt from the source anyway.\n\n", "reason"),
        ("## Approval reference\nGOV-12\n\n", "approval reference"),
        ("## Alternative safety strategy\nA snapshot is taken first.\n", "alternative safety strategy"),
    ],
)
def test_notes_missing_a_section_name_it(example: Path, drop: str, what: str) -> None:
    _irreversible(example, FULL_NOTES.replace(drop, ""))
    assert problems(example) == [
        (
            "notes.md",
            "-",
            f"irreversible migration: notes.md lacks a section with the {what} "
            "(a heading naming it, followed by text)",
        )
    ]


def test_notes_declared_under_another_name_count(example: Path) -> None:
    _irreversible(example, None)
    (example / "why.md").write_text(FULL_NOTES)
    with (example / "migration.yml").open("a") as fh:
        fh.write("  notes: why.md\n")
    assert problems(example) == []


@pytest.mark.parametrize("emptied", ["GOV-12\n\n", "GOV-12\n"])
def test_a_heading_without_text_is_not_a_section(example: Path, emptied: str) -> None:
    # With or without a blank line before the next heading, an empty section is no section.
    _irreversible(example, FULL_NOTES.replace(emptied, ""))
    assert [p[2] for p in problems(example)] == [
        "irreversible migration: notes.md lacks a section with the approval reference "
        "(a heading naming it, followed by text)"
    ]


def test_a_mention_outside_a_heading_is_not_a_section(example: Path) -> None:
    _irreversible(example, "# Notes\n\nThe reason, the approval and the safety strategy are elsewhere.\n")
    assert len(problems(example)) == 3


# ------------------------------------------------------------------ scope consistency


@pytest.mark.parametrize(
    ("old", "new", "field", "clash"),
    [
        ("  allowed_tables:\n    - parcels\n", "  allowed_tables:\n    - parcels\n    - authority_sites\n",
         "scope.allowed_tables", "authority_sites ~ authority_sites"),
        ("  allowed_tables:\n    - parcels\n", "  allowed_tables:\n    - parcels\n    - 'auth*'\n",
         "scope.allowed_tables", "auth* ~ authority_sites"),
        ("  forbidden_tables:\n    - authority_sites\n", "  forbidden_tables:\n    - authority_sites\n    - 'parc*'\n",
         "scope.allowed_tables", "parcels ~ parc*"),
        ("  allowed_schemas:\n    - public\n", "  allowed_schemas:\n    - public\n    - audit\n",
         "scope.allowed_schemas", "audit ~ audit"),
    ],
)
def test_allowed_and_forbidden_must_not_overlap(
    example: Path, old: str, new: str, field: str, clash: str
) -> None:
    edit(example, old, new)
    assert problems(example) == [("migration.yml", field, f"allowed and forbidden overlap: {clash}")]


PROTECT_PARCELS = ("  forbidden_tables:\n    - authority_sites\n",
                   "  forbidden_tables:\n    - authority_sites\n  protected_tables:\n    - public.parcels\n")


def test_a_protected_table_in_scope_needs_an_approval_naming_it(example: Path) -> None:
    edit(example, *PROTECT_PARCELS)
    assert problems(example) == [
        (
            "migration.yml",
            "approvals.recorded",
            "protected object 'public.parcels' is inside the allowed scope; "
            "a recorded approval must cover 'protected:public.parcels'",
        )
    ]
    approve(example, "protected:parcels")  # another token than the one named: still refused
    assert [p[1] for p in problems(example)] == ["approvals.recorded"]


def test_a_protected_table_in_scope_with_its_approval_passes(example: Path) -> None:
    edit(example, *PROTECT_PARCELS)
    approve(example, "review:policy_dropped", "protected:public.parcels")
    assert problems(example) == []


def test_a_protected_table_in_scope_needs_a_governance_critical_change(example: Path) -> None:
    edit(example, *PROTECT_PARCELS)
    edit(example, "change_class: governance-critical", "change_class: standard")
    assert problems(example) == [
        (
            "migration.yml",
            "approvals.change_class",
            "protected object 'public.parcels' is inside the allowed scope; change_class must be governance-critical",
        )
    ]


def test_a_protected_table_outside_the_allowed_scope_needs_nothing(example: Path) -> None:
    edit(example, "  forbidden_tables:\n    - authority_sites\n",
         "  forbidden_tables:\n    - authority_sites\n  protected_tables:\n    - public.other\n"
         "  protected_schemas:\n    - vault\n")
    assert problems(example) == []


def test_a_protected_schema_in_scope_needs_an_approval(example: Path) -> None:
    edit(example, "  forbidden_tables:\n    - authority_sites\n",
         "  forbidden_tables:\n    - authority_sites\n  protected_schemas:\n    - public\n")
    assert [p[2] for p in problems(example)] == [
        "protected object 'public' is inside the allowed scope; a recorded approval must cover 'protected:public'"
    ]


# ------------------------------------------------------------------ secrets


@pytest.mark.parametrize(
    ("file", "line", "kind"),
    [
        ("forward.sql", "-- conn: postgresql://kfm:hunter2-secret@db.internal:5432/kfm\n", "DSN with password"),
        ("notes.md", "connect with host=db user=kfm password=hunter2-secret\n", "password in a key=value DSN"),
        ("extra.txt", "-----BEGIN RSA PRIVATE KEY-----\n", "private key"),
    ],
)
def test_a_secret_in_any_file_of_the_bundle_is_refused(example: Path, file: str, line: str, kind: str) -> None:
    path = example / file
    text = path.read_text() if path.exists() else ""
    path.write_text(text + line)
    lineno = len((text + line).splitlines())
    found = [p for p in problems(example) if p[0] == file]
    assert (file, f"line {lineno}", f"possible secret ({kind}) on line {lineno}; reference it by name instead") in found


def test_a_secret_in_a_run_output_is_refused_too(example: Path) -> None:
    (example / "receipts").mkdir()
    (example / "receipts" / "run_receipt.json").write_text('{"x": "postgresql://a:b-secret@h/d"}\n')
    assert problems(example) == [
        ("run_receipt.json", "line 1", "possible secret (DSN with password) on line 1; reference it by name instead")
    ]


def test_a_secret_reference_by_name_is_fine(example: Path) -> None:
    with (example / "forward.sql").open("a") as fh:
        fh.write("-- the DSN comes from KFM_DB_DSN_REF; postgresql://db.internal/kfm has no password\n")
    assert problems(example) == []


# ------------------------------------------------------------------ approvals


@settings(max_examples=100, deadline=None)
@given(
    covers=st.lists(st.lists(st.sampled_from(["review:a", "review:b", "protected:x", "protected:y"]), max_size=3),
                    max_size=3),
    token=st.sampled_from(["review:a", "review:b", "protected:x", "protected:y", "review:a:x"]),
)
def test_approval_covers_names_the_first_approval_listing_the_token_exactly(
    covers: list[list[str]], token: str
) -> None:
    from datetime import UTC, datetime

    from airflow_kfm_migrations.contracts.models import Approvals, RecordedApproval

    approvals = Approvals(
        required_reviewers=["kfm-platform"],
        change_class="standard",
        recorded=[
            RecordedApproval(by=f"r{i}", at=datetime(2026, 3, 1, tzinfo=UTC), ref=f"GOV-{i}", covers=c)
            for i, c in enumerate(covers)
        ],
    )

    class Decl:
        pass

    decl = Decl()
    decl.approvals = approvals  # type: ignore[attr-defined]
    first = next((i for i, c in enumerate(covers) if token in c), None)
    assert approval_covers(decl, token) == (None if first is None else f"r{first} (GOV-{first})")  # type: ignore[arg-type]
