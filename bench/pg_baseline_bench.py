"""Benchmark (run by hand): baseline capture and a governed run vs `pg_dump --schema-only`.

    python bench/pg_baseline_bench.py [--schemas 10] [--tables 1000] [--rebuild]

Builds (once) database kfm_bench: SCHEMAS x TABLES tables, each with a primary key, a
geometry column with a GiST index, a btree index, a CHECK and an FK to the previous table.
Then, in the same run, measures
  (a) a baseline capture, written as JSON   vs pg_dump --schema-only   (target <= 0.2x)
  (b) a governed one-index run              vs pg_dump --schema-only   (target <= 1x)
(a) cold (KFM_CAPTURE_CACHE=off: every object computed) and from the state file an earlier
capture left (what a new process finds; see stores/postgis/state.py). (b) four ways: reuse
off (both baselines computed in full), a first run (no state anywhere: the pre-baseline is
computed in full, the post-baseline starts from it), a new worker (an empty cache directory:
the pre-baseline starts from the state the last committed run left in the governance schema,
stores/postgis/shared_state.py), and from the state file. Every capture must be
byte-identical, cold or not. Also prints the shared state's size and what reading and
writing it cost. Prints Markdown rows for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from airflow_kfm_migrations.cli import main as cli  # noqa: E402
from airflow_kfm_migrations.contracts.models import baseline_json  # noqa: E402
from airflow_kfm_migrations.declaration.bundle import load_bundle  # noqa: E402
from airflow_kfm_migrations.stores.postgis import shared_state, state  # noqa: E402
from airflow_kfm_migrations.stores.postgis.store import PostgisStore  # noqa: E402

PORT = int(os.environ.get("KFM_PG_PORT", "55432"))
PASSWORD = os.environ.get("KFM_PG_PASSWORD", "kfm-local-only")
DSN = f"host=127.0.0.1 port={PORT} user=kfm password={PASSWORD}"
DB = "kfm_bench"


def build(schemas: int, tables: int, rebuild: bool) -> None:
    with psycopg.connect(DSN + " dbname=postgres", autocommit=True) as c:
        exists = c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,)).fetchone()
        if exists and not rebuild:
            return
        c.execute(f"DROP DATABASE IF EXISTS {DB}")
        c.execute(f"CREATE DATABASE {DB} TEMPLATE kfm_template")
    t = time.monotonic()
    with psycopg.connect(DSN + f" dbname={DB}", autocommit=True) as c:
        for s in range(schemas):
            c.execute(f"CREATE SCHEMA s{s}")
            with c.transaction():
                for i in range(tables):
                    prev = f", prev_id int REFERENCES s{s}.t{i - 1}(id)" if i else ""
                    c.execute(
                        f"CREATE TABLE s{s}.t{i} (id int PRIMARY KEY, name text, "
                        f"geom geometry(Point, 4326), qty int CHECK (qty >= 0){prev});"
                        f"CREATE INDEX t{i}_geom ON s{s}.t{i} USING gist (geom);"
                        f"CREATE INDEX t{i}_name ON s{s}.t{i} (name);"
                    )
            print(f"  schema s{s}: {tables} tables ({time.monotonic() - t:.0f}s)", flush=True)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--schemas", type=int, default=10)
    ap.add_argument("--tables", type=int, default=1000)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"building {args.schemas} x {args.tables} tables in {DB} (cached after the first time)...")
    build(args.schemas, args.tables, args.rebuild)

    example = ROOT / "migrations" / "postgis" / "PG-MIG-2026-02-28-01"
    bundle = load_bundle(example)
    env = dict(os.environ, PGPASSWORD=PASSWORD)
    dump = ["pg_dump", "--schema-only", "-h", "127.0.0.1", "-p", str(PORT), "-U", "kfm", "-f", os.devnull, DB]

    cache = Path(tempfile.mkdtemp(prefix="kfm-bench-capture-"))

    def use_cache(on: bool) -> None:
        os.environ["KFM_CAPTURE_CACHE"] = str(cache) if on else "off"

    def no_state_file() -> None:
        os.environ["KFM_CAPTURE_CACHE"] = tempfile.mkdtemp(dir=cache, prefix="first-run-")

    def baseline() -> bytes:
        # A new store each time, as a new process has: a warm capture starts from the state file.
        store = PostgisStore(lambda: psycopg.connect(DSN + f" dbname={DB}"), "kfm_bench")
        with psycopg.connect(DSN + f" dbname={DB}") as c, c.cursor() as cur:
            return baseline_json(store.capture(cur, bundle.declaration))

    blobs: list[bytes] = []
    dumps, cold, warm = [], [], []
    use_cache(True)
    blobs.append(baseline())  # the state file the warm captures start from
    for _ in range(args.repeat):
        dumps.append(timed(lambda: subprocess.run(dump, env=env, check=True)))
        use_cache(False)
        cold.append(timed(lambda: blobs.append(baseline())))
        use_cache(True)
        warm.append(timed(lambda: blobs.append(baseline())))
    # The cluster's databases (and so the global fingerprint) change whenever other work on the
    # server creates or drops a database; no capture reuses them (each computes them in full).
    steady = [
        re.sub(
            rb'("global_fingerprint": "|"digest": ")[0-9a-f]{64}(?=",?\n\s*("id": "cluster:databases"|"migration_id"))',
            rb"\g<1>",
            b,
        )
        for b in blobs
    ]
    identical = len(set(steady)) == 1
    n_objects = blobs[0].count(b'"digest"')

    # (b) a governed run of a one-index migration, in a database that has the parcels table.
    with psycopg.connect(DSN + f" dbname={DB}", autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS public.parcels (id serial PRIMARY KEY, name text, geom geometry)")
    os.environ["AIRFLOW_CONN_KFM_BENCH"] = f"postgresql://kfm:{PASSWORD}@127.0.0.1:{PORT}/{DB}"

    serial = iter(range(1_000_000))

    def governed(expect: str | None = None) -> float:
        # Each run is another migration, whose earlier ledger entry (from an earlier call) is
        # deleted first: the entry of the run before stays, since the shared state is bound to
        # it. The index is dropped after the run.
        mid = f"PG-MIG-2099-01-01-{next(serial) % 90 + 10}"
        with psycopg.connect(DSN + f" dbname={DB}", autocommit=True) as c:
            if c.execute("SELECT to_regclass('kfm_governance.ledger')").fetchone()[0] is not None:
                c.execute("DELETE FROM kfm_governance.ledger WHERE migration_id = %s", (mid,))
        with tempfile.TemporaryDirectory() as tmp:
            b = Path(tmp) / mid
            shutil.copytree(example, b, ignore=shutil.ignore_patterns("baselines", "diffs", "receipts"))
            yml = b / "migration.yml"
            yml.write_text(yml.read_text().replace(example.name, mid))
            took = timed(lambda: cli(["run", str(b), "--conn-id", "kfm_bench", "--quiet"]))
            got = json.loads((b / "receipts" / "run_receipt.json").read_text())["metrics"].get("pre_capture_state")
            if expect is not None and got != expect:
                raise SystemExit(f"the pre-baseline started from {got!r}, not {expect!r}")
        with psycopg.connect(DSN + f" dbname={DB}", autocommit=True) as c:
            c.execute("DROP INDEX IF EXISTS public.parcels_geom_gist")
        return took

    def no_state_anywhere() -> None:
        no_state_file()
        with psycopg.connect(DSN + f" dbname={DB}", autocommit=True) as c:
            if c.execute("SELECT to_regclass('kfm_governance.capture_state')").fetchone()[0] is not None:
                c.execute("DELETE FROM kfm_governance.capture_state")

    use_cache(True)
    with psycopg.connect(DSN + f" dbname={DB}") as c, c.cursor() as cur:
        PostgisStore(lambda: psycopg.connect(DSN + f" dbname={DB}"), "kfm_bench").capture(cur, bundle.declaration)
    runs_dump, runs_cold, runs_first, runs_fresh, runs_warm = [], [], [], [], []
    for _ in range(args.repeat):
        runs_dump.append(timed(lambda: subprocess.run(dump, env=env, check=True)))
        use_cache(False)
        runs_cold.append(governed())
        no_state_anywhere()
        runs_first.append(governed("none"))
        no_state_file()  # a worker that never captured this database: the state is in the database only
        runs_fresh.append(governed("governance"))
        use_cache(True)
        runs_warm.append(governed("file"))

    # The shared state itself: its size, and reading (with its check) and writing it alone.
    reads, writes, size = [], [], 0
    with psycopg.connect(DSN + f" dbname={DB}") as c, c.cursor() as cur:
        key, run_id = cur.execute(
            "SELECT key, run_id FROM kfm_governance.capture_state ORDER BY saved_at DESC LIMIT 1"
        ).fetchone()
        c.rollback()
        for _ in range(args.repeat):
            t = time.perf_counter()
            payload = shared_state.verified(shared_state.fetch(cur, key))
            st = state.decode(payload, key) if payload is not None else None
            reads.append(time.perf_counter() - t)
            c.rollback()
            assert st is not None, "no shared state to read"
            size = len(payload or b"")
            t = time.perf_counter()
            data = state.encode(st)
            shared_state.write(c, key, run_id, state.snapshot_xmax(st), shared_state.digest(data), data)
            writes.append(time.perf_counter() - t)
    shutil.rmtree(cache, ignore_errors=True)

    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    d, cc, cw = med(dumps), med(cold), med(warm)
    d2, rc, rf, rn, rw = med(runs_dump), med(runs_cold), med(runs_first), med(runs_fresh), med(runs_warm)
    print(f"objects in baseline: {n_objects}; byte-identical across {len(blobs)} captures (cold and warm): {identical}")
    print(f"pg_dump --schema-only: {d:.2f}s (median of {args.repeat})")
    print(
        f"(a) capture, cold {cc:.2f}s = {cc / d:.3f}x; from the state file {cw:.2f}s = {cw / d:.3f}x  (target <= 0.2)"
    )
    print(
        f"(b) governed run (pg_dump alongside: {d2:.2f}s), reuse off {rc:.2f}s = {rc / d2:.3f}x; "
        f"first run {rf:.2f}s = {rf / d2:.3f}x; new worker {rn:.2f}s = {rn / d2:.3f}x; "
        f"from the state file {rw:.2f}s = {rw / d2:.3f}x  (target <= 1)"
    )
    print(
        f"shared state: {size / 1e6:.1f} MB; read, checked and decoded {med(reads):.3f}s; "
        f"encoded, digested and written {med(writes):.3f}s (medians of {args.repeat})"
    )
    print(
        f"| {time.strftime('%Y-%m-%d')} | {d:.2f}s | {cc:.2f}s ({cc / d:.2f}x) | **{cw:.2f}s ({cw / d:.2f}x)** "
        f"| {identical} |"
    )
    print(
        f"| {time.strftime('%Y-%m-%d')} | {d2:.2f}s | {rc:.2f}s ({rc / d2:.2f}x) | {rf:.2f}s ({rf / d2:.2f}x) "
        f"| **{rn:.2f}s ({rn / d2:.2f}x)** | **{rw:.2f}s ({rw / d2:.2f}x)** |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
