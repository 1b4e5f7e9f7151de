#!/usr/bin/env bash
# Runs the whole of bulkhead on this machine in one process (`bulkhead up`):
# a one-node control plane, a worker with the demo model and a gateway, with
# the OpenAI-compatible API on http://127.0.0.1:18789/v1. State is kept in
# ./bulkhead-data (or --data-dir DIR); extra arguments go to `bulkhead up`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p bulkhead
exec target/release/bulkhead up "$@"
