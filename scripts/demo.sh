#!/usr/bin/env bash
# The main job on a fresh Debian machine: venv, local stores, Airflow on SQLite, and every
# example migration run through `airflow dags test`. Run it twice: the second run is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
STATE=${KFM_STATE_DIR:-/var/tmp/kfm-stores}
step() { printf '\n==> %s\n' "$*"; }

step "1/5 Python environment (pinned)"
bash scripts/setup.sh
. .venv/bin/activate

step "2/5 Local stores"
export PGPASSWORD=${KFM_PG_PASSWORD:-kfm-local-only}
bash scripts/stores/postgis.sh start
PSQL=(psql -X -q -h 127.0.0.1 -p "${KFM_PG_PORT:-55432}" -U "${KFM_PG_USER:-kfm}")
if ! "${PSQL[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'kfm_demo'" | grep -q 1; then
  "${PSQL[@]}" -d postgres -c "CREATE DATABASE kfm_demo TEMPLATE kfm_template"
fi
export AIRFLOW_CONN_KFM_POSTGIS="postgresql://${KFM_PG_USER:-kfm}:${PGPASSWORD}@127.0.0.1:${KFM_PG_PORT:-55432}/kfm_demo"
export AIRFLOW_CONN_KFM_SEARCH="opensearch://127.0.0.1:${KFM_OPENSEARCH_PORT:-9200}"
export AIRFLOW_CONN_KFM_GRAPH="neo4j://127.0.0.1:${KFM_NEO4J_BOLT_PORT:-7687}"
python scripts/demo/seed.py postgis
DAGS=(kfm_migration__PG-MIG-2026-02-28-01)
if command -v java >/dev/null && command -v mvn >/dev/null; then
  echo "starting OpenSearch and Neo4j (first start downloads their jars from Maven Central)..."
  if bash scripts/stores/opensearch.sh start >/dev/null; then
    python scripts/demo/seed.py search && DAGS+=(kfm_migration__SEARCH-MIG-2026-03-02-01)
  else
    echo "note: OpenSearch did not start; the search example is skipped (see its log above)"
  fi
  if bash scripts/stores/neo4j.sh start >/dev/null; then
    python scripts/demo/seed.py graph && DAGS+=(kfm_migration__GRAPH-MIG-2026-03-03-01)
  else
    echo "note: Neo4j did not start; the graph example is skipped (see its log above)"
  fi
else
  echo "note: no Java/Maven here, so only the PostGIS example runs (install openjdk-17-jdk-headless and maven)"
fi

step "3/5 Airflow metadata DB (SQLite)"
export AIRFLOW_HOME=${AIRFLOW_HOME:-$STATE/airflow-home}
export AIRFLOW__CORE__DAGS_FOLDER=$REPO/dags AIRFLOW__CORE__LOAD_EXAMPLES=False
export KFM_BUNDLES_ROOT=$REPO/migrations KFM_ARTIFACTS_ROOT=${KFM_ARTIFACTS_ROOT:-$STATE/artifacts}
airflow db migrate >"$STATE/airflow-db-migrate.log" 2>&1
airflow dags reserialize >"$STATE/airflow-reserialize.log" 2>&1
airflow dags list 2>/dev/null | grep kfm_migration__ || true

step "4/5 Example migrations through Airflow"
rc=0
for dag in "${DAGS[@]}"; do
  echo "airflow dags test $dag (log: $STATE/$dag.log)"
  if airflow dags test "$dag" >"$STATE/$dag.log" 2>&1; then echo "  DAG run: success"; else echo "  DAG run: FAILED"; rc=1; fi
done

step "5/5 Receipts"
for r in "$KFM_ARTIFACTS_ROOT"/*/receipts/run_receipt.json; do
  [ -f "$r" ] || continue
  python - "$r" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"{d['migration_id']}: {d['status']}  {sys.argv[1]}" + (f"  ({d['reason']})" if d.get('reason') else ""))
PY
  kfm-migrations verify "$(dirname "$(dirname "$r")")"
done
exit $rc
