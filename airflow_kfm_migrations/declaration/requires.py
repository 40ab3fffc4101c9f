"""``requires``: the migrations that must be applied in the same store before another.

A requirement is checked in the target store's ledger (``engine.preflight``), so it must
name a migration of the same type: another kind lives in another store, whose ledger a run
cannot read. Across a migrations root the requirements must name known migrations and must
not form a cycle. ``order`` gives the apply order ``migrate`` uses: requirements first,
then by id.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from airflow_kfm_migrations.contracts.models import AnyDeclaration
from airflow_kfm_migrations.declaration.bundle import DECLARATION_FILE, Bundle, display, load_declaration
from airflow_kfm_migrations.declaration.registry import REGISTRY_REL, discover_bundles, load_registry
from airflow_kfm_migrations.errors import InputError, InvalidInput, PolicyError
from airflow_kfm_migrations.kinds import kind_of_prefix


@dataclass(frozen=True)
class Declared:
    """One migration's requirements, and the file they are declared in."""

    type: str
    requires: tuple[str, ...]
    file: str


def type_of_id(migration_id: str) -> str:
    """The type an id's prefix names (``PG`` -> postgis); ``other`` for ``OTHER``."""
    return kind_of_prefix(migration_id.split("-MIG-")[0]) or "other"


def declared(decl: AnyDeclaration, file: str) -> Declared:
    return Declared(decl.type, tuple(decl.requires), file)


def problems(migrations: Mapping[str, Declared], known: set[str], only: set[str] | None = None) -> list[InputError]:
    """One line per unknown id, id of another type and cycle (a cycle is reported on the
    declaration of its smallest id). ``only``: report what concerns these migrations."""
    out: list[InputError] = []
    for mid in sorted(migrations):
        if only is not None and mid not in only:
            continue
        m = migrations[mid]
        for i, rid in enumerate(m.requires):
            field = f"requires.{i}"
            kind = type_of_id(rid)
            if rid == mid:
                out.append(PolicyError(m.file, field, f"{mid} requires itself (a cycle)"))
            elif kind != m.type:
                out.append(
                    PolicyError(
                        m.file,
                        field,
                        f"{rid} is a {kind} migration; a {m.type} run checks its requirements in its own "
                        "store's ledger, which cannot tell whether it is applied",
                    )
                )
            elif rid not in known:
                out.append(PolicyError(m.file, field, f"unknown migration {rid!r} (not in the registry)"))
    for cycle in cycles(migrations):
        if only is not None and not only & set(cycle):
            continue
        first = migrations[cycle[0]]
        out.append(PolicyError(first.file, "requires", f"cycle: {' -> '.join([*cycle, cycle[0]])}"))
    return sorted(out, key=lambda p: p.file)  # by declaration (stable: each one's lines in field order)


def _edges(migrations: Mapping[str, Declared]) -> dict[str, list[str]]:
    return {
        mid: sorted({r for r in m.requires if r != mid and r in migrations and migrations[r].type == m.type})
        for mid, m in migrations.items()
    }


def cycles(migrations: Mapping[str, Declared]) -> list[list[str]]:
    """One cycle (smallest id first) per strongly connected group of two or more migrations."""
    edges = _edges(migrations)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        # Tarjan's algorithm, iteratively (a long chain of requirements must not hit the recursion limit).
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            nexts = edges[node]
            if i < len(nexts):
                work.append((node, i + 1))
                nxt = nexts[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                group = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    group.append(top)
                    if top == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return [_cycle_through(g[0], set(g), edges) for g in sorted(groups)]


def _cycle_through(start: str, group: set[str], edges: dict[str, list[str]]) -> list[str]:
    """The shortest cycle from ``start`` back to it within ``group`` (breadth first)."""
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in edges[node]:
                if nxt not in group:
                    continue
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return list(reversed(path))
                if nxt not in prev:
                    prev[nxt] = node
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    return [start]  # unreachable for a strongly connected group


def order(ids: Iterable[str], migrations: Mapping[str, Declared], satisfied: set[str]) -> list[str]:
    """``ids`` in apply order: each after the ones it requires among ``ids``, then by id.
    Requirements outside ``ids`` are not ordered here (applied already, or refused at their
    turn by the preflight). Members of a cycle come last, by id (validate refuses cycles)."""
    todo = set(ids)
    deps = {mid: {r for r in migrations[mid].requires if r in todo and r != mid and r not in satisfied} for mid in todo}
    users: dict[str, list[str]] = {mid: [] for mid in todo}
    for mid, rs in deps.items():
        for r in rs:
            users[r].append(mid)
    ready = [mid for mid, rs in deps.items() if not rs]
    heapq.heapify(ready)
    out: list[str] = []
    while ready:
        mid = heapq.heappop(ready)
        out.append(mid)
        for user in users[mid]:
            deps[user].discard(mid)
            if not deps[user]:
                heapq.heappush(ready, user)
    return out + sorted(todo - set(out))


# ------------------------------------------------------------ reading a root


def root_of(bundle_root: Path) -> Path:
    """The migrations root of a bundle folder (``<root>/<type>/<id>``)."""
    return bundle_root.resolve().parent.parent


def known_ids(root: Path) -> set[str]:
    """The ids a requirement may name: the registry's entries and the root's bundle folders."""
    ids = {p.name for p in discover_bundles(root)}
    reg = root / REGISTRY_REL
    if reg.is_file():
        try:
            ids |= {e.migration_id for e in load_registry(reg).migrations}
        except InvalidInput:
            pass  # the registry's own validation reports it
    return ids


def read_root(root: Path) -> dict[str, Declared]:
    """The requirements of every bundle under ``root`` whose declaration loads (the others
    are reported by their own validation)."""
    out: dict[str, Declared] = {}
    for folder in discover_bundles(root):
        try:
            decl = load_declaration(folder)
        except InvalidInput:
            continue
        out[decl.migration_id] = declared(decl, display(folder / DECLARATION_FILE))
    return out


def bundle_problems(bundle: Bundle) -> list[InputError]:
    """The requirement problems of one bundle, judged within its migrations root: the
    bundles it reaches through ``requires`` are read to find a cycle through it."""
    if not bundle.declaration.requires:
        return []
    root = root_of(bundle.root)
    known = known_ids(root) | {bundle.migration_id}
    migrations = {bundle.migration_id: declared(bundle.declaration, display(bundle.root / DECLARATION_FILE))}
    todo = list(bundle.declaration.requires)
    while todo:
        mid = todo.pop()
        if mid in migrations:
            continue
        folder = root / type_of_id(mid) / mid
        if not (folder / DECLARATION_FILE).is_file():
            continue
        try:
            decl = load_declaration(folder)
        except InvalidInput:
            continue
        if decl.migration_id != mid:
            continue
        migrations[mid] = declared(decl, display(folder / DECLARATION_FILE))
        todo.extend(decl.requires)
    return problems(migrations, known, only={bundle.migration_id})
