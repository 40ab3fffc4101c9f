#!/usr/bin/env bash
# Local, Docker-free Elasticsearch for tests: the integ-test distribution from Maven Central
# (org.elasticsearch.distribution.integ-test-zip:elasticsearch), one node bound to
# 127.0.0.1, cluster "kfm-test-es", security off, run as an unprivileged user.
#
# The integ-test distribution has no reindex, painless or rest-root modules: _reindex and
# GET / answer 405. Its newest release on Maven Central is 8.19.x (no 9.x is published), so
# elasticsearch-py 9 must be told to send compatible-with=8 (Airflow's
# [elasticsearch] es_compat_with = 8, i.e. AIRFLOW__ELASTICSEARCH__ES_COMPAT_WITH=8; see
# docs/connections.md).
#
#   scripts/stores/elasticsearch.sh install   # fetch + unzip the distribution once
#   scripts/stores/elasticsearch.sh start     # start in background, wait until healthy, print URL
#   scripts/stores/elasticsearch.sh stop      # SIGTERM, then SIGKILL after 30 s
#   scripts/stores/elasticsearch.sh status    # exit 0 running+healthy, 1 running unhealthy, 3 stopped
#   scripts/stores/elasticsearch.sh url       # print the base URL
#
# Environment:
#   KFM_STATE_DIR               state root (default $HOME/.cache/kfm-stores); this store uses
#                               $KFM_STATE_DIR/elasticsearch/{dist,data,logs,es.out,es.pid}
#   KFM_ELASTICSEARCH_VERSION   distribution version (default 8.19.21)
#   KFM_ELASTICSEARCH_PORT      HTTP port on 127.0.0.1 (default 9201; 9200 is OpenSearch)
#   KFM_ELASTICSEARCH_HEAP      max heap (default 1g)
#   KFM_ELASTICSEARCH_JAVA_HOME Java 21+ (default /usr/lib/jvm/temurin-25-jdk-amd64 if present)
#   KFM_ELASTICSEARCH_USER      user to run as when started by root (default kfm-es; created)
#   KFM_ELASTICSEARCH_START_TIMEOUT  seconds to wait for health (default 180)
#   KFM_FRESH=1                 wipe the data dir on `start`
set -euo pipefail

VERSION="${KFM_ELASTICSEARCH_VERSION:-8.19.21}"
STATE_ROOT="${KFM_STATE_DIR:-$HOME/.cache/kfm-stores}"
STATE="$STATE_ROOT/elasticsearch"
DIST="$STATE/dist/elasticsearch-$VERSION"
DATA="$STATE/data"
LOGS="$STATE/logs"
OUT="$STATE/es.out"
PIDFILE="$STATE/es.pid"
PORT="${KFM_ELASTICSEARCH_PORT:-9201}"
TPORT="$((PORT + 100))"
URL="http://127.0.0.1:$PORT"
HEAP="${KFM_ELASTICSEARCH_HEAP:-1g}"
START_TIMEOUT="${KFM_ELASTICSEARCH_START_TIMEOUT:-180}"
RUN_USER="${KFM_ELASTICSEARCH_USER:-kfm-es}"
if [[ -n "${KFM_ELASTICSEARCH_JAVA_HOME:-}" ]]; then
  JHOME="$KFM_ELASTICSEARCH_JAVA_HOME"
elif [[ -x /usr/lib/jvm/temurin-25-jdk-amd64/bin/java ]]; then
  JHOME=/usr/lib/jvm/temurin-25-jdk-amd64
else
  JHOME="$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")"
fi

say() { echo "elasticsearch: $*" >&2; }
die() { echo "elasticsearch: ERROR: $*" >&2; exit 1; }

healthy() {
  local body
  body="$(curl -s --max-time 5 "$URL/_cluster/health?wait_for_status=yellow&timeout=5s" 2>/dev/null || true)"
  [[ "$body" == *'"cluster_name":"kfm-test-es"'* && "$body" != *'"status":"red"'* ]]
}

our_pid() {
  [[ -f "$PIDFILE" ]] || return 0
  local pid
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'org.elasticsearch' || return 0
  echo "$pid"
}

cmd_install() {
  [[ -x "$DIST/bin/elasticsearch" ]] && return 0
  command -v mvn >/dev/null || die "mvn (Maven) is needed to fetch the distribution (apt-get install maven)"
  mkdir -p "$STATE/dist"
  say "fetching elasticsearch $VERSION (integ-test-zip) from Maven Central ..."
  mvn -B -q -Dstyle.color=never dependency:copy \
    -Dartifact="org.elasticsearch.distribution.integ-test-zip:elasticsearch:$VERSION:zip" \
    -DoutputDirectory="$STATE/dist" >"$STATE/install.log" 2>&1 || { tail -20 "$STATE/install.log" >&2; die "download failed"; }
  (cd "$STATE/dist" && unzip -q -o "elasticsearch-$VERSION.zip" && rm -f "elasticsearch-$VERSION.zip")
  say "installed into $DIST"
}

cmd_start() {
  local pid
  pid="$(our_pid)"
  if [[ -n "$pid" ]] && healthy; then
    say "already running (pid $pid) at $URL"; echo "$URL"; return 0
  fi
  if healthy; then say "already running (no pid file) at $URL"; echo "$URL"; return 0; fi
  if curl -s --max-time 3 -o /dev/null "$URL/"; then
    die "port $PORT on 127.0.0.1 is used by something else; set KFM_ELASTICSEARCH_PORT"
  fi
  [[ -x "$JHOME/bin/java" ]] || die "no Java at $JHOME (Elasticsearch needs Java 21+; set KFM_ELASTICSEARCH_JAVA_HOME)"
  cmd_install
  [[ "${KFM_FRESH:-0}" == 1 ]] && rm -rf "$DATA"
  mkdir -p "$DATA" "$LOGS"
  local -a cmd=(env "ES_JAVA_HOME=$JHOME" "ES_JAVA_OPTS=-Xms512m -Xmx$HEAP" "ES_PATH_CONF=$DIST/config"
    "$DIST/bin/elasticsearch"
    -E discovery.type=single-node -E network.host=127.0.0.1 -E "http.port=$PORT" -E "transport.port=$TPORT"
    -E cluster.name=kfm-test-es -E xpack.security.enabled=false -E xpack.ml.enabled=false
    -E "path.data=$DATA" -E "path.logs=$LOGS" -E action.destructive_requires_name=false)
  if [[ "$(id -u)" == 0 ]]; then
    # Elasticsearch refuses to run as root ("can not run elasticsearch as root").
    id "$RUN_USER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$RUN_USER"
    chown -R "$RUN_USER" "$DIST" "$DATA" "$LOGS"
    local d="$STATE"
    while [[ "$d" != / ]]; do chmod o+x "$d" 2>/dev/null || true; d="$(dirname "$d")"; done
    : >"$OUT"
    nohup setpriv --reuid="$RUN_USER" --regid="$(id -g "$RUN_USER")" --init-groups "${cmd[@]}" >"$OUT" 2>&1 </dev/null &
  else
    nohup "${cmd[@]}" >"$OUT" 2>&1 </dev/null &
  fi
  echo $! >"$PIDFILE"
  say "starting (pid $!, log $OUT) ..."
  local deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    kill -0 "$(cat "$PIDFILE")" 2>/dev/null || { tail -30 "$OUT" >&2; die "exited during start-up"; }
    if healthy; then say "ready at $URL"; echo "$URL"; return 0; fi
    sleep 1
  done
  tail -30 "$OUT" >&2
  die "not healthy after ${START_TIMEOUT} s"
}

cmd_stop() {
  local pid
  pid="$(our_pid)"
  [[ -n "$pid" ]] || { rm -f "$PIDFILE"; say "not running"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; say "stopped"; return 0; }
    sleep 1
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
  say "killed"
}

cmd_status() {
  local pid
  pid="$(our_pid)"
  if healthy; then echo "elasticsearch: running${pid:+ (pid $pid)} and healthy at $URL"; return 0; fi
  [[ -n "$pid" ]] && { echo "elasticsearch: running (pid $pid) but not healthy (see $OUT)"; return 1; }
  echo "elasticsearch: not running"; return 3
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  url) echo "$URL" ;;
  *) echo "usage: $0 {install|start|stop|status|url}" >&2; exit 2 ;;
esac
