#!/usr/bin/env bash
# Formatting, lints, the Kubernetes manifests' validation, every test (real
# model, real nats-server) and the container deployment check.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/check-k8s.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --locked -p bulkhead
cargo test --workspace --locked --no-fail-fast
# The container images and compose files, with podman (root only).
if [ "$(id -u)" -eq 0 ]; then
  BULKHEAD_BIN=target/debug/bulkhead scripts/test-deploy.sh
else
  echo "test.sh: scripts/test-deploy.sh skipped: it needs root (podman, containers.conf)"
fi
