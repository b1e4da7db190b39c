#!/usr/bin/env bash
# promtool (Prometheus's rule checker and rule unit-test runner) for tests/unit/test_alert_rules.py.
# Installs Debian's `prometheus` package with apt-get when promtool is missing, as pg.sh installs
# PostgreSQL; a no-op when it is there. Only promtool is wanted: the server the package brings is
# stopped and disabled if the package started it. `make test` and `make unit` run this first.
set -euo pipefail

log() { echo "promtool.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# apt-get needs root: as root run it as is, otherwise through sudo if there is one.
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    die "need root to run: $* (or install Debian's prometheus package, which has promtool)"
  fi
}

command -v promtool >/dev/null && exit 0

log "promtool not found; installing Debian's prometheus package"
as_root apt-get update -q
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
  as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
command -v promtool >/dev/null || die "promtool still missing after apt-get install prometheus"
log "installed: $(promtool --version 2>&1 | head -n 1)"
