#!/usr/bin/env bash
# Issue 19: how much of the edge's CPU per connect is the toolchain's floor, how much the
# platform's own work, how much the edge's? Serves, one at a time on loopback through
# wrangler's dev server (load-tests/lib/gateway.sh, inspector off):
#   js        a minimal Worker and Durable Object in JavaScript (benches/floor/js): upgrade,
#             a `connected` frame, the close;
#   rust      the same in Rust with workers-rs, built like the gateway (release, wasm-opt, the
#             `extends DurableObject` shell; benches/floor);
#   baseline  the platform's single object (benches/baseline, JavaScript);
#   edge      this gateway (build/, SHARD_POLICY=hash:shards=auto, every other var default);
# and reads the runtime workerd's CPU time around N connects of the k6 client
# benches/floor/connect.js (open, wait for the first frame, close; 200 users, with minted
# tokens for baseline and edge). Each variant runs REPS times in turn, each on a fresh runtime
# warmed with WARM connects (default N/4; a user the warm-up missed pays its first connect, the
# token's first check and its home's start, in the measured part); prints the medians per connect: runtime CPU, and k6's p95 latency
# (of the socket's connect, or of the HTTP call). REPORT=FILE also writes the table.
# OP=stats or OP=broadcast (baseline and edge only) measures an HTTP call instead: one socket
# held for each of the 200 users (benches/floor/ops.js, a second k6), then N calls at RATE a
# second, each for the next user: its stats, or a broadcast to its sockets; CPU per call.
# CLIENT=session connects the fleet's CLI socket (session-scoped, a stable session id per user).
# GATEWAY_VARS="NAME:VALUE ..." sets vars on the edge's gateway (as scripts/compare.sh does).
# GW_BUILD_DIR=DIR serves the edge from a copy of another build (gw_snapshot_build DIR after
# building it), e.g. to compare two builds' CPU in alternating runs (docs/results/opt-level-*).
#
#   scripts/floor-bench.sh [REPS]      (default 5; N=4000, RATE=200 a second, VARIANTS="js rust baseline edge", OP=connect)
#
# Bounded: VARIANTS x REPS runs of N connects or calls at RATE a second; stops its runtime.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
reps=${1:-5}
n=${N:-4000}
warm=${WARM:-$((n / 4))}
case "$reps$n$warm" in *[!0-9]*) echo "usage: [N=CONNECTS] [WARM=CONNECTS] scripts/floor-bench.sh [REPS]" >&2; exit 2 ;; esac
K6=${K6:-$ROOT/.venv/bin/k6}
op=${OP:-connect}
case $op in
  connect) variants=${VARIANTS:-js rust baseline edge} ;;
  stats | broadcast) variants=${VARIANTS:-baseline edge} ;;
  *) echo "error: unknown OP \"$op\" (connect stats broadcast)" >&2; exit 2 ;;
esac
for v in $variants; do
  case $op:$v in
    connect:js | connect:rust | *:baseline | *:edge) ;;
    connect:*) echo "error: unknown variant \"$v\" (js rust baseline edge)" >&2; exit 2 ;;
    *) echo "error: OP=$op measures baseline and edge only, not \"$v\"" >&2; exit 2 ;;
  esac
done
for f in node_modules/.bin/wrangler "$K6" target/debug/token; do
  [ -e "$f" ] || { echo "error: $f is missing (make bootstrap; cargo build -p edge-tools)" >&2; exit 2; }
done
case " $variants " in *" edge "*) [ -f build/index.js ] || { echo "error: build/index.js is missing (make build)" >&2; exit 2; } ;; esac

# shellcheck source=load-tests/lib/gateway.sh
. load-tests/lib/gateway.sh
gw_parse_vars # a malformed GATEWAY_VARS stops the run before the build

bench=benches/floor
scripts/bench-build.sh "$bench" entry.mjs

tokens=$(mktemp)
holder=""
trap '[ -z "$holder" ] || kill "$holder" 2>/dev/null; gw_cleanup; rm -f "$tokens"' EXIT
trap 'exit 130' INT
hz=$(getconf CLK_TCK)
target/debug/token --users 200 --prefix floor-u --ttl 86400 >"$tokens"

# k6 VARIANT N -> "OK P95": the operations that succeeded (connects that got their first
# frame, benches/floor/connect.js, or calls answered 200, benches/floor/ops.js) and their p95
# latency in ms (k6's ws_connecting, or http_req_duration)
operations() {
  local summary file="" script=connect.js metric=floor_greeted latency=ws_connecting
  summary=$(mktemp)
  case $1 in baseline | edge) file=$tokens ;; esac
  [ "$op" = connect ] || { script=ops.js; metric=floor_ok; latency=http_req_duration; }
  TOKENS_FILE=$file URL=$GW_URL ROLE=call OP=$op N=$2 "$K6" run --quiet --no-color --summary-export "$summary" "$bench/$script" >/dev/null 2>&1 || true
  jq -r --arg c "$metric" --arg l "$latency" '"\(.metrics[$c].count // 0) \(.metrics[$l]["p(95)"] // 0)"' "$summary"
  rm -f "$summary"
}

# Starts the holders (one socket per user) in the background and waits for them.
hold() {
  holder_summary=$(mktemp)
  TOKENS_FILE=$tokens URL=$GW_URL ROLE=hold HOLD_S=600 "$K6" run --quiet --no-color --summary-export "$holder_summary" "$bench/ops.js" >/dev/null 2>&1 &
  holder=$!
  sleep 8
}

# Stops the holders; sets `held` to how many sockets they had open (not in a subshell: it
# waits for its own child).
unhold() {
  kill -INT "$holder" 2>/dev/null || true
  wait "$holder" 2>/dev/null || true
  holder=""
  held=$(jq -r '.metrics.floor_held.count // 0' "$holder_summary" 2>/dev/null || echo 0)
  rm -f "$holder_summary"
}

# one VARIANT -> "CPU_US_PER_OPERATION OPERATIONS P95_MS"
one() {
  case $1 in
    edge) gw_start "hash:shards=auto" ${GW_VARS[@]+"${GW_VARS[@]}"} >&2 ;;
    baseline) gw_start_baseline >&2 ;;
    rust) gw_start_app "floor, rust" "$bench/wrangler.rust.toml" "$bench/build" >&2 ;;
    js) gw_start_app "floor, js" "$bench/wrangler.js.toml" "$bench/js/worker.mjs" >&2 ;;
  esac
  local t0 t1 ok p95 _
  [ "$op" = connect ] || hold
  operations "$1" "$warm" >/dev/null # warm: the objects exist, the code is hot, tokens are known
  read -r _ t0 < <(gw_workerd_cpu_ticks)
  read -r ok p95 < <(operations "$1" "$n")
  read -r _ t1 < <(gw_workerd_cpu_ticks)
  if [ "$op" != connect ]; then
    unhold
    echo "floor-bench: $1 held $held sockets during the calls" >&2
  fi
  gw_cleanup
  [ "$ok" -gt 0 ] || { echo "error: no $op of $1 succeeded" >&2; exit 1; }
  awk -v t="$((t1 - t0))" -v hz="$hz" -v c="$ok" -v p="$p95" 'BEGIN { printf "%.1f %d %.2f\n", t / hz * 1e6 / c, c, p }'
}

declare -A cpu=() lat=() label=([js]="JavaScript floor" [rust]="Rust floor (workers-rs)" [baseline]="platform's single object (JavaScript)" [edge]="this edge, hash:shards=auto")
for r in $(seq 1 "$reps"); do
  for v in $variants; do
    read -r us ok p95 < <(one "$v")
    cpu[$v]+="$us "
    lat[$v]+="$p95 "
    echo "floor-bench: rep $r/$reps, $v: $ok ${op} operations succeeded, $us us runtime CPU each, p95 $p95 ms" >&2
  done
done
med() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
first=""
first_lat=""
table="| $n ${op} operations (median of $reps runs) | runtime CPU per $op | over the first row | runs (us) | p95 latency | over the first row |
|---|---|---|---|---|---|"
for v in $variants; do
  m=$(med "${cpu[$v]}")
  l=$(med "${lat[$v]}")
  [ -n "$first" ] || { first=$m; first_lat=$l; }
  table+="
| ${label[$v]} | ${m} us | $(awk -v a="$m" -v b="$first" 'BEGIN { printf "%.2fx", a / b }') | ${cpu[$v]}| ${l} ms | $(awk -v a="$l" -v b="$first_lat" 'BEGIN { printf (b > 0 ? "%.2fx" : "n/a"), (b > 0 ? a / b : 0) }') |"
done
echo "$table"
if [ -n "${REPORT:-}" ]; then
  printf '%s\n' "$table" >"$REPORT"
  echo "floor-bench: wrote $REPORT" >&2
fi
