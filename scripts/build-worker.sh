#!/usr/bin/env bash
# Builds the Worker bundle into build/ with the tools the bootstrap installed, never
# downloading: worker-build is pointed at our wasm-bindgen, esbuild and (if present) wasm-opt.
set -euo pipefail
cd "$(dirname "$0")/.."
# Tests and `make dev` build once up front; wrangler's own build step then skips.
if [ "${SKIP_WORKER_BUILD:-0}" = 1 ] && [ -f build/index.js ]; then
  exit 0
fi
export PATH="$HOME/.cargo/bin:$PATH"
export WASM_BINDGEN_BIN="$HOME/.cargo/bin/wasm-bindgen"
export ESBUILD_BIN="$PWD/node_modules/@esbuild/linux-x64/bin/esbuild"
opt=(--no-opt)
if [ -n "${WASM_OPT_BIN:-}" ] && [ -x "$WASM_OPT_BIN" ]; then
  opt=()
fi
exec worker-build --release "${opt[@]}"
