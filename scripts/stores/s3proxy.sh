#!/usr/bin/env bash
# Local, Docker-free S3-compatible object store (s3proxy, filesystem backend) for
# tests and the distributed demo.
#
# s3proxy (org.gaul:s3proxy, see scripts/stores/s3proxy/pom.xml) serves the S3 API
# on 127.0.0.1:$KFM_S3_PORT and keeps objects as plain files under
# $KFM_STATE_DIR/s3proxy/data (jclouds "filesystem" provider).  Requests must be
# signed (AWS v2 or v4) with the fixed local credentials below; they protect
# nothing and are for this loopback server only.  `start` creates the bucket
# $KFM_S3_BUCKET (default kfm-artifacts).
#
# usage: scripts/stores/s3proxy.sh {install|start|stop|status|url}
#
#   install  copy the jars into $STATE/s3proxy/lib (no-op when already there)
#   start    install if needed, start in the background, wait until the port
#            answers HTTP, create the bucket; returns 0 at once if already running
#   stop     SIGTERM, SIGKILL after 20 s
#   status   exit 0 if running (prints pid and url), 3 if not
#   url      print http://127.0.0.1:<port>
#
# Environment:
#   KFM_STATE_DIR        state root (default ~/.cache/kfm-stores); files are under
#                        $KFM_STATE_DIR/s3proxy: lib/ data/ s3proxy.conf s3proxy.log s3proxy.pid
#   KFM_S3_PORT          port (default 9380)
#   KFM_S3_ACCESS_KEY    access key (default kfm-local)
#   KFM_S3_SECRET_KEY    secret key (default kfm-local-only)
#   KFM_S3_BUCKET        bucket created on start (default kfm-artifacts)
#   KFM_FRESH=1          wipe the stored objects on start (only when it starts the
#                        server; a running server is left alone)
#   KFM_S3_JAVA_OPTS     extra JVM options, appended
#
# Needs: Java 17+, curl 7.75+ (SigV4 signing for the bucket); Maven only for `install`.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC_DIR="$HERE/s3proxy"
POM="$SRC_DIR/pom.xml"
LOGBACK="$SRC_DIR/logback.xml"

STATE="${KFM_STATE_DIR:-${HOME:-/tmp}/.cache/kfm-stores}"
BASE="$STATE/s3proxy"
LIB="$BASE/lib"
DATA="$BASE/data"
CONF="$BASE/s3proxy.conf"
LOG="$BASE/s3proxy.log"
PIDFILE="$BASE/s3proxy.pid"
LOCKFILE="$BASE/.lock"
STAMP="$LIB/.kfm-installed"

HOST=127.0.0.1
PORT="${KFM_S3_PORT:-9380}"
ACCESS_KEY="${KFM_S3_ACCESS_KEY:-kfm-local}"
SECRET_KEY="${KFM_S3_SECRET_KEY:-kfm-local-only}"
BUCKET="${KFM_S3_BUCKET:-kfm-artifacts}"
START_TIMEOUT="${KFM_S3_START_TIMEOUT:-90}"
STOP_TIMEOUT=20
URL="http://$HOST:$PORT"

# Small heap and C1-only JIT: the server moves a few small JSON files per run.
JVM_FLAGS=(-Xms64m -Xmx384m -XX:+UseSerialGC -XX:TieredStopAtLevel=1
  "-Dlogback.configurationFile=$LOGBACK")

say() { printf 's3proxy: %s\n' "$*"; }
die() { printf 's3proxy: error: %s\n' "$*" >&2; exit 1; }
now() { date +%s; }

java_bin() {
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    printf '%s\n' "$JAVA_HOME/bin/java"
  else
    command -v java || die "java not found (need Java 17+; Debian: apt-get install openjdk-17-jre-headless)"
  fi
}

pom_sum() { cat "$POM" | sha256sum | cut -d' ' -f1; }

is_installed() {
  [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$(pom_sum)" ]] && compgen -G "$LIB/s3proxy-*.jar" >/dev/null
}

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
  say "installing s3proxy jars into $LIB (Maven, first time only)..."
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

# pid from the pid file, if that process is alive and is our server.
running_pid() {
  local pid
  [[ -f "$PIDFILE" ]] || return 1
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [[ -r "/proc/$pid/cmdline" ]]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "org.gaul.s3proxy.Main --properties $CONF" || return 1
  fi
  printf '%s\n' "$pid"
}

# Any HTTP answer (an unsigned request gets 403) means the server is up.
http_up() {
  local code
  code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$URL/" 2>/dev/null || true)"
  [[ "$code" =~ ^[1-5][0-9][0-9]$ ]]
}

make_bucket() {
  local code
  # The empty body's SHA-256 is given explicitly: curl before 8.x does not add the
  # x-amz-content-sha256 header S3 servers check for a SigV4-signed request.
  code="$(curl -s -o "$BASE/bucket.out" -m 10 -w '%{http_code}' -X PUT \
    -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
    --aws-sigv4 "aws:amz:us-east-1:s3" --user "$ACCESS_KEY:$SECRET_KEY" "$URL/$BUCKET" || true)"
  case "$code" in
    200) say "bucket $BUCKET created" ;;
    409) say "bucket $BUCKET already there" ;;
    *) cat "$BASE/bucket.out" >&2 2>/dev/null || true; die "could not create bucket $BUCKET (HTTP $code)" ;;
  esac
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

wait_ready() {
  local pid="$1" t0="$2"
  while :; do
    kill -0 "$pid" 2>/dev/null || { say "process $pid exited before becoming ready" >&2; fail_start ""; }
    http_up && return 0
    if (( $(now) >= t0 + START_TIMEOUT )); then
      say "not ready after ${START_TIMEOUT} s" >&2
      fail_start "$pid"
    fi
    sleep 0.3
  done
}

do_start() {
  local pid t0 java
  t0="$(now)"
  if pid="$(running_pid)"; then
    wait_ready "$pid" "$t0"
    make_bucket
    say "already running (pid $pid) at $URL"
    return 0
  fi
  rm -f "$PIDFILE"
  if http_up; then
    die "port $PORT on $HOST is already in use by another process (set KFM_S3_PORT)"
  fi
  do_install
  java="$(java_bin)"
  if [[ "${KFM_FRESH:-0}" == 1 ]]; then
    say "KFM_FRESH=1: wiping $DATA"
    rm -rf "$DATA"
  fi
  mkdir -p "$DATA"
  umask 077
  cat >"$CONF" <<CONF
s3proxy.endpoint=$URL
s3proxy.authorization=aws-v2-or-v4
s3proxy.identity=$ACCESS_KEY
s3proxy.credential=$SECRET_KEY
jclouds.provider=filesystem
jclouds.filesystem.basedir=$DATA
CONF
  umask 022
  [[ -f "$LOG" ]] && mv -f "$LOG" "$LOG.1"
  local -a extra=()
  if [[ -n "${KFM_S3_JAVA_OPTS:-}" ]]; then
    read -r -a extra <<<"$KFM_S3_JAVA_OPTS"
  fi
  (
    exec 9>&- # do not hand the lock fd to the server
    cd "$BASE"
    exec nohup "$java" "${JVM_FLAGS[@]}" ${extra[@]+"${extra[@]}"} \
      -cp "$LIB/*" org.gaul.s3proxy.Main --properties "$CONF" </dev/null >"$LOG" 2>&1
  ) &
  pid=$!
  printf '%s\n' "$pid" >"$PIDFILE"
  say "starting (pid $pid), log $LOG"
  wait_ready "$pid" "$t0"
  make_bucket
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
  fi
  rm -f "$PIDFILE"
  say "stopped"
}

do_status() {
  local pid
  if pid="$(running_pid)"; then
    if http_up; then say "running (pid $pid) at $URL"; else say "starting (pid $pid), not ready yet"; fi
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
