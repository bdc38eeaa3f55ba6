# The two commands of the README: `make demo` (the main job) and `make test` (the tests).
# Both run scripts/setup.sh first, which installs what is missing and is a no-op afterwards.
.PHONY: setup demo test lint bench

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	cargo test --workspace --all-targets

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

bench: setup
	cargo run -q -p worker -- bench --threads 2
