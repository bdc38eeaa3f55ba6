#!/usr/bin/env bash
# DDP benchmark (not a test), one command, both sides in the same run:
#  1. all-reduce bandwidth, ours (c10d through the shim) beside torch.distributed on the same sizes;
#  2. one training step of the study's network: no DDP, DDP at world 1 (reducer only), 2 ranks.
# DEVICE=cuda on a GPU machine (world 1 NCCL; 2 ranks share the GPU over gloo).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/debug/worker
DEVICE=${DEVICE:-cpu}
MODEL=${MODEL:-full}
BATCH=${BATCH:-32}
STEPS=${STEPS:-10}
PY=${PY:-.venv/bin/python}
TORCHRUN=${TORCHRUN:-.venv/bin/torchrun}
step() { "$BIN" bench-ddp --device "$DEVICE" --model "$MODEL" --steps "$STEPS" "$@" | sed 's/^\[rank 0\] //'; }

echo "## all-reduce, 2 ranks ($DEVICE)"
step --nproc 2 --batch-size 0 2>/dev/null
DEVICE=$DEVICE OMP_NUM_THREADS=1 "$TORCHRUN" --nproc-per-node 2 --master-port 29577 scripts/bench_allreduce_torch.py 2>/dev/null
echo
echo "## training step, $MODEL network, batch $BATCH per rank ($DEVICE)"
S=(--no-allreduce --batch-size "$BATCH")
step --no-ddp "${S[@]}" 2>/dev/null
if [ "$DEVICE" = cuda ]; then
  step --nproc 1 "${S[@]}" --backend nccl 2>/dev/null
  step --nproc 2 "${S[@]}" --backend gloo 2>/dev/null
else
  step --nproc 1 "${S[@]}" 2>/dev/null
  step --nproc 2 "${S[@]}" 2>/dev/null
fi
