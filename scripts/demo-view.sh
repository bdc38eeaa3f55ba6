#!/usr/bin/env bash
# `make demo-view`: the demo's database served again, to look at its sweeps in the browser. Reads
# need no token; the last line is the page to open. Ctrl-C stops it. PORT=N picks the port.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
BIN=${BIN:-target/debug}
DEMO=${DEMO:-.demo}
if [ ! -f "$DEMO/sweeps.db" ]; then
  echo "demo-view: no $DEMO/sweeps.db yet: run make demo first" >&2
  exit 1
fi
"$BIN/server" serve --db "$DEMO/sweeps.db" --listen "127.0.0.1:${PORT:-0}" >"$DEMO/view.out" 2>"$DEMO/view.log" &
SERVER_PID=$!
trap 'kill "$SERVER_PID" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
URL=$(wait_for_listening "$DEMO/view.out") || { cat "$DEMO/view.log" >&2; exit 1; }
echo "demo-view: the demo's sweeps (Ctrl-C stops the coordinator):"
echo "$URL/"
wait "$SERVER_PID"
