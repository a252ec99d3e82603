#!/usr/bin/env bash
# setup.sh — idempotent install of what the VS Code end-to-end tests (and `npm start` without a
# local `code`) need: Debian packages (chromium for playwright-core, ripgrep, the build deps of
# code-server's native modules) and code-server itself, pinned by test/e2e/code-server/
# {package.json,package-lock.json}. code-server is installed OUTSIDE the repository, into
# $LLAMAKV_CODE_SERVER_DIR (default ~/.cache/llamakv-e2e/code-server-<version>): its 300 MB tree
# would otherwise be walked by `vsce package` and tsc. Each step is skipped when already done.
# Called from .ci/run. Prints the code-server binary path on its last line.
#
# Why the work-arounds:
#  * code-server's postinstall refuses root without --unsafe-perm; node-pty's install runs
#    `npx node-gyp`, and this machine's npmrc has yes=false: npm_config_yes=true.
#  * @vscode/ripgrep (code-server 4.100.x) downloads rg from GitHub in its postinstall unless
#    its cache tarball exists: we seed that cache with Debian's /usr/bin/rg (ripgrep 13.0.0).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CS_DIR="$HERE/code-server"
RG_PKG=1.15.11            # @vscode/ripgrep version in code-server 4.100.3's shrinkwrap
RG_TAG=v13.0.0-10         # the rg release that @vscode/ripgrep@1.15.11 downloads

# ---- Debian packages ------------------------------------------------------------------------
# chromium + fonts-liberation: the browser playwright-core drives (readable screenshots).
# ripgrep: seeds @vscode/ripgrep (above). libkrb5-dev libx11-dev libxkbfile-dev libsecret-1-dev
# pkg-config python3 make g++: code-server's native modules (kerberos, node-pty, spdlog, ...)
# are built by node-gyp. curl: health checks in scripts.
PKGS="chromium fonts-liberation ripgrep libkrb5-dev libx11-dev libxkbfile-dev libsecret-1-dev pkg-config python3 make g++ curl"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "[setup] apt-get install:$missing"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
  echo "[setup] Debian packages present"
fi

# ---- code-server (pinned by the lockfile) ---------------------------------------------------
WANT=$(node -p "require('$CS_DIR/package.json').dependencies['code-server']")
CS_HOME=${LLAMAKV_CODE_SERVER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llamakv-e2e/code-server-$WANT}
STAMP=$(cat "$CS_DIR/package.json" "$CS_DIR/package-lock.json" | sha256sum | cut -c1-16)
if [ -x "$CS_HOME/node_modules/.bin/code-server" ] && [ "$(cat "$CS_HOME/.stamp" 2>/dev/null)" = "$STAMP" ]; then
  echo "[setup] code-server $WANT present in $CS_HOME"
  echo "$CS_HOME/node_modules/.bin/code-server"
  exit 0
fi
case "$(uname -m)" in
  x86_64) RG_TARGET=x86_64-unknown-linux-musl ;;
  aarch64) RG_TARGET=aarch64-unknown-linux-musl ;;
  *) echo "[setup] unsupported arch $(uname -m)"; exit 1 ;;
esac
TMP=${TMPDIR:-/tmp}
SEED="$TMP/vscode-ripgrep-cache-$RG_PKG/ripgrep-$RG_TAG-$RG_TARGET.tar.gz"
if [ ! -f "$SEED" ]; then
  W=$(mktemp -d); cp "$(command -v rg)" "$W/rg"
  mkdir -p "$(dirname "$SEED")"; tar -C "$W" -czf "$SEED" rg; rm -rf "$W"
fi
echo "[setup] installing code-server $WANT into $CS_HOME (about two minutes)"
T0=$(date +%s)
mkdir -p "$CS_HOME"
cp "$CS_DIR/package.json" "$CS_DIR/package-lock.json" "$CS_HOME/"
cd "$CS_HOME"
# --unsafe-perm: npm 11 calls the flag unknown but still exports npm_config_unsafe_perm=true,
# which code-server's postinstall checks.
npm_config_yes=true npm ci --no-audit --no-fund --unsafe-perm --loglevel=error
XDG_TMP=$(mktemp -d)
XDG_DATA_HOME="$XDG_TMP" "$CS_HOME/node_modules/.bin/code-server" --config /dev/null --version | head -1
rm -rf "$XDG_TMP"
echo "$STAMP" > "$CS_HOME/.stamp"
echo "[setup] code-server installed in $(( $(date +%s) - T0 ))s"
echo "$CS_HOME/node_modules/.bin/code-server"
