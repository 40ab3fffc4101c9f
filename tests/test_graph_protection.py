"""Nothing protected is lost to statements that commit before the gate (issue #15, part 3):
batched statements (``CALL { … } IN TRANSACTIONS``), schema statements, and the rollback's
statements. Against the real Neo4j (scripts/stores/neo4j.sh), with the fixtures of
tests/test_graph.py; the planning checks at the end need no server.

"Byte for byte": every protected node's labels and properties and every relationship
attached to one are listed by an independent query and compared by ``repr`` (which tells
``1859`` from ``1859.0`` and keeps dates and points), next to the product's protected
fingerprint.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from test_graph import CONN_ID, Graph, append, receipt, run, untouched

# The fixtures of tests/test_graph.py (re-exported, so that pytest finds them here).
from test_graph import gexample as gexample
from test_graph import graph as graph
from test_graph import neo4j_server as neo4j_server

from airflow_kfm_migrations.declaration.bundle import load_bundle
from airflow_kfm_migrations.stores.graph.cypher import schema_targets, split_cypher
from airflow_kfm_migrations.stores.graph.guard import ProtectedGuard
from airflow_kfm_migrations.stores.graph.plan import batched_findings
from airflow_kfm_migrations.stores.graph.store import GraphStore

pytestmark = pytest.mark.neo4j

# Protected nodes with values JSON cannot tell apart (an integral float, a big integer, a
# date, a point), all matched by the attack's property.
SITES = (
    "CREATE (:AuthoritySite {name: 'Bent', region: 'x', since: 1833.0, big: 9007199254740993, "
    "built: date('1833-06-01'), at: point({latitude: 38.04, longitude: -103.43}), tags: ['fort', 'trade']}), "
    "(:AuthoritySite:Heritage {name: 'Dodge', region: 'x', since: 1865})"
)


def protected_state(graph: Graph) -> str:
    """Every protected node (labels, properties) and every relationship attached to one
    (type, properties, ends), by element id, as ``repr``: equal strings are equal values of
    equal types."""
    nodes = graph.q(
        "MATCH (n:AuthoritySite) RETURN elementId(n) AS id, labels(n) AS labels, properties(n) AS props ORDER BY id"
    )
    rels = graph.q(
        "MATCH (n:AuthoritySite)-[r]-() RETURN DISTINCT elementId(r) AS id, type(r) AS type, "
        "properties(r) AS props, elementId(startNode(r)) AS start, elementId(endNode(r)) AS end ORDER BY id"
    )
    for row in nodes:
        row["labels"] = sorted(row["labels"])
        row["props"] = sorted(row["props"].items())
    for row in rels:
        row["props"] = sorted(row["props"].items())
    return repr((nodes, rels))


def protected_fingerprint(graph: Graph, bundle: Path) -> str:
    return str(graph.baseline(bundle).protected_fingerprint)


def honest_run_succeeds(gexample: Path, graph: Graph, tmp_path: Path, forward: str, rollback: str) -> None:
    """The refused run left the store unlocked, with no in-flight record: the bundle as it
    was before the test appended to it applies."""
    assert graph.count("KfmLock") == 0, graph.q("MATCH (l:KfmLock) RETURN properties(l) AS p")
    (gexample / "forward.cypher").write_text(forward)
    (gexample / "rollback.cypher").write_text(rollback)
    out = tmp_path / "honest"
    assert run(gexample, out) == 0, receipt(out)["reason"]
    assert receipt(out)["status"] == "succeeded"
    assert graph.count("Dataset") == 5 and "dataset_id_unique" in graph.constraints()
    assert graph.count("KfmLock") == 0


def scripts(gexample: Path) -> tuple[str, str]:
    return (gexample / "forward.cypher").read_text(), (gexample / "rollback.cypher").read_text()


def set_scope(gexample: Path, old: str, new: str) -> None:
    decl = (gexample / "migration.yml").read_text()
    assert old in decl
    (gexample / "migration.yml").write_text(decl.replace(old, new))


# ------------------------------------------------------------------ batched statements


def test_batched_delete_matched_by_property_is_refused_before_the_first_write(
    gexample: Path, graph: Graph, tmp_path: Path
) -> None:
    """The attack of issue #15: protected nodes matched by a property, never by their label,
    deleted in batches that would commit before any check."""
    graph.q(SITES)
    graph.q("MATCH (n:AuthoritySite {name: 'Fort Larned'}) SET n.region = 'x'")
    graph.q("MATCH (n:Activity) SET n.region = 'x'")
    forward, rollback = scripts(gexample)
    state, fingerprint = protected_state(graph), protected_fingerprint(graph, gexample)
    append(
        gexample,
        "forward.cypher",
        "MATCH (n) WHERE n.region = 'x' CALL { WITH n DETACH DELETE n } IN TRANSACTIONS OF 10 ROWS;",
    )
    out = tmp_path / "out"
    assert run(gexample, out) == 1
    r = receipt(out)
    assert r["status"] == "failed", r["reason"]
    assert r["reason"].startswith("EXPLAIN preflight: forward.cypher line 7 (statement 3 of the forward): ")
    assert "plan_batched_unbound: statement 3 commits in batches (CALL … IN TRANSACTIONS)" in r["reason"]
    assert "binds nodes or relationships of any label (AllNodesScan n)" in r["reason"]
    assert "refused before the first write, the graph is unchanged" in r["reason"]
    untouched(graph)
    assert protected_state(graph) == state
    assert protected_fingerprint(graph, gexample) == fingerprint
    assert graph.count("AuthoritySite") == 3 and graph.count("Activity") == 1
    honest_run_succeeds(gexample, graph, tmp_path, forward, rollback)
    assert protected_state(graph) == state


@pytest.mark.parametrize("on_error", ["", " ON ERROR CONTINUE", " ON ERROR BREAK"])
def test_a_batched_statement_cannot_write_a_protected_node_it_reaches_through_an_allowed_label(
    gexample: Path, graph: Graph, tmp_path: Path, on_error: str
) -> None:
    """A protected node that also carries an allowed label passes any plan check; the guard
    holds its write lock while the batches run. The batch that reaches it waits, the watcher
    stops the statement (its outer transaction: ``ON ERROR CONTINUE`` cannot skip the batch),
    and the run is compensated. The protected node is as it was, byte for byte."""
    graph.q(SITES)
    graph.q("MATCH (n:AuthoritySite {name: 'Bent'}) SET n:Dataset")
    forward, rollback = scripts(gexample)
    state, fingerprint = protected_state(graph), protected_fingerprint(graph, gexample)
    append(
        gexample,
        "forward.cypher",
        f"MATCH (n:Dataset) WHERE n.region = 'x' CALL (n) {{ DETACH DELETE n }} IN TRANSACTIONS OF 1 ROWS{on_error};",
    )
    out = tmp_path / "out"
    assert run(gexample, out) == 1
    r = receipt(out)
    assert r["status"] == "rolled_back", r["reason"]
    assert (
        "forward failed: batched_protected_write: statement 3 of forward.cypher (line 7) commits in batches "
        in (r["reason"])
    )
    assert "it waited for the lock of a protected node; the statement was stopped" in r["reason"]
    assert "compensated by the rollback artifact, store equals pre" in r["reason"]
    assert protected_state(graph) == state
    assert protected_fingerprint(graph, gexample) == fingerprint
    assert graph.count("LegacyDataset") == 5 and "dataset_id_unique" not in graph.constraints()
    assert graph.count("KfmMigration") == 0
    # Nothing of the run is left on the server: no guard, no statement, no lock.
    assert not graph.q("SHOW TRANSACTIONS YIELD metaData WHERE metaData.kfm_run_id IS NOT NULL RETURN metaData")
    graph.q("MATCH (n:AuthoritySite {name: 'Bent'}) REMOVE n:Dataset")
    honest_run_succeeds(gexample, graph, tmp_path, forward, rollback)


def test_a_batched_delete_of_relationships_of_protected_nodes_is_refused(
    gexample: Path, graph: Graph, tmp_path: Path
) -> None:
    """Relationships attached to a protected node are part of it. The type is allowed and
    the statement names no protected label; the guard stops the batch that reaches one."""
    set_scope(gexample, "allowed_relationship_types: []", "allowed_relationship_types: [DERIVED_FROM]")
    set_scope(gexample, "max_relationships_changed: 0", "max_relationships_changed: 10")
    graph.q(
        "MATCH (s:AuthoritySite {name: 'Fort Larned'}), (d:LegacyDataset) "
        "CREATE (d)-[:DERIVED_FROM {since: 1990, share: 1.0}]->(s)"
    )
    forward, rollback = scripts(gexample)
    state, fingerprint = protected_state(graph), protected_fingerprint(graph, gexample)
    append(gexample, "forward.cypher", "MATCH (:Dataset)-[r:DERIVED_FROM]->() CALL (r) { DELETE r } IN TRANSACTIONS;")
    out = tmp_path / "out"
    assert run(gexample, out) == 1
    r = receipt(out)
    assert r["status"] == "rolled_back", r["reason"]
    assert "batched_protected_write: statement 3 of forward.cypher (line 7)" in r["reason"]
    assert protected_state(graph) == state
    assert protected_fingerprint(graph, gexample) == fingerprint
    assert graph.q("MATCH ()-[r:DERIVED_FROM]->() RETURN count(r) AS c") == [{"c": 5}]
    honest_run_succeeds(gexample, graph, tmp_path, forward, rollback)


def test_a_batched_statement_over_allowed_labels_runs(gexample: Path, graph: Graph, tmp_path: Path) -> None:
    """No false refusal: batches over allowed nodes, some of them neighbours of a protected
    node (their relationships to it untouched), commit under the guard."""
    set_scope(gexample, "allowed_relationship_types: []", "allowed_relationship_types: [DERIVED_FROM]")
    graph.q("MATCH (s:AuthoritySite), (d:LegacyDataset {dataset_id: 'ds-1'}) CREATE (d)-[:DERIVED_FROM]->(s)")
    state = protected_state(graph)
    append(gexample, "forward.cypher", "MATCH (n:Dataset) CALL (n) { SET n.checked = true } IN TRANSACTIONS OF 2 ROWS;")
    append(gexample, "rollback.cypher", "MATCH (n:LegacyDataset) REMOVE n.checked;")
    out = tmp_path / "out"
    assert run(gexample, out) == 0, receipt(out)["reason"]
    assert receipt(out)["status"] == "succeeded"
    assert graph.q("MATCH (n:Dataset) RETURN count(n) AS c, collect(DISTINCT n.checked) AS v") == [
        {"c": 5, "v": [True]}
    ]
    assert protected_state(graph) == state
    assert graph.count("KfmLock") == 0


def test_a_batched_statement_is_not_run_while_another_writer_holds_a_protected_node(
    gexample: Path, graph: Graph, tmp_path: Path, neo4j_server: Any
) -> None:
    """The guard cannot take a protected node's lock that another transaction holds: after
    the statement timeout the batched statement is refused without running."""
    set_scope(gexample, "requires_rollback: true", "requires_rollback: true\n\ntimeouts:\n  statement_timeout: 2s")
    append(gexample, "forward.cypher", "MATCH (n:Dataset) CALL (n) { SET n.checked = true } IN TRANSACTIONS;")
    append(gexample, "rollback.cypher", "MATCH (n:LegacyDataset) REMOVE n.checked;")
    state = protected_state(graph)
    session = neo4j_server.session(notifications_min_severity="OFF")
    tx = session.begin_transaction()
    tx.run("MATCH (s:AuthoritySite) SET s.note = 'held'").consume()
    try:
        out = tmp_path / "out"
        assert run(gexample, out) == 1
    finally:
        tx.rollback()
        session.close()
    r = receipt(out)
    assert r["status"] == "rolled_back", r["reason"]
    assert "protected_guard_failed: statement 3 of forward.cypher (line 7) commits in batches" in r["reason"]
    assert "another transaction held protected nodes for more than 2s); it was not run" in r["reason"]
    assert graph.q("MATCH (n) WHERE n.checked IS NOT NULL RETURN count(n) AS c") == [{"c": 0}]
    assert protected_state(graph) == state
    assert graph.count("KfmLock") == 0


# -------------------------------------------------------- relationships and rollbacks


def test_relationships_of_protected_nodes_are_protected(gexample: Path, graph: Graph, tmp_path: Path) -> None:
    """A plain (one-transaction) statement deleting a relationship of a protected node is
    rolled back before it commits; the baseline digests those relationships."""
    set_scope(gexample, "allowed_relationship_types: []", "allowed_relationship_types: [DERIVED_FROM]")
    set_scope(gexample, "max_relationships_changed: 0", "max_relationships_changed: 10")
    graph.q("MATCH (s:AuthoritySite), (d:LegacyDataset {dataset_id: 'ds-1'}) CREATE (d)-[:DERIVED_FROM]->(s)")
    before = graph.baseline(gexample)
    assert "relationships:AuthoritySite" in {o.id for o in before.objects}
    state = protected_state(graph)
    append(gexample, "forward.cypher", "MATCH (:Dataset)-[r:DERIVED_FROM]->() DELETE r;")
    out = tmp_path / "out"
    assert run(gexample, out) == 1
    r = receipt(out)
    assert r["status"] == "rolled_back", r["reason"]
    assert "changed protected :AuthoritySite nodes or their relationships without an approval" in r["reason"]
    assert "rolled back before commit" in r["reason"]
    assert protected_state(graph) == state
    # Re-pointing the relationship to another node of the same labels changes the fingerprint.
    graph.q(
        "MATCH (d:LegacyDataset {dataset_id: 'ds-1'})-[r:DERIVED_FROM]->(s), (e:LegacyDataset {dataset_id: 'ds-2'}) "
        "DELETE r CREATE (e)-[:DERIVED_FROM]->(s)"
    )
    assert graph.baseline(gexample).protected_fingerprint != before.protected_fingerprint


def test_a_rollback_statement_cannot_delete_protected_nodes(gexample: Path, graph: Graph, tmp_path: Path) -> None:
    """The rollback's statements commit before anything judges them, so they are checked
    before they commit too: compensation may not destroy what it is meant to restore."""
    set_scope(gexample, "max_nodes_changed: 1000", "max_nodes_changed: 3")
    graph.q(SITES)
    state = protected_state(graph)
    append(gexample, "rollback.cypher", "MATCH (n) WHERE n.region = 'x' DETACH DELETE n;")
    out = tmp_path / "out"
    assert run(gexample, out) == 1
    r = receipt(out)
    assert r["status"] == "rollback_failed", r["reason"]
    check = {c["name"]: c for c in r["validation"]}["rollback"]
    assert not check["passed"]
    assert check["detail"] == (
        "statement 3 of rollback.cypher (line 6) changed protected :AuthoritySite nodes or their relationships "
        "without an approval; its transaction was rolled back before commit"
    )
    assert protected_state(graph) == state


# -------------------------------------------------------------------- schema statements


def test_dropping_a_constraint_of_a_protected_label_is_refused_before_the_first_write(
    gexample: Path, graph: Graph, tmp_path: Path
) -> None:
    """A DROP names no label: the preflight looks the object up in the live schema."""
    graph.q("CREATE CONSTRAINT site_name FOR (s:AuthoritySite) REQUIRE s.name IS UNIQUE")
    graph.q("CREATE INDEX activity_name FOR (a:Activity) ON (a.name)")
    lookup = graph.q("SHOW INDEXES YIELD name, type, entityType WHERE type = 'LOOKUP' AND entityType = 'NODE'")
    state = protected_state(graph)
    cases = [
        ("DROP CONSTRAINT site_name;", "plan_protected_target: statement 3 targets the protected label :AuthoritySite"),
        ("DROP INDEX activity_name IF EXISTS;", "plan_out_of_scope: statement 3 targets :Activity"),
        (f"DROP INDEX `{lookup[0]['name']}`;", "plan_out_of_scope: statement 3 drops"),
    ]
    forward = (gexample / "forward.cypher").read_text()
    for statement, found in cases:
        (gexample / "forward.cypher").write_text(forward + statement + "\n")
        out = tmp_path / statement.split()[2].strip("`;")
        assert run(gexample, out) == 1
        r = receipt(out)
        assert r["status"] == "failed", r["reason"]
        assert r["reason"].startswith("schema preflight: forward.cypher line 7 (statement 3 of the forward): ")
        assert found in r["reason"] and "refused before the first write" in r["reason"], r["reason"]
        untouched(graph)
    assert {"site_name", "activity_name", lookup[0]["name"]} <= {r["name"] for r in graph.q("SHOW INDEXES YIELD name")}
    assert protected_state(graph) == state


def test_creating_schema_on_a_protected_label_is_refused_by_the_plan(
    gexample: Path, graph: Graph, tmp_path: Path
) -> None:
    """``(s: AuthoritySite)`` with a space hides from the label scanner, and schema
    statements are never EXPLAINed: the plan reads their FOR pattern."""
    append(gexample, "forward.cypher", "CREATE INDEX site_name FOR (s: AuthoritySite) ON (s.name);")
    append(gexample, "forward.cypher", "CREATE LOOKUP INDEX everything IF NOT EXISTS FOR (n) ON EACH labels(n);")
    plan = GraphStore.for_planning(CONN_ID).plan(load_bundle(gexample))
    found = {(f.code, f.object) for f in plan.findings}
    assert ("plan_protected_target", "label:AuthoritySite") in found
    assert ("plan_schema_target_unknown", "forward.cypher:8") in found
    out = tmp_path / "out"
    assert run(gexample, out) == 1
    assert "static plan refused" in receipt(out)["reason"]
    assert not graph.q("SHOW INDEXES YIELD name, labelsOrTypes WHERE 'AuthoritySite' IN labelsOrTypes RETURN name")
    untouched(graph)


def test_a_drop_is_looked_up_again_just_before_it_runs(gexample: Path, graph: Graph) -> None:
    """A constraint created on a protected label after the preflight (by another client)
    under the name the forward drops is not dropped."""
    append(gexample, "forward.cypher", "DROP CONSTRAINT later IF EXISTS;")
    bundle = load_bundle(gexample)
    with GraphStore.from_conn_id(CONN_ID).session(bundle, "d" * 32) as s:
        s.baseline()
        assert s.preflight(("forward", "rollback")) is None  # nothing by that name yet
        graph.q("CREATE CONSTRAINT later FOR (s:AuthoritySite) REQUIRE s.name IS UNIQUE")
        outcome = s._execute(bundle.by_role("forward"))
        assert not outcome.ok and outcome.statements_run == 2
        assert "statement 3 of forward.cypher (line 7): plan_protected_target" in (outcome.error or "")
        assert "(it drops later); not run" in (outcome.error or "")
    assert "later" in graph.constraints()


# -------------------------------------------------------------- without a server


def test_batched_findings_read_the_servers_plan() -> None:
    def plan(*ops: tuple[str, str]) -> dict[str, Any]:
        root: dict[str, Any] = {"operatorType": "ProduceResults@neo4j", "args": {"Details": ""}, "children": []}
        node = root
        for op, details in ops:
            child = {"operatorType": f"{op}@neo4j", "args": {"Details": details}, "children": []}
            node["children"].append(child)
            node = child
        return root

    assert batched_findings(3, plan(("TransactionForeach", "IN TRANSACTIONS"), ("NodeByLabelScan", "n:Dataset"))) == []
    for ops, why in [
        ((("AllNodesScan", "n"),), "binds nodes or relationships of any label (AllNodesScan n)"),
        ((("NodeByElementIdSeek", "n WHERE elementId(n) = $x"),), "of any label (NodeByElementIdSeek"),
        ((("UndirectedAllRelationshipsScan", "(a)-[r]-(b)"),), "of any label (UndirectedAllRelationshipsScan"),
        ((("ProcedureCall", "apoc.create.addLabels(n, $l) :: (node)"),), "calls a procedure (apoc.create.addLabels)"),
        ((("SetLabels", "n:$(n.kind)"),), "uses a label or type built at run time (SetLabels n:$(n.kind))"),
    ]:
        found = batched_findings(3, plan(("TransactionForeach", "IN TRANSACTIONS"), *ops))
        assert [f.code for f in found] == ["plan_batched_unbound"] and why in found[0].message, found


@pytest.mark.parametrize(
    ("statement", "target"),
    [
        ("CREATE CONSTRAINT c FOR (n: Site) REQUIRE n.x IS UNIQUE", ("node", ["Site"])),
        ("CREATE CONSTRAINT FOR ( n :`Odd Site` ) REQUIRE n.x IS UNIQUE", ("node", ["Odd Site"])),
        ("CREATE FULLTEXT INDEX f FOR (n:A| B) ON EACH [n.x]", ("node", ["A", "B"])),
        ("CREATE INDEX r IF NOT EXISTS FOR ()<-[r: REL]-() ON (r.x)", ("relationship", ["REL"])),
        ("CREATE INDEX /* FOR (n:Hidden) */ i FOR (n:Shown) ON n.x", ("node", ["Shown"])),
        ("CREATE LOOKUP INDEX l FOR (n) ON EACH labels(n)", None),
        ("DROP INDEX i", None),
    ],
)
def test_schema_targets(statement: str, target: tuple[str, list[str]] | None) -> None:
    assert schema_targets(split_cypher(statement)[0].masked) == target


def test_the_watcher_follows_waits_to_the_guard() -> None:
    rows = {
        "g": {"status": "Running"},
        "a": {"status": "Blocked by: [f]"},
        "f": {"status": "Blocked by: [x, g]"},
        "x": {"status": "Running"},
        "b": {"status": "Blocked by: [x]"},
    }
    assert ProtectedGuard._waits_for_guard(rows, "a", "g") == ["f", "g"]
    assert ProtectedGuard._waits_for_guard(rows, "f", "g") == ["g"]
    assert ProtectedGuard._waits_for_guard(rows, "b", "g") is None


def test_guard_holds_every_protected_node_until_it_ends(graph: Graph, neo4j_server: Any) -> None:
    """The guard alone: while it is held, a write to a protected node waits (here: until
    the writer's own timeout); once it ends, the same write goes through."""
    graph.q(SITES)
    labels = ["AuthoritySite"]
    result: dict[str, str] = {}

    def write() -> None:
        import neo4j

        try:
            with neo4j_server.session() as s:
                s.run(neo4j.Query("MATCH (n:AuthoritySite {name: 'Dodge'}) SET n.x = 1", timeout=1)).consume()
            result["w"] = "written"
        except neo4j.exceptions.Neo4jError as exc:
            result["w"] = str(exc.code)

    with ProtectedGuard(neo4j_server, None, "t" * 32, labels, statement=1, acquire_seconds=5) as guard:
        assert guard.nodes == 3
        t = threading.Thread(target=write)
        t.start()
        t.join()
    assert result["w"] == "Neo.ClientError.Transaction.LockClientStopped"
    assert graph.q("MATCH (n:AuthoritySite {name: 'Dodge'}) RETURN n.x AS x") == [{"x": None}]
    write()
    assert result["w"] == "written"
