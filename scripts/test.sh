#!/usr/bin/env bash
# Formatting, lints and every test (real model, real nats-server).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --locked -p bulkhead
cargo test --workspace --locked --no-fail-fast
