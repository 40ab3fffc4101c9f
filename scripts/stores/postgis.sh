#!/usr/bin/env bash
# Local PostgreSQL 15 + PostGIS 3 for tests and the demo, without Docker.
#   postgis.sh install|start|stop|status|url
# A dedicated cluster on 127.0.0.1:${KFM_PG_PORT:-55432}, password auth (scram) for role
# ${KFM_PG_USER:-kfm}, and a template database kfm_template with PostGIS installed.
set -euo pipefail

PGVER=15
BIN=/usr/lib/postgresql/$PGVER/bin
STATE=${KFM_STATE_DIR:-/var/tmp/kfm-stores}
DIR=$STATE/postgis
DATA=$DIR/data
PORT=${KFM_PG_PORT:-55432}
PGUSER_NAME=${KFM_PG_USER:-kfm}
PGPASS=${KFM_PG_PASSWORD:-kfm-local-only}

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

install() {
  if [ -x "$BIN/initdb" ] && [ -f /usr/share/postgresql/$PGVER/extension/postgis.control ]; then
    return 0
  fi
  echo "installing postgresql-$PGVER and postgresql-$PGVER-postgis-3 from Debian..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "postgresql-$PGVER" "postgresql-$PGVER-postgis-3" >/dev/null
}

running() {
  [ -f "$DATA/postmaster.pid" ] && as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

psql_su() {
  as_pg psql -X -q -v ON_ERROR_STOP=1 -h "$DIR/run" -p "$PORT" -U postgres "$@"
}

start() {
  install
  mkdir -p "$DIR/run"
  if [ "$(id -u)" = 0 ]; then chown -R postgres: "$DIR"; chmod 755 "$STATE" "$DIR" 2>/dev/null || true; fi
  if [ "${KFM_FRESH:-0}" = 1 ] && [ -d "$DATA" ]; then stop || true; rm -rf "$DATA"; fi
  if running; then echo "postgis already running on 127.0.0.1:$PORT"; return 0; fi
  if [ ! -f "$DATA/PG_VERSION" ]; then
    as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      -E UTF8 --locale=C.UTF-8 >/dev/null
    cat >>"$DATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DIR/run'
max_connections = 200
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
max_locks_per_transaction = 1024
log_min_messages = warning
CONF
  fi
  as_pg "$BIN/pg_ctl" -D "$DATA" -l "$DIR/postgres.log" -w -t 60 start >/dev/null
  psql_su -d postgres <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PGUSER_NAME') THEN
    CREATE ROLE $PGUSER_NAME LOGIN SUPERUSER;
  END IF;
END \$\$;
ALTER ROLE $PGUSER_NAME PASSWORD '$PGPASS';
SQL
  if ! psql_su -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='kfm_template'" | grep -q 1; then
    psql_su -d postgres -c "CREATE DATABASE kfm_template OWNER $PGUSER_NAME"
    psql_su -d kfm_template -c "CREATE EXTENSION IF NOT EXISTS postgis"
    psql_su -d postgres -c "ALTER DATABASE kfm_template WITH IS_TEMPLATE true"
  fi
  if ! psql_su -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='kfm'" | grep -q 1; then
    psql_su -d postgres -c "CREATE DATABASE kfm OWNER $PGUSER_NAME TEMPLATE kfm_template"
  fi
  echo "postgis running on 127.0.0.1:$PORT (database kfm, template kfm_template)"
}

stop() {
  if running; then as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null; echo "postgis stopped"; fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running on 127.0.0.1:$PORT"; else echo "stopped"; exit 1; fi ;;
  url) echo "postgresql://$PGUSER_NAME@127.0.0.1:$PORT/kfm" ;;
  *) echo "usage: $0 install|start|stop|status|url" >&2; exit 2 ;;
esac
