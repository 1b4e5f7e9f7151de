#!/usr/bin/env bash
# The GPU check: run on a borrowed GPU machine (an H200 with the CUDA 13
# driver; no Rust, no network) from this working tree plus two carried
# files: a CUDA build of bulkhead (scripts/build-cuda.sh; plain, or
# compressed as bulkhead.xz to fit what travels) and a GGUF model.
#
#   OUT=/tmp/out BULKHEAD_BIN=gpu/bulkhead BULKHEAD_MODEL=gpu/model.gguf scripts/gpu-check.sh
#
# It records the GPU (nvidia-smi), runs `bench worker` on the GPU (every
# layer offloaded; the raw loop at llama.cpp's defaults, which offload every
# layer too), then a short `bulkhead up` with two tenants that each get an
# answer, and saves the monitor's view (GPU memory per worker, KV on device
# per tenant). Everything lands in $OUT: summary.txt and the logs. It takes
# about 3 minutes (16 s on the H200 on 2026-12-01); BENCH_ARGS adds
# arguments to `bench worker`.
#
# Carrying it: the stripped binary (`xz -9`, 45 MB) and the model (98 MB)
# are over one call's 64 MiB, and a carried path is gone by the next call,
# so each call copies what it carried to /tmp: model part 1, then the
# binary, then model part 2 with `cat part1 part2 >model.gguf` and this
# script (README "On a GPU" has the figures).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to the folder for the figures}"
BIN="${BULKHEAD_BIN:-target/cuda/release/bulkhead}"
MODEL="${BULKHEAD_MODEL:?set BULKHEAD_MODEL to a GGUF model file}"
mkdir -p "$OUT"
summary="$OUT/summary.txt"
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }

if [ ! -x "$BIN" ] && [ -f "$BIN.xz" ]; then
  if command -v xz >/dev/null; then
    xz -dkf "$BIN.xz"
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$BIN.xz" "$BIN"
  fi
  chmod +x "$BIN"
fi
# HTTP without curl where the GPU host has none (python3 is there).
http() { # http URL [BEARER [JSON_BODY]]
  if command -v curl >/dev/null; then
    curl -s "$1" ${2:+-H "Authorization: Bearer $2"} ${3:+-H 'Content-Type: application/json' -d "$3"}
  else
    python3 - "$@" <<'PY'
import sys, urllib.request, urllib.error
url, token, body = (sys.argv[1:] + ["", ""])[:3]
req = urllib.request.Request(url, data=body.encode() if body else None)
if token: req.add_header("Authorization", "Bearer " + token)
if body: req.add_header("Content-Type", "application/json")
try: print(urllib.request.urlopen(req, timeout=120).read().decode())
except urllib.error.HTTPError as e: print(e.read().decode())
PY
  fi
}
[ -x "$BIN" ] || { say "gpu-check: no binary at $BIN"; exit 1; }
# cudart and cuBLAS 13: a CUDA install, or NVIDIA's Python wheels.
if ! ldconfig -p | grep -q 'libcublas.so.13'; then
  lib="$(find / -xdev -name 'libcublas.so.13' -not -path '*/proc/*' 2>/dev/null | head -1 || true)"
  [ -n "$lib" ] || { say "gpu-check: libcublas.so.13 not found"; exit 1; }
  export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
missing="$(ldd "$BIN" | grep 'not found' || true)"
[ -z "$missing" ] || { say "gpu-check: missing libraries: $missing"; exit 1; }

say "gpu-check $(date -u +%Y-%m-%dT%H:%MZ) on $(hostname)"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/gpu: /' | tee -a "$summary"
else
  say "gpu: none (nvidia-smi not found): this run measures the CPU"
fi
say "binary: $BIN ($(du -h "$BIN" | cut -f1)); model: $MODEL ($(du -h "$MODEL" | cut -f1))"

say "== bench worker (GPU)"
# shellcheck disable=SC2086
BULKHEAD_LOG=warn timeout 300 "$BIN" bench worker --model "$MODEL" --repeats 2 ${BENCH_ARGS:-} \
  2>"$OUT/bench-worker.log" | tee -a "$summary"

say "== bulkhead up with two tenants"
data="$(mktemp -d)"
BULKHEAD_LOG=info "$BIN" up --data-dir "$data" --api 127.0.0.1:0 --control-plane 127.0.0.1:0 \
  --worker 127.0.0.1:0 --no-console --model "gpu=$MODEL" >"$data/up.out" 2>"$OUT/up.log" &
up=$!
trap 'kill $up 2>/dev/null || true' EXIT
for _ in $(seq 120); do grep -q '^admin token:' "$data/up.out" && break; sleep 0.5; done
api="$(sed -n 's/^API: //p' "$data/up.out")"
cp_addr="$(sed -n 's/^control plane: //p' "$data/up.out")"
export BULKHEAD_CONTROL_PLANE="$cp_addr"
export BULKHEAD_ADMIN_TOKEN="$(sed -n 's/^admin token: //p' "$data/up.out")"
[ -n "$api" ] && [ -n "$BULKHEAD_ADMIN_TOKEN" ] || { say "gpu-check: up did not start"; exit 1; }
ok=0
for tenant in sales hr; do
  "$BIN" tenant create "$tenant" --plan pro >/dev/null
  key="$("$BIN" key create --tenant "$tenant" | grep -o 'bk_[A-Za-z0-9_]*' | head -1)"
  answer="$(http "$api/chat/completions" "$key" \
    '{"temperature":0,"max_tokens":24,"messages":[{"role":"user","content":"Name three colours."}]}')"
  echo "$answer" >"$OUT/answer-$tenant.json"
  if echo "$answer" | grep -q '"completion_tokens"'; then ok=$((ok + 1)); fi
  say "$tenant: $(echo "$answer" | head -c 300)"
done
http "${api%/v1}/admin/v1/monitor" "$BULKHEAD_ADMIN_TOKEN" >"$OUT/monitor.json"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader | sed 's/^/vram with up running: /' | tee -a "$summary"
fi
say "monitor: $(head -c 600 "$OUT/monitor.json")"
say "offload: $(grep -o 'offloaded [0-9]*/[0-9]* layers to GPU' "$OUT/up.log" | head -1)"
say "tenants answered: $ok of 2"
[ "$ok" -eq 2 ]
