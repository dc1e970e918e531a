#!/usr/bin/env bash
# The wasm-opt that scripts/build-worker.sh hands to worker-build (WASM_OPT_BIN): binaryen's
# wasm-opt from npm (devDependency `binaryen`, node_modules/binaryen; Debian's binaryen rejects
# the exception-handling instructions the build emits).
#
# worker-build calls it as `wasm-opt IN -o OUT -O --enable-<features>... --debuginfo`. This
# keeps the input, output, feature flags and --debuginfo (the names section) and replaces
# worker-build's optimisation level `-O` by WASM_OPT_LEVEL, default
# `-Oz --skip-pass=inlining-optimizing`: optimise for size without the inliner. Measured on
# this Worker (docs/results/wasm-size-2026-12-03.md): `-O`, `-Os` and `-Oz` with inlining cut
# the raw wasm by 9-10 % but make it 9 % *larger* gzipped (inlined copies compress worse), and
# Cloudflare's size limit is on the compressed Worker; without the inliner both shrink.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/node_modules/binaryen/bin/wasm-opt
if [ ! -x "$bin" ]; then
  echo "scripts/wasm-opt.sh: $bin is missing; run scripts/bootstrap.sh (npm ci)" >&2
  exit 1
fi
# shellcheck disable=SC2206 # WASM_OPT_LEVEL is a space-separated list of wasm-opt flags
level=(${WASM_OPT_LEVEL:--Oz --skip-pass=inlining-optimizing})
args=()
for a in "$@"; do
  case $a in
    -O | -O[0-4sz]) ;; # worker-build's level: ours instead
    *) args+=("$a") ;;
  esac
done
exec "$bin" "${args[@]}" "${level[@]}"
