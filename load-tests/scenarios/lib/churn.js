// The platform's own k6 scenarios, as its load-tests run them:
//   SHAPE=churn  its websocket-performance.js loop: every iteration a short-lived socket, then
//                broadcasts and stats from some VUs;
//   SHAPE=http   its HTTP-only websocket.js loop: stats, four broadcasts, two refused upgrades.

import exec from 'k6/execution';
import { sleep } from 'k6';
import { CLIENT_MIX, MODE, pick, socketUrl, spread, userOf } from './config.js';
import { getStats, postBroadcast, refusedUpgrades } from './http.js';
import { pinger, recordBroadcast, runSocket } from './socket.js';

// The loop's timings: a ping at open, three more at once 2 s later, close at 5 s, 0.5 s
// between iterations.
const BURST_AT_MS = 2000;
const BURST_PINGS = 3;
const HOLD_MS = 5000;
const ITERATION_PAUSE_S = 0.5;

// The platform loop's own ids: new per iteration, so its filtered broadcasts name a socket
// that has just closed.
function churnIdentity(vu) {
  const user = userOf(vu);
  const type = pick(CLIENT_MIX, spread(vu));
  const sessionId = `perf_session_${vu}_${Date.now()}`;
  const machineId = `perf_machine_${vu}_${Date.now()}`;
  return {
    user, type, sessionId, machineId,
    url: socketUrl(user, type, type === 'session-scoped' ? sessionId : '', type === 'machine-scoped' ? machineId : ''),
  };
}

function churnClient() {
  let p;
  return {
    onOpen(c) {
      p = pinger(c.socket);
      p.ping();
      c.socket.setTimeout(() => { for (let i = 0; i < BURST_PINGS; i++) p.ping(); }, BURST_AT_MS);
      c.socket.setTimeout(c.finish, HOLD_MS);
    },
    onFrame(c, f, now) {
      if (f.event === 'pong') p.pong(now);
      else recordBroadcast(f, now);
    },
  };
}

// A broadcast message whose payload carries its send time (the receivers time the delivery).
function stamped(type, payload) {
  const now = Date.now();
  return { type, payload: Object.assign(payload, { timestamp: now }), timestamp: now };
}

// The platform loop's broadcast VUs: one in ten unfiltered, one in twenty the three filtered.
function churnBroadcasts(vu, me) {
  if (vu % 10 === 1) {
    const now = Date.now();
    postBroadcast(me.user, { type: 'broadcast', payload: { testId: `conn_${vu}_${now}`, sentAt: now, source: 'perf-test' }, timestamp: now },
      null, 'broadcast_all');
  }
  if (vu % 20 === 1) {
    postBroadcast(me.user, stamped('filtered-test', { filterType: 'user-scoped-only' }), { type: 'user-scoped-only' }, 'broadcast_user_scoped');
    postBroadcast(me.user, stamped('session-specific', { sessionId: me.sessionId }), { type: 'session', sessionId: me.sessionId }, 'broadcast_session');
    postBroadcast(me.user, stamped('machine-specific', { machineId: me.machineId }), { type: 'machine', machineId: me.machineId }, 'broadcast_machine');
  }
}

export function churnIteration() {
  const vu = exec.vu.idInTest;
  const me = churnIdentity(vu);
  // No deadline of its own: the client closes at HOLD_MS; the scenario end is far later.
  runSocket(me, Date.now() + 10 * HOLD_MS, null, churnClient());
  churnBroadcasts(vu, me);
  // Stats from every second VU in the extreme modes, every fifth otherwise.
  if (vu % (MODE.set === 'extreme' ? 2 : 5) === 0) getStats(me.user);
  sleep(ITERATION_PAUSE_S);
}

const HTTP_PAUSE_S = 0.3;

export function httpIteration() {
  const vu = exec.vu.idInTest;
  const user = userOf(vu);
  const now = Date.now();
  const sessionId = `session_${vu}_${now}`;
  const machineId = `machine_${vu}_${now}`;
  getStats(user);
  postBroadcast(user, stamped('load-test', { testId: `broadcast_${vu}_${now}` }), null, 'broadcast_all');
  postBroadcast(user, stamped('filtered-test', { data: 'test' }), { type: 'user-scoped-only' }, 'broadcast_user_scoped');
  postBroadcast(user, stamped('session-specific', { sessionId }), { type: 'session', sessionId }, 'broadcast_session');
  postBroadcast(user, stamped('machine-specific', { machineId }), { type: 'machine', machineId }, 'broadcast_machine');
  refusedUpgrades(user);
  sleep(HTTP_PAUSE_S);
}
