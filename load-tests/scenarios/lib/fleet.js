// SHAPE=fleet: the production shape. Many small users (USERS), each with an app socket
// (user-scoped) and every other user a CLI session socket too (session-scoped, a stable
// `fs-<user>` session id). A socket is held FLEET_HOLD seconds (random, default 3-10), pings
// every PING_INTERVAL (2 s) with the exact `{"event":"ping"}` and times the pong, records the
// broadcasts it receives, closes (1000) and is back after FLEET_PAUSE seconds (0.5-2).
//   ARRIVAL=closed (default)  one VU per client, looping over the mode's stages scaled to the
//                             fleet's clients: the load follows how fast the target answers.
//   ARRIVAL=open              CONNECT_RATE sockets per second (constant-arrival-rate), each
//                             iteration one socket of the next client in turn: both targets
//                             get the same connects whatever their speed.
// Beside them, at constant arrival rates, each user calls GET /v1/websocket/stats every
// STATS_INTERVAL (10 s) and broadcasts to itself every BROADCAST_INTERVAL (15 s), the users
// taken in turn; the broadcast is timed by its receipt on the user's own open sockets.

import exec from 'k6/execution';
import { FLEET, PING_S, TOTAL_S, socketUrl, userAt } from './config.js';
import { getStats, postBroadcast } from './http.js';
import { END_MARGIN_MS, HTTP_BROADCAST_EVENT, pinger, recordBroadcast, runSocket, sleepUntil } from './socket.js';

const MAX_BACKOFF_MS = 10000;

// Client k (0 <= k < FLEET.clients) in the order app u0, session u0, app u1, app u2,
// session u2, app u3, ...: every pair of users gives three clients, so any prefix of the
// clients (a ramp) keeps the fleet's mix.
export function fleetIdentity(k) {
  const i = ((k % FLEET.clients) + FLEET.clients) % FLEET.clients;
  const pair = Math.floor(i / 3);
  const r = i % 3;
  const user = userAt(r === 2 ? 2 * pair + 1 : 2 * pair);
  if (r === 1) {
    const sessionId = `fs-${user.id}`;
    return { user, type: 'session-scoped', sessionId, url: socketUrl(user, 'session-scoped', sessionId, '') };
  }
  return { user, type: 'user-scoped', url: socketUrl(user, 'user-scoped', '', '') };
}

function between([lo, hi]) {
  return lo + Math.random() * (hi - lo);
}

function fleetClient() {
  let p;
  return {
    onConnected(c) {
      p = pinger(c.socket);
      p.ping();
      c.socket.setInterval(p.ping, PING_S * 1000);
    },
    onFrame(c, f, now) {
      if (f.event === 'pong') p.pong(now);
      else recordBroadcast(f, now);
    },
  };
}

// When the stages end: sockets close END_MARGIN_MS before.
function runEnd() {
  return exec.scenario.startTime + TOTAL_S * 1000;
}

// Closed loop: one VU is one client, for the whole run (each VU runs one long iteration, so
// the scenario's iteration number is a dense client index; VU ids are not, the HTTP
// scenarios take some).
export function fleetClosed() {
  const me = fleetIdentity(exec.scenario.iterationInTest);
  const end = runEnd();
  const last = end - END_MARGIN_MS;
  let pending = null;
  let failures = 0;
  while (Date.now() < last - 1000) {
    const r = runSocket(me, Math.min(Date.now() + between(FLEET.holdS) * 1000, last), pending, fleetClient());
    pending = null;
    if (r.ended === 'deadline') {
      failures = 0;
      sleepUntil(last, between(FLEET.pauseS) * 1000);
    } else if (r.ended === 'reconnect' || r.ended === 'dropped') {
      failures = 0;
      pending = { since: r.since, reason: r.ended === 'reconnect' ? 'rotation' : 'drop' };
      sleepUntil(last, r.retryAfterMs);
    } else {
      // Rejected or failed: honour Retry-After, exponential backoff with full jitter.
      failures += 1;
      const base = Math.min(MAX_BACKOFF_MS, Math.max(r.retryAfterMs, 500) * 2 ** (failures - 1));
      sleepUntil(last, base / 2 + Math.random() * base / 2);
    }
  }
  // Idle out the rest so this VU does not start another iteration.
  sleepUntil(end, end - Date.now());
}

// Open loop: one iteration is one socket of the next client in turn. A socket whose hold
// would outlast the run is cut at the run's end; none starts in the last second.
export function fleetOpen() {
  const last = runEnd() - END_MARGIN_MS;
  if (Date.now() > last - 1000) return;
  const me = fleetIdentity(exec.scenario.iterationInTest);
  runSocket(me, Math.min(Date.now() + between(FLEET.holdS) * 1000, last), null, fleetClient());
}

// Stats and self-broadcasts: iteration n is user n mod USERS. Every call asks for a fresh
// connection: with many VUs sharing the calls, one VU may idle past `wrangler dev`'s 5 s
// keep-alive and hang on a pooled connection (lib/http.js).
export function fleetStats() {
  getStats(userAt(exec.scenario.iterationInTest), true);
}

export function fleetBroadcast() {
  const n = exec.scenario.iterationInTest;
  const now = Date.now();
  postBroadcast(userAt(n), { type: HTTP_BROADCAST_EVENT, payload: { sentAt: now, seq: n }, timestamp: now },
    { type: 'all' }, 'broadcast_all', true);
}
