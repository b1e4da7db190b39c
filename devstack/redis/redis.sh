#!/usr/bin/env bash
# Private Redis instance for the Celery peer benchmark (bench/celery_peer.py); no Docker, no systemd.
#
#   redis.sh up       install redis-server if missing, start (fine when already up)
#   redis.sh down     stop; fine when already down
#   redis.sh status   exit 0 iff the instance answers PING
#
# Environment overrides (defaults in brackets):
#   REDIS_PORT [6399]
#
# Layout of <repo>/.devstack/redis: redis.pid, redis.log, and its working dir (no persistence:
# the benchmark's queue is throwaway). URL: redis://127.0.0.1:$REDIS_PORT/0
set -euo pipefail

REDIS_PORT="${REDIS_PORT:-6399}"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/../.." && pwd)"
HOME_DIR="$REPO_DIR/.devstack/redis"
PIDFILE="$HOME_DIR/redis.pid"
LOGFILE="$HOME_DIR/redis.log"

log() { echo "redis.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# apt-get needs root: as root run it as is, otherwise through sudo if there is one.
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    die "need root to run: $*"
  fi
}

install_server() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return 0
  log "redis-server not found; installing Debian's redis-server package"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server
  command -v redis-server >/dev/null || die "redis-server still missing after apt-get install"
}

answers() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -qx PONG; }

# The pid in our pidfile, if that process is alive (a stale file after a reboot is not).
our_pid() {
  local pid
  [[ -f "$PIDFILE" ]] || return 1
  pid="$(cat "$PIDFILE")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

cmd_up() {
  local t0 i
  t0="$(now)"
  install_server
  if our_pid >/dev/null && answers; then
    log "already running (port $REDIS_PORT)"
    return 0
  fi
  # Not ours but answering: someone else's server; fail clearly rather than share it.
  answers && die "port $REDIS_PORT answers PING but is not ours ($PIDFILE); pick another REDIS_PORT"
  mkdir -p "$HOME_DIR"
  chmod 700 "$HOME_DIR"
  # Loopback only, no snapshots, no AOF: a throwaway queue for one benchmark run.
  # `9<&-`: the daemon must not inherit our flock fd, or it would hold the lock forever.
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes \
    --dir "$HOME_DIR" --pidfile "$PIDFILE" --logfile "$LOGFILE" \
    --save "" --appendonly no 9<&-
  for i in $(seq 100); do
    answers && break
    sleep 0.1
  done
  answers || { tail -n 30 "$LOGFILE" >&2 || true; die "redis-server did not answer PING (log: $LOGFILE)"; }
  log "up in $(elapsed "$t0")s: redis://127.0.0.1:$REDIS_PORT/0 (redis $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')), files in $HOME_DIR"
}

cmd_down() {
  local pid i
  if ! pid="$(our_pid)"; then
    log "not running"
    return 0
  fi
  kill -TERM "$pid"
  for i in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || { log "stopped"; return 0; }
    sleep 0.1
  done
  die "redis-server (pid $pid) did not stop within 10 s"
}

cmd_status() {
  if answers; then
    log "answering on 127.0.0.1:$REDIS_PORT"
  else
    log "not answering on 127.0.0.1:$REDIS_PORT"
    return 1
  fi
}

usage() {
  sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

main() {
  local cmd="${1:-}"
  case "$cmd" in
    up | down)
      # Serialize state-changing commands (e.g. parallel CI steps) on this script file.
      exec 9<"${BASH_SOURCE[0]}"
      flock -w 300 9 || die "timed out waiting for another redis.sh"
      "cmd_$cmd"
      ;;
    status) cmd_status ;;
    *) usage ;;
  esac
}

main "$@"
