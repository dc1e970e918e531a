// WebSocket load scenarios for the edge gateway (the capacity guide's HAP-263 / HAP-894 modes).
//
//   k6 run -e TEST_MODE=smoke -e AUTH_TOKEN=<platform token> load-tests/scenarios/websocket-performance.js
//   k6 run -e TEST_MODE=quick -e USERS=20 -e TOKENS_FILE=<json> -e TIER_MIX=free:0.5,pro:0.5 \
//          -e ADMIN_TOKEN=<admin> load-tests/scenarios/websocket-performance.js
//
// Usually started through scripts/load.sh (one run) or scripts/compare.sh (policy comparison).
// Three scenarios run side by side:
//   sockets      one VU = one client holding one WebSocket for the whole run (ramping-vus);
//                pings, receives broadcasts, some VUs send client broadcasts, reconnects on
//                `reconnect` frames and drops, retries rejected connects with backoff.
//   broadcaster  one VU POSTing /v1/websocket/broadcast with the send time in the payload.
//   stats        one VU polling /v1/websocket/stats for the do_* metrics.
//
// Sockets use the classic `k6/ws` module, not `k6/experimental/websockets`: the async API
// reports a refused upgrade only as "websocket: bad handshake", without the HTTP status,
// so a 429 (tier limit) could not be told from a 503 (shard full) or a 401. `k6/ws` returns
// status, headers (Retry-After) and body, and still lets a VU hold its socket for the
// whole stage with socket timers.

import ws from 'k6/ws';
import http from 'k6/http';
import exec from 'k6/execution';
import encoding from 'k6/encoding';
import { sleep } from 'k6';
import { Counter, Gauge, Rate, Trend } from 'k6/metrics';

// ---------------------------------------------------------------------------
// Modes. VUs and durations from the capacity guide's tables; `quick` is a compressed
// `extreme` (same peak, ~2.5 min) for comparing policies in minutes.
// scripts/load.sh keeps its own list of these names for its usage message.

const MODES = {
  // 10 VUs, 30 s: basic functionality. Fast ping/broadcast cadence so 30 s gives samples.
  smoke: {
    set: 'standard',
    stages: [['5s', 10], ['25s', 10]],
    pingS: 2, broadcastS: 1, statsS: 2, clientBroadcast: { everyNthVu: 5, intervalS: 4 },
  },
  // 120 VUs, ~3 min: 100+ concurrent connections, reached in three steps.
  scale: {
    set: 'standard',
    stages: [['30s', 40], ['30s', 80], ['30s', 120], ['90s', 120]],
    pingS: 5, broadcastS: 2, statsS: 5, clientBroadcast: { everyNthVu: 40, intervalS: 10 },
  },
  // 100 VUs, 7 min: a 30 s ramp, then 6.5 min steady (the guide's 5-minute stability window).
  sustained: {
    set: 'standard',
    stages: [['30s', 100], ['390s', 100]],
    pingS: 5, broadcastS: 2, statsS: 5, clientBroadcast: { everyNthVu: 40, intervalS: 10 },
  },
  // 200 VUs, 4 min: up to the tested stable per-object limit and hold it.
  stress: {
    set: 'standard',
    stages: [['30s', 100], ['30s', 200], ['180s', 200]],
    pingS: 5, broadcastS: 2, statsS: 5, clientBroadcast: { everyNthVu: 50, intervalS: 10 },
  },
  // 750 VUs, 10 min: gradual ramp (100 more each minute) to find the limits, 3 min at peak.
  extreme: {
    set: 'extreme',
    stages: [['60s', 100], ['60s', 200], ['60s', 300], ['60s', 400], ['60s', 500],
      ['60s', 600], ['60s', 750], ['180s', 750]],
    pingS: 5, broadcastS: 2, statsS: 5, clientBroadcast: { everyNthVu: 150, intervalS: 15 },
  },
  // 600 VUs, 5 min: small baseline, a 10 s burst to 600, hold, drop back, watch recovery.
  spikeExtreme: {
    set: 'extreme',
    stages: [['20s', 50], ['40s', 50], ['10s', 600], ['170s', 600], ['10s', 50], ['50s', 50]],
    pingS: 5, broadcastS: 2, statsS: 5, clientBroadcast: { everyNthVu: 150, intervalS: 15 },
  },
  // `extreme` compressed: 150 more VUs every 20 s to 750, 40 s at peak (2 min 20 s).
  quick: {
    set: 'extreme',
    stages: [['20s', 150], ['20s', 300], ['20s', 450], ['20s', 600], ['20s', 750], ['40s', 750]],
    pingS: 5, broadcastS: 2, statsS: 5, clientBroadcast: { everyNthVu: 150, intervalS: 15 },
  },
};

// Thresholds: the guide's "Target (Standard)" / "Target (Extreme)" columns, plus its alert
// rules where it has no target (DO response p95 > 1000 ms warning; rejection rate > 5 %
// warning, > 20 % critical), plus "something was measured" guards: a Trend threshold over
// zero samples would pass, so pings and broadcasts must actually have come back.
const THRESHOLDS = {
  standard: {
    ws_connection_time: ['p(95)<2000'],
    ws_connection_errors: ['count<10'],
    ws_connection_success: ['rate==1'], // "All attempted"
    ws_message_latency: ['p(95)<100'],
    ws_broadcast_delivery_time: ['p(95)<500'],
    do_response_time: ['p(95)<1000'],
    do_connection_rejection_rate: ['rate<0.05'],
    ws_pongs_received: ['count>0'],
    ws_broadcasts_received: ['count>0'],
  },
  extreme: {
    ws_connection_time: ['p(95)<5000'],
    ws_connection_errors: ['count<100'],
    ws_connection_success: ['rate>=0.8'], // "80%+"
    ws_message_latency: ['p(95)<500'],
    ws_broadcast_delivery_time: ['p(95)<2000'],
    do_response_time: ['p(95)<1000'],
    do_connection_rejection_rate: ['rate<0.2'],
    ws_pongs_received: ['count>0'],
    ws_broadcasts_received: ['count>0'],
  },
};
// Smoke runs in CI: there, any connection error is a failure.
const SMOKE_EXTRA = { ws_connection_errors: ['count==0'] };

// ---------------------------------------------------------------------------
// Environment

const MODE_NAME = __ENV.TEST_MODE || 'smoke';
const MODE = MODES[MODE_NAME];
if (!MODE) {
  throw new Error(`unknown TEST_MODE "${MODE_NAME}"; valid modes: ${Object.keys(MODES).join(', ')}`);
}

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8787').replace(/\/+$/, '');
if (!/^https?:\/\//.test(BASE_URL)) {
  throw new Error(`BASE_URL must start with http:// or https://, got "${BASE_URL}"`);
}
const WS_BASE = BASE_URL.replace(/^http/, 'ws');

function num(name, dflt, min, max, integer = false) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return dflt;
  const v = Number(raw);
  if (!Number.isFinite(v) || v < min || v > max || (integer && !Number.isInteger(v))) {
    throw new Error(`${name} must be ${integer ? 'an integer' : 'a number'} in ${min}..${max}, got "${raw}"`);
  }
  return v;
}

// "a:0.5,b:0.3" -> [{name, cum}] with cumulative, normalised fractions.
function parseMix(name, raw, allowed) {
  const parts = raw.split(',').map((s) => s.trim()).filter((s) => s !== '');
  let total = 0;
  const out = [];
  for (const p of parts) {
    const m = /^([A-Za-z0-9_.-]+):([0-9]*\.?[0-9]+)$/.exec(p);
    if (!m) throw new Error(`${name}: "${p}" is not name:fraction (e.g. ${name === 'TIER_MIX' ? 'pro:0.3' : 'session-scoped:0.6'})`);
    if (allowed && !allowed.includes(m[1])) {
      throw new Error(`${name}: "${m[1]}" is not one of ${allowed.join(', ')}`);
    }
    const f = Number(m[2]);
    if (f <= 0) continue;
    total += f;
    out.push({ name: m[1], cum: total });
  }
  if (out.length === 0) throw new Error(`${name} "${raw}" has no positive fraction`);
  for (const o of out) o.cum /= total;
  return out;
}

function pick(mix, u) {
  for (const m of mix) if (u < m.cum) return m.name;
  return mix[mix.length - 1].name;
}

// Who the clients are: one user with a given token (the guide's test), or USERS users whose
// platform tokens (Ed25519, which k6 cannot sign) come from TOKENS_FILE, a JSON object
// {"load-u0": token, ...} written by `target/debug/token --users N --prefix load-u`.
// Tokens carry no tier: with ADMIN_TOKEN, setup() sets each user's tier the operator's way
// (PUT /admin/users/{id}/tier), from TIER_MIX for many users or LOAD_TIER for one.
const USERS = num('USERS', 0, 0, 100000, true);
const AUTH_TOKEN = __ENV.AUTH_TOKEN || '';
if (!USERS && !AUTH_TOKEN) {
  throw new Error('set AUTH_TOKEN (one user) or USERS=N with TOKENS_FILE (tokens per user)');
}
if (USERS && !__ENV.TOKENS_FILE) {
  throw new Error('USERS needs TOKENS_FILE: target/debug/token --users N --prefix load-u > tokens.json');
}
const TOKENS = USERS ? JSON.parse(open(__ENV.TOKENS_FILE)) : {};
const ADMIN_TOKEN = __ENV.ADMIN_TOKEN || '';
const TIER_MIX = parseMix('TIER_MIX', __ENV.TIER_MIX || 'pro:1');
const CLIENT_TYPES = ['user-scoped', 'session-scoped', 'machine-scoped'];
// Default mix: mostly CLI sessions, some app (user) and daemon (machine) sockets, so the
// `session` policy has sessions to place; `single`/`hash` place every type alike.
const CLIENT_MIX = parseMix('CLIENT_MIX',
  __ENV.CLIENT_MIX || 'session-scoped:0.6,user-scoped:0.25,machine-scoped:0.15', CLIENT_TYPES);
// VUs vu, vu+1, ... with the same floor(vu / SESSION_SIZE) that are session-scoped share a session.
const SESSION_SIZE = num('SESSION_SIZE', 5, 1, 100000, true);
const PING_S = num('PING_INTERVAL', MODE.pingS, 0.1, 3600);
const BROADCAST_S = num('BROADCAST_INTERVAL', MODE.broadcastS, 0.1, 3600);
const STATS_S = num('STATS_INTERVAL', MODE.statsS, 0.1, 3600);
const CLIENT_BCAST_NTH = num('CLIENT_BROADCAST_EVERY_NTH_VU', MODE.clientBroadcast.everyNthVu, 0, 1e9, true);
const CLIENT_BCAST_S = num('CLIENT_BROADCAST_INTERVAL', MODE.clientBroadcast.intervalS, 0.1, 3600);
const CONNECT_TIMEOUT_MS = num('CONNECT_TIMEOUT_MS', 10000, 100, 600000);
const PONG_TIMEOUT_MS = 10000;
const MAX_BACKOFF_MS = 10000;
const HTTP_BROADCAST_EVENT = 'load-broadcast';
const CLIENT_BROADCAST_KIND = 'load-client';

function durS(d) {
  const m = /^(\d+)(s|m)$/.exec(d);
  return Number(m[1]) * (m[2] === 'm' ? 60 : 1);
}
const TOTAL_S = MODE.stages.reduce((s, [d]) => s + durS(d), 0);
const PEAK_VUS = Math.max(...MODE.stages.map(([, t]) => t));
// Sockets close themselves this long before the stages end, so the run ends on clean
// closes instead of k6 interrupting VUs.
const END_MARGIN_MS = 1500;
// How long k6 lets a VU it is removing finish before interrupting it (ramp-downs).
const RAMP_DOWN_GRACE_MS = 5000;

const users = [];
if (USERS) {
  for (let n = 0; n < USERS; n++) {
    // Deterministic tier per user: the first users take the first tier's share, and so on.
    const tier = pick(TIER_MIX, (n + 0.5) / USERS);
    const token = TOKENS[`load-u${n}`];
    if (!token) throw new Error(`TOKENS_FILE has no token for load-u${n}; mint ${USERS} users`);
    users.push({ id: `load-u${n}`, tier, token });
  }
} else {
  users.push({ id: claimOf(AUTH_TOKEN, 'user') || 'token-user', tier: __ENV.LOAD_TIER || '', token: AUTH_TOKEN });
}

// For labels only; the gateway verifies the token.
function claimOf(token, claim) {
  try {
    return JSON.parse(encoding.b64decode(token.split('.')[1], 'rawurl', 's'))[claim];
  } catch (e) {
    return undefined;
  }
}

// ---------------------------------------------------------------------------
// Metrics (names from the capacity guide)

const connectionTime = new Trend('ws_connection_time', true); // new socket -> `connected` frame
const connectionErrors = new Counter('ws_connection_errors'); // failed attempts + unexpected drops
const connectionSuccess = new Rate('ws_connection_success'); // per attempt
const messageLatency = new Trend('ws_message_latency', true); // ping sent -> pong received
const broadcastDelivery = new Trend('ws_broadcast_delivery_time', true); // sender's clock -> receipt
const reconnectionTime = new Trend('ws_reconnection_time', true); // reconnect hint/drop -> `connected`
const reconnects = new Counter('ws_reconnects');
// Client-side concurrency over time (opened - closed), for the reports' time windows.
const socketsOpened = new Counter('ws_sockets_opened');
const socketsClosed = new Counter('ws_sockets_closed');
const pongsReceived = new Counter('ws_pongs_received');
const pingTimeouts = new Counter('ws_ping_timeouts');
const broadcastsReceived = new Counter('ws_broadcasts_received');
const serverErrorFrames = new Counter('ws_error_frames');
const broadcastRequestTime = new Trend('ws_broadcast_request_time', true);
const broadcastDelivered = new Counter('ws_broadcast_delivered'); // server-reported recipients
const broadcastErrors = new Counter('ws_broadcast_errors');

const doConnectionsTotal = new Gauge('do_connections_total');
const doConnectionsRejected = new Counter('do_connections_rejected');
const doRejectionRate = new Rate('do_connection_rejection_rate');
const doResponseTime = new Trend('do_response_time', true);
const doMemoryUsage = new Gauge('do_memory_usage_bytes');
const doOldestConnection = new Gauge('do_oldest_connection_ms');
const doShards = new Gauge('do_shards');
const doShardConnectionsMax = new Gauge('do_shard_connections_max');
const doImbalance = new Gauge('do_imbalance');
const doStatsRejected = new Gauge('do_stats_rejected'); // the server's own cumulative count
const doStatsErrors = new Counter('do_stats_errors');
const doFailedShards = new Counter('do_failed_shards');

// ---------------------------------------------------------------------------
// Options

const thresholds = Object.assign({}, THRESHOLDS[MODE.set], MODE_NAME === 'smoke' ? SMOKE_EXTRA : {});
// Both broadcast paths must meet the target on their own (and show up apart in the summary);
// HTTP broadcasts always run, so some must have arrived.
thresholds['ws_broadcast_delivery_time{via:http}'] = thresholds.ws_broadcast_delivery_time;
thresholds['ws_broadcast_delivery_time{via:client}'] = thresholds.ws_broadcast_delivery_time;
thresholds['ws_broadcasts_received{via:http}'] = ['count>0'];

export const options = {
  scenarios: {
    sockets: {
      executor: 'ramping-vus',
      exec: 'sockets',
      startVUs: 0,
      stages: MODE.stages.map(([duration, target]) => ({ duration, target })),
      // Ramp-downs (spikeExtreme) stop the surplus VUs; their sockets close with them.
      gracefulRampDown: `${RAMP_DOWN_GRACE_MS / 1000}s`,
      gracefulStop: '10s',
    },
    broadcaster: {
      executor: 'constant-vus',
      exec: 'broadcaster',
      vus: 1,
      startTime: '2s', // let the first sockets connect
      duration: `${Math.max(1, TOTAL_S - 4)}s`,
      gracefulStop: '5s',
    },
    stats: {
      executor: 'constant-vus',
      exec: 'statsPoller',
      vus: 1,
      startTime: '1s',
      duration: `${Math.max(1, TOTAL_S - 2)}s`,
      gracefulStop: '5s',
    },
  },
  thresholds,
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)', 'count'],
  // The test is about sockets; k6's own HTTP metrics carry no tags we need per URL.
  systemTags: ['status', 'method', 'scenario', 'error_code'],
};

// ---------------------------------------------------------------------------
// Setup: the gateway must be up before 750 clients hit it.

export function setup() {
  const r = http.get(`${BASE_URL}/health`, { timeout: '10s' });
  if (r.status !== 200) {
    exec.test.abort(`${BASE_URL}/health answered ${r.status} ${String(r.body).slice(0, 200)}: is the gateway running?`);
  }
  const policy = (() => { try { return JSON.parse(r.body).policy; } catch (e) { return '?'; } })();
  // The operator's tiers for the users, before any of them connects.
  for (const u of users) {
    if (!u.tier) continue;
    if (!ADMIN_TOKEN) exec.test.abort(`tier ${u.tier} for ${u.id} needs ADMIN_TOKEN to set it`);
    const t = http.put(`${BASE_URL}/admin/users/${u.id}/tier`, JSON.stringify({ tier: u.tier }),
      { headers: { Authorization: `Bearer ${ADMIN_TOKEN}`, 'Content-Type': 'application/json' }, timeout: '10s' });
    if (t.status !== 200) {
      exec.test.abort(`could not set ${u.id}'s tier to ${u.tier}: ${t.status} ${String(t.body).slice(0, 300)}`);
    }
  }
  // One token per tier must be accepted, or every connect would fail the same way (expired
  // token, a secret that does not match).
  const seen = {};
  for (const u of users) {
    if (seen[u.tier]) continue;
    seen[u.tier] = true;
    const s = http.get(`${BASE_URL}/v1/websocket/stats`, { headers: { Authorization: `Bearer ${u.token}` }, timeout: '10s' });
    if (s.status !== 200) {
      exec.test.abort(`the gateway refuses ${u.id}'s token (tier ${u.tier}): ${s.status} ${String(s.body).slice(0, 300)}`);
    }
  }
  console.log(`mode=${MODE_NAME} (${MODE.set} thresholds) peakVUs=${PEAK_VUS} duration=${TOTAL_S}s ` +
    `target=${BASE_URL} policy=${policy} users=${users.length} ` +
    `(${users.length === 1 ? `${users[0].id}, tier ${users[0].tier}` : __ENV.TIER_MIX || 'pro:1'})`);
  return {};
}

// ---------------------------------------------------------------------------
// Socket clients

function scenarioEndMs() {
  return exec.scenario.startTime + TOTAL_S * 1000;
}

function identity(vu) {
  const user = users[(vu - 1) % users.length];
  // Low-discrepancy spread (golden ratio) so the client mix holds at every VU count of a ramp.
  const u = (vu * 0.6180339887498949) % 1;
  const type = pick(CLIENT_MIX, u);
  let query = `token=${encodeURIComponent(user.token)}`;
  if (type !== 'user-scoped') query += `&clientType=${type}`;
  if (type === 'session-scoped') query += `&sessionId=s${Math.floor(vu / SESSION_SIZE)}`;
  if (type === 'machine-scoped') query += `&machineId=m${vu}`;
  return { user, type, url: `${WS_BASE}/v1/updates?${query}`, sender: CLIENT_BCAST_NTH > 0 && vu % CLIENT_BCAST_NTH === 0 };
}

// One socket from connect to close. Returns how it ended.
function runSocket(me, deadline, pending) {
  const start = Date.now();
  const st = { connectedAt: 0, ended: '', retryAfterMs: 0, closeCode: 0, closedAt: 0, hintAt: 0 };
  let res;
  try {
    res = ws.connect(me.url, { tags: { client_type: me.type } }, (socket) => {
      const pings = []; // send times of unanswered pings, oldest first (pongs come in order)
      socket.setTimeout(() => {
        if (!st.connectedAt) {
          st.ended = 'no_connected_frame';
          socket.close();
        }
      }, CONNECT_TIMEOUT_MS);
      socket.on('message', (raw) => {
        const now = Date.now();
        let f;
        try {
          f = JSON.parse(raw);
        } catch (e) {
          serverErrorFrames.add(1, { code: 'unparsable' });
          return;
        }
        switch (f.event) {
          case 'connected': {
            st.connectedAt = now;
            socketsOpened.add(1);
            connectionTime.add(now - start);
            connectionSuccess.add(true);
            doRejectionRate.add(false);
            if (pending) {
              reconnectionTime.add(now - pending.since, { reason: pending.reason });
              reconnects.add(1, { reason: pending.reason });
            }
            const ping = () => {
              const t = Date.now();
              while (pings.length && t - pings[0] > PONG_TIMEOUT_MS) {
                pings.shift();
                pingTimeouts.add(1);
              }
              pings.push(t);
              socket.send('{"event":"ping"}'); // exact text: answered by auto-response
            };
            ping();
            socket.setInterval(ping, PING_S * 1000);
            if (me.sender) {
              socket.setInterval(() => {
                socket.send(JSON.stringify({ event: 'broadcast', data: { kind: CLIENT_BROADCAST_KIND, sentAt: Date.now() } }));
              }, CLIENT_BCAST_S * 1000);
            }
            socket.setTimeout(() => {
              st.ended = 'deadline';
              socket.close(1000);
            }, Math.max(0, deadline - now));
            break;
          }
          case 'pong': {
            const sent = pings.shift();
            if (sent !== undefined) {
              messageLatency.add(now - sent);
              pongsReceived.add(1);
            }
            break;
          }
          case HTTP_BROADCAST_EVENT:
            if (f.data && typeof f.data.sentAt === 'number') {
              broadcastDelivery.add(now - f.data.sentAt, { via: 'http' });
              broadcastsReceived.add(1, { via: 'http' });
            }
            break;
          case 'broadcast':
            if (f.data && f.data.kind === CLIENT_BROADCAST_KIND && typeof f.data.sentAt === 'number') {
              broadcastDelivery.add(now - f.data.sentAt, { via: 'client' });
              broadcastsReceived.add(1, { via: 'client' });
            }
            break;
          case 'reconnect':
            // Rotation drain: the server closes with 1012 right after; come back after the hint.
            st.ended = 'reconnect';
            st.hintAt = now;
            st.retryAfterMs = (f.data && Number(f.data.retryAfterMs)) || 0;
            break;
          case 'error':
            serverErrorFrames.add(1, { code: (f.data && f.data.code) || 'unknown' });
            break;
          default:
            break;
        }
      });
      socket.on('close', (code) => {
        st.closeCode = code;
        st.closedAt = Date.now();
      });
    });
  } catch (e) {
    res = { status: 0, error: String(e), headers: {}, body: '' };
  }

  if (!res || res.status !== 101) {
    const status = res ? res.status : 0;
    const rejected = status === 429 || status === 503;
    let code = '';
    try { code = JSON.parse(res.body).error || ''; } catch (e) { /* not JSON */ }
    connectionSuccess.add(false);
    doRejectionRate.add(rejected);
    connectionErrors.add(1, { kind: rejected ? 'rejected' : 'failed', status: String(status) });
    if (rejected) doConnectionsRejected.add(1, { status: String(status), code });
    const ra = res && res.headers ? Number(res.headers['Retry-After'] || res.headers['retry-after']) : NaN;
    return { ended: rejected ? 'rejected' : 'failed', retryAfterMs: Number.isFinite(ra) ? ra * 1000 : 1000 };
  }
  if (st.connectedAt) socketsClosed.add(1);
  if (!st.connectedAt) {
    // Upgraded but never told who we are: the gateway did not finish the connect.
    connectionSuccess.add(false);
    doRejectionRate.add(false);
    connectionErrors.add(1, { kind: 'no_connected_frame', status: '101' });
    return { ended: 'failed', retryAfterMs: 1000 };
  }
  if (st.ended === 'deadline') return { ended: 'deadline' };
  if (st.closeCode === 1001 && inRampDown(st.closedAt || Date.now())) return { ended: 'deadline' };
  if (st.ended === 'reconnect' || st.closeCode === 1012) {
    // A 1012 without the hint frame (end of the drain window) is still a rotation.
    return { ended: 'reconnect', since: st.hintAt || st.closedAt || Date.now(), retryAfterMs: st.retryAfterMs };
  }
  // The server (or the network) closed a socket nobody asked to close.
  connectionErrors.add(1, { kind: 'dropped', status: String(st.closeCode || 0) });
  return { ended: 'dropped', since: st.closedAt || Date.now(), retryAfterMs: 1000 };
}

// True while k6 is stopping surplus VUs: during a stage whose target is below the previous
// one, and for the graceful ramp-down after it. k6 closes an interrupted VU's socket with
// 1001 itself; that is the test shrinking, not the server dropping a client.
function inRampDown(now) {
  let t = exec.scenario.startTime;
  let prev = 0;
  for (const [d, target] of MODE.stages) {
    const end = t + durS(d) * 1000;
    if (target < prev && now >= t && now < end + RAMP_DOWN_GRACE_MS) return true;
    prev = target;
    t = end;
  }
  return false;
}

function sleepUntil(deadlineMs, ms) {
  const s = Math.min(ms, deadlineMs - Date.now()) / 1000;
  if (s > 0) sleep(s);
}

export function sockets() {
  const end = scenarioEndMs();
  const deadline = end - END_MARGIN_MS;
  if (Date.now() >= deadline - 250) {
    // Too late for a new socket: idle past the stages' end (k6 stops the iteration there)
    // instead of spinning through empty iterations.
    sleep(Math.max(0, end - Date.now()) / 1000 + 1);
    return;
  }
  const me = identity(exec.vu.idInTest);
  let pending = null; // {since, reason} while a reconnect is in progress
  let failures = 0;
  while (Date.now() < deadline - 250) {
    const r = runSocket(me, deadline, pending);
    if (r.ended === 'deadline') break;
    if (r.ended === 'reconnect' || r.ended === 'dropped') {
      failures = 0;
      pending = { since: r.since, reason: r.ended === 'reconnect' ? 'rotation' : 'drop' };
      sleepUntil(deadline, r.retryAfterMs);
      continue;
    }
    if (r.ended === 'rejected' || r.ended === 'failed') {
      // Retry like a well-behaved client: honour Retry-After, back off exponentially,
      // full jitter so rejected clients do not come back in lockstep.
      failures += 1;
      const base = Math.min(MAX_BACKOFF_MS, Math.max(r.retryAfterMs, 500) * 2 ** (failures - 1));
      sleepUntil(deadline, base / 2 + Math.random() * base / 2);
      continue;
    }
    failures = 0;
    pending = null;
  }
  // Idle out the remaining margin so this VU does not start another iteration.
  sleepUntil(end, end - Date.now());
}

// ---------------------------------------------------------------------------
// HTTP broadcaster: the send time travels in the payload; receivers subtract it.

let broadcastSeq = 0;

export function broadcaster() {
  const user = users[broadcastSeq % users.length];
  broadcastSeq += 1;
  const now = Date.now();
  const body = JSON.stringify({
    message: { type: HTTP_BROADCAST_EVENT, payload: { sentAt: now, seq: broadcastSeq }, timestamp: now },
    filter: { type: 'all' },
  });
  const r = http.post(`${BASE_URL}/v1/websocket/broadcast`, body, {
    headers: { Authorization: `Bearer ${user.token}`, 'Content-Type': 'application/json' },
    timeout: '10s',
    tags: { name: 'broadcast' },
  });
  broadcastRequestTime.add(r.timings.duration);
  let ok = r.status === 200;
  if (ok) {
    try {
      const b = JSON.parse(r.body);
      broadcastDelivered.add(b.delivered || 0);
      if (b.failedShards && b.failedShards.length) ok = false;
    } catch (e) {
      ok = false;
    }
  }
  if (!ok) broadcastErrors.add(1, { status: String(r.status) });
  sleep(Math.max(0, BROADCAST_S - (Date.now() - now) / 1000));
}

// ---------------------------------------------------------------------------
// Stats poller: do_* metrics from the stats endpoint, one user per poll (round robin), so
// the gauges are per user, the unit the guide's "per DO" metrics had.

let statsSeq = 0;

export function statsPoller() {
  const user = users[statsSeq % users.length];
  statsSeq += 1;
  const t = Date.now();
  const r = http.get(`${BASE_URL}/v1/websocket/stats`, {
    headers: { Authorization: `Bearer ${user.token}` },
    timeout: '10s',
    tags: { name: 'stats' },
  });
  doResponseTime.add(r.timings.duration);
  if (r.status !== 200) {
    doStatsErrors.add(1, { status: String(r.status) });
  } else {
    try {
      const s = JSON.parse(r.body);
      doConnectionsTotal.add(s.totalConnections);
      doMemoryUsage.add(s.memoryUsage);
      if (s.oldestConnection) doOldestConnection.add(Math.max(0, Date.now() - s.oldestConnection));
      const shards = s.shards || [];
      doShards.add(shards.length);
      doShardConnectionsMax.add(shards.reduce((m, x) => Math.max(m, x.connections), 0));
      doImbalance.add(s.imbalance || 0);
      doStatsRejected.add(s.rejected || 0);
      if (s.failedShards && s.failedShards.length) doFailedShards.add(s.failedShards.length);
    } catch (e) {
      doStatsErrors.add(1, { status: 'unparsable' });
    }
  }
  sleep(Math.max(0, STATS_S - (Date.now() - t) / 1000));
}
