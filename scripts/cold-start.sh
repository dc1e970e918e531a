#!/usr/bin/env bash
# Cold start of the Worker and one shard on local workerd, several runs, medians.
#
#   scripts/cold-start.sh [RUNS] [BUILD_DIR]        (default 5 runs of build/)
#
# Each run starts a fresh `wrangler dev` (own ports, empty state, a copy of BUILD_DIR and of
# wrangler.toml without its [build] table, like load-tests/lib/gateway.sh) and measures:
#   ready     launch -> wrangler's "Ready on" line
#   cold      "Ready on" -> the `connected` frame of the first WebSocket connect (the first
#             request: it instantiates the Worker's wasm, the user's Directory and a
#             ConnectionManager shard)
#   warm      the same connect again on the warm runtime (a new socket, same user), for scale
# Prints one line per run, then one JSON line with the medians and every run.
# Traffic goes to 127.0.0.1 only; every gateway is stopped before the next starts.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
runs=${1:-5}
build=$(cd "${2:-build}" && pwd)
case $runs in '' | *[!0-9]*) echo "usage: scripts/cold-start.sh [RUNS] [BUILD_DIR]" >&2; exit 2 ;; esac
for f in "$build/index.js" "$build/index_bg.wasm" target/debug/token .venv/bin/python; do
  [ -e "$f" ] || { echo "error: $f is missing (make build; cargo build -p edge-tools; make bootstrap)" >&2; exit 2; }
done
# shellcheck source=load-tests/lib/gateway.sh
. load-tests/lib/gateway.sh
trap 'gw_cleanup' EXIT
trap 'exit 130' INT
token=$(target/debug/token --user cold-start --ttl 3600)
echo "cold-start: $runs runs of $build (wasm $(wc -c <"$build/index_bg.wasm") bytes, $(gzip -9c "$build/index_bg.wasm" | wc -c) gzipped)"
results=()
for i in $(seq 1 "$runs"); do
  gw_new_dir
  app=$GW_DIR/app
  cp -R "$build" "$app/build"
  awk '/^\[/ { skip = ($0 ~ /^\[build\][[:space:]]*$/) } !skip' wrangler.toml >"$app/wrangler.toml"
  cp -R migrations "$app/migrations"
  CI=1 WRANGLER_SEND_METRICS=false node_modules/.bin/wrangler d1 migrations apply DB --local \
    --config "$app/wrangler.toml" --persist-to "$GW_DIR/state" >"$GW_DIR/d1.log" 2>&1
  port=$(gw_free_port)
  iport=$(gw_free_port)
  t0=$(date +%s.%N)
  (WRANGLER_SEND_METRICS=false exec setsid node_modules/.bin/wrangler dev --config "$app/wrangler.toml" \
    --ip 127.0.0.1 --port "$port" --inspector-port "$iport" --persist-to "$GW_DIR/state" \
    --show-interactive-dev-session=false >"$GW_LOG" 2>&1) &
  GW_PGID=$!
  line=$(.venv/bin/python - "$GW_LOG" "$port" "$token" "$t0" <<'PY'
import asyncio, json, sys, time
import websockets

log, port, token, t0 = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
url = f"ws://127.0.0.1:{port}/v1/updates?token={token}"

async def connect_once() -> float:
    """Seconds from the first attempt to the `connected` frame (refused attempts retried)."""
    start = time.time()
    while True:
        try:
            async with websockets.connect(url, open_timeout=60) as ws:
                while True:
                    f = json.loads(await asyncio.wait_for(ws.recv(), 60))
                    if f.get("event") == "connected":
                        return time.time() - start
        except OSError:
            if time.time() - start > 60:
                raise
            await asyncio.sleep(0.01)

async def main() -> None:
    deadline = time.time() + 120
    while True:
        with open(log, errors="replace") as f:
            if "Ready on" in f.read():
                break
        if time.time() > deadline:
            raise SystemExit("no 'Ready on' within 120 s")
        await asyncio.sleep(0.005)
    ready = time.time()
    cold = await connect_once()
    warm = await connect_once()
    print(json.dumps({"ready_ms": round((ready - t0) * 1000), "cold_ms": round(cold * 1000),
                      "warm_ms": round(warm * 1000)}))

asyncio.run(main())
PY
  ) || { echo "error: run $i failed; last lines of the log:" >&2; tail -n 20 "$GW_LOG" >&2; exit 1; }
  echo "cold-start: run $i: $line"
  results+=("$line")
  gw_cleanup
done
printf '%s\n' "${results[@]}" | jq -sc '
  def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  {runs: length, median_ready_ms: (map(.ready_ms) | median), median_cold_ms: (map(.cold_ms) | median),
   median_warm_ms: (map(.warm_ms) | median), each: .}'
