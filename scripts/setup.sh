#!/usr/bin/env bash
# One-time set-up of a fresh machine (Debian-like, x86-64, with or without a GPU): system packages,
# libtorch from PyPI into a project-local venv, sqlx tooling, Chromium for browser tests, and the build.
# Idempotent: every step is skipped when already done, so `make demo` and `make test` can call it.
# `setup.sh demo` does only what the demo runs (packages, torch, the two binaries), so a newcomer
# sees the demo start sooner; the tests' extras (Chromium, Optuna, sqlx-cli, test targets) come with
# `make test`, which builds on the same cargo profile.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
MODE=${1:-all}
full() { [ "$MODE" != demo ]; }

TORCH_VERSION=2.11.0
OPTUNA_VERSION=5.0.0
need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
[ -f /usr/include/gloo/algorithm.h ] || need_apt+=(libgloo-dev)   # c10d Gloo headers (not in the wheel)
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)   # figure text
if full; then
  command -v chromium >/dev/null || need_apt+=(chromium)   # the dashboard's browser tests (headless)
  command -v curl >/dev/null || need_apt+=(curl)           # scripts/bench-worker.sh
  command -v bc >/dev/null || need_apt+=(bc)               # scripts/bench-worker.sh
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! .venv/bin/python -c "import torch, safetensors; assert torch.__version__.startswith('$TORCH_VERSION')" 2>/dev/null; then
  echo "setup: installing torch==$TORCH_VERSION into .venv (4.6 GB from PyPI: 1 to 3 minutes on a fast link)"
  python3 -m venv .venv
  with_ticker "installing torch" .venv \
    .venv/bin/pip install -q --disable-pip-version-check "torch==$TORCH_VERSION" safetensors numpy
fi
# Optuna: the reference the early-stopping tests compare the coordinator's decisions with.
if full && ! .venv/bin/python -c "import optuna" 2>/dev/null; then
  echo "setup: installing optuna into .venv (the early-stopping tests' reference)"
  .venv/bin/pip install -q --disable-pip-version-check "optuna==$OPTUNA_VERSION"
fi

# The Python package (clients/python; examples/pytorch/train.py reports through it), editable so
# its tests run the checkout's code; pytest and pandas for those tests.
if ! .venv/bin/python -c "import seed_sweeps, requests" 2>/dev/null; then
  echo "setup: installing the Python package seed-sweeps (clients/python) into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e ./clients/python
fi
if full && ! .venv/bin/python -c "import pytest, pandas" 2>/dev/null; then
  echo "setup: installing pytest and pandas into .venv (the Python package's tests)"
  .venv/bin/pip install -q --disable-pip-version-check pytest pandas
fi

# Multi-GPU (`cargo build --features worker/nccl`): ProcessGroupNCCL's headers need two header-only
# CUDA packages that torch does not pull in. NCCL=1 scripts/setup.sh installs them.
if [ "${NCCL:-0}" = 1 ] && [ ! -f .venv/cuda-headers/nvidia/cu13/include/cccl/nv/target ]; then
  echo "setup: CUDA headers for ProcessGroupNCCL into .venv/cuda-headers"
  .venv/bin/pip install -q --disable-pip-version-check --no-deps --target .venv/cuda-headers \
    'nvidia-cuda-crt==13.0.88.*' 'nvidia-cuda-cccl==13.0.85.*'
fi
# Slurm and munge from Debian's packages: the tests that run workers under a real Slurm start their
# own daemons (in network namespaces, with their own configuration and munge key). No recommends: the
# daemons' documentation and mail tools are not needed.
if full && ! command -v slurmctld >/dev/null; then
  echo "setup: apt-get install slurmctld slurmd slurm-client munge (the Slurm tests)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  [ "${#need_apt[@]}" -gt 0 ] || $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
fi

# tch finds libtorch through LIBTORCH (.cargo/config.toml -> .libtorch); the python3.X part of the
# path differs between machines, so a stable link points at it.
torch_dir=$(.venv/bin/python -c 'import torch, os; print(os.path.dirname(torch.__file__))')
ln -sfn "$torch_dir" .libtorch

if full && ! cargo sqlx --version >/dev/null 2>&1; then
  echo "setup: installing sqlx-cli (for editing migrations and queries; the build itself uses .sqlx/)"
  cargo install -q sqlx-cli --version 0.8.6 --no-default-features --features sqlite --locked
fi

if full; then
  echo "setup: building (the first build takes several minutes on 2 cores: libtorch's bindings, the test targets)"
  cargo build --workspace --all-targets
else
  echo "setup: building the server and worker binaries (the first build: 7 to 15 minutes on 2 cores, cargo prints each crate it compiles)"
  cargo build -p server -p worker --bins
fi
