#!/usr/bin/env bash
# Issue 19, deliverable 7: is Durable Object RPC cheaper than the Request path the gateway's
# internal calls use? Builds the experiment in benches/do-rpc (a Rust Worker and object, the
# RPC receiver wrapped by benches/do-rpc/rpc-wrapper.mjs), serves it on loopback through
# wrangler's dev server (load-tests/lib/gateway.sh, inspector off), and for each case runs
# the modes `local` (parse and answer, no call), `fetch` and `rpc` in turn, REPS times,
# reading the runtime workerd's CPU time around every run. Prints one Markdown table of
# medians per call; REPORT=FILE also writes it there.
#
#   scripts/rpc-bench.sh [REPS]        (default 5; ROUNDS=2000 calls' rounds per run)
#
# Bounded: REPS x 3 cases x 3 modes runs of ROUNDS rounds; the gateway is stopped on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
reps=${1:-5}
rounds=${ROUNDS:-2000}
case "$reps$rounds" in *[!0-9]*) echo "usage: [ROUNDS=N] scripts/rpc-bench.sh [REPS]" >&2; exit 2 ;; esac
[ -e node_modules/.bin/wrangler ] || { echo "error: node_modules/.bin/wrangler is missing (make bootstrap)" >&2; exit 2; }

bench=benches/do-rpc
scripts/bench-build.sh "$bench" rpc-wrapper.mjs

# shellcheck source=load-tests/lib/gateway.sh
. load-tests/lib/gateway.sh
trap 'gw_cleanup' EXIT
trap 'exit 130' INT
gw_start_app "do-rpc experiment" "$bench/wrangler.toml" "$bench/build"
hz=$(getconf CLK_TCK)

# run MODE FAN BYTES N -> "MS TICKS CALLS"
run() {
  local out t0 t1 _
  read -r _ t0 < <(gw_workerd_cpu_ticks)
  out=$(curl -sf --max-time 600 "$GW_URL/bench?mode=$1&fan=$2&bytes=$3&n=$4") \
    || { echo "error: /bench?mode=$1&fan=$2&bytes=$3 failed: $(curl -s "$GW_URL/bench?mode=$1&fan=$2&bytes=$3&n=1")" >&2; exit 1; }
  read -r _ t1 < <(gw_workerd_cpu_ticks)
  jq -r --arg t "$((t1 - t0))" '"\(.ms) \($t) \(.calls) \(.body_bytes)"' <<<"$out"
}

cases=("1 300" "1 4096" "8 300")
for c in "${cases[@]}"; do
  for m in local fetch rpc; do run "$m" $c 100 >/dev/null; done # warm: objects exist, code is hot
done

table="| case | body | mode | CPU per call | wall per call | over local (CPU) |
|---|---|---|---|---|---|"
for c in "${cases[@]}"; do
  read -r fan bytes <<<"$c"
  declare -A cpu=() wall=()
  body=0
  for r in $(seq 1 "$reps"); do
    for m in local fetch rpc; do
      read -r ms ticks calls body < <(run "$m" "$fan" "$bytes" "$rounds")
      cpu[$m]+="$(awk -v t="$ticks" -v hz="$hz" -v c="$calls" 'BEGIN { printf "%.2f", t / hz * 1e6 / c }') "
      wall[$m]+="$(awk -v ms="$ms" -v c="$calls" 'BEGIN { printf "%.2f", ms * 1000 / c }') "
      echo "rpc-bench: fan $fan, $bytes B, $m, rep $r/$reps: $calls calls, $ms ms, $ticks ticks" >&2
    done
  done
  med() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
  lc=$(med "${cpu[local]}")
  for m in local fetch rpc; do
    c_=$(med "${cpu[$m]}")
    w_=$(med "${wall[$m]}")
    over=$(awk -v a="$c_" -v b="$lc" 'BEGIN { printf "%.1f us", a - b }')
    [ "$m" = local ] && over="-"
    what="1 object"
    [ "$fan" != 1 ] && what="fan-out to $fan objects"
    table+="
| $what | $body B | $m | ${c_} us | ${w_} us | $over |"
  done
  unset cpu wall
done
echo "$table"
if [ -n "${REPORT:-}" ]; then
  printf '%s\n' "$table" >"$REPORT"
  echo "rpc-bench: wrote $REPORT" >&2
fi
