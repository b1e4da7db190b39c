#!/usr/bin/env bash
# Private PostgreSQL cluster for local development and CI (no Docker, no systemd).
#
#   pg.sh up       install server if missing, initdb if needed, start, ensure role + dbs
#   pg.sh down     stop (fast); fine when already down
#   pg.sh reset    down, then delete the cluster's home dir
#   pg.sh status   exit 0 iff the server accepts connections
#   pg.sh psql ... psql as $PG_USER to $PG_DB over TCP (extra args passed through)
#
# Environment overrides (defaults in brackets):
#   PG_PORT [5432]  PG_USER [dianabot]  PG_PASSWORD [dianabot]
#   PG_DB [dianabot]  PG_TEST_DB [dianabot_test]
#   PG_HOME_DIR [<repo>/.devstack/postgres, or /var/tmp/dianabot-postgres when the
#               'postgres' OS user cannot traverse the repo path]
#   PG_FAST=1   fsync=off, synchronous_commit=off, full_page_writes=off (throwaway data only)
#
# Layout of PG_HOME_DIR: data/ (PGDATA), run/ (unix socket), postgres.log, .dianabot-devstack
# URL: postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB
set -euo pipefail

PG_PORT="${PG_PORT:-5432}"
PG_USER="${PG_USER:-dianabot}"
PG_PASSWORD="${PG_PASSWORD:-dianabot}"
PG_DB="${PG_DB:-dianabot}"
PG_TEST_DB="${PG_TEST_DB:-dianabot_test}"
PG_FAST="${PG_FAST:-0}"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/../.." && pwd)"
FALLBACK_HOME=/var/tmp/dianabot-postgres
MARKER=.dianabot-devstack # proves a dir is ours before `reset` deletes it
SUPERUSER=postgres        # cluster superuser name (initdb -U), reached via unix socket

log() { echo "pg.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

IS_ROOT=0
[[ $(id -u) -eq 0 ]] && IS_ROOT=1

# initdb/postgres refuse to run as root, so as root we run server-side tools as the
# 'postgres' OS user; as a normal user we simply own the cluster ourselves.
# `cd /` avoids "could not change directory" noise when $PWD is private to root.
# `9<&-`: the postmaster must not inherit our flock fd, or it would hold the lock forever.
as_pg() {
  if ((IS_ROOT)); then
    (cd / && runuser -u postgres -- "$@") 9<&-
  else
    "$@" 9<&-
  fi
}

# Newest installed server version, e.g. /usr/lib/postgresql/15/bin. Empty if none.
find_bindir() {
  local f
  f="$(ls -1d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n1 || true)"
  [[ -n "$f" ]] && dirname "$f"
  return 0
}

BIN="$(find_bindir)"
require_bin() {
  [[ -n "$BIN" ]] || die "no PostgreSQL server found under /usr/lib/postgresql/*/bin; run '$0 up' to install it"
}

install_server() {
  [[ -n "$BIN" ]] && return 0
  ((IS_ROOT)) || die "PostgreSQL server not installed and not root; run: sudo apt-get install -y postgresql"
  log "no PostgreSQL server binaries found; installing Debian's postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q && apt-get install -y -q postgresql
  BIN="$(find_bindir)"
  require_bin
}

# Pick the cluster home. The repo-local default only works if the 'postgres' OS user can
# traverse every parent dir (a repo under /root usually is not); otherwise use /var/tmp.
# Decided the same way by every subcommand, so up/down/status agree.
resolve_home() {
  if [[ -n "${PG_HOME_DIR:-}" ]]; then
    [[ "$PG_HOME_DIR" = /* ]] || PG_HOME_DIR="$PWD/$PG_HOME_DIR"
  else
    PG_HOME_DIR="$REPO_DIR/.devstack/postgres"
    if ((IS_ROOT)) && id postgres >/dev/null 2>&1 &&
      ! runuser -u postgres -- test -x "$REPO_DIR" 2>/dev/null; then
      PG_HOME_DIR="$FALLBACK_HOME"
    fi
  fi
  PGDATA="$PG_HOME_DIR/data"
  LOGFILE="$PG_HOME_DIR/postgres.log"
  # Unix socket paths are limited to ~107 bytes; fall back to /tmp for deep repo paths.
  SOCKDIR="$PG_HOME_DIR/run"
  if ((${#SOCKDIR} + ${#PG_PORT} + 10 > 100)); then
    SOCKDIR="/tmp/dianabot-pg-$(id -u)-$(printf '%s' "$PG_HOME_DIR" | cksum | cut -d' ' -f1)"
  fi
}

initialized() { [[ -f "$PGDATA/PG_VERSION" ]]; }
running() { initialized && as_pg "$BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }

# Port/socket of the running server from postmaster.pid (lines 4 and 5), so admin
# connections work even if PG_PORT changed since the server was started.
live_port() { sed -n 4p "$PGDATA/postmaster.pid"; }
live_sockdir() { sed -n 5p "$PGDATA/postmaster.pid"; }

port_listeners() { ss -Hltnp "( sport = :$1 )" 2>/dev/null || true; }
port_taken() {
  if command -v ss >/dev/null; then
    [[ -n "$(port_listeners "$1")" ]]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

# Our cluster is not running, so anything on the port is someone else. The common case on
# a fresh machine is Debian's auto-created 'main' cluster (apt starts it on 5432): stop it
# and say so. Anything else: fail clearly rather than fight over the port.
free_port() {
  port_taken "$PG_PORT" || return 0
  if command -v pg_lsclusters >/dev/null; then
    local ver name port status
    while read -r ver name port status _; do
      if [[ "$name" == main && "$port" == "$PG_PORT" && "$status" == online* ]]; then
        log "Debian's default cluster $ver/main is running on port $PG_PORT; stopping it" \
          "(pg_ctlcluster $ver main stop). Restart it later with: pg_ctlcluster $ver main start"
        ((IS_ROOT)) || die "need root to stop it; run: sudo pg_ctlcluster $ver main stop"
        pg_ctlcluster "$ver" main stop
      fi
    done < <(pg_lsclusters -h 2>/dev/null || true)
  fi
  local i
  for i in $(seq 50); do port_taken "$PG_PORT" || return 0; sleep 0.1; done
  log "port $PG_PORT is already in use by another server:"
  port_listeners "$PG_PORT" | sed 's/^/pg.sh:   /' >&2
  die "port $PG_PORT taken; stop that server or pick another port, e.g. PG_PORT=$((PG_PORT + 1)) $0 up"
}

prepare_dirs() {
  mkdir -p "$PG_HOME_DIR" "$SOCKDIR"
  touch "$PG_HOME_DIR/$MARKER"
  # The cluster owner needs the home dir; socket dir private (0700) since local auth is trust.
  if ((IS_ROOT)); then
    id postgres >/dev/null 2>&1 || die "OS user 'postgres' missing (normally created by the postgresql package)"
    chown postgres:postgres "$PG_HOME_DIR" "$SOCKDIR"
    runuser -u postgres -- test -w "$PG_HOME_DIR" ||
      die "OS user 'postgres' cannot write $PG_HOME_DIR (parent dirs not traversable?); set PG_HOME_DIR"
  fi
  chmod 700 "$PG_HOME_DIR" "$SOCKDIR"
}

init_cluster() {
  log "initdb ($("$BIN/postgres" --version)) in $PGDATA"
  local nosync=()
  [[ "$PG_FAST" == 1 ]] && nosync=(--no-sync)
  # C locale + UTF8: deterministic sorting in tests, no dependency on generated locales.
  as_pg "$BIN/initdb" -D "$PGDATA" -U "$SUPERUSER" -E UTF8 --no-locale \
    --auth-local=trust --auth-host=scram-sha-256 "${nosync[@]}" >"$PG_HOME_DIR/initdb.log" 2>&1 ||
    { cat "$PG_HOME_DIR/initdb.log" >&2; die "initdb failed"; }
  # Only the unix socket (private dir, owner-only) is trusted; TCP always needs a password.
  as_pg tee "$PGDATA/pg_hba.conf" >/dev/null <<'EOF'
# Written by devstack/postgres/pg.sh
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  trust
host    all       all   127.0.0.1/32   scram-sha-256
EOF
  echo "include_if_exists = 'devstack.conf'" | as_pg tee -a "$PGDATA/postgresql.conf" >/dev/null
}

# Rewritten on every start so PG_PORT / PG_FAST changes take effect.
write_settings() {
  {
    echo "# Written by devstack/postgres/pg.sh on each start; edits are lost."
    echo "listen_addresses = '127.0.0.1'"
    echo "port = $PG_PORT"
    echo "unix_socket_directories = '$SOCKDIR'"
    echo "unix_socket_permissions = 0700"
    echo "max_connections = 200"
    echo "password_encryption = 'scram-sha-256'"
    # Commit times per row (pg_xact_commit_timestamp), for the pipeline benchmark's latency.
    echo "track_commit_timestamp = on"
    if [[ "$PG_FAST" == 1 ]]; then
      echo "# PG_FAST=1: trade crash safety for speed (test data only)"
      echo "fsync = off"
      echo "synchronous_commit = off"
      echo "full_page_writes = off"
    fi
  } | as_pg tee "$PGDATA/devstack.conf" >/dev/null
}

start_server() {
  as_pg "$BIN/pg_ctl" -D "$PGDATA" -l "$LOGFILE" -w -t 60 start >/dev/null || {
    tail -n 30 "$LOGFILE" >&2 || true
    die "server failed to start (log: $LOGFILE)"
  }
}

# Idempotent: create the role/dbs if missing, (re)set password/attrs/owner every time.
ensure_role_and_dbs() {
  as_pg "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$(live_sockdir)" -p "$(live_port)" \
    -U "$SUPERUSER" -d postgres \
    -v user="$PG_USER" -v pw="$PG_PASSWORD" -v db="$PG_DB" -v testdb="$PG_TEST_DB" <<'SQL'
SELECT format('CREATE ROLE %I', :'user')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'user') \gexec
ALTER ROLE :"user" WITH LOGIN CREATEDB PASSWORD :'pw';
SELECT format('CREATE DATABASE %I OWNER %I', d, :'user')
  FROM unnest(ARRAY[:'db', :'testdb']) AS d
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = d) \gexec
ALTER DATABASE :"db" OWNER TO :"user";
ALTER DATABASE :"testdb" OWNER TO :"user";
SQL
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

cmd_up() {
  local t0
  t0="$(now)"
  install_server
  if running; then
    local port
    port="$(live_port)"
    [[ "$port" == "$PG_PORT" ]] || log "WARNING: already running on port $port, not PG_PORT=$PG_PORT (run '$0 down' first to change)"
    ensure_role_and_dbs
    log "already running (port $port); role/dbs ensured in $(elapsed "$t0")s"
    return 0
  fi
  free_port
  prepare_dirs
  initialized || init_cluster
  write_settings
  start_server
  ensure_role_and_dbs
  log "up in $(elapsed "$t0")s: postgresql://$PG_USER:***@127.0.0.1:$PG_PORT/$PG_DB (+ $PG_TEST_DB), data in $PGDATA"
}

cmd_down() {
  if [[ -z "$BIN" ]] || ! initialized; then
    log "no cluster in $PGDATA; nothing to stop"
    return 0
  fi
  if ! running; then
    log "not running"
    return 0
  fi
  as_pg "$BIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null
  log "stopped"
}

cmd_reset() {
  cmd_down
  if [[ -e "$PG_HOME_DIR" ]]; then
    # Refuse to delete a dir this script did not create (e.g. a mistyped PG_HOME_DIR).
    [[ -f "$PG_HOME_DIR/$MARKER" ]] || die "$PG_HOME_DIR lacks $MARKER; not deleting it"
    rm -rf -- "$PG_HOME_DIR"
  fi
  [[ "$SOCKDIR" == "$PG_HOME_DIR"/* ]] || rm -rf -- "$SOCKDIR"
  log "deleted $PG_HOME_DIR"
}

cmd_status() {
  require_bin
  local rc=0
  "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" || rc=$?
  if ((rc == 0)); then
    log "accepting connections on 127.0.0.1:$PG_PORT"
  else
    log "not accepting connections on 127.0.0.1:$PG_PORT (pg_isready exit $rc)"
  fi
  return "$rc"
}

cmd_psql() {
  require_bin
  PGPASSWORD="$PG_PASSWORD" exec "$BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" "$@"
}

usage() {
  sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  resolve_home
  case "$cmd" in
    up | down | reset)
      # Serialize state-changing commands (e.g. parallel CI steps) on this script file.
      exec 9<"${BASH_SOURCE[0]}"
      flock -w 300 9 || die "timed out waiting for another pg.sh"
      "cmd_$cmd"
      ;;
    status) cmd_status ;;
    psql) cmd_psql "$@" ;;
    *) usage ;;
  esac
}

main "$@"
