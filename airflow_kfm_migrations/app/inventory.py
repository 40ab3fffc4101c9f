"""What ``status``, ``history`` and ``migrate`` start from: the store kind a connection id
reaches, the registry entries of that kind with their bundles, and the ledger's newest
entry of each migration.

A connection id reaches one store, so it has one kind. It is, in this order:

1. ``--type``, when given;
2. for ``history MIGRATION_ID``, the type the id's prefix names;
3. the type of the registry entries whose ``conn_id`` is the connection id, or whose type's
   default connection (``kfm_postgis``, ``kfm_search``, ``kfm_graph``) it is, when they
   agree;
4. the connection's own type: ``postgres`` is PostGIS, ``opensearch`` and
   ``elasticsearch`` are search, ``neo4j`` (and ``bolt``) is graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from airflow_kfm_migrations.contracts.models import Registry, RegistryEntry
from airflow_kfm_migrations.declaration.bundle import Bundle, display, load_bundle
from airflow_kfm_migrations.declaration.registry import REGISTRY_REL, load_registry
from airflow_kfm_migrations.declaration.requires import Declared, declared, type_of_id
from airflow_kfm_migrations.errors import InputError, InvalidInput, KfmError
from airflow_kfm_migrations.kinds import KINDS, kind_of_conn_type
from airflow_kfm_migrations.stores.base import LedgerRecord


def store_kind(
    conn_id: str, explicit: str | None = None, *, registry: Registry | None = None, migration_id: str | None = None
) -> str:
    """The kind of store ``conn_id`` reaches (see the module's docstring); InputError when
    nothing tells."""
    if explicit:
        return explicit
    if migration_id and type_of_id(migration_id) in KINDS:
        return type_of_id(migration_id)
    if registry is not None:
        kinds = {e.type for e in registry.migrations if e.type in KINDS and e.conn_id == conn_id}
        kinds |= {e.type for e in registry.migrations if e.type in KINDS and KINDS[e.type].default_conn_id == conn_id}
        if len(kinds) == 1:
            return kinds.pop()
    defaults = [k.name for k in KINDS.values() if k.default_conn_id == conn_id]
    if defaults:
        return defaults[0]
    from airflow_kfm_migrations.util.connections import resolve

    try:
        found = kind_of_conn_type(resolve(conn_id).conn_type)
    except KfmError:
        found = None
    if found:
        return found
    raise InputError(
        "--conn-id",
        "-",
        f"cannot tell which kind of store {conn_id!r} reaches (no registry entry names it and its "
        f"connection type is not one of {', '.join(sorted({t for k in KINDS.values() for t in k.conn_types}))}); "
        f"pass --type {'|'.join(KINDS)}",
    )


@dataclass(frozen=True)
class Inventory:
    """The registry entries of one kind under a migrations root, each with its bundle."""

    root: Path
    registry_path: Path
    kind: str
    entries: list[RegistryEntry]
    bundles: dict[str, Bundle]

    def declared(self) -> dict[str, Declared]:
        return {mid: declared(b.declaration, display(b.root / "migration.yml")) for mid, b in self.bundles.items()}


def registry_of(root: Path) -> tuple[Path, Registry]:
    """The registry of a migrations root (InvalidInput when missing or invalid)."""
    path = root / REGISTRY_REL
    if not path.is_file():
        raise InputError(display(root), "-", f"not a migrations root (no {REGISTRY_REL.as_posix()})")
    return path, load_registry(path)


def inventory(root: Path, registry_path: Path, registry: Registry, kind: str) -> Inventory:
    """Load the bundle of every registry entry of ``kind``; every problem of every bundle is
    reported at once (InvalidInput), before anything connects."""
    entries = [e for e in registry.migrations if e.type == kind]
    bundles: dict[str, Bundle] = {}
    problems: list[InputError] = []
    for e in entries:
        try:
            bundles[e.migration_id] = load_bundle(root / e.path)
        except InvalidInput as exc:
            problems.extend(exc.problems)
    if problems:
        raise InvalidInput(problems)
    return Inventory(root, registry_path, kind, entries, bundles)


def newest_by_migration(entries: list[LedgerRecord]) -> dict[str, LedgerRecord]:
    """The newest ledger entry of each migration (``entries`` newest first)."""
    out: dict[str, LedgerRecord] = {}
    for e in entries:
        out.setdefault(e.migration_id, e)
    return out


def last_apply_by_migration(entries: list[LedgerRecord]) -> dict[str, LedgerRecord]:
    out: dict[str, LedgerRecord] = {}
    for e in entries:
        if e.operation == "apply":
            out.setdefault(e.migration_id, e)
    return out


def ledger_state(newest: LedgerRecord | None) -> str:
    """``never``, ``applied``, ``rolled_back``, or the status of an apply whose backfill is
    not complete (``backfill_pending``) or was reversed (``backfill_rolled_back``)."""
    if newest is None:
        return "never"
    if newest.operation == "apply":
        return "applied" if newest.status == "succeeded" else newest.status
    return "rolled_back" if newest.status == "rolled_back" else newest.status
