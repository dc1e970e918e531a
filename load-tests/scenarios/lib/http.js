// The HTTP calls every shape makes: broadcasts, stats, refused upgrades.

import http from 'k6/http';
import { BASE_URL } from './config.js';
import * as m from './metrics.js';

// `fresh` asks the server to close the connection after the answer. It does not keep k6 from
// reusing a pooled one for the request itself; the shapes that need that turn
// `noConnectionReuse` on (websocket-performance.js).
function headers(user, fresh) {
  const h = { Authorization: `Bearer ${user.token}`, 'Content-Type': 'application/json' };
  if (fresh) h.Connection = 'close';
  return h;
}

// POST /v1/websocket/broadcast; `op` names the operation in http_op_duration. The send time
// travels in the payload so the receiving sockets can time the delivery.
export function postBroadcast(user, message, filter, op, fresh = false) {
  const body = JSON.stringify(filter ? { message, filter } : { message });
  const r = http.post(`${BASE_URL}/v1/websocket/broadcast`, body, {
    headers: headers(user, fresh), timeout: '10s', tags: { name: 'broadcast' },
  });
  m.broadcastRequestTime.add(r.timings.duration);
  m.httpOpDuration.add(r.timings.duration, { op });
  let ok = r.status === 200;
  if (ok) {
    try {
      const b = JSON.parse(r.body);
      m.broadcastDelivered.add(b.delivered || 0);
      if (b.failedShards && b.failedShards.length) ok = false;
    } catch (e) {
      ok = false;
    }
  }
  if (!ok) m.broadcastErrors.add(1, { status: String(r.status) });
  return r;
}

// GET /v1/websocket/stats: the do_* metrics, per user.
export function getStats(user, fresh = false) {
  const r = http.get(`${BASE_URL}/v1/websocket/stats`, { headers: headers(user, fresh), timeout: '10s', tags: { name: 'stats' } });
  m.doResponseTime.add(r.timings.duration);
  m.httpOpDuration.add(r.timings.duration, { op: 'stats' });
  if (r.status !== 200) {
    m.doStatsErrors.add(1, { status: String(r.status) });
    return r;
  }
  try {
    recordStats(JSON.parse(r.body));
  } catch (e) {
    m.doStatsErrors.add(1, { status: 'unparsable' });
  }
  return r;
}

function recordStats(s) {
  m.doConnectionsTotal.add(s.totalConnections);
  m.doMemoryUsage.add(s.memoryUsage || 0);
  if (s.oldestConnection) m.doOldestConnection.add(Math.max(0, Date.now() - s.oldestConnection));
  const shards = s.shards || [];
  m.doShards.add(shards.length);
  m.doShardConnectionsMax.add(shards.reduce((x, sh) => Math.max(x, sh.connections), 0));
  m.doImbalance.add(s.imbalance || 0);
  m.doStatsRejected.add(s.rejected || 0);
  if (s.failedShards && s.failedShards.length) m.doFailedShards.add(s.failedShards.length);
  if (typeof s.frames === 'number') m.doFrames.add(s.frames);
  if (typeof s.subrequestsPerFrame === 'number') m.doSubrequestsPerFrame.add(s.subrequestsPerFrame);
}

// The platform's two refused upgrades: a WebSocket upgrade without any credential (401) and
// a plain GET with a token but no Upgrade header (426; the platform accepts 400 or 500 too).
export function refusedUpgrades(user) {
  const noToken = http.get(`${BASE_URL}/v1/updates`, {
    headers: { Upgrade: 'websocket', Connection: 'Upgrade' },
    timeout: '10s', tags: { name: 'upgrade' }, responseCallback: http.expectedStatuses(400, 401),
  });
  m.httpOpDuration.add(noToken.timings.duration, { op: 'upgrade_no_token' });
  const plain = http.get(`${BASE_URL}/v1/updates?token=${encodeURIComponent(user.token)}`, {
    headers: { 'Content-Type': 'application/json' },
    timeout: '10s', tags: { name: 'upgrade' }, responseCallback: http.expectedStatuses(400, 426, 500),
  });
  m.httpOpDuration.add(plain.timings.duration, { op: 'upgrade_plain' });
}
