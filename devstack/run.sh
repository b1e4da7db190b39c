#!/usr/bin/env bash
# Runs the consumers and the scheduler in the foreground with their logs; Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=devstack/local.env
. devstack/local.env
BIN=.venv/bin

pids=()
stop() {
  trap - INT TERM
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT

# The local Bot API double stands in for Telegram unless settings point elsewhere.
if [[ "$DIANABOT_TELEGRAM__API_BASE_URL" == http://127.0.0.1:8081* ]]; then
  "$BIN/python" -m dianabot_double --port 8081 & pids+=($!)
fi
"$BIN/faststream" run consumers.app:app & pids+=($!)
"$BIN/faststream" run schedulers.app:app & pids+=($!)
# Stop everything as soon as one process ends (e.g. a start-up failure).
wait -n "${pids[@]}"
