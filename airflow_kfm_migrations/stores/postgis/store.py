"""PostgreSQL / PostGIS store: static plan (pglast), catalog baselines, the transactional
guard, compensating rollback, advisory locks and the in-store ledger.

Transactional runs do everything between the lock and COMMIT in one transaction, so a
refused, failed or killed run leaves nothing behind. Declared non-transactional runs
(``transactional: false``) apply statement by statement and are compensated by the
rollback artifact when the post-commit gate fails.
"""

from __future__ import annotations

import gc
import hashlib
import json
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import compress
from operator import attrgetter
from typing import Any, ClassVar

from pglast import ast

from airflow_kfm_migrations.config import settings
from airflow_kfm_migrations.contracts.models import (
    Baseline,
    BaselineObject,
    DiffSummary,
    Finding,
    LimitCheck,
    PostgisDeclaration,
    WriteCount,
    trusted_baseline_object,
)
from airflow_kfm_migrations.declaration.approvals import approval_covers
from airflow_kfm_migrations.declaration.bundle import Artifact, Bundle, display
from airflow_kfm_migrations.errors import LockedError, RefusedError
from airflow_kfm_migrations.evidence.diff import diff_objects, remember_leaves
from airflow_kfm_migrations.evidence.limits import limit_checks
from airflow_kfm_migrations.stores.base import ApplyOutcome, BatchEvent, LedgerRecord, Plan, PlannedStatement
from airflow_kfm_migrations.stores.postgis import state
from airflow_kfm_migrations.stores.postgis.backfill import Engine, check_key, static_problems
from airflow_kfm_migrations.stores.postgis.catalog import (
    ACL_QUERY,
    CATALOG_QUERY,
    CLUSTER_KINDS,
    GLOBAL_QUERY,
    GOVERNANCE_QUERY,
    GOVERNANCE_ROWS_QUERY,
    LEDGER_DDL,
    LEDGER_SCHEMA,
    RLS_QUERY,
    SHARED_WRITES_QUERY,
    TABLES_QUERY,
    TEMP_DEPENDANTS_QUERY,
    XACT_WRITES_QUERY,
    family_query,
)
from airflow_kfm_migrations.stores.postgis.client import advisory_key, db_error
from airflow_kfm_migrations.stores.postgis.plan import (
    CLUSTER_STATEMENTS,
    classify_statement,
    plan_sql,
    search_path_of,
)
from airflow_kfm_migrations.stores.postgis.scope import PgScope, by_pair, memo
from airflow_kfm_migrations.util.digest import (
    digest_json,
    leaf,
    leaf_raw,
    merkle_leaf_node,
    merkle_root,
    merkle_root_nodes,
)

Connect = Callable[[], Any]  # -> psycopg.Connection


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


class PostgisStore:
    kind: ClassVar[str] = "postgis"

    def __init__(self, connect: Connect, conn_id: str) -> None:
        self._connect = connect
        self.conn_id = conn_id
        # The newest capture known to describe committed catalog state, and the last capture.
        self._prior: state.CatalogState | None = None
        self._last: state.CatalogState | None = None
        self.reused = 0  # family objects the last capture took from an earlier one
        self._made: dict[bytes, BaselineObject] = {}  # the last capture's objects, by Merkle node
        self._sessions = 0  # open sessions: while there are any, a new state is saved when they end
        self._unsaved: state.CatalogState | None = None

    def adopt(self, st: state.CatalogState | None) -> None:
        """Start later captures from ``st``, and save it for other processes. Only for a
        capture whose transaction had written nothing, or has committed.

        During a session the state file is written once, when the session ends: its
        pre-baseline's state is usually followed by the post-baseline's a moment later, and
        a 10,000-table state is a 20 MB file."""
        if st is not None and st is not self._prior:
            self._prior = st
            if self._sessions:
                self._unsaved = st
            else:
                state.save(st)

    def _save_unsaved(self) -> None:
        st, self._unsaved = self._unsaved, None
        if st is not None:
            state.save(st)

    # -- construction ---------------------------------------------------------

    @classmethod
    def from_conn_id(cls, conn_id: str, *, use_hook: bool = False) -> PostgisStore:
        if use_hook:

            def connect_hook() -> Any:
                from airflow.providers.postgres.hooks.postgres import PostgresHook

                conn: Any = PostgresHook(postgres_conn_id=conn_id).get_conn()
                conn.autocommit = False
                return conn

            return cls(connect_hook, conn_id)

        from airflow_kfm_migrations.util.connections import resolve

        info = resolve(conn_id)

        def connect_env() -> Any:
            import psycopg

            kwargs: dict[str, Any] = {
                "host": info.host or "localhost",
                "port": info.port or 5432,
                "user": info.login,
                "password": info.password,
                "dbname": info.schema or "postgres",
                "application_name": "kfm-migrations",
                "connect_timeout": int(info.extra.get("connect_timeout", 10)),
            }
            for k in ("sslmode", "sslrootcert", "sslcert", "sslkey"):
                if k in info.extra:
                    kwargs[k] = info.extra[k]
            try:
                return psycopg.connect(**{k: v for k, v in kwargs.items() if v is not None})
            except psycopg.Error as exc:
                raise RefusedError(f"cannot connect to {conn_id}: {db_error(exc)}") from None

        return cls(connect_env, conn_id)

    # -- the Backfilling capability ------------------------------------------------

    def backfill_problems(self, bundle: Bundle) -> list[str]:
        return static_problems(bundle)

    def backfill_engine(
        self, bundle: Bundle, log: Callable[[str], None], progress: Callable[[BatchEvent], None] | None
    ) -> Engine:
        conn = self._connect()
        conn.autocommit = False
        return Engine(conn, bundle, log, progress)

    def rehearsable(self, bundle: Bundle) -> bool:
        return bool(bundle.declaration.transactional)

    @classmethod
    def for_planning(cls, conn_id: str) -> PostgisStore:
        """A store that plans statically and never connects."""

        def refuse() -> Any:
            raise RefusedError("this store instance only plans; it never connects")

        return cls(refuse, conn_id)

    # -- plan -----------------------------------------------------------------

    def plan(self, bundle: Bundle) -> Plan:
        decl = bundle.declaration
        assert isinstance(decl, PostgisDeclaration)
        scope = PgScope(decl)
        statements: list[PlannedStatement] = []
        findings: list[Finding] = []
        i = 0
        for art in bundle.by_role("forward"):
            search_path = ["$user", "public"]
            for _text, stmt in plan_sql(art.text, display(art.path)):
                i += 1
                if isinstance(stmt, ast.VariableSetStmt):
                    sp = search_path_of(stmt)
                    if sp:
                        search_path = sp
                kind, targets, transactional, note = classify_statement(stmt, search_path)
                statements.append(PlannedStatement(i, kind, type(stmt).__name__, tuple(targets), transactional, note))
                if type(stmt).__name__ in CLUSTER_STATEMENTS or (
                    isinstance(stmt, ast.CopyStmt) and getattr(stmt, "is_program", False)
                ):
                    findings.append(
                        Finding(
                            code="cluster_statement",
                            tier="hard_fail",
                            object=f"statement {i}",
                            message=f"{type(stmt).__name__} acts outside any schema (roles, databases, system "
                            "settings, server programs); a migration may not run it",
                        )
                    )
                if isinstance(stmt, ast.TransactionStmt):
                    findings.append(
                        Finding(
                            code="transaction_control",
                            tier="hard_fail",
                            object=f"statement {i}",
                            message="the runner owns the transaction; remove BEGIN/COMMIT/ROLLBACK",
                        )
                    )
                if not transactional and decl.transactional:
                    findings.append(
                        Finding(
                            code="non_transactional_statement",
                            tier="hard_fail",
                            object=f"statement {i}",
                            message=f"{type(stmt).__name__} cannot run in a transaction; declare "
                            "transactional: false with a reason",
                        )
                    )
                if not decl.transactional and (note or isinstance(stmt, (ast.SelectStmt, ast.ExecuteStmt))):
                    # Without the transaction nothing undoes what the gate refuses, so the
                    # static plan must see every effect before the first write.
                    findings.append(
                        Finding(
                            code="opaque_non_transactional",
                            tier="hard_fail",
                            object=f"statement {i}",
                            message=f"{type(stmt).__name__} can hide its effects from the static plan, and a "
                            "transactional: false run cannot roll them back; run it in a transactional migration",
                        )
                    )
                elif note:
                    findings.append(
                        Finding(code="opaque_statement", tier="informational", object=f"statement {i}", message=note)
                    )
                for t in targets:
                    schema, _, table = t.partition(".")
                    table = "" if table == "*" else table
                    if scope.forbidden(schema, table or None):
                        findings.append(
                            Finding(
                                code="plan_forbidden_target",
                                tier="hard_fail",
                                object=t,
                                message=f"statement {i} targets forbidden {t}",
                            )
                        )
                    elif scope.protected(schema, table or None) and not approval_covers(decl, f"protected:{t}"):
                        findings.append(
                            Finding(
                                code="plan_protected_target",
                                tier="hard_fail",
                                object=t,
                                message=f"statement {i} targets protected {t} without approval",
                            )
                        )
                    elif not scope.allowed(schema, table or None) and not self._index_of_allowed(stmt, scope, t):
                        findings.append(
                            Finding(
                                code="plan_out_of_scope",
                                tier="hard_fail",
                                object=t,
                                message=f"statement {i} targets {t}, outside the allowed scope",
                            )
                        )
        return Plan(bundle.migration_id, self.kind, tuple(statements), tuple(findings))

    @staticmethod
    def _index_of_allowed(stmt: Any, scope: PgScope, target: str) -> bool:
        """An index is in scope when its table is. CREATE INDEX names both; DROP INDEX names
        only the index, so its schema must be allowed and the observed diff decides."""
        from pglast.enums.parsenodes import ObjectType

        schema, _, _ = target.partition(".")
        if isinstance(stmt, ast.IndexStmt) and stmt.relation is not None:
            return scope.allowed(schema, stmt.relation.relname)
        if isinstance(stmt, ast.DropStmt) and stmt.removeType == ObjectType.OBJECT_INDEX:
            return scope.allowed(schema, None)
        return False

    # -- baseline -------------------------------------------------------------

    def capture(self, cur: Any, decl: PostgisDeclaration) -> Baseline:
        """A catalog snapshot through ``cur`` (inside whatever transaction it is in).

        Family objects an earlier capture of this database saw are reused when the catalog
        rows show they cannot have changed (see ``postgis_state``); the result is the same
        as a full capture's."""
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
                prior = self._prior if self._prior is not None and self._prior.key == ident[0] else None
            # Reading an earlier capture's file and building its objects is Python work: a thread
            # does it while the server answers the probe and the change queries below.
            built: list[BaselineObject] = []  # one per loaded[0].objects, in the same order
            loaded: list[state.CatalogState | None] = [prior]
            failed: list[BaseException] = []
            ready = threading.Event()

            def build() -> None:
                try:
                    st = loaded[0]
                    if st is None and ident is not None:
                        st = loaded[0] = state.load(ident[0])
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
            fresh: list[state.FamilyObject] = []
            global_nodes: list[bytes] = []
            for kind, oid, schema, table, dig, fam in rows_in:
                node = merkle_leaf_node(leaf_raw(oid, dig))
                new.add(oid, trusted_baseline_object(oid, kind, schema, table, dig, is_guarded(schema, table)), node)
                if fam:
                    fresh.append(state.FamilyObject(oid, kind, schema, table, dig, fam, node))
                else:
                    global_nodes.append(node)
            # The schema fingerprint is the prior one when no object it covers changed.
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
                    + _qident(schema)
                    + "."
                    + _qident(table)
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
                schema_root = merkle_root_nodes([n for o, n in zip(objs, nodes, strict=True) if o.kind != "rows"])
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
                    "protected_fingerprint": merkle_root_nodes(protected),
                    "protected_rows": rows,
                    "extra": {"acls": acls, "rls": rls},
                }
            )
            baseline = head.model_copy(update={"objects": objs})
            remember_leaves(baseline, nodes)
            self._made = dict(zip(nodes, objs, strict=True))
            self._last = None
            if now is not None:
                self._last = state.CatalogState(
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
                        self._prior = prior
                    else:
                        self.adopt(self._last)
            return baseline
        finally:
            if collecting:
                gc.enable()
            # The migration's own statements run with the session's settings, not the capture's.
            _set_local(cur, old)

    def ledger_entry(self, migration_id: str, run_id: str) -> dict[str, Any] | None:
        """The ledger row of one run, read without locks or writes (for ``verify --conn-id``)."""
        import psycopg

        try:
            with self._connect() as conn, conn.cursor() as cur:
                cur.execute("SELECT to_regclass(%s)", (f"{LEDGER_SCHEMA}.ledger",))
                if cur.fetchone()[0] is None:
                    return None
                cur.execute(
                    f"SELECT operation, status, receipt_digest, post_schema_fingerprint FROM {LEDGER_SCHEMA}.ledger "
                    "WHERE migration_id = %s AND run_id = %s",
                    (migration_id, run_id),
                )
                row = cur.fetchone()
        except psycopg.Error as exc:
            raise RefusedError(f"cannot read the ledger on {self.conn_id}: {db_error(exc)}") from None
        if row is None:
            return None
        return dict(zip(("operation", "status", "receipt_digest", "post_schema_fingerprint"), row, strict=True))

    def scope_fingerprint(self, bundle: Bundle, baseline: Baseline) -> str:
        decl = bundle.declaration
        assert isinstance(decl, PostgisDeclaration)
        objs = baseline.objects
        return merkle_root(
            leaf(o.id, o.digest) for o in compress(objs, by_pair(objs, "schema_", "table", PgScope(decl).allowed))
        )

    # -- session --------------------------------------------------------------

    @contextmanager
    def session(self, bundle: Bundle, run_id: str) -> Iterator[PgSession]:
        decl = bundle.declaration
        assert isinstance(decl, PostgisDeclaration)
        conn = self._connect()
        self._sessions += 1
        try:
            s = PgSession(self, conn, bundle, run_id)
            s.open()
            yield s
        finally:
            try:
                if not conn.closed:
                    conn.rollback() if not conn.autocommit else None
                    if conn.autocommit:
                        conn.execute("SELECT pg_advisory_unlock_all()")
                conn.close()
            except Exception:  # the connection may already be gone (killed backend)
                pass
            self._sessions -= 1
            if not self._sessions:
                self._save_unsaved()

    # -- gate -----------------------------------------------------------------

    def evaluate(
        self, bundle: Bundle, pre: Baseline, post: Baseline, writes: list[WriteCount], facts: dict[str, Any]
    ) -> tuple[list[Finding], list[LimitCheck]]:
        decl = bundle.declaration
        assert isinstance(decl, PostgisDeclaration)
        scope = PgScope(decl)
        conf = settings()  # read at gate time: KFM_REVIEW_INDEX_ROWS / KFM_REVIEW_BACKFILL_ROWS
        review_index_rows, review_backfill_rows = conf.review_index_rows, conf.review_backfill_rows
        findings: list[Finding] = []
        changes = diff_objects(pre, post)
        tables: set[str] = set()
        index_delta = constraint_delta = 0
        for c in changes:
            if c.kind == "rows":
                continue  # row digests of guarded tables: reported by the protected check
            if c.table:
                tables.add(f"{c.schema_}.{c.table}")
            if c.kind == "index":
                index_delta += 1
            if c.kind == "constraint":
                constraint_delta += 1
            owner = c.table or _object_name(c.id, c.kind)
            if c.kind in CLUSTER_KINDS or (c.schema_ is None and c.kind != "schema"):
                findings.append(
                    Finding(
                        code="cluster_object_changed",
                        tier="hard_fail",
                        object=c.id,
                        message=f"{c.kind} {c.change}: database- and cluster-level objects are outside any scope",
                    )
                )
            elif scope.forbidden(c.schema_, c.table):
                findings.append(
                    Finding(
                        code="forbidden_object_changed",
                        tier="hard_fail",
                        object=c.id,
                        message=f"{c.kind} {c.change} in forbidden scope",
                    )
                )
            elif not scope.allowed(c.schema_, owner) and not scope.protected(c.schema_, c.table):
                findings.append(
                    Finding(
                        code="out_of_scope_change",
                        tier="hard_fail",
                        object=c.id,
                        message=f"{c.kind} {c.change} outside the allowed scope",
                    )
                )
            elif c.change == "added":
                findings.append(
                    Finding(
                        code="object_added",
                        tier="informational",
                        object=c.id,
                        message=f"{c.kind} created within the declared scope",
                    )
                )
            else:
                findings.append(
                    Finding(
                        code=f"object_{c.change}",
                        tier="informational",
                        object=c.id,
                        message=f"{c.kind} {c.change} within the declared scope",
                    )
                )
            # Review-required: anything that reduces policy enforcement.
            if c.kind == "policy" and c.change == "removed":
                findings.append(
                    Finding(
                        code="policy_dropped",
                        tier="review_required",
                        object=c.id,
                        message="row-level security policy dropped",
                    )
                )
            if c.kind == "enforcement_disabled" and c.change != "removed":
                findings.append(
                    Finding(
                        code="enforcement_disabled",
                        tier="review_required",
                        object=c.id,
                        message="foreign-key enforcement triggers disabled (ALTER TABLE ... DISABLE TRIGGER)",
                    )
                )
            if c.kind == "constraint" and c.change == "removed":
                findings.append(
                    Finding(
                        code="constraint_dropped", tier="review_required", object=c.id, message="constraint dropped"
                    )
                )
            if c.kind == "index" and c.change == "added":
                rows = int(facts.get("table_rows", {}).get(f"{c.schema_}.{c.table}", 0))
                if rows > review_index_rows:
                    findings.append(
                        Finding(
                            code="index_on_large_table",
                            tier="review_required",
                            object=c.id,
                            message=f"index build on a table of ~{rows} rows (review above {review_index_rows})",
                        )
                    )
        pre_rls, post_rls = pre.extra.get("rls", {}), post.extra.get("rls", {})
        for table, flags in pre_rls.items():
            now = post_rls.get(table, [False, False])
            if any(a and not b for a, b in zip(flags, now, strict=False)):
                findings.append(
                    Finding(
                        code="rls_disabled",
                        tier="review_required",
                        object=table,
                        message="row-level security disabled or no longer forced",
                    )
                )
        pre_acl, post_acl = pre.extra.get("acls", {}), post.extra.get("acls", {})
        for obj, acl in post_acl.items():
            widened = _acl_widened(pre_acl.get(obj), acl)
            if widened:
                findings.append(
                    Finding(
                        code="grant_widened",
                        tier="review_required",
                        object=obj,
                        message=f"privileges widened: {widened}",
                    )
                )
        total_rows = 0
        for w in writes:
            n = w.inserted + w.updated + w.deleted
            if not (n or w.rewritten):
                continue
            schema, _, table = w.table.partition(".")
            total_rows += n
            if schema == LEDGER_SCHEMA:
                findings.append(
                    Finding(
                        code="governance_ledger_touched",
                        tier="hard_fail",
                        object=w.table,
                        message="the migration wrote into the governance ledger",
                    )
                )
                continue
            tables.add(w.table)
            if scope.forbidden(schema, table):
                findings.append(
                    Finding(
                        code="forbidden_write",
                        tier="hard_fail",
                        object=w.table,
                        message=f"{n} row(s) written into a forbidden table",
                    )
                )
            elif scope.protected(schema, table):
                if not approval_covers(decl, f"protected:{w.table}"):
                    findings.append(
                        Finding(
                            code="protected_write",
                            tier="hard_fail",
                            object=w.table,
                            message=f"{n} row(s) written into a protected table",
                        )
                    )
            elif not scope.allowed(schema, table):
                findings.append(
                    Finding(
                        code="out_of_scope_write",
                        tier="hard_fail",
                        object=w.table,
                        message=f"{n} row(s) written outside the allowed scope",
                    )
                )
            elif w.rewritten:
                findings.append(
                    Finding(
                        code="table_rewritten",
                        tier="review_required",
                        object=w.table,
                        message="table storage replaced (TRUNCATE or rewrite)",
                    )
                )
        if total_rows > review_backfill_rows:
            findings.append(
                Finding(
                    code="large_backfill",
                    tier="review_required",
                    message=f"{total_rows} rows written (review above {review_backfill_rows})",
                )
            )
        limits, exceeded = limit_checks(
            decl.limits,
            {
                "max_table_count_touched": len(tables),
                "max_index_count_delta": index_delta,
                "max_constraint_delta": constraint_delta,
                "max_row_backfill": total_rows,
            },
        )
        findings.extend(exceeded)
        return findings, limits

    def assets(self, bundle: Bundle, summary: DiffSummary) -> list[str]:
        tables = {f"{c.schema_}/{c.table}" for c in summary.changes if c.table and c.kind != "rows"}
        tables |= {w.table.replace(".", "/", 1) for w in summary.writes}
        return sorted(f"postgis://{self.conn_id}/{t}" for t in tables)


def _object_name(object_id: str, kind: str) -> str | None:
    """The name of a schema-level object without a table (function, type, ...), for matching
    it against ``allowed_tables``: 'function:public.f(int)' -> 'f'."""
    if kind == "schema":
        return None
    qualified = object_id.split(":", 1)[-1].split("(", 1)[0]
    return qualified.split(".", 1)[1] if "." in qualified else qualified


def _acl_items(acl: str | None) -> list[tuple[str, str, set[str]]]:
    """aclitem[] text → (grantee, grantor, privileges); an empty grantee is PUBLIC."""
    if not acl:
        return []
    out = []
    for item in acl.strip("{}").split(","):
        item = item.strip('"')
        grantee, _, rest = item.partition("=")
        privs, _, grantor = rest.partition("/")
        out.append((grantee or "PUBLIC", grantor, set(privs.replace("*", ""))))
    return out


def _acl_widened(before: str | None, after: str | None) -> str:
    """Privileges present after and not before. A NULL ACL means the owner's defaults only."""
    items = _acl_items(after)
    if before is None:
        base = {g: p for g, grantor, p in items if g == grantor}
    else:
        base = {}
        for g, _grantor, p in _acl_items(before):
            base.setdefault(g, set()).update(p)
    now: dict[str, set[str]] = {}
    for g, _grantor, p in items:
        now.setdefault(g, set()).update(p)
    widened = [f"{g}:{''.join(sorted(p - base.get(g, set())))}" for g, p in now.items() if p - base.get(g, set())]
    return ", ".join(sorted(widened))


def _qident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# ---------------------------------------------------------------------------- session


class PgSession:
    """One connection; a transaction (or, non-transactional, a session lock) held throughout."""

    def __init__(self, store: PostgisStore, conn: Any, bundle: Bundle, run_id: str) -> None:
        self.store = store
        self.conn = conn
        self.bundle = bundle
        self.decl: PostgisDeclaration = bundle.declaration  # type: ignore[assignment]
        self.run_id = run_id
        self.transactional = self.decl.transactional
        self._stat0: dict[str, tuple[int, int, int]] = {}
        self._files0: dict[int, tuple[int, str]] = {}
        self._captured = False
        self._pending: state.CatalogState | None = None
        self._governance: str | None = None  # GOVERNANCE_QUERY's digest when the session opened
        self._governance_rows: tuple[str, str] | None = None
        self._statement_ms = 0  # the declared statement timeout, as the server took it

    # The transaction: timeouts and advisory locks come first, so nothing runs unlocked.
    def open(self) -> None:
        import psycopg
        from psycopg import sql

        t = self.decl.timeouts
        conn = self.conn
        conn.autocommit = not self.transactional
        scope = "LOCAL " if self.transactional else ""
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("SET " + scope + "lock_timeout = {}").format(sql.Literal(t.lock_timeout)))
                cur.execute(sql.SQL("SET " + scope + "statement_timeout = {}").format(sql.Literal(t.statement_timeout)))
                cur.execute("SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = 'statement_timeout'")
                self._statement_ms = int(cur.fetchone()[0])
                fn = "pg_try_advisory_xact_lock" if self.transactional else "pg_try_advisory_lock"
                cur.execute(
                    f"SELECT {fn}(%s), {fn}(%s)",
                    (advisory_key("kfm-store"), advisory_key("kfm:" + self.decl.migration_id)),
                )
                store_lock, mig_lock = cur.fetchone()
                if not (store_lock and mig_lock):
                    raise LockedError(
                        f"another run holds the {'migration' if not mig_lock else 'store'} lock for "
                        f"{self.decl.migration_id} on {self.store.conn_id}; refusing to run concurrently"
                    )
                cur.execute(LEDGER_DDL)
                cur.execute(GOVERNANCE_QUERY)
                self._governance, hazards = cur.fetchone()
                cur.execute(GOVERNANCE_ROWS_QUERY)
                self._governance_rows = cur.fetchone()
        except psycopg.Error as exc:
            raise RefusedError(f"cannot prepare the run on {self.store.conn_id}: {db_error(exc)}") from None
        if hazards:
            # They would run when the run records itself, after the gate.
            raise RefusedError(
                f"{LEDGER_SCHEMA} on {self.store.conn_id} has triggers, rules or policies on its tables, "
                "which no run creates; refusing to record runs there until they are removed"
            )

    def ledger_last(self) -> LedgerRecord | None:
        with self.conn.cursor() as cur:
            cur.execute(
                f"SELECT migration_id, operation, status, bundle_digest, artifacts, environment, run_id, "
                f"pre_schema_fingerprint, pre_protected_fingerprint, post_schema_fingerprint, "
                f"post_scope_fingerprint, applied_at::text, receipt_digest FROM {LEDGER_SCHEMA}.ledger "
                f"WHERE migration_id = %s ORDER BY id DESC LIMIT 1",
                (self.decl.migration_id,),
            )
            row = cur.fetchone()
        if row is None:
            return None
        return LedgerRecord(*row[:4], dict(row[4]), *row[5:])  # type: ignore[arg-type,call-arg]

    def baseline(self) -> Baseline:
        with self.conn.cursor() as cur:
            b = self.store.capture(cur, self.decl)
        # The first capture comes before the migration writes anything (the ledger schema aside,
        # which captures leave out); a later one in a transaction holds uncommitted changes, and
        # only becomes the store's starting point if they commit.
        if not self.transactional or not self._captured:
            self.store.adopt(self.store._last)
        else:
            self._pending = self.store._last
        self._captured = True
        return b

    def _stats(self, cur: Any) -> dict[str, tuple[int, int, int]]:
        cur.execute(XACT_WRITES_QUERY if self.transactional else SHARED_WRITES_QUERY)
        return {t: (i, u, d) for t, i, u, d in cur.fetchall()}

    def _filenodes(self, cur: Any) -> dict[int, tuple[int, str]]:
        """Each table's storage file and name: a rewrite (TRUNCATE, VACUUM FULL, ALTER TYPE)
        gives a table a new file without counting rows."""
        cur.execute(TABLES_QUERY)
        return {oid: (fn, f"{s}.{t}") for oid, s, t, fn in cur.fetchall()}

    # Who the session is, and what makes the gate's evidence complete: with
    # session_replication_role = replica, triggers and foreign keys are off; with
    # track_counts off, the write counters see nothing.
    _SESSION_STATE = (
        "SELECT current_user, session_user, current_setting('session_replication_role'), "
        "current_setting('track_counts')"
    )

    def _snapshot(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute(self._SESSION_STATE)
            self._session0 = cur.fetchone()
            if not self.transactional:
                cur.execute("SELECT pg_stat_force_next_flush()")
                cur.execute("SELECT pg_stat_clear_snapshot()")
            self._stat0 = self._stats(cur)
            self._files0 = self._filenodes(cur)

    def _writes(self) -> list[WriteCount]:
        with self.conn.cursor() as cur:
            if not self.transactional:
                cur.execute("SELECT pg_stat_force_next_flush()")
                time.sleep(0.05)
                cur.execute("SELECT pg_stat_clear_snapshot()")
            now = self._stats(cur)
            files = self._filenodes(cur)
        rewritten = {name for o, (fn, name) in files.items() if o in self._files0 and self._files0[o][0] != fn}
        out = []
        for table in sorted(set(now) | rewritten):
            i1, u1, d1 = now.get(table, (0, 0, 0))
            i0, u0, d0 = self._stat0.get(table, (0, 0, 0))
            w = WriteCount(
                table=table,
                inserted=max(0, i1 - i0),
                updated=max(0, u1 - u0),
                deleted=max(0, d1 - d0),
                rewritten=table in rewritten,
            )
            if w.inserted or w.updated or w.deleted or w.rewritten:
                out.append(w)
        return out

    @contextmanager
    def _watchdog(self) -> Iterator[None]:
        """Cancel a statement that outlives the declared statement timeout. The server enforces
        it too, unless the script turned it off (``SET LOCAL statement_timeout = 0``) and would
        hold its locks for as long as it likes."""
        if not self._statement_ms:
            yield
            return
        timer = threading.Timer(self._statement_ms / 1000 * 1.1 + 1, self.conn.cancel_safe)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _after_script(
        self, state: Any, governance: str, governance_rows: tuple[str, str], doomed: tuple[str] | None
    ) -> str | None:
        """Why the script's outcome cannot be judged or committed, if it cannot."""
        if governance_rows != self._governance_rows:
            return f"the script wrote to the ledger in {LEDGER_SCHEMA}"
        if doomed is not None:
            return (
                f"the script left {doomed[0]} depending on a temporary object, which the server drops "
                "when the session ends"
            )
        if governance != self._governance:
            # Captures leave the ledger's schema out; anything attached to it would run when the
            # run records itself, after the gate.
            return f"the script changed the governance schema {LEDGER_SCHEMA}"
        if state != self._session0:
            # SET ROLE / SET SESSION AUTHORIZATION change who the observed writes and the
            # ledger are attributed to; session_replication_role = replica silently turns off
            # triggers and foreign keys; track_counts off blinds the write counters. Any of them
            # would make the gate's evidence unreliable.
            names = ("current_user", "session_user", "session_replication_role", "track_counts")
            what = ", ".join(f"{k} {a} -> {b}" for k, a, b in zip(names, self._session0, state, strict=True) if a != b)
            return f"the script changed the session's enforcement ({what})"
        return None

    def _run(self, artifacts: list[Artifact]) -> ApplyOutcome:
        import psycopg

        self._snapshot()
        if self._session0[3] != "on":
            return ApplyOutcome(
                ok=False,
                error="track_counts is off for this session, so the run could not see what its script writes; refused",
                statements_run=0,
            )
        n = 0
        started = time.monotonic()
        try:
            for art in artifacts:
                for text, _stmt in plan_sql(art.text, display(art.path)):
                    n += 1
                    with self.conn.cursor() as cur, self._watchdog():
                        cur.execute(text.encode(), prepare=False)
        except psycopg.Error as exc:
            return ApplyOutcome(ok=False, error=f"statement {n} of {art.rel}: {db_error(exc)}", statements_run=n - 1)
        try:
            with self.conn.cursor() as cur:
                if self.transactional:
                    # Deferred triggers would otherwise fire at COMMIT, after the gate: fire them
                    # now, so that what they do is in the post-baseline (or fails the run).
                    cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
                cur.execute(self._SESSION_STATE)
                state = cur.fetchone()
                cur.execute(GOVERNANCE_QUERY)
                governance = cur.fetchone()[0]
                cur.execute(GOVERNANCE_ROWS_QUERY)
                governance_rows = cur.fetchone()
                cur.execute(TEMP_DEPENDANTS_QUERY)
                doomed = cur.fetchone()
        except psycopg.Error as exc:
            return ApplyOutcome(ok=False, error=f"after the script: {db_error(exc)}", statements_run=n)
        refusal = self._after_script(state, governance, governance_rows, doomed)
        if refusal:
            return ApplyOutcome(ok=False, error=f"{refusal}; refused", statements_run=n)
        try:
            writes = self._writes()
        except psycopg.Error as exc:
            return ApplyOutcome(ok=False, error=f"after the script: {db_error(exc)}", statements_run=n)
        return ApplyOutcome(
            ok=True, writes=writes, statements_run=n, metrics={"apply_seconds": round(time.monotonic() - started, 3)}
        )

    def apply(self) -> ApplyOutcome:
        return self._run(self.bundle.by_role("forward"))

    def rollback(self) -> ApplyOutcome:
        return self._run(self.bundle.by_role("rollback"))

    def facts(self, pre: Baseline, post: Baseline) -> dict[str, Any]:
        tables = sorted({f"{c.schema_}.{c.table}" for c in diff_objects(pre, post) if c.kind == "index" and c.table})
        rows: dict[str, int] = {}
        with self.conn.cursor() as cur:
            for t in tables:
                schema, _, name = t.partition(".")
                cur.execute(
                    "SELECT GREATEST(c.reltuples, 0)::bigint FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                    (schema, name),
                )
                row = cur.fetchone()
                rows[t] = int(row[0]) if row else 0
        return {"table_rows": rows}

    def record(self, rec: LedgerRecord) -> None:
        import psycopg

        try:
            self._record(rec)
        except psycopg.Error as exc:
            raise RefusedError(f"cannot write the ledger entry on {self.store.conn_id}: {db_error(exc)}") from None

    def _record(self, rec: LedgerRecord) -> None:
        with self.conn.cursor() as cur:
            cur.execute(
                f"INSERT INTO {LEDGER_SCHEMA}.ledger (migration_id, operation, status, bundle_digest, artifacts, "
                f"environment, run_id, pre_schema_fingerprint, pre_protected_fingerprint, post_schema_fingerprint, "
                f"post_scope_fingerprint) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    rec.migration_id,
                    rec.operation,
                    rec.status,
                    rec.bundle_digest,
                    json.dumps(rec.artifacts),
                    rec.environment,
                    rec.run_id,
                    rec.pre_schema_fingerprint,
                    rec.pre_protected_fingerprint,
                    rec.post_schema_fingerprint,
                    rec.post_scope_fingerprint,
                ),
            )

    # -- the BackfillSession capability: checks inside the guard's transaction -------

    def check_backfill_key(self) -> tuple[str | None, str]:
        bf = self.decl.backfill
        assert bf is not None
        with self.conn.cursor() as cur:
            problem, key_type = check_key(cur, bf)
        return problem, f"{bf.key_column} ({key_type}) unique, not null"

    def backfill_rollback_checks(self, run_id: str) -> list[tuple[str, bool, str | None]]:
        """verify_columns (when no rollback_set reversed them already) and retiring the
        backfill's progress, atomically with the rollback."""
        import psycopg

        bf = self.decl.backfill
        assert bf is not None
        eng = Engine(self.conn, self.bundle, lambda _line: None, None)
        checks: list[tuple[str, bool, str | None]] = []
        try:
            with self.conn.cursor() as cur:
                if bf.verify_columns and not bf.rollback_set:
                    cur.execute(
                        f"SELECT last_key FROM {LEDGER_SCHEMA}.backfill_progress WHERE migration_id = %s "
                        "AND run_key = %s AND batch_no = 0",
                        (self.decl.migration_id, eng.key),
                    )
                    row = cur.fetchone()
                    if row is not None:
                        same = eng.verify_digest(cur) == row[0]
                        checks.append(
                            ("verify_columns", same, "digest equals pre" if same else "digest differs from pre")
                        )
                        if not same:
                            return checks
                eng.retire_progress(cur, run_id)
        except psycopg.Error as exc:
            checks.append(("verify_columns", False, db_error(exc)))
        return checks

    def set_receipt_digest(self, run_id: str, digest: str) -> None:
        """After the receipt is written (outside the migration's transaction)."""
        conn = self.store._connect()
        try:
            conn.autocommit = True
            conn.execute(f"UPDATE {LEDGER_SCHEMA}.ledger SET receipt_digest = %s WHERE run_id = %s", (digest, run_id))
        finally:
            conn.close()

    def commit(self) -> None:
        if self.transactional:
            self.conn.commit()
            self.store.adopt(self._pending)
            self._pending = None

    def abort(self) -> None:
        self._pending = None  # rolled back: the store keeps the state it had
        if self.transactional:
            try:
                self.conn.rollback()
            except Exception:  # connection lost: the server rolled back already
                pass
