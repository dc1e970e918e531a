// TEST_MODE=platform: the platform's real traffic. Every user has one machine (a daemon,
// machine-scoped), SESSIONS_PER_USER CLI sessions (session-scoped) and APPS_PER_USER apps
// (user-scoped), one VU each, holding its socket for the whole run:
//   sessions  send session-alive every 2-2.5 s, machines machine-alive every 20-25 s (as the
//             real CLI), and both answer every rpc-request at once;
//   apps      call `<machineId>:bash` and `<sessionId>:permission` in turn every RPC_INTERVAL,
//             time each ack, and time the alive frames forwarded to them.
// Every id carries its user's id, so any frame that reaches the wrong socket is counted in
// frames_misdelivered; an ack that does not come within 10 s is counted in frames_dropped.

import exec from 'k6/execution';
import http from 'k6/http';
import { sleep } from 'k6';
import {
  ADMIN_TOKEN, BASE_URL, PLATFORM, SOCKETS_PER_USER, SWITCHES, SWITCH_DRAIN_S, USER_COUNT, socketUrl, userAt,
} from './config.js';
import * as m from './metrics.js';
import { holdSocket } from './socket.js';

const ACK_TIMEOUT_MS = 10000;
const SWEEP_MS = 1000;
const ALIVE_MS = { machine: [20000, 25000], session: [2000, 2500] };
const UNAVAILABLE = 'RPC method not available';

export const machineIdOf = (user) => `m-${user.id}`;
export const sessionIdOf = (user, k) => `s-${user.id}-${k}`;

// The role of the k-th socket of the scenario (0-based). Role-major (every user's machine
// first, then the sessions, then the apps), so during the ramp an app's targets are already
// connected when it starts calling.
function platformRole(k) {
  const user = userAt(k);
  const slot = Math.floor(k / USER_COUNT) % SOCKETS_PER_USER;
  const sids = Array.from({ length: PLATFORM.sessions }, (_, i) => sessionIdOf(user, i));
  const own = { sids: new Set(sids), machine: machineIdOf(user) };
  const as = (role, type, fields, sessionId = '', machineId = '', correlationId = '') => Object.assign(
    { user, own, role, type, url: socketUrl(user, type, sessionId, machineId, correlationId) }, fields);
  if (slot === 0) return as('machine', 'machine-scoped', { id: own.machine }, '', own.machine);
  if (slot <= PLATFORM.sessions) return as('session', 'session-scoped', { id: sids[slot - 1] }, sids[slot - 1]);
  // The mobile app sends the same correlationId on every connect; with two apps or more the
  // last is a web app, which sends none.
  const index = slot - 1 - PLATFORM.sessions;
  const web = PLATFORM.apps > 1 && index === PLATFORM.apps - 1;
  const correlationId = web ? '' : `${user.id}-app${index}`;
  return as('app', 'user-scoped', { index, kind: web ? 'web' : 'mobile', seen: new Map() }, '', '', correlationId);
}

// What an app missed: per sender socket, the numbers between the first and the last it got
// that it never got (a frame lost at either end of the run is not seen; repeats are counted
// as they come, as misdeliveries).
function countMissed(me) {
  // Calls still waiting at the end: no answer came (the run stops calling ACK_TIMEOUT_MS
  // before the deadline, so these waited that long).
  if (me.calls && me.calls.pending.size) {
    for (const p of me.calls.pending.values()) m.framesDropped.add(1, { kind: p.kind });
    me.calls.pending.clear();
  }
  let got = 0;
  let lost = 0;
  for (const ns of me.seen.values()) {
    let lo = Infinity;
    let hi = -Infinity;
    for (const n of ns) {
      lo = Math.min(lo, n);
      hi = Math.max(hi, n);
    }
    got += ns.size;
    lost += hi - lo + 1 - ns.size;
  }
  m.deliveriesChecked.add(got, { kind: me.kind });
  m.deliveriesLost.add(lost, { kind: me.kind });
}

function send(socket, me, frame) {
  socket.send(JSON.stringify(frame));
  m.framesSent.add(1, { role: me.role });
}

function misdelivered(reason) {
  m.framesMisdelivered.add(1, { reason });
}

function parseJson(s) {
  try {
    return JSON.parse(s);
  } catch (e) {
    return null;
  }
}

// `<id>:<name>` -> id
function targetOf(method) {
  return typeof method === 'string' ? method.split(':')[0] : '';
}

// Machines and sessions: keep alive as the CLI does, answer every call meant for them with
// their shard (from their own connected frame) and an echo of the call's params.
function responderClient(me) {
  let shard = '';
  // Numbered per socket (c.n), so an app can tell what it missed from what was never sent.
  const conn = `${exec.vu.idInTest}.${(me.conns = (me.conns || 0) + 1)}`;
  let n = 0;
  const alive = () => {
    n += 1;
    const time = Date.now();
    return me.role === 'machine'
      ? { event: 'machine-alive', data: { machineId: me.id, time, c: conn, n } }
      : { event: 'session-alive', data: { sid: me.id, time, thinking: false, mode: 'remote', c: conn, n } };
  };
  return {
    onConnected(c, f) {
      m.framesReceived.add(1, { role: me.role });
      shard = (f.data && f.data.shard) || '';
      const [lo, hi] = ALIVE_MS[me.role];
      const tick = () => {
        send(c.socket, me, alive());
        c.socket.setTimeout(tick, lo + Math.random() * (hi - lo));
      };
      c.socket.setTimeout(tick, Math.random() * lo); // spread the first one
    },
    onFrame(c, f) {
      m.framesReceived.add(1, { role: me.role });
      if (f.event !== 'rpc-request') return;
      m.rpcRequestsReceived.add(1, { role: me.role });
      const data = f.data || {};
      const caller = parseJson(data.params);
      if (targetOf(data.method) !== me.id) return misdelivered('rpc_request_not_target');
      if (!caller || caller.u !== me.user.id) return misdelivered('rpc_request_other_user');
      const result = JSON.stringify({ u: me.user.id, id: me.id, shard, echo: data.params });
      send(c.socket, me, { event: 'rpc-response', ackId: f.ackId, ack: result });
      return undefined;
    },
  };
}

// Apps: one RPC every RPC_INTERVAL (machine and session in turn), each ack checked against
// the call it answers; forwarded alive frames timed and checked for their owner.
function appClient(me) {
  // The mobile app's calls wait out their timeout across a reconnect (an answer may come on
  // its next socket: the edge sends it there when it moved the app); the web app's end with
  // their socket.
  const fresh = () => ({ pending: new Map(), answered: new Set(), expired: new Set() });
  const calls = me.kind === 'mobile' ? (me.calls = me.calls || fresh()) : fresh();
  const { pending, answered, expired } = calls; // pending: ackId -> {sentAt, kind, target, params}
  let shard = '';
  let seq = 0;

  function call(c) {
    if (Date.now() > c.deadline - ACK_TIMEOUT_MS - SWEEP_MS) return; // its ack could not be waited for
    seq += 1;
    const kind = seq % 2 ? 'machine' : 'session';
    const target = kind === 'machine' ? me.own.machine : sessionIdOf(me.user, (me.index + (seq >> 1)) % PLATFORM.sessions);
    const now = Date.now();
    const params = JSON.stringify({ u: me.user.id, a: me.index, n: seq, t: now });
    const ackId = `${me.user.id}.a${me.index}.${exec.vu.idInTest}.${seq}.${Math.random().toString(36).slice(2, 10)}`;
    pending.set(ackId, { sentAt: now, kind, target, params });
    m.rpcCalls.add(1, { kind });
    send(c.socket, me, { event: 'rpc-call', data: { method: `${target}:${kind === 'machine' ? 'bash' : 'permission'}`, params }, ackId });
  }

  function sweep(now) {
    for (const [id, p] of pending) {
      if (now - p.sentAt <= ACK_TIMEOUT_MS) continue;
      pending.delete(id);
      expired.add(id);
      m.framesDropped.add(1, { kind: p.kind });
    }
  }

  function onAck(f, now) {
    const p = pending.get(f.ackId);
    if (!p) {
      if (expired.has(f.ackId)) m.rpcLateAcks.add(1);
      else misdelivered(answered.has(f.ackId) ? 'ack_repeated' : 'ack_unknown');
      return;
    }
    pending.delete(f.ackId);
    answered.add(f.ackId);
    const a = f.ack || {};
    if (a.ok !== true) {
      if (a.error === UNAVAILABLE) m.rpcUnavailable.add(1, { kind: p.kind });
      else m.rpcErrors.add(1, { kind: p.kind });
      return;
    }
    const r = parseJson(a.result);
    if (!r || r.u !== me.user.id) return misdelivered('ack_other_user');
    if (r.id !== p.target || r.echo !== p.params) return misdelivered('ack_wrong_call');
    const placement = r.shard === shard ? 'same' : 'cross';
    m.rpcRoundTrip.add(now - p.sentAt, { kind: p.kind, placement });
    m.rpcAcks.add(1, { kind: p.kind, placement });
    return undefined;
  }

  // A forwarded alive frame (or the upstream's activity ephemeral): its owner must be ours.
  function forwarded(kind, id, sentAt, form, now, d) {
    const ours = kind === 'session' ? me.own.sids.has(id) : id === me.own.machine;
    if (!ours) return misdelivered('forward_other_user');
    m.forwardsReceived.add(1, { kind });
    if (typeof sentAt === 'number') m.forwardDelivery.add(now - sentAt, { kind, form });
    if (d && typeof d.c === 'string' && typeof d.n === 'number') {
      const key = `${id}#${d.c}`;
      if (!me.seen.has(key)) me.seen.set(key, new Set());
      const ns = me.seen.get(key);
      if (ns.has(d.n)) return misdelivered(`forward_repeated_${me.kind}`);
      ns.add(d.n);
    }
    return undefined;
  }

  function onEphemeral(c, d, now) {
    if (d.type === 'activity') return forwarded('session', d.sid, d.activeAt, 'activity', now);
    if (d.type === 'machine-activity') return forwarded('machine', d.machineId, d.activeAt, 'activity', now);
    if (d.type !== 'machine-status') return undefined;
    // Presence must be about our own machine, and that machine's VU holds it until the end:
    // an offline notice before then is a flicker (a move the edge made showing as a drop).
    if (d.machineId !== me.own.machine) return misdelivered('presence_other_user');
    if (d.online === false && now < c.deadline - ACK_TIMEOUT_MS) m.presenceFlicker.add(1);
    return undefined;
  }

  // A session call reaches every user-scoped socket too (the platform's rule): not ours to
  // answer, but it must be our user's.
  function onRequest(d) {
    const caller = parseJson(d.params);
    if (!caller || caller.u !== me.user.id) misdelivered('rpc_request_other_user');
  }

  return {
    onConnected(c, f) {
      m.framesReceived.add(1, { role: me.role });
      shard = (f.data && f.data.shard) || '';
      const every = PLATFORM.rpcS * 1000;
      c.socket.setTimeout(() => {
        call(c);
        c.socket.setInterval(() => call(c), every);
      }, Math.random() * every); // spread the apps over the interval
      c.socket.setInterval(() => sweep(Date.now()), SWEEP_MS);
    },
    onFrame(c, f, now) {
      m.framesReceived.add(1, { role: me.role });
      const d = f.data || {};
      switch (f.event) {
        case 'ack': return onAck(f, now);
        case 'rpc-request': return onRequest(d);
        case 'session-alive': return forwarded('session', d.sid, d.time, 'forwarded', now, d);
        case 'machine-alive': return forwarded('machine', d.machineId, d.time, 'forwarded', now, d);
        case 'ephemeral': return onEphemeral(c, d, now);
        default: return undefined;
      }
    },
    onClose(c, st) {
      // Calls still in flight past the ack timeout are dropped; the web app's younger ones
      // lost their socket (a rotation or a drop closed it) and are counted apart. The mobile
      // app's wait on (swept on its next socket, or at the end).
      sweep(st.closedAt || Date.now());
      if (me.kind === 'mobile') return;
      if (pending.size) m.rpcInterrupted.add(pending.size);
      pending.clear();
    },
  };
}

export function platformClient() {
  // Each VU runs one long iteration, so the scenario's iteration number is a dense socket
  // index (VU ids are not: the stats VU takes one of them).
  const me = platformRole(exec.scenario.iterationInTest);
  if (me.role === 'app') holdSocket(me, () => appClient(me), () => countMissed(me));
  else holdSocket(me, () => responderClient(me));
}

// SWITCH: the operator's run-time policy switches, at their second of the run, each timed
// until /health shows the new policy active (the bound every isolate follows within).
export function policySwitcher() {
  const start = exec.scenario.startTime;
  const headers = { Authorization: `Bearer ${ADMIN_TOKEN}`, 'Content-Type': 'application/json' };
  for (const sw of SWITCHES) {
    sleep(Math.max(0, start + sw.atS * 1000 - Date.now()) / 1000);
    const back = sw.policy === 'default';
    const drainMs = SWITCH_DRAIN_S * 1000;
    const r = back
      ? http.del(`${BASE_URL}/admin/policy?drainMs=${drainMs}`, null, { headers })
      : http.put(`${BASE_URL}/admin/policy`, JSON.stringify({ policy: sw.policy, drainMs }), { headers });
    if (r.status !== 200) {
      console.error(`switch to ${sw.policy} answered ${r.status}: ${String(r.body).slice(0, 200)}`);
      continue;
    }
    const want = JSON.parse(r.body).active;
    const put = Date.now();
    let applied = false;
    while (!applied && Date.now() - put < 30000) {
      const h = http.get(`${BASE_URL}/health`, { timeout: '5s' });
      try { applied = JSON.parse(h.body).activePolicy === want; } catch (e) { applied = false; }
      if (!applied) sleep(0.1);
    }
    m.policySwitches.add(1, { policy: want });
    if (applied) m.policySwitchApplied.add(Date.now() - put, { policy: want });
    console.log(`switch: ${want} at ${((put - start) / 1000).toFixed(1)} s (drain ${SWITCH_DRAIN_S} s)${applied ? '' : ': /health did not show it within 30 s'}`);
  }
}
