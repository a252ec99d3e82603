#!/usr/bin/env bash
# fuzz.sh — build the GGUF reader's libFuzzer target with clang and run it for a bounded time.
#
#   native/tools/fuzz.sh [BUILD_DIR]      (default build/fuzz, relative to the repository root)
#   env FUZZ_SECONDS (default 60)         how long to fuzz
#
# Seeds are generated at run time (test_gguf --write-seeds) so no binary files live in git; the
# corpus grows in BUILD_DIR/corpus across runs. Crash inputs land in BUILD_DIR/artifacts/.
# Exits non-zero when the fuzzer finds a crash (or the build fails). Needs clang with libFuzzer
# (Debian 12: apt-get install -y clang).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
NATIVE="$ROOT/native"
BUILD="${1:-build/fuzz}"
case "$BUILD" in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac
SECONDS_TO_RUN="${FUZZ_SECONDS:-60}"
CXX_BIN="${CLANGXX:-clang++}"
CC_BIN="${CLANG:-clang}"

if ! command -v "$CXX_BIN" >/dev/null 2>&1; then
  echo "fuzz.sh: $CXX_BIN not found (Debian: apt-get install -y clang)" >&2
  exit 2
fi
mkdir -p "$BUILD"

# ---- build the fuzz target (CMake when available, else a direct compile of the same sources)
if command -v cmake >/dev/null 2>&1; then
  cmake -S "$NATIVE" -B "$BUILD/cmake" -DLLAMAKV_FUZZ=ON -DLLAMAKV_CUDA=OFF \
    -DCMAKE_C_COMPILER="$CC_BIN" -DCMAKE_CXX_COMPILER="$CXX_BIN" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$BUILD/cmake.log" 2>&1 ||
    { cat "$BUILD/cmake.log" >&2; echo "fuzz.sh: cmake configure failed" >&2; exit 2; }
  cmake --build "$BUILD/cmake" --target fuzz_gguf -j 2 >"$BUILD/build.log" 2>&1 ||
    { cat "$BUILD/build.log" >&2; echo "fuzz.sh: build failed" >&2; exit 2; }
  FUZZER="$BUILD/cmake/fuzz_gguf"
else
  "$CXX_BIN" -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -I"$NATIVE/src" \
    "$NATIVE/tests/fuzz_gguf.cpp" "$NATIVE/src/gguf.cpp" "$NATIVE/src/common.cpp" "$NATIVE/src/gguf_types.cpp" \
    -o "$BUILD/fuzz_gguf"
  FUZZER="$BUILD/fuzz_gguf"
fi

# ---- seeds: a few valid GGUF files written by the test program
"$CXX_BIN" -std=c++17 -O1 -I"$NATIVE/src" "$NATIVE/tests/test_gguf.cpp" "$NATIVE/src/gguf.cpp" \
  "$NATIVE/src/common.cpp" "$NATIVE/src/gguf_types.cpp" -o "$BUILD/gguf_seedgen"
rm -rf "$BUILD/seeds"
"$BUILD/gguf_seedgen" --write-seeds "$BUILD/seeds"
mkdir -p "$BUILD/corpus" "$BUILD/artifacts"

# A dictionary of tokens the format uses helps the fuzzer get past the magic and into the keys.
cat >"$BUILD/gguf.dict" <<'EOF'
"GGUF"
"\x02\x00\x00\x00"
"\x03\x00\x00\x00"
"general.alignment"
"general.architecture"
"\x20\x00\x00\x00"
"\x40\x00\x00\x00"
"\x08\x00\x00\x00"
"\x09\x00\x00\x00"
"\xff\xff\xff\xff\xff\xff\xff\xff"
"\x00\x00\x00\x00\x00\x00\x00\x40"
EOF

# ---- run
LOG="$BUILD/fuzz.log"
echo "fuzz.sh: fuzzing $FUZZER for ${SECONDS_TO_RUN}s (log: $LOG)"
start=$(date +%s)
set +e
"$FUZZER" "$BUILD/corpus" "$BUILD/seeds" \
  -max_total_time="$SECONDS_TO_RUN" -max_len=65536 -rss_limit_mb=2048 -timeout=20 \
  -dict="$BUILD/gguf.dict" -artifact_prefix="$BUILD/artifacts/" -print_final_stats=1 >"$LOG" 2>&1
rc=$?
set -e
end=$(date +%s)
runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$LOG" | grep -o '[0-9]*$' | tail -1)
runs="${runs:-?}"
tail -n 5 "$LOG"
if [ "$rc" -ne 0 ]; then
  grep -E 'ERROR|SUMMARY|artifact|deadly|Test unit written' "$LOG" | head -n 20 >&2 || true
  echo "fuzz_gguf: CRASH (exit $rc) after $runs runs in $((end - start)) s; inputs in $BUILD/artifacts/, log $LOG" >&2
  exit 1
fi
echo "fuzz_gguf: $runs runs in $((end - start)) s, no crash"
