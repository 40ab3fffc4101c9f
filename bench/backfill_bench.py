"""Backfill throughput: the governed, batched backfill against one bare UPDATE (run by hand).

    . .venv/bin/activate && python bench/backfill_bench.py [--rows 1000000] [--batch-size 5000 ...]

Creates a throwaway database from ``kfm_template`` on the local server
(scripts/stores/postgis.sh), loads two identical tables, then in the same run:

- ``bare``: one ``UPDATE ... SET doubled = val * 2, counter = counter + 1`` over all rows of
  table B, in one transaction (the fastest possible, and the one that locks every row until
  it commits);
- ``governed``: the same SET on table A through ``kfm-migrations run`` (schema part through
  the guard, then key-ordered batches, each its own transaction with progress row, write
  counting and scope check), once per ``--batch-size``; table A is reset between sizes.

Prints rows/s for each and the governed/bare ratio. The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import yaml

REPO = Path(__file__).resolve().parent.parent
PORT = int(os.environ.get("KFM_PG_PORT", "55432"))
USER = os.environ.get("KFM_PG_USER", "kfm")
PASSWORD = os.environ.get("KFM_PG_PASSWORD", "kfm-local-only")
SET = "doubled = val * 2, counter = counter + 1"


def dsn(db: str) -> str:
    return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{PORT}/{db}"


def load(conn: psycopg.Connection, table: str, rows: int) -> None:
    conn.execute(f"DROP TABLE IF EXISTS public.{table}")
    conn.execute(
        f"CREATE TABLE public.{table} (id int PRIMARY KEY, val int NOT NULL, counter int NOT NULL DEFAULT 0, "
        "doubled bigint)"
    )
    conn.execute(f"INSERT INTO public.{table} (id, val) SELECT g, g %% 1000 FROM generate_series(1, %s) g", (rows,))
    conn.execute(f"VACUUM (ANALYZE) public.{table}")
    conn.execute("CHECKPOINT")


def bundle_for(tmp: Path, rows: int, batch: int, conn_id: str) -> Path:
    src = REPO / "migrations" / "postgis" / "PG-MIG-2026-02-28-01"
    dst = tmp / f"b{batch}" / src.name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("baselines", "diffs", "receipts"))
    doc = yaml.safe_load((dst / "migration.yml").read_text())
    doc["intent"] = "Benchmark: backfill items_a.doubled in bounded batches"
    doc["scope"]["allowed_tables"] = ["items_a"]
    doc["limits"] = {"max_table_count_touched": 1, "max_index_count_delta": 0, "max_row_backfill": rows}
    doc["approvals"]["recorded"] = [
        {"by": "bench", "at": "2026-03-01T10:00:00+00:00", "ref": "bench", "covers": ["review:large_backfill"]}
    ]
    doc["backfill"] = {
        "table": "public.items_a",
        "key_column": "id",
        "set": SET,
        "rollback_set": "doubled = NULL, counter = counter - 1",
        "batch_size": batch,
        "max_rows": rows,
    }
    doc["runner"]["conn_id"] = conn_id
    (dst / "migration.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    (dst / "forward.sql").write_text("COMMENT ON TABLE public.items_a IS 'backfill bench';\n")
    (dst / "rollback.sql").write_text("COMMENT ON TABLE public.items_a IS NULL;\n")
    return dst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, nargs="+", default=[5000, 50000])
    args = ap.parse_args()

    from airflow_kfm_migrations.cli import main as cli

    name = "bench_" + uuid.uuid4().hex[:10]
    admin = psycopg.connect(dsn("postgres"), autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}" TEMPLATE kfm_template')
    conn_id = f"kfm_bench_{name}"
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = dsn(name)
    tmp = Path(tempfile.mkdtemp(prefix="kfm-backfill-bench-"))
    results = []
    try:
        with psycopg.connect(dsn(name), autocommit=True) as c:
            version = c.execute("SHOW server_version").fetchone()[0]
            load(c, "items_b", args.rows)
            t0 = time.perf_counter()
            with c.transaction():
                n = c.execute(f"UPDATE public.items_b SET {SET}").rowcount
            bare = time.perf_counter() - t0
            assert n == args.rows
        results.append(("bare single UPDATE", 1, bare, args.rows))
        for batch in args.batch_size:
            with psycopg.connect(dsn(name), autocommit=True) as c:
                load(c, "items_a", args.rows)
                c.execute("DROP SCHEMA IF EXISTS kfm_governance CASCADE")
            bundle = bundle_for(tmp, args.rows, batch, conn_id)
            t0 = time.perf_counter()
            code = cli(["run", str(bundle), "--conn-id", conn_id, "--quiet"])
            wall = time.perf_counter() - t0
            r = json.loads((bundle / "receipts" / "run_receipt.json").read_text())
            if code != 0 or r["status"] != "succeeded":
                print(f"governed run failed: {r['status']}: {r['reason']}", file=sys.stderr)
                return 1
            m = r["metrics"]
            with psycopg.connect(dsn(name)) as c:
                bad = c.execute(
                    "SELECT count(*) FROM public.items_a WHERE doubled IS DISTINCT FROM val * 2 OR counter <> 1"
                ).fetchone()[0]
            assert bad == 0 and m["rows"] == args.rows
            results.append((f"governed backfill (batch {batch})", m["batches"], float(m["duration_s"]), args.rows))
            results.append((f"  whole CLI run incl. schema part (batch {batch})", m["batches"], wall, args.rows))
    finally:
        os.environ.pop(f"AIRFLOW_CONN_{conn_id.upper()}", None)
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"PostgreSQL {version}, {args.rows:,} rows, SET {SET}")
    print(f"{'mode':<48} {'txns':>6} {'seconds':>9} {'rows/s':>12} {'vs bare':>8}")
    for label, txns, secs, rows in results:
        print(f"{label:<48} {txns:>6} {secs:>9.2f} {rows / secs:>12,.0f} {secs / bare:>7.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
