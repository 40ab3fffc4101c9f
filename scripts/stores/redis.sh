#!/usr/bin/env bash
# A private Redis (Debian's redis-server) on 127.0.0.1:$KFM_REDIS_PORT, used as the Celery
# broker of the distributed demo.  Not the system service: its own config, data dir, pid
# file and log under $KFM_STATE_DIR/redis, no persistence, loopback only.
#
# usage: scripts/stores/redis.sh {install|start|stop|status|url}
#
#   install  apt-get install redis-server when the command is missing
#   start    start daemonized and wait for PONG; returns 0 at once if already running
#   stop     SIGTERM (SIGKILL after 20 s)
#   status   exit 0 if running, 3 if not
#   url      print redis://127.0.0.1:<port>/0
#
# Environment:
#   KFM_STATE_DIR    state root (default ~/.cache/kfm-stores)
#   KFM_REDIS_PORT   port (default 6390, away from a system Redis on 6379)
set -euo pipefail

STATE="${KFM_STATE_DIR:-${HOME:-/tmp}/.cache/kfm-stores}"
BASE="$STATE/redis"
CONF="$BASE/redis.conf"
PIDFILE="$BASE/redis.pid"
LOG="$BASE/redis.log"
PORT="${KFM_REDIS_PORT:-6390}"
URL="redis://127.0.0.1:$PORT/0"

say() { printf 'redis: %s\n' "$*"; }
die() { printf 'redis: error: %s\n' "$*" >&2; exit 1; }

do_install() {
  command -v redis-server >/dev/null && return 0
  say "installing redis-server from Debian..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq redis-server >/dev/null
}

running_pid() {
  local pid
  [[ -f "$PIDFILE" ]] || return 1
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  if [[ -r "/proc/$pid/cmdline" ]]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "redis-server 127.0.0.1:$PORT" || return 1
  fi
  printf '%s\n' "$pid"
}

pong() { [[ "$(redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null)" == PONG ]]; }

do_start() {
  local pid
  if pid="$(running_pid)" && pong; then
    say "already running (pid $pid) at $URL"
    return 0
  fi
  do_install
  if pong; then die "port $PORT is already served by another Redis (set KFM_REDIS_PORT)"; fi
  mkdir -p "$BASE/data"
  cat >"$CONF" <<CONF
bind 127.0.0.1
port $PORT
protected-mode yes
daemonize yes
pidfile $PIDFILE
logfile $LOG
dir $BASE/data
save ""
appendonly no
databases 4
CONF
  redis-server "$CONF"
  for _ in $(seq 1 100); do
    if pong; then
      say "ready at $URL (pid $(cat "$PIDFILE" 2>/dev/null || echo '?'))"
      return 0
    fi
    sleep 0.1
  done
  tail -n 20 "$LOG" >&2 2>/dev/null || true
  die "not answering PING after 10 s (log: $LOG)"
}

do_stop() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PIDFILE"
    say "not running"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
  say "stopped"
}

do_status() {
  local pid
  if pid="$(running_pid)"; then say "running (pid $pid) at $URL"; return 0; fi
  say "not running"
  return 3
}

case "${1:-}" in
  install) do_install ;;
  start)   do_start ;;
  stop)    do_stop ;;
  status)  do_status ;;
  url)     printf '%s\n' "$URL" ;;
  *)       echo "usage: $0 {install|start|stop|status|url}" >&2; exit 2 ;;
esac
