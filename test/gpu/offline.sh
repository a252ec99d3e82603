#!/usr/bin/env bash
# test/gpu/offline.sh — test/gpu/run.sh, node steps included, on a GPU machine that has no node and
# no network: node, its headers and the few runtime packages come from a bundle made beforehand on
# a machine that has them (test/gpu/bundle.sh, into .gpu-carry/ by default), the compiled
# TypeScript from out/. Run from the repo root, with both folders copied along:
#   test/gpu/bundle.sh                                      # here: writes .gpu-carry/ and out/
#   bash test/gpu/offline.sh 2>&1 | tee $OUT/run.log         # there
# Env: OUT (default /tmp/gpu-out), BUNDLE (.gpu-carry), DRY=1 (run.sh --dry-run; no nvidia-smi, no
#      ncu), NODE_PREFIX (/tmp/node), DEADLINE (570 s: run.sh is cut off so that the logs are packed
#      before a 600 s command limit; ncu only gets what is left, at most NCU_TIMEOUT = 120 s),
#      NCU=0 (no profile), NCU_LAUNCHES (400 kernels profiled at most); BUILD is /tmp/gpu.
# What it leaves in $OUT (a few files): run.log (the tee above), test_cuda.txt, bench.txt,
# backend-test.txt, ncu.csv (decode at 4k, per kernel), and logs.tar.gz with every other log.
set -uo pipefail
cd "$(dirname "$0")/../.."
HERE=${BUNDLE:-.gpu-carry}
OUT=${OUT:-/tmp/gpu-out}
DRY=${DRY:-0}
NODE_PREFIX=${NODE_PREFIX:-/tmp/node}
DEADLINE=${DEADLINE:-570}
NCU_TIMEOUT=${NCU_TIMEOUT:-120}
BUILD=/tmp/gpu
mkdir -p "$OUT" "$BUILD"
OUT=$(cd "$OUT" && pwd)

# ---- unpack (xz when present, else python3's lzma) -------------------------------------------
unxz_to() {  # unxz_to FILE.xz DEST
  if command -v xz >/dev/null; then xz -dc "$1" > "$2"
  else python3 -c 'import lzma,shutil,sys
with lzma.open(sys.argv[1]) as f, open(sys.argv[2], "wb") as o: shutil.copyfileobj(f, o, 1 << 20)' "$1" "$2"
  fi
}
untar_xz() {  # untar_xz FILE.tar.xz DIR
  mkdir -p "$2"
  if command -v xz >/dev/null; then xz -dc "$1" | tar -C "$2" -xf -
  else python3 -c 'import sys,tarfile
with tarfile.open(sys.argv[1], "r:xz") as t: t.extractall(sys.argv[2])' "$1" "$2"
  fi
}
t0=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - t0) )); }
rm -rf "$NODE_PREFIX"
mkdir -p "$NODE_PREFIX/bin" "$NODE_PREFIX/include"
unxz_to "$HERE/node.xz" "$NODE_PREFIX/bin/node" || { echo "offline.sh: unpacking node failed" >&2; exit 3; }
chmod +x "$NODE_PREFIX/bin/node"
untar_xz "$HERE/node-include.tar.xz" "$NODE_PREFIX/include" || { echo "offline.sh: unpacking node headers failed" >&2; exit 3; }
untar_xz "$HERE/node_modules.tar.xz" . || { echo "offline.sh: unpacking node_modules failed" >&2; exit 3; }
export PATH=$NODE_PREFIX/bin:$PATH
echo "unpacked in $(( $(date +%s) - t0 )) s: node $(command -v node), headers $NODE_PREFIX/include/node, node_modules: $(ls node_modules | tr '\n' ' ')"

echo "== node --version"; node --version || echo "offline.sh: node does not run here"
if [ "$DRY" != 1 ]; then echo "== nvidia-smi"; nvidia-smi || true; fi
echo "== nvcc"; { nvcc --version 2>/dev/null || /usr/local/cuda/bin/nvcc --version; } | tail -1

# ---- run.sh ----------------------------------------------------------------------------------
args=()
[ "$DRY" = 1 ] && args=(--dry-run)
run_limit=$(( $(left) - 20 ))
echo "== OUT=$OUT BUILD=$BUILD bash test/gpu/run.sh ${args[*]}   (cut off after $run_limit s)"
# In a session of its own: when it is cut off, the processes that run.sh's own `timeout`s put into
# other process groups (node --test, test_cuda --bench) are ended too, by that session id.
if command -v setsid >/dev/null; then
  OUT=$OUT BUILD=$BUILD setsid timeout -k 10 "$run_limit" bash test/gpu/run.sh "${args[@]}" &
  sid=$!
  wait $sid
  status=$?
  pkill -KILL -s "$sid" 2>/dev/null && echo "offline.sh: ended what run.sh left running (session $sid)"
else
  OUT=$OUT BUILD=$BUILD timeout -k 10 "$run_limit" bash test/gpu/run.sh "${args[@]}"
  status=$?
fi
echo "== run.sh exit status $status$([ $status = 124 ] && echo ' (cut off by offline.sh: DEADLINE)')"

# ---- pack the minor logs (at most 8 files come back) -----------------------------------------
keep=" run.log test_cuda.txt bench.txt backend-test.txt ncu.csv logs.tar.gz "
minor=()
for f in "$OUT"/*; do
  [ -f "$f" ] || continue
  b=$(basename "$f")
  case "$keep" in *" $b "*) ;; *) minor+=("$b") ;; esac
done
if [ ${#minor[@]} -gt 0 ]; then
  tar -C "$OUT" -czf "$OUT/logs.tar.gz" "${minor[@]}" && (cd "$OUT" && rm -f -- "${minor[@]}")
  echo "packed into logs.tar.gz: ${minor[*]}"
fi

# ---- per-kernel profile ----------------------------------------------------------------------
ncu_limit=$(( $(left) < NCU_TIMEOUT ? $(left) : NCU_TIMEOUT ))
if [ "${NCU:-1}" = 0 ]; then echo "== ncu: NCU=0, no profile"
elif [ "$DRY" != 1 ] && [ $ncu_limit -lt 30 ]; then echo "== ncu: only $ncu_limit s left before DEADLINE, no profile"
elif [ "$DRY" != 1 ]; then
  NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /usr/local/cuda-*/bin/ncu 2>/dev/null | head -n1 || true)
  if [ -n "$NCU" ] && [ -x "$BUILD/test_cuda" ]; then
    M=$BUILD/synth-1b-q8_0.gguf
    if [ -f "$M" ]; then model=(--model "$M"); else model=(--synth "$M"); fi
    echo "== ncu ($NCU) on test_cuda --bench ${model[*]} --ctx 4096 --kv off --decode 2 (at most $ncu_limit s)"
    timeout -k 5 "$ncu_limit" "$NCU" --clock-control none --graph-profiling node \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum --csv \
      -k regex:'matvec|attention|argmax|get_rows|kv_|hadamard' --launch-count "${NCU_LAUNCHES:-400}" \
      "$BUILD/test_cuda" --bench "${model[@]}" --ctx 4096 --kv off --decode 2 > "$OUT/ncu.csv" 2>&1
    echo "ncu exit status $?, $(wc -l < "$OUT/ncu.csv") lines in ncu.csv"
  else
    echo "== ncu: not found (or no test_cuda), no profile"
  fi
fi

echo "== files in $OUT:"; ls -la "$OUT"
exit $status
