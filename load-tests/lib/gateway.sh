# shellcheck shell=bash
# Sourced by scripts/load.sh, scripts/compare.sh and the benches under scripts/: start and stop a private local gateway
# (wrangler dev -> workerd) on free loopback ports with its own state directory.
#
#   gw_snapshot_build DEST                     consistent copy of build/ (set GW_BUILD_DIR=DEST to reuse it)
#   gw_start POLICY [extra wrangler args...]   sets GW_URL GW_PORT GW_PGID GW_DIR GW_LOG GW_BUILD_SHA
#   gw_start_baseline [extra wrangler args...] the same for the single-object baseline (benches/baseline)
#   gw_stop                                    stops the whole process group (idempotent)
#   gw_cleanup                                 gw_stop, then removes GW_DIR
#   gw_workerd_rss_kb                          RSS (KiB) of this gateway's workerd runtime and proxy
#   gw_workerd_cpu_ticks                       "PID TICKS" of the runtime: its utime + stime so far
#   gw_start_compared POLICY [wrangler args...] gw_start with the comparisons' tiers (`load` at
#                                              LOAD_TIER_LIMIT, default 1000) and per-object cap
#                                              (SHARD_MAX_CONNECTIONS, default 200)
#   gw_start_app WHAT CONFIG PATH...           serves another Worker: CONFIG as its wrangler.toml,
#                                              the PATHs (files or directories) beside it
#   gw_parse_vars                              GATEWAY_VARS ("NAME:VALUE ...") as --var arguments,
#                                              into the array GW_VARS; exits 2 on a malformed word
#
# Needs ROOT (the repository root) and the Worker already built in $ROOT/build.
# GW_WRANGLER_TOML (default $ROOT/wrangler.toml) is the config the gateway runs with: a
# snapshot keeps a run on one config while wrangler.toml is being edited.

gw_parse_vars() {
  GW_VARS=()
  local v
  for v in ${GATEWAY_VARS:-}; do
    case $v in
      [A-Z]*:*) GW_VARS+=(--var "$v") ;;
      *) echo "error: GATEWAY_VARS takes NAME:VALUE words, not \"$v\"" >&2; exit 2 ;;
    esac
  done
}

gw_free_port() {
  # Bind port 0 and report what the kernel picked; the tiny race with another process
  # taking it before wrangler does is acceptable for a local test.
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Copies the built Worker (build/index.js, index_bg.wasm, worker/, package.json) to DEST.
# Another process may be rebuilding build/ at the same moment: the copy is accepted only when
# the wasm's checksum matches the source's after copying.
gw_snapshot_build() {
  local dest=$1 _
  for _ in 1 2 3 4 5; do
    rm -rf "$dest" && mkdir -p "$dest"
    cp "$ROOT/build/index.js" "$ROOT/build/index_bg.wasm" "$dest/"
    if [ -d "$ROOT/build/worker" ]; then cp -R "$ROOT/build/worker" "$dest/"; fi
    if [ -f "$ROOT/build/package.json" ]; then cp "$ROOT/build/package.json" "$dest/"; fi
    if [ "$(sha256sum <"$dest/index_bg.wasm")" = "$(sha256sum <"$ROOT/build/index_bg.wasm")" ] \
      && [ "$(sha256sum <"$dest/index.js")" = "$(sha256sum <"$ROOT/build/index.js")" ]; then
      return 0
    fi
    sleep 2 # a rebuild is in progress
  done
  echo "error: build/ kept changing while it was copied; retry when the build is done" >&2
  return 1
}

GW_PGID=""

# A fresh GW_DIR with .dev.vars (the master secret, ADMIN_TOKEN) copied into its app/.
gw_new_dir() {
  if [ ! -f "$ROOT/.dev.vars" ]; then
    echo "error: $ROOT/.dev.vars is missing; create it with scripts/dev-vars.sh (make dev-vars)" >&2
    return 1
  fi
  GW_DIR=$(mktemp -d "${TMPDIR:-/tmp}/edge-gw.XXXXXX")
  GW_LOG="$GW_DIR/wrangler.log"
  mkdir -p "$GW_DIR/app"
  (umask 077 && cp "$ROOT/.dev.vars" "$GW_DIR/app/.dev.vars") # wrangler reads it next to the config
}

gw_start() {
  local policy=$1
  shift
  if [ ! -f "$ROOT/build/index.js" ]; then
    echo "error: $ROOT/build/index.js is missing; build the Worker first (make build)" >&2
    return 1
  fi
  gw_new_dir || return 1
  # Run a snapshot of the built Worker with a copy of wrangler.toml minus its [build] table:
  # `wrangler dev` watches src/ and reloads on every edit (dropping every socket) and would
  # pick up a concurrent rebuild of build/ mid-run. The snapshot keeps a run on one build.
  local app="$GW_DIR/app"
  if [ -n "${GW_BUILD_DIR:-}" ]; then
    cp -R "$GW_BUILD_DIR" "$app/build"
  else
    gw_snapshot_build "$app/build" || { gw_cleanup; return 1; }
  fi
  awk '/^\[/ { skip = ($0 ~ /^\[build\][[:space:]]*$/) } !skip' "${GW_WRANGLER_TOML:-$ROOT/wrangler.toml}" >"$app/wrangler.toml"
  # The local D1 database (the RevokedToken table the gateway checks tokens against).
  cp -R "$ROOT/migrations" "$app/migrations"
  if ! (cd "$ROOT" && CI=1 WRANGLER_SEND_METRICS=false node_modules/.bin/wrangler d1 migrations apply DB \
      --local --config "$app/wrangler.toml" --persist-to "$GW_DIR/state" >"$GW_DIR/d1.log" 2>&1); then
    echo "error: could not apply the D1 migrations:" >&2
    tail -n 20 "$GW_DIR/d1.log" >&2
    gw_cleanup
    return 1
  fi
  # shellcheck disable=SC2034 # read by the callers
  GW_BUILD_SHA=$(sha256sum "$app/build/index_bg.wasm" | cut -c1-12)
  gw_launch "policy $policy" --var "SHARD_POLICY:$policy" "$@"
}

gw_start_compared() {
  local policy=$1 tiers
  shift
  # The capacity guide's tiers plus `load`, high enough for the whole run.
  tiers=$(jq -cn --argjson l "${LOAD_TIER_LIMIT:-1000}" '{
    free: {limit: 20, latencyP95Ms: 500, availability: 99.5},
    pro: {limit: 100, latencyP95Ms: 200, availability: 99.9},
    enterprise: {limit: 500, latencyP95Ms: 100, availability: 99.95},
    load: {limit: $l, latencyP95Ms: 500, availability: 99.5}}')
  gw_start "$policy" --var "TIERS:$tiers" --var "SHARD_MAX_CONNECTIONS:${SHARD_MAX_CONNECTIONS:-200}" "$@"
}

gw_start_app() {
  local what=$1 config=$2
  shift 2
  gw_new_dir || return 1
  cp "$config" "$GW_DIR/app/wrangler.toml"
  cp -R "$@" "$GW_DIR/app/"
  gw_launch "$what"
}

# The single-object baseline (benches/baseline/, a JavaScript Worker) in place of the gateway,
# started the same way; extra arguments go to wrangler dev.
gw_start_baseline() {
  gw_new_dir || return 1
  cp -R "$ROOT/benches/baseline/wrangler.toml" "$ROOT/benches/baseline/src" "$GW_DIR/app/"
  # shellcheck disable=SC2034 # read by the callers
  GW_BUILD_SHA=$(cat "$GW_DIR"/app/src/*.js | sha256sum | cut -c1-12)
  gw_launch "single-object baseline" "$@"
}

# Serves $GW_DIR/app with wrangler dev on free loopback ports and waits for /health.
gw_launch() {
  local what=$1
  shift
  GW_PORT=$(gw_free_port)
  local iport
  iport=$(gw_free_port)
  GW_INSPECTOR_PORT=$iport
  GW_URL="http://127.0.0.1:$GW_PORT"
  # setsid: wrangler and the workerd it spawns share a fresh process group we can kill whole.
  # One config runs through load-tests/lib/serve.mjs: wrangler's dev server with the inspector
  # off, which `wrangler dev` would attach to the runtime and which inflates every Durable
  # Object subrequest (see serve.mjs); a second config (UPSTREAM=service) needs the CLI.
  if [ "${GW_INSPECTOR:-off}" = off ] && ! printf '%s\n' "$@" | grep -qxE -- '-c|--config'; then
    # Without the upstream Worker beside it, its service binding would name nothing (the
    # CLI only warns; the API refuses): the gateway runs without it (UPSTREAM stays off).
    awk '/^\[/ { skip = ($0 ~ /^\[\[services\]\][[:space:]]*$/) } !skip' "$GW_DIR/app/wrangler.toml" \
      >"$GW_DIR/app/wrangler.toml.new" && mv "$GW_DIR/app/wrangler.toml.new" "$GW_DIR/app/wrangler.toml"
    (cd "$ROOT" && WRANGLER_SEND_METRICS=false CI=1 exec setsid \
      node load-tests/lib/serve.mjs --config "$GW_DIR/app/wrangler.toml" --ip 127.0.0.1 \
      --port "$GW_PORT" --persist-to "$GW_DIR/state" "$@" >"$GW_LOG" 2>&1) &
  else
    (cd "$ROOT" && WRANGLER_SEND_METRICS=false exec setsid \
      node_modules/.bin/wrangler dev --config "$GW_DIR/app/wrangler.toml" --ip 127.0.0.1 --port "$GW_PORT" \
      --inspector-port "$iport" --persist-to "$GW_DIR/state" --show-interactive-dev-session=false \
      "$@" >"$GW_LOG" 2>&1) &
  fi
  GW_PGID=$!
  local body code
  for _ in $(seq 1 120); do
    code=$(curl -s -o "$GW_DIR/health" -w '%{http_code}' --max-time 2 "$GW_URL/health" 2>/dev/null || true)
    body=$(cat "$GW_DIR/health" 2>/dev/null || true)
    if [ "$code" = 200 ]; then
      echo "gateway: $GW_URL up ($what; $body)"
      return 0
    fi
    if [ "$code" = 503 ] && printf '%s' "$body" | grep -q invalid_config; then
      # Up but misconfigured (e.g. a bad SHARD_POLICY): waiting will not fix it.
      echo "error: the gateway rejects its configuration: $body" >&2
      gw_cleanup
      return 1
    fi
    if ! kill -0 "$GW_PGID" 2>/dev/null; then
      echo "error: the gateway exited during startup; last lines of $GW_LOG:" >&2
      tail -n 20 "$GW_LOG" >&2
      GW_PGID=""
      gw_cleanup
      return 1
    fi
    sleep 0.5
  done
  echo "error: $GW_URL/health did not answer 200 within 60 s; last lines of $GW_LOG:" >&2
  tail -n 20 "$GW_LOG" >&2
  curl -s --max-time 2 "$GW_URL/health" >&2 || true
  gw_cleanup
  return 1
}

gw_stop() {
  [ -n "$GW_PGID" ] || return 0
  local pgid=$GW_PGID
  GW_PGID=""
  kill -TERM -- "-$pgid" 2>/dev/null || return 0
  # wrangler shuts workerd down on SIGTERM; give it a few seconds, then force.
  for _ in $(seq 1 20); do
    pgrep -g "$pgid" >/dev/null 2>&1 || return 0
    sleep 0.25
  done
  kill -KILL -- "-$pgid" 2>/dev/null || true
}

# Stops the gateway and removes its temporary directory (state, snapshot, log).
gw_cleanup() {
  gw_stop
  if [ -n "${GW_DIR:-}" ] && [ -d "$GW_DIR" ]; then rm -rf "$GW_DIR"; fi
  GW_DIR=""
}

# "RUNTIME_KB PROXY_KB": wrangler's dev server runs two workerd processes: the runtime that
# hosts the Worker and its Durable Objects (with `wrangler dev` it has --debug-port; through
# serve.mjs its entry socket is an ephemeral port, `entry=127.0.0.1:0`), and an entry proxy in
# front of it (every socket passes through it too; production has no such proxy).
gw_workerd_rss_kb() {
  [ -n "$GW_PGID" ] || { echo "0 0"; return; }
  ps -o rss=,args= -g "$GW_PGID" 2>/dev/null | awk '
    $2 ~ /\/workerd$/ { if ($0 ~ /--debug-port|entry=127\.0\.0\.1:0 /) r += $1; else p += $1 }
    END { printf "%d %d\n", r, p }'
}

# "PID TICKS": the runtime workerd's pid and its CPU time so far (utime + stime from
# /proc/PID/stat, in clock ticks: divide by `getconf CLK_TCK`), or "0 0" without one.
gw_workerd_cpu_ticks() {
  [ -n "$GW_PGID" ] || { echo "0 0"; return; }
  local pid
  pid=$(ps -o pid=,args= -g "$GW_PGID" 2>/dev/null | awk '$2 ~ /\/workerd$/ && /--debug-port|entry=127\.0\.0\.1:0 / { print $1; exit }')
  # Fields after "(comm)": state is the 1st, utime the 12th, stime the 13th.
  if [ -n "$pid" ] && [ -r "/proc/$pid/stat" ]; then
    sed 's/^.*) //' "/proc/$pid/stat" | awk -v pid="$pid" '{ print pid, $12 + $13 }'
  else
    echo "0 0"
  fi
}
