# The two commands of the README: `make demo` (the main job) and `make test` (the tests).
# Both run scripts/setup.sh first, which installs what is missing and is a no-op afterwards.
.PHONY: setup demo demo-view test lint sqlx-check bench

setup:
	@bash scripts/setup.sh

# The demo sets up only what it runs (no test extras), so it starts sooner on a fresh machine.
demo:
	@bash scripts/setup.sh demo
	@bash scripts/demo.sh

# The demo's sweeps in the browser again, after `make demo` has stopped.
demo-view:
	@bash scripts/setup.sh demo
	@bash scripts/demo-view.sh

test: setup
	cargo test --workspace --all-targets
	.venv/bin/python -m pytest -q clients/python/tests

lint: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

# .sqlx/ (what the build compiles queries against) must match the queries and migrations as they are.
sqlx-check: setup
	@bash scripts/sqlx-check.sh

bench: setup
	cargo run -q -p worker -- bench --threads 2
