"""``kfm-migrations migrate`` on the search (OpenSearch) and graph (Neo4j) store kinds, against
the real servers: three generated migrations of the kind, one requiring another so the apply
order is not the id order; each run with its own ledger entry and verifying receipt; a second
migrate is a no-op; a refused migration stops the series (the ones before it stay applied,
it has a receipt naming the reason, the ones after it are untouched)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_graph import URI as NEO4J_URI
from test_graph import neo4j_server  # noqa: F401  (a fixture, requested by name)
from test_operations import cli, cli_json, receipt, write_root

# The search node's fixture holds the lock the search test modules share (they wipe the node).
from test_search import OS_PORT, os_client  # noqa: F401  (a fixture, requested by name)

from airflow_kfm_migrations.cli import main

# The apply order of the three migrations: 01 requires 02, so 02 runs first, then 01, then 03.
ORDER = (2, 1, 3)


@dataclass
class Series:
    """Three migrations of one kind under ``root``, and how to read the store back."""

    kind: str
    conn_id: str
    root: Path
    ids: dict[int, str]  # n -> migration id
    targets: dict[int, str]  # n -> the index / constraint its forward creates
    exists: Callable[[str], bool]  # whether a target exists in the store
    forbidden: str  # the forbidden target a refused migration names

    def folder(self, n: int) -> Path:
        return self.root / self.kind / self.ids[n]

    def migrate(self, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
        return cli_json(capsys, "migrate", str(self.root), "--conn-id", self.conn_id, "--env", "dev")

    def ledger(self, capsys: pytest.CaptureFixture[str]) -> list[tuple[str, str, str, str]]:
        """This series' ledger entries, oldest first: (id, operation, outcome, receipt digest)."""
        code, hist = cli_json(capsys, "history", "--conn-id", self.conn_id)
        assert code == 0 and hist["kind"] == self.kind
        ours = set(self.ids.values())
        return [
            (e["migration_id"], e["operation"], e["outcome"], e["receipt_digest"])
            for e in reversed(hist["entries"])
            if e["migration_id"] in ours
        ]

    def verify(self, n: int) -> int:
        return main(["verify", str(self.folder(n)), "--conn-id", self.conn_id])


def _ids(prefix: str, month: int) -> dict[int, str]:
    day = 1 + uuid.uuid4().int % 28
    return {n: f"{prefix}-MIG-2032-{month:02d}-{day:02d}-{n:02d}" for n in (1, 2, 3)}


def _registry_bundle(kind: str, mid: str, decl: str, files: dict[str, str]) -> dict[str, Any]:
    return {"mid": mid, "type": kind, "decl": decl, "files": {**files, "notes.md": "# notes\n\ntest.\n"}}


def _requires(n: int, ids: dict[int, str]) -> str:
    return f"requires: [{ids[2]}]\n" if n == 1 else ""


# ------------------------------------------------------------------------------ search

SEARCH_DECLARATION = """\
migration_id: {mid}
type: search
intent: "migrate test: create the index {index}"
scope:
  allowed_index_patterns: ["{prefix}_*"]
  forbidden_index_patterns: [".kfm-governance*", "{forbidden}*"]
limits:
  max_index_count_delta: 1
requires_rollback: true
approvals:
  required_reviewers: [kfm-platform]
  change_class: standard
runner:
  tool: opensearch-py
artifacts:
  forward: [forward.json]
  rollback: [rollback.json]
{requires}"""


@pytest.fixture
def search_series(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Series]]:
    """Makes a search series (``month`` keeps ids apart between tests; ``refused``: that
    migration creates an index its declaration forbids); removes its indices and governance
    documents afterwards."""
    client = request.getfixturevalue("os_client")  # holds the node's test lock
    conn_id = "kfm_ops_migrate_search"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", f"opensearch://127.0.0.1:{OS_PORT}")
    made: list[Series] = []

    def make(month: int, refused: int | None = None) -> Series:
        hexid = uuid.uuid4().hex[:8]
        prefix, forbidden = f"kfmmig_{hexid}", f"kfmforbidden_{hexid}"  # forbidden: outside the allowed pattern
        ids = _ids("SEARCH", month)
        targets = {n: forbidden if n == refused else f"{prefix}_{n}" for n in ids}
        one_shard = {"number_of_shards": 1, "number_of_replicas": 0}
        bundles = [
            _registry_bundle(
                "search",
                ids[n],
                SEARCH_DECLARATION.format(
                    mid=ids[n], index=targets[n], prefix=prefix, forbidden=forbidden, requires=_requires(n, ids)
                ),
                {
                    "forward.json": json.dumps(
                        {"actions": [{"create_index": {"index": targets[n], "settings": one_shard}}]}
                    ),
                    "rollback.json": json.dumps({"actions": [{"delete_index": {"index": targets[n]}}]}),
                },
            )
            for n in (1, 2, 3)
        ]
        root = write_root(tmp_path / f"migrations-{month}", bundles)
        series = Series(
            "search",
            conn_id,
            root,
            ids,
            targets,
            lambda ix: bool(client.indices.exists(index=ix)),
            forbidden,
        )
        made.append(series)
        return series

    yield make
    for s in made:
        for ix in s.targets.values():
            if client.indices.exists(index=ix):
                client.indices.delete(index=ix)
        if client.indices.exists(index=".kfm-governance"):  # this series' ledger and lock documents
            client.delete_by_query(
                index=".kfm-governance",
                body={"query": {"terms": {"migration_id": list(s.ids.values())}}},
                params={"refresh": "true"},
            )


# ------------------------------------------------------------------------------- graph

GRAPH_DECLARATION = """\
migration_id: {mid}
type: graph
intent: "migrate test: a constraint on {label}"
scope:
  allowed_labels: [{label}]
  forbidden_labels: [KfmMigration, KfmLock, {forbidden}]
limits:
  max_schema_delta: 1
requires_rollback: true
approvals:
  required_reviewers: [kfm-platform]
  change_class: standard
runner:
  tool: neo4j
artifacts:
  forward: [forward.cypher]
  rollback: [rollback.cypher]
{requires}"""


@pytest.fixture
def graph_series(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Series]]:
    """Makes a graph series (``refused``: that migration's constraint is on a label its
    declaration forbids); drops its constraints and ledger nodes afterwards."""
    driver = request.getfixturevalue("neo4j_server")  # fails under CI=true without the server
    conn_id = "kfm_ops_migrate_graph"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", NEO4J_URI)
    made: list[Series] = []

    def constraints() -> set[str]:
        with driver.session(notifications_min_severity="OFF") as s:
            return {r["name"] for r in s.run("SHOW CONSTRAINTS YIELD name")}

    def make(month: int, refused: int | None = None) -> Series:
        hexid = uuid.uuid4().hex[:8]
        ids = _ids("GRAPH", month)
        forbidden = f"KfmMig{hexid}Forbidden"
        bundles = []
        targets = {}
        for n in (1, 2, 3):
            label = forbidden if n == refused else f"KfmMig{hexid}N{n}"
            targets[n] = name = f"kfmmig_{hexid}_{n}"
            decl_label = f"KfmMig{hexid}N{n}"  # the declaration's own label, whatever the forward names
            bundles.append(
                _registry_bundle(
                    "graph",
                    ids[n],
                    GRAPH_DECLARATION.format(
                        mid=ids[n], label=decl_label, forbidden=forbidden, requires=_requires(n, ids)
                    ),
                    {
                        "forward.cypher": f"CREATE CONSTRAINT {name} IF NOT EXISTS "
                        f"FOR (n:{label}) REQUIRE n.id IS UNIQUE;\n",
                        "rollback.cypher": f"DROP CONSTRAINT {name} IF EXISTS;\n",
                    },
                )
            )
        root = write_root(tmp_path / f"migrations-{month}", bundles)
        series = Series("graph", conn_id, root, ids, targets, lambda name: name in constraints(), f":{forbidden}")
        made.append(series)
        return series

    yield make
    with driver.session(notifications_min_severity="OFF") as s:
        for series in made:
            for name in series.targets.values():
                s.run(f"DROP CONSTRAINT {name} IF EXISTS").consume()
            s.run(
                "MATCH (m:KfmMigration) WHERE m.migration_id IN $ids DETACH DELETE m", ids=list(series.ids.values())
            ).consume()


# ------------------------------------------------------------------------------- tests


def _applies_in_requires_order_then_is_a_no_op(series: Series, capsys: pytest.CaptureFixture[str]) -> None:
    ids = series.ids
    code, doc = series.migrate(capsys)
    assert code == 0, [r["reason"] for r in doc["migrations"]]
    assert doc["kind"] == series.kind
    assert [(r["migration_id"], r["outcome"]) for r in doc["migrations"]] == [
        (ids[n], "succeeded") for n in ORDER
    ]  # 02 before 01, which requires it; then 03
    # Each its own run: its own receipt, verified against its own ledger entry, in run order.
    receipts = {n: receipt(series.root, ids[n], series.kind) for n in ORDER}
    assert len({r["run_id"] for r in receipts.values()}) == 3
    assert series.ledger(capsys) == [(ids[n], "apply", "succeeded", receipts[n]["receipt_digest"]) for n in ORDER]
    for n in ORDER:
        assert receipts[n]["status"] == "succeeded"
        assert receipts[n]["store"] == {"kind": series.kind, "conn_id": series.conn_id}
        assert {c["name"]: c["passed"] for c in receipts[n]["validation"]}["gate"] is True
        assert series.verify(n) == 0
        assert series.exists(series.targets[n])
    # Nothing pending any more: a second migrate runs nothing and writes nothing.
    history = {n: sorted(p.name for p in (series.folder(n) / "receipts" / "history").iterdir()) for n in ORDER}
    code, out, _err = cli(capsys, "migrate", str(series.root), "--conn-id", series.conn_id, "--env", "dev")
    assert code == 0 and "nothing to migrate" in out
    assert {n: sorted(p.name for p in (series.folder(n) / "receipts" / "history").iterdir()) for n in ORDER} == history
    assert {n: receipt(series.root, ids[n], series.kind)["run_id"] for n in ORDER} == {
        n: r["run_id"] for n, r in receipts.items()
    }
    assert len(series.ledger(capsys)) == 3


def _stops_at_the_refused_second_migration(series: Series, capsys: pytest.CaptureFixture[str]) -> None:
    ids = series.ids
    first, refused, untouched = ORDER
    code, doc = series.migrate(capsys)
    assert code == 1
    assert [(r["migration_id"], r["outcome"]) for r in doc["migrations"]] == [
        (ids[first], "succeeded"),
        (ids[refused], "failed"),
        (ids[untouched], "not run"),
    ]
    # The first applied, with its receipt and ledger entry; the refused one has a receipt
    # naming why and no ledger entry; the last is not touched at all.
    applied = receipt(series.root, ids[first], series.kind)
    assert applied["status"] == "succeeded" and series.verify(first) == 0
    assert series.ledger(capsys) == [(ids[first], "apply", "succeeded", applied["receipt_digest"])]
    k = receipt(series.root, ids[refused], series.kind)
    assert k["status"] == "failed"
    assert k["reason"].startswith("static plan refused:") and series.forbidden in k["reason"]
    assert doc["migrations"][1]["reason"] == k["reason"]
    assert {c["name"]: c["passed"] for c in k["validation"]}["static_plan"] is False
    assert series.verify(refused) == 0  # a refusal: its receipt verifies, no ledger entry expected
    assert not (series.folder(untouched) / "receipts").exists()
    assert not (series.folder(untouched) / "runs").exists()
    assert series.exists(series.targets[first])
    assert not series.exists(series.targets[refused]) and not series.exists(series.targets[untouched])


@pytest.mark.opensearch
def test_search_migrate_applies_in_requires_order_then_is_a_no_op(
    search_series: Callable[..., Series], capsys: pytest.CaptureFixture[str]
) -> None:
    _applies_in_requires_order_then_is_a_no_op(search_series(4), capsys)


@pytest.mark.opensearch
def test_search_migrate_stops_at_a_refused_migration(
    search_series: Callable[..., Series], capsys: pytest.CaptureFixture[str]
) -> None:
    _stops_at_the_refused_second_migration(search_series(5, refused=ORDER[1]), capsys)


@pytest.mark.neo4j
def test_graph_migrate_applies_in_requires_order_then_is_a_no_op(
    graph_series: Callable[..., Series], capsys: pytest.CaptureFixture[str]
) -> None:
    _applies_in_requires_order_then_is_a_no_op(graph_series(6), capsys)


@pytest.mark.neo4j
def test_graph_migrate_stops_at_a_refused_migration(
    graph_series: Callable[..., Series], capsys: pytest.CaptureFixture[str]
) -> None:
    _stops_at_the_refused_second_migration(graph_series(7, refused=ORDER[1]), capsys)
