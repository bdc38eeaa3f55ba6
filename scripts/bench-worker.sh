#!/usr/bin/env bash
# Worker overhead benchmark (not a test): the same ~1-minute CPU job run by hand with `worker train`
# and through a coordinator with `worker run`. Prints start latency (claim -> first training step)
# and per-job overhead (worker wall time - trainer wall time).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
BIN=target/debug
DATA=${DATA:-../shared/data/cifar10-mini}
TMP=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$TMP"' EXIT
ARGS=(--data-dir "$DATA" --epochs 4 --limit-train 5000 --model-widths 8,16,32,64 --model-depth 1 --model-heads 2 --warmup-epochs 0 --threads 2 --seed 1)

t0=$(date +%s.%N); "$BIN/worker" train "${ARGS[@]}" --out "$TMP/hand" 2>/dev/null; t1=$(date +%s.%N)
hand=$(echo "$t1 - $t0" | bc)

"$BIN/server" serve --db "$TMP/s.db" --listen 127.0.0.1:0 --token b >"$TMP/server.out" 2>/dev/null &
URL=$(wait_for_listening "$TMP/server.out")
cat >"$TMP/sweep.toml" <<TOML
name = "bench"
[train]
epochs = 4
limit_train = 5000
model_widths = [8, 16, 32, 64]
model_depth = 1
model_heads = 2
warmup_epochs = 0
seed = 1
TOML
"$BIN/server" submit "$TMP/sweep.toml" --server "$URL" --token b >/dev/null
t0=$(date +%s.%N)
"$BIN/worker" run --server "$URL" --token b --cpu-ranks 1 --work-dir "$TMP/runs" --data-dir "$DATA" --exit-when-idle --idle-seconds 0.2 2>/dev/null
t1=$(date +%s.%N)
worker_wall=$(echo "$t1 - $t0" | bc)
job=$(curl -s "$URL/api/jobs/1")
echo "$job" | python3 -c '
import json, sys
j = json.load(sys.stdin)
hand, worker_wall = float(sys.argv[1]), float(sys.argv[2])
s = j["summary"]
latency = (s["first_step_at"] - j["started_at"]) / 1000
wall = s["wall_seconds"]
claim_to_done = (j["finished_at"] - j["started_at"]) / 1000
print(f"| trainer by hand (worker train), wall | {hand:.2f} s |")
print(f"| same job through worker run: claim -> finish acknowledged | {claim_to_done:.2f} s |")
print(f"| trainer wall time inside the worker (summary.wall_seconds) | {wall:.2f} s |")
print(f"| start latency: claim -> first training step | {latency:.2f} s |")
print(f"| per-job overhead: (claim -> finish) - trainer wall | {claim_to_done - wall:.2f} s ({100 * (claim_to_done - wall) / wall:.1f}%) |")
print(f"| worker process wall (start -> exit, includes idle exit check) | {worker_wall:.2f} s |")
' "$hand" "$worker_wall"
