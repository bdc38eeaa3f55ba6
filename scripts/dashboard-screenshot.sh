#!/usr/bin/env bash
# A screenshot of a running coordinator's dashboard page in headless Chromium (the browser tests'
# harness): scripts/dashboard-screenshot.sh http://127.0.0.1:8080/#/sweeps/1 images/dashboard.png
set -euo pipefail
cd "$(dirname "$0")/.."
SCREENSHOT_URL=$1 SCREENSHOT_OUT=$(realpath -m "$2") \
  cargo test -q -p server --test api screenshot_of_a_running_coordinator -- --ignored --nocapture 2>&1 | grep -E "wrote|panicked"
