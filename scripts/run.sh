#!/usr/bin/env bash
# Runs a bulkhead worker with the demo model and its OpenAI-compatible API on
# http://127.0.0.1:18789 (extra arguments are passed to `bulkhead worker`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
MODEL="${BULKHEAD_MODEL_DIR:-$HOME/.cache/bulkhead/models}/SmolLM2-135M-Instruct.Q4_1.gguf"
cargo build --release --locked -p bulkhead
exec target/release/bulkhead worker \
  --listen 127.0.0.1:7200 \
  --http 127.0.0.1:18789 \
  --model "smollm2=$MODEL" \
  "$@"
