#!/usr/bin/env bash
# Serves the gateway on 127.0.0.1:$PORT through `wrangler dev` (workerd), after printing a
# dev token and a ready-to-paste command to connect. POLICY overrides SHARD_POLICY.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${PORT:-8787}
user=${TOKEN_USER:-alice}
tier=${TIER:-pro}
token=$(target/debug/token --user "$user" --tier "$tier")
admin=$(sed -n 's/^ADMIN_TOKEN=//p' .dev.vars)
vars=()
if [ -n "${POLICY:-}" ]; then vars+=(--var "SHARD_POLICY:$POLICY"); fi
cat <<TXT

  Gateway:      http://127.0.0.1:$port   (policy: ${POLICY:-from wrangler.toml})
  Dev token:    $token
                (user $user, tier $tier; another: make token USER=bob TIER=enterprise)

  Connect (type {"event":"ping"} or {"event":"broadcast","data":"hi"}):
    .venv/bin/python -m websockets 'ws://127.0.0.1:$port/v1/updates?token=$token'

  Broadcast to your sockets, then read your stats:
    curl -s -X POST http://127.0.0.1:$port/v1/websocket/broadcast -H 'Authorization: Bearer $token' -d '{"message":{"type":"note","payload":"hello"}}'
    curl -s http://127.0.0.1:$port/v1/websocket/stats -H 'Authorization: Bearer $token'

  Admin token (for /metrics, /admin/*): $admin
  Load test against this server:  make load MODE=smoke

TXT
export SKIP_WORKER_BUILD=1 WRANGLER_SEND_METRICS=false
exec node_modules/.bin/wrangler dev --ip 127.0.0.1 --port "$port" \
  --show-interactive-dev-session=false "${vars[@]}"
