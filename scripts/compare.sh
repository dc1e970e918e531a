#!/usr/bin/env bash
# Compares shard policies (and the single-object baseline) under the same k6 load, side by side.
#
#   scripts/compare.sh MODE [POLICY...]        (or POLICIES="p1 p2 ..." in the environment)
#
# For each policy: start a fresh local gateway (own ports, own state) with that SHARD_POLICY,
# run the k6 scenario in MODE (and SHAPE) against it, sample workerd's RSS and the users'
# stats while it runs, read the runtime's CPU time at the start and end of the load, keep
# the k6 summary, stop the gateway. The policy name `baseline` runs benches/baseline (one
# Durable Object per user, the capacity guide's design) in the gateway's place, started the
# same way. Then write docs/results/MODE[-SHAPE]-DATE.md (the capacity guide's result
# template, one table across the policies), its charts and MODE[-SHAPE]-DATE.json (headline
# figures; RESULTS_DIR moves all of them; REPORT_NAME=TAG names them MODE[-SHAPE]-TAG-DATE, so
# a second comparison of the same mode on the same day does not overwrite the first).
#
# The load is one user (load-alice) in a tier `load` whose limit (LOAD_TIER_LIMIT, default
# 1000) is above the mode's peak, so every rejection comes from the per-object cap
# (SHARD_MAX_CONNECTIONS, default 200), not from the tier limit. With USERS=N (MODE=platform:
# default 20) it is N users load-u-0 ... in that tier instead. SHAPE=fleet is the production
# shape: USERS (default 1000) small users left in the gateway's default tier (TIER_MIX=default;
# set e.g. TIER_MIX=load:1 to give them the `load` tier), ARRIVAL=closed|open.
# After each run the gateway is stopped and the Durable Objects it created and their storage
# rows are counted from its state directory (load-tests/lib/do_storage.py).
# GATEWAY_VARS="NAME:VALUE ..." sets vars on every edge policy's gateway (not the baseline's),
# e.g. METRICS_PUSH_MS:60000, to compare a setting; the report names them.
# Raw data (k6 summaries, time series, samples, gateway logs) stays in load-tests/out/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

MODES="smoke scale sustained stress extreme spikeExtreme quick platform"
SHAPES="steady churn http fleet"
DEFAULT_POLICIES="single hash:shards=auto session rotate:period=1m,drain=20s,shards=auto"
SCENARIO=load-tests/scenarios/websocket-performance.js
K6=${K6:-$ROOT/.venv/bin/k6}
PYTHON=$ROOT/.venv/bin/python # matplotlib, for the report's charts
LOAD_TIER_LIMIT=${LOAD_TIER_LIMIT:-1000}
CAP=${SHARD_MAX_CONNECTIONS:-200}
RESULTS_DIR=${RESULTS_DIR:-docs/results}
REPORT_NAME=${REPORT_NAME:-}
case $REPORT_NAME in
  *[!A-Za-z0-9-]*) echo "error: REPORT_NAME is letters, digits and '-' only (it goes into file names), not \"$REPORT_NAME\"" >&2; exit 2 ;;
esac
RUNTIME_FAULTS='Fatal uncaught|on behalf of a different request|had hung|panicked'

usage() {
  echo "usage: scripts/compare.sh MODE [POLICY...]   (or POLICIES=\"...\"; SHAPE=${SHAPES// /|})" >&2
  echo "       MODE is one of: $MODES" >&2
  echo "       default policies: $DEFAULT_POLICIES; \`baseline\` is the single-object baseline" >&2
}

mode=${1:-}
if [ -z "$mode" ]; then usage; exit 2; fi
shift
case " $MODES " in
  *" $mode "*) ;;
  *) echo "error: unknown MODE \"$mode\"" >&2; usage; exit 2 ;;
esac
shape=${SHAPE:-steady}
case " $SHAPES " in
  *" $shape "*) ;;
  *) echo "error: unknown SHAPE \"$shape\"" >&2; usage; exit 2 ;;
esac
if [ "$mode" = platform ] && [ "$shape" != steady ]; then
  echo "error: MODE=platform is its own traffic; SHAPE=$shape applies to the other modes" >&2
  exit 2
fi
export SHAPE=$shape
arrival=${ARRIVAL:-closed}
case $arrival in
  closed | open) ;;
  *) echo "error: ARRIVAL is closed or open, not \"$arrival\"" >&2; exit 2 ;;
esac
if [ "$arrival" != closed ] && [ "$shape" != fleet ]; then
  echo "error: ARRIVAL=$arrival applies to SHAPE=fleet only" >&2
  exit 2
fi
export ARRIVAL=$arrival
if [ "$mode" = platform ]; then USERS=${USERS:-20}; fi
if [ "$shape" = fleet ]; then USERS=${USERS:-1000}; fi
users=${USERS:-}
if [ $# -gt 0 ]; then
  policies=("$@")
else
  # shellcheck disable=SC2206 # POLICIES is a space-separated list
  policies=(${POLICIES:-$DEFAULT_POLICIES})
fi
[ ${#policies[@]} -gt 0 ] || { echo "error: no policies given" >&2; usage; exit 2; }
case "$LOAD_TIER_LIMIT$CAP${SAMPLE_INTERVAL:-}$users" in
  *[!0-9]*) echo "error: LOAD_TIER_LIMIT, SHARD_MAX_CONNECTIONS, SAMPLE_INTERVAL and USERS must be whole numbers" >&2; exit 2 ;;
esac
# The sampler asks every user for its stats each time. The fleet's users already ask for their
# own every STATS_INTERVAL (10 s): the sampler every twice that adds half as many calls again,
# whatever the number of users. Otherwise every 5 s, or with more than 100 users 20 users'
# stats per second on average. At most every 60 s, so a run with the users' stats turned
# off (a long STATS_INTERVAL) still samples.
if [ "$shape" = fleet ]; then
  SAMPLE_S=${SAMPLE_INTERVAL:-$(awk -v s="${STATS_INTERVAL:-10}" 'BEGIN { v = int(2 * s + 0.5); print (v < 5 ? 5 : (v > 60 ? 60 : v)) }')}
else
  SAMPLE_S=${SAMPLE_INTERVAL:-$(( ${users:-1} > 100 ? (${users:-1} + 19) / 20 : 5 ))}
fi
for tool in "$K6" target/debug/token; do
  if [ ! -x "$tool" ]; then
    echo "error: $tool is missing (make bootstrap; cargo build -p edge-tools)" >&2
    exit 2
  fi
done
if ! "$PYTHON" -c 'import matplotlib' 2>/dev/null; then
  echo "error: $PYTHON has no matplotlib (make bootstrap installs load-tests/requirements.txt)" >&2
  exit 2
fi
for cmd in python3 curl jq ps setsid getconf; do
  command -v "$cmd" >/dev/null || { echo "error: $cmd is not installed" >&2; exit 2; }
done
CLK_TCK=$(getconf CLK_TCK)

# shellcheck source=load-tests/lib/gateway.sh
. load-tests/lib/gateway.sh

K6_PID=""
tokens_file=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$K6_PID" ]; then kill -TERM "$K6_PID" 2>/dev/null || true; wait "$K6_PID" 2>/dev/null || true; fi
  gw_cleanup
  if [ -n "$tokens_file" ]; then rm -f "$tokens_file"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# UPSTREAM=service: the reference upstream (examples/upstream/) beside every edge gateway,
# bound as UPSTREAM_SERVICE, so the platform's business events go through it (docs/upstream.md);
# UPSTREAM=failing: an upstream that refuses every call, to see what the edge does then.
upstream=${UPSTREAM:-off}
case $upstream in
  off) upstream_args=() ;;
  service) upstream_args=(-c "$ROOT/examples/upstream/wrangler.toml" --var "UPSTREAM:service") ;;
  # An upstream URL on a loopback port nobody listens on (9, discard; never one of the
  # ephemeral ports the gateways get): every business event fails at once.
  failing) upstream_args=(--var "UPSTREAM:http://127.0.0.1:9/events") ;;
  *) echo "error: UPSTREAM is off, service (the reference upstream) or failing (a refused URL), not \"$upstream\"" >&2; exit 2 ;;
esac

gw_parse_vars

# A policy's gateway, or the baseline in its place.
start_target() {
  if [ "$1" = baseline ]; then
    # shellcheck disable=SC2119 # no extra wrangler arguments
    gw_start_baseline
  else
    gw_start_compared "$1" "${upstream_args[@]}" "${GW_VARS[@]}"
  fi
}

stamp=$(date +%Y%m%d-%H%M%S)
run_dir="load-tests/out/compare-$mode$([ "$shape" = steady ] || echo "-$shape")$([ "$arrival" = closed ] || echo "-$arrival")-$stamp"
mkdir -p "$run_dir"
# Every policy runs the same Worker build and config, even if they change meanwhile.
gw_snapshot_build "$run_dir/build"
export GW_BUILD_DIR="$ROOT/$run_dir/build"
cp "${GW_WRANGLER_TOML:-wrangler.toml}" "$run_dir/wrangler.toml"
export GW_WRANGLER_TOML="$ROOT/$run_dir/wrangler.toml"

# A malformed policy would fail every run the same way: check each starts before any load.
for p in "${policies[@]}"; do
  echo "compare: checking policy $p"
  start_target "$p" >/dev/null || { echo "error: policy \"$p\" does not start a gateway (see above)" >&2; exit 2; }
  gw_cleanup
done

admin=$(sed -n 's/^ADMIN_TOKEN=//p' .dev.vars | tail -n 1)
[ -n "$admin" ] || { echo "error: .dev.vars has no ADMIN_TOKEN (make dev-vars)" >&2; exit 2; }

# Who the load is: the users' tokens in one file (the stats sampler reads it too), and the
# scenario's environment for them. The scenario's setup puts every user in tier `load`.
tokens_file=$(mktemp "${TMPDIR:-/tmp}/compare-tokens.XXXXXX")
if [ -n "$users" ]; then
  target/debug/token --users "$users" --prefix load-u --ttl 86400 >"$tokens_file"
  # The fleet's users are small users: the gateway's default tier unless TIER_MIX says.
  if [ "$shape" = fleet ]; then tier_mix=${TIER_MIX:-default}; else tier_mix=load:1; fi
  load_env=(USERS="$users" TOKENS_FILE="$tokens_file" TIER_MIX="$tier_mix")
  if [ "$tier_mix" = default ]; then
    who="$users users load-u-0 ... in the gateway's default tier"
  else
    who="$users users load-u-0 ... in tiers $tier_mix"
  fi
else
  token=$(target/debug/token --user load-alice --ttl 86400)
  jq -n --arg t "$token" '{"load-alice": $t}' >"$tokens_file"
  load_env=(AUTH_TOKEN="$token" LOAD_TIER=load)
  who="user load-alice in tier load"
fi

# Planned duration of the mode (stages plus graceful stop), from k6 itself, with the same
# environment as the runs (the tokens stay off the command line).
planned=$(env "${load_env[@]}" "$K6" inspect --include-system-env-vars --execution-requirements -e "TEST_MODE=$mode" "$SCENARIO" 2>/dev/null \
  | jq -r '.totalDuration // "0s"')
planned_s=$(printf '%s' "$planned" | awk '{ t = 0; s = $0
  while (match(s, /[0-9.]+(h|m|s)/)) { v = substr(s, RSTART, RLENGTH); u = substr(v, length(v))
    t += v * (u == "h" ? 3600 : u == "m" ? 60 : 1); s = substr(s, RSTART + RLENGTH) } printf "%d", t }')

echo "compare: Worker build $(sha256sum <"$GW_BUILD_DIR/index_bg.wasm" | cut -c1-12) (snapshot in $run_dir/build)"
started=$(date +%s)
n=${#policies[@]}
echo "compare: mode $mode, shape $shape$([ "$shape" != fleet ] || echo " ($arrival loop)"), $who, ${n} policies, ~$((planned_s))s of load each; raw data in $run_dir"

fmt_s() { printf '%02d:%02d' $(($1 / 60)) $(($1 % 60)); }

user_stats() { "$PYTHON" load-tests/lib/user_stats.py "$GW_URL" "$tokens_file" 2>/dev/null || echo null; }

# One sample line: time, workerd RSS and runtime CPU ticks, k6's VU count, the users' stats.
sample() {
  local api_port=$1 now rt px cpid cticks vus stats
  now=$(date +%s.%N)
  read -r rt px < <(gw_workerd_rss_kb)
  read -r cpid cticks < <(gw_workerd_cpu_ticks)
  vus=$(curl -sf --max-time 1 "http://127.0.0.1:$api_port/v1/status" | jq -r '.data.attributes.vus // empty' 2>/dev/null || true)
  stats=$(user_stats)
  # Strings in, parsed inside jq: a failed or partial poll becomes null instead of an error.
  printf '%s' "$stats" | jq -cRs --arg t "$now" --arg rt "${rt:-0}" --arg px "${px:-0}" --arg vus "${vus:-}" \
    --arg load "$(cut -d' ' -f1 /proc/loadavg)" --arg cpid "${cpid:-0}" --arg cticks "${cticks:-0}" \
    '{t: ($t | tonumber), rss_runtime_kb: ($rt | tonumber? // 0), rss_proxy_kb: ($px | tonumber? // 0),
      cpu_pid: ($cpid | tonumber? // 0), cpu_ticks: ($cticks | tonumber? // 0),
      vus: ($vus | tonumber? // null), loadavg1: ($load | tonumber? // null),
      stats: (try fromjson catch null)}'
}

progress() {
  jq -r '.stats as $s | "VUs \(.vus // "?")  " + if $s == null then "stats: no answer" else
    "connections \($s.totalConnections) on \($s.shards | length) shards (max \([$s.shards[].connections] | max // 0)/shard), rejected \($s.rejected)" end
    + "  workerd RSS \(((.rss_runtime_kb + .rss_proxy_kb) / 1024) | floor) MiB"' 2>/dev/null || echo "stats: unreadable"
}

i=0
for policy in "${policies[@]}"; do
  i=$((i + 1))
  slug=$(printf '%02d-%s' "$i" "$(printf '%s' "$policy" | tr -c 'A-Za-z0-9_.-' '_')")
  echo
  echo "compare: [$i/$n] $policy"
  start_target "$policy"
  sleep 2 # let the fresh runtime settle before the idle RSS sample
  read -r idle_rt idle_px < <(gw_workerd_rss_kb)
  api_port=$(gw_free_port)

  t0=$(date +%s)
  read -r cpu_pid0 cpu_ticks0 < <(gw_workerd_cpu_ticks)
  env "${load_env[@]}" ADMIN_TOKEN="$admin" "$K6" run --address "127.0.0.1:$api_port" \
    --summary-export "$run_dir/$slug.summary.json" --out "csv=$run_dir/$slug.k6.csv.gz" \
    -e "TEST_MODE=$mode" -e "BASE_URL=$GW_URL" "$SCENARIO" >"$run_dir/$slug.k6.log" 2>&1 &
  K6_PID=$!

  samples="$run_dir/$slug.samples.jsonl"
  : >"$samples"
  last_print=0
  while kill -0 "$K6_PID" 2>/dev/null; do
    if line=$(sample "$api_port"); then printf '%s\n' "$line" >>"$samples"; else echo "compare: skipped a sample" >&2; fi
    el=$(($(date +%s) - t0))
    if [ $((el - last_print)) -ge 10 ] || [ "$last_print" = 0 ]; then
      last_print=$((el > 0 ? el : 1))
      printf 'compare: [%d/%d %s] %s/%s  %s\n' "$i" "$n" "$policy" "$(fmt_s "$el")" "$(fmt_s "$planned_s")" \
        "$(printf '%s' "$line" | progress)"
    fi
    sleep "$SAMPLE_S"
  done
  set +e
  wait "$K6_PID"
  rc=$?
  set -e
  K6_PID=""
  t1=$(date +%s)
  # The end of the load: the runtime's CPU time, its RSS and the users' final stats.
  read -r cpu_pid1 cpu_ticks1 < <(gw_workerd_cpu_ticks)
  read -r end_rt end_px < <(gw_workerd_rss_kb)
  # To a file: with many users it is longer than one command-line argument may be.
  user_stats >"$run_dir/$slug.final-stats.json"
  # The gateway's own view of the run (upstream calls and their latency, among others).
  if [ "$policy" != baseline ]; then
    curl -s --max-time 10 -H "authorization: Bearer $admin" "$GW_URL/metrics" >"$run_dir/$slug.metrics.txt" || true
  fi
  case $rc in
    0) verdict="passed every threshold" ;;
    99) verdict="failed thresholds (recorded in the report)" ;;
    *) verdict="k6 exited with $rc: see $run_dir/$slug.k6.log"; tail -n 5 "$run_dir/$slug.k6.log" >&2 ;;
  esac
  echo "compare: [$i/$n] $policy done in $(fmt_s $((t1 - t0))): $verdict"
  # The runtime's own complaints: a fatal exception restarts workerd (every socket drops),
  # cross-request I/O and hung requests are bugs of ours that k6 only sees as errors.
  faults=$(grep -cE "$RUNTIME_FAULTS" "$GW_LOG" || true)
  if [ "${faults:-0}" -gt 0 ]; then
    echo "compare: WARNING: $faults runtime fault line(s) in the workerd log of $policy:" >&2
    grep -E "$RUNTIME_FAULTS" "$GW_LOG" | sort | uniq -c | sort -rn | head -n 3 >&2
  fi
  # CPU seconds only when the same runtime process served the whole load.
  jq -n --arg policy "$policy" --arg slug "$slug" --argjson rc "$rc" --argjson t0 "$t0" --argjson t1 "$t1" \
    --argjson idle_rt "$idle_rt" --argjson idle_px "$idle_px" --arg url "$GW_URL" --arg build "$GW_BUILD_SHA" \
    --argjson end_rt "$end_rt" --argjson end_px "$end_px" --argjson tck "$CLK_TCK" \
    --argjson p0 "$cpu_pid0" --argjson p1 "$cpu_pid1" --argjson c0 "$cpu_ticks0" --argjson c1 "$cpu_ticks1" \
    --rawfile final "$run_dir/$slug.final-stats.json" --argjson faults "${faults:-0}" \
    '{policy: $policy, slug: $slug, target: (if $policy == "baseline" then "baseline" else "edge" end),
      k6_exit: $rc, start: $t0, end: $t1, build_sha256: $build,
      idle_rss_runtime_kb: $idle_rt, idle_rss_proxy_kb: $idle_px, end_rss_runtime_kb: $end_rt, end_rss_proxy_kb: $end_px,
      cpu_runtime_s: (if $p0 > 0 and $p0 == $p1 then ($c1 - $c0) / $tck else null end),
      cpu_start: {pid: $p0, ticks: $c0}, clk_tck: $tck,
      final_stats: (try ($final | fromjson) catch null), runtime_faults: $faults, url: $url}' >"$run_dir/$slug.meta.json"
  cp "$GW_LOG" "$run_dir/$slug.gateway.log"
  # The objects the run created and their storage, read once workerd has stopped.
  gw_stop
  "$PYTHON" load-tests/lib/do_storage.py "$GW_DIR/state" >"$run_dir/$slug.storage.json" 2>"$run_dir/$slug.storage.err" \
    || echo null >"$run_dir/$slug.storage.json"
  gw_cleanup
done

total=$(($(date +%s) - started))
jq -n --arg mode "$mode" --arg shape "$shape" --argjson planned "$planned_s" --argjson total "$total" --arg cap "$CAP" \
  --argjson tier_limit "$LOAD_TIER_LIMIT" --arg users "${users:-1}" --arg who "$who" --arg upstream "$upstream" \
  --arg report_name "$REPORT_NAME" --arg arrival "$arrival" --arg tier_mix "${tier_mix:-}" --argjson sample_s "$SAMPLE_S" \
  --arg fleet_duration "${FLEET_DURATION:-}" --arg gateway_vars "${GATEWAY_VARS:-}" \
  --arg wrangler "$(node_modules/.bin/wrangler --version 2>/dev/null | tail -n 1)" \
  --arg workerd "$(node_modules/.bin/workerd --version 2>/dev/null | awk '{ print $2 }')" \
  --arg k6 "$("$K6" version | head -n 1)" --arg cpus "$(nproc)" \
  --arg mem "$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)" \
  --arg cpu "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)" \
  '{mode: $mode, shape: $shape, planned_s: $planned, total_s: $total, shard_max_connections: ($cap | tonumber),
    tier_limit: $tier_limit, users: ($users | tonumber), load: $who, upstream: $upstream, report_name: $report_name,
    arrival: $arrival, tier_mix: $tier_mix, sample_interval_s: $sample_s, fleet_duration_s: ($fleet_duration | tonumber? // null),
    gateway_vars: $gateway_vars, wrangler: $wrangler, workerd: $workerd, k6: $k6, cpus: ($cpus | tonumber), memory: $mem, cpu: $cpu}' \
  >"$run_dir/run.json"
echo
echo "compare: all $n policies ran in $(fmt_s "$total"); writing the report"
"$PYTHON" load-tests/report/compare_report.py "$run_dir" "$RESULTS_DIR"
