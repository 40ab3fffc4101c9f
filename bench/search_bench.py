"""Benchmark (by hand, not a test): a governed search reindex vs a bare ``_reindex``.

    . .venv/bin/activate
    bash scripts/stores/opensearch.sh start
    python bench/search_bench.py [--docs 500000] [--rounds 1] [--port 9200] [--keep]

Loads ``--docs`` small documents into ``benchparcels_v1`` (behind alias ``benchparcels``),
then, in the same run and on the same data, times

* **bare**: create ``benchparcels_bare`` with the same mapping and one ``_reindex``
  (``wait_for_completion=true, refresh=true``);
* **governed**: the example-style migration (create ``benchparcels_v2``, reindex, flip the
  alias) through ``lifecycle.run_migration``, i.e. what ``kfm-migrations run`` does: lock,
  ledger, pre/post baselines, async reindex polled, doc-count check, diff, gate, atomic
  alias flip, receipt.

Each round runs bare then governed and resets between rounds. Prints both throughputs,
their ratio (governed / bare; target >= 0.9) and a Markdown table row. Holds the same
file lock as the tests (they wipe the node's indices), so both never overlap.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MIG = "SEARCH-MIG-2026-11-29-99"
CONN_ID = "kfm_search_bench"
SRC, DEST, BARE, ALIAS = "benchparcels_v1", "benchparcels_v2", "benchparcels_bare", "benchparcels"
SETTINGS = {"number_of_shards": 1, "number_of_replicas": 0}
MAPPING = {
    "properties": {
        "parcel_id": {"type": "keyword"},
        "name": {"type": "text", "fields": {"raw": {"type": "keyword"}}},
        "area_m2": {"type": "double"},
    }
}


def bundle_dir(root: Path) -> Path:
    """The example migration, renamed to the bench indices."""
    src = REPO / "migrations" / "search" / "SEARCH-MIG-2026-03-02-01"
    dst = root / "search" / MIG
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("baselines", "diffs", "receipts", "notes.md"))
    decl = (dst / "migration.yml").read_text()
    decl = (
        decl.replace("SEARCH-MIG-2026-03-02-01", MIG)
        .replace("parcels_v*", "benchparcels_v*")
        .replace("    - parcels\n", f"    - {ALIAS}\n")
        .replace("max_docs_reindexed: 100000", "max_docs_reindexed: 100000000")
    )
    (dst / "migration.yml").write_text(decl)
    fwd = json.loads((dst / "forward.json").read_text())
    fwd["actions"][0]["create_index"].update(index=DEST, settings=SETTINGS, mappings=MAPPING)
    fwd["actions"][1]["reindex"] = {"source": SRC, "dest": DEST}
    fwd["actions"][2]["aliases"]["actions"] = [
        {"remove": {"index": SRC, "alias": ALIAS}},
        {"add": {"index": DEST, "alias": ALIAS}},
    ]
    (dst / "forward.json").write_text(json.dumps(fwd, indent=2))
    rb = {
        "actions": [
            {
                "aliases": {
                    "actions": [
                        {"remove": {"index": DEST, "alias": ALIAS}},
                        {"add": {"index": SRC, "alias": ALIAS}},
                    ]
                }
            },
            {"delete_index": {"index": DEST}},
        ]
    }
    (dst / "rollback.json").write_text(json.dumps(rb, indent=2))
    return dst


def reset(c: Any, *, keep_source: bool) -> None:
    from airflow_kfm_migrations.stores.search.governance import GOVERNANCE_INDEX

    for ix in (DEST, BARE) if keep_source else (DEST, BARE, SRC):
        if c.indices.exists(index=ix):
            c.indices.delete(index=ix)
    if keep_source and not c.indices.exists_alias(name=ALIAS, index=SRC):
        c.indices.update_aliases(body={"actions": [{"add": {"index": SRC, "alias": ALIAS}}]})
    if c.indices.exists(index=GOVERNANCE_INDEX):
        c.delete_by_query(
            index=GOVERNANCE_INDEX,
            body={"query": {"term": {"migration_id": MIG}}},
            params={"refresh": "true", "conflicts": "proceed"},
        )


def load(c: Any, n: int) -> float:
    from opensearchpy import helpers

    c.indices.create(index=SRC, body={"settings": {**SETTINGS, "refresh_interval": "-1"}, "mappings": MAPPING})
    t0 = time.perf_counter()
    docs = (
        {
            "_index": SRC,
            "_id": f"p-{i}",
            "_source": {"parcel_id": f"p-{i}", "name": f"parcel {i}", "area_m2": float(i % 10_000) * 1.5},
        }
        for i in range(n)
    )
    for ok, item in helpers.streaming_bulk(c, docs, chunk_size=5000, max_retries=3, raise_on_error=True):
        if not ok:
            raise SystemExit(f"bulk load failed: {item}")
    c.indices.put_settings(index=SRC, body={"index": {"refresh_interval": "1s"}})
    c.indices.refresh(index=SRC)
    c.indices.update_aliases(body={"actions": [{"add": {"index": SRC, "alias": ALIAS}}]})
    got = int(c.count(index=SRC)["count"])
    if got != n:
        raise SystemExit(f"loaded {got} documents, expected {n}")
    return time.perf_counter() - t0


def bare(c: Any, n: int) -> float:
    """create + one async ``_reindex`` polled every 0.1 s (no retries: a retried reindex
    would run twice)."""
    t0 = time.perf_counter()
    c.indices.create(index=BARE, body={"settings": SETTINGS, "mappings": MAPPING})
    task = c.reindex(
        body={"source": {"index": SRC}, "dest": {"index": BARE}},
        params={"wait_for_completion": "false", "refresh": "true"},
    )["task"]
    while not (t := c.tasks.get(task_id=task)).get("completed"):
        time.sleep(0.1)
    dt = time.perf_counter() - t0
    res = t.get("response") or {}
    if int(res.get("created", 0)) != n or res.get("failures") or t.get("error"):
        raise SystemExit(
            f"bare reindex: {res.get('created')} created, failures {res.get('failures')}, {t.get('error')}"
        )
    return dt


def governed(bundle: Path, out: Path) -> tuple[float, dict[str, Any]]:
    from airflow_kfm_migrations.declaration.bundle import load_bundle
    from airflow_kfm_migrations.engine import RunOptions, run_migration

    t0 = time.perf_counter()
    result = run_migration(
        load_bundle(bundle), RunOptions(conn_id=CONN_ID, artifacts_dir=out, actor="bench@cli", log=lambda _l: None)
    )
    dt = time.perf_counter() - t0
    if result.status != "succeeded":
        raise SystemExit(f"governed run: {result.status}: {result.reason}")
    doc = json.loads((out / "receipts" / "run_receipt.json").read_text())
    return dt, doc["metrics"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=500_000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--port", type=int, default=9200)
    ap.add_argument("--keep", action="store_true", help="keep (and reuse) the loaded source index")
    a = ap.parse_args()

    import os

    from opensearchpy import OpenSearch

    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = f"opensearch://127.0.0.1:{a.port}?timeout=600"
    c = OpenSearch(hosts=[{"host": "127.0.0.1", "port": a.port}], timeout=600, max_retries=0)
    version = c.info()["version"]["number"]
    lock = open(Path(tempfile.gettempdir()) / f"kfm-opensearch-{a.port}.lock", "w")  # noqa: SIM115
    print("waiting for the node's test lock ...", file=sys.stderr)
    fcntl.flock(lock, fcntl.LOCK_EX)
    work = Path(tempfile.mkdtemp(prefix="kfm-search-bench-"))
    try:
        reuse = c.indices.exists(index=SRC) and int(c.count(index=SRC)["count"]) == a.docs and a.keep
        reset(c, keep_source=reuse)
        if reuse:
            print(f"reusing {SRC} ({a.docs:,} docs)", file=sys.stderr)
        else:
            t_load = load(c, a.docs)
            print(f"loaded {a.docs:,} docs in {t_load:.1f} s ({a.docs / t_load:,.0f} docs/s)", file=sys.stderr)
        bundle = bundle_dir(work)
        rows = []
        for r in range(1, a.rounds + 1):
            reset(c, keep_source=True)
            tb = bare(c, a.docs)
            c.indices.delete(index=BARE)
            out = work / f"out{r}"
            tg, metrics = governed(bundle, out)
            rows.append((tb, tg, float(metrics.get("apply_seconds", 0))))
            print(
                f"round {r}: bare {tb:.2f} s ({a.docs / tb:,.0f} docs/s); governed {tg:.2f} s "
                f"({a.docs / tg:,.0f} docs/s; apply phase {metrics.get('apply_seconds')} s); "
                f"ratio {tb / tg:.3f}",
                file=sys.stderr,
            )
        tb = sum(x[0] for x in rows) / len(rows)
        tg = sum(x[1] for x in rows) / len(rows)
        ratio = tb / tg  # (docs/tg) / (docs/tb)
        print(f"\nOpenSearch {version}, {a.docs:,} docs, {os.cpu_count()} cores, {a.rounds} round(s), mean")
        print(f"bare _reindex     : {tb:8.2f} s  {a.docs / tb:12,.0f} docs/s")
        print(f"governed (run)    : {tg:8.2f} s  {a.docs / tg:12,.0f} docs/s")
        print(f"throughput ratio  : {ratio:.3f} (target >= 0.9) -> {'OK' if ratio >= 0.9 else 'BELOW TARGET'}")
        print()
        print("| store | docs | bare s | bare docs/s | governed s | governed docs/s | ratio |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        print(
            f"| OpenSearch {version} ({platform.machine()}, {os.cpu_count()} cores) | {a.docs:,} | {tb:.2f} | "
            f"{a.docs / tb:,.0f} | {tg:.2f} | {a.docs / tg:,.0f} | {ratio:.3f} |"
        )
        return 0 if ratio >= 0.9 else 1
    finally:
        try:
            reset(c, keep_source=a.keep)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()


if __name__ == "__main__":
    raise SystemExit(main())
