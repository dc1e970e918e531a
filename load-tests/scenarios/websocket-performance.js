// WebSocket load scenarios for the edge gateway (the capacity guide's HAP-263 / HAP-894 modes,
// the platform's own load shapes, and the platform's real traffic).
//
//   k6 run -e TEST_MODE=smoke -e AUTH_TOKEN=<platform token> load-tests/scenarios/websocket-performance.js
//   k6 run -e TEST_MODE=extreme -e SHAPE=churn -e AUTH_TOKEN=<token> load-tests/scenarios/websocket-performance.js
//   k6 run -e TEST_MODE=platform -e USERS=20 -e TOKENS_FILE=<json> -e ADMIN_TOKEN=<admin> \
//          load-tests/scenarios/websocket-performance.js
//
// Usually started through scripts/load.sh (one run) or scripts/compare.sh (side by side).
// What runs (lib/ holds each part):
//   SHAPE=steady (default)  sockets: one VU = one client holding one WebSocket for the whole
//                run (pings, broadcasts received, client broadcasts, reconnects, backoff);
//                broadcaster: one VU POSTing broadcasts; stats: one VU polling stats.
//   SHAPE=churn  the platform's k6 loop: each iteration a 5-second socket, then broadcasts and
//                stats from some VUs (lib/churn.js).
//   SHAPE=http   the platform's HTTP-only loop: HTTP_VUS VUs, no sockets (lib/churn.js).
//   SHAPE=fleet  the production shape: USERS users' app and CLI sockets coming and going
//                (3-10 s each), pings, and each user's stats and self-broadcasts now and
//                then; ARRIVAL=open starts sockets at CONNECT_RATE per second (lib/fleet.js).
//   TEST_MODE=platform  machines, sessions and apps of USERS users: RPC and forwarding,
//                with the stats poller (lib/platform.js).

import http from 'k6/http';
import exec from 'k6/execution';
import {
  ADMIN_TOKEN, ARRIVAL, BASE_URL, BROADCAST_S, FLEET, HTTP_VUS, IS_FLEET, IS_PLATFORM, MODE, MODE_NAME,
  OPEN_VUS, PEAK_VUS, PING_S, PLATFORM, SHAPE, SOCKETS_PER_USER, STAGES, STATS_S, TIER_MIX_RAW, TOTAL_S,
  SWITCHES, USER_COUNT, thresholds, userAt,
} from './lib/config.js';
import { RAMP_DOWN_GRACE_MS } from './lib/socket.js';

export { steadySockets, broadcaster, statsPoller } from './lib/steady.js';
export { churnIteration, httpIteration } from './lib/churn.js';
export { platformClient, policySwitcher } from './lib/platform.js';
export { fleetClosed, fleetOpen, fleetStats, fleetBroadcast } from './lib/fleet.js';

// ---------------------------------------------------------------------------
// Options

// The VUs that hold or churn sockets, over the mode's stages.
function socketScenario(execName) {
  return {
    executor: 'ramping-vus',
    exec: execName,
    startVUs: 0,
    stages: STAGES.map(([duration, target]) => ({ duration, target })),
    // Ramp-downs (spikeExtreme) stop the surplus VUs; their sockets close with them.
    gracefulRampDown: `${RAMP_DOWN_GRACE_MS / 1000}s`,
    gracefulStop: '10s',
  };
}

// A single VU beside the sockets for the whole run, starting a little later.
function sideScenario(execName, startS) {
  return {
    executor: 'constant-vus', exec: execName, vus: 1, startTime: `${startS}s`,
    duration: `${Math.max(1, TOTAL_S - 2 * startS)}s`, gracefulStop: '5s',
  };
}

// `perS` iterations per second for about `durationS` seconds, from `startS` on (k6 wants a
// whole number per time unit: per 100 s keeps two decimals of the rate).
function arrivalScenario(execName, perS, startS, durationS, vus, gracefulStopS) {
  return {
    executor: 'constant-arrival-rate', exec: execName, rate: Math.max(1, Math.round(perS * 100)), timeUnit: '100s',
    startTime: `${startS}s`, duration: `${Math.max(1, durationS)}s`, preAllocatedVUs: vus.pre, maxVUs: vus.max,
    gracefulStop: `${gracefulStopS}s`,
  };
}

// HTTP calls that each take well under a second: VUs for half a second of calls to start
// with, up to five seconds' worth.
function httpVus(perS) {
  return { pre: Math.max(2, Math.ceil(perS / 2)), max: Math.max(10, Math.ceil(perS * 5)) };
}

function fleetScenarios() {
  const sockets = ARRIVAL === 'open'
    ? arrivalScenario('fleetOpen', FLEET.connectRate, 0, TOTAL_S, OPEN_VUS, FLEET.holdS[1] + 5)
    : socketScenario('fleetClosed');
  // Side calls from 2 s (the first sockets are up) to 2 s before the end.
  const statsRate = USER_COUNT / STATS_S;
  const bcastRate = USER_COUNT / BROADCAST_S;
  return {
    sockets,
    stats: arrivalScenario('fleetStats', statsRate, 2, TOTAL_S - 4, httpVus(statsRate), 10),
    broadcasts: arrivalScenario('fleetBroadcast', bcastRate, 2, TOTAL_S - 4, httpVus(bcastRate), 10),
  };
}

function scenarios() {
  if (IS_PLATFORM) {
    const out = { platform: socketScenario('platformClient'), stats: sideScenario('statsPoller', 1) };
    if (SWITCHES.length) {
      out.switcher = { executor: 'per-vu-iterations', exec: 'policySwitcher', vus: 1, iterations: 1, maxDuration: `${TOTAL_S}s` };
    }
    return out;
  }
  if (IS_FLEET) return fleetScenarios();
  if (SHAPE === 'churn') return { churn: socketScenario('churnIteration') };
  if (SHAPE === 'http') {
    return { http: { executor: 'constant-vus', exec: 'httpIteration', vus: HTTP_VUS, duration: `${TOTAL_S}s`, gracefulStop: '5s' } };
  }
  return {
    sockets: socketScenario('steadySockets'),
    broadcaster: sideScenario('broadcaster', 2), // let the first sockets connect
    stats: sideScenario('statsPoller', 1),
  };
}

export const options = {
  scenarios: scenarios(),
  thresholds: thresholds(),
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)', 'count'],
  // The test is about sockets; k6's own HTTP metrics carry no tags we need per URL.
  systemTags: ['status', 'method', 'scenario', 'error_code'],
};

// ---------------------------------------------------------------------------
// Setup: the gateway must be up before 750 clients hit it.

function abortUnless(ok, why) {
  if (!ok) exec.test.abort(why);
}

export function setup() {
  const r = http.get(`${BASE_URL}/health`, { timeout: '10s' });
  abortUnless(r.status === 200, `${BASE_URL}/health answered ${r.status} ${String(r.body).slice(0, 200)}: is the gateway running?`);
  const policy = (() => { try { return JSON.parse(r.body).policy; } catch (e) { return '?'; } })();
  // The operator's tiers for the users, before any of them connects (20 at a time).
  const tiered = [];
  for (let i = 0; i < USER_COUNT; i++) if (userAt(i).tier) tiered.push(userAt(i));
  abortUnless(!tiered.length || ADMIN_TOKEN, `setting tiers (${TIER_MIX_RAW}) needs ADMIN_TOKEN`);
  for (let i = 0; i < tiered.length; i += 20) {
    const batch = tiered.slice(i, i + 20);
    const rs = http.batch(batch.map((u) => ['PUT', `${BASE_URL}/admin/users/${u.id}/tier`, JSON.stringify({ tier: u.tier }),
      { headers: { Authorization: `Bearer ${ADMIN_TOKEN}`, 'Content-Type': 'application/json' }, timeout: '10s' }]));
    rs.forEach((t, k) => abortUnless(t.status === 200,
      `could not set ${batch[k].id}'s tier to ${batch[k].tier}: ${t.status} ${String(t.body).slice(0, 300)}`));
  }
  // One token per tier must be accepted, or every connect would fail the same way (expired
  // token, a secret that does not match).
  const seen = {};
  for (let i = 0; i < USER_COUNT; i++) {
    const u = userAt(i);
    if (seen[u.tier]) continue;
    seen[u.tier] = true;
    const s = http.get(`${BASE_URL}/v1/websocket/stats`, { headers: { Authorization: `Bearer ${u.token}` }, timeout: '10s' });
    abortUnless(s.status === 200, `the gateway refuses ${u.id}'s token (tier ${u.tier || 'default'}): ${s.status} ${String(s.body).slice(0, 300)}`);
  }
  const who = USER_COUNT === 1 ? `${userAt(0).id}, tier ${userAt(0).tier || 'default'}` : TIER_MIX_RAW;
  let traffic = '';
  if (IS_PLATFORM) {
    traffic = ` sockets/user=${SOCKETS_PER_USER} (1 machine, ${PLATFORM.sessions} sessions, ${PLATFORM.apps} apps) rpcEvery=${PLATFORM.rpcS}s`;
  } else if (IS_FLEET) {
    traffic = ` clients=${FLEET.clients} arrival=${ARRIVAL}` + (ARRIVAL === 'open' ? ` connectRate=${FLEET.connectRate}/s` : '') +
      ` hold=${FLEET.holdS.join('-')}s pause=${FLEET.pauseS.join('-')}s ping=${PING_S}s statsEvery=${STATS_S}s broadcastEvery=${BROADCAST_S}s`;
  }
  console.log(`mode=${MODE_NAME} shape=${SHAPE} (${MODE.set} thresholds) peakVUs=${PEAK_VUS} duration=${TOTAL_S}s ` +
    `target=${BASE_URL} policy=${policy} users=${USER_COUNT} (${who})${traffic}`);
  return {};
}
