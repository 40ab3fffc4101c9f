#!/usr/bin/env bash
# The PostGIS example migration on a distributed Airflow: CeleryExecutor, two workers that
# share no disk, artifacts in an S3-compatible object store.
#
#   bash scripts/demo-distributed.sh
#
# On one machine it plays what would be several:
#   - stores: PostGIS (the migrated database and Airflow's metadata DB), s3proxy (S3 API,
#     the only place artifacts live), Redis (the Celery broker);
#   - a "scheduler side" AIRFLOW_HOME running api-server, scheduler and dag-processor, with
#     an airflow_local_settings.py cluster policy that routes the `apply` task to the
#     kfm_apply queue;
#   - worker A (queue `default`) and worker B (queue `kfm_apply`), each with its own
#     AIRFLOW_HOME, working directory and TMPDIR, and its own hostname (hostname_callable:
#     on real machines the FQDN already differs).
# artifacts_root is s3://kfm_s3@<bucket>/<prefix> everywhere; no folder is shared.
# It seeds a fresh database, triggers kfm_migration__PG-MIG-2026-02-28-01 through the REST
# API (/api/v2), waits for the run, prints which worker ran each task, and verifies the
# receipt from the object store with `kfm-migrations verify s3://...`.
# Exit 0 only if the run succeeded, the tasks ran on two workers and the receipt verified.
# Everything the demo started is stopped on exit (KFM_DEMO_KEEP=1 leaves it all running).
#
# Environment (all optional):
#   KFM_STATE_DIR        the stores' state root (as for scripts/stores/*.sh)
#   KFM_DEMO_DIR         Airflow homes, logs and summary (default $KFM_STATE_DIR or
#                        /var/tmp/kfm-stores, then /demo-distributed); wiped at start
#   KFM_DEMO_API_PORT    api-server port (default 8390)
#   KFM_DEMO_AIRFLOW_DB  metadata database on the PostGIS server (default kfm_airflow_celery)
#   KFM_DEMO_DB          the database the example migrates, recreated each run
#                        (default kfm_demo_distributed)
#   KFM_DEMO_BUCKET      bucket (default kfm-artifacts); KFM_DEMO_S3_PREFIX prefix (default
#                        demo-distributed/<UTC time>)
#   KFM_DEMO_TIMEOUT     seconds for the whole run (default 600)
#   KFM_DEMO_SUMMARY     where the JSON summary goes (default $KFM_DEMO_DIR/summary.json)
#   KFM_DEMO_KEEP=1      leave the stores and Airflow running at exit (UI: the api port)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
STORES_STATE=${KFM_STATE_DIR:-/var/tmp/kfm-stores}
DEMO=${KFM_DEMO_DIR:-$STORES_STATE/demo-distributed}
API_PORT=${KFM_DEMO_API_PORT:-8390}
AF_DB=${KFM_DEMO_AIRFLOW_DB:-kfm_airflow_celery}
DEMO_DB=${KFM_DEMO_DB:-kfm_demo_distributed}
BUCKET=${KFM_DEMO_BUCKET:-kfm-artifacts}
PREFIX=${KFM_DEMO_S3_PREFIX:-demo-distributed/$(date -u +%Y%m%dT%H%M%SZ)}
TIMEOUT=${KFM_DEMO_TIMEOUT:-600}
SUMMARY=${KFM_DEMO_SUMMARY:-$DEMO/summary.json}
DAG=kfm_migration__PG-MIG-2026-02-28-01
MIGRATION=PG-MIG-2026-02-28-01
PG_PORT=${KFM_PG_PORT:-55432}
PG_USER=${KFM_PG_USER:-kfm}
export PGPASSWORD=${KFM_PG_PASSWORD:-kfm-local-only}
S3_PORT=${KFM_S3_PORT:-9380}
REDIS_PORT=${KFM_REDIS_PORT:-6390}
step() { printf '\n==> %s\n' "$*"; }

# Settings of the caller's own Airflow or kfm setup would leak into every component.
while read -r v; do unset "$v"; done < <(compgen -e | grep -E '^(AIRFLOW__|AIRFLOW_HOME$|AIRFLOW_CONFIG$|KFM_(ARTIFACTS_ROOT|BUNDLES_ROOT|REGISTRY_PATH)$)' || true)

step "1/6 Python environment (pinned)"
bash scripts/setup.sh
. .venv/bin/activate

PIDS=()
HELPER=
STARTED_STORES=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "${KFM_DEMO_KEEP:-0}" = 1 ]; then
    echo "KFM_DEMO_KEEP=1: leaving Airflow (http://127.0.0.1:$API_PORT) and the stores running"
    exit $rc
  fi
  if [ -n "$HELPER" ]; then kill -TERM "$HELPER" 2>/dev/null || true; fi
  if [ ${#PIDS[@]} -gt 0 ]; then
    echo "stopping the Airflow components..."
    for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    for _ in $(seq 1 40); do
      alive=0
      for pid in "${PIDS[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
      [ $alive = 0 ] && break
      sleep 0.5
    done
    for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  fi
  for s in ${STARTED_STORES[@]+"${STARTED_STORES[@]}"}; do bash "scripts/stores/$s.sh" stop >/dev/null || true; done
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "2/6 Stores: PostGIS, s3proxy (S3), Redis (broker)"
for s in postgis s3proxy redis; do
  if ! bash "scripts/stores/$s.sh" status >/dev/null 2>&1; then STARTED_STORES+=("$s"); fi
done
bash scripts/stores/postgis.sh start
KFM_S3_BUCKET=$BUCKET bash scripts/stores/s3proxy.sh start
bash scripts/stores/redis.sh start
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER")
"${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS \"$DEMO_DB\" WITH (FORCE)" -c "CREATE DATABASE \"$DEMO_DB\" TEMPLATE kfm_template"
if ! "${PSQL[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$AF_DB'" | grep -q 1; then
  "${PSQL[@]}" -d postgres -c "CREATE DATABASE \"$AF_DB\""
fi
# Connections: the same environment on every machine (as a secret mounted on each pod).
export AIRFLOW_CONN_KFM_POSTGIS="postgresql://$PG_USER:$PGPASSWORD@127.0.0.1:$PG_PORT/$DEMO_DB"
export AIRFLOW_CONN_KFM_S3="aws://${KFM_S3_ACCESS_KEY:-kfm-local}:${KFM_S3_SECRET_KEY:-kfm-local-only}@/?endpoint_url=http%3A%2F%2F127.0.0.1%3A$S3_PORT&region_name=us-east-1"
ARTIFACTS_ROOT="s3://kfm_s3@$BUCKET/$PREFIX"
echo "artifacts_root = $ARTIFACTS_ROOT"

step "3/6 Airflow homes: scheduler side, worker A, worker B (under $DEMO)"
# Wiped at start, but only a folder this script made (or an empty one).
if [ -d "$DEMO" ] && [ -n "$(ls -A "$DEMO")" ] && [ ! -f "$DEMO/.kfm-demo-distributed" ]; then
  echo "demo-distributed: $DEMO is not empty and not a demo folder; set KFM_DEMO_DIR elsewhere" >&2
  exit 2
fi
rm -rf "$DEMO"
mkdir -p "$DEMO"
touch "$DEMO/.kfm-demo-distributed"
umask 077
# Keys of this run in the broker carry their own prefix: another demo (or the test) on the
# same Redis never takes this run's tasks off the shared queue names.
BROKER_PREFIX="kfm-demo-$(python -c 'import secrets; print(secrets.token_hex(4))'):"
JWT_SECRET=$(python -c 'import secrets; print(secrets.token_urlsafe(64))')
python -c 'import json, secrets; print(json.dumps({"kfm_demo": secrets.token_urlsafe(16)}))' >"$DEMO/passwords.json"
COMMON_CFG="
[core]
executor = CeleryExecutor
dags_folder = $REPO/dags
load_examples = False
execution_api_server_url = http://127.0.0.1:$API_PORT/execution/

[celery]
broker_url = redis://127.0.0.1:$REDIS_PORT/0
result_backend = redis://127.0.0.1:$REDIS_PORT/1
worker_concurrency = 1

[celery_broker_transport_options]
global_keyprefix = $BROKER_PREFIX

[kfm_migrations]
bundles_root = $REPO/migrations
artifacts_root = $ARTIFACTS_ROOT
environment = dev
"
SCHED=$DEMO/scheduler
mkdir -p "$SCHED/config" "$SCHED/work" "$SCHED/tmp"
cat >"$SCHED/airflow.cfg" <<CFG
$COMMON_CFG
[core]
dags_are_paused_at_creation = False
simple_auth_manager_users = kfm_demo:admin
simple_auth_manager_passwords_file = $DEMO/passwords.json

[database]
sql_alchemy_conn = postgresql+psycopg2://$PG_USER:$PGPASSWORD@127.0.0.1:$PG_PORT/$AF_DB

[api]
host = 127.0.0.1
port = $API_PORT
workers = 1

[api_auth]
jwt_secret = $JWT_SECRET

[scheduler]
scheduler_heartbeat_sec = 2
[dag_processor]
refresh_interval = 10

[logging]
base_log_folder = $SCHED/logs
CFG
# Airflow reads a section once; fold the repeated [core] into one file Airflow accepts.
python - "$SCHED/airflow.cfg" <<'PY'
import configparser, sys
cp = configparser.ConfigParser(interpolation=None, strict=False)
cp.read(sys.argv[1])
with open(sys.argv[1], "w") as f:
    cp.write(f)
PY
cat >"$SCHED/config/airflow_local_settings.py" <<'PY'
"""Cluster policy of the demo's scheduler side (read where DAGs are parsed): every
governed apply goes to the kfm_apply queue, which only worker B consumes."""


def task_policy(task):
    if type(task).__name__ == "ApplyOperator":
        task.queue = "kfm_apply"
PY
for w in A B; do
  W=$DEMO/worker$w
  mkdir -p "$W/config" "$W/work" "$W/tmp"
  cat >"$W/airflow.cfg" <<CFG
$COMMON_CFG
[logging]
base_log_folder = $W/logs
CFG
  python - "$W/airflow.cfg" "worker${w,,}.kfm-demo" <<'PY'
import configparser, sys
cp = configparser.ConfigParser(interpolation=None, strict=False)
cp.read(sys.argv[1])
cp.set("core", "hostname_callable", "kfm_demo_host.hostname")
with open(sys.argv[1], "w") as f:
    cp.write(f)
PY
  printf '"""This worker'"'"'s hostname for Airflow (its own machine in a real deployment)."""\n\n\ndef hostname():\n    return "%s"\n' \
    "worker${w,,}.kfm-demo" >"$W/config/kfm_demo_host.py"
done
umask 022

# One component: its own AIRFLOW_HOME, HOME (so ~/.cache too), working directory and TMPDIR,
# its own process group. Nothing on disk is shared between the homes.
launch() {  # name home workdir -- command...
  local name=$1 home=$2 work=$3; shift 4
  (
    cd "$work"
    unset KFM_PARSE_CACHE KFM_CAPTURE_CACHE
    export AIRFLOW_HOME=$home AIRFLOW_CONFIG=$home/airflow.cfg HOME=$home XDG_CACHE_HOME=$home/cache TMPDIR=$home/tmp
    exec setsid "$@" </dev/null >"$DEMO/$name.log" 2>&1
  ) &
  PIDS+=($!)
  echo "  $name (pid $!): log $DEMO/$name.log"
}

# Workers need no metadata DB (Airflow 3: tasks talk to the api-server), so they boot while
# the DB is migrated and the example database is seeded.
step "4/6 Workers: A consumes 'default', B consumes 'kfm_apply'; metadata DB ($AF_DB) and seed"
launch workerA "$DEMO/workerA" "$DEMO/workerA/work" -- \
  airflow celery worker --queues default --concurrency 1 --celery-hostname workerA@%h --skip-serve-logs
launch workerB "$DEMO/workerB" "$DEMO/workerB/work" -- \
  airflow celery worker --queues kfm_apply --concurrency 1 --celery-hostname workerB@%h --skip-serve-logs
python scripts/demo/seed.py postgis >"$DEMO/seed.log" 2>&1 &
SEED=$!
( cd "$SCHED/work" && AIRFLOW_HOME=$SCHED AIRFLOW_CONFIG=$SCHED/airflow.cfg airflow db migrate >"$DEMO/db-migrate.log" 2>&1 ) || {
  tail -n 30 "$DEMO/db-migrate.log"; echo "airflow db migrate failed (log: $DEMO/db-migrate.log)"; exit 1; }
echo "  metadata DB ready (log: $DEMO/db-migrate.log)"
wait "$SEED" || { cat "$DEMO/seed.log"; echo "seeding $DEMO_DB failed"; exit 1; }
echo "  seeded $DEMO_DB"

step "5/6 Scheduler side: api-server, scheduler, dag-processor"
launch api-server "$SCHED" "$SCHED/work" -- airflow api-server --port "$API_PORT"
launch scheduler "$SCHED" "$SCHED/work" -- airflow scheduler
launch dag-processor "$SCHED" "$SCHED/work" -- airflow dag-processor

step "6/6 Trigger $DAG through the REST API, wait, verify the receipt from S3"
rc=0
# In the background so that a TERM to this script is handled at once (bash runs a trap
# only after the foreground command ends; `wait` returns early).
python scripts/demo/distributed.py --api "http://127.0.0.1:$API_PORT" --user kfm_demo \
  --password-file "$DEMO/passwords.json" --dag "$DAG" --artifacts "$ARTIFACTS_ROOT/$MIGRATION" \
  --summary "$SUMMARY" --timeout "$TIMEOUT" --alive "${PIDS[@]}" &
HELPER=$!
wait "$HELPER" || rc=$?
HELPER=
if [ $rc != 0 ]; then
  for name in scheduler workerA workerB api-server dag-processor; do
    echo "---- last lines of $DEMO/$name.log"
    tail -n 15 "$DEMO/$name.log" 2>/dev/null || true
  done
  # The task logs that report an error (each worker keeps its own).
  while IFS= read -r f; do
    echo "---- last lines of $f"
    tail -n 25 "$f"
  done < <(grep -rlE '"level": ?"error"|\[error' "$DEMO"/worker?/logs 2>/dev/null || true)
  echo "demo-distributed: FAILED (logs in $DEMO)"
else
  echo "demo-distributed: OK (summary $SUMMARY, logs in $DEMO)"
fi
exit $rc
