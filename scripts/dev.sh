#!/usr/bin/env bash
# Serves the gateway on 127.0.0.1:$PORT through `wrangler dev` (workerd), with the reference
# upstream (examples/upstream/) beside it answering the platform's business events, after
# applying the local D1 migrations (the RevokedToken table) and printing a platform token and
# ready-to-paste commands. POLICY overrides SHARD_POLICY; UPSTREAM=off serves without it.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${PORT:-8787}
user=${TOKEN_USER:-alice}
wrangler=node_modules/.bin/wrangler
export WRANGLER_SEND_METRICS=false
# Idempotent: applies only migrations the local database has not seen.
CI=1 "$wrangler" d1 migrations apply DB --local > build/d1-migrations.log 2>&1 \
  || { cat build/d1-migrations.log; exit 1; }
token=$(target/debug/token --user "$user")
admin=$(sed -n 's/^ADMIN_TOKEN=//p' .dev.vars)
base=http://127.0.0.1:$port
vars=()
if [ -n "${POLICY:-}" ]; then vars+=(--var "SHARD_POLICY:$POLICY"); fi
configs=(-c wrangler.toml)
upstream=${UPSTREAM:-service}
if [ "$upstream" = service ]; then configs+=(-c examples/upstream/wrangler.toml); fi
vars+=(--var "UPSTREAM:$upstream")
cat <<TXT

  Gateway:      $base   (policy: ${POLICY:-from wrangler.toml}; upstream: $upstream, the reference one in examples/upstream/)
  Dev token:    $token
                (user $user, a platform token signed with .dev.vars' HAPPY_MASTER_SECRET;
                 another: make token USER=bob; tiers: make tier USER=bob TIER=enterprise)

  Connect as an app (type {"event":"ping"} or {"event":"broadcast","data":"hi"}):
    .venv/bin/python -m websockets 'ws://127.0.0.1:$port/v1/updates?token=$token'
  Connect as a CLI session (its ids in the query here; the real CLI sends X-Client-Type headers),
  then send {"event":"message","data":{"sid":"s1","message":"hi"}}: the upstream numbers it and
  every app and the session get an "update" frame:
    .venv/bin/python -m websockets 'ws://127.0.0.1:$port/v1/updates?token=$token&clientType=session-scoped&sessionId=s1'

  A single-use ticket, as the web app gets one, then connect with it within 30 s:
    curl -s -X POST $base/v1/websocket/ticket -H 'Authorization: Bearer $token'
    .venv/bin/python -m websockets "ws://127.0.0.1:$port/v1/updates?ticket=<ticket>"

  Broadcast to your sockets, then read your stats:
    curl -s -X POST $base/v1/websocket/broadcast -H 'Authorization: Bearer $token' -d '{"message":{"type":"note","payload":"hello"}}'
    curl -s $base/v1/websocket/stats -H 'Authorization: Bearer $token'

  Admin token (for /metrics, /admin/*): $admin
    curl -s -X PUT $base/admin/users/$user/tier -H 'Authorization: Bearer $admin' -d '{"tier":"enterprise"}'
  Load test against this server:  make load MODE=smoke

TXT
export SKIP_WORKER_BUILD=1
exec "$wrangler" dev "${configs[@]}" --ip 127.0.0.1 --port "$port" \
  --show-interactive-dev-session=false "${vars[@]}"
