#!/usr/bin/env bash
# Exports, figures and reads of a 100,000-job sweep (a benchmark, not a test): makes the sweep with
# `server synth`, serves it, times each request twice with curl, and prints the coordinator's peak
# anonymous memory (sampled every 50 ms; VmHWM also counts the read connections' mapped file pages).
# usage: scripts/bench-exports.sh [SERVER_BINARY]   (BENCH_JOBS, BENCH_EPOCHS: another size)
set -u
BIN=${1:-target/debug/server}
JOBS=${BENCH_JOBS:-100000}
EPOCHS=${BENCH_EPOCHS:-20}
DIR=$(mktemp -d)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"; }
trap cleanup EXIT
/usr/bin/time -f "synth: %e s, peak RSS %M KB" "$BIN" synth --db "$DIR/db" --jobs "$JOBS" --epochs "$EPOCHS" 2>&1 | tail -2
"$BIN" serve --listen 127.0.0.1:0 --token t --db "$DIR/db" >"$DIR/serve.out" 2>&1 &
PID=$!
for _ in $(seq 1 100); do grep -q "listening on" "$DIR/serve.out" && break; sleep 0.2; done
BASE=$(grep -o "http://[0-9.:]*" "$DIR/serve.out" | head -1)
(m=0; while kill -0 "$PID" 2>/dev/null; do
   a=$(awk '/RssAnon/{print $2}' "/proc/$PID/status" 2>/dev/null)
   if [ -n "$a" ] && [ "$a" -gt "$m" ]; then m=$a; echo "$m" >"$DIR/anon"; fi
   sleep 0.05
 done) &
t() {
  for _ in 1 2; do
    curl -s -H "Authorization: Bearer t" -o /dev/null -w "%{http_code} %{time_total}s %{size_download}B | " "$BASE$1"
  done
  echo " $1"
}
for path in /api/sweeps "/api/sweeps/1?jobs=false" "/api/sweeps/1/jobs?limit=50" /api/sweeps/1/grid \
  /api/sweeps/1/results "/api/sweeps/1/results?format=csv" "/api/sweeps/1/results?format=json" \
  "/api/sweeps/1/results?compare=true" /api/sweeps/1/figures/acc.png /api/sweeps/1/figures/batch_and_acc.png; do
  t "$path"
done
echo "peak anonymous memory of the coordinator: $(cat "$DIR/anon") kB"
