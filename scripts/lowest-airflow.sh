#!/usr/bin/env bash
# The package on the lowest supported Airflow, with the [postgis] extra only (issue #14).
#
# Builds the wheel from the working tree, installs it with apache-airflow==$AIRFLOW_VERSION
# into a fresh venv (uv against PyPI: Airflow's constraint files live on GitHub), checks that
# no Neo4j/OpenSearch/Elasticsearch package came with it, then, through Airflow's own CLI:
#   - `kfm-migrations validate` of the example migrations root (the core without store stacks);
#   - the DAG file parses, one DAG per registry entry (search and graph included);
#   - `airflow dags test kfm_migration__PG-MIG-2026-02-28-01` succeeds against the local
#     PostGIS (a throwaway database from the template kfm_template) and builds its index;
#   - the graph DAG fails in preflight, naming pip install 'airflow-kfm-migrations[neo4j]'.
# Needs: python3.11, uv (on PATH or .venv/bin/uv), PyPI, PostGIS on 127.0.0.1:$KFM_PG_PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
AIRFLOW_VERSION=${KFM_LOWEST_AIRFLOW:-3.1.8}
WORK=${KFM_LOWEST_WORK:-/tmp/kfm-lowest-airflow}
PY=${KFM_PYTHON:-python3.11}
UV=${UV:-$(command -v uv || echo "$REPO/.venv/bin/uv")}
PG_PORT=${KFM_PG_PORT:-55432}
PG_USER=${KFM_PG_USER:-kfm}
PG_PASSWORD=${KFM_PG_PASSWORD:-kfm-local-only}
PG_ID=PG-MIG-2026-02-28-01
GRAPH_ID=GRAPH-MIG-2026-03-03-01
start=$(date +%s)
say() { echo "lowest-airflow: $*"; }
fail() { echo "lowest-airflow: FAIL: $*" >&2; exit 1; }

rm -rf "$WORK"
mkdir -p "$WORK/src"

say "building the wheel"
# From a copy of the sources: a build in place would write build/ and *.egg-info into the tree.
cp -r pyproject.toml README.md airflow_kfm_migrations "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
"$UV" build -q --wheel --out-dir "$WORK/dist" "$WORK/src"
wheel=$(ls "$WORK"/dist/airflow_kfm_migrations-*.whl)

say "installing apache-airflow==$AIRFLOW_VERSION + $(basename "$wheel")[postgis] into a fresh venv"
"$PY" -m venv "$WORK/venv"
VPY=$WORK/venv/bin/python
# Airflow's constraint files (on GitHub) would hold back what postdates the release. The one
# package that matters: Airflow 3.1 sets an attribute on cryptography's MultiFernet, which
# cryptography 51 refuses (every connection lookup then fails); the lock's version works.
echo "cryptography==$(sed -n 's/^cryptography==//p' requirements.lock)" >"$WORK/constraints.txt"
"$UV" pip install -q --python "$VPY" -c "$WORK/constraints.txt" \
  "apache-airflow==$AIRFLOW_VERSION" "airflow-kfm-migrations[postgis] @ file://$wheel"

"$VPY" -m pip list --format freeze --disable-pip-version-check >"$WORK/installed.txt"
grep -qx "apache-airflow==$AIRFLOW_VERSION" "$WORK/installed.txt" || fail "apache-airflow $AIRFLOW_VERSION not installed"
grep -qx "airflow-kfm-migrations==.*" "$WORK/installed.txt" || fail "airflow-kfm-migrations not installed"
grep -qix "psycopg==.*" "$WORK/installed.txt" || fail "[postgis] did not install psycopg"
if grep -iE '^(neo4j|neo4j-rust-ext|opensearch-py|opensearch-protobufs|elasticsearch|elastic-transport|apache-airflow-providers-(neo4j|opensearch|elasticsearch))==' \
  "$WORK/installed.txt"; then
  fail "[postgis] pulled in another store's stack (above)"
fi
say "installed: $(grep -E '^(apache-airflow|apache-airflow-task-sdk|apache-airflow-providers-postgres|psycopg|pglast)==' "$WORK/installed.txt" | tr '\n' ' ')"

# A world of its own: the example migrations (no artifacts), an Airflow home, a database.
cp -r "$REPO/migrations" "$WORK/migrations"
find "$WORK/migrations" -depth -type d \( -name baselines -o -name diffs -o -name receipts \) -exec rm -rf {} +
DB=kfm_lowest_$$_$(date +%s)
export PGPASSWORD=$PG_PASSWORD
pg() {
  "$VPY" - "$1" <<EOF
import sys, psycopg
with psycopg.connect("postgresql://$PG_USER@127.0.0.1:$PG_PORT/postgres", autocommit=True) as c:
    c.execute(sys.argv[1])
EOF
}
pg "CREATE DATABASE \"$DB\" TEMPLATE kfm_template"
trap 'pg "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" || true' EXIT
# The example's world (parcels, ...): the SQL the test suite seeds, read from tests/conftest.py.
"$VPY" - "$REPO/tests/conftest.py" <<EOF
import ast, sys, psycopg
tree = ast.parse(open(sys.argv[1]).read())
seed = next(n.value.value for n in tree.body if isinstance(n, ast.Assign)
            and any(getattr(t, "id", None) == "PARCELS_SQL" for t in n.targets))
with psycopg.connect("postgresql://$PG_USER@127.0.0.1:$PG_PORT/$DB", autocommit=True) as c:
    c.execute(seed)
EOF

export AIRFLOW_HOME=$WORK/airflow-home
export AIRFLOW__CORE__DAGS_FOLDER=$REPO/dags
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__UNIT_TEST_MODE=False
export KFM_BUNDLES_ROOT=$WORK/migrations
export KFM_ARTIFACTS_ROOT=$WORK/artifacts
export KFM_PARSE_CACHE=$WORK/parse-cache
export KFM_CAPTURE_CACHE=$WORK/capture-cache
export AIRFLOW_CONN_KFM_POSTGIS="postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$DB"
export AIRFLOW_CONN_KFM_GRAPH="neo4j://neo4j:unused@127.0.0.1:7687"
unset PYTHONPATH
cd "$WORK"

say "kfm-migrations validate (the core, without the search and graph stacks)"
"$WORK/venv/bin/kfm-migrations" validate "$WORK/migrations" >"$WORK/validate.log" || {
  tail -20 "$WORK/validate.log"
  fail "validate"
}

say "airflow db migrate; the DAG file parses"
"$WORK/venv/bin/airflow" db migrate >"$WORK/db-migrate.log" 2>&1 || { tail -30 "$WORK/db-migrate.log"; fail "db migrate"; }
"$VPY" - <<'EOF' || fail "the DAG file did not parse into one DAG per registry entry"
import json, os
try:
    from airflow.dag_processing.dagbag import DagBag
except ModuleNotFoundError:  # Airflow < 3.2
    from airflow.models.dagbag import DagBag
b = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
reg = json.load(open(os.environ["KFM_BUNDLES_ROOT"] + "/registry/migrations.v1.json"))
want = sorted(["kfm_migration_rollback", *("kfm_migration__" + e["migration_id"] for e in reg["migrations"])])
print("lowest-airflow: dags:", sorted(b.dag_ids), "errors:", b.import_errors)
assert not b.import_errors and sorted(b.dag_ids) == want
EOF
"$WORK/venv/bin/airflow" dags reserialize >"$WORK/reserialize.log" 2>&1 || { tail -30 "$WORK/reserialize.log"; fail "reserialize"; }

say "airflow dags test kfm_migration__$PG_ID (PostGIS database $DB)"
if ! "$WORK/venv/bin/airflow" dags test "kfm_migration__$PG_ID" >"$WORK/dags-test-pg.log" 2>&1; then
  tail -60 "$WORK/dags-test-pg.log"
  fail "the PostGIS DAG run failed"
fi
"$VPY" - "$WORK/artifacts/$PG_ID/receipts/run_receipt.json" <<'EOF' || fail "no succeeded receipt"
import json, sys
r = json.load(open(sys.argv[1]))
print("lowest-airflow: receipt", r["status"], r.get("reason"))
assert r["status"] == "succeeded"
EOF
"$VPY" - <<EOF || fail "the index the migration creates is not there"
import psycopg
with psycopg.connect("$AIRFLOW_CONN_KFM_POSTGIS") as c:
    assert c.execute("SELECT 1 FROM pg_indexes WHERE indexname = 'parcels_geom_gist'").fetchone()
EOF

say "airflow dags test kfm_migration__$GRAPH_ID (no [neo4j]: must fail in preflight)"
if "$WORK/venv/bin/airflow" dags test "kfm_migration__$GRAPH_ID" >"$WORK/dags-test-graph.log" 2>&1; then
  fail "the graph DAG succeeded without the neo4j stack"
fi
grep -q "pip install 'airflow-kfm-migrations\[neo4j\]'" "$WORK/dags-test-graph.log" || {
  tail -60 "$WORK/dags-test-graph.log"
  fail "the graph DAG's failure does not name pip install 'airflow-kfm-migrations[neo4j]'"
}
grep -q "preflight refused kfm_migration__\|preflight refused $GRAPH_ID" "$WORK/dags-test-graph.log" \
  || fail "the graph DAG did not fail in preflight"

say "ok: Airflow $AIRFLOW_VERSION with [postgis] only, in $(($(date +%s) - start))s"
