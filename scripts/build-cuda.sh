#!/usr/bin/env bash
# Builds `bulkhead` with llama.cpp's CUDA backend, on a Debian machine with no
# GPU and no CUDA installed: the toolkit comes from NVIDIA's PyPI wheels,
# pinned to CUDA 13.0.x, unpacked under ~/.cache/bulkhead/cuda-13.0 (or
# $BULKHEAD_CUDA_DIR). The binary holds machine code for sm_80 (A100) and
# sm_90 (H100/H200) (override with CUDA_ARCHS="80-real;90-real;..."), and
# links cudart and cuBLAS dynamically: the GPU host needs libcudart.so.13,
# libcublas.so.13 and libcublasLt.so.13 on its library path (the same wheels,
# or a CUDA 13 install) and a CUDA 13 driver.
#
#   scripts/build-cuda.sh            -> target/cuda/release/bulkhead
#
# It prints the binary's size and the CUDA architectures embedded in it
# (cuobjdump --list-elf). A cold build takes about an hour on two cores
# (llama.cpp's 144 CUDA sources for two architectures); it is not part of
# the test run.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

scripts/setup.sh
ROOT="${BULKHEAD_CUDA_DIR:-$HOME/.cache/bulkhead/cuda-13.0}"
ARCHS="${CUDA_ARCHS:-80-real;90-real}"
# One CUDA release, 13.0: every wheel of the toolkit at its 13.0 version
# (cuobjdump, a host tool that only reads ELF files, starts at 13.2 on PyPI).
WHEELS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-cublas==13.0.2.14
  nvidia-cuda-cuobjdump==13.2.51
)
TOOLKIT="$ROOT/site/nvidia/cu13"
if [ ! -x "$TOOLKIT/bin/nvcc" ] || [ ! -e "$TOOLKIT/lib/libcublas.so.13" ] || [ ! -x "$TOOLKIT/bin/cuobjdump" ]; then
  echo "build-cuda: fetching the CUDA 13.0 toolkit wheels (PyPI) into $ROOT"
  rm -rf "$ROOT/site"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$ROOT/site" "${WHEELS[@]}"
fi
# The wheels unpack into one tree; nvcc.profile looks for lib64/, and the
# linker for the unversioned library names.
ln -sfn lib "$TOOLKIT/lib64"
for lib in cudart cublas cublasLt; do
  ln -sf "lib$lib.so.13" "$TOOLKIT/lib/lib$lib.so"
done
"$TOOLKIT/bin/nvcc" --version | tail -2

# llama-cpp-sys-2 links CUDA statically on Linux (cudart_static,
# cublas_static, cublasLt_static, culibos); the wheels ship cuBLAS only as
# shared libraries. Empty archives under those names satisfy its link lines,
# and the real libraries are linked dynamically below, after everything that
# uses them.
SHIM="$ROOT/link-shim"
mkdir -p "$SHIM/lib64"
for lib in cudart_static cublas_static cublasLt_static culibos; do
  [ -e "$SHIM/lib64/lib$lib.a" ] || ar rcs "$SHIM/lib64/lib$lib.a"
done

export CUDA_PATH="$TOOLKIT"
export CUDA_LIBRARY_PATH="$SHIM"
export PATH="$TOOLKIT/bin:$PATH"
export CMAKE_CUDA_COMPILER="$TOOLKIT/bin/nvcc"
export CMAKE_CUDA_ARCHITECTURES="$ARCHS"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda}"
# The wheels carry no driver stub (libcuda.so) to link against, so ggml is
# built without CUDA's virtual memory management (feature cuda-no-vmm): its
# plain memory pool, and nothing but cudart and cuBLAS to link.
echo "build-cuda: cargo rustc --release --features cuda-no-vmm (CUDA architectures $ARCHS) into $CARGO_TARGET_DIR"
# The link flags go to the final link of the binary alone (not to build
# scripts, which run here, where no CUDA library is on the library path).
cargo rustc --release --locked -p bulkhead --bin bulkhead --features cuda-no-vmm -- \
  -C link-arg=-L"$TOOLKIT/lib" -C link-arg=-Wl,--no-as-needed \
  -C link-arg=-lcudart -C link-arg=-lcublas -C link-arg=-lcublasLt \
  -C link-arg=-Wl,--as-needed -C link-arg='-Wl,-rpath,$ORIGIN:$ORIGIN/lib'

bin="$CARGO_TARGET_DIR/release/bulkhead"
echo "build-cuda: built $bin in $(( $(date +%s) - started )) s"
ls -l "$bin"
echo "build-cuda: size $(du -h "$bin" | cut -f1)"
echo "build-cuda: CUDA architectures embedded (cuobjdump --list-elf, distinct):"
"$TOOLKIT/bin/cuobjdump" --list-elf "$bin" | grep -o 'sm_[0-9]*[a-z]*' | sort | uniq -c
echo "build-cuda: dynamic CUDA libraries:"
readelf -d "$bin" | grep -E 'NEEDED.*(cuda|cublas)' || true
