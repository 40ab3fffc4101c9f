"""Baselines of a graph: schema, counts, protected nodes and guarded property keys, read in
one transaction, fingerprinted so that the gate can compare pre and post.

What is read: ``SHOW CONSTRAINTS``, ``SHOW INDEXES`` and one read of the tokens in use, the
count store per label and relationship type, every node of every protected label and every
relationship attached to one, the property keys of the other guarded labels and types, and
the ledger nodes. Nothing outside the guarded labels and types is scanned.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

from airflow_kfm_migrations.contracts.models import Baseline, BaselineObject, GraphDeclaration
from airflow_kfm_migrations.declaration.approvals import approval_covers
from airflow_kfm_migrations.declaration.bundle import Bundle
from airflow_kfm_migrations.errors import RefusedError
from airflow_kfm_migrations.stores.graph.client import RunQuery
from airflow_kfm_migrations.stores.graph.cypher import quote
from airflow_kfm_migrations.stores.graph.digests import digest, jsonable, node_digests, relationship_digests
from airflow_kfm_migrations.stores.graph.governance import GOVERNANCE_LABELS, LEDGER_LABEL
from airflow_kfm_migrations.stores.graph.scope import GraphScope, object_names
from airflow_kfm_migrations.util.digest import digest_json, merkle_root

# Data, not schema: left out of the schema fingerprint.
COUNT_KINDS = frozenset({"label_count", "rel_count", "nodes", "relationships"})
# The server version and the tokens in use (labels, relationship types, property keys).
TOKENS = (
    "COLLECT { CALL dbms.components() YIELD name, versions, edition RETURN [name, versions, edition] } "
    "AS components, COLLECT { CALL db.labels() YIELD label RETURN label } AS labels, "
    "COLLECT { CALL db.relationshipTypes() YIELD relationshipType AS t RETURN t } AS types, "
    "COLLECT { CALL db.propertyKeys() YIELD propertyKey AS k RETURN k } AS keys"
)
Tokens = tuple[tuple[str, ...], tuple[str, ...]]  # (labels but the governance ones, relationship types)


def tokens_in_use(row: dict[str, Any]) -> Tokens:
    """The labels (but the governance ones) and relationship types a ``TOKENS`` row lists."""
    return tuple(sorted(x for x in row["labels"] if x not in GOVERNANCE_LABELS)), tuple(sorted(row["types"]))


def guarded_reads(
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


def protected_nodes_query(label: str) -> str:
    """The nodes of a protected label, one ``[labels, properties]`` row each."""
    return f"MATCH (n:{quote(label)}) RETURN [labels(n), properties(n)]"


def protected_relationships_query(label: str) -> str:
    """Every relationship attached to a node of a protected label, one
    ``[labels, properties, type, outgoing, relationship properties, other end's elementId]``
    row each (``relationship_digests``). The hint keeps the planner from scanning every
    relationship of the graph when it guesses that to be cheaper."""
    return (
        f"MATCH (n:{quote(label)})-[r]-(m) USING SCAN n:{quote(label)} "
        "RETURN [labels(n), properties(n), type(r), startNode(r) = n, properties(r), elementId(m)]"
    )


def read_query(scope: GraphScope, labels: tuple[str, ...], rel_types: tuple[str, ...]) -> str:
    protected, keyed = guarded_reads(scope, labels, rel_types)
    patterns = {"node": "(n:{})", "relationship": "()-[n:{}]->()"}
    columns = {
        "label_counts": [f"COUNT {{ MATCH (n:{quote(x)}) }}" for x in labels],
        "rel_counts": [f"COUNT {{ MATCH ()-[r:{quote(t)}]->() }}" for t in rel_types],
        "protected_nodes": [f"COLLECT {{ {protected_nodes_query(x)} }}" for x in protected],
        "protected_rels": [f"COLLECT {{ {protected_relationships_query(x)} }}" for x in protected],
        "guarded_keys": [
            f"COLLECT {{ MATCH {patterns[e].format(quote(x))} UNWIND keys(n) AS k RETURN DISTINCT k }}"
            for e, x in keyed
        ],
    }
    lists = ", ".join(f"[{', '.join(items)}] AS {name}" for name, items in columns.items())
    return f"RETURN {TOKENS}, {lists}, COLLECT {{ MATCH (m:{LEDGER_LABEL}) RETURN properties(m) }} AS ledger"


class BaselineReader:
    """Takes baselines of one store, naming in the count-store read the labels and types
    that its last baseline found in use (``tokens``)."""

    def __init__(self) -> None:
        self.tokens: Tokens | None = None

    def capture(self, run: RunQuery, decl: GraphDeclaration) -> Baseline:
        """Baseline through ``run(query, **params) -> records as dicts``, in three queries:

        1. ``SHOW CONSTRAINTS YIELD *`` and 2. ``SHOW INDEXES YIELD *`` (Neo4j 5 composes a SHOW
           command with no other clause);
        3. one read (one transaction): the server version and the labels, relationship types
           and property keys in use; the count store per label and relationship type; every
           node of every protected label (labels and full property map) and every relationship
           attached to one; the property keys of the other guarded labels and types; the ledger
           nodes.

        Count-store reads need the labels and types written in the query: it names those the
        last baseline of this store found in use, and is read again with the ones it reports
        when they differ. The first baseline of a store asks for them first (four queries).

        Nothing else is read: no label or type outside the guarded ones is scanned."""
        scope = GraphScope(decl)
        constraints = run("SHOW CONSTRAINTS YIELD *")
        indexes = run("SHOW INDEXES YIELD *")
        tokens = self.tokens or tokens_in_use(run(f"RETURN {TOKENS}")[0])
        for _attempt in range(5):
            data = run(read_query(scope, *tokens))[0]
            if tokens_in_use(data) == tokens:
                break
            tokens = tokens_in_use(data)  # a label or type appeared or went away: read again
        else:
            raise RefusedError("the labels and relationship types in use kept changing during the baseline")
        self.tokens = tokens
        labels, rel_types = tokens
        version = " ".join(f"{c[0]} {'/'.join(c[1])} {c[2]}" for c in data["components"]) or "Neo4j"
        protected_labels, keyed = guarded_reads(scope, *tokens)

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
                k: jsonable(c.get(k))
                for k in ("name", "type", "entityType", "labelsOrTypes", "properties", "propertyType")
            }
            definition["options"] = jsonable(c.get("options"))
            objects.append(
                BaselineObject(
                    id=f"constraint:{c['name']}",
                    kind="constraint",
                    schema=entity,
                    table="|".join(names) or None,
                    digest=digest(definition),
                    protected=guarded(entity, names),
                )
            )
        for ix in indexes:
            if ix.get("owningConstraint") or governance(ix.get("labelsOrTypes")):
                continue  # a constraint's backing index is part of the constraint
            entity = "relationship" if ix.get("entityType") == "RELATIONSHIP" else "node"
            names = list(ix.get("labelsOrTypes") or [])
            definition = {
                k: jsonable(ix.get(k))
                for k in ("name", "type", "entityType", "labelsOrTypes", "properties", "indexProvider", "options")
            }
            objects.append(
                BaselineObject(
                    id=f"index:{ix['name']}",
                    kind="index",
                    schema=entity,
                    table="|".join(names) or None,
                    digest=digest(definition),
                    protected=guarded(entity, names),
                )
            )
        rows: dict[str, int] = {}
        keys: dict[tuple[str, str], list[str]] = {
            (e, x): sorted(ks) for (e, x), ks in zip(keyed, data["guarded_keys"], strict=True)
        }
        nodes = dict(zip(protected_labels, data["protected_nodes"], strict=True))
        rels = dict(zip(protected_labels, data["protected_rels"], strict=True))
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
                    digest=digest(count),
                    protected=scope.guarded("node", label),
                )
            )
            if label in nodes:
                # One digest per node over its labels and full property map, sorted: the
                # fingerprint depends on neither the order nor the elementIds of the nodes.
                digests = node_digests(nodes[label])
                rows[label] = len(digests)
                objects.append(
                    BaselineObject(
                        id=f"nodes:{label}",
                        kind="nodes",
                        schema="node",
                        table=label,
                        digest=digest(digests),
                        protected=True,
                    )
                )
            if rels.get(label):
                # A protected node's relationships are part of it: deleting, creating or
                # re-pointing one changes the protected domain (see relationship_digests).
                objects.append(
                    BaselineObject(
                        id=f"relationships:{label}",
                        kind="relationships",
                        schema="node",
                        table=label,
                        digest=digest(relationship_digests(rels[label])),
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
                    digest=digest(count),
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
                    digest=digest(names),
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
        ledger = sorted(digest(p) for p in data["ledger"])
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
                "governance": {"schema": gov_schema, "ledger_nodes": len(ledger), "ledger_digest": digest(ledger)},
                "property_key_tokens": sorted(data["keys"]),
            },
        )


def scope_fingerprint(bundle: Bundle, baseline: Baseline) -> str:
    """The digest of the baseline objects wholly within the allowed labels and types."""
    decl = bundle.declaration
    assert isinstance(decl, GraphDeclaration)
    scope = GraphScope(decl)
    return merkle_root(
        digest_json([o.id, o.digest])
        for o in baseline.objects
        if object_names(o) and all(scope.allowed(o.schema_ or "node", x) for x in object_names(o))
    )


def guarded_labels(run: RunQuery, decl: GraphDeclaration, pre: Baseline | None = None) -> list[str]:
    """The protected labels that no approval covers: those in use, those named without a
    glob, and those ``pre`` holds nodes of (governance labels never)."""
    scope = GraphScope(decl)
    in_use = {r["label"] for r in run("CALL db.labels() YIELD label RETURN label")}
    named = {x for x in decl.scope.protected_labels if not any(c in x for c in "*?[")}
    held = {o.table for o in (pre.objects if pre else []) if o.kind in {"nodes", "relationships"} and o.table}
    return [
        x
        for x in sorted(in_use | named | held)
        if scope.protected_label(x) and x not in GOVERNANCE_LABELS and not approval_covers(decl, f"protected:{x}")
    ]


def protected_changed(run: RunQuery, decl: GraphDeclaration, pre: Baseline) -> str | None:
    """The first protected label whose nodes (labels and full property maps) or whose
    nodes' relationships, read through ``run``, differ from ``pre``, unless an approval
    covers it. Run inside a statement's transaction, before it commits: the digests are the
    baseline's ``nodes:<label>`` and ``relationships:<label>`` digests."""
    before = {(o.kind, o.table): o.digest for o in pre.objects if o.kind in {"nodes", "relationships"} and o.table}
    for label in guarded_labels(run, decl, pre):
        nodes = [r["x"] for r in run(f"{protected_nodes_query(label)} AS x")]
        if (digest(node_digests(nodes)) if nodes else None) != before.get(("nodes", label)):
            return label
        rels = [r["x"] for r in run(f"{protected_relationships_query(label)} AS x")]
        if (digest(relationship_digests(rels)) if rels else None) != before.get(("relationships", label)):
            return label
    return None
