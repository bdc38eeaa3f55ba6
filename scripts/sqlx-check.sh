#!/usr/bin/env bash
# Checks that .sqlx/ (the query cache the build compiles against) matches the queries and migrations
# as they are, against a fresh database made from migrations/ (removed afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export DATABASE_URL="sqlite://$dir/check.db"
cargo sqlx database create
cargo sqlx migrate run --source migrations >/dev/null
SQLX_OFFLINE=false cargo sqlx prepare --workspace --check -- --all-targets
