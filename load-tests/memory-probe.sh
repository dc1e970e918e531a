#!/usr/bin/env bash
# Measures workerd's memory on a private local gateway (loopback only, bounded, stops itself).
#
#   load-tests/memory-probe.sh sockets          1,000 idle sockets, 200 at a time, over hash:shards=10
#   load-tests/memory-probe.sh sockets-deflate  the same, clients offering permessage-deflate
#   load-tests/memory-probe.sh fanout           64 sockets over hash:shards=16, then 4,000 stats
#                                               calls and 4,000 HTTP broadcasts (about 8 min)
#
# Prints the runtime and dev-proxy RSS (KiB) after each step. docs/capacity-planning.md
# ("Memory") has the figures it produced.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
what=${1:-}
case "$what" in
  sockets|sockets-deflate) policy="hash:shards=10" ;;
  fanout) policy="hash:shards=16" ;;
  *) echo "usage: load-tests/memory-probe.sh sockets|sockets-deflate|fanout" >&2; exit 2 ;;
esac
[ -x .venv/bin/python ] && [ -x target/debug/token ] \
  || { echo "error: run make bootstrap and cargo build -p edge-tools first" >&2; exit 2; }

# shellcheck source=load-tests/lib/gateway.sh
. load-tests/lib/gateway.sh
HOLDER=""
# shellcheck disable=SC2329 # run by the EXIT trap
finish() { [ -z "$HOLDER" ] || kill "$HOLDER" 2>/dev/null || true; gw_cleanup; }
trap finish EXIT
tiers='{"load":{"limit":2000,"latencyP95Ms":500,"availability":99.5}}'
# The probe's only tier is every user's default, so no tier needs setting.
gw_start "$policy" --var "TIERS:$tiers" --var "DEFAULT_TIER:load" --var "SHARD_MAX_CONNECTIONS:200"
tok=$(target/debug/token --user "memprobe")

if [ "$what" != fanout ]; then
  deflate=0; [ "$what" = sockets-deflate ] && deflate=1
  .venv/bin/python - "$GW_PORT" "$tok" "$GW_PGID" "$deflate" <<'PY'
import asyncio, subprocess, sys
import websockets
port, tok, pgid, deflate = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"

def rss():
    out = subprocess.run(["ps", "-o", "rss=,args=", "-g", pgid], capture_output=True, text=True).stdout
    rt = px = 0
    for line in out.splitlines():
        kb, args = line.split(None, 1)
        if args.split()[0].endswith("/workerd"):
            if "--debug-port" in args or "entry=127.0.0.1:0 " in args:
                rt += int(kb)
            else:
                px += int(kb)
    return rt, px

async def main():
    socks = []
    await asyncio.sleep(3)
    print(f"   0 sockets: runtime {rss()[0]} KiB, proxy {rss()[1]} KiB", flush=True)
    for _ in range(5):
        for _ in range(200):
            w = await websockets.connect(f"ws://127.0.0.1:{port}/v1/updates?token={tok}", ping_interval=None,
                                         compression="deflate" if deflate else None)
            await w.recv()
            socks.append(w)
        await asyncio.sleep(8)
        rt, px = rss()
        print(f"{len(socks):4d} sockets: runtime {rt} KiB, proxy {px} KiB", flush=True)
    for w in socks:
        await w.close()

asyncio.run(main())
PY
  exit 0
fi

.venv/bin/python - "$GW_PORT" "$tok" <<'PY' &
import asyncio, sys
import websockets
port, tok = sys.argv[1], sys.argv[2]

async def hold():
    async with websockets.connect(f"ws://127.0.0.1:{port}/v1/updates?token={tok}", compression=None) as w:
        async for _ in w:
            pass

async def main():
    await asyncio.gather(*[hold() for _ in range(64)], return_exceptions=True)

asyncio.run(main())
PY
HOLDER=$!
sleep 5
curl -s -H "Authorization: Bearer $tok" "$GW_URL/v1/websocket/stats" \
  | jq -c '{totalConnections, shards: (.shards | length)}'
read -r rt px < <(gw_workerd_rss_kb)
echo "start: runtime $rt KiB, proxy $px KiB"
for kind in stats broadcast; do
  for round in 1 2 3 4 5 6 7 8; do
    for _ in $(seq 1 500); do
      if [ "$kind" = stats ]; then
        curl -s -o /dev/null -H "Authorization: Bearer $tok" "$GW_URL/v1/websocket/stats"
      else
        curl -s -o /dev/null -H "Authorization: Bearer $tok" -H 'content-type: application/json' \
          -d '{"message":{"type":"probe","payload":{}},"filter":{"type":"all"}}' "$GW_URL/v1/websocket/broadcast"
      fi
    done
    read -r rt px < <(gw_workerd_rss_kb)
    echo "$kind x$((round * 500)): runtime $rt KiB, proxy $px KiB"
  done
done
