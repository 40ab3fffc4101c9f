"""The migration registry (``migrations/registry/migrations.v1.json``).

Status changes are append-only events; the current ``status`` must equal the last
event. Ids are never reused or deleted: a replaced migration is ``superseded`` with a
``superseded_by`` pointer.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from airflow_kfm_migrations.config import REGISTRY_REL as CONFIG_REGISTRY_REL
from airflow_kfm_migrations.contracts import adapter
from airflow_kfm_migrations.contracts.models import Registry, RegistryEntry, StatusEvent
from airflow_kfm_migrations.declaration.bundle import (
    OUTPUT_DIRS,
    InvalidInput,
    display,
    pydantic_problems,
    read_text_capped,
)
from airflow_kfm_migrations.errors import InputError, PolicyError, RefusedError
from airflow_kfm_migrations.kinds import ALL_TYPES, KINDS, TYPE_PREFIX, kinds_with
from airflow_kfm_migrations.util.digest import sha256_bytes, write_bytes_atomic

REGISTRY_REL = CONFIG_REGISTRY_REL  # where a migrations root keeps its registry
MAX_REGISTRY_BYTES = 16 * 1024 * 1024

TRANSITIONS: dict[str, set[str]] = {
    "draft": {"approved", "superseded"},
    "approved": {"merged", "executed_dev", "draft", "superseded"},
    "merged": {"executed_dev", "superseded"},
    # executed_dev -> executed_prod only with an approval covering SKIP_STAGE (transition_problem).
    "executed_dev": {"executed_dev", "executed_stage", "executed_prod", "rolled_back", "superseded"},
    "executed_stage": {"executed_stage", "executed_prod", "rolled_back", "superseded"},
    "executed_prod": {"executed_prod", "rolled_back", "superseded"},
    "rolled_back": {"executed_dev", "superseded"},
    "superseded": set(),
}
# Statuses from which the bundle's inputs are frozen ("merged migrations are never rewritten").
FROZEN = {"merged", "executed_dev", "executed_stage", "executed_prod", "rolled_back", "superseded"}
# What a run in each environment needs the registry status to be.
RUNNABLE_IN: dict[str, set[str]] = {
    "dev": {"approved", "merged", "executed_dev", "executed_stage", "executed_prod", "rolled_back"},
    "stage": {"merged", "executed_dev", "executed_stage", "executed_prod", "rolled_back"},
    "prod": {"executed_stage", "executed_prod"},
}
EXECUTED_STATUS = {"dev": "executed_dev", "stage": "executed_stage", "prod": "executed_prod"}
# The approval token (in the declaration's approvals.recorded[].covers) that lets a migration
# go to prod without an executed_stage event since its last rollback.
SKIP_STAGE = "skip:executed_stage"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def load_json_strict(path: Path, cap: int = MAX_REGISTRY_BYTES) -> Any:
    text = read_text_capped(path, cap)
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise InputError(display(path), f"line {exc.lineno}", f"invalid JSON: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:
        raise InputError(display(path), "-", f"invalid JSON: {exc}") from None


def parse_registry(data: Any, label: str) -> Registry:
    if not isinstance(data, dict):
        raise InvalidInput([InputError(label, "-", "the registry must be a JSON object")])
    try:
        return adapter("migrations.v1").validate_python(data)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise InvalidInput(pydantic_problems(exc, label, tagged=False)) from None


# Registries this process parsed, by path and the sha256 of their bytes: a series of runs
# (``migrate``) reads the registry once per run, and only a changed file is parsed again.
_PARSED: dict[tuple[str, str], Registry] = {}


def load_registry(path: Path) -> Registry:
    try:
        key = (str(path.resolve()), sha256_bytes(read_text_capped(path, MAX_REGISTRY_BYTES).encode()))
        if key in _PARSED:
            return _PARSED[key]
        data = load_json_strict(path)
    except InputError as exc:
        raise InvalidInput([exc]) from None
    reg = parse_registry(data, display(path))
    if len(_PARSED) >= 64:
        _PARSED.clear()
    _PARSED[key] = reg
    return reg


def check_entries(reg: Registry, label: str) -> list[InputError]:
    """Internal consistency: unique ids, legal transitions, status = last event, supersession."""
    problems: list[InputError] = []
    ids = [e.migration_id for e in reg.migrations]
    seen: set[str] = set()
    for i, entry in enumerate(reg.migrations):
        where = f"migrations.{i}"
        mid = entry.migration_id
        if mid in seen:
            problems.append(PolicyError(label, f"{where}.migration_id", f"duplicate id {mid!r}; ids are never reused"))
        seen.add(mid)
        if not mid.startswith(TYPE_PREFIX[entry.type] + "-MIG-"):
            problems.append(
                PolicyError(label, f"{where}.type", f"{entry.type!r} does not match the id prefix of {mid!r}")
            )
        if entry.events[-1].status != entry.status:
            problems.append(
                PolicyError(
                    label,
                    f"{where}.status",
                    f"{entry.status!r} differs from the last event "
                    f"({entry.events[-1].status!r}); status changes are appended events",
                )
            )
        prev = None
        for j, ev in enumerate(entry.events):
            if prev is not None:
                if ev.status not in TRANSITIONS[prev.status]:
                    problems.append(
                        PolicyError(
                            label, f"{where}.events.{j}.status", f"illegal transition {prev.status} -> {ev.status}"
                        )
                    )
                if ev.at < prev.at:
                    problems.append(PolicyError(label, f"{where}.events.{j}.at", "events must be in time order"))
            prev = ev
        if entry.status == "superseded":
            if not entry.superseded_by:
                problems.append(
                    PolicyError(label, f"{where}.superseded_by", "a superseded entry must name its successor")
                )
            elif entry.superseded_by not in ids:
                problems.append(
                    PolicyError(label, f"{where}.superseded_by", f"{entry.superseded_by!r} is not in the registry")
                )
        elif entry.superseded_by:
            problems.append(
                PolicyError(label, f"{where}.superseded_by", "only a superseded entry may name a successor")
            )
        if entry.schedule and not (entry.type in KINDS and KINDS[entry.type].schedulable):
            which = " and ".join(kinds_with("schedulable"))
            problems.append(PolicyError(label, f"{where}.schedule", f"only {which} migrations may declare a schedule"))
    return problems


def discover_bundles(root: Path) -> list[Path]:
    """Bundle folders under ``root/<type>/`` (the contract's layout)."""
    out = []
    for type_dir in ALL_TYPES:
        d = root / type_dir
        if d.is_dir():
            out.extend(sorted(p for p in d.iterdir() if p.is_dir() and (p / "migration.yml").exists()))
    return out


def check_coverage(reg: Registry, root: Path, label: str) -> list[InputError]:
    """Every bundle has an entry; every entry has its bundle, of the same type."""
    problems: list[InputError] = []
    by_id = {e.migration_id: (i, e) for i, e in enumerate(reg.migrations)}
    bundles = {p.name: p for p in discover_bundles(root)}
    for name, path in bundles.items():
        if name not in by_id:
            problems.append(PolicyError(display(path), "-", "bundle has no registry entry"))
    for mid, (i, entry) in by_id.items():
        folder = root / entry.path
        if not (folder / "migration.yml").exists():
            problems.append(PolicyError(label, f"migrations.{i}.path", f"no bundle at {entry.path!r}"))
        elif folder.name != mid:
            problems.append(PolicyError(label, f"migrations.{i}.path", f"folder {folder.name!r} differs from {mid!r}"))
        elif not str(Path(entry.path)).startswith(entry.type + "/"):
            problems.append(
                PolicyError(label, f"migrations.{i}.path", f"a {entry.type} migration lives under {entry.type}/")
            )
    return problems


def staged(entry: RegistryEntry) -> bool:
    """An ``executed_stage`` event since the entry's last ``rolled_back`` one."""
    for ev in reversed(entry.events):
        if ev.status == "executed_stage":
            return True
        if ev.status == "rolled_back":
            return False
    return False


def transition_problem(entry: RegistryEntry, status: str, *, skip_stage: bool = False) -> str | None:
    """Why ``entry`` may not move to ``status``, or None. ``executed_prod`` needs an
    ``executed_stage`` event since the last rollback, unless ``skip_stage`` (an approval
    covering :data:`SKIP_STAGE` was found in the declaration)."""
    if status not in TRANSITIONS[entry.status]:
        return f"illegal registry transition {entry.status} -> {status} for {entry.migration_id}"
    if status == "executed_prod" and not skip_stage and not staged(entry):
        return (
            f"{entry.migration_id} has no executed_stage event since its last rollback: record executed_stage "
            f"first, or record an approval covering '{SKIP_STAGE}' in the declaration"
        )
    return None


def find_entry(reg: Registry, migration_id: str) -> RegistryEntry | None:
    return next((e for e in reg.migrations if e.migration_id == migration_id), None)


def find_registry_for(bundle_root: Path) -> Path | None:
    """The registry of the migrations root that holds this bundle (``<root>/<type>/<id>``)."""
    candidate = bundle_root.resolve().parent.parent / REGISTRY_REL
    return candidate if candidate.exists() else None


# ------------------------------------------------------------------ transitions


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = path.with_name(f".{path.name}.lock")
    with lock.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def record_transition(
    path: Path,
    migration_id: str,
    status: str,
    *,
    actor: str,
    ref: str,
    receipt_digest: str | None = None,
    superseded_by: str | None = None,
    at: datetime | None = None,
    skip_stage: bool = False,
) -> RegistryEntry:
    """Append a status event, refusing illegal transitions (:func:`transition_problem`).
    Atomic and serialised."""
    with _locked(path):
        data = load_json_strict(path)
        reg = parse_registry(data, display(path))
        for i, entry in enumerate(reg.migrations):
            if entry.migration_id != migration_id:
                continue
            problem = transition_problem(entry, status, skip_stage=skip_stage)
            if problem:
                raise RefusedError(problem, file=display(path))
            event = StatusEvent(
                status=status,  # type: ignore[arg-type]
                at=at or datetime.now(UTC),
                actor=actor,
                ref=ref,
                receipt_digest=receipt_digest,
            )
            raw = data["migrations"][i]
            raw["status"] = status
            raw.setdefault("events", []).append(event.model_dump(mode="json", exclude_none=True))
            if superseded_by:
                raw["superseded_by"] = superseded_by
            new = parse_registry(data, display(path))
            write_bytes_atomic(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode())
            return new.migrations[i]
        raise RefusedError(f"{migration_id} is not in the registry", file=display(path))


def add_entry(path: Path, entry: dict[str, Any]) -> None:
    with _locked(path):
        if path.exists():
            data = load_json_strict(path)
        else:
            data = {"schema_version": "migrations.v1", "migrations": []}
        data["migrations"].append(entry)
        reg = parse_registry(data, display(path))
        problems = check_entries(reg, display(path))
        if problems:
            raise InvalidInput(problems)
        write_bytes_atomic(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode())


# ------------------------------------------------------------ history (--base REF)


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)


def check_against_base(root: Path, base: str) -> list[InputError]:
    """Refuse edits to, or deletion of, bundles that were merged (or later) at ``base``."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise InputError(display(root), "--base", "not inside a git checkout")
    repo = Path(top.stdout.strip())
    if _git(repo, "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}").returncode != 0:
        raise InputError(display(root), "--base", f"unknown git ref {base!r}")
    reg_path = (root / REGISTRY_REL).resolve()
    rel_reg = reg_path.relative_to(repo)
    shown = _git(repo, "show", f"{base}:{rel_reg.as_posix()}")
    if shown.returncode != 0:
        return []  # no registry at base: nothing was merged yet
    label = f"{rel_reg.as_posix()}@{base}"
    try:
        old = parse_registry(json.loads(shown.stdout), label)
    except (ValueError, InvalidInput):
        return [PolicyError(label, "-", "the registry at the base ref is not valid; cannot compare")]
    problems: list[InputError] = []
    try:
        new = load_registry(root / REGISTRY_REL)
    except InvalidInput as exc:
        return list(exc.problems)
    current = {e.migration_id: e for e in new.migrations}
    reg_label = display(root / REGISTRY_REL)
    for entry in old.migrations:
        now = current.get(entry.migration_id)
        if now is None:
            problems.append(
                PolicyError(reg_label, entry.migration_id, "deleted from the registry; ids are never deleted")
            )
            continue
        old_events = [e.model_dump(mode="json") for e in entry.events]
        new_events = [e.model_dump(mode="json") for e in now.events[: len(entry.events)]]
        if old_events != new_events:
            problems.append(
                PolicyError(reg_label, entry.migration_id, "status history rewritten; events are append-only")
            )
        if entry.status not in FROZEN:
            continue
        bundle_rel = (root.resolve() / entry.path).relative_to(repo).as_posix()
        diff = _git(repo, "diff", "--name-status", base, "--", bundle_rel)
        status = _git(repo, "status", "--porcelain", "--", bundle_rel)
        changed = [ln.split("\t")[-1] for ln in diff.stdout.splitlines() if ln.strip()]
        changed += [ln[3:] for ln in status.stdout.splitlines() if ln.strip()]
        for path in sorted(set(changed)):
            inner = Path(path).relative_to(bundle_rel).parts[0] if path.startswith(bundle_rel + "/") else ""
            if inner in OUTPUT_DIRS:
                continue
            problems.append(
                PolicyError(
                    path,
                    "-",
                    f"{entry.migration_id} was {entry.status} at {base}; merged migrations are "
                    "never rewritten (supersede it with a new migration)",
                )
            )
    return problems
