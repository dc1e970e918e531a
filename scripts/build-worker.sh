#!/usr/bin/env bash
# Builds the Worker bundle into build/ with the tools the bootstrap installed, never
# downloading: worker-build is pointed at our wasm-bindgen, esbuild and wasm-opt. Then
# scripts/entry.mjs is bundled over build/index.js: it gives each Durable Object class the
# `extends DurableObject` shell that RPC needs, and the shard's check of MAX_MESSAGE_BYTES
# before a frame is copied into wasm memory.
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
rm -f build/wasm-bundle.js
worker-build --release "${opt[@]}"

fail() {
  echo "build-worker: $*; scripts/entry.mjs must be updated for this worker-build" >&2
  exit 1
}
# The entry wraps the bundle's object classes and overrides the shard's webSocketMessage: they
# must be there, and the wasm module must be imported as ./index_bg.wasm beside it.
grep -q 'as ConnectionManager[,}]' build/index.js || fail "build/index.js exports no ConnectionManager"
grep -q 'webSocketMessage(' build/index.js || fail "build/index.js has no webSocketMessage handler"
grep -q 'from"./index_bg.wasm"\|from "./index_bg.wasm"' build/index.js || fail "build/index.js does not import ./index_bg.wasm"
mv build/index.js build/wasm-bundle.js
"$ESBUILD_BIN" scripts/entry.mjs --bundle --format=esm --platform=neutral \
  --external:'cloudflare:*' --external:'*.wasm' --outfile=build/index.js --log-level=warning
rm build/wasm-bundle.js
grep -q 'entry: the bundle has no ConnectionManager' build/index.js || fail "the entry is not in build/index.js"
grep -q 'from "./index_bg.wasm"' build/index.js || fail "build/index.js lost its ./index_bg.wasm import"
