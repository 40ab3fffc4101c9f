"""Benchmark (run by hand): ``kfm-migrations migrate`` vs ``psql -f``, file by file.

    python bench/history_bench.py [--count 60] [--repeat 3] [--keep DIR]

Generates COUNT small PostGIS migrations (tables, indexes, functions, grants; every index
requires the migration that created its table), then, in the same run and REPEAT times:

  psql     a fresh database; ``psql -X -q -v ON_ERROR_STOP=1 -f forward.sql`` once per
           migration, in order (one process and one connection per file);
  migrate  a fresh database and a fresh copy of the migrations root;
           ``kfm-migrations migrate ROOT --conn-id ID --env dev`` (one process, one
           connection, and for each migration its lock, ledger entry, baselines, gate and
           receipt).

Both sides are timed as wall-clock, process start included. Prints the medians, the ratio
(target: migrate <= 5x psql) and a Markdown row for bench/RESULTS.md. Databases are cloned
from ``kfm_template`` (scripts/stores/postgis.sh) and dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORT = int(os.environ.get("KFM_PG_PORT", "55432"))
USER = os.environ.get("KFM_PG_USER", "kfm")
PASSWORD = os.environ.get("KFM_PG_PASSWORD", "kfm-local-only")
PSQL = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"
KFM = str(Path(sys.executable).parent / "kfm-migrations")

DECLARATION = """\
migration_id: {mid}
type: postgis
intent: "{intent}"
scope:
  allowed_schemas: [public]
  allowed_tables: []
  forbidden_schemas: [kfm_governance]
limits:
  max_table_count_touched: 1
  max_index_count_delta: 1
  max_row_backfill: 0
  max_constraint_delta: 1
requires_rollback: true
approvals:
  required_reviewers: [kfm-platform]
  change_class: standard
  recorded:
    - by: kfm-platform
      at: "2027-01-01T00:00:00Z"
      ref: bench
      covers: ["review:grant_widened"]
runner:
  tool: psycopg
artifacts:
  forward: [forward.sql]
  rollback: [rollback.sql]
{requires}"""


def migration_ids(count: int) -> list[str]:
    """PG-MIG-2027-01-DD-NN, 20 a day."""
    return [f"PG-MIG-2027-01-{1 + i // 20:02d}-{1 + i % 20:02d}" for i in range(count)]


def scripts(i: int, ids: list[str]) -> tuple[str, str, str, list[str]]:
    """(intent, forward, rollback, requires) of the i-th migration: a table, an index on
    the last table (requiring it), a function, or a grant on the last table."""
    t = f"bench_t{i - i % 4}"
    match i % 4:
        case 0:
            return (
                f"create table {t}",
                f"CREATE TABLE public.{t} (id int PRIMARY KEY, name text, qty int);\n",
                f"DROP TABLE public.{t};\n",
                [],
            )
        case 1:
            return (
                f"index the name column of {t}",
                f"CREATE INDEX {t}_name_idx ON public.{t} (name);\n",
                f"DROP INDEX public.{t}_name_idx;\n",
                [ids[i - 1]],
            )
        case 2:
            return (
                f"add the function bench_f{i}",
                f"CREATE FUNCTION public.bench_f{i}(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x + {i}';\n",
                f"DROP FUNCTION public.bench_f{i}(int);\n",
                [],
            )
        case _:
            return (
                f"let everyone read {t}",
                f"GRANT SELECT ON public.{t} TO PUBLIC;\n",
                f"REVOKE SELECT ON public.{t} FROM PUBLIC;\n",
                [ids[i - 3]],
            )


def generate(root: Path, count: int) -> list[Path]:
    """COUNT bundles under ROOT/postgis/ and their registry (status approved); returns the
    forward scripts in apply order."""
    ids = migration_ids(count)
    entries, forwards = [], []
    for i, mid in enumerate(ids):
        intent, forward, rollback, requires = scripts(i, ids)
        folder = root / "postgis" / mid
        folder.mkdir(parents=True)
        req = f"requires: [{', '.join(requires)}]\n" if requires else ""
        (folder / "migration.yml").write_text(DECLARATION.format(mid=mid, intent=intent, requires=req))
        (folder / "forward.sql").write_text(forward)
        (folder / "rollback.sql").write_text(rollback)
        (folder / "notes.md").write_text(f"# {mid}\n\n{intent}.\n")
        forwards.append(folder / "forward.sql")
        entries.append(
            {
                "migration_id": mid,
                "type": "postgis",
                "path": f"postgis/{mid}",
                "owner": "kfm-platform",
                "status": "approved",
                "events": [
                    {"status": "draft", "at": "2027-01-01T00:00:00+00:00", "actor": "bench", "ref": "bench"},
                    {"status": "approved", "at": "2027-01-01T00:00:01+00:00", "actor": "bench", "ref": "bench"},
                ],
            }
        )
    reg = root / "registry" / "migrations.v1.json"
    reg.parent.mkdir(parents=True)
    reg.write_text(json.dumps({"schema_version": "migrations.v1", "migrations": entries}, indent=2) + "\n")
    return forwards


def admin(sql: str) -> None:
    import psycopg

    dsn = f"host=127.0.0.1 port={PORT} user={USER} password={PASSWORD} dbname=postgres"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(sql)


def fresh_db() -> str:
    name = "bench_h_" + uuid.uuid4().hex[:10]
    admin(f'CREATE DATABASE "{name}" TEMPLATE kfm_template')
    return name


def drop_db(name: str) -> None:
    admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
    admin(f'DROP DATABASE IF EXISTS "{name}"')


def time_psql(forwards: list[Path]) -> float:
    db = fresh_db()
    env = {**os.environ, "PGPASSWORD": PASSWORD}
    try:
        t = time.perf_counter()
        for f in forwards:
            subprocess.run(
                [PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(PORT), "-U", USER,
                 "-d", db, "-f", str(f)],
                env=env, check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
        return time.perf_counter() - t
    finally:
        drop_db(db)


def python_env(work: Path, bytecode: bool) -> dict[str, str]:
    """The environment of a ``kfm-migrations`` process. With ``bytecode`` its modules' bytecode
    is cached (in WORK/pycache, not in the repository), as a pip-installed package's is; a
    shell with PYTHONDONTWRITEBYTECODE=1 otherwise compiles every module in every process."""
    env = dict(os.environ)
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env


def time_migrate(template: Path, work: Path, count: int, bytecode: bool) -> float:
    db = fresh_db()
    root = work / f"root-{uuid.uuid4().hex[:8]}"
    shutil.copytree(template, root)
    conn_id = "kfm_bench_history"
    env = {
        **python_env(work, bytecode),
        f"AIRFLOW_CONN_{conn_id.upper()}": f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{PORT}/{db}",
        "KFM_CAPTURE_CACHE": str(work / "capture-cache"),
        "KFM_ACTOR": "bench",
    }
    try:
        t = time.perf_counter()
        done = subprocess.run(
            [KFM, "migrate", str(root), "--conn-id", conn_id, "--env", "dev", "--format", "json"],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        elapsed = time.perf_counter() - t
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
            raise SystemExit(f"migrate failed with exit {done.returncode}")
        applied = sum(1 for r in json.loads(done.stdout)["migrations"] if r["outcome"] == "succeeded")
        if applied != count:
            raise SystemExit(f"migrate applied {applied} of {count}")
        return elapsed
    finally:
        drop_db(db)
        shutil.rmtree(root, ignore_errors=True)


def time_runs(template: Path, work: Path, count: int, bytecode: bool) -> float:
    """The same migrations one ``kfm-migrations run`` process each (what ``migrate`` replaces)."""
    db = fresh_db()
    root = work / f"root-{uuid.uuid4().hex[:8]}"
    shutil.copytree(template, root)
    conn_id = "kfm_bench_history"
    env = {
        **python_env(work, bytecode),
        f"AIRFLOW_CONN_{conn_id.upper()}": f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{PORT}/{db}",
        "KFM_CAPTURE_CACHE": str(work / "capture-cache"),
        "KFM_ACTOR": "bench",
    }
    try:
        t = time.perf_counter()
        for mid in migration_ids(count):  # requirements point backwards: id order is an apply order
            done = subprocess.run(
                [KFM, "run", str(root / "postgis" / mid), "--conn-id", conn_id, "--env", "dev", "--quiet"],
                env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise SystemExit(f"run {mid} failed with exit {done.returncode}: {(done.stdout + done.stderr)[-800:]}")
        return time.perf_counter() - t
    finally:
        drop_db(db)
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", help="generate the migrations root here (kept) instead of a temporary folder")
    ap.add_argument("--runs", action="store_true", help="also time one kfm-migrations run process per migration")
    ap.add_argument(
        "--no-bytecode-cache", action="store_true", help="run kfm-migrations without a bytecode cache (as the shell is)"
    )
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="kfm-history-bench-"))
    template = work / "template"
    if template.exists():
        shutil.rmtree(template)
    forwards = generate(template, args.count)
    bytecode = not args.no_bytecode_cache
    if bytecode:  # fill the bytecode cache once, as installing the package does
        subprocess.run([KFM, "--help"], env=python_env(work, True), capture_output=True, check=False)
    psql_times, migrate_times, run_times = [], [], []
    try:
        for i in range(args.repeat):
            psql_times.append(time_psql(forwards))
            migrate_times.append(time_migrate(template, work, args.count, bytecode))
            line = f"round {i + 1}: psql {psql_times[-1]:.2f} s, migrate {migrate_times[-1]:.2f} s"
            if args.runs:
                run_times.append(time_runs(template, work, args.count, bytecode))
                line += f", run x{args.count} {run_times[-1]:.2f} s"
            print(line + f" ({migrate_times[-1] / psql_times[-1]:.2f}x)", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    p, m = statistics.median(psql_times), statistics.median(migrate_times)
    print(f"psql -f x{args.count}: median {p:.2f} s ({', '.join(f'{x:.2f}' for x in psql_times)})")
    print(f"migrate x{args.count}:  median {m:.2f} s ({', '.join(f'{x:.2f}' for x in migrate_times)})")
    if run_times:
        r = statistics.median(run_times)
        print(f"run x{args.count}:      median {r:.2f} s ({r / p:.2f}x psql; {r / args.count:.2f} s a migration)")
    print(f"ratio: {m / p:.2f}x (target <= 5x); per migration: psql {p / args.count * 1000:.0f} ms, "
          f"migrate {m / args.count * 1000:.0f} ms")  # fmt: skip
    print(f"| {time.strftime('%Y-%m-%d')} | {args.count} | {p:.2f} s | {m:.2f} s | {m / p:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
