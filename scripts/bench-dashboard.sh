#!/usr/bin/env bash
# Dashboard benchmark (not a test): a 10,000-job x 300-epoch synthetic sweep opened in headless
# Chromium; prints the first paint of three loads and writes target/screenshots/dashboard-10000-jobs.png.
# BENCH_JOBS=100000 BENCH_EPOCHS=20 scripts/bench-dashboard.sh: another size.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test -p server --test api bench_first_paint_of_a_10000_job_sweep -- --ignored --nocapture 2>&1 |
  grep -E "generated|first paint|panicked"
