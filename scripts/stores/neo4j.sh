#!/usr/bin/env bash
# Local, Docker-free Neo4j 5.26 LTS (community) server for tests.
#
# An embedded DatabaseManagementService with the Bolt connector on
# 127.0.0.1:$KFM_NEO4J_BOLT_PORT, auth disabled, HTTP off (see
# scripts/stores/neo4j/Launcher.java).  Jars come from Maven Central through
# scripts/stores/neo4j/pom.xml; nothing is downloaded at start once installed.
#
# usage: scripts/stores/neo4j.sh {install|start|stop|status|url}
#
#   install  copy the jars into $STATE/neo4j/lib (no-op when already there)
#   start    install if needed, start in the background, wait until Bolt is up;
#            returns 0 at once if it is already running
#   stop     SIGTERM (clean shutdown), SIGKILL after 30 s
#   status   exit 0 if running (prints pid and url), 3 if not
#   url      print bolt://127.0.0.1:<port>
#
# Environment:
#   KFM_STATE_DIR            state root (default ~/.cache/kfm-stores); files are
#                            under $KFM_STATE_DIR/neo4j: lib/ home/ neo4j.log neo4j.pid
#   KFM_NEO4J_BOLT_PORT      Bolt port (default 7687)
#   KFM_FRESH=1              wipe the database home on start (only when it starts
#                            the server; a running server is left alone)
#   KFM_NEO4J_START_TIMEOUT  seconds to wait for readiness (default 180)
#   KFM_NEO4J_STOP_TIMEOUT   seconds to wait before SIGKILL (default 30)
#   KFM_NEO4J_JAVA           java binary (default $JAVA_HOME/bin/java, else java); >= 17
#   KFM_NEO4J_JAVA_OPTS      extra JVM options, appended
#
# Needs: Java 17+ (21 also supported by Neo4j 5.26); Maven only for `install`.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC_DIR="$HERE/neo4j"
POM="$SRC_DIR/pom.xml"
LAUNCHER="$SRC_DIR/Launcher.java"

STATE="${KFM_STATE_DIR:-${HOME:-/tmp}/.cache/kfm-stores}"
BASE="$STATE/neo4j"
LIB="$BASE/lib"
HOME_DIR="$BASE/home"
LOG="$BASE/neo4j.log"
PIDFILE="$BASE/neo4j.pid"
LOCKFILE="$BASE/.lock"
STAMP="$LIB/.kfm-installed"

HOST=127.0.0.1
PORT="${KFM_NEO4J_BOLT_PORT:-7687}"
START_TIMEOUT="${KFM_NEO4J_START_TIMEOUT:-180}"
STOP_TIMEOUT="${KFM_NEO4J_STOP_TIMEOUT:-30}"
URL="bolt://$HOST:$PORT"

# JVM flags.  The module flags are the ones Neo4j 5.26's own conf/neo4j.conf
# passes through `server.jvm.additional` ("Open modules for neo4j to allow
# internal access" + "Enable native memory access"); the same three --add-opens
# are Neo4j's build-wide `jdk.custom.options` in org.neo4j:parent:5.26.x.
# Neo4j's conf has no --add-exports.  The other -XX/-D flags below are also
# from that file (ExitOnOutOfMemoryError is there but commented out);
# -XX:+TrustFinalNonStaticFields / AlwaysPreTouch are left out (the file itself
# says to drop the former in embedded mode).
JVM_MODULE_FLAGS=(
  --add-opens=java.base/java.nio=ALL-UNNAMED
  --add-opens=java.base/java.io=ALL-UNNAMED
  --add-opens=java.base/sun.nio.ch=ALL-UNNAMED
  --enable-native-access=ALL-UNNAMED
)
JVM_FLAGS=(
  -Xms256m -Xmx1g
  -XX:+UseG1GC
  # Not from neo4j.conf: C1-only JIT.  On 2 busy cores this cut start-up from
  # ~21-25 s to ~14 s; test queries are short, so peak C2 speed is not needed.
  # Override with KFM_NEO4J_JAVA_OPTS=-XX:TieredStopAtLevel=4 (last flag wins).
  -XX:TieredStopAtLevel=1
  -XX:-OmitStackTraceInFastThrow
  -XX:+ExitOnOutOfMemoryError
  -Djdk.nio.maxCachedBufferSize=1024
  -Dio.netty.tryReflectionSetAccessible=true
  -Dlog4j2.disable.jmx=true
  "${JVM_MODULE_FLAGS[@]}"
)

say() { printf 'neo4j: %s\n' "$*"; }
die() { printf 'neo4j: error: %s\n' "$*" >&2; exit 1; }

now() { date +%s; }

java_bin() {
  if [[ -n "${KFM_NEO4J_JAVA:-}" ]]; then
    printf '%s\n' "$KFM_NEO4J_JAVA"
  elif [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    printf '%s\n' "$JAVA_HOME/bin/java"
  else
    command -v java || die "java not found (need Java 17+; Debian: apt-get install openjdk-17-jre-headless)"
  fi
}

check_java() {
  local java="$1" ver major
  ver="$("$java" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')" || true
  [[ -n "$ver" ]] || die "cannot run '$java -version'"
  major="${ver%%.*}"
  [[ "$major" == 1 ]] && major="$(cut -d. -f2 <<<"$ver")"
  [[ "$major" =~ ^[0-9]+$ && "$major" -ge 17 ]] || die "Java $ver at $java is too old; Neo4j 5.26 needs 17 or 21"
}

pom_sum() { sha256sum "$POM" | cut -d' ' -f1; }

is_installed() {
  [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$(pom_sum)" ]] && compgen -G "$LIB/neo4j-bolt-*.jar" >/dev/null
}

# Serialise install/start/stop of one state dir (parallel test runners).
with_lock() {
  mkdir -p "$BASE"
  exec 9>"$LOCKFILE"
  if command -v flock >/dev/null 2>&1; then
    flock -w 600 9 || die "could not lock $LOCKFILE"
  fi
}

do_install() {
  if is_installed; then
    say "jars already installed in $LIB"
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found (needed once to fetch the jars; Debian: apt-get install maven)"
  local t0 tmp
  t0="$(now)"
  tmp="$BASE/lib.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  say "installing Neo4j jars into $LIB (Maven, first time only)..."
  if ! mvn -q -B -f "$POM" dependency:copy-dependencies \
        -DoutputDirectory="$tmp" -DincludeScope=runtime >"$BASE/install.log" 2>&1; then
    tail -n 40 "$BASE/install.log" >&2 || true
    rm -rf "$tmp"
    die "maven dependency:copy-dependencies failed (full log: $BASE/install.log)"
  fi
  pom_sum >"$tmp/.kfm-installed"
  rm -rf "$LIB"
  mv "$tmp" "$LIB"
  say "installed $(find "$LIB" -name '*.jar' | wc -l) jars, $(du -sh "$LIB" | cut -f1), in $(( $(now) - t0 )) s"
}

# pid of our server from the pid file, if that process is alive and really is
# our launcher (guards against a stale pid file after pid reuse).
running_pid() {
  local pid
  [[ -f "$PIDFILE" ]] || return 1
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [[ -r "/proc/$pid/cmdline" ]]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "Launcher.java $HOME_DIR " || return 1
  fi
  printf '%s\n' "$pid"
}

port_open() {
  (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null
}

log_ready() {
  [[ -f "$LOG" ]] && grep -q "^READY $URL\$" "$LOG"
}

fail_start() {
  local pid="${1:-}"
  say "failed to start; last 40 lines of $LOG:" >&2
  tail -n 40 "$LOG" >&2 2>/dev/null || true
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 10); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
  exit 1
}

# Wait until the log has the READY line and the Bolt port accepts TCP.
wait_ready() {
  local pid="$1" t0="$2" deadline
  deadline=$(( t0 + START_TIMEOUT ))
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      say "process $pid exited before becoming ready" >&2
      fail_start ""
    fi
    if log_ready && port_open; then
      return 0
    fi
    if (( $(now) >= deadline )); then
      say "not ready after ${START_TIMEOUT} s" >&2
      fail_start "$pid"
    fi
    sleep 0.5
  done
}

do_start() {
  local pid t0 java
  t0="$(now)"
  if pid="$(running_pid)"; then
    if log_ready && port_open; then
      say "already running (pid $pid) at $URL"
      return 0
    fi
    say "already starting (pid $pid); waiting"
    wait_ready "$pid" "$t0"
    say "ready at $URL (pid $pid)"
    return 0
  fi
  rm -f "$PIDFILE"
  if port_open; then
    die "port $PORT on $HOST is already in use by another process (set KFM_NEO4J_BOLT_PORT)"
  fi

  do_install
  java="$(java_bin)"
  check_java "$java"

  if [[ "${KFM_FRESH:-0}" == 1 ]]; then
    say "KFM_FRESH=1: wiping $HOME_DIR"
    rm -rf "$HOME_DIR"
  fi
  mkdir -p "$HOME_DIR"
  [[ -f "$LOG" ]] && mv -f "$LOG" "$LOG.1"

  local -a extra=()
  if [[ -n "${KFM_NEO4J_JAVA_OPTS:-}" ]]; then
    read -r -a extra <<<"$KFM_NEO4J_JAVA_OPTS"
  fi

  (
    exec 9>&- # do not hand the lock fd to the server
    # Neo4j recommends >= 40000 open files; raise the soft limit if allowed.
    hard="$(ulimit -Hn)"
    if [[ "$hard" == unlimited || "$hard" -gt 65536 ]]; then hard=65536; fi
    soft="$(ulimit -Sn)"
    if [[ "$soft" != unlimited && "$soft" -lt "$hard" ]]; then
      ulimit -Sn "$hard" 2>/dev/null || true
    fi
    cd "$BASE"
    exec nohup "$java" "${JVM_FLAGS[@]}" ${extra[@]+"${extra[@]}"} \
      -cp "$LIB/*" "$LAUNCHER" "$HOME_DIR" "$PORT" </dev/null >"$LOG" 2>&1
  ) &
  pid=$!
  printf '%s\n' "$pid" >"$PIDFILE"
  say "starting (pid $pid), log $LOG"
  wait_ready "$pid" "$t0"
  say "ready at $URL (pid $pid) in $(( $(now) - t0 )) s"
}

do_stop() {
  local pid i
  if ! pid="$(running_pid)"; then
    rm -f "$PIDFILE"
    say "not running"
    return 0
  fi
  say "stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for (( i = 0; i < STOP_TIMEOUT * 2; i++ )); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "still running after ${STOP_TIMEOUT} s; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
  rm -f "$PIDFILE"
  say "stopped"
}

do_status() {
  local pid
  if pid="$(running_pid)"; then
    if log_ready && port_open; then
      say "running (pid $pid) at $URL"
    else
      say "starting (pid $pid), not ready yet"
    fi
    return 0
  fi
  say "not running"
  return 3
}

case "${1:-}" in
  install) with_lock; do_install ;;
  start)   with_lock; do_start ;;
  stop)    with_lock; do_stop ;;
  status)  do_status ;;
  url)     printf '%s\n' "$URL" ;;
  *)       echo "usage: $0 {install|start|stop|status|url}" >&2; exit 2 ;;
esac
