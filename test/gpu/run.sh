#!/usr/bin/env bash
# test/gpu/run.sh — the GPU check in one go (needs an NVIDIA GPU, nvcc and cmake; no network, no
# node): builds the CUDA backend for this machine's GPU, runs test_cuda (every kernel and whole
# forward passes against the CPU references), then a short benchmark on a generated
# Llama-3.2-1B-shaped q8_0 model: prefill and decode tokens/s at 4k and 32k context and the
# bandwidth decode achieves against the device's measured copy bandwidth, as a table.
# Budget: well under 8 minutes on one H200 (build ~1 min, tests ~1 min, benchmark ~2 min).
# Usage: test/gpu/run.sh [MODEL.gguf]    benchmark MODEL instead of the generated one
# Env:   BUILD (build/gpu), OUT (where the logs go; default $BUILD), CTX (4096,32768),
#        LLAMAKV_CUDA_ARCHS (default: this GPU's compute capability)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build/gpu}
LOGS=${OUT:-$BUILD}
CTX=${CTX:-4096,32768}
mkdir -p "$BUILD" "$LOGS"
t0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - t0 )) s"; }

command -v nvidia-smi >/dev/null || { echo "run.sh: nvidia-smi not found: this machine has no NVIDIA driver" >&2; exit 2; }
nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader | tee "$LOGS/gpu.txt"
ARCH=${LLAMAKV_CUDA_ARCHS:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d '. ')}
NVCC=$(command -v nvcc || true)
[ -n "$NVCC" ] || NVCC=$(ls /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc 2>/dev/null | head -n1 || true)
[ -n "$NVCC" ] || { echo "run.sh: nvcc not found (install the CUDA toolkit or put nvcc on PATH)" >&2; exit 2; }
command -v cmake >/dev/null || { echo "run.sh: cmake not found" >&2; exit 2; }

echo "== build (sm_$ARCH, $NVCC)"
cmake -S native -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DLLAMAKV_TESTS=ON -DLLAMAKV_CUDA=ON \
  -DLLAMAKV_CUDA_ARCHS="$ARCH" -DCMAKE_CUDA_COMPILER="$NVCC" > "$LOGS/configure.txt" 2>&1 \
  || { tail -n 30 "$LOGS/configure.txt"; exit 1; }
cmake --build "$BUILD" --target test_cuda -j "$(nproc)" > "$LOGS/build.txt" 2>&1 \
  || { tail -n 50 "$LOGS/build.txt"; exit 1; }
echo "built in $(elapsed)"

status=0
echo "== test_cuda --host (the device layout and decoder on the CPU)"
"$BUILD/test_cuda" --host 2>&1 | tee "$LOGS/test_cuda_host.txt" || status=1

echo "== test_cuda (every kernel and forward pass against the CPU references)"
timeout 300 "$BUILD/test_cuda" 2>&1 | tee "$LOGS/test_cuda.txt" || status=1
if grep -q '^SKIP' "$LOGS/test_cuda.txt"; then
  echo "run.sh: cases were skipped on a GPU machine: the device is not usable (see the SKIP reason)" >&2
  status=1
fi
echo "tests done at $(elapsed)"

echo "== benchmark"
if [ $# -ge 1 ]; then model=(--model "$1"); else model=(--synth "$BUILD/synth-1b-q8_0.gguf"); fi
timeout 360 "$BUILD/test_cuda" --bench "${model[@]}" --ctx "$CTX" 2>&1 | tee "$LOGS/bench.txt" || status=1
echo "total $(elapsed), status $status"
exit $status
