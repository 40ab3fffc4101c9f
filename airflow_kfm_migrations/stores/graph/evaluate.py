"""The gate's graph-specific judgement: the observed changes against the declared scope,
the write counters against the declared limits, the governance state, and the invariants.

``invariant_facts`` reads what the invariants need from the graph after the forward;
``evaluate`` is pure.
"""

from __future__ import annotations

from typing import Any

from airflow_kfm_migrations.contracts.models import Baseline, Finding, GraphDeclaration, LimitCheck
from airflow_kfm_migrations.declaration.bundle import Bundle
from airflow_kfm_migrations.evidence.diff import diff_objects
from airflow_kfm_migrations.evidence.limits import limit_checks
from airflow_kfm_migrations.stores.graph.client import RunQuery
from airflow_kfm_migrations.stores.graph.cypher import quote
from airflow_kfm_migrations.stores.graph.governance import LEDGER_LABEL
from airflow_kfm_migrations.stores.graph.scope import GraphScope, object_names


def evaluate(
    bundle: Bundle, pre: Baseline, post: Baseline, facts: dict[str, Any]
) -> tuple[list[Finding], list[LimitCheck]]:
    """Findings and limit checks of a migration that took the graph from ``pre`` to ``post``
    (``facts``: the session's counters and ``invariant_facts``)."""
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
        names = object_names(obj)
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
                Finding(code="constraint_dropped", tier="review_required", object=c.id, message="constraint dropped")
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
            counters.get(k, 0) for k in ("constraints_added", "constraints_removed", "indexes_added", "indexes_removed")
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
    new_keys = sorted(set(post.extra.get("property_key_tokens", [])) - set(pre.extra.get("property_key_tokens", [])))
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


def invariant_facts(run: RunQuery, decl: GraphDeclaration) -> dict[str, Any]:
    """Per exclusive label pair, the nodes that carry both; per required relationship, the
    nodes of its label that lack it."""
    inv = decl.invariants
    exclusive: dict[str, int] = {}
    for a, b in inv.exclusive_labels:
        rows = run(f"MATCH (n:{quote(a)}:{quote(b)}) RETURN count(n) AS c")
        exclusive[f"{a}|{b}"] = int(rows[0]["c"])
    required: dict[str, int] = {}
    for rr in inv.required_relationships:
        pattern = {"out": "-[:{t}]->()", "in": "<-[:{t}]-()", "any": "-[:{t}]-()"}[rr.direction]
        rel = pattern.format(t=quote(rr.type))
        rows = run(f"MATCH (n:{quote(rr.label)}) WHERE NOT (n){rel} RETURN count(n) AS c")
        required[f"{rr.label}-{rr.type}-{rr.direction}"] = int(rows[0]["c"])
    return {"exclusive_labels": exclusive, "required_relationships": required}
