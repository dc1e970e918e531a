// Modes, shapes, thresholds and the environment, shared by every module of the scenario.

import encoding from 'k6/encoding';
import { SharedArray } from 'k6/data';

// ---------------------------------------------------------------------------
// Modes. VUs and durations from the capacity guide's tables; `quick` is a compressed
// `extreme` (same peak, ~2.5 min) for comparing policies in minutes; `platform` is the
// platform's real traffic (machines, sessions and apps of many users), its stages sized from
// the users. scripts/load.sh and scripts/compare.sh keep their own list of these names.

export const MODES = {
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
  // Every user's machine, sessions and apps: a ramp to users x sockets-per-user, then a hold
  // (stages filled in below from PLATFORM_RAMP / PLATFORM_HOLD).
  platform: {
    set: 'extreme',
    stages: null,
    // Stats every 4 s: the poller is the mode's only HTTP client, and a request `wrangler
    // dev`'s proxy sends on its own pooled connection to workerd after 5 s of idleness hangs
    // until the client gives up (10 s; measured, local tooling only).
    pingS: 5, broadcastS: 2, statsS: 4, clientBroadcast: { everyNthVu: 0, intervalS: 15 },
  },
};

// What the VUs do: `steady` holds one socket per VU for the whole run (our modes);
// `churn` is the platform's own k6 loop (a short-lived socket per iteration, then HTTP);
// `http` is the platform's HTTP-only scenario (no socket is held); `fleet` is the production
// shape: many small users whose app and CLI sockets come and go (lib/fleet.js).
export const SHAPES = ['steady', 'churn', 'http', 'fleet'];
// fleet: sockets paced by their own clients (closed) or started at a fixed rate (open).
export const ARRIVALS = ['closed', 'open'];

// The guide's "Target (Standard)" / "Target (Extreme)" columns, plus its alert rules where it
// has no target (DO response p95 > 1000 ms warning; rejection rate > 5 % warning, > 20 %
// critical).
const TARGETS = {
  standard: { connectP95: 2000, errors: 'count<10', success: 'rate==1', pingP95: 100, deliveryP95: 500, statsP95: 1000, rejection: 'rate<0.05' },
  extreme: { connectP95: 5000, errors: 'count<100', success: 'rate>=0.8', pingP95: 500, deliveryP95: 2000, statsP95: 1000, rejection: 'rate<0.2' },
};
// The platform's HTTP-only scenario's own threshold.
export const HTTP_P95_MS = 300;
// Operations timed by http_op_duration (tag `op`).
export const HTTP_OPS = ['stats', 'broadcast_all', 'broadcast_user_scoped', 'broadcast_session',
  'broadcast_machine', 'upgrade_no_token', 'upgrade_plain'];

// ---------------------------------------------------------------------------
// Environment

export const MODE_NAME = __ENV.TEST_MODE || 'smoke';
export const MODE = MODES[MODE_NAME];
if (!MODE) {
  throw new Error(`unknown TEST_MODE "${MODE_NAME}"; valid modes: ${Object.keys(MODES).join(', ')}`);
}
export const SHAPE = __ENV.SHAPE || 'steady';
if (!SHAPES.includes(SHAPE)) {
  throw new Error(`unknown SHAPE "${SHAPE}"; valid shapes: ${SHAPES.join(', ')}`);
}
export const IS_PLATFORM = MODE_NAME === 'platform';
if (IS_PLATFORM && SHAPE !== 'steady') {
  throw new Error(`TEST_MODE=platform is its own traffic (machines, sessions, apps); SHAPE=${SHAPE} applies to the other modes`);
}
export const IS_FLEET = SHAPE === 'fleet';
export const ARRIVAL = __ENV.ARRIVAL || 'closed';
if (!ARRIVALS.includes(ARRIVAL)) {
  throw new Error(`unknown ARRIVAL "${ARRIVAL}"; valid: ${ARRIVALS.join(', ')} (SHAPE=fleet only)`);
}
if (ARRIVAL !== 'closed' && !IS_FLEET) {
  throw new Error(`ARRIVAL=${ARRIVAL} applies to SHAPE=fleet only, not SHAPE=${SHAPE}`);
}

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8787').replace(/\/+$/, '');
if (!/^https?:\/\//.test(BASE_URL)) {
  throw new Error(`BASE_URL must start with http:// or https://, got "${BASE_URL}"`);
}
export const WS_BASE = BASE_URL.replace(/^http/, 'ws');

export function num(name, dflt, min, max, integer = false) {
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

export function pick(mix, u) {
  for (const m of mix) if (u < m.cum) return m.name;
  return mix[mix.length - 1].name;
}

// Low-discrepancy spread (golden ratio) of VU numbers over [0, 1), so a mix holds at every VU
// count of a ramp.
export function spread(vu) {
  return (vu * 0.6180339887498949) % 1;
}

// Who the clients are: one user with a given token (the guide's test), or USERS users whose
// platform tokens (Ed25519, which k6 cannot sign) come from TOKENS_FILE, a JSON object
// {"load-u-0": token, ...} (user id -> token) written by `target/debug/token --users N --prefix load-u`.
// Tokens carry no tier: with ADMIN_TOKEN, setup() sets each user's tier the operator's way
// (PUT /admin/users/{id}/tier), from TIER_MIX for many users or LOAD_TIER for one; the tier
// name `default` leaves a user alone (the gateway's DEFAULT_TIER, no admin call).
const USERS = num('USERS', 0, 0, 100000, true);
const AUTH_TOKEN = __ENV.AUTH_TOKEN || '';
if (!USERS && !AUTH_TOKEN) {
  throw new Error('set AUTH_TOKEN (one user) or USERS=N with TOKENS_FILE (tokens per user)');
}
if (USERS && !__ENV.TOKENS_FILE) {
  throw new Error('USERS needs TOKENS_FILE: target/debug/token --users N --prefix load-u > tokens.json');
}
export const ADMIN_TOKEN = __ENV.ADMIN_TOKEN || '';
export const TIER_MIX_RAW = __ENV.TIER_MIX || 'pro:1';
// `default` alone: every user in the gateway's default tier.
const TIER_MIX = parseMix('TIER_MIX', TIER_MIX_RAW === 'default' ? 'default:1' : TIER_MIX_RAW);
export const CLIENT_TYPES = ['user-scoped', 'session-scoped', 'machine-scoped'];
// steady: mostly CLI sessions, some app (user) and daemon (machine) sockets, so the `session`
// policy has sessions to place. churn: the platform's loop's 70/15/15.
export const CLIENT_MIX = parseMix('CLIENT_MIX', __ENV.CLIENT_MIX || (SHAPE === 'churn'
  ? 'user-scoped:0.7,session-scoped:0.15,machine-scoped:0.15'
  : 'session-scoped:0.6,user-scoped:0.25,machine-scoped:0.15'), CLIENT_TYPES);
// VUs vu, vu+1, ... with the same floor(vu / SESSION_SIZE) that are session-scoped share a session.
export const SESSION_SIZE = num('SESSION_SIZE', 5, 1, 100000, true);
// The fleet's own cadence (a CLI pings every 2 s; stats and broadcasts now and then).
const FLEET_DEFAULTS = { pingS: 2, statsS: 10, broadcastS: 15 };
export const PING_S = num('PING_INTERVAL', IS_FLEET ? FLEET_DEFAULTS.pingS : MODE.pingS, 0.1, 3600);
export const BROADCAST_S = num('BROADCAST_INTERVAL', IS_FLEET ? FLEET_DEFAULTS.broadcastS : MODE.broadcastS, 0.1, 3600);
export const STATS_S = num('STATS_INTERVAL', IS_FLEET ? FLEET_DEFAULTS.statsS : MODE.statsS, 0.1, 3600);
export const CLIENT_BCAST_NTH = num('CLIENT_BROADCAST_EVERY_NTH_VU', MODE.clientBroadcast.everyNthVu, 0, 1e9, true);
export const CLIENT_BCAST_S = num('CLIENT_BROADCAST_INTERVAL', MODE.clientBroadcast.intervalS, 0.1, 3600);
export const CONNECT_TIMEOUT_MS = num('CONNECT_TIMEOUT_MS', 10000, 100, 600000);
export const HTTP_VUS = num('HTTP_VUS', 100, 1, 10000, true);
// Platform mode: per user one machine, SESSIONS_PER_USER sessions and APPS_PER_USER apps;
// each app calls every RPC_INTERVAL seconds.
export const PLATFORM = {
  sessions: num('SESSIONS_PER_USER', 3, 1, 100, true),
  apps: num('APPS_PER_USER', 3, 1, 100, true),
  rpcS: num('RPC_INTERVAL', 2, 0.05, 3600),
  rampS: num('PLATFORM_RAMP', 20, 1, 3600, true),
  holdS: num('PLATFORM_HOLD', 100, 1, 86400, true),
};
export const SOCKETS_PER_USER = 1 + PLATFORM.sessions + PLATFORM.apps;

// Platform mode: SWITCH="hash:shards=auto@30;single@75" switches the shard policy at run
// time (PUT /admin/policy with ADMIN_TOKEN) at those seconds of the run, each draining over
// SWITCH_DRAIN seconds (20). `default@S` goes back to the config's policy (DELETE).
export const SWITCH_DRAIN_S = num('SWITCH_DRAIN', 20, 1, 3600, true);
export const SWITCHES = (__ENV.SWITCH || '').split(';').map((x) => x.trim()).filter(Boolean).map((x) => {
  const at = x.lastIndexOf('@');
  const policy = at > 0 ? x.slice(0, at).trim() : '';
  const s = at > 0 ? Number(x.slice(at + 1)) : NaN;
  if (!policy || !Number.isFinite(s) || s < 0) {
    throw new Error(`SWITCH entry "${x}" is not <policy>@<seconds> (entries separated by ";")`);
  }
  return { policy, atS: s };
});
if (SWITCHES.length && !IS_PLATFORM) throw new Error('SWITCH applies to TEST_MODE=platform only');
if (SWITCHES.length && !(__ENV.ADMIN_TOKEN || '')) throw new Error('SWITCH needs ADMIN_TOKEN');

// The users' [id, token] rows in numeric order of their ids ("load-u-0", "load-u-1", ...),
// the first USERS of the file: parsed once and shared by every VU (k6's SharedArray), so a
// thousand users cost a VU only the users it touches (userAt caches those).
const TOKEN_ROWS = USERS ? new SharedArray('tokens', () => {
  const tokens = JSON.parse(open(__ENV.TOKENS_FILE));
  const ids = Object.keys(tokens).sort((a, b) => trailingNumber(a) - trailingNumber(b) || a.localeCompare(b));
  if (ids.length < USERS) throw new Error(`TOKENS_FILE has ${ids.length} tokens, USERS=${USERS} needs as many`);
  return ids.slice(0, USERS).map((id) => [id, tokens[id]]);
}) : [];
export const USER_COUNT = USERS || 1;
const userCache = new Map();

// User n (taken modulo the user count): {id, tier, token}; tier '' = leave it to the gateway.
export function userAt(n) {
  const i = ((n % USER_COUNT) + USER_COUNT) % USER_COUNT;
  let u = userCache.get(i);
  if (u) return u;
  if (USERS) {
    const [id, token] = TOKEN_ROWS[i];
    // Deterministic tier per user: the first users take the first tier's share, and so on.
    const tier = pick(TIER_MIX, (i + 0.5) / USERS);
    u = { id, tier: tier === 'default' ? '' : tier, token };
  } else {
    u = { id: claimOf(AUTH_TOKEN, 'user') || 'token-user', tier: __ENV.LOAD_TIER || '', token: AUTH_TOKEN };
  }
  userCache.set(i, u);
  return u;
}

function trailingNumber(s) {
  const m = /(\d+)$/.exec(s);
  return m ? Number(m[1]) : Infinity;
}

// For labels only; the gateway verifies the token.
function claimOf(token, claim) {
  try {
    return JSON.parse(encoding.b64decode(token.split('.')[1], 'rawurl', 's'))[claim];
  } catch (e) {
    return undefined;
  }
}

// VU n (1-based) belongs to user (n-1) mod users.
export function userOf(vu) {
  return userAt(vu - 1);
}

export function socketUrl(user, type, sessionId, machineId, correlationId = '') {
  let query = `token=${encodeURIComponent(user.token)}`;
  if (type !== 'user-scoped') query += `&clientType=${type}`;
  if (sessionId) query += `&sessionId=${encodeURIComponent(sessionId)}`;
  if (machineId) query += `&machineId=${encodeURIComponent(machineId)}`;
  if (correlationId) query += `&correlationId=${encodeURIComponent(correlationId)}`;
  return `${WS_BASE}/v1/updates?${query}`;
}

// ---------------------------------------------------------------------------
// Stages of the socket scenario (steady, churn, platform)

export function durS(d) {
  const m = /^(\d+)(s|m)$/.exec(d);
  return Number(m[1]) * (m[2] === 'm' ? 60 : 1);
}
const PLATFORM_PEAK = USER_COUNT * SOCKETS_PER_USER;

// SHAPE=fleet: every user has an app socket (user-scoped) and every other user (the even
// ones) a CLI session socket too (session-scoped, sessionId `fs-<user>`): USERS + ceil(USERS/2)
// clients. Each holds its socket FLEET_HOLD seconds (random in MIN-MAX), closes it and comes
// back after FLEET_PAUSE seconds; ARRIVAL=open starts CONNECT_RATE sockets per second instead.
function range(name, dflt) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return dflt;
  const m = /^([0-9]*\.?[0-9]+)-([0-9]*\.?[0-9]+)$/.exec(raw);
  if (!m || Number(m[1]) > Number(m[2]) || Number(m[2]) > 3600) {
    throw new Error(`${name} must be MIN-MAX seconds (e.g. ${dflt.join('-')}), MIN <= MAX <= 3600, got "${raw}"`);
  }
  return [Number(m[1]), Number(m[2])];
}
const HOLD_S = range('FLEET_HOLD', [3, 10]);
const PAUSE_S = range('FLEET_PAUSE', [0.5, 2]);
const FLEET_CLIENTS = USER_COUNT + Math.ceil(USER_COUNT / 2);
const MEAN_CYCLE_S = (HOLD_S[0] + HOLD_S[1]) / 2 + (PAUSE_S[0] + PAUSE_S[1]) / 2;
export const FLEET = {
  clients: FLEET_CLIENTS,
  holdS: HOLD_S,
  pauseS: PAUSE_S,
  // Open loop: by default the closed loop's steady-state rate (every client once per mean
  // cycle), so both loops ask for about as many connects.
  connectRate: num('CONNECT_RATE', Math.round((FLEET_CLIENTS / MEAN_CYCLE_S) * 100) / 100, 0.01, 100000),
};

// The mode's stages, each VU target scaled from the mode's peak to the fleet's clients, so the
// fleet ramps (or spikes) the way the mode does, over the mode's duration, or stretched to
// FLEET_DURATION seconds (every stage in proportion, whole seconds).
const FLEET_DURATION_S = num('FLEET_DURATION', 0, 10, 86400, true);
if (FLEET_DURATION_S && !IS_FLEET) throw new Error(`FLEET_DURATION applies to SHAPE=fleet only, not SHAPE=${SHAPE}`);

function fleetStages() {
  const peak = Math.max(...MODE.stages.map(([, t]) => t));
  const modeS = MODE.stages.reduce((sum, [d]) => sum + durS(d), 0);
  const scale = FLEET_DURATION_S ? FLEET_DURATION_S / modeS : 1;
  const out = MODE.stages.map(([d, t]) => [Math.max(1, Math.round(durS(d) * scale)),
    t > 0 ? Math.max(1, Math.round((t / peak) * FLEET_CLIENTS)) : 0]);
  if (FLEET_DURATION_S) {
    // Rounding may leave a few seconds over or under: the longest stage absorbs them.
    const longest = out.reduce((i, x, k) => (x[0] > out[i][0] ? k : i), 0);
    out[longest][0] += FLEET_DURATION_S - out.reduce((sum, [d]) => sum + d, 0);
  }
  return out.map(([d, t]) => [`${d}s`, t]);
}

function stages() {
  if (IS_PLATFORM) return [[`${PLATFORM.rampS}s`, PLATFORM_PEAK], [`${PLATFORM.holdS}s`, PLATFORM_PEAK]];
  if (IS_FLEET) return fleetStages();
  return MODE.stages;
}
export const STAGES = stages();
export const TOTAL_S = STAGES.reduce((s, [d]) => s + durS(d), 0);

// Open loop: how many VUs k6 starts with for CONNECT_RATE sockets of a mean hold (plus a
// second to connect), and how many it may add when connects get slow (a longest hold plus
// 5 s each); beyond that it drops iterations (counted in dropped_iterations).
export const OPEN_VUS = {
  pre: Math.max(2, Math.ceil(FLEET.connectRate * ((HOLD_S[0] + HOLD_S[1]) / 2 + 1))),
  max: Math.max(10, Math.ceil(FLEET.connectRate * (HOLD_S[1] + 5))),
};

function peakVus() {
  if (SHAPE === 'http') return HTTP_VUS;
  if (IS_FLEET && ARRIVAL === 'open') return OPEN_VUS.max;
  return Math.max(...STAGES.map(([, t]) => t));
}
export const PEAK_VUS = peakVus();

// ---------------------------------------------------------------------------
// Thresholds per mode and shape. k6 exits 99 when any fails.

function connectionThresholds(t) {
  return {
    ws_connection_time: [`p(95)<${t.connectP95}`],
    ws_connection_errors: [t.errors],
    ws_connection_success: [t.success], // standard: "All attempted"; extreme: "80%+"
    do_response_time: [`p(95)<${t.statsP95}`],
    do_connection_rejection_rate: [t.rejection],
  };
}

// Ping and HTTP broadcast delivery, with "something was measured" guards: a Trend threshold
// over zero samples would pass, so pongs and broadcasts must actually have come back.
function socketThresholds(t) {
  const delivery = [`p(95)<${t.deliveryP95}`];
  return {
    ws_message_latency: [`p(95)<${t.pingP95}`],
    ws_broadcast_delivery_time: delivery,
    'ws_broadcast_delivery_time{via:http}': delivery,
    ws_pongs_received: ['count>0'],
    'ws_broadcasts_received{via:http}': ['count>0'],
  };
}

// The platform's HTTP-only threshold on every HTTP request; each operation is listed with an
// always-true threshold only so that k6 reports it apart in the summary.
function httpThresholds(t) {
  const out = {
    http_req_duration: [`p(95)<${HTTP_P95_MS}`],
    http_req_failed: ['rate<0.05'],
    do_response_time: [`p(95)<${t.statsP95}`],
    iterations: ['count>0'],
  };
  for (const op of HTTP_OPS) out[`http_op_duration{op:${op}}`] = ['max>=0'];
  return out;
}

// RPC round trips are message round trips (the ping target); forwarding is a one-way delivery
// (the broadcast target). Drops and misdeliveries must not happen at all.
function platformThresholds(t) {
  const rtt = [`p(95)<${t.pingP95}`];
  const fwd = [`p(95)<${t.deliveryP95}`];
  return Object.assign(connectionThresholds(t), {
    rpc_round_trip: rtt,
    'rpc_round_trip{kind:machine}': rtt,
    'rpc_round_trip{kind:session}': rtt,
    'rpc_round_trip{placement:same}': rtt,
    'rpc_round_trip{placement:cross}': rtt,
    forward_delivery_time: fwd,
    'forward_delivery_time{kind:session}': fwd,
    'forward_delivery_time{kind:machine}': fwd,
    frames_dropped: ['count==0'],
    frames_misdelivered: ['count==0'],
    presence_flicker: ['count==0'],
    'deliveries_lost{kind:mobile}': ['count==0'],
    rpc_acks: ['count>0'],
    forwards_received: ['count>0'],
  });
}

export function thresholds() {
  const t = TARGETS[MODE.set];
  if (IS_PLATFORM) return platformThresholds(t);
  if (SHAPE === 'http') return httpThresholds(t);
  // steady, churn and fleet: the sockets' targets.
  const out = Object.assign(connectionThresholds(t), socketThresholds(t));
  if (SHAPE === 'steady') {
    // Client broadcast frames are the steady shape's: both paths must meet the target apart.
    out['ws_broadcast_delivery_time{via:client}'] = out.ws_broadcast_delivery_time;
    out.ws_broadcasts_received = ['count>0'];
  }
  // Smoke runs in CI: there, any connection error is a failure.
  if (MODE_NAME === 'smoke') out.ws_connection_errors = ['count==0'];
  return out;
}
