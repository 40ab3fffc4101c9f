"""Neo4j graph store: static plan of Cypher scripts, schema/count/protected-node baselines,
a lock node, the in-store ledger of ``:KfmMigration`` nodes, and compensating rollback.

Neo4j cannot mix schema and data writes in one transaction and cannot roll schema back,
so sessions are non-transactional: every statement runs in its own auto-commit
transaction, and the lifecycle compensates with the rollback artifact when the gate
fails. Before the first write every forward and rollback statement is compiled with
``EXPLAIN`` (schema statements excepted): a statement the server rejects, or whose plan
names a forbidden, unapproved protected or out-of-scope label or relationship type, refuses
the run with the graph unchanged. The ``:KfmLock`` and ``:KfmMigration`` nodes (and their
schema) are governance state: they never appear in baselines or accounting. A killed run is
recovered by running the command again (see ``GraphSession``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import rfc8785

from airflow_kfm_migrations.contracts.models import (
    Baseline,
    BaselineObject,
    DiffSummary,
    Finding,
    GraphDeclaration,
    LimitCheck,
    WriteCount,
)
from airflow_kfm_migrations.declaration.bundle import Artifact, Bundle, display
from airflow_kfm_migrations.declaration.policy import approval_covers
from airflow_kfm_migrations.engine.gate import limit_checks
from airflow_kfm_migrations.errors import LockedError, RefusedError
from airflow_kfm_migrations.evidence.diff import diff_objects
from airflow_kfm_migrations.stores.base import ApplyOutcome, LedgerRecord, Plan, PlannedStatement
from airflow_kfm_migrations.stores.graph.cypher import (
    CypherStatement,
    classify,
    error_line,
    explain_query,
    in_transactions,
    mentions,
    plan_mentions,
    schema_name,
    split_cypher,
    uses_graph,
)
from airflow_kfm_migrations.util.digest import digest_json, merkle_root
from airflow_kfm_migrations.util.secret_scan import redact

LOCK_LABEL = "KfmLock"
LEDGER_LABEL = "KfmMigration"
GOVERNANCE_LABELS = frozenset({LOCK_LABEL, LEDGER_LABEL})
LOCK_KEY = "store"
GOVERNANCE_SCHEMA = frozenset({"kfm_lock_key", "kfm_migration_id"})
LOCK_STALE_SECONDS = int(os.environ.get("KFM_GRAPH_LOCK_STALE_SECONDS", "3600"))  # at import; see below
INFLIGHT_PREFIX = "inflight:"  # (:KfmLock {key: 'inflight:<migration id>'}): an apply under way
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
# The server version and the tokens in use (labels, relationship types, property keys).
_TOKENS = (
    "COLLECT { CALL dbms.components() YIELD name, versions, edition RETURN [name, versions, edition] } "
    "AS components, COLLECT { CALL db.labels() YIELD label RETURN label } AS labels, "
    "COLLECT { CALL db.relationshipTypes() YIELD relationshipType AS t RETURN t } AS types, "
    "COLLECT { CALL db.propertyKeys() YIELD propertyKey AS k RETURN k } AS keys"
)
Tokens = tuple[tuple[str, ...], tuple[str, ...]]  # (labels but the governance ones, relationship types)


def _tokens(row: dict[str, Any]) -> Tokens:
    return tuple(sorted(x for x in row["labels"] if x not in GOVERNANCE_LABELS)), tuple(sorted(row["types"]))


_LEDGER_FIELDS = tuple(LedgerRecord.__dataclass_fields__)

Connect = Callable[[], Any]  # -> neo4j.Driver


def lock_stale_seconds() -> float:
    """``KFM_GRAPH_LOCK_STALE_SECONDS`` (default 3600), read when a lock is found held: a lock
    whose holder showed no sign of life (a statement started, a phase changed) for longer is
    broken by the next run."""
    try:
        return float(os.environ.get("KFM_GRAPH_LOCK_STALE_SECONDS", str(LOCK_STALE_SECONDS)))
    except ValueError:
        return float(LOCK_STALE_SECONDS)


def _host_identity() -> str:
    """This host and PID namespace: a lock holder with the same identity whose PID no longer
    exists is certainly dead (containers sharing a hostname differ in PID namespace)."""
    parts = [socket.gethostname()]
    for path in ("/proc/sys/kernel/random/boot_id",):
        with suppress(OSError):
            parts.append(Path(path).read_text().strip())
    with suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return "|".join(parts)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


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


SAFE_INT = 2**53 - 1  # RFC 8785 numbers are IEEE doubles: larger integers would not be exact


def _jsonable(value: Any) -> Any:
    """The typed JSON form of a value the driver returns, one-to-one: values JSON cannot tell
    apart or carry are tagged maps (Neo4j property values are never maps themselves).

    - integers beyond +-(2**53 - 1) -> ``{"int": "<digits>"}``;
    - floats that are integral (``38.0`` is not the integer ``38`` in Neo4j), ``-0.0``, NaN and
      infinities -> ``{"float": repr}``; any other float stays a JSON number, which never reads
      as an integer;
    - bytes -> ``{"bytes": hex}``; temporal and spatial values -> ``{type name: str(value)}``.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if -SAFE_INT <= value <= SAFE_INT else {"int": str(value)}
    if isinstance(value, float):
        return value if math.isfinite(value) and not value.is_integer() else {"float": repr(value)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value).hex()}
    return {type(value).__name__: str(value)}


def _plain(value: Any) -> bool:
    """True when ``value`` is its own typed JSON form (``_jsonable(value) == value``) and
    sorted-key compact JSON of it is byte for byte RFC 8785: strings, booleans, null, integers
    within +-(2**53 - 1), floats whose shortest ``repr`` RFC 8785 keeps as it is (finite, not
    integral, 1e-4 <= |x| < 1e16: no exponent, no ``.0``), and lists and maps of those whose
    keys are ASCII (so that code point order is RFC 8785's UTF-16 order). Exact types only."""
    t = type(value)
    if t is str or t is bool or value is None:
        return True
    if t is int:
        return -SAFE_INT <= value <= SAFE_INT
    if t is float:
        return 1e-4 <= abs(value) < 1e16 and not value.is_integer()
    if t is dict:
        try:
            if not "".join(value).isascii():
                return False
        except TypeError:  # a key that is not a string
            return False
        items = value.values()
    elif t is list or t is tuple:
        items = value
    else:
        return False
    for v in items:  # noqa: SIM110 (a loop with strings inline is twice as fast as all())
        if type(v) is not str and not _plain(v):
            return False
    return True


_COMPACT = msgspec.json.Encoder(order="sorted").encode


def canonical(value: Any) -> bytes:
    """RFC 8785 (JCS) bytes of ``_jsonable(value)``. When ``_plain(value)`` msgspec writes them
    in C (sorted keys, no whitespace, UTF-8, the same escapes and float digits: a hypothesis
    test in tests/test_graph.py holds the two equal); the ``rfc8785`` package otherwise."""
    if _plain(value):
        with suppress(UnicodeEncodeError):  # lone surrogates: rfc8785 rejects them below
            return _COMPACT(value)
    return rfc8785.dumps(_jsonable(value))


def _digest(value: Any) -> str:
    """``digest.digest_json(_jsonable(value))``, faster."""
    return hashlib.sha256(canonical(value)).hexdigest()


def _plain_properties(props: dict[str, Any]) -> bool:
    """``_plain(props)`` for one property map, with the scalar cases inline (1,000 maps)."""
    try:
        if not "".join(props).isascii():
            return False
    except TypeError:  # a key that is not a string
        return False
    for v in props.values():
        t = type(v)
        if t is str or t is bool:
            continue
        if t is int:
            if -SAFE_INT <= v <= SAFE_INT:
                continue
            return False
        if t is float:
            if 1e-4 <= abs(v) < 1e16 and not v.is_integer():
                continue
            return False
        if t is list and all([type(x) is str for x in v]):
            continue
        if not _plain(v):
            return False
    return True


def _node_digests(nodes: list[list[Any]]) -> list[str]:
    """Sorted digests of protected nodes, one per ``[labels, properties]``: the sha256 of
    ``canonical([sorted labels, full property map])`` (no elementId), so that the list
    depends neither on the order nor on the identity of the nodes."""
    sha256, compact = hashlib.sha256, _COMPACT
    out = []
    for labels, props in nodes:
        if len(labels) > 1:
            labels = sorted(labels)
        item = [labels, props]
        if type(props) is dict and _plain_properties(props) and all([type(x) is str for x in labels]):
            try:
                data = compact(item)
            except UnicodeEncodeError:  # lone surrogates: rfc8785 rejects them
                data = canonical(item)
        else:
            data = canonical(item)
        out.append(sha256(data).hexdigest())
    out.sort()
    return out


# ---------------------------------------------------------------------------- store


class GraphStore:
    kind: ClassVar[str] = "graph"

    def __init__(self, connect: Connect | None, conn_id: str, database: str | None = None) -> None:
        self._connect = connect
        self.conn_id = conn_id
        self.database = database
        self._tokens: Tokens | None = None  # the tokens the last baseline found in use

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

        from airflow_kfm_migrations.util.connections import resolve

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

    def ledger_entry(self, migration_id: str, run_id: str) -> dict[str, Any] | None:
        """The ledger node of one run, read without locks or writes (for ``verify --conn-id``)."""
        if self._connect is None:
            raise RefusedError("this graph store was opened for planning only")
        driver = self._connect()
        try:
            with driver.session(database=self.database, default_access_mode="READ") as s:
                rec = s.run(
                    f"MATCH (m:{LEDGER_LABEL} {{migration_id: $mid, run_id: $run}}) RETURN properties(m) AS p",
                    mid=migration_id,
                    run=run_id,
                ).single()
        except Exception as exc:
            raise RefusedError(f"cannot read the ledger on {self.conn_id}: {_neo_error(exc)}") from None
        finally:
            with suppress(Exception):
                driver.close()
        return dict(rec["p"]) if rec is not None else None

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

    @staticmethod
    def _guarded_reads(
        scope: GraphScope, labels: tuple[str, ...], rel_types: tuple[str, ...]
    ) -> tuple[list[str], list[tuple[str, str]]]:
        """The protected labels (their nodes are read), and the other guarded labels and types
        whose property keys are read; the protected labels' keys come with their nodes.
        Allowed labels are not scanned (a full key scan of 1M nodes costs ~300x the bare count
        queries, and changes to them are in scope anyway). New key tokens anywhere are kept in
        `extra` (not fingerprinted: the token store never forgets a key, so a rollback could
        not return to pre) and reported by the gate."""
        protected = [x for x in labels if scope.protected_label(x)]
        keyed = [("node", x) for x in labels if scope.guarded("node", x) and x not in protected]
        keyed += [("relationship", t) for t in rel_types if scope.guarded("relationship", t)]
        return protected, keyed

    @classmethod
    def _read_query(cls, scope: GraphScope, labels: tuple[str, ...], rel_types: tuple[str, ...]) -> str:
        protected, keyed = cls._guarded_reads(scope, labels, rel_types)
        patterns = {"node": "(n:{})", "relationship": "()-[n:{}]->()"}
        columns = {
            "label_counts": [f"COUNT {{ MATCH (n:{_quote(x)}) }}" for x in labels],
            "rel_counts": [f"COUNT {{ MATCH ()-[r:{_quote(t)}]->() }}" for t in rel_types],
            "protected_nodes": [
                f"COLLECT {{ MATCH (n:{_quote(x)}) RETURN [labels(n), properties(n)] }}" for x in protected
            ],
            "guarded_keys": [
                f"COLLECT {{ MATCH {patterns[e].format(_quote(x))} UNWIND keys(n) AS k RETURN DISTINCT k }}"
                for e, x in keyed
            ],
        }
        lists = ", ".join(f"[{', '.join(items)}] AS {name}" for name, items in columns.items())
        return f"RETURN {_TOKENS}, {lists}, COLLECT {{ MATCH (m:{LEDGER_LABEL}) RETURN properties(m) }} AS ledger"

    def capture(self, run: Callable[..., list[dict[str, Any]]], decl: GraphDeclaration) -> Baseline:
        """Baseline through ``run(query, **params) -> records as dicts``, in three queries:

        1. ``SHOW CONSTRAINTS YIELD *`` and 2. ``SHOW INDEXES YIELD *`` (Neo4j 5 composes a SHOW
           command with no other clause);
        3. one read (one transaction): the server version and the labels, relationship types
           and property keys in use; the count store per label and relationship type; every
           node of every protected label (labels and full property map); the property keys of
           the other guarded labels and types; the ledger nodes.

        Count-store reads need the labels and types written in the query: it names those the
        last baseline of this store found in use, and is read again with the ones it reports
        when they differ. The first baseline of a store asks for them first (four queries).

        Nothing else is read: no label or type outside the guarded ones is scanned."""
        scope = GraphScope(decl)
        constraints = run("SHOW CONSTRAINTS YIELD *")
        indexes = run("SHOW INDEXES YIELD *")
        tokens = self._tokens or _tokens(run(f"RETURN {_TOKENS}")[0])
        for _attempt in range(5):
            data = run(self._read_query(scope, *tokens))[0]
            if _tokens(data) == tokens:
                break
            tokens = _tokens(data)  # a label or type appeared or went away: read again
        else:
            raise RefusedError("the labels and relationship types in use kept changing during the baseline")
        self._tokens = tokens
        labels, rel_types = tokens
        version = " ".join(f"{c[0]} {'/'.join(c[1])} {c[2]}" for c in data["components"]) or "Neo4j"
        protected_labels, keyed = self._guarded_reads(scope, *tokens)

        objects: list[BaselineObject] = []

        def guarded(entity: str, names: list[str]) -> bool:
            return any(scope.guarded(entity, x) for x in names)

        def governance(names: list[str] | None) -> bool:
            return bool(names) and any(x in GOVERNANCE_LABELS for x in names or [])

        for c in constraints:
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
                    digest=_digest(definition),
                    protected=guarded(entity, names),
                )
            )
        for ix in indexes:
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
                    digest=_digest(definition),
                    protected=guarded(entity, names),
                )
            )
        rows: dict[str, int] = {}
        keys: dict[tuple[str, str], list[str]] = {
            (e, x): sorted(ks) for (e, x), ks in zip(keyed, data["guarded_keys"], strict=True)
        }
        nodes = dict(zip(protected_labels, data["protected_nodes"], strict=True))
        for label, count in zip(labels, data["label_counts"], strict=True):
            if label in nodes:
                keys["node", label] = sorted(set(chain.from_iterable(props for _, props in nodes[label])))
            if not count:
                continue
            objects.append(
                BaselineObject(
                    id=f"label_count:{label}",
                    kind="label_count",
                    schema="node",
                    table=label,
                    digest=_digest(count),
                    protected=scope.guarded("node", label),
                )
            )
            if label in nodes:
                # One digest per node over its labels and full property map, sorted: the
                # fingerprint depends on neither the order nor the elementIds of the nodes.
                digests = _node_digests(nodes[label])
                rows[label] = len(digests)
                objects.append(
                    BaselineObject(
                        id=f"nodes:{label}",
                        kind="nodes",
                        schema="node",
                        table=label,
                        digest=_digest(digests),
                        protected=True,
                    )
                )
        for t, count in zip(rel_types, data["rel_counts"], strict=True):
            if not count:
                continue
            objects.append(
                BaselineObject(
                    id=f"rel_count:{t}",
                    kind="rel_count",
                    schema="relationship",
                    table=t,
                    digest=_digest(count),
                    protected=scope.guarded("relationship", t),
                )
            )
        for (entity, name), names in sorted(keys.items(), key=lambda kv: kv[0][1]):
            if not names:
                continue
            objects.append(
                BaselineObject(
                    id=f"property_keys:{'rel:' if entity == 'relationship' else ''}{name}",
                    kind="property_keys",
                    schema=entity,
                    table=name,
                    digest=_digest(names),
                    protected=True,
                )
            )
        objects.sort(key=lambda o: o.id)
        counts: dict[str, int] = {}
        for o in objects:
            counts[o.kind] = counts.get(o.kind, 0) + 1
        leaves = [digest_json([o.id, o.digest]) for o in objects if o.kind not in COUNT_KINDS]
        protected = [digest_json([o.id, o.digest]) for o in objects if o.protected]
        # The lock/ledger schema and the ledger: a migration must never change them.
        gov_schema = sorted(
            r["name"]
            for r in (*constraints, *indexes)
            if not r.get("owningConstraint") and set(r.get("labelsOrTypes") or []) & GOVERNANCE_LABELS
        )
        ledger = sorted(_digest(p) for p in data["ledger"])
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
            extra={
                "governance": {"schema": gov_schema, "ledger_nodes": len(ledger), "ledger_digest": _digest(ledger)},
                "property_key_tokens": sorted(data["keys"]),
            },
        )

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
        limits, exceeded = limit_checks(
            decl.limits,
            {
                "max_nodes_changed": nodes_changed,
                "max_relationships_changed": rels_changed,
                "max_schema_delta": schema_delta,
            },
        )
        findings.extend(exceeded)
        new_keys = sorted(
            set(post.extra.get("property_key_tokens", [])) - set(pre.extra.get("property_key_tokens", []))
        )
        if new_keys:
            findings.append(
                Finding(
                    code="new_property_keys",
                    tier="informational",
                    object=", ".join(new_keys[:10]),
                    message=f"{len(new_keys)} property key(s) used for the first time in this graph",
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
    """Holds the ``:KfmLock`` node from ``open`` to ``release``; every statement autocommits.

    What a user does after a killed graph run (SIGKILL, OOM kill, lost worker, power cut)
    -------------------------------------------------------------------------------------
    Nothing by hand: run the same command again (``kfm-migrations run <bundle>`` or
    ``kfm-migrations rollback <bundle>``, or clear the Airflow task).

    1. The dead run's lock (``:KfmLock {key: 'store'}``) is broken at once when its process is
       gone on this host (same hostname, boot id and PID namespace, PID no longer exists);
       otherwise once it showed no sign of life for ``KFM_GRAPH_LOCK_STALE_SECONDS``
       (default 3600; the heartbeat is written before every statement). Until then the run
       refuses with a message naming the holder, its phase and when the lock goes stale.
    2. Before its first write an apply records ``(:KfmLock {key: 'inflight:<migration>'})``
       with the pre-baseline's schema and protected fingerprints; it is removed only when the
       run is recorded in the ledger or compensated and verified. When the next run (of the
       same migration) finds it, it compensates first: it runs the rollback artifact (after
       an EXPLAIN preflight) and checks that the graph's schema and protected fingerprints
       equal that pre-baseline. It then stops with a failed receipt explaining what was
       done ("… compensated … run the command again"); nothing else is changed.
    3. Run the command again: ``run`` applies from the clean pre-state and ends in the
       approved post-state (gate, ledger, receipt); ``rollback`` is then a no-op (the graph
       already equals the pre-state; the interrupted apply never reached the ledger).

    If the compensation does not restore the pre-baseline (a rollback artifact that fails,
    or is not idempotent over a half-applied forward), the in-flight record is kept and every
    run of the migration retries the compensation and refuses, naming it: fix the rollback
    artifact, or repair the graph by hand (compare with the pre-baseline) and delete the
    ``inflight:`` node. A run of another migration refuses while an in-flight record
    exists: recover that migration first with its own bundle. ``kfm-migrations break-lock``
    removes only the store lock, never the in-flight record. A killed manual ``rollback``
    leaves the ledger at ``apply``: run the rollback again (rollback artifacts are idempotent).
    """

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
        self._last_baseline: Baseline | None = None
        self._phase = "open"
        self._inflight = False
        self._checked: set[str] = set()  # roles that passed the EXPLAIN preflight

    # -- plumbing -------------------------------------------------------------

    def _session(self) -> Any:
        kw: dict[str, Any] = {"notifications_min_severity": "OFF"}
        if self.store.database:
            kw["database"] = self.store.database
        return self.driver.session(**kw)

    def _run(self, query: str, **params: Any) -> list[dict[str, Any]]:
        """Records as dicts of the driver's values (``dict(record)``, not ``record.data()``,
        which walks every value again in Python: 1,000 protected nodes cost ~20 ms more)."""
        with self._session() as s:
            return [dict(r) for r in s.run(query, params)]

    def _write(self, query: str, **params: Any) -> Any:
        with self._session() as s:
            return s.run(query, params).consume()

    @property
    def _inflight_key(self) -> str:
        return INFLIGHT_PREFIX + self.decl.migration_id

    def open(self) -> None:
        import neo4j.exceptions as nx

        try:
            self.driver.verify_connectivity()
            self._write(f"CREATE CONSTRAINT kfm_lock_key IF NOT EXISTS FOR (l:{LOCK_LABEL}) REQUIRE l.key IS UNIQUE")
            self._write(f"CREATE INDEX kfm_migration_id IF NOT EXISTS FOR (m:{LEDGER_LABEL}) ON (m.migration_id)")
            self._acquire(nx)
            self._recover_interrupted()
        except LockedError:
            raise
        except (nx.Neo4jError, nx.DriverError) as exc:
            raise RefusedError(f"cannot prepare the run on {self.store.conn_id}: {_neo_error(exc)}") from None

    def _lock_props(self) -> dict[str, Any]:
        return {
            "key": LOCK_KEY,
            "migration_id": self.decl.migration_id,
            "run_id": self.run_id,
            "host": _host_identity(),
            "pid": os.getpid(),
            "phase": "open",
        }

    def _stale(self, h: dict[str, Any]) -> str | None:
        """Why the holder ``h`` is dead (None: it may be alive)."""
        pid = h.get("pid")
        if h.get("host") and h["host"] == _host_identity() and isinstance(pid, int) and not _pid_alive(pid):
            return f"its process {pid} on this host is gone"
        limit = lock_stale_seconds()
        age = (h.get("age") or 0) / 1000
        if h.get("age") is not None and age > limit:
            return f"no sign of life for {age:.0f}s > KFM_GRAPH_LOCK_STALE_SECONDS={limit:g}"
        return None

    def _acquire(self, nx: Any) -> None:
        for _attempt in range(3):
            try:
                self._write(
                    f"CREATE (l:{LOCK_LABEL}) SET l = $props, l.acquired_at = timestamp(), l.heartbeat = timestamp()",
                    props=self._lock_props(),
                )
                self._locked = True
                return
            except nx.ConstraintError:
                held = self._run(
                    f"MATCH (l:{LOCK_LABEL} {{key: $key}}) RETURN l.migration_id AS mid, l.run_id AS run, "
                    "l.phase AS phase, l.host AS host, l.pid AS pid, "
                    "timestamp() - coalesce(l.heartbeat, l.acquired_at) AS age",
                    key=LOCK_KEY,
                )
                if not held:
                    continue  # released meanwhile: try again
                h = held[0]
                why = self._stale(h)
                if why is None:
                    age = (h.get("age") or 0) / 1000
                    raise LockedError(
                        f"another run ({h['mid']}, run {str(h['run'])[:12]}, phase {h.get('phase') or '?'}) holds "
                        f"the graph lock on {self.store.conn_id}; refusing to run concurrently. If that run was "
                        f"killed, the lock is broken by the next run once its process is gone (same host) or "
                        f"after {lock_stale_seconds():g}s without a sign of life (KFM_GRAPH_LOCK_STALE_SECONDS; "
                        f"last one {age:.0f}s ago)"
                    ) from None
                # Take the dead run's lock over (atomic: only if it is still that run's lock).
                taken = self._run(
                    f"MATCH (l:{LOCK_LABEL} {{key: $key, run_id: $old}}) "
                    "SET l = $props, l.acquired_at = timestamp(), l.heartbeat = timestamp(), "
                    "l.broken_from = $old, l.broken_because = $why RETURN count(l) AS n",
                    key=LOCK_KEY,
                    old=h["run"],
                    props=self._lock_props(),
                    why=why,
                )
                if taken and taken[0]["n"] == 1:
                    self._locked = True
                    return
        raise LockedError(f"could not take the graph lock on {self.store.conn_id}")

    def _set_lock(self, **props: Any) -> bool:
        """Update our lock node (a heartbeat with it); False when the lock is no longer ours."""
        rows = self._run(
            f"MATCH (l:{LOCK_LABEL} {{key: $key, run_id: $run}}) SET l += $props, l.heartbeat = timestamp() "
            "RETURN count(l) AS n",
            key=LOCK_KEY,
            run=self.run_id,
            props=props,
        )
        return bool(rows and rows[0]["n"] == 1)

    def release(self) -> None:
        if not self._locked:
            return
        try:
            self._write(f"MATCH (l:{LOCK_LABEL} {{key: $key, run_id: $run}}) DELETE l", key=LOCK_KEY, run=self.run_id)
            self._locked = False
        except Exception:  # the lock goes stale and can be broken by the next run
            pass

    # -- interrupted runs -----------------------------------------------------

    def _recover_interrupted(self) -> None:
        """With the lock held: an ``inflight:`` record is an apply that never finished."""
        rows = self._run(
            f"MATCH (l:{LOCK_LABEL}) WHERE l.key STARTS WITH $prefix RETURN properties(l) AS p, "
            "timestamp() - coalesce(l.heartbeat, l.started_at) AS age ORDER BY l.key",
            prefix=INFLIGHT_PREFIX,
        )
        for row in rows:
            rec = dict(row["p"])
            mid, run = str(rec.get("migration_id")), str(rec.get("run_id"))
            where = (
                f"run {run[:12]} of {mid} was interrupted while {rec.get('phase', 'applying')} "
                f"(statement {rec.get('statement', 0)} of {rec.get('statements', '?')}, "
                f"last sign of life {(row.get('age') or 0) / 1000:.0f}s ago)"
            )
            if mid != self.decl.migration_id:
                raise LockedError(
                    f"{where} and the graph may be half migrated; recover it first: run `kfm-migrations run` "
                    f"or `kfm-migrations rollback` on the bundle of {mid}"
                )
            self._stop_orphans(run, where)
            self._phase = "compensating"
            self._inflight = True
            outcome = self._run_role("rollback")
            after = self.baseline()
            problems = []
            if not outcome.ok:
                problems.append(outcome.error or "the rollback artifact failed")
            if after.schema_fingerprint != rec.get("pre_schema_fingerprint"):
                problems.append("schema fingerprint differs")
            if after.protected_fingerprint != rec.get("pre_protected_fingerprint"):
                problems.append("protected fingerprint differs")
            if problems:
                self._write(
                    f"MATCH (l:{LOCK_LABEL} {{key: $key}}) SET l.compensation_failed = $why",
                    key=self._inflight_key,
                    why="; ".join(problems),
                )
                raise LockedError(
                    f"{where}; compensating it with the rollback artifact did not restore its pre-baseline "
                    f"({'; '.join(problems)}); the in-flight record is kept and every run of this migration retries; "
                    f"fix the rollback artifact, or repair the graph by hand and delete "
                    f"(:{LOCK_LABEL} {{key: '{self._inflight_key}'}})"
                )
            self._write(f"MATCH (l:{LOCK_LABEL} {{key: $key}}) DELETE l", key=self._inflight_key)
            self._inflight = False
            raise LockedError(
                f"{where}; its changes were compensated now with the rollback artifact and the graph equals that "
                "run's pre-baseline (schema and protected fingerprints verified); nothing else was done: "
                "run the command again"
            )

    def _stop_orphans(self, run: str, where: str) -> None:
        """A dead client's statement normally ends with its connection; one that still runs on
        the server (a partitioned client) is terminated before compensating."""
        query = (
            "SHOW TRANSACTIONS YIELD transactionId, metaData WHERE metaData.kfm_run_id = $run "
            "RETURN transactionId AS id"
        )
        deadline = time.monotonic() + 30
        while ids := [r["id"] for r in self._run(query, run=run)]:
            if time.monotonic() > deadline:
                raise LockedError(f"{where}; its statements still run on the server ({', '.join(ids)}); try later")
            self._run("TERMINATE TRANSACTIONS $ids", ids=ids)
            time.sleep(0.5)

    # -- EXPLAIN preflight ----------------------------------------------------

    def preflight(self, roles: tuple[str, ...]) -> str | None:
        """EXPLAIN every non-schema statement of ``roles`` (nothing runs): a statement the server
        cannot compile, or whose plan names a forbidden, protected (unapproved) or out-of-scope
        label or relationship type, refuses the run. Returns the problem, or None.

        Schema statements cannot be EXPLAINed; the static plan checked them."""
        import neo4j.exceptions as nx

        scope = GraphScope(self.decl)
        for role in roles:
            if role in self._checked:
                continue
            n = 0
            for art, st in self._statements(self.bundle.by_role(role)):
                n += 1
                if st.kind == "schema":
                    continue
                try:
                    with self._session() as s:
                        summary = s.run(explain_query(st)).consume()
                except nx.Neo4jError as exc:
                    message = str(getattr(exc, "message", None) or "")
                    line, text = error_line(st, message)
                    code = getattr(exc, "code", None)
                    safe = redact(f"{code}: {_VALUE.sub(' = <value>', text)[:300]}") if code and message else None
                    safe = safe or _neo_error(exc)
                    return f"EXPLAIN preflight: {art.rel} line {line} (statement {n} of the {role}): {safe}"
                except nx.DriverError as exc:
                    return f"EXPLAIN preflight: {art.rel} line {st.line}: {_neo_error(exc)}"
                labels, types = plan_mentions(summary.plan)
                hard = [f for f in GraphStore._plan_scope(self.decl, scope, n, labels, types) if f.tier == "hard_fail"]
                if hard:
                    return (
                        f"EXPLAIN preflight: {art.rel} line {st.line} (statement {n} of the {role}): "
                        f"the server's plan shows it {hard[0].message.removeprefix(f'statement {n} ')}"
                    )
            self._checked.add(role)
        return None

    # -- protocol -------------------------------------------------------------

    def ledger_last(self) -> LedgerRecord | None:
        rows = self._run(
            f"MATCH (m:{LEDGER_LABEL} {{migration_id: $mid}}) RETURN properties(m) AS p "
            "ORDER BY m.applied_at DESC LIMIT 1",
            mid=self.decl.migration_id,
        )
        if not rows:
            return None
        m = dict(rows[0]["p"])
        kw: dict[str, Any] = {k: m.get(k) for k in _LEDGER_FIELDS}
        kw["artifacts"] = json.loads(m.get("artifacts") or "{}")
        kw["applied_at"] = m.get("applied_at") or ""
        return LedgerRecord(**kw)

    def baseline(self) -> Baseline:
        self._last_baseline = self.store.capture(self._run, self.decl)
        return self._last_baseline

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

        def stopped(error: str) -> ApplyOutcome:
            """Statement ``n`` did not complete: report the counters of those before it."""
            self.counters = counters
            return ApplyOutcome(ok=False, error=error, statements_run=n - 1, facts={"counters": dict(counters)})

        for art, st in statements:
            n += 1
            try:
                if not self._set_lock(statement=n, statements=len(statements), phase=self._phase):
                    return stopped(
                        f"before statement {n} of {art.rel}: the graph lock is no longer this run's "
                        "(broken as stale by another run); stopped"
                    )
                if self._inflight:
                    self._write(
                        f"MATCH (l:{LOCK_LABEL} {{key: $key}}) SET l.statement = $n, l.statements = $total, "
                        "l.phase = $phase, l.heartbeat = timestamp()",
                        key=self._inflight_key,
                        n=n,
                        total=len(statements),
                        phase=self._phase,
                    )
                # Tagged: a recovery can find (and terminate) statements of a run that died.
                meta = {"kfm_run_id": self.run_id, "kfm_migration_id": self.decl.migration_id}
                kind, _name = classify(st.masked)
                if self._phase == "applying" and kind != "schema" and not in_transactions(st.masked):
                    # A data statement runs in its own transaction, and the protected nodes are
                    # compared with the pre-baseline before it commits: a protected change
                    # that only the observed state reveals never reaches the store.
                    with self._session() as s, s.begin_transaction(timeout=self._timeout, metadata=meta) as tx:
                        summary = tx.run(st.text).consume()
                        touched = self._protected_touched(tx) if summary.counters.contains_updates else None
                        if touched is not None:
                            tx.rollback()
                            return stopped(
                                f"statement {n} of {art.rel} (line {st.line}) changed protected :{touched} "
                                "nodes without an approval; its transaction was rolled back before commit"
                            )
                        tx.commit()
                else:
                    query = neo4j.Query(st.text, timeout=self._timeout, metadata=meta)
                    with self._session() as s:
                        summary = s.run(query).consume()
            except (nx.Neo4jError, nx.DriverError) as exc:
                return stopped(f"statement {n} of {art.rel} (line {st.line}): {_neo_error(exc)}")
            for k in COUNTER_NAMES:
                counters[k] += int(getattr(summary.counters, k, 0) or 0)
        self.counters = counters
        return ApplyOutcome(
            ok=True,
            statements_run=n,
            facts={"counters": dict(counters)},
            metrics={"apply_seconds": round(time.monotonic() - started, 3)},
        )

    def _protected_touched(self, tx: Any) -> str | None:
        """Inside a statement's transaction: the first protected label whose nodes (labels and
        full property maps) differ from the pre-baseline, unless an approval covers it."""
        pre = self._last_baseline
        if pre is None:
            return None
        before = {o.table: o.digest for o in pre.objects if o.kind == "nodes" and o.table}
        scope = GraphScope(self.decl)
        in_use = {r["label"] for r in tx.run("CALL db.labels() YIELD label RETURN label")}
        named = {x for x in self.decl.scope.protected_labels if not any(c in x for c in "*?[")}
        for label in sorted(in_use | named | set(before)):
            if not scope.protected_label(label) or approval_covers(self.decl, f"protected:{label}"):
                continue
            nodes = [r["x"] for r in tx.run(f"MATCH (n:{_quote(label)}) RETURN [labels(n), properties(n)] AS x")]
            if (_digest(_node_digests(nodes)) if nodes else None) != before.get(label):
                return label
        return None

    def _run_role(self, role: str) -> ApplyOutcome:
        problem = self.preflight((role,))
        if problem:
            return ApplyOutcome(ok=False, error=f"{problem}; nothing was run", statements_run=0)
        return self._execute(self.bundle.by_role(role))

    def apply(self) -> ApplyOutcome:
        """EXPLAIN preflight of the forward and rollback (a refusal raises: nothing was written,
        there is nothing to compensate), the in-flight record, then the forward."""
        problem = self.preflight(("forward", "rollback"))
        if problem:
            raise RefusedError(f"{problem}; refused before the first write, the graph is unchanged")
        pre = self._last_baseline or self.baseline()
        self._phase = "applying"
        self._write(
            f"MERGE (l:{LOCK_LABEL} {{key: $key}}) SET l = $props, l.started_at = timestamp(), "
            "l.heartbeat = timestamp()",
            key=self._inflight_key,
            props={
                "key": self._inflight_key,
                "migration_id": self.decl.migration_id,
                "run_id": self.run_id,
                "phase": "applying",
                "bundle_digest": self.bundle.digest,
                "pre_schema_fingerprint": pre.schema_fingerprint,
                "pre_protected_fingerprint": pre.protected_fingerprint,
                "statement": 0,
            },
        )
        self._inflight = True
        return self._execute(self.bundle.by_role("forward"))

    def rollback(self) -> ApplyOutcome:
        self._phase = "compensating" if self._phase == "applying" else "rolling_back"
        return self._run_role("rollback")

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
        self._phase = "recorded"
        self._clear_inflight()

    def _clear_inflight(self) -> None:
        if self._inflight:
            self._write(
                f"MATCH (l:{LOCK_LABEL} {{key: $key, run_id: $run}}) DELETE l", key=self._inflight_key, run=self.run_id
            )
            self._inflight = False

    def set_receipt_digest(self, run_id: str, digest: str) -> None:
        self._write(f"MATCH (m:{LEDGER_LABEL} {{run_id: $run}}) SET m.receipt_digest = $d", run=run_id, d=digest)

    def commit(self) -> None:
        """Every statement committed already (non-transactional). After a compensation the
        lifecycle commits only when the graph equals the pre-baseline: the apply is settled."""
        if self._phase == "compensating":
            self._clear_inflight()
        self._phase = "done"

    def abort(self) -> None:
        """Nothing to undo here: the lifecycle compensates with the rollback artifact. An
        in-flight apply stays recorded until it is compensated or recorded in the ledger."""
