#!/usr/bin/env bash
# Builds the Worker bundle into build/ with the tools the bootstrap installed, never
# downloading: worker-build is pointed at our wasm-bindgen, esbuild and wasm-opt.
#
# wasm-opt: scripts/wasm-opt.sh (binaryen from npm, size-optimised; see there) unless
# WASM_OPT_BIN names another one; WASM_OPT=off skips it (--no-opt: a faster build for
# local iteration, a bigger wasm).
set -euo pipefail
cd "$(dirname "$0")/.."
# Tests and `make dev` build once up front; wrangler's own build step then skips.
if [ "${SKIP_WORKER_BUILD:-0}" = 1 ] && [ -f build/index.js ]; then
  exit 0
fi
export PATH="$HOME/.cargo/bin:$PATH"
export WASM_BINDGEN_BIN="$HOME/.cargo/bin/wasm-bindgen"
export ESBUILD_BIN="$PWD/node_modules/@esbuild/linux-x64/bin/esbuild"
opt=()
if [ "${WASM_OPT:-on}" = off ]; then
  opt=(--no-opt)
else
  export WASM_OPT_BIN="${WASM_OPT_BIN:-$PWD/scripts/wasm-opt.sh}"
  if [ ! -x "$WASM_OPT_BIN" ] || { [ "$WASM_OPT_BIN" = "$PWD/scripts/wasm-opt.sh" ] && [ ! -x node_modules/binaryen/bin/wasm-opt ]; }; then
    echo "error: no wasm-opt at $WASM_OPT_BIN (node_modules/binaryen: run scripts/bootstrap.sh), or build with WASM_OPT=off" >&2
    exit 1
  fi
fi
exec worker-build --release "${opt[@]}"
