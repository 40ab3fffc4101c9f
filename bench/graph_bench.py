"""Benchmark (run by hand, not a test): the graph store's baseline capture vs the bare
count + SHOW queries on a graph of 1M nodes, 2M relationships and 1k protected nodes.

    bash scripts/stores/neo4j.sh start
    python bench/graph_bench.py [--nodes 1000000] [--rels-per-node 2] [--protected 1000]
                                [--repeat 3] [--keep]

Builds the graph with batched ``CALL { … } IN TRANSACTIONS`` creates (the local server
runs with -Xmx1g and a 256m page cache, so every transaction stays small). The graph must
start empty: the tests wipe it with one ``DETACH DELETE`` and the benchmark deletes its
graph in batches at the end (unless ``--keep``; a later run reuses a kept graph).

Then, in the same run, it measures
  bare:     count per label, count per relationship type, SHOW CONSTRAINTS, SHOW INDEXES
  baseline: GraphStore.capture: SHOW CONSTRAINTS, SHOW INDEXES, the tokens in use, and one
            read of the count store per label and type with every protected node's labels
            and property map, the guarded labels' property keys and the ledger; then the
            digests
both through the same ``run`` (one auto-commit session per query, as the product's
GraphSession._run), alternating, and prints the figures, the time per part of the
capture, the ratio (target <= 1.5) and a Markdown row for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import neo4j
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from airflow_kfm_migrations.contracts.models import GraphDeclaration  # noqa: E402
from airflow_kfm_migrations.stores.graph.store import GraphStore  # noqa: E402
from airflow_kfm_migrations.util.digest import dump_json  # noqa: E402

PORT = int(os.environ.get("KFM_NEO4J_BOLT_PORT", "7687"))
URI = f"neo4j://127.0.0.1:{PORT}"
ITEM, SITE, LINK, SITE_REL = "BenchItem", "BenchSite", "BENCH_LINK", "BENCH_AT"


def q(driver: Any, query: str, **params: Any) -> list[dict[str, Any]]:
    with driver.session(notifications_min_severity="OFF") as s:
        return [r.data() for r in s.run(query, params)]


def count(driver: Any, what: str) -> int:
    return int(q(driver, f"MATCH {what} RETURN count(*) AS c")[0]["c"])


def build(driver: Any, nodes: int, per_node: int, protected: int) -> None:
    have = count(driver, f"(:{ITEM})")
    if have == nodes - protected and count(driver, f"(:{SITE})") == protected:
        print(f"reusing the graph already built ({have} :{ITEM}, {protected} :{SITE})")
        return
    if count(driver, "()"):
        raise SystemExit("the graph is not empty and not a kept benchmark graph: refusing to build over it")
    items = nodes - protected
    t = time.monotonic()
    q(driver, f"CREATE INDEX bench_item_id IF NOT EXISTS FOR (n:{ITEM}) ON (n.id)")
    q(driver, f"CREATE CONSTRAINT bench_site_code IF NOT EXISTS FOR (s:{SITE}) REQUIRE s.code IS UNIQUE")
    q(driver, "CALL db.awaitIndexes(300)")
    # Items in batches of 20k, each batch linked inside itself: per_node links from every
    # item (j -> j*7919+1, j -> j*31+7 … modulo the batch), created in the same transaction.
    links = " ".join(
        f"WITH ns, j, ns[j] AS a, ns[(j * {m} + {k}) % size(ns)] AS b{k} CREATE (a)-[:{LINK} {{k: {k}}}]->(b{k})"
        for k, m in zip(range(1, per_node + 1), (7919, 31, 101, 13, 53), strict=False)
    )
    step = 20000
    for lo in range(0, items, step):
        q(
            driver,
            f"UNWIND range($lo, $hi - 1) AS i CREATE (n:{ITEM} {{id: i, name: 'item ' + i, weight: i % 97}}) "
            f"WITH collect(n) AS ns UNWIND range(0, size(ns) - 1) AS j {links}",
            lo=lo,
            hi=min(lo + step, items),
        )
        if lo % 200000 == 0:
            print(f"  {lo + step} :{ITEM} nodes ({time.monotonic() - t:.0f}s)", flush=True)
    q(
        driver,
        f"UNWIND range(0, $n - 1) AS i CALL {{ WITH i CREATE (:{SITE} {{code: 'site-' + i, name: 'site ' + i, "
        f"since: 1800 + i % 200, tags: ['a', 'b'], lat: 38.0 + i / 1000.0}}) }} IN TRANSACTIONS OF 1000 ROWS",
        n=protected,
    )
    q(
        driver,
        f"UNWIND range(0, $n - 1) AS i CALL {{ WITH i MATCH (s:{SITE} {{code: 'site-' + i}}), (a:{ITEM} {{id: i}}) "
        f"CREATE (a)-[:{SITE_REL}]->(s) }} IN TRANSACTIONS OF 1000 ROWS",
        n=protected,
    )
    print(
        f"  built: {count(driver, '()')} nodes, {count(driver, '()-[]->()')} relationships "
        f"({time.monotonic() - t:.0f}s)",
        flush=True,
    )


def teardown(driver: Any) -> None:
    t = time.monotonic()
    q(driver, "MATCH (n) CALL { WITH n DETACH DELETE n } IN TRANSACTIONS OF 10000 ROWS")
    q(driver, "DROP INDEX bench_item_id IF EXISTS")
    q(driver, "DROP CONSTRAINT bench_site_code IF EXISTS")
    print(f"graph deleted in batches ({time.monotonic() - t:.0f}s)")


def declaration() -> GraphDeclaration:
    doc = yaml.safe_load((ROOT / "migrations" / "graph" / "GRAPH-MIG-2026-03-03-01" / "migration.yml").read_text())
    doc["scope"]["allowed_labels"] = [ITEM]
    doc["scope"]["allowed_relationship_types"] = [LINK]
    doc["scope"]["protected_labels"] = [SITE]
    return GraphDeclaration.model_validate(doc)


def part(query: str) -> str:
    """A short name for one of the capture's queries."""
    if query.startswith("SHOW"):
        return query
    if "AS label_counts" in query:
        return "one read: tokens, counts, protected nodes, guarded keys, ledger"
    if "db.labels()" in query:
        return "tokens in use (first baseline of a store only)"
    return query[:60]


def bare(run: Any) -> None:
    for r in run("CALL db.labels() YIELD label RETURN label"):
        run(f"MATCH (n:`{r['label']}`) RETURN count(n) AS c")
    for r in run("CALL db.relationshipTypes() YIELD relationshipType AS t RETURN t"):
        run(f"MATCH ()-[r:`{r['t']}`]->() RETURN count(r) AS c")
    run("SHOW CONSTRAINTS YIELD *")
    run("SHOW INDEXES YIELD *")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1_000_000)
    ap.add_argument("--rels-per-node", type=int, default=2)
    ap.add_argument("--protected", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the graph for a later run")
    args = ap.parse_args()
    driver = neo4j.GraphDatabase.driver(URI, auth=None)
    try:
        print(f"building {args.nodes} nodes, ~{args.nodes * args.rels_per_node} relationships ...", flush=True)
        build(driver, args.nodes, args.rels_per_node, args.protected)
        n_nodes, n_rels = count(driver, "()"), count(driver, "()-[]->()")
        decl = declaration()
        parts: dict[str, float] = defaultdict(float)

        def run(query: str, **params: Any) -> list[dict[str, Any]]:
            # As GraphSession._run: one auto-commit session per query, records as dict(record).
            t = time.perf_counter()
            with driver.session(notifications_min_severity="OFF") as s:
                out = [dict(r) for r in s.run(query, params)]
            parts[part(query)] += time.perf_counter() - t
            return out

        # A store's first baseline asks for the tokens in use first (4 queries); its next ones
        # (a run's post-baseline) name the tokens the last one found (3 queries). Both are timed:
        # "cold" on a new store each time, "warm" on one store that captured before.
        warm_store = GraphStore.for_planning("kfm_bench")
        warm_store.capture(run, decl)
        bares: list[float] = []
        caps: dict[str, list[float]] = {"cold": [], "warm": []}
        split: dict[str, dict[str, list[float]]] = {"cold": defaultdict(list), "warm": defaultdict(list)}
        blobs = []
        for _ in range(args.repeat):  # bare and captures alternate: the same load on all
            t = time.perf_counter()
            bare(run)
            bares.append(time.perf_counter() - t)
            for kind, store in (("cold", GraphStore.for_planning("kfm_bench")), ("warm", warm_store)):
                parts.clear()
                t = time.perf_counter()
                b = store.capture(run, decl)
                caps[kind].append(time.perf_counter() - t)
                for k, v in parts.items():
                    split[kind][k].append(v)
                split[kind]["python (digests, objects)"].append(caps[kind][-1] - sum(parts.values()))
                blobs.append(dump_json(b.model_dump(mode="json", by_alias=True)))
        med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
        b_, cold, warm = med(bares), med(caps["cold"]), med(caps["warm"])
        identical = len(set(blobs)) == 1
        print(f"graph: {n_nodes} nodes, {n_rels} relationships, {args.protected} protected (:{SITE})")
        codec = "Rust (neo4j-rust-ext)" if importlib.util.find_spec("neo4j._rust") else "pure Python"
        print(f"driver: neo4j {neo4j.__version__}, packstream decoding in {codec}")
        for kind in ("cold", "warm"):
            print(f"{kind} capture, time per part (medians of {args.repeat}; a query's time includes decoding):")
            for k, v in sorted(split[kind].items(), key=lambda kv: -med(kv[1])):
                print(f"  {med(v):7.3f}s  {k}")
        print(
            f"bare counts + SHOW: {b_:.3f}s  baseline capture: cold {cold:.3f}s, warm {warm:.3f}s "
            f"(medians of {args.repeat})"
        )
        print(
            f"baseline / bare = {cold / b_:.2f} cold, {warm / b_:.2f} warm (target <= 1.5); "
            f"byte-identical captures: {identical} ({len(blobs)})"
        )
        print(
            f"| {time.strftime('%Y-%m-%d')} | {platform.node()} {os.cpu_count()} cores | graph: {n_nodes} nodes, "
            f"{n_rels} rels, {args.protected} protected | bare {b_:.3f}s | baseline cold {cold:.3f}s "
            f"({cold / b_:.2f}x), warm {warm:.3f}s ({warm / b_:.2f}x) | {identical} |"
        )
        if not args.keep:
            teardown(driver)
    finally:
        driver.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
