#!/usr/bin/env bash
# One prepared GPU check of the trainer (issue #11), for one NVIDIA GPU, under 8 minutes with a
# built binary. Writes $OUT/summary.md (what to read) and $OUT/full.log (everything).
#
#   BIN=target/debug/worker DATA=data/cifar10-mini OUT=/tmp/gpu scripts/gpu-check.sh
#
# The device machine has torch (cu13) at its own python3 but no cargo: build here, carry the binary
# and a data subset (../shared does not travel), and point BIN, DATA and REF at them. Not yet run
# on a GPU by this project (no device was lent so far): expect to fix what it finds.
# For NCCL, build with `NCCL=1 scripts/setup.sh && cargo build -p worker --features worker/nccl`.
#
# A dry run of the plumbing on a machine without a GPU (every step on the CPU, small):
#   DEVICE=cpu SIZES=1,8 SECS=1 OPS_SIZES=1,8 EPOCHS=1 LIMIT=256 DP_LIMIT=256 scripts/gpu-check.sh
set -uo pipefail
if [ -z "${PY:-}" ]; then PY=python3; [ -x .venv/bin/python ] && PY=.venv/bin/python; fi
BIN=${BIN:-target/debug/worker}
DATA=${DATA:-../shared/data/cifar10-mini}
REF=${REF:-../shared/reference}
OUT=${OUT:-$(mktemp -d)}
DEVICE=${DEVICE:-cuda}; SIZES=${SIZES:-1,8,32,128,512}; SECS=${SECS:-2}; EPOCHS=${EPOCHS:-3}
LIMIT=${LIMIT:+--limit-train $LIMIT --limit-test $LIMIT}
mkdir -p "$OUT"; WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
TORCH_LIB=$("$PY" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') || {
  echo "no torch at $PY" >&2; exit 1; }
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
START=$SECONDS

# step LIMIT TITLE CMD...: runs CMD under a time limit; the full output goes to full.log, the last
# lines and the exit status to summary.md.
step() {
  local limit=$1 title=$2; shift 2
  printf '\n## %s (t=%ss)\n\n```\n$ %s\n' "$title" "$((SECONDS - START))" "$*" >>"$OUT/summary.md"
  timeout -k 5 "$limit" "$@" >"$WORK/step.log" 2>&1; local rc=$?
  { echo "### $title"; cat "$WORK/step.log"; } >>"$OUT/full.log"
  grep -v '^\s*$' "$WORK/step.log" | tail -n "${KEEP:-20}" >>"$OUT/summary.md"
  printf 'exit %s\n```\n' "$rc" >>"$OUT/summary.md"
}

{ echo "# GPU check (device $DEVICE)"; date -u
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'; } >"$OUT/summary.md" 2>&1

if [ ! -x "$BIN" ]; then
  command -v cargo >/dev/null || { echo "no $BIN and no cargo" >>"$OUT/summary.md"; exit 1; }
  step 360 "build" cargo build -p worker
fi

# 1. Throughput beside PyTorch eager, fp32 NCHW then bf16 + channels-last, and ops/syncs per step.
step 150 "bench fp32" "$BIN" bench --device "$DEVICE" --batch-sizes "$SIZES" --python "$PY" --reference "$REF/torch_throughput.py" --seconds "$SECS"
step 150 "bench bf16 + channels-last" "$BIN" bench --device "$DEVICE" --batch-sizes "$SIZES" --bf16 --channels-last --python "$PY" --reference "$REF/torch_throughput.py" --seconds "$SECS"
step 120 "ATen ops and syncs per step" "$BIN" bench --device "$DEVICE" --batch-sizes "${OPS_SIZES:-1,32,512}" --ops --no-reference --python "$PY" --seconds 1

# 2. Three epochs of real CIFAR-10 records at the study's batch 32 (fp32), then bf16 + channels-last.
train() { local name=$1; shift
  step 150 "train $name" "$BIN" train --device "$DEVICE" --dataset cifar10 --data-dir "$DATA" --epochs "$EPOCHS" $LIMIT --batch-size 32 --out "$WORK/$name" "$@"
  cat "$WORK/$name/metrics.jsonl" >>"$OUT/summary.md" 2>/dev/null; }
train fp32
train bf16 --bf16 --channels-last

# 3. Data parallel on one GPU: NCCL at world size 1, then two Gloo ranks sharing the device.
DP=(--dataset cifar10 --data-dir "$DATA" --limit-train "${DP_LIMIT:-2048}" --limit-test 512 --epochs 1 --batch-size 32 --dist-timeout 60)
if [ "$DEVICE" = cuda ]; then
  step 90 "NCCL, world size 1" env WORLD_SIZE=1 RANK=0 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=29731 \
    "$BIN" train --device cuda --dist-backend nccl "${DP[@]}" --out "$WORK/nccl1"
else
  printf '\n## NCCL, world size 1\n\nskipped: device %s\n' "$DEVICE" >>"$OUT/summary.md"
fi
step 120 "Gloo, two ranks on one device" "$BIN" train --device "$DEVICE" --nproc-per-node 2 --dist-backend gloo "${DP[@]}" --out "$WORK/gloo2"

printf '\ndone in %ss\n' "$((SECONDS - START))" >>"$OUT/summary.md"
cat "$OUT/summary.md"
