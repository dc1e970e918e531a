#!/usr/bin/env bash
# Builds one of the Rust experiments under benches/ as the gateway is built (worker-build
# --release, wasm-opt through scripts/wasm-opt.sh), then bundles its JavaScript entry (the
# `extends DurableObject` shell) over the generated module as build/index.js.
#
#   scripts/bench-build.sh DIR ENTRY     e.g. scripts/bench-build.sh benches/floor entry.mjs
#
# SKIP_BUILD=1 keeps an existing DIR/build/index.js. Used by scripts/rpc-bench.sh and
# scripts/floor-bench.sh; the entry imports ./build/wasm-bundle.js.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ $# -eq 2 ] && [ -f "$ROOT/$1/Cargo.toml" ] && [ -f "$ROOT/$1/$2" ] \
  || { echo "usage: scripts/bench-build.sh DIR ENTRY (a benches/ crate and its entry module)" >&2; exit 2; }
if [ "${SKIP_BUILD:-0}" = 1 ] && [ -f "$ROOT/$1/build/index.js" ]; then
  exit 0
fi
for f in "$ROOT/node_modules/@esbuild/linux-x64/bin/esbuild" "$HOME/.cargo/bin/worker-build"; do
  [ -e "$f" ] || { echo "error: $f is missing (make bootstrap)" >&2; exit 2; }
done
echo "$(basename "$1"): building $1 (release, wasm-opt as the gateway)"
cd "$ROOT/$1"
export PATH="$HOME/.cargo/bin:$PATH" WASM_BINDGEN_BIN="$HOME/.cargo/bin/wasm-bindgen" \
  ESBUILD_BIN="$ROOT/node_modules/@esbuild/linux-x64/bin/esbuild" WASM_OPT_BIN="$ROOT/scripts/wasm-opt.sh"
rm -f build/wasm-bundle.js
mkdir -p target
worker-build --release >target/worker-build.log 2>&1 || { tail -n 30 target/worker-build.log >&2; exit 1; }
mv build/index.js build/wasm-bundle.js
"$ESBUILD_BIN" "$2" --bundle --format=esm --platform=neutral \
  --external:'cloudflare:*' --external:'*.wasm' --outfile=build/index.js --log-level=warning
rm build/wasm-bundle.js
