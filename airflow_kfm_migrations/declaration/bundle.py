"""Safe loading of one migration folder into a :class:`Bundle`.

Everything here is read-only and refuses early: the folder name must equal the id, the
declaration must be small, UTF-8 and plain YAML, and every artifact must be a regular
file that resolves inside the bundle. Every input artifact gets a sha256; the bundle
digest is the sha256 of the RFC 8785 form of the manifest.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from airflow_kfm_migrations.config import settings
from airflow_kfm_migrations.contracts import adapter
from airflow_kfm_migrations.contracts.models import AnyDeclaration
from airflow_kfm_migrations.errors import InputError, InvalidInput
from airflow_kfm_migrations.kinds import ALL_TYPES
from airflow_kfm_migrations.util.digest import digest_json, sha256_bytes
from airflow_kfm_migrations.util.safe_yaml import load_yaml_text

DECLARATION_FILE = "migration.yml"
# Folders a run writes into; they are outputs, never inputs of the bundle digest.
OUTPUT_DIRS = ("baselines", "diffs", "receipts", "runs")


def _declaration_cap() -> int:
    return settings().max_declaration_bytes


def _script_cap() -> int:
    return settings().max_script_bytes


@dataclass(frozen=True)
class Limits:
    """Size caps on what a bundle may hold (``KFM_MAX_DECLARATION_BYTES``, ``KFM_MAX_SCRIPT_BYTES``)."""

    max_declaration_bytes: int = field(default_factory=_declaration_cap)
    max_script_bytes: int = field(default_factory=_script_cap)


@dataclass(frozen=True)
class Artifact:
    role: str  # declaration | forward | rollback | notes | ontology
    rel: str
    path: Path
    sha256: str
    text: str


@dataclass(frozen=True)
class Bundle:
    root: Path
    declaration: AnyDeclaration
    raw: dict[str, Any]
    artifacts: tuple[Artifact, ...]
    digest: str
    manifest: dict[str, Any] = field(repr=False)

    @property
    def migration_id(self) -> str:
        return self.declaration.migration_id

    @property
    def type(self) -> str:
        return self.declaration.type

    def by_role(self, role: str) -> list[Artifact]:
        return [a for a in self.artifacts if a.role == role]

    def artifact(self, rel: str) -> Artifact | None:
        return next((a for a in self.artifacts if a.rel == rel), None)


def display(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(Path(path).absolute()) if rel.startswith("..") else rel


def read_text_capped(path: Path, cap: int, *, file_label: str | None = None) -> str:
    """Read a regular file as strict UTF-8, refusing symlinks, specials and oversize files."""
    label = file_label or display(path)
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise InputError(label, "-", "file not found") from None
    except OSError as exc:
        raise InputError(label, "-", f"cannot read: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise InputError(label, "-", "is a symlink; artifacts must be regular files inside the bundle")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(label, "-", "not a regular file")
    if st.st_size > cap:
        raise InputError(label, "-", f"file is {st.st_size} bytes, over the {cap}-byte cap")
    with path.open("rb") as fh:
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise InputError(label, "-", f"file is over the {cap}-byte cap")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(label, "-", f"not valid UTF-8 (byte {exc.start})") from None
    if "\x00" in text:
        raise InputError(label, "-", "contains NUL bytes")
    return text


def pydantic_problems(exc: ValidationError, file: str, *, tagged: bool) -> list[InputError]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = list(err.get("loc", ()))
        if tagged and loc and isinstance(loc[0], str) and loc[0] in ALL_TYPES:
            loc = loc[1:]
        path = ".".join(str(p) for p in loc) or "-"
        kind = err.get("type", "")
        if kind == "extra_forbidden":
            reason = "unknown field"
        elif kind == "missing":
            reason = "required field is missing"
        elif kind == "union_tag_invalid":
            path, reason = (
                "type",
                f"must be one of postgis, search, graph, other (got {err.get('input', {}).get('type')!r})",
            )
        elif kind == "union_tag_not_found":
            path, reason = "type", "required field is missing (postgis, search, graph or other)"
        elif kind == "string_pattern_mismatch" and (path.startswith("artifacts.") or path.endswith("ontology_file")):
            reason = (
                f"artifact path {err.get('input')!r} must be relative and stay inside the bundle "
                "(no '..', no absolute path, no hidden names)"
            )
        elif kind == "string_pattern_mismatch" and path.startswith("runner.environment"):
            reason = "environment entries are secret reference NAMES (e.g. KFM_DB_DSN_REF), never values"
        elif kind == "string_pattern_mismatch" and path == "migration_id":
            reason = (
                "must match <PG|SEARCH|GRAPH|OTHER>-MIG-YYYY-MM-DD-NN with the prefix of its type "
                f"(got {err.get('input')!r})"
            )
        else:
            reason = str(err.get("msg", "invalid"))
            if reason.startswith("Value error, "):
                reason = reason[len("Value error, ") :]
        problems.append(InputError(file, path, reason))
    return problems


def parse_declaration(text: str, file: str) -> tuple[AnyDeclaration, dict[str, Any]]:
    data = load_yaml_text(text, file)
    if not isinstance(data, dict):
        raise InvalidInput([InputError(file, "-", "the declaration must be a YAML mapping")])
    try:
        decl = adapter("migration_declaration.v1").validate_python(data)
    except ValidationError as exc:
        raise InvalidInput(pydantic_problems(exc, file, tagged=True)) from None
    return decl, data


def _inside(root_real: Path, candidate: Path) -> bool:
    try:
        candidate.relative_to(root_real)
        return True
    except ValueError:
        return False


def _check_symlinks(root: Path, root_real: Path) -> list[InputError]:
    problems = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                target = Path(os.path.realpath(p))
                if not _inside(root_real, target):
                    problems.append(
                        InputError(display(p), "-", "symlink leaves the bundle (points outside its folder)")
                    )
    return problems


def resolve_artifact(root: Path, rel: str, field_name: str, decl_file: str) -> Path:
    if os.path.isabs(rel) or rel.startswith("/") or any(part == ".." for part in Path(rel).parts):
        raise InputError(decl_file, field_name, f"artifact path {rel!r} must be relative and stay inside the bundle")
    root_real = Path(os.path.realpath(root))
    candidate = root / rel
    real = Path(os.path.realpath(candidate))
    if not _inside(root_real, real):
        raise InputError(decl_file, field_name, f"artifact path {rel!r} resolves outside the bundle")
    return candidate


def declared_inputs(decl: AnyDeclaration) -> list[tuple[str, str, str]]:
    """(role, field, relpath) of every input artifact the declaration names."""
    out: list[tuple[str, str, str]] = []
    for i, rel in enumerate(decl.artifacts.forward):
        out.append(("forward", f"artifacts.forward.{i}", rel))
    for i, rel in enumerate(decl.artifacts.rollback):
        out.append(("rollback", f"artifacts.rollback.{i}", rel))
    if decl.artifacts.notes:
        out.append(("notes", "artifacts.notes", decl.artifacts.notes))
    ontology = getattr(getattr(decl, "invariants", None), "ontology_file", None)
    if ontology:
        out.append(("ontology", "invariants.ontology_file", ontology))
    return out


def load_declaration(path: Path | str, limits: Limits | None = None) -> AnyDeclaration:
    """Only the declaration of a bundle folder: for parse time (DAG files), where artifact
    digests and containment checks would be wasted work. Runs always use ``load_bundle``."""
    limits = limits or Limits()
    decl_path = Path(path) / DECLARATION_FILE
    try:
        text = read_text_capped(decl_path, limits.max_declaration_bytes)
    except InputError as exc:
        raise InvalidInput([exc]) from None
    return parse_declaration(text, display(decl_path))[0]


def load_bundle(path: Path | str, limits: Limits | None = None) -> Bundle:
    """Load and check one bundle folder; raise :class:`InvalidInput` listing every problem."""
    limits = limits or Limits()
    root = Path(path)
    label = display(root)
    if root.is_symlink():
        raise InvalidInput([InputError(label, "-", "the bundle folder must not be a symlink")])
    if not root.is_dir():
        raise InvalidInput([InputError(label, "-", "not a migration folder (no such directory)")])
    decl_path = root / DECLARATION_FILE
    decl_label = display(decl_path)
    try:
        text = read_text_capped(decl_path, limits.max_declaration_bytes)
        decl, raw = parse_declaration(text, decl_label)
    except InputError as exc:
        raise InvalidInput([exc]) from None

    problems: list[InputError] = []
    if root.resolve().name != decl.migration_id:
        problems.append(
            InputError(decl_label, "migration_id", f"{decl.migration_id!r} must equal the folder name {root.name!r}")
        )
    root_real = Path(os.path.realpath(root))
    escaping = _check_symlinks(root, root_real)
    problems.extend(escaping)
    reported = {p.file for p in escaping}

    artifacts = [Artifact("declaration", DECLARATION_FILE, decl_path, sha256_bytes(text.encode()), text)]
    seen: set[str] = set()
    for role, field_name, rel in declared_inputs(decl):
        if rel in seen:
            continue
        seen.add(rel)
        if display(root / rel) in reported:
            continue
        try:
            p = resolve_artifact(root, rel, field_name, decl_label)
            body = read_text_capped(p, limits.max_script_bytes)
        except InputError as exc:
            if exc.reason == "file not found":
                exc = InputError(decl_label, field_name, f"artifact {rel!r} does not exist in the bundle")
            problems.append(exc)
            continue
        artifacts.append(Artifact(role, rel, p, sha256_bytes(body.encode()), body))
    notes = root / "notes.md"
    if "notes.md" not in seen and notes.exists() and not notes.is_symlink():
        try:
            body = read_text_capped(notes, limits.max_script_bytes)
            artifacts.append(Artifact("notes", "notes.md", notes, sha256_bytes(body.encode()), body))
        except InputError as exc:
            problems.append(exc)
    if problems:
        raise InvalidInput(problems)

    manifest = {
        "migration_id": decl.migration_id,
        "type": decl.type,
        "artifacts": {a.rel: {"role": a.role, "sha256": a.sha256} for a in artifacts},
    }
    return Bundle(root, decl, raw, tuple(artifacts), digest_json(manifest), manifest)
