#!/usr/bin/env bash
# Fuzzes the parsers that take outside input, with proptest: the OpenAI
# request parser, the tenant config (YAML) loader, the admin API's JSON
# bodies and the Raft command decoder. Each target runs CASES inputs
# (default 1,000,000; the test suite runs 10,000 of each) in a release
# build, and must never panic; a rejected input must get a clear error.
#
#   scripts/fuzz.sh [CASES]
set -euo pipefail
cd "$(dirname "$0")/.."
CASES="${1:-1000000}"
export BULKHEAD_FUZZ_CASES="$CASES"
targets=(
  "bulkhead-proto fuzz_chat_request_parser"
  "bulkhead-client fuzz_tenant_config_loader"
  "bulkhead-gateway fuzz_admin_json_bodies"
  "bulkhead-control-plane fuzz_raft_command_decoder"
)
cargo test --release --locked -p bulkhead-proto -p bulkhead-client -p bulkhead-gateway \
  -p bulkhead-control-plane --lib --no-run -q
for t in "${targets[@]}"; do
  set -- $t
  started=$(date +%s)
  out="$(cargo test --release --locked -q -p "$1" --lib "$2" 2>&1)" || { echo "$out"; exit 1; }
  echo "$out" | grep -q "1 passed" || { echo "fuzz: $2 did not run: $out"; exit 1; }
  echo "fuzz: $2 ($1): $CASES inputs, no panic, in $(( $(date +%s) - started )) s"
done
