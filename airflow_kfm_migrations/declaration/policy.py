"""Validate-time policy: what the schema cannot say, checked before anything runs.

Each problem is a :class:`PolicyError` (exit 1): the input is well-formed but the
governance contract refuses it.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable
from pathlib import Path

from airflow_kfm_migrations.contracts.models import (
    AnyDeclaration,
    GraphDeclaration,
    PostgisDeclaration,
    SearchDeclaration,
)
from airflow_kfm_migrations.declaration.approvals import approval_covers
from airflow_kfm_migrations.declaration.bundle import DECLARATION_FILE, OUTPUT_DIRS, Bundle, display
from airflow_kfm_migrations.errors import InputError, PolicyError
from airflow_kfm_migrations.util.secret_scan import SecretFinding, scan_files, scan_text

_COMMENT_PATTERNS = {
    ".sql": re.compile(r"--[^\n]*|/\*.*?\*/", re.S),
    ".cypher": re.compile(r"//[^\n]*|/\*.*?\*/", re.S),
}


def effective_body(rel: str, text: str) -> str:
    """The script without comments and whitespace: empty means 'no rollback at all'."""
    rx = _COMMENT_PATTERNS.get(Path(rel).suffix)
    body = rx.sub("", text) if rx else text
    body = body.strip()
    if Path(rel).suffix == ".json" and body in {"{}", "[]", "null"}:
        return ""
    return body


NOTES_SECTIONS = {
    # A heading naming it, then text before the next heading: the whitespace after the heading
    # is taken whole (possessive), so an empty section cannot borrow the next heading's '#'.
    "reason": re.compile(r"(?im)^#+\s*[^\n]*\breason\b[^\n]*\n\s*+(?!#)\S"),
    "approval reference": re.compile(r"(?im)^#+\s*[^\n]*\bapproval\b[^\n]*\n\s*+(?!#)\S"),
    "alternative safety strategy": re.compile(r"(?im)^#+\s*[^\n]*\b(safety|alternative)\b[^\n]*\n\s*+(?!#)\S"),
}


def overlaps(allowed: Iterable[str], forbidden: Iterable[str]) -> list[str]:
    """Entries of ``allowed`` that a ``forbidden`` entry equals or matches (globs)."""
    forb = list(forbidden)
    out = []
    for a in allowed:
        for f in forb:
            if a == f or fnmatch.fnmatchcase(a, f) or fnmatch.fnmatchcase(f, a):
                out.append(f"{a} ~ {f}")
    return out


def _scope_pairs(decl: AnyDeclaration) -> list[tuple[str, list[str], list[str]]]:
    s = decl.scope
    if isinstance(decl, PostgisDeclaration):
        return [
            ("schemas", list(s.allowed_schemas), list(s.forbidden_schemas)),  # type: ignore[union-attr]
            ("tables", list(s.allowed_tables), list(s.forbidden_tables)),  # type: ignore[union-attr]
        ]
    if isinstance(decl, SearchDeclaration):
        return [
            ("index_patterns", list(s.allowed_index_patterns), list(s.forbidden_index_patterns)),  # type: ignore[union-attr]
            ("aliases", list(s.allowed_aliases), list(s.forbidden_aliases)),  # type: ignore[union-attr]
        ]
    if isinstance(decl, GraphDeclaration):
        return [
            ("labels", list(s.allowed_labels), list(s.forbidden_labels)),  # type: ignore[union-attr]
            (
                "relationship_types",
                list(s.allowed_relationship_types),  # type: ignore[union-attr]
                list(s.forbidden_relationship_types),  # type: ignore[union-attr]
            ),
        ]
    return [("objects", list(s.allowed), list(s.forbidden))]  # type: ignore[union-attr]


def protected_in_allowed(decl: AnyDeclaration) -> list[str]:
    """Protected objects that the allowed scope reaches (so the migration may touch them)."""
    s = decl.scope
    hits: list[str] = []
    if isinstance(decl, PostgisDeclaration):
        sc = decl.scope
        for schema in sc.protected_schemas:
            if any(fnmatch.fnmatchcase(schema, a) for a in sc.allowed_schemas):
                hits.append(schema)
        for table in sc.protected_tables:
            schema, _, name = table.rpartition(".")
            if any(fnmatch.fnmatchcase(table, a) or fnmatch.fnmatchcase(name, a) for a in sc.allowed_tables) and (
                not schema or not sc.allowed_schemas or any(fnmatch.fnmatchcase(schema, a) for a in sc.allowed_schemas)
            ):
                hits.append(table)
    elif isinstance(decl, SearchDeclaration):
        for idx in decl.scope.protected_indices:
            if any(fnmatch.fnmatchcase(idx, a) for a in decl.scope.allowed_index_patterns):
                hits.append(idx)
    elif isinstance(decl, GraphDeclaration):
        for label in decl.scope.protected_labels:
            if any(fnmatch.fnmatchcase(label, a) for a in decl.scope.allowed_labels):
                hits.append(label)
    del s
    return hits


def bundle_files(bundle: Bundle) -> list[tuple[Path, bool]]:
    """Every regular file of the bundle folder, and whether it is a run output."""
    walked: list[tuple[Path, bool]] = []
    for dirpath, _dirs, files in os.walk(bundle.root):
        for name in sorted(files):
            p = Path(dirpath) / name
            if p.is_symlink() or not p.is_file():
                continue
            walked.append((p, p.relative_to(bundle.root).parts[0] in OUTPUT_DIRS))
    return walked


def secret_scan_inputs(walked: list[tuple[Path, bool]]) -> list[tuple[Path, str]]:
    """(path, label) of the files ``check_bundle`` scans with every detector: all but outputs."""
    return [(p, display(p)) for p, is_output in walked if not is_output]


def prescan(bundle: Bundle) -> None:
    """Scan the bundle's inputs for secrets ahead of ``check_bundle`` (which then finds them
    scanned, unless a file changed meanwhile): ``migrate`` does it for the next migration
    while the current one runs."""
    scan_files(secret_scan_inputs(bundle_files(bundle)))


def check_bundle(bundle: Bundle) -> list[InputError]:
    """All policy problems of one loaded bundle."""
    decl = bundle.declaration
    f = display(bundle.root / DECLARATION_FILE)
    problems: list[InputError] = []

    # Rollback posture.
    if decl.requires_rollback:
        for art in bundle.by_role("rollback"):
            if not effective_body(art.rel, art.text):
                problems.append(
                    PolicyError(
                        display(art.path), "artifacts.rollback", "rollback script is empty (requires_rollback: true)"
                    )
                )
    else:
        notes = next((a for a in bundle.by_role("notes")), None)
        if notes is None:
            problems.append(
                PolicyError(
                    f,
                    "requires_rollback",
                    "false needs notes.md with the reason, approval reference and alternative safety strategy",
                )
            )
        else:
            for what, rx in NOTES_SECTIONS.items():
                if not rx.search(notes.text + "\n"):
                    problems.append(
                        PolicyError(
                            display(notes.path),
                            "-",
                            f"irreversible migration: notes.md lacks a section "
                            f"with the {what} (a heading naming it, followed by text)",
                        )
                    )

    # Scope consistency.
    for name, allowed, forbidden in _scope_pairs(decl):
        for clash in overlaps(allowed, forbidden):
            problems.append(PolicyError(f, f"scope.allowed_{name}", f"allowed and forbidden overlap: {clash}"))
    for obj in protected_in_allowed(decl):
        token = f"protected:{obj}"
        if decl.approvals.change_class != "governance-critical":
            problems.append(
                PolicyError(
                    f,
                    "approvals.change_class",
                    f"protected object {obj!r} is inside the allowed scope; change_class must be governance-critical",
                )
            )
        elif approval_covers(decl, token) is None:
            problems.append(
                PolicyError(
                    f,
                    "approvals.recorded",
                    f"protected object {obj!r} is inside the allowed scope; a recorded approval must cover {token!r}",
                )
            )

    # Backfill bounds (postgis); the store checks the backfill's statements (engine.preflight).
    if isinstance(decl, PostgisDeclaration) and decl.backfill is not None:
        if decl.backfill.max_rows > decl.limits.max_row_backfill:
            problems.append(
                PolicyError(
                    f,
                    "backfill.max_rows",
                    f"{decl.backfill.max_rows} exceeds limits.max_row_backfill ({decl.limits.max_row_backfill})",
                )
            )

    # Secrets in any file of the bundle. Run outputs (digest-heavy JSON the tool wrote and
    # scanned on write) get our DSN/private-key rules only: entropy detectors flag sha256s.
    walked = bundle_files(bundle)
    # The inputs in one detect-secrets session; a file scanned before, unchanged, is not scanned again.
    by_file: dict[str, list[SecretFinding]] = {}
    for finding in scan_files(secret_scan_inputs(walked)):
        by_file.setdefault(finding.file, []).append(finding)
    for p, is_output in walked:
        if is_output:
            try:
                text = p.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                text = ""
            found = scan_text(text, display(p))
        else:
            found = by_file.get(display(p), [])
        for finding in found:
            problems.append(PolicyError(finding.file, f"line {finding.line}", finding.message()))
    return problems
