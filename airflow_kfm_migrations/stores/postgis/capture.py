"""PostGIS baselines: the catalog capture, reusing an earlier capture's objects where the
catalog shows they cannot have changed (see ``state``), and the scope fingerprint.

A capture digests every object in SQL (``catalog``), adds the protected tables' row digests,
the privileges and row-level security kept in clear, and builds the baseline with its Merkle
roots. ``Captures`` is what a store remembers between captures: the newest state known to
describe committed catalog state, the last capture's state and objects.
"""

from __future__ import annotations

import gc
import hashlib
import threading
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from itertools import compress
from operator import attrgetter
from typing import Any

from airflow_kfm_migrations.contracts.models import (
    Baseline,
    BaselineObject,
    PostgisDeclaration,
    trusted_baseline_object,
)
from airflow_kfm_migrations.evidence.diff import remember_leaves
from airflow_kfm_migrations.stores.postgis import shared_state, state
from airflow_kfm_migrations.stores.postgis.attribution import is_global
from airflow_kfm_migrations.stores.postgis.catalog import (
    ACL_QUERY,
    CATALOG_QUERY,
    GLOBAL_QUERY,
    RLS_QUERY,
    TABLES_QUERY,
    family_query,
)
from airflow_kfm_migrations.stores.postgis.catalog_sql import LEDGER_SCHEMA, qident
from airflow_kfm_migrations.stores.postgis.scope import PgScope, by_pair, memo
from airflow_kfm_migrations.util.digest import (
    digest_json,
    leaf,
    leaf_raw,
    merkle_leaf_node,
    merkle_root,
    merkle_root_nodes,
)


def _same_nodes(objects: list[state.FamilyObject], fams: set[int], fresh: list[state.FamilyObject]) -> bool:
    """Whether the families ``fams`` of ``objects`` have exactly the objects ``fresh``."""
    return sorted(o.node for o in objects if o.fam in fams) == sorted(o.node for o in fresh)


# What a capture sets for itself (transaction-local), whatever the session, role or database says.
_CAPTURE_SETTINGS: list[tuple[str, str]] = [
    # Names render unqualified when visible: only pg_catalog is, and pg_temp is searched after
    # it, so that no temporary object of the session can shadow a built-in one.
    ("search_path", "pg_catalog, pg_temp"),
    # How identifiers and constants in stored expressions and defaults are written out.
    ("quote_all_identifiers", "off"),
    ("standard_conforming_strings", "on"),
    ("bytea_output", "hex"),
    ("IntervalStyle", "postgres"),
    ("DateStyle", "ISO, MDY"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "1"),
    ("lc_monetary", "C"),
    # work_mem: the catalog joins of a 10,000-table database spill to disk at the 4 MB default.
    # jit: compiling these wide queries takes longer than running them.
    # enable_nestloop: the planner estimates one row for the user schemas and would scan a whole
    # catalog once per schema; lookups by OID (family_query, dirty_families) turn it back on.
    ("work_mem", "64MB"),
    ("jit", "off"),
    ("enable_nestloop", "off"),
]


def _set_local(cur: Any, settings: list[tuple[str, str]]) -> None:
    cur.execute(
        "SELECT " + ", ".join("set_config(%s, %s, true)" for _ in settings),
        [x for pair in settings for x in pair],
    )


def digest_rows(cur: Any, query: str) -> list[Any]:
    """The rows of a digest query run outside a capture, under the capture's settings (names
    render as a capture renders them), in the transaction ``cur`` is in."""
    conn = getattr(cur, "connection", None)
    with conn.transaction() if conn is not None and conn.autocommit else nullcontext():
        cur.execute("SELECT " + ", ".join(f"current_setting('{name}')" for name, _ in _CAPTURE_SETTINGS))
        old = list(zip((name for name, _ in _CAPTURE_SETTINGS), cur.fetchone(), strict=True))
        _set_local(cur, _CAPTURE_SETTINGS)
        try:
            cur.execute(query)
            return list(cur.fetchall())
        finally:
            _set_local(cur, old)


class _Objects:
    """A capture's computed objects, in parallel lists, and their merge into the reused ones."""

    __slots__ = ("ids", "nodes", "objs")

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.objs: list[BaselineObject] = []
        self.nodes: list[bytes] = []

    def add(self, oid: str, obj: BaselineObject, node: bytes) -> None:
        self.ids.append(oid)
        self.objs.append(obj)
        self.nodes.append(node)

    def merged_into(
        self, reused: list[state.FamilyObject], objs: list[BaselineObject]
    ) -> tuple[list[BaselineObject], list[bytes]]:
        """All objects and their nodes in id order (ids are unique): ``reused`` (in id order)
        with their objects ``objs``, and these. A few are inserted where they belong; many,
        as in a full capture, are sorted in with the rest."""
        ids = [o.id for o in reused]
        nodes = [o.node for o in reused]
        objs = list(objs)
        if len(self.ids) <= 64:
            for i in sorted(range(len(self.ids)), key=self.ids.__getitem__):
                at = bisect_left(ids, self.ids[i])
                ids.insert(at, self.ids[i])
                objs.insert(at, self.objs[i])
                nodes.insert(at, self.nodes[i])
            return objs, nodes
        ids += self.ids
        objs += self.objs
        nodes += self.nodes
        order = sorted(range(len(ids)), key=ids.__getitem__)
        return [objs[i] for i in order], [nodes[i] for i in order]


class Captures:
    """The captures of one store (one connection id), and what later ones may reuse."""

    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id
        # The newest capture known to describe committed catalog state, and the last capture.
        self.prior: state.CatalogState | None = None
        self.last: state.CatalogState | None = None
        self.reused = 0  # family objects the last capture took from an earlier one
        # Where the state the last capture started from came from: "memory" (this process),
        # "file" (the local cache), "governance" (the database: shared_state), or "none".
        self.source = "none"
        self._made: dict[bytes, BaselineObject] = {}  # the last capture's objects, by Merkle node
        self._sessions = 0  # open sessions: while there are any, a new state is saved when they end
        self._unsaved: state.CatalogState | None = None

    def adopt(self, st: state.CatalogState | None) -> None:
        """Start later captures from ``st``, and save it for other processes. Only for a
        capture whose transaction had written nothing, or has committed.

        During a session the state file is written once, when the session ends: its
        pre-baseline's state is usually followed by the post-baseline's a moment later, and
        a 10,000-table state is a 20 MB file."""
        if st is not None and st is not self.prior:
            self.prior = st
            if self._sessions:
                self._unsaved = st
            else:
                state.save(st)

    @contextmanager
    def saving_once(self) -> Iterator[None]:
        """While a session is open: the states it adopts are saved once, when the last ends."""
        self._sessions += 1
        try:
            yield
        finally:
            self._sessions -= 1
            if not self._sessions:
                st, self._unsaved = self._unsaved, None
                if st is not None:
                    state.save(st)

    def capture(self, cur: Any, decl: PostgisDeclaration) -> Baseline:
        """A catalog snapshot through ``cur`` (inside whatever transaction it is in).

        Family objects an earlier capture of this database saw are reused when the catalog
        rows show they cannot have changed (see ``state``); the result is the same as a
        full capture's."""
        conn = getattr(cur, "connection", None)
        if conn is not None and conn.autocommit:
            # The capture's settings are transaction-local: an autocommit session would drop
            # them after the first statement and render names with its own search_path.
            with conn.transaction():
                return self._capture(cur, decl)
        return self._capture(cur, decl)

    def _capture(self, cur: Any, decl: PostgisDeclaration) -> Baseline:
        cur.execute("SELECT current_setting('server_version')")
        (version,) = cur.fetchone()
        # The capture's own settings, transaction-local, and the session's to restore after it.
        cur.execute("SELECT " + ", ".join(f"current_setting('{name}')" for name, _ in _CAPTURE_SETTINGS))
        old = list(zip((name for name, _ in _CAPTURE_SETTINGS), cur.fetchone(), strict=True))
        _set_local(cur, _CAPTURE_SETTINGS)
        # Building 120k objects would otherwise set off the cyclic collector again and again.
        collecting = gc.isenabled()
        gc.disable()
        try:
            scope = PgScope(decl)
            guarded: dict[tuple[str | None, str | None], bool] = {}
            is_guarded = memo(scope.guarded, guarded)

            ident = state.identify(cur, self.conn_id) if state.enabled() else None
            prior = None
            if ident is not None:
                prior = self.prior if self.prior is not None and self.prior.key == ident[0] else None
            # A process with no state for the database in memory or in its cache file (a new
            # worker) reads the one the last committed run left in the database.
            shared = None
            if ident is not None and prior is None and not state.cached(ident[0]):
                shared = shared_state.fetch(cur, ident[0])
            # Reading an earlier capture's file and building its objects is Python work: a thread
            # does it while the server answers the probe and the change queries below.
            built: list[BaselineObject] = []  # one per loaded[0].objects, in the same order
            loaded: list[state.CatalogState | None] = [prior]
            source = ["memory" if prior is not None else "none"]
            failed: list[BaseException] = []
            ready = threading.Event()

            def build() -> None:
                try:
                    st = loaded[0]
                    if st is None and ident is not None:
                        st = state.load(ident[0])
                        if st is not None:
                            source[0] = "file"
                        else:
                            payload = shared_state.verified(shared)
                            st = state.decode(payload, ident[0]) if payload is not None else None
                            source[0] = "governance" if st is not None else "none"
                        loaded[0] = st
                    ready.set()
                    fobjs = st.objects if st is not None else []
                    flags = by_pair(fobjs, "schema", "table", is_guarded)
                    made = self._made
                    if made:
                        for o, g in zip(fobjs, flags, strict=True):
                            obj = made.get(o.node)  # the last capture's object, when nothing about it changed
                            if obj is None or obj.protected is not g:
                                obj = trusted_baseline_object(o.id, o.kind, o.schema, o.table, o.digest, g)
                            built.append(obj)
                    else:  # a new process
                        built.extend(
                            [
                                trusted_baseline_object(o.id, o.kind, o.schema, o.table, o.digest, g)
                                for o, g in zip(fobjs, flags, strict=True)
                            ]
                        )
                except BaseException as exc:  # whatever went wrong, the capture starts afresh
                    failed.append(exc)
                finally:
                    ready.set()

            worker = threading.Thread(target=build, name="kfm-capture-reuse", daemon=True)
            worker.start()
            dirty = None
            rows_fam: list[Any] = []
            rows_global: list[Any] = []
            try:
                now = state.probe(cur, ident) if ident is not None else None
                ready.wait()
                prior = loaded[0]
                if prior is not None and now is not None:
                    # Nested loops for the lookups by OID, off again for the wide global query:
                    # each setting travels with its query (state.results).
                    dirty = state.dirty_families(cur, prior, now)
                    if dirty:
                        _, rows_fam = state.results(cur, state.NESTED_LOOPS_ON, family_query(dirty))
                    if dirty is not None:
                        _, rows_global = state.results(cur, state.NESTED_LOOPS_OFF, GLOBAL_QUERY)
            finally:
                worker.join()
            if failed:
                dirty = None  # the reused objects are incomplete: compute every object
            # Ids, objects and Merkle nodes (leaf and tree node) in parallel lists, not a tuple per
            # object: 120k tuples would be 120k more objects for the cyclic collector to scan. The
            # reused objects, in id order, and the others (computed now), in any order.
            # The rows are streamed in chunks, so building the objects here overlaps the server's
            # work on the next rows.
            reused: list[state.FamilyObject] = []
            objs: list[BaselineObject] = []
            new = _Objects()
            if prior is None or dirty is None:
                rows_in: Any = cur.stream(CATALOG_QUERY, size=5000)
            else:
                if dirty:
                    keep = [o.fam not in dirty for o in prior.objects]
                    reused = list(compress(prior.objects, keep))
                    objs = list(compress(built, keep))
                else:
                    reused, objs = prior.objects, built
                rows_in = rows_fam + rows_global
            self.reused = len(reused)
            self.source = source[0] if prior is not None and dirty is not None else "none"
            fresh: list[state.FamilyObject] = []
            global_nodes: list[bytes] = []
            cluster_nodes: list[bytes] = []  # database- and cluster-level objects: the global fingerprint's
            for kind, oid, schema, table, dig, fam in rows_in:
                node = merkle_leaf_node(leaf_raw(oid, dig))
                new.add(oid, trusted_baseline_object(oid, kind, schema, table, dig, is_guarded(schema, table)), node)
                if fam:
                    fresh.append(state.FamilyObject(oid, kind, schema, table, dig, fam, node))
                elif is_global(kind, schema):
                    cluster_nodes.append(node)
                else:
                    global_nodes.append(node)
            # The schema fingerprint is the prior one when no object it covers changed (the
            # database- and cluster-level objects have a fingerprint of their own).
            global_nodes.sort()
            globals_digest = hashlib.sha256(b"".join(global_nodes)).hexdigest()
            same_tree = (
                prior is not None
                and dirty is not None
                and prior.globals_digest == globals_digest
                and (not dirty or _same_nodes(prior.objects, dirty, fresh))
            )
            family = reused
            if fresh:  # kept in id order, so that the next capture need not sort the objects it reuses
                family = sorted(reused + fresh, key=attrgetter("id"))
            rows: dict[str, int] = {}
            cur.execute(TABLES_QUERY)
            tables = [
                (s, t)
                for _oid, s, t, _fn in cur.fetchall()
                if s != LEDGER_SCHEMA and guarded.get((s, t)) is not False and scope.guarded(s, t)
            ]
            cap = decl.scope.protected_row_digest_max_rows
            for schema, table in sorted(tables):
                cur.execute(
                    "SELECT count(*), encode(sha256(convert_to(COALESCE(string_agg(h, '' ORDER BY h), ''), 'UTF8')),"
                    " 'hex') FROM (SELECT md5(t::text) AS h FROM "
                    + qident(schema)
                    + "."
                    + qident(table)
                    + " t LIMIT %s) x",
                    (cap + 1,),
                )
                n, dig = cur.fetchone()
                if n > cap:
                    dig = digest_json(["over-cap", n])
                rows[f"{schema}.{table}"] = min(n, cap)
                rid = f"rows:{schema}.{table}"
                new.add(
                    rid,
                    trusted_baseline_object(rid, "rows", schema, table, dig, True),
                    merkle_leaf_node(leaf_raw(rid, dig)),
                )
            cur.execute(ACL_QUERY)
            acls = {k: v for k, v in cur.fetchall()}
            cur.execute(RLS_QUERY)
            rls = {k: [bool(a), bool(b)] for k, a, b in cur.fetchall()}
            objs, nodes = new.merged_into(reused, objs)
            counts = dict(Counter(map(attrgetter("kind"), objs)))
            protected = [node for obj, node in zip(objs, nodes, strict=True) if obj.protected]
            if same_tree and prior is not None:
                schema_root = prior.schema_root
            else:
                outside = set(cluster_nodes)
                schema_root = merkle_root_nodes(
                    [n for o, n in zip(objs, nodes, strict=True) if o.kind != "rows" and n not in outside]
                )
            head = Baseline.model_validate(
                {
                    "schema_version": "baseline.v1",
                    "store": "postgis",
                    "migration_id": decl.migration_id,
                    "store_version": f"PostgreSQL {version}",
                    "scope_digest": digest_json(decl.scope.model_dump(mode="json")),
                    "counts": counts,
                    "objects": [],
                    "schema_fingerprint": schema_root,
                    "global_fingerprint": merkle_root_nodes(cluster_nodes),
                    "protected_fingerprint": merkle_root_nodes(protected),
                    "protected_rows": rows,
                    "extra": {"acls": acls, "rls": rls},
                }
            )
            baseline = head.model_copy(update={"objects": objs})
            remember_leaves(baseline, nodes)
            self._made = dict(zip(nodes, objs, strict=True))
            self.last = None
            if now is not None:
                self.last = state.CatalogState(
                    state.CACHE_FORMAT,
                    now.key,
                    now.snapshot,
                    now.own_xid,
                    now.counts,
                    now.names,
                    family,
                    globals_digest,
                    schema_root,
                )
                if now.own_xid is None:
                    # Nothing written in this transaction yet: the capture holds whatever it commits.
                    # When nothing changed since the state it started from, that one stays (and
                    # its file need not be written again).
                    if same_tree and not dirty and prior is not None:
                        self.prior = prior
                    else:
                        self.adopt(self.last)
            return baseline
        finally:
            if collecting:
                gc.enable()
            # The migration's own statements run with the session's settings, not the capture's.
            _set_local(cur, old)


def scope_fingerprint(decl: PostgisDeclaration, baseline: Baseline) -> str:
    """The Merkle root of the baseline's objects within the allowed scope."""
    objs = baseline.objects
    return merkle_root(
        leaf(o.id, o.digest) for o in compress(objs, by_pair(objs, "schema_", "table", PgScope(decl).allowed))
    )
