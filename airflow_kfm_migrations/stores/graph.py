"""Neo4j graph store: static plan of Cypher scripts, schema/count/protected-node baselines,
a lock node, the in-store ledger of ``:KfmMigration`` nodes, and compensating rollback.

Neo4j cannot mix schema and data writes in one transaction and cannot roll schema back,
so sessions are non-transactional: every statement runs in its own auto-commit
transaction, and the lifecycle compensates with the rollback artifact when the gate
fails. The ``:KfmLock`` and ``:KfmMigration`` nodes (and their schema) are governance
state: they never appear in baselines or accounting.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from ..bundle import Artifact, Bundle, display
from ..contracts.models import (
    Baseline,
    BaselineObject,
    DiffSummary,
    Finding,
    GraphDeclaration,
    LimitCheck,
    WriteCount,
)
from ..diff import diff_objects
from ..digest import digest_json, merkle_root
from ..errors import LockedError, RefusedError
from ..policy import approval_covers
from ..secret_scan import redact
from .base import ApplyOutcome, LedgerRecord, Plan, PlannedStatement
from .cypher import CypherStatement, classify, in_transactions, mentions, schema_name, split_cypher, uses_graph

LOCK_LABEL = "KfmLock"
LEDGER_LABEL = "KfmMigration"
GOVERNANCE_LABELS = frozenset({LOCK_LABEL, LEDGER_LABEL})
LOCK_KEY = "store"
GOVERNANCE_SCHEMA = frozenset({"kfm_lock_key", "kfm_migration_id"})
LOCK_STALE_SECONDS = int(os.environ.get("KFM_GRAPH_LOCK_STALE_SECONDS", "3600"))
COUNTER_NAMES = (
    "nodes_created",
    "nodes_deleted",
    "relationships_created",
    "relationships_deleted",
    "properties_set",
    "labels_added",
    "labels_removed",
    "indexes_added",
    "indexes_removed",
    "constraints_added",
    "constraints_removed",
)
COUNT_KINDS = frozenset({"label_count", "rel_count", "nodes"})
_LEDGER_FIELDS = tuple(LedgerRecord.__dataclass_fields__)

Connect = Callable[[], Any]  # -> neo4j.Driver


# ----------------------------------------------------------------------------- scope


def _match(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@dataclass(frozen=True)
class GraphScope:
    decl: GraphDeclaration

    def forbidden_label(self, label: str) -> bool:
        return label in GOVERNANCE_LABELS or _match(label, self.decl.scope.forbidden_labels)

    def protected_label(self, label: str) -> bool:
        return _match(label, self.decl.scope.protected_labels)

    def allowed_label(self, label: str) -> bool:
        return _match(label, self.decl.scope.allowed_labels)

    def forbidden_type(self, rel_type: str) -> bool:
        return _match(rel_type, self.decl.scope.forbidden_relationship_types)

    def allowed_type(self, rel_type: str) -> bool:
        return _match(rel_type, self.decl.scope.allowed_relationship_types)

    def guarded(self, entity: str, name: str) -> bool:
        if entity == "relationship":
            return self.forbidden_type(name)
        return self.forbidden_label(name) or self.protected_label(name)

    def allowed(self, entity: str, name: str) -> bool:
        if entity == "relationship":
            return self.allowed_type(name) and not self.forbidden_type(name)
        return self.allowed_label(name) and not self.forbidden_label(name)


def _names(obj: BaselineObject) -> list[str]:
    return [x for x in (obj.table or "").split("|") if x]


# ----------------------------------------------------------------------------- errors


_VALUE = re.compile(r"""\s=\s*('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s,)]+)""")


def _neo_error(exc: BaseException) -> str:
    """A policy-safe message: the Neo4j status code and the first line of the server's text,
    with property values (`` = 'x'``) masked. Driver errors (no status code) may name hosts:
    only their type is reported."""
    code = getattr(exc, "code", None)
    name = type(exc).__name__
    if not code:
        return f"{name}: the connection to the server was lost or refused"
    message = str(getattr(exc, "message", None) or "").strip()
    first = message.splitlines()[0][:300] if message else "database error"
    return redact(f"{code}: {_VALUE.sub(' = <value>', first)}")


_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|min|h|d)?\s*$", re.I)


def _seconds(interval: str) -> float | None:
    m = _INTERVAL.match(interval or "")
    if not m:
        return None
    unit = (m.group(2) or "ms").lower()  # PostgreSQL's default unit is ms
    mult = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "h": 3600, "d": 86400}[unit]
    return float(m.group(1)) * mult


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value).hex()}
    return {type(value).__name__: str(value)}


# ---------------------------------------------------------------------------- store


class GraphStore:
    kind: ClassVar[str] = "graph"

    def __init__(self, connect: Connect | None, conn_id: str, database: str | None = None) -> None:
        self._connect = connect
        self.conn_id = conn_id
        self.database = database

    # -- construction ---------------------------------------------------------

    def rehearsable(self, bundle: Bundle) -> bool:
        return False  # Neo4j schema changes cannot be rolled back: dry runs stop after the plan

    @classmethod
    def for_planning(cls, conn_id: str) -> GraphStore:
        """A store that plans only and never connects."""
        return cls(None, conn_id)

    @classmethod
    def from_conn_id(cls, conn_id: str, *, use_hook: bool = False) -> GraphStore:
        if use_hook:

            def connect_hook() -> Any:
                from airflow.providers.neo4j.hooks.neo4j import Neo4jHook

                return Neo4jHook(conn_id).get_conn()

            database = None
            try:
                from airflow.providers.neo4j.hooks.neo4j import Neo4jHook

                database = Neo4jHook(conn_id).get_connection(conn_id).schema or None
            except Exception:  # the hook reports connection problems itself at connect time
                database = None
            return cls(connect_hook, conn_id, database)

        from ..connections import resolve

        info = resolve(conn_id)
        extra = info.extra or {}

        def connect_env() -> Any:
            import neo4j

            scheme = "bolt" if str(extra.get("bolt_scheme", "")).lower() in {"true", "1"} else "neo4j"
            if str(extra.get("encrypted", "")).lower() in {"true", "1"}:
                scheme += "+ssc" if str(extra.get("certs_self_signed", "")).lower() in {"true", "1"} else "+s"
            uri = f"{scheme}://{info.host or 'localhost'}:{info.port or 7687}"
            auth = (info.login, info.password or "") if info.login else None
            try:
                return neo4j.GraphDatabase.driver(uri, auth=auth, connection_timeout=10)
            except Exception as exc:  # bad URI, driver config
                raise RefusedError(f"cannot connect to {conn_id}: {_neo_error(exc)}") from None

        return cls(connect_env, conn_id, info.schema or None)

    # -- plan -----------------------------------------------------------------

    def plan(self, bundle: Bundle) -> Plan:
        decl = bundle.declaration
        assert isinstance(decl, GraphDeclaration)
        scope = GraphScope(decl)
        statements: list[PlannedStatement] = []
        findings: list[Finding] = []
        i = 0
        for art in bundle.by_role("forward"):
            for st in split_cypher(art.text, display(art.path)):
                i += 1
                kind, name = classify(st.masked)
                labels, types, dynamic = mentions(st.masked)
                targets = [f"label:{x}" for x in sorted(labels)] + [f"rel:{x}" for x in sorted(types)]
                note = None
                if kind == "schema":
                    sname = schema_name(st.masked)
                    if sname:
                        targets.append(f"{name.split('_', 1)[1]}:{sname}")
                    note = "schema: own transaction, cannot be rolled back (compensated by the rollback artifact)"
                elif kind == "other" and name == "procedure_call":
                    note = "procedure call: effects are only visible in the observed diff"
                if dynamic:
                    note = "dynamic labels or types hide from the static plan; the observed diff decides"
                batched = in_transactions(st.masked)
                if batched:
                    note = "CALL … IN TRANSACTIONS commits in batches"
                statements.append(
                    PlannedStatement(
                        index=i,
                        kind={"schema": "DDL", "data": "DML"}.get(kind, "other"),
                        statement=name,
                        targets=tuple(targets),
                        transactional=kind == "data" and not batched,
                        note=note,
                    )
                )
                where = f"{art.rel}:{st.line}"
                if kind == "schema" and schema_name(st.masked) in GOVERNANCE_SCHEMA:
                    findings.append(
                        Finding(
                            code="plan_forbidden_target",
                            tier="hard_fail",
                            object=where,
                            message=f"statement {i} changes the governance schema ({schema_name(st.masked)})",
                        )
                    )
                if kind == "admin":
                    findings.append(
                        Finding(
                            code="plan_admin_command",
                            tier="hard_fail",
                            object=where,
                            message=f"statement {i} is an administration command (databases, users, privileges)",
                        )
                    )
                if uses_graph(st.masked):
                    findings.append(
                        Finding(
                            code="plan_use_clause",
                            tier="hard_fail",
                            object=where,
                            message=f"statement {i} switches graphs with USE; the scope cannot be enforced",
                        )
                    )
                findings.extend(self._plan_scope(decl, scope, i, labels, types))
        return Plan(decl.migration_id, self.kind, tuple(statements), tuple(findings))

    @staticmethod
    def _plan_scope(
        decl: GraphDeclaration, scope: GraphScope, i: int, labels: set[str], types: set[str]
    ) -> list[Finding]:
        out: list[Finding] = []
        for label in sorted(labels):
            if scope.forbidden_label(label):
                out.append(
                    Finding(
                        code="plan_forbidden_target",
                        tier="hard_fail",
                        object=f"label:{label}",
                        message=f"statement {i} targets the forbidden label :{label}",
                    )
                )
            elif scope.protected_label(label):
                if not approval_covers(decl, f"protected:{label}"):
                    out.append(
                        Finding(
                            code="plan_protected_target",
                            tier="hard_fail",
                            object=f"label:{label}",
                            message=f"statement {i} targets the protected label :{label} "
                            f"without an approval covering 'protected:{label}'",
                        )
                    )
            elif not scope.allowed_label(label):
                out.append(
                    Finding(
                        code="plan_out_of_scope",
                        tier="hard_fail",
                        object=f"label:{label}",
                        message=f"statement {i} targets :{label}, outside allowed_labels",
                    )
                )
        for t in sorted(types):
            if scope.forbidden_type(t):
                out.append(
                    Finding(
                        code="plan_forbidden_target",
                        tier="hard_fail",
                        object=f"rel:{t}",
                        message=f"statement {i} targets the forbidden relationship type :{t}",
                    )
                )
            elif not scope.allowed_type(t):
                out.append(
                    Finding(
                        code="plan_out_of_scope",
                        tier="hard_fail",
                        object=f"rel:{t}",
                        message=f"statement {i} targets [:{t}], outside allowed_relationship_types",
                    )
                )
        return out

    # -- baseline -------------------------------------------------------------

    def capture(self, run: Callable[..., list[dict[str, Any]]], decl: GraphDeclaration) -> Baseline:
        """Baseline through ``run(query, **params) -> records as dicts``."""
        scope = GraphScope(decl)
        objects: list[BaselineObject] = []
        comp = run("CALL dbms.components() YIELD name, versions, edition RETURN name, versions, edition")
        version = " ".join(f"{c['name']} {'/'.join(c['versions'])} {c['edition']}" for c in comp) or "Neo4j"

        def guarded(entity: str, names: list[str]) -> bool:
            return any(scope.guarded(entity, x) for x in names)

        def governance(names: list[str] | None) -> bool:
            return bool(names) and any(x in GOVERNANCE_LABELS for x in names or [])

        for c in run("SHOW CONSTRAINTS YIELD *"):
            if governance(c.get("labelsOrTypes")):
                continue
            entity = "relationship" if c.get("entityType") == "RELATIONSHIP" else "node"
            names = list(c.get("labelsOrTypes") or [])
            definition = {
                k: _jsonable(c.get(k))
                for k in ("name", "type", "entityType", "labelsOrTypes", "properties", "propertyType")
            }
            definition["options"] = _jsonable(c.get("options"))
            objects.append(
                BaselineObject(
                    id=f"constraint:{c['name']}",
                    kind="constraint",
                    schema=entity,
                    table="|".join(names) or None,
                    digest=digest_json(definition),
                    protected=guarded(entity, names),
                )
            )
        for ix in run("SHOW INDEXES YIELD *"):
            if ix.get("owningConstraint") or governance(ix.get("labelsOrTypes")):
                continue  # a constraint's backing index is part of the constraint
            entity = "relationship" if ix.get("entityType") == "RELATIONSHIP" else "node"
            names = list(ix.get("labelsOrTypes") or [])
            definition = {
                k: _jsonable(ix.get(k))
                for k in ("name", "type", "entityType", "labelsOrTypes", "properties", "indexProvider", "options")
            }
            objects.append(
                BaselineObject(
                    id=f"index:{ix['name']}",
                    kind="index",
                    schema=entity,
                    table="|".join(names) or None,
                    digest=digest_json(definition),
                    protected=guarded(entity, names),
                )
            )
        rows: dict[str, int] = {}
        labels = sorted(r["label"] for r in run("CALL db.labels() YIELD label RETURN label"))
        for label in labels:
            if label in GOVERNANCE_LABELS:
                continue
            q = f"MATCH (n:{_quote(label)}) RETURN count(n) AS c"
            count = int(run(q)[0]["c"])
            if not count:
                continue
            objects.append(
                BaselineObject(
                    id=f"label_count:{label}",
                    kind="label_count",
                    schema="node",
                    table=label,
                    digest=digest_json(count),
                    protected=scope.guarded("node", label),
                )
            )
            if scope.protected_label(label):
                digests = sorted(
                    digest_json({"labels": sorted(r["l"]), "properties": _jsonable(r["p"])})
                    for r in run(f"MATCH (n:{_quote(label)}) RETURN labels(n) AS l, properties(n) AS p")
                )
                rows[label] = len(digests)
                objects.append(
                    BaselineObject(
                        id=f"nodes:{label}",
                        kind="nodes",
                        schema="node",
                        table=label,
                        digest=digest_json(digests),
                        protected=True,
                    )
                )
        for t in sorted(r["t"] for r in run("CALL db.relationshipTypes() YIELD relationshipType AS t RETURN t")):
            count = int(run(f"MATCH ()-[r:{_quote(t)}]->() RETURN count(r) AS c")[0]["c"])
            if not count:
                continue
            objects.append(
                BaselineObject(
                    id=f"rel_count:{t}",
                    kind="rel_count",
                    schema="relationship",
                    table=t,
                    digest=digest_json(count),
                    protected=scope.guarded("relationship", t),
                )
            )
        # Property keys in use, per label and per relationship type (the token store keeps
        # unused keys forever, so db.propertyKeys() would never return to the pre state).
        node_keys = run(
            "MATCH (n) UNWIND labels(n) AS l WITH l, n WHERE NOT l IN $skip "
            "UNWIND keys(n) AS k RETURN l AS name, collect(DISTINCT k) AS keys",
            skip=sorted(GOVERNANCE_LABELS),
        )
        rel_keys = run("MATCH ()-[r]->() UNWIND keys(r) AS k RETURN type(r) AS name, collect(DISTINCT k) AS keys")
        for entity, recs in (("node", node_keys), ("relationship", rel_keys)):
            for r in recs:
                objects.append(
                    BaselineObject(
                        id=f"property_keys:{'rel:' if entity == 'relationship' else ''}{r['name']}",
                        kind="property_keys",
                        schema=entity,
                        table=r["name"],
                        digest=digest_json(sorted(r["keys"])),
                        protected=scope.guarded(entity, r["name"]),
                    )
                )
        objects.sort(key=lambda o: o.id)
        counts: dict[str, int] = {}
        for o in objects:
            counts[o.kind] = counts.get(o.kind, 0) + 1
        leaves = [digest_json([o.id, o.digest]) for o in objects if o.kind not in COUNT_KINDS]
        protected = [digest_json([o.id, o.digest]) for o in objects if o.protected]
        return Baseline(
            schema_version="baseline.v1",
            store="graph",
            migration_id=decl.migration_id,
            store_version=version,
            scope_digest=digest_json(decl.scope.model_dump(mode="json")),
            counts=counts,
            objects=objects,
            schema_fingerprint=merkle_root(leaves),
            protected_fingerprint=merkle_root(protected),
            protected_rows=rows,
            extra={"governance": self._governance(run)},
        )

    @staticmethod
    def _governance(run: Callable[..., list[dict[str, Any]]]) -> dict[str, Any]:
        """The lock/ledger schema and ledger size: a migration must never change them."""
        names = [
            r["name"]
            for query in ("SHOW CONSTRAINTS YIELD *", "SHOW INDEXES YIELD *")
            for r in run(query)
            if not r.get("owningConstraint") and set(r.get("labelsOrTypes") or []) & GOVERNANCE_LABELS
        ]
        ledger = sorted(
            digest_json(_jsonable(r["p"])) for r in run(f"MATCH (m:{LEDGER_LABEL}) RETURN properties(m) AS p")
        )
        return {"schema": sorted(names), "ledger_nodes": len(ledger), "ledger_digest": digest_json(ledger)}

    def scope_fingerprint(self, bundle: Bundle, baseline: Baseline) -> str:
        decl = bundle.declaration
        assert isinstance(decl, GraphDeclaration)
        scope = GraphScope(decl)
        return merkle_root(
            digest_json([o.id, o.digest])
            for o in baseline.objects
            if _names(o) and all(scope.allowed(o.schema_ or "node", x) for x in _names(o))
        )

    # -- session --------------------------------------------------------------

    @contextmanager
    def session(self, bundle: Bundle, run_id: str) -> Iterator[GraphSession]:
        decl = bundle.declaration
        assert isinstance(decl, GraphDeclaration)
        if self._connect is None:
            raise RefusedError("this graph store was opened for planning only")
        driver = self._connect()
        s = GraphSession(self, driver, bundle, run_id)
        try:
            s.open()
            yield s
        finally:
            try:
                s.release()
            finally:
                with suppress(Exception):  # already gone
                    driver.close()

    # -- gate -----------------------------------------------------------------

    def evaluate(
        self, bundle: Bundle, pre: Baseline, post: Baseline, writes: list[WriteCount], facts: dict[str, Any]
    ) -> tuple[list[Finding], list[LimitCheck]]:
        decl = bundle.declaration
        assert isinstance(decl, GraphDeclaration)
        scope = GraphScope(decl)
        findings: list[Finding] = []
        schema_delta_seen = 0
        before = {o.id: o for o in pre.objects}
        after = {o.id: o for o in post.objects}
        for c in diff_objects(pre, post):
            obj = after.get(c.id) or before.get(c.id)
            assert obj is not None
            entity = obj.schema_ or "node"
            names = _names(obj)
            if c.kind in {"constraint", "index"}:
                schema_delta_seen += 2 if c.change == "changed" else 1
            word = "relationship type" if entity == "relationship" else "label"
            if any(scope.forbidden_type(x) if entity == "relationship" else scope.forbidden_label(x) for x in names):
                findings.append(
                    Finding(
                        code="forbidden_object_changed",
                        tier="hard_fail",
                        object=c.id,
                        message=f"{c.kind} {c.change} on a forbidden {word}",
                    )
                )
            elif entity == "node" and any(scope.protected_label(x) for x in names):
                pass  # reported by the gate's protected check (approvals: protected:<Label>)
            elif not names or not all(scope.allowed(entity, x) for x in names):
                findings.append(
                    Finding(
                        code="out_of_scope_change",
                        tier="hard_fail",
                        object=c.id,
                        message=f"{c.kind} {c.change} outside the allowed {word}s",
                    )
                )
            else:
                findings.append(
                    Finding(
                        code="object_added" if c.change == "added" else f"object_{c.change}",
                        tier="informational",
                        object=c.id,
                        message=f"{c.kind} {c.change} within the declared scope",
                    )
                )
            if c.kind == "constraint" and c.change == "removed":
                findings.append(
                    Finding(
                        code="constraint_dropped", tier="review_required", object=c.id, message="constraint dropped"
                    )
                )
        counters = {k: int(v) for k, v in (facts.get("counters") or {}).items()}
        nodes_changed = (
            counters.get("nodes_created", 0)
            + counters.get("nodes_deleted", 0)
            + max(counters.get("labels_added", 0), counters.get("labels_removed", 0))
        )
        rels_changed = counters.get("relationships_created", 0) + counters.get("relationships_deleted", 0)
        schema_delta = max(
            schema_delta_seen,
            sum(
                counters.get(k, 0)
                for k in ("constraints_added", "constraints_removed", "indexes_added", "indexes_removed")
            ),
        )
        lim = decl.limits
        limits = [
            LimitCheck(
                name="max_nodes_changed",
                declared=lim.max_nodes_changed,
                observed=nodes_changed,
                ok=nodes_changed <= lim.max_nodes_changed,
            ),
            LimitCheck(
                name="max_relationships_changed",
                declared=lim.max_relationships_changed,
                observed=rels_changed,
                ok=rels_changed <= lim.max_relationships_changed,
            ),
            LimitCheck(
                name="max_schema_delta",
                declared=lim.max_schema_delta,
                observed=schema_delta,
                ok=schema_delta <= lim.max_schema_delta,
            ),
        ]
        for lc in limits:
            if not lc.ok:
                findings.append(
                    Finding(
                        code="limit_exceeded",
                        tier="hard_fail",
                        object=lc.name,
                        message=f"{lc.name}: observed {lc.observed} > declared {lc.declared}",
                    )
                )
        gov_pre, gov_post = pre.extra.get("governance"), post.extra.get("governance")
        if gov_pre is not None and gov_pre != gov_post:
            findings.append(
                Finding(
                    code="governance_ledger_touched",
                    tier="hard_fail",
                    object=LEDGER_LABEL,
                    message="the migration changed the governance ledger or its lock/ledger schema",
                )
            )
        # Invariants.
        for pair, n in sorted((facts.get("exclusive_labels") or {}).items()):
            if n:
                findings.append(
                    Finding(
                        code="invariant_exclusive_labels",
                        tier="hard_fail",
                        object=pair,
                        message=f"{n} node(s) carry both labels of the exclusive pair {pair}",
                    )
                )
        present = {o.id.partition(":")[2] for o in post.objects if o.kind == "constraint"}
        for name in decl.invariants.required_constraints:
            if name not in present:
                findings.append(
                    Finding(
                        code="invariant_required_constraint",
                        tier="hard_fail",
                        object=f"constraint:{name}",
                        message=f"required constraint {name} does not exist after the migration",
                    )
                )
        for key, n in sorted((facts.get("required_relationships") or {}).items()):
            if n:
                findings.append(
                    Finding(
                        code="invariant_required_relationship",
                        tier="hard_fail",
                        object=key,
                        message=f"{n} node(s) lack the required relationship {key}",
                    )
                )
        return findings, limits

    def assets(self, bundle: Bundle, summary: DiffSummary) -> list[str]:
        labels: set[str] = set()
        for c in summary.changes:
            if c.schema_ == "node" and c.table:
                labels.update(x for x in c.table.split("|") if x)
        return sorted(f"neo4j://{self.conn_id}/{label}" for label in labels)


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


# ---------------------------------------------------------------------------- session


class GraphSession:
    """Holds the ``:KfmLock`` node from ``open`` to ``release``; every statement autocommits."""

    transactional = False

    def __init__(self, store: GraphStore, driver: Any, bundle: Bundle, run_id: str) -> None:
        self.store = store
        self.driver = driver
        self.bundle = bundle
        self.decl: GraphDeclaration = bundle.declaration  # type: ignore[assignment]
        self.run_id = run_id
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._locked = False
        self._timeout = _seconds(self.decl.timeouts.statement_timeout)

    # -- plumbing -------------------------------------------------------------

    def _session(self) -> Any:
        kw: dict[str, Any] = {"notifications_min_severity": "OFF"}
        if self.store.database:
            kw["database"] = self.store.database
        return self.driver.session(**kw)

    def _run(self, query: str, **params: Any) -> list[dict[str, Any]]:
        with self._session() as s:
            return [r.data() for r in s.run(query, params)]

    def _write(self, query: str, **params: Any) -> Any:
        with self._session() as s:
            return s.run(query, params).consume()

    def open(self) -> None:
        import neo4j.exceptions as nx

        try:
            self.driver.verify_connectivity()
            self._write(f"CREATE CONSTRAINT kfm_lock_key IF NOT EXISTS FOR (l:{LOCK_LABEL}) REQUIRE l.key IS UNIQUE")
            self._write(f"CREATE INDEX kfm_migration_id IF NOT EXISTS FOR (m:{LEDGER_LABEL}) ON (m.migration_id)")
            self._acquire(nx)
        except LockedError:
            raise
        except (nx.Neo4jError, nx.DriverError) as exc:
            raise RefusedError(f"cannot prepare the run on {self.store.conn_id}: {_neo_error(exc)}") from None

    def _acquire(self, nx: Any) -> None:
        for attempt in range(2):
            try:
                self._write(
                    f"CREATE (:{LOCK_LABEL} {{key: $key, migration_id: $mid, run_id: $run, acquired_at: timestamp()}})",
                    key=LOCK_KEY,
                    mid=self.decl.migration_id,
                    run=self.run_id,
                )
                self._locked = True
                return
            except nx.ConstraintError:
                held = self._run(
                    f"MATCH (l:{LOCK_LABEL} {{key: $key}}) RETURN l.migration_id AS mid, l.run_id AS run, "
                    "timestamp() - l.acquired_at AS age",
                    key=LOCK_KEY,
                )
                if not held:
                    continue  # released meanwhile: try again
                h = held[0]
                if attempt == 0 and h["age"] is not None and h["age"] > LOCK_STALE_SECONDS * 1000:
                    self._write(
                        f"MATCH (l:{LOCK_LABEL} {{key: $key, run_id: $run}}) DELETE l", key=LOCK_KEY, run=h["run"]
                    )
                    continue
                raise LockedError(
                    f"another run ({h['mid']}, run {str(h['run'])[:12]}) holds the graph lock on "
                    f"{self.store.conn_id}; refusing to run concurrently"
                ) from None
        raise LockedError(f"could not take the graph lock on {self.store.conn_id}")

    def release(self) -> None:
        if not self._locked:
            return
        try:
            self._write(f"MATCH (l:{LOCK_LABEL} {{key: $key, run_id: $run}}) DELETE l", key=LOCK_KEY, run=self.run_id)
            self._locked = False
        except Exception:  # the lock goes stale and can be broken by the next run
            pass

    # -- protocol -------------------------------------------------------------

    def ledger_last(self) -> LedgerRecord | None:
        rows = self._run(
            f"MATCH (m:{LEDGER_LABEL} {{migration_id: $mid}}) RETURN m ORDER BY m.applied_at DESC LIMIT 1",
            mid=self.decl.migration_id,
        )
        if not rows:
            return None
        m = dict(rows[0]["m"])
        kw: dict[str, Any] = {k: m.get(k) for k in _LEDGER_FIELDS}
        kw["artifacts"] = json.loads(m.get("artifacts") or "{}")
        kw["applied_at"] = m.get("applied_at") or ""
        return LedgerRecord(**kw)

    def baseline(self) -> Baseline:
        return self.store.capture(self._run, self.decl)

    def _statements(self, artifacts: list[Artifact]) -> Iterator[tuple[Artifact, CypherStatement]]:
        for art in artifacts:
            for st in split_cypher(art.text, display(art.path)):
                yield art, st

    def _execute(self, artifacts: list[Artifact]) -> ApplyOutcome:
        import neo4j
        import neo4j.exceptions as nx

        statements = list(self._statements(artifacts))
        counters = dict.fromkeys(COUNTER_NAMES, 0)
        started = time.monotonic()
        n = 0
        for art, st in statements:
            n += 1
            try:
                query = neo4j.Query(st.text, timeout=self._timeout) if self._timeout else st.text
                with self._session() as s:
                    summary = s.run(query).consume()
            except (nx.Neo4jError, nx.DriverError) as exc:
                self.counters = counters
                return ApplyOutcome(
                    ok=False,
                    error=f"statement {n} of {art.rel} (line {st.line}): {_neo_error(exc)}",
                    statements_run=n - 1,
                    facts={"counters": dict(counters)},
                )
            for k in COUNTER_NAMES:
                counters[k] += int(getattr(summary.counters, k, 0) or 0)
        self.counters = counters
        return ApplyOutcome(
            ok=True,
            statements_run=n,
            facts={"counters": dict(counters)},
            metrics={"apply_seconds": round(time.monotonic() - started, 3)},
        )

    def apply(self) -> ApplyOutcome:
        return self._execute(self.bundle.by_role("forward"))

    def rollback(self) -> ApplyOutcome:
        return self._execute(self.bundle.by_role("rollback"))

    def facts(self, pre: Baseline, post: Baseline) -> dict[str, Any]:
        inv = self.decl.invariants
        exclusive: dict[str, int] = {}
        for a, b in inv.exclusive_labels:
            rows = self._run(f"MATCH (n:{_quote(a)}:{_quote(b)}) RETURN count(n) AS c")
            exclusive[f"{a}|{b}"] = int(rows[0]["c"])
        required: dict[str, int] = {}
        for rr in inv.required_relationships:
            pattern = {"out": "-[:{t}]->()", "in": "<-[:{t}]-()", "any": "-[:{t}]-()"}[rr.direction]
            rel = pattern.format(t=_quote(rr.type))
            rows = self._run(f"MATCH (n:{_quote(rr.label)}) WHERE NOT (n){rel} RETURN count(n) AS c")
            required[f"{rr.label}-{rr.type}-{rr.direction}"] = int(rows[0]["c"])
        return {"counters": dict(self.counters), "exclusive_labels": exclusive, "required_relationships": required}

    def record(self, rec: LedgerRecord) -> None:
        props: dict[str, Any] = {k: getattr(rec, k) for k in _LEDGER_FIELDS}
        props["artifacts"] = json.dumps(rec.artifacts, sort_keys=True)
        props["applied_at"] = rec.applied_at or datetime.now(UTC).isoformat(timespec="microseconds")
        props = {k: v for k, v in props.items() if v is not None}
        self._write(f"CREATE (m:{LEDGER_LABEL}) SET m = $props", props=props)

    def set_receipt_digest(self, run_id: str, digest: str) -> None:
        self._write(f"MATCH (m:{LEDGER_LABEL} {{run_id: $run}}) SET m.receipt_digest = $d", run=run_id, d=digest)

    def commit(self) -> None:
        """Every statement committed already (non-transactional)."""

    def abort(self) -> None:
        """Nothing to undo here: the lifecycle compensates with the rollback artifact."""
