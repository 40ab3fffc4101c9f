"""Benchmark (run by hand): DagBag parse time of a 1,000-entry registry vs 1,000 hand-written DAGs.

    python bench/dagbag_bench.py [--entries 1000] [--repeat 3]

Both sides have the same shape: seven tasks per DAG with the factory's dependencies and
the same two params. The factory side also reads the registry and each bundle's declaration,
and builds its companion rollback DAG (one for the registry). Targets: ratio <= 1.5
and <= 2 s. Prints a Markdown row for bench/RESULTS.md.

The factory keeps a parse cache (``KFM_PARSE_CACHE``, here in the temporary folder): its first
parse, with no cache, is timed and reported apart; the medians are of the parses after it, as in
a DAG processor that parses the same file again and again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "migrations" / "postgis" / "PG-MIG-2026-02-28-01"

HAND = """
from airflow.sdk import DAG, Param
from airflow.providers.standard.operators.empty import EmptyOperator

for i in range({n}):
    with DAG(dag_id=f"hand_{{i:04d}}", schedule=None, catchup=False, max_active_runs=1, tags=["x"],
             params={{"environment": Param("dev", enum=["dev", "stage", "prod"]),
                     "dry_run": Param(False, type="boolean")}}) as dag:
        t = [EmptyOperator(task_id=name) for name in
             ("preflight", "baseline_pre", "apply", "baseline_post", "diff_gate", "rollback", "receipt")]
        t[0] >> t[1] >> t[2] >> t[3] >> t[4]
        [t[2], t[3], t[4]] >> t[5]
        [t[4], t[5]] >> t[6]
    globals()[dag.dag_id] = dag
"""

# The same DAGs written by hand with the provider's own operators: isolates what the factory
# itself costs (registry, declarations, loops) from what Airflow operators cost.
HAND_SAME_OPERATORS = """
from airflow.sdk import DAG, Param, TriggerRule
from airflow_kfm_migrations.operators import (
    ApplyOperator, BaselineOperator, DiffGateOperator, PreflightOperator, ReceiptOperator, RollbackOperator)

for i in range({n}):
    mid = f"PG-MIG-2026-01-{{(i // 99) % 28 + 1:02d}}-{{i % 99 + 1:02d}}"
    with DAG(dag_id=f"same_{{i:04d}}", schedule=None, catchup=False, max_active_runs=1, tags=["x"],
             params={{"environment": Param("dev", enum=["dev", "stage", "prod"]),
                     "dry_run": Param(False, type="boolean")}}) as dag:
        kw = {{"migration_id": mid, "conn_id": "kfm_postgis"}}
        t = [PreflightOperator(task_id="preflight", **kw), BaselineOperator(task_id="baseline_pre", phase="pre", **kw),
             ApplyOperator(task_id="apply", **kw), BaselineOperator(task_id="baseline_post", phase="post", **kw),
             DiffGateOperator(task_id="diff_gate", **kw),
             RollbackOperator(task_id="rollback", trigger_rule=TriggerRule.ONE_FAILED, **kw),
             ReceiptOperator(task_id="receipt", trigger_rule=TriggerRule.ALL_DONE, **kw)]
        t[0] >> t[1] >> t[2] >> t[3] >> t[4]
        [t[2], t[3], t[4]] >> t[5]
        [t[4], t[5]] >> t[6]
    globals()[dag.dag_id] = dag
"""

PARSE = """
import sys, time
from airflow.dag_processing.dagbag import DagBag
t = time.perf_counter()
b = DagBag(dag_folder=sys.argv[1])
dt = time.perf_counter() - t
assert not b.import_errors, b.import_errors
# The factory's companion rollback DAG (one per registry) is parsed and timed, not counted.
print(f"RESULT {dt:.4f} {len([d for d in b.dag_ids if d != 'kfm_migration_rollback'])}")
"""


def make_world(tmp: Path, n: int) -> Path:
    root = tmp / "migrations"
    entries = []
    for i in range(n):
        mid = f"PG-MIG-2026-01-{(i // 99) % 28 + 1:02d}-{i % 99 + 1:02d}" if n <= 2772 else None
        assert mid
        dst = root / "postgis" / mid
        shutil.copytree(EXAMPLE, dst, ignore=shutil.ignore_patterns("baselines", "diffs", "receipts"))
        text = (dst / "migration.yml").read_text().replace("PG-MIG-2026-02-28-01", mid)
        (dst / "migration.yml").write_text(text)
        entries.append(
            {
                "migration_id": mid,
                "type": "postgis",
                "path": f"postgis/{mid}",
                "owner": "kfm-platform",
                "status": "merged",
                "events": [
                    {"status": "draft", "at": "2026-01-01T00:00:00+00:00", "actor": "a", "ref": "r"},
                    {"status": "approved", "at": "2026-01-01T00:00:00+00:00", "actor": "a", "ref": "r"},
                    {"status": "merged", "at": "2026-01-01T00:00:00+00:00", "actor": "a", "ref": "r"},
                ],
            }
        )
    (root / "registry").mkdir(parents=True)
    (root / "registry" / "migrations.v1.json").write_text(
        json.dumps({"schema_version": "migrations.v1", "migrations": entries})
    )
    return root


def parse(folder: Path, env: dict[str, str]) -> tuple[float, int]:
    p = subprocess.run([sys.executable, "-c", PARSE, str(folder)], env=env, capture_output=True, text=True)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(p.stdout[-2000:] + p.stderr[-2000:])
    _, dt, n = line.split()
    return float(dt), int(n)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        root = make_world(tmp, args.entries)
        hand_dir = tmp / "hand"
        hand_dir.mkdir()
        (hand_dir / "hand_dags.py").write_text(HAND.format(n=args.entries))
        same_dir = tmp / "same"
        same_dir.mkdir()
        (same_dir / "same_dags.py").write_text(HAND_SAME_OPERATORS.format(n=args.entries))
        env = dict(
            os.environ,
            AIRFLOW_HOME=str(tmp / "home"),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            KFM_BUNDLES_ROOT=str(root),
            KFM_PARSE_CACHE=str(tmp / "parse-cache"),
        )
        cold, _ = parse(ROOT / "dags", env)
        factory, hand, same = [], [], []
        for _ in range(args.repeat):
            f, nf = parse(ROOT / "dags", env)
            h, nh = parse(hand_dir, env)
            m, nm = parse(same_dir, env)
            assert nf == nh == nm == args.entries, (nf, nh, nm)
            factory.append(f)
            hand.append(h)
            same.append(m)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    f, h, m = med(factory), med(hand), med(same)
    print(f"factory: {f:.2f}s  hand-written (EmptyOperator): {h:.2f}s  ratio {f / h:.2f} (target <= 1.5, and <= 2 s)")
    print(f"hand-written with the provider's operators: {m:.2f}s  factory overhead ratio {f / m:.2f}")
    print(f"factory, first parse (empty parse cache): {cold:.2f}s  ratio {cold / h:.2f}")
    print(f"all runs: factory {factory}  hand {hand}  same {same}")
    print(
        f"| {time.strftime('%Y-%m-%d')} | {platform.node()} {os.cpu_count()} cores | {args.entries} entries | "
        f"{f:.2f}s | {h:.2f}s | {f / h:.2f} | {m:.2f}s | {f / m:.2f} | {cold:.2f}s |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
