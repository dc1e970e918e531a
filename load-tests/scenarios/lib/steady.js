// SHAPE=steady (the default): one VU = one client holding one WebSocket for the whole run,
// pinging and receiving broadcasts; one VU POSTing broadcasts; one VU polling stats.

import exec from 'k6/execution';
import { sleep } from 'k6';
import {
  BROADCAST_S, CLIENT_BCAST_NTH, CLIENT_BCAST_S, CLIENT_MIX, PING_S, SESSION_SIZE, STATS_S,
  pick, socketUrl, spread, userAt, userOf,
} from './config.js';
import { getStats, postBroadcast } from './http.js';
import { CLIENT_BROADCAST_KIND, HTTP_BROADCAST_EVENT, holdSocket, pinger, recordBroadcast } from './socket.js';

function identity(vu) {
  const user = userOf(vu);
  const type = pick(CLIENT_MIX, spread(vu));
  const sessionId = type === 'session-scoped' ? `s${Math.floor(vu / SESSION_SIZE)}` : '';
  const machineId = type === 'machine-scoped' ? `m${vu}` : '';
  return {
    user, type, url: socketUrl(user, type, sessionId, machineId),
    sender: CLIENT_BCAST_NTH > 0 && vu % CLIENT_BCAST_NTH === 0,
  };
}

// Pings every PING_S; a sender also sends a client `broadcast` frame carrying its send time.
function steadyClient(me) {
  let p;
  return {
    onConnected(c) {
      p = pinger(c.socket);
      p.ping();
      c.socket.setInterval(p.ping, PING_S * 1000);
      if (me.sender) {
        c.socket.setInterval(() => {
          c.socket.send(JSON.stringify({ event: 'broadcast', data: { kind: CLIENT_BROADCAST_KIND, sentAt: Date.now() } }));
        }, CLIENT_BCAST_S * 1000);
      }
    },
    onFrame(c, f, now) {
      if (f.event === 'pong') p.pong(now);
      else recordBroadcast(f, now);
    },
  };
}

export function steadySockets() {
  const me = identity(exec.vu.idInTest);
  holdSocket(me, () => steadyClient(me));
}

// Side VUs calling at least this often apart ask for a fresh connection (see lib/http.js).
const PROXY_IDLE_S = 4;

let broadcastSeq = 0;

export function broadcaster() {
  const user = userAt(broadcastSeq);
  broadcastSeq += 1;
  const now = Date.now();
  postBroadcast(user, { type: HTTP_BROADCAST_EVENT, payload: { sentAt: now, seq: broadcastSeq }, timestamp: now },
    { type: 'all' }, 'broadcast_all', BROADCAST_S >= PROXY_IDLE_S);
  sleep(Math.max(0, BROADCAST_S - (Date.now() - now) / 1000));
}

// One user per poll (round robin), so the gauges are per user, the unit the guide's
// "per DO" metrics had.
let statsSeq = 0;

export function statsPoller() {
  const user = userAt(statsSeq);
  statsSeq += 1;
  const t = Date.now();
  getStats(user, STATS_S >= PROXY_IDLE_S);
  sleep(Math.max(0, STATS_S - (Date.now() - t) / 1000));
}
