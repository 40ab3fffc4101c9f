"""The governed Neo4j run against the real server (scripts/stores/neo4j.sh), plus the
Cypher splitter and the static plan (those need no server)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from conftest import MIGRATIONS, port_open, server_missing
from hypothesis import example, given
from hypothesis import strategies as st

from airflow_kfm_migrations.cli import main
from airflow_kfm_migrations.declaration.bundle import load_bundle
from airflow_kfm_migrations.errors import InputError, LockedError
from airflow_kfm_migrations.stores.graph import digests as graph_digests
from airflow_kfm_migrations.stores.graph.cypher import (
    classify,
    error_line,
    explain_query,
    mentions,
    plan_mentions,
    schema_name,
    split_cypher,
)
from airflow_kfm_migrations.stores.graph.digests import canonical
from airflow_kfm_migrations.stores.graph.store import GraphStore
from airflow_kfm_migrations.util.liveness import host_identity

pytestmark = pytest.mark.neo4j

BOLT_PORT = int(os.environ.get("KFM_NEO4J_BOLT_PORT", "7687"))
URI = f"neo4j://127.0.0.1:{BOLT_PORT}"
CONN_ID = "kfm_graph_test"
MIG = "GRAPH-MIG-2026-03-03-01"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def neo4j_server() -> Iterator[Any]:
    if not port_open(BOLT_PORT):
        server_missing("Neo4j", "bash scripts/stores/neo4j.sh start")
    import neo4j

    driver = neo4j.GraphDatabase.driver(URI, auth=None)
    yield driver
    driver.close()


class Graph:
    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def q(self, query: str, **params: Any) -> list[dict[str, Any]]:
        with self.driver.session(notifications_min_severity="OFF") as s:
            return [r.data() for r in s.run(query, params)]

    def clean(self) -> None:
        self.q("MATCH (n) DETACH DELETE n")
        for r in self.q("SHOW CONSTRAINTS YIELD name"):
            self.q(f"DROP CONSTRAINT `{r['name']}`")
        for r in self.q("SHOW INDEXES YIELD name, type WHERE type <> 'LOOKUP'"):
            self.q(f"DROP INDEX `{r['name']}`")

    def count(self, label: str) -> int:
        return int(self.q(f"MATCH (n:`{label}`) RETURN count(n) AS c")[0]["c"])

    def constraints(self) -> set[str]:
        return {r["name"] for r in self.q("SHOW CONSTRAINTS YIELD name")}

    def baseline(self, bundle: Path) -> Any:
        """The product's own baseline of the live graph (no lock taken)."""
        b = load_bundle(bundle)
        return GraphStore.for_planning(CONN_ID).capture(self.q, b.declaration)


@pytest.fixture
def graph(neo4j_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Graph]:
    """A clean graph holding the example's world: legacy datasets and a protected site."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", URI)
    g = Graph(neo4j_server)
    g.clean()
    g.q("UNWIND range(1, 5) AS i CREATE (:LegacyDataset {dataset_id: 'ds-' + i, name: 'legacy ' + i})")
    g.q(
        "CREATE (s:AuthoritySite {name: 'Fort Larned', since: 1859})-[:PROV_GENERATED_BY]->(:Activity {name: 'survey'})"
    )
    yield g
    g.clean()


@pytest.fixture
def gexample(tmp_path: Path) -> Path:
    src = MIGRATIONS / "graph" / MIG
    dst = tmp_path / "graph" / MIG
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("baselines", "diffs", "receipts"))
    return dst


def run(bundle: Path, out: Path, *extra: str, conn_id: str = CONN_ID) -> int:
    return main(["run", str(bundle), "--conn-id", conn_id, "--artifacts", str(out), "--quiet", *extra])


def receipt(out: Path) -> dict[str, Any]:
    return json.loads((out / "receipts" / "run_receipt.json").read_text())


def summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "diffs" / "summary.json").read_text())


def baseline_file(out: Path, which: str) -> dict[str, Any]:
    return json.loads((out / "baselines" / f"{which}.json").read_text())


def append(bundle: Path, name: str, cypher: str) -> None:
    with (bundle / name).open("a") as fh:
        fh.write(cypher + "\n")


def codes(out: Path) -> set[str]:
    return {f["code"] for f in summary(out)["findings"]}


# ------------------------------------------------------------------------ end to end


def test_example_end_to_end(gexample: Path, graph: Graph, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(gexample, out) == 0
    assert "dataset_id_unique" in graph.constraints()
    assert graph.count("LegacyDataset") == 0 and graph.count("Dataset") == 5
    r = receipt(out)
    assert r["status"] == "succeeded" and r["store"] == {"kind": "graph", "conn_id": CONN_ID}
    assert {c["name"]: c["passed"] for c in r["validation"]}["gate"] is True
    s = summary(out)
    assert s["verdict"] == "pass"
    assert {lc["name"]: lc["observed"] for lc in s["limits"]} == {
        "max_nodes_changed": 5,
        "max_relationships_changed": 0,
        "max_schema_delta": 1,
    }
    changed = {c["id"] for c in s["changes"]}
    assert "constraint:dataset_id_unique" in changed and "label_count:Dataset" in changed
    assert not any("Kfm" in c["id"] for c in s["changes"])
    # Baselines carry counts and digests, never property values.
    pre = baseline_file(out, "pre")
    assert pre["store"] == "graph" and pre["protected_rows"] == {"AuthoritySite": 1}
    assert "Fort Larned" not in (out / "baselines" / "pre.json").read_text()
    assert any(o["id"] == "nodes:AuthoritySite" and o["protected"] for o in pre["objects"])
    # Ledger: one apply node with the artifact checksums; the lock is gone.
    ledger = graph.q("MATCH (m:KfmMigration) RETURN m")
    assert len(ledger) == 1 and ledger[0]["m"]["operation"] == "apply"
    assert set(json.loads(ledger[0]["m"]["artifacts"])) >= {"forward.cypher", "rollback.cypher"}
    assert ledger[0]["m"]["receipt_digest"] == r["receipt_digest"]
    assert graph.count("KfmLock") == 0
    assert main(["verify", str(out)]) == 0
    assert main(["verify", str(out), "--conn-id", CONN_ID]) == 0
    # The ledger is the independent witness: a receipt digest it does not hold is refused.
    graph.q("MATCH (m:KfmMigration) SET m.receipt_digest = $d", d="0" * 64)
    assert main(["verify", str(out), "--conn-id", CONN_ID]) == 1
    graph.q("MATCH (m:KfmMigration) SET m.receipt_digest = $d", d=r["receipt_digest"])
    # Rerun: no-op, no drift.
    assert run(gexample, out) == 0
    again = receipt(out)
    assert again["status"] == "noop" and again["previous_receipt_digest"] == r["receipt_digest"]
    assert {c["name"]: c["passed"] for c in again["validation"]}["drift"] is True
    assert main(["verify", str(out)]) == 0
    assert main(["verify", str(out), "--conn-id", CONN_ID]) == 0  # a no-op leaves no ledger entry


def test_changed_artifact_after_apply_is_refused(gexample: Path, graph: Graph, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(gexample, out) == 0
    append(gexample, "forward.cypher", "// harmless, but the checksum changes")
    assert run(gexample, out) == 1
    assert receipt(out)["status"] == "failed" and "forward.cypher changed" in receipt(out)["reason"]


@pytest.mark.parametrize("undone_by_rollback", [True, False])
def test_protected_label_touched_dynamically_never_commits(
    gexample: Path, graph: Graph, tmp_path: Path, undone_by_rollback: bool
) -> None:
    """The label hides in a string, so the static plan cannot see it. The statement's own
    transaction compares the protected nodes with the pre-baseline before it commits, so the
    change never reaches the store, whether or not rollback.cypher would have undone it."""
    out = tmp_path / "out"
    before = graph.baseline(gexample)
    append(gexample, "forward.cypher", "MATCH (a) WHERE 'AuthoritySite' IN labels(a) SET a.touched = true;")
    if undone_by_rollback:
        append(gexample, "rollback.cypher", "MATCH (a) WHERE 'AuthoritySite' IN labels(a) REMOVE a.touched;")
    assert run(gexample, out) == 1
    r = receipt(out)
    assert r["status"] == "rolled_back", r["reason"]
    assert "changed protected :AuthoritySite" in r["reason"] and "rolled back before commit" in r["reason"]
    after = graph.baseline(gexample)
    assert after.protected_fingerprint == before.protected_fingerprint
    assert after.schema_fingerprint == before.schema_fingerprint
    assert graph.q("MATCH (a:AuthoritySite) RETURN a.touched AS t") == [{"t": None}]
    assert graph.count("LegacyDataset") == 5 and "dataset_id_unique" not in graph.constraints()
    assert graph.count("KfmMigration") == 0  # a compensated run records nothing


def test_creating_a_protected_node_dynamically_never_commits(gexample: Path, graph: Graph, tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = graph.baseline(gexample)
    append(gexample, "forward.cypher", "WITH 'AuthoritySite' AS l CREATE (n:$(l) {name: 'Forged'});")
    assert run(gexample, out) == 1
    assert "changed protected :AuthoritySite" in receipt(out)["reason"]
    assert graph.count("AuthoritySite") == 1
    assert graph.baseline(gexample).protected_fingerprint == before.protected_fingerprint


def test_protected_label_in_the_script_is_refused_by_the_plan(gexample: Path, graph: Graph, tmp_path: Path) -> None:
    out = tmp_path / "out"
    append(gexample, "forward.cypher", "MATCH (a:AuthoritySite) SET a.touched = true;")
    assert run(gexample, out) == 1
    r = receipt(out)
    assert r["status"] == "failed" and "static plan refused" in r["reason"]
    assert "dataset_id_unique" not in graph.constraints() and graph.count("LegacyDataset") == 5


def test_protected_label_with_approval_passes_the_plan(gexample: Path) -> None:
    decl = (gexample / "migration.yml").read_text()
    decl = decl.replace(
        "  change_class: standard\n",
        "  change_class: standard\n  recorded:\n    - by: kfm-governance\n      at: 2026-03-03T10:00:00Z\n"
        "      ref: https://example.org/adr/42\n      covers: ['protected:AuthoritySite']\n",
    )
    (gexample / "migration.yml").write_text(decl)
    append(gexample, "forward.cypher", "MATCH (a:AuthoritySite) SET a.touched = true;")
    plan = GraphStore.for_planning("x").plan(load_bundle(gexample))
    assert not plan.refused, plan.findings


def test_max_nodes_changed_exceeded_is_rolled_back(gexample: Path, graph: Graph, tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = graph.baseline(gexample)
    decl = (gexample / "migration.yml").read_text()
    (gexample / "migration.yml").write_text(decl.replace("max_nodes_changed: 1000", "max_nodes_changed: 3"))
    assert run(gexample, out) == 1
    r = receipt(out)
    assert r["status"] == "rolled_back", r["reason"]
    assert "limit_exceeded" in r["reason"]
    lim = {lc["name"]: (lc["observed"], lc["ok"]) for lc in summary(out)["limits"]}
    assert lim["max_nodes_changed"] == (5, False)
    after = graph.baseline(gexample)
    assert after.schema_fingerprint == before.schema_fingerprint
    assert graph.count("LegacyDataset") == 5 and graph.count("Dataset") == 0
    assert main(["verify", str(out)]) == 0


def test_exclusive_labels_invariant(gexample: Path, graph: Graph, tmp_path: Path) -> None:
    out = tmp_path / "out"
    append(gexample, "forward.cypher", "MATCH (n:Dataset) WHERE n.dataset_id = 'ds-1' SET n:LegacyDataset;")
    append(gexample, "rollback.cypher", "MATCH (n:LegacyDataset) WHERE n.dataset_id = 'ds-1' REMOVE n:Dataset;")
    assert run(gexample, out) == 1
    assert "invariant_exclusive_labels" in codes(out)
    assert receipt(out)["status"] == "rolled_back", receipt(out)["reason"]
    assert graph.count("LegacyDataset") == 5 and graph.count("Dataset") == 0


def test_required_constraint_invariant(gexample: Path, graph: Graph, tmp_path: Path) -> None:
    out = tmp_path / "out"
    decl = (gexample / "migration.yml").read_text()
    (gexample / "migration.yml").write_text(decl.replace("- dataset_id_unique", "- dataset_id_unique\n    - nope"))
    assert run(gexample, out) == 1
    assert "invariant_required_constraint" in codes(out)
    assert receipt(out)["status"] == "rolled_back"


def test_failing_statement_is_compensated(gexample: Path, graph: Graph, tmp_path: Path) -> None:
    """Duplicate ids: the constraint cannot be created; the run fails closed and compensates."""
    out = tmp_path / "out"
    graph.q("CREATE (:Dataset {dataset_id: 'dup'}), (:Dataset {dataset_id: 'dup'})")
    assert run(gexample, out) == 1
    r = receipt(out)
    assert r["status"] == "rolled_back", r["reason"]
    assert "forward failed: statement 1 of forward.cypher" in r["reason"]
    assert "dataset_id_unique" not in graph.constraints() and graph.count("LegacyDataset") == 5


def test_out_of_scope_change_seen_only_in_the_diff(gexample: Path, graph: Graph, tmp_path: Path) -> None:
    out = tmp_path / "out"
    append(gexample, "forward.cypher", "CALL { CREATE (n) SET n:$('Sneaky') };")
    append(gexample, "rollback.cypher", "MATCH (n) WHERE 'Sneaky' IN labels(n) DELETE n;")
    assert run(gexample, out) == 1
    assert "out_of_scope_change" in codes(out)
    assert receipt(out)["status"] == "rolled_back", receipt(out)["reason"]
    assert graph.count("Sneaky") == 0


def test_manual_rollback_restores_the_pre_schema(gexample: Path, graph: Graph, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["rollback", str(gexample), "--conn-id", CONN_ID, "--artifacts", str(out), "--quiet"]) == 0
    assert receipt(out)["status"] == "noop"  # nothing applied yet
    assert run(gexample, out) == 0
    pre = baseline_file(out, "pre")
    assert main(["rollback", str(gexample), "--conn-id", CONN_ID, "--artifacts", str(out), "--quiet"]) == 0
    r = receipt(out)
    assert r["status"] == "rolled_back" and r["operation"] == "rollback"
    live = graph.baseline(gexample)
    assert live.schema_fingerprint == pre["schema_fingerprint"]
    assert live.protected_fingerprint == pre["protected_fingerprint"]
    assert graph.count("LegacyDataset") == 5 and "dataset_id_unique" not in graph.constraints()
    ops = [x["op"] for x in graph.q("MATCH (m:KfmMigration) RETURN m.operation AS op ORDER BY m.applied_at")]
    assert ops == ["apply", "rollback"]
    # Applied again after a rollback: a fresh apply, not a no-op.
    assert run(gexample, out) == 0 and receipt(out)["status"] == "succeeded"
    assert main(["verify", str(out)]) == 0


def test_two_concurrent_sessions(gexample: Path, graph: Graph, tmp_path: Path) -> None:
    bundle = load_bundle(gexample)
    a = GraphStore.from_conn_id(CONN_ID)
    b = GraphStore.from_conn_id(CONN_ID)
    with a.session(bundle, "a" * 32):
        assert graph.count("KfmLock") == 1
        with pytest.raises(LockedError), b.session(bundle, "b" * 32):
            pass
        # The CLI reports the held lock as a failed run with a receipt.
        out = tmp_path / "out"
        assert run(gexample, out) == 1
        assert receipt(out)["status"] == "failed" and "lock" in receipt(out)["reason"]
    assert graph.count("KfmLock") == 0
    with b.session(bundle, "b" * 32) as s:
        assert s.ledger_last() is None
    assert graph.count("KfmLock") == 0


def test_stale_lock_is_broken(gexample: Path, graph: Graph) -> None:
    bundle = load_bundle(gexample)
    store = GraphStore.from_conn_id(CONN_ID)
    with store.session(bundle, "a" * 32):
        pass
    graph.q(
        "CREATE (:KfmLock {key: 'store', migration_id: 'GRAPH-MIG-2020-01-01-01', run_id: 'old', "
        "acquired_at: timestamp() - 7200 * 1000})"
    )
    with store.session(bundle, "c" * 32):
        assert graph.q("MATCH (l:KfmLock) RETURN l.run_id AS r") == [{"r": "c" * 32}]
    assert graph.count("KfmLock") == 0


def test_unreachable_server_fails_closed(gexample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_KFM_GRAPH_DOWN", "neo4j://kfm:s3cret-pass@127.0.0.1:9")
    out = tmp_path / "out"
    assert run(gexample, out, conn_id="kfm_graph_down") == 1
    r = receipt(out)
    assert r["status"] == "failed" and "cannot prepare the run on kfm_graph_down" in r["reason"]
    for f in out.rglob("*"):
        if f.is_file():
            assert "s3cret-pass" not in f.read_text(errors="ignore"), f


# ------------------------------------------------------------------ EXPLAIN preflight


def untouched(graph: Graph) -> None:
    """Nothing of the migration was written; no lock or in-flight record is left."""
    assert "dataset_id_unique" not in graph.constraints()
    assert graph.count("LegacyDataset") == 5 and graph.count("Dataset") == 0
    assert graph.count("KfmLock") == 0 and graph.count("KfmMigration") == 0


def test_preflight_syntax_error_fails_closed_before_the_first_write(
    gexample: Path, graph: Graph, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    append(gexample, "forward.cypher", "// a typo below\nMATCH (n:Dataset)\nSET n.checked =\nRETURN n;")
    assert run(gexample, out) == 1
    r = receipt(out)
    assert r["status"] == "failed"
    # The statement starts on line 8 of forward.cypher (after its comment); the error is on line 10.
    assert r["reason"].startswith("EXPLAIN preflight: forward.cypher line 10 (statement 3 of the forward): ")
    assert "Neo.ClientError.Statement.SyntaxError" in r["reason"]
    assert "refused before the first write, the graph is unchanged" in r["reason"]
    untouched(graph)


def test_preflight_checks_the_rollback_too(gexample: Path, graph: Graph, tmp_path: Path) -> None:
    """A rollback that cannot compile would make compensation impossible: refuse up front."""
    out = tmp_path / "out"
    append(gexample, "rollback.cypher", "MATCH (n:Dataset) RETURN m;")
    assert run(gexample, out) == 1
    r = receipt(out)
    assert r["status"] == "failed" and "rollback.cypher line 6 (statement 3 of the rollback)" in r["reason"]
    assert "Variable `m` not defined" in r["reason"]
    untouched(graph)


@pytest.mark.parametrize(
    ("statement", "found"),
    [
        ("MATCH (a IS AuthoritySite) SET a.touched = true;", "the protected label :AuthoritySite"),
        ("MATCH (a: AuthoritySite) SET a.touched = true;", "the protected label :AuthoritySite"),
        ("MATCH (n IS Dataset)-[r IS PROV_GENERATED_BY]->(m) SET r.x = 1;", "forbidden relationship type"),
        ("MATCH (n IS Elsewhere) SET n.x = 1;", ":Elsewhere, outside allowed_labels"),
    ],
)
def test_preflight_reads_labels_and_types_from_the_servers_plan(
    gexample: Path, graph: Graph, tmp_path: Path, statement: str, found: str
) -> None:
    """``IS`` label expressions and ``: Label`` with a space escape the static scanner; the
    server's plan names them, and the scope refuses them before anything is written."""
    append(gexample, "forward.cypher", statement)
    assert not GraphStore.for_planning(CONN_ID).plan(load_bundle(gexample)).refused  # the static plan misses it
    out = tmp_path / "out"
    assert run(gexample, out) == 1
    r = receipt(out)
    assert r["status"] == "failed" and "EXPLAIN preflight: forward.cypher line 7 (statement 3" in r["reason"]
    assert "the server's plan shows it targets" in r["reason"] and found in r["reason"], r["reason"]
    untouched(graph)


def test_preflight_skips_schema_statements(gexample: Path, graph: Graph) -> None:
    bundle = load_bundle(gexample)
    with GraphStore.from_conn_id(CONN_ID).session(bundle, "p" * 32) as s:
        assert s.preflight(("forward", "rollback")) is None
        assert s._checked == {"forward", "rollback"}
    untouched(graph)


# ------------------------------------------------------------ killed runs and stale locks


SLOW = (
    "// slow on purpose: the test sets a spin count on ds-1\n"
    "MATCH (d:Dataset {dataset_id: 'ds-1'}) UNWIND range(1, coalesce(d.spin, 0)) AS i "
    "WITH i WHERE i < 0 RETURN count(*);"
)


def lock_nodes(graph: Graph) -> dict[str, dict[str, Any]]:
    return {r["p"]["key"]: r["p"] for r in graph.q("MATCH (l:KfmLock) RETURN properties(l) AS p")}


def test_a_killed_run_is_recoverable(gexample: Path, graph: Graph, tmp_path: Path) -> None:
    """SIGKILL the CLI while the forward runs its third (slow) statement, after the first two
    changed the graph (constraint created, nodes relabelled). The recovery is: run the command
    again. The dead run's lock is broken (its process is gone), the half-applied forward is
    compensated with the rollback artifact and verified against that run's pre-baseline
    (schema and protected fingerprints), reported in a failed receipt; then a re-run applies."""
    append(gexample, "forward.cypher", SLOW)
    graph.q("MATCH (n:LegacyDataset {dataset_id: 'ds-1'}) SET n.spin = 2000000000")
    before = graph.baseline(gexample)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "airflow_kfm_migrations.cli", "run", str(gexample), "--conn-id", CONN_ID]
    proc = subprocess.Popen(
        [*cmd, "--artifacts", str(out), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")
            assert time.monotonic() < deadline, "the run never reached its slow statement"
            inflight = lock_nodes(graph).get(f"inflight:{MIG}")
            if inflight and inflight.get("statement") == 3:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        assert graph.count("Dataset") == 5 and "dataset_id_unique" in graph.constraints()  # half applied
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    locks = lock_nodes(graph)
    assert locks["store"]["pid"] == proc.pid and locks["store"]["phase"] == "applying"
    assert locks[f"inflight:{MIG}"]["pre_schema_fingerprint"] == before.schema_fingerprint
    assert not (out / "receipts" / "run_receipt.json").exists()  # killed before any receipt
    assert graph.count("KfmMigration") == 0

    # 1. Any command on the bundle (here: rollback) recovers, and says so in a failed receipt.
    rec = tmp_path / "recover"
    assert main(["rollback", str(gexample), "--conn-id", CONN_ID, "--artifacts", str(rec), "--quiet"]) == 1
    r = receipt(rec)
    assert r["status"] == "failed", r["reason"]
    assert f"of {MIG} was interrupted while applying (statement 3 of 3" in r["reason"]
    assert "compensated now with the rollback artifact" in r["reason"]
    assert "schema and protected fingerprints verified" in r["reason"] and "run the command again" in r["reason"]
    after = graph.baseline(gexample)
    assert after.schema_fingerprint == before.schema_fingerprint
    assert after.protected_fingerprint == before.protected_fingerprint
    untouched(graph)
    # 2. Again: nothing to roll back, the graph is the pre-state.
    assert main(["rollback", str(gexample), "--conn-id", CONN_ID, "--artifacts", str(rec), "--quiet"]) == 0
    assert receipt(rec)["status"] == "noop"
    # 3. A re-run (without the spin) applies and reaches the approved post-state.
    graph.q("MATCH (n:LegacyDataset {dataset_id: 'ds-1'}) REMOVE n.spin")
    final = tmp_path / "final"
    assert run(gexample, final) == 0
    assert receipt(final)["status"] == "succeeded" and summary(final)["verdict"] == "pass"
    assert graph.count("Dataset") == 5 and "dataset_id_unique" in graph.constraints()
    assert graph.count("KfmLock") == 0
    assert main(["verify", str(final)]) == 0


def test_a_re_run_recovers_a_killed_run_too(gexample: Path, graph: Graph, tmp_path: Path) -> None:
    """The in-flight record as a killed run leaves it (its process gone): ``run`` compensates."""
    before = graph.baseline(gexample)
    graph.q("CREATE CONSTRAINT dataset_id_unique FOR (d:Dataset) REQUIRE d.dataset_id IS UNIQUE")
    graph.q("MATCH (n:LegacyDataset) SET n:Dataset, n.kfm_relabeled_by = $m REMOVE n:LegacyDataset", m=MIG)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    graph.q(
        "CREATE (:KfmLock {key: 'store', migration_id: $m, run_id: 'dead', host: $h, pid: $pid, phase: 'applying', "
        "acquired_at: timestamp(), heartbeat: timestamp()}), "
        "(:KfmLock {key: $k, migration_id: $m, run_id: 'dead', phase: 'applying', statement: 2, statements: 2, "
        "pre_schema_fingerprint: $s, pre_protected_fingerprint: $p, heartbeat: timestamp()})",
        m=MIG,
        h=host_identity(),
        pid=int(dead.stdout),
        k=f"inflight:{MIG}",
        s=before.schema_fingerprint,
        p=before.protected_fingerprint,
    )
    out = tmp_path / "out"
    assert run(gexample, out) == 1
    assert "compensated now with the rollback artifact" in receipt(out)["reason"]
    untouched(graph)
    assert run(gexample, out) == 0 and receipt(out)["status"] == "succeeded"


def test_a_failed_compensation_keeps_the_in_flight_record(gexample: Path, graph: Graph, tmp_path: Path) -> None:
    graph.q(
        "CREATE (:KfmLock {key: $k, migration_id: $m, run_id: 'dead', phase: 'applying', "
        "pre_schema_fingerprint: 'not-this', pre_protected_fingerprint: 'nor-this', heartbeat: timestamp()})",
        m=MIG,
        k=f"inflight:{MIG}",
    )
    out = tmp_path / "out"
    assert run(gexample, out) == 1
    reason = receipt(out)["reason"]
    assert "did not restore its pre-baseline (schema fingerprint differs; protected fingerprint differs)" in reason
    locks = lock_nodes(graph)
    assert set(locks) == {f"inflight:{MIG}"} and locks[f"inflight:{MIG}"]["compensation_failed"]


def test_an_interrupted_other_migration_blocks_the_run(gexample: Path, graph: Graph, tmp_path: Path) -> None:
    graph.q(
        "CREATE (:KfmLock {key: 'inflight:GRAPH-MIG-2026-01-01-01', migration_id: 'GRAPH-MIG-2026-01-01-01', "
        "run_id: 'x', phase: 'applying', heartbeat: timestamp()})"
    )
    out = tmp_path / "out"
    assert run(gexample, out) == 1
    reason = receipt(out)["reason"]
    assert "of GRAPH-MIG-2026-01-01-01 was interrupted while applying" in reason
    assert "recover it first" in reason and "on the bundle of GRAPH-MIG-2026-01-01-01" in reason
    assert "dataset_id_unique" not in graph.constraints() and graph.count("LegacyDataset") == 5


def test_stale_age_is_configurable(gexample: Path, graph: Graph, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lock of another host (its process cannot be checked) is held until it shows no sign
    of life for KFM_GRAPH_LOCK_STALE_SECONDS; the refusal says how it ends."""
    bundle = load_bundle(gexample)
    store = GraphStore.from_conn_id(CONN_ID)
    with store.session(bundle, "a" * 32):
        pass
    graph.q(
        "CREATE (:KfmLock {key: 'store', migration_id: $m, run_id: 'elsewhere', host: 'other-host', pid: 1, "
        "phase: 'applying', acquired_at: timestamp() - 60000, heartbeat: timestamp() - 30000})",
        m=MIG,
    )
    with pytest.raises(LockedError) as err, store.session(bundle, "b" * 32):
        pass
    assert "phase applying" in str(err.value) and "KFM_GRAPH_LOCK_STALE_SECONDS" in str(err.value)
    assert "after 3600s without a sign of life" in str(err.value) and "last one 30s ago" in str(err.value)
    monkeypatch.setenv("KFM_GRAPH_LOCK_STALE_SECONDS", "20")
    with store.session(bundle, "c" * 32):
        lock = lock_nodes(graph)["store"]
        assert lock["run_id"] == "c" * 32 and lock["broken_from"] == "elsewhere"
        assert "KFM_GRAPH_LOCK_STALE_SECONDS=20" in lock["broken_because"]
    assert graph.count("KfmLock") == 0


def test_a_lock_broken_as_stale_stops_its_holder(gexample: Path, graph: Graph) -> None:
    """The heartbeat before each statement finds the lock gone: the slow holder stops."""
    bundle = load_bundle(gexample)
    with GraphStore.from_conn_id(CONN_ID).session(bundle, "a" * 32) as s:
        graph.q("MATCH (l:KfmLock {key: 'store'}) SET l.run_id = 'someone-else'")
        out = s._execute(bundle.by_role("forward"))
        assert not out.ok and "the graph lock is no longer this run's" in (out.error or "")
        assert out.statements_run == 0
    untouched_but_lock = lock_nodes(graph)
    assert set(untouched_but_lock) == {"store"}  # not ours: left alone
    graph.q("MATCH (l:KfmLock) DELETE l")


# --------------------------------------------------------------- static (no server)


def test_split_cypher_handles_strings_comments_and_backticks() -> None:
    text = (
        "// leading comment; with a semicolon\n"
        'MATCH (a:A {name: \'x;y:Fake\'}) /* block; :NotMe */ SET a.v = "q\\";:No";\n'
        "\n"
        "CREATE (:`Odd;``Label`) // trailing ; :Nope\n"
        ";\n"
        "/* only a comment */ ;\n"
        "DROP INDEX `my;index` IF EXISTS"
    )
    parts = split_cypher(text)
    assert len(parts) == 3
    assert parts[0].text.endswith('SET a.v = "q\\";:No"') and parts[0].line == 2
    assert parts[1].line == 4 and parts[1].text.startswith("CREATE (:`Odd;``Label`)")
    assert mentions(parts[0].masked)[0] == {"A"}
    assert mentions(parts[1].masked)[0] == {"Odd;`Label"}
    assert classify(parts[2].masked) == ("schema", "drop_index") and schema_name(parts[2].masked) == "my;index"
    assert [p.kind for p in parts] == ["data", "data", "schema"]


@pytest.mark.parametrize("bad", ["MATCH (n) SET n.x = 'open", "MATCH (n) /* open", "MATCH (`open) RETURN 1"])
def test_split_cypher_rejects_unterminated(bad: str) -> None:
    with pytest.raises(InputError):
        split_cypher(bad, "f.cypher")


def test_mentions_labels_types_and_maps() -> None:
    labels, types, dynamic = mentions(
        "MATCH (a:Site {k:v.x, other: 1})-[r:HAS|:OWNS]->(b:X:Y) WHERE a:P|Q "
        "WITH [x IN nodes WHERE x:Z] AS l SET a:$(lbl)"
    )
    assert labels == {"Site", "X", "Y", "P", "Q", "Z"}
    assert types == {"HAS", "OWNS"}
    assert dynamic


def test_plan_mentions_reads_operator_details() -> None:
    plan = {
        "operatorType": "ProduceResults@neo4j",
        "args": {"Details": "a"},
        "children": [
            {"operatorType": "Filter@neo4j", "args": {"Details": "(a:Dataset AND b:Activity)"}, "children": []},
            {
                "operatorType": "Create@neo4j",
                "args": {"Details": "(a:Z), (b), (a)-[anon_0:REL_T {x: $autostring_0}]->(b)"},
                "children": [
                    {"operatorType": "RelationshipCountFromCountStore", "args": {"Details": "count( ()-[:T]->() )"}},
                    {"operatorType": "SetLabels@neo4j", "args": {"Details": "n:$($autostring_0)"}},
                    {"operatorType": "ProcedureCall", "args": {"Details": "db.labels() :: (label :: STRING)"}},
                ],
            },
        ],
    }
    assert plan_mentions(plan) == ({"Dataset", "Activity", "Z"}, {"REL_T", "T"})
    assert plan_mentions(None) == (set(), set())


def test_explain_query_and_error_line() -> None:
    st = split_cypher("CREATE INDEX i FOR (n:A) ON (n.x);\n// note\n\nMATCH (n:A)\nSET n.x =\nRETURN n;")[1]
    assert st.line == 4 and st.text.startswith("// note")
    assert explain_query(st) == "EXPLAIN MATCH (n:A)\nSET n.x =\nRETURN n"
    line, text = error_line(st, "Invalid input 'RETURN': expected an expression (line 3, column 1 (offset: 30))\n\"x\"")
    assert (line, text) == (6, "Invalid input 'RETURN': expected an expression")


def test_plan_example_and_scope_findings(gexample: Path) -> None:
    store = GraphStore.for_planning("kfm_graph")
    plan = store.plan(load_bundle(gexample))
    assert not plan.refused
    assert [(s.kind, s.statement) for s in plan.statements] == [("DDL", "create_constraint"), ("DML", "write")]
    assert "constraint:dataset_id_unique" in plan.statements[0].targets
    append(gexample, "forward.cypher", "MATCH (a:Dataset)-[:PROV_GENERATED_BY]->(b:Activity) RETURN a;")
    append(gexample, "forward.cypher", "MATCH (m:KfmMigration) DETACH DELETE m;")
    append(gexample, "forward.cypher", "CREATE DATABASE other;")
    plan = store.plan(load_bundle(gexample))
    found = {(f.code, f.object) for f in plan.findings}
    assert ("plan_forbidden_target", "rel:PROV_GENERATED_BY") in found
    assert ("plan_out_of_scope", "label:Activity") in found
    assert ("plan_forbidden_target", "label:KfmMigration") in found
    assert any(code == "plan_admin_command" for code, _ in found)
    assert plan.refused


def test_plan_cli_never_connects(gexample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(gexample), "--conn-id", "nowhere", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["store"] == "graph" and len(doc["statements"]) == 2 and not doc["refused"]


def test_tampering_with_the_ledger_is_a_hard_fail(gexample: Path, graph: Graph, tmp_path: Path) -> None:
    assert run(gexample, tmp_path / "first") == 0
    other_id = "GRAPH-MIG-2026-03-03-02"
    other = gexample.parent / other_id
    other.mkdir()
    decl = (gexample / "migration.yml").read_text().replace(MIG, other_id)
    (other / "migration.yml").write_text(decl)
    (other / "notes.md").write_text((gexample / "notes.md").read_text())
    (other / "forward.cypher").write_text("MATCH (m) WHERE 'KfmMigration' IN labels(m) SET m.status = 'tampered';\n")
    (other / "rollback.cypher").write_text("MATCH (m) WHERE 'KfmMigration' IN labels(m) SET m.status = 'succeeded';\n")
    out = tmp_path / "second"
    assert run(other, out) == 1
    assert "governance_ledger_touched" in codes(out)
    assert graph.q("MATCH (m:KfmMigration) RETURN m.status AS s") == [{"s": "succeeded"}]


# ----------------------------------------------------------------- baseline capture


_ascii = st.text(alphabet=st.characters(codec="ascii"), max_size=6)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(),
    st.floats(min_value=1e-5, max_value=1e17),
    st.floats(min_value=-1e17, max_value=-1e-5),
    st.text(),
    _ascii,
    st.binary(max_size=4),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(_ascii, st.text(max_size=4)), inner, max_size=4),
    ),
    max_leaves=12,
)


@given(_values)
@example({"code": "site-1", "since": 1859, "lat": 38.001, "tags": ["a", "b"], "ok": True, "gone": None})
@example([1e-4, -1e-4, 9.999999999999999e-05, 4503599627370495.5, 1e16 - 2, 0.1, 2**53 - 1, -(2**53 - 1), 2**53])
@example({"é": 1, "z": 2, "\ue000": 3, "\U0001f600": 4, "a\u0000": '\x00\x1f\x7f\u2028"\\'})
@example([38.0, -0.0, 0.0, float("nan"), float("inf"), 1e-7, 1e21, 2**63 - 1, -(2**63)])
def test_canonical_is_rfc8785_of_the_typed_form(value: Any) -> None:
    """The fast path (msgspec, taken when ``_plain``) writes the RFC 8785 bytes exactly."""
    expected = rfc8785.dumps(graph_digests.jsonable(value))
    assert canonical(value) == expected
    if graph_digests.plain(value):
        assert graph_digests._COMPACT(value) == expected


@given(st.lists(st.dictionaries(st.one_of(_ascii, st.text(max_size=4)), _values, max_size=5), max_size=4))
@example([{"since": 38.0}, {"since": 38}, {"lat": 38.5, "big": 2**60, "tags": ["a", "b"], "é": True}])
def test_node_digests_are_sha256_of_rfc8785(maps: list[dict[str, Any]]) -> None:
    nodes = [[["Site", "AuthoritySite"], m] for m in maps]
    expected = [
        hashlib.sha256(rfc8785.dumps(graph_digests.jsonable([["AuthoritySite", "Site"], m]))).hexdigest() for m in maps
    ]
    assert graph_digests.node_digests(nodes) == sorted(expected)


def test_canonical_fast_path_covers_a_typical_node_and_tells_types_apart() -> None:
    node = {"code": "site-1", "name": "Fort Larned ✓", "since": 1859, "lat": 38.18, "tags": ["a"], "ok": True}
    assert graph_digests.plain([["AuthoritySite"], node])
    for x in (38.0, -0.0, float("nan"), 2**53, 1e-7, {"clé": 1}):
        assert not graph_digests.plain(x)
    digest = graph_digests.digest
    assert digest(38) != digest(38.0) and digest(0.0) != digest(-0.0) and digest(1) != digest(True)
    assert digest(2**60) != digest(str(2**60)) and digest(2**63 - 1) != digest(2**63 - 2)
    assert digest([1.5]) != digest(["1.5"])
    with pytest.raises(rfc8785.CanonicalizationError):
        canonical({"a": "\ud800"})  # a lone surrogate, as rfc8785 itself


def test_baseline_is_four_queries_and_fingerprints_every_protected_node(
    gexample: Path, graph: Graph, neo4j_server: Any
) -> None:
    decl = load_bundle(gexample).declaration
    store = GraphStore.for_planning(CONN_ID)
    queries: list[str] = []

    def run(query: str, **params: Any) -> list[dict[str, Any]]:  # as GraphSession._run
        queries.append(query)
        with neo4j_server.session(notifications_min_severity="OFF") as s:
            return [dict(r) for r in s.run(query, params)]

    def fingerprint() -> str:
        b = store.capture(run, decl)
        assert b == store.capture(graph.q, decl)  # record.data() rows give the same baseline
        return b.protected_fingerprint

    bent = (
        "CREATE (:AuthoritySite {name: 'Bent', since: 1833, lat: 38.04, tags: ['fort', 'trade'], "
        "big: 9007199254740993, built: date('1833-06-01'), at: point({latitude: 38.04, longitude: -103.43}), "
        "`clé`: 'é'})"
    )
    graph.q(bent)
    graph.q("MATCH ()-[r:PROV_GENERATED_BY]->() SET r.role = 'survey'")
    before = store.capture(run, decl)
    assert len(queries) == 4  # SHOW CONSTRAINTS, SHOW INDEXES, the tokens in use, one read
    # The server's plan of the read: the count store for every label and type; scans only of
    # the protected label, the forbidden relationship type (its keys) and the ledger.
    with neo4j_server.session(notifications_min_severity="OFF") as s:
        plan = s.run("EXPLAIN " + queries[3]).consume().plan
    ops: list[tuple[str, str]] = []
    todo = [plan]
    while todo:
        op = todo.pop()
        ops.append((op["operatorType"].split("@")[0], str(op.get("args", {}).get("Details", ""))))
        todo.extend(op.get("children", []))
    scans = sorted(d for o, d in ops if "Scan" in o or "Seek" in o)
    assert not [o for o, _ in ops if o.startswith("AllNodes")]
    # The protected label is scanned twice: its nodes, and their relationships (expanded from them).
    assert len(scans) == 4 and scans.count("n:AuthoritySite") == 2 and "m:KfmMigration" in scans
    assert any("[n:PROV_GENERATED_BY]" in x for x in scans)
    assert ("Expand(All)", "(n)-[r]-(m)") in ops
    counted = " ".join(d for o, d in ops if "CountStore" in o)
    assert all(f"(:{x})" in counted for x in ("LegacyDataset", "AuthoritySite", "Activity"))
    assert "[:PROV_GENERATED_BY]" in counted
    assert before.protected_rows == {"AuthoritySite": 2}
    ids = {o.id for o in before.objects}
    assert {"nodes:AuthoritySite", "property_keys:AuthoritySite", "property_keys:rel:PROV_GENERATED_BY"} <= ids
    # Neither the order nor the elementIds of the nodes count: re-create one the same.
    graph.q("MATCH (s:AuthoritySite {name: 'Bent'}) DELETE s")
    graph.q(bent)
    assert fingerprint() == before.protected_fingerprint
    # The integer 1859 and the float 1859.0 are different values in Neo4j.
    graph.q("MATCH (s:AuthoritySite {name: 'Fort Larned'}) SET s.since = 1859.0")
    assert fingerprint() != before.protected_fingerprint
    graph.q("MATCH (s:AuthoritySite {name: 'Fort Larned'}) SET s.since = 1859")
    assert fingerprint() == before.protected_fingerprint
    graph.q("MATCH (s:AuthoritySite {name: 'Bent'}) SET s.big = s.big + 1")
    assert fingerprint() != before.protected_fingerprint


def test_a_stores_next_baseline_names_the_tokens_it_found_and_rereads_when_they_changed(
    gexample: Path, graph: Graph, neo4j_server: Any
) -> None:
    decl = load_bundle(gexample).declaration
    store = GraphStore.for_planning(CONN_ID)
    queries: list[str] = []

    def run(query: str, **params: Any) -> list[dict[str, Any]]:
        queries.append(query)
        with neo4j_server.session(notifications_min_severity="OFF") as s:
            return [dict(r) for r in s.run(query, params)]

    first = store.capture(run, decl)
    queries.clear()
    assert store.capture(run, decl) == first
    assert len(queries) == 3  # the tokens come with the one read
    # A label and a relationship type that the last baseline did not see: read again with them.
    graph.q("CREATE (:Dataset {dataset_id: 'ds-9'})-[:DERIVED_FROM]->(:AuthoritySite {name: 'Fort Dodge'})")
    queries.clear()
    after = store.capture(run, decl)
    assert len(queries) == 4 and "`Dataset`" not in queries[2] and "`Dataset`" in queries[3]
    ids = {o.id for o in after.objects}
    assert {"label_count:Dataset", "rel_count:DERIVED_FROM"} <= ids
    assert after.protected_rows == {"AuthoritySite": 2}
    assert after == GraphStore.for_planning(CONN_ID).capture(run, decl)  # as a new store's
