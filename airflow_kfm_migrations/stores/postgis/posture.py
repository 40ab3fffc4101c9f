"""What a run did to policy enforcement, read from the catalog in its own transaction.

``snapshot`` reads, right before the script, what the baselines keep as digests only:
owners and SECURITY DEFINER, whether each trigger and rule fires, the row-level security
policies, and the privileges the baseline's ``acls`` leave out (functions, types, columns,
default privileges). ``collect`` reads them again after the script and compares, and
analyses the code of the objects the run created or changed (from the diff, never the
whole database): functions and procedures (PL/pgSQL and SQL bodies, with pglast), trigger
functions, views and rules (what the catalog records they reference, ``pg_depend``), policy
expressions, column defaults and check constraints, following the user-defined functions
they call. The result is the ``posture`` fact the gate judges (``posture_findings``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from airflow_kfm_migrations.contracts.models import Baseline, DiffEntry
from airflow_kfm_migrations.evidence.diff import diff_objects
from airflow_kfm_migrations.stores.postgis import posture_sql as q
from airflow_kfm_migrations.stores.postgis.bodies import Refs, plpgsql_refs, search_path, sql_refs

# Kinds (as the capture names them) whose definition holds code or expressions.
BODY_KINDS = frozenset(
    {
        "function",
        "procedure",
        "aggregate",
        "window",
        "trigger",
        "view",
        "matview",
        "rule",
        "policy",
        "column",
        "constraint",
    }
)
# At most this many functions are followed from the changed objects; beyond, the rest is unread.
MAX_FUNCTIONS = 500


@dataclass
class Snapshot:
    """The enforcement facts at one moment of the run's transaction. Triggers, rules and
    policies are keyed by their table's oid and their name, privileges by the object's oid
    (or a column's table oid and number): a rename is not a drop and a new object."""

    owners: dict[tuple[str, int], tuple[int, bool]] = field(default_factory=dict)  # (catalog, oid) -> owner, secdef
    switches: dict[tuple[int, str, str], tuple[str, str]] = field(default_factory=dict)  # -> (id, enabled)
    policies: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)
    acls: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (name, acl)


def snapshot(cur: Any, column_tables: list[str] | None = None) -> Snapshot:
    """The enforcement facts now: catalog reads only, no user table is scanned. Column
    privileges of every table, or of the tables named in ``column_tables`` only."""
    cur.execute(q.OWNERS_QUERY)
    owners = {(cls, int(oid)): (int(owner), bool(sec)) for cls, oid, owner, sec in cur.fetchall()}
    cur.execute(q.TRIGGERS_QUERY)
    switches = {(int(rel), kind, name): (i, str(enabled)) for rel, kind, name, i, enabled in cur.fetchall()}
    cur.execute(q.POLICIES_QUERY)
    policies = {
        (int(rel), name): {
            "id": i,
            "table": t,
            "permissive": bool(p),
            "cmd": c,
            "roles": list(r),
            "using": u,
            "check": w,
        }
        for rel, name, i, t, p, c, r, u, w in cur.fetchall()
    }
    cur.execute(q.ACLS_QUERY)
    acls = {k: (name, acl) for k, name, acl in cur.fetchall()}
    if column_tables is None:
        cur.execute(q.COLUMN_ACLS_QUERY)
        acls.update((k, (name, acl)) for k, name, acl in cur.fetchall())
    elif column_tables:
        cur.execute(q.COLUMN_ACLS_OF_QUERY, (column_tables,))
        acls.update((k, (name, acl)) for k, name, acl in cur.fetchall())
    return Snapshot(owners, switches, policies, acls)


def collect(
    cur: Any, before: Snapshot, pre: Baseline, post: Baseline, scanned: dict[str, int] | None
) -> dict[str, Any]:
    """The ``posture`` fact: what changed between ``before`` and now, and what the code of
    the created or changed objects refers to. ``scanned``: the script's scans per table."""
    changes = diff_objects(pre, post)
    # A column whose privileges changed is in the diff (its digest holds them): only the
    # tables of changed columns need their column privileges read again.
    after = snapshot(cur, sorted({c.table for c in changes if c.kind == "column" and c.table}))
    policies = {}
    for k in sorted(before.policies.keys() | after.policies.keys()):
        was, now = before.policies.get(k), after.policies.get(k)
        if was is not None and now is not None:
            was = {**was, "id": now["id"], "table": now["table"]}  # renamed with its table: the same policy
        if was != now:
            policies[(now or was or {})["id"]] = {"pre": was, "post": now}
    return {
        "owners": _owners(cur, before, after),
        "switches": _switches(before, after),
        "policies": policies,
        "acls": _acls(before, after),
        "bodies": bodies(cur, changes),
        "scans": scanned,
    }


def _owners(cur: Any, before: Snapshot, after: Snapshot) -> dict[str, list[list[Any]]]:
    """Objects whose owner changed, or that the run created for another role; and functions
    that became SECURITY DEFINER (created so, or altered)."""
    cur.execute(q.CURRENT_USER_QUERY)
    row = cur.fetchone()
    me = int(row[0]) if row else -1
    moved: list[tuple[str, int, int, int | None]] = []
    definer: list[tuple[str, int, int, int | None]] = []
    for key, (owner, sec) in after.owners.items():
        was = before.owners.get(key)
        if (was is not None and was[0] != owner) or (was is None and owner != me):
            moved.append((key[0], key[1], owner, was[0] if was else None))
        if sec and (was is None or not was[1]):
            definer.append((key[0], key[1], owner, None if was is None else was[0]))
    out: dict[str, list[list[Any]]] = {"owners": [], "security_definer": []}
    for name, rows in (("owners", moved), ("security_definer", definer)):
        if not rows:
            continue
        cur.execute(
            q.DESCRIBE_QUERY,
            ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows]),
        )
        for _cls, _oid, oid_id, owner, was_owner, ext in cur.fetchall():
            if ext or oid_id is None:
                continue
            if name == "owners":
                out[name].append([oid_id, was_owner, owner])
            else:
                out[name].append([oid_id, "made" if was_owner is not None else "added"])
    for v in out.values():
        v.sort(key=lambda r: str(r[0]))
    return out


# In which sessions a trigger or rule fires, by its enabled flag: origin and local sessions,
# and sessions with session_replication_role = replica.
_FIRES = {"O": {"origin", "local"}, "A": {"origin", "local", "replica"}, "R": {"replica"}, "D": set()}


def _switches(before: Snapshot, after: Snapshot) -> dict[str, list[list[str]]]:
    """Triggers and rules dropped from a table that is still there, and those that now fire
    in fewer sessions than before (DISABLE, ENABLE REPLICA, ENABLE ALWAYS undone)."""
    tables = {oid for cls, oid in after.owners if cls == "pg_class"}
    dropped, disabled = [], []
    for key, (oid_id, was) in sorted(before.switches.items()):
        now = after.switches.get(key)
        if now is None:
            if key[0] in tables:
                dropped.append([oid_id, was])
        elif not _FIRES.get(now[1], set()) >= _FIRES.get(was, set()):
            disabled.append([now[0], was, now[1]])
    return {"dropped": dropped, "disabled": disabled}


def _acls(before: Snapshot, after: Snapshot) -> dict[str, list[str | None]]:
    """Privileges that differ (functions, types, columns, default privileges): name ->
    [before, after], None for the built-in defaults (a new object, or a default-privileges
    entry that is gone: the defaults again). A privilege gone with its object is left out."""
    out: dict[str, list[str | None]] = {}
    for k, (name, acl) in sorted(after.acls.items()):
        was = before.acls.get(k)  # (a column's privileges only for the tables read again)
        if was is None or was[1] != acl:
            out[name] = [was[1] if was else None, acl]
    for k, (name, acl) in sorted(before.acls.items()):
        if k not in after.acls and k.startswith("pg_default_acl:"):
            out[name] = [acl, None]
    return out


# ----------------------------------------------------------------------- bodies


@dataclass
class _Function:
    """What one function's code refers to, its names resolved where the catalog can."""

    id: str
    relations: set[tuple[str, str]] = field(default_factory=set)
    functions: set[tuple[str, str]] = field(default_factory=set)
    schemas: set[str] = field(default_factory=set)
    calls: set[int] = field(default_factory=set)
    dynamic: list[str] = field(default_factory=list)
    unparsed: str | None = None


def bodies(cur: Any, changes: Iterable[DiffEntry]) -> list[dict[str, Any]]:
    """For each object the run created or changed that holds code or expressions: the
    relations, schemas and user-defined functions it refers to, directly or through the
    functions it calls (each with the function it was reached through), and what could not
    be read (dynamic SQL, other languages, code that does not parse)."""
    targets = [c for c in changes if c.change != "removed" and c.kind in BODY_KINDS]
    if not targets:
        return []
    cur.execute(
        q.LOCATE_QUERY,
        {
            "ids": [c.id for c in targets],
            "prefixes": sorted({c.id.split("(", 1)[0] + "(" for c in targets if c.id.startswith("function:")}),
            "tables": sorted({c.table for c in targets if c.table}),
        },
    )
    located = sorted({(i, cls, int(oid)) for i, cls, oid in cur.fetchall()})
    funcs: dict[int, _Function] = {}
    origins: dict[str, _Function] = {}  # what each non-function object refers to directly
    roots: dict[str, set[int]] = {}
    others = [(i, cls, oid) for i, cls, oid in located if cls != "pg_proc"]
    for (i, _cls, _oid), direct in zip(others, _depends(cur, [(cls, oid) for _i, cls, oid in others]), strict=True):
        node = origins.setdefault(i, _Function(i))
        _add_depends(node, direct)
        roots.setdefault(i, set()).update(node.calls)
    for i, _cls, oid in located:
        if _cls == "pg_proc":
            roots.setdefault(i, set()).add(oid)
    _follow(cur, {oid for calls in roots.values() for oid in calls}, funcs)
    out = []
    for i in sorted(roots):
        refs: dict[str, list[list[Any]]] = {"relations": [], "functions": [], "schemas": [], "dynamic": []}
        unread: list[list[Any]] = []
        nodes: list[tuple[_Function, str | None]] = [(origins[i], None)] if i in origins else []
        seen: set[int] = set()
        todo = sorted(roots[i])
        while todo:
            oid = todo.pop()
            if oid in seen or oid not in funcs:
                continue
            seen.add(oid)
            f = funcs[oid]
            nodes.append((f, None if f.id == i else f.id))
            todo.extend(sorted(f.calls - seen))
        for f, via in nodes:
            refs["relations"] += [[s, n, via] for s, n in sorted(f.relations)]
            refs["functions"] += [[s, n, via] for s, n in sorted(f.functions)]
            refs["schemas"] += [[s, via] for s in sorted(f.schemas)]
            refs["dynamic"] += [[d, via] for d in f.dynamic]
            if f.unparsed:
                unread.append([f.unparsed, via])
        out.append({"object": i, **refs, "unread": unread})
    return out


def _depends(cur: Any, objs: list[tuple[str, int]]) -> list[list[tuple[Any, ...]]]:
    """What each (catalog, oid) depends on: (schema, relation, function oid, schema, function)."""
    out: list[list[tuple[Any, ...]]] = [[] for _ in objs]
    if objs:
        cur.execute(q.DEPENDS_QUERY, ([c for c, _ in objs], [o for _, o in objs]))
        for i, rs, rn, fo, fs, fn in cur.fetchall():
            out[int(i) - 1].append((rs, rn, fo, fs, fn))
    return out


def _add_depends(node: _Function, deps: list[tuple[Any, ...]]) -> None:
    for rs, rn, fo, fs, fn in deps:
        if rn is not None:
            node.relations.add((rs, rn))
        if fo is not None:
            node.functions.add((fs, fn))
            node.calls.add(int(fo))


def _follow(cur: Any, start: set[int], funcs: dict[int, _Function]) -> None:
    """Read the functions ``start`` and every user-defined function they call, into ``funcs``."""
    todo = set(start) - set(funcs)
    while todo:
        batch = sorted(todo)
        todo = set()
        if len(funcs) + len(batch) > MAX_FUNCTIONS:
            for oid in batch:
                funcs[oid] = _Function(f"function oid {oid}", unparsed=f"more than {MAX_FUNCTIONS} functions reached")
            return
        cur.execute(q.FUNCTIONS_QUERY, (batch,))
        rows = cur.fetchall()
        atomic: list[tuple[int, _Function]] = []
        wanted: dict[int, tuple[Refs, list[str] | None]] = {}
        for oid, fid, _schema, lang, kind, parsed_body, config, owner, definition, src, ext in rows:
            f = funcs[int(oid)] = _Function(fid)
            if ext:
                continue  # an extension's function: the extension's object covers it
            if kind == "a" or (lang == "sql" and parsed_body):
                atomic.append((int(oid), f))  # the catalog records what it refers to
            elif lang == "plpgsql" and definition:
                wanted[int(oid)] = (plpgsql_refs(definition), search_path(config, owner))
            elif lang == "sql":
                wanted[int(oid)] = (sql_refs(src or ""), search_path(config, owner))
            else:
                f.unparsed = f"written in {lang}, which cannot be read"
        for (_oid, f), deps in zip(atomic, _depends(cur, [("pg_proc", o) for o, _ in atomic]), strict=True):
            _add_depends(f, deps)
            todo |= f.calls - set(funcs)
        if wanted:
            _resolve(cur, wanted, funcs)
            for oid in wanted:
                todo |= funcs[oid].calls - set(funcs)


def _resolve(cur: Any, wanted: dict[int, tuple[Refs, list[str] | None]], funcs: dict[int, _Function]) -> None:
    """Names as the code writes them -> schemas, relations and function oids. An unqualified
    name is looked up in the function's pinned search_path, or, without one, in every schema
    (it could resolve to any of them when the function runs)."""
    rel_names = sorted({n for refs, _ in wanted.values() for s, n in refs.relations if s is None})
    fn_names = sorted({n for refs, _ in wanted.values() for _s, n in refs.functions})
    rel_schemas: dict[str, set[str]] = {}
    if rel_names:
        cur.execute(q.RELATIONS_BY_NAME_QUERY, (rel_names,))
        for s, n in cur.fetchall():
            rel_schemas.setdefault(n, set()).add(s)
    fn_oids: dict[str, list[tuple[int, str]]] = {}
    if fn_names:
        cur.execute(q.FUNCTIONS_BY_NAME_QUERY, (fn_names,))
        for oid, s, n in cur.fetchall():
            fn_oids.setdefault(n, []).append((int(oid), s))
    for oid, (refs, path) in wanted.items():
        f = funcs[oid]
        f.dynamic = list(refs.dynamic)
        f.unparsed = refs.unparsed
        f.schemas = set(refs.schemas)
        for s, n in refs.relations:
            if s is not None:
                f.relations.add((s, n))
            else:
                f.relations |= {(x, n) for x in (path if path is not None else rel_schemas.get(n, ()))}
        for s, n in refs.functions:
            for foid, fs in fn_oids.get(n, ()):
                if (s is not None and fs == s) or (s is None and (path is None or fs in path)):
                    f.functions.add((fs, n))
                    f.calls.add(foid)
            if s is not None:
                f.functions.add((s, n))
