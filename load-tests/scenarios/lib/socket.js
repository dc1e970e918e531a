// One client socket from connect to close, the connect/close accounting every shape shares,
// pings, and broadcast receipt.
//
// Sockets use the classic `k6/ws` module, not `k6/experimental/websockets`: the async API
// reports a refused upgrade only as "websocket: bad handshake", without the HTTP status,
// so a 429 (tier limit) could not be told from a 503 (shard full) or a 401. `k6/ws` returns
// status, headers (Retry-After) and body, and still lets a VU hold its socket for the
// whole stage with socket timers.

import ws from 'k6/ws';
import exec from 'k6/execution';
import { sleep } from 'k6';
import { CONNECT_TIMEOUT_MS, STAGES, TOTAL_S, durS } from './config.js';
import * as m from './metrics.js';

const PONG_TIMEOUT_MS = 10000;
const MAX_BACKOFF_MS = 10000;
// Sockets close themselves this long before the stages end, so the run ends on clean
// closes instead of k6 interrupting VUs.
export const END_MARGIN_MS = 1500;
// How long k6 lets a VU it is removing finish before interrupting it (ramp-downs).
export const RAMP_DOWN_GRACE_MS = 5000;
export const HTTP_BROADCAST_EVENT = 'load-broadcast';
export const CLIENT_BROADCAST_KIND = 'load-client';
// The platform loop's HTTP broadcasts (churn shape): event type -> the payload's clock field
// and the filter it was sent with.
const CHURN_BROADCASTS = {
  broadcast: ['sentAt', 'all'],
  'filtered-test': ['timestamp', 'user-scoped-only'],
  'session-specific': ['timestamp', 'session'],
  'machine-specific': ['timestamp', 'machine'],
};

// Runs one socket. `client` gives the behaviour, each hook optional:
//   onOpen(c)             right after the upgrade (before the `connected` frame)
//   onConnected(c, f, now) after the `connected` frame
//   onFrame(c, f, now)     every later frame but `reconnect` and `error`
//   onClose(c, st)         when the socket closed
// c = {socket, deadline, finish}: finish() closes the socket as a normal end. The socket is
// finished at `deadline` at the latest. Returns how it ended ({ended, retryAfterMs, since}).
export function runSocket(me, deadline, pending, client) {
  const start = Date.now();
  const st = { connectedAt: 0, ended: '', retryAfterMs: 0, closeCode: 0, closedAt: 0, hintAt: 0 };
  let res;
  try {
    res = ws.connect(me.url, { tags: { client_type: me.type } }, (socket) => {
      const c = { socket, deadline, finish: () => { st.ended = 'deadline'; socket.close(1000); } };
      if (client.onOpen) socket.on('open', () => client.onOpen(c));
      socket.setTimeout(() => {
        if (!st.connectedAt) {
          st.ended = 'no_connected_frame';
          socket.close();
        }
      }, CONNECT_TIMEOUT_MS);
      socket.on('message', (raw) => {
        const now = Date.now();
        const f = parseFrame(raw);
        if (!f) return;
        if (f.event === 'connected' && !st.connectedAt) {
          st.connectedAt = now;
          recordConnected(now - start, pending, now);
          socket.setTimeout(c.finish, Math.max(0, deadline - now));
          if (client.onConnected) client.onConnected(c, f, now);
        } else if (f.event === 'reconnect') {
          // Rotation drain: the server closes with 1012 right after; come back after the hint.
          st.ended = 'reconnect';
          st.hintAt = now;
          st.retryAfterMs = (f.data && Number(f.data.retryAfterMs)) || 0;
          st.moveReason = (f.data && f.data.reason) || 'rotation'; // rotation or policy
        } else if (f.event === 'error') {
          m.serverErrorFrames.add(1, { code: (f.data && f.data.code) || 'unknown' });
        } else if (client.onFrame) {
          client.onFrame(c, f, now);
        }
      });
      socket.on('close', (code) => {
        st.closeCode = code;
        st.closedAt = Date.now();
        if (client.onClose) client.onClose(c, st);
      });
    });
  } catch (e) {
    res = { status: 0, error: String(e), headers: {}, body: '' };
  }
  if (!res || res.status !== 101) return refused(res);
  return ended(st);
}

function parseFrame(raw) {
  try {
    return JSON.parse(raw);
  } catch (e) {
    m.serverErrorFrames.add(1, { code: 'unparsable' });
    return null;
  }
}

function recordConnected(ms, pending, now) {
  m.socketsOpened.add(1);
  m.connectionTime.add(ms);
  m.connectionSuccess.add(true);
  m.doRejectionRate.add(false);
  if (pending) {
    m.reconnectionTime.add(now - pending.since, { reason: pending.reason });
    m.reconnects.add(1, { reason: pending.reason });
  }
}

// An upgrade that did not answer 101: a rejection (429/503) or another failure.
function refused(res) {
  const status = res ? res.status : 0;
  const rejected = status === 429 || status === 503;
  let code = '';
  try { code = JSON.parse(res.body).error || ''; } catch (e) { /* not JSON */ }
  m.connectionSuccess.add(false);
  m.doRejectionRate.add(rejected);
  m.connectionErrors.add(1, { kind: rejected ? 'rejected' : 'failed', status: String(status) });
  if (rejected) m.doConnectionsRejected.add(1, { status: String(status), code });
  const ra = res && res.headers ? Number(res.headers['Retry-After'] || res.headers['retry-after']) : NaN;
  return { ended: rejected ? 'rejected' : 'failed', retryAfterMs: Number.isFinite(ra) ? ra * 1000 : 1000 };
}

// An upgraded socket that closed: a normal end, a rotation, or a drop by the server.
function ended(st) {
  if (!st.connectedAt) {
    // Upgraded but never told who we are: the gateway did not finish the connect.
    m.connectionSuccess.add(false);
    m.doRejectionRate.add(false);
    m.connectionErrors.add(1, { kind: 'no_connected_frame', status: '101' });
    return { ended: 'failed', retryAfterMs: 1000 };
  }
  m.socketsClosed.add(1);
  if (st.ended === 'deadline') return { ended: 'deadline' };
  if (st.closeCode === 1001 && inRampDown(st.closedAt || Date.now())) return { ended: 'deadline' };
  if (st.ended === 'reconnect' || st.closeCode === 1012) {
    // A 1012 without the hint frame (end of the drain window) is still a rotation.
    return {
      ended: 'reconnect', since: st.hintAt || st.closedAt || Date.now(), retryAfterMs: st.retryAfterMs,
      reason: st.moveReason || 'rotation',
    };
  }
  // The server (or the network) closed a socket nobody asked to close.
  m.connectionErrors.add(1, { kind: 'dropped', status: String(st.closeCode || 0) });
  return { ended: 'dropped', since: st.closedAt || Date.now(), retryAfterMs: 1000 };
}

// True while k6 is stopping surplus VUs: during a stage whose target is below the previous
// one, and for the graceful ramp-down after it. k6 closes an interrupted VU's socket with
// 1001 itself; that is the test shrinking, not the server dropping a client.
export function inRampDown(now) {
  let t = exec.scenario.startTime;
  let prev = 0;
  for (const [d, target] of STAGES) {
    const end = t + durS(d) * 1000;
    if (target < prev && now >= t && now < end + RAMP_DOWN_GRACE_MS) return true;
    prev = target;
    t = end;
  }
  return false;
}

export function sleepUntil(deadlineMs, ms) {
  const s = Math.min(ms, deadlineMs - Date.now()) / 1000;
  if (s > 0) sleep(s);
}

// A VU that holds one socket until the stages end: reconnects after rotations and drops,
// retries rejected connects like a well-behaved client. makeClient() gives each socket its
// hooks (see runSocket); onDone runs once, when the VU is done with sockets.
export function holdSocket(me, makeClient, onDone = () => {}) {
  const end = exec.scenario.startTime + TOTAL_S * 1000;
  const deadline = end - END_MARGIN_MS;
  if (Date.now() >= deadline - 250) {
    // Too late for a new socket: idle past the stages' end (k6 stops the iteration there)
    // instead of spinning through empty iterations.
    sleep(Math.max(0, end - Date.now()) / 1000 + 1);
    return;
  }
  let pending = null; // {since, reason} while a reconnect is in progress
  let failures = 0;
  while (Date.now() < deadline - 250) {
    const r = runSocket(me, deadline, pending, makeClient());
    if (r.ended === 'deadline') break;
    if (r.ended === 'reconnect' || r.ended === 'dropped') {
      failures = 0;
      pending = { since: r.since, reason: r.ended === 'reconnect' ? r.reason : 'drop' };
      sleepUntil(deadline, r.retryAfterMs);
      continue;
    }
    // Rejected or failed: honour Retry-After, back off exponentially, full jitter so
    // rejected clients do not come back in lockstep.
    failures += 1;
    const base = Math.min(MAX_BACKOFF_MS, Math.max(r.retryAfterMs, 500) * 2 ** (failures - 1));
    sleepUntil(deadline, base / 2 + Math.random() * base / 2);
  }
  onDone();
  // Idle out the remaining margin so this VU does not start another iteration.
  sleepUntil(end, end - Date.now());
}

// Pings a socket with the exact text `{"event":"ping"}` (answered by the runtime's
// auto-response without waking the object) and times the pongs, which come in order.
export function pinger(socket) {
  const sent = [];
  return {
    ping() {
      const t = Date.now();
      while (sent.length && t - sent[0] > PONG_TIMEOUT_MS) {
        sent.shift();
        m.pingTimeouts.add(1);
      }
      sent.push(t);
      socket.send('{"event":"ping"}');
    },
    pong(now) {
      const t = sent.shift();
      if (t !== undefined) {
        m.messageLatency.add(now - t);
        m.pongsReceived.add(1);
      }
    },
  };
}

// Records a received HTTP or client broadcast (delivery time from the sender's clock in the
// payload). Returns false for any other frame.
export function recordBroadcast(f, now) {
  const d = f.data;
  if (!d || typeof d !== 'object') return false;
  if (f.event === HTTP_BROADCAST_EVENT && typeof d.sentAt === 'number') return delivered(now - d.sentAt, 'http', 'all');
  if (f.event === 'broadcast' && d.kind === CLIENT_BROADCAST_KIND && typeof d.sentAt === 'number') {
    return delivered(now - d.sentAt, 'client', 'exclude');
  }
  const [clock, filter] = CHURN_BROADCASTS[f.event] || [];
  if (clock && typeof d[clock] === 'number') return delivered(now - d[clock], 'http', filter);
  return false;
}

function delivered(ms, via, filter) {
  m.broadcastDelivery.add(ms, { via, filter });
  m.broadcastsReceived.add(1, { via });
  return true;
}
