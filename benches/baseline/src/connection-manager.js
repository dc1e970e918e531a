// One ConnectionManager per user, written the capacity guide's way: WebSocket hibernation
// with tags, the runtime's auto-response for the exact ping, the connection's metadata in its
// attachment, broadcast filters as the platform applies them (tags where it uses tags,
// attachments where it iterates), and stats computed from every attachment on every call.
// Beside them, the per-object load the edge reports (stats `load`, `shards[].events`): the
// events this object handled since it started (requests, socket messages, closes; it has no
// alarms), the frames it sent itself, and its busiest second.

import { DurableObject } from 'cloudflare:workers';

// The tag values the platform truncates ids to.
const TAG_ID_CHARS = 50;
// The gateway's memory estimate per socket, so do_memory_usage_bytes compares like with like.
const SOCKET_BYTES = 4096;

function tagsOf(meta) {
  const tags = ['auth:yes', `type:${meta.clientType}`, `conn:${meta.connectionId}`];
  if (meta.sessionId) tags.push(`session:${meta.sessionId.slice(0, TAG_ID_CHARS)}`);
  if (meta.machineId) tags.push(`machine:${meta.machineId.slice(0, TAG_ID_CHARS)}`);
  return tags;
}

function json(body, status = 200) {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
}

function errorFrame(message) {
  return JSON.stringify({ event: 'error', data: { code: 1002, message, timestamp: Date.now() } });
}

export class ConnectionManager extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    // In memory, like the object: a restart (eviction, hibernation) starts them again.
    this.load = { events: 0, framesSent: 0, second: 0, inSecond: 0, peak: 0 };
    // The platform's auto-response: its pong's timestamp is the object's construction time.
    ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair(
      '{"event":"ping"}', JSON.stringify({ event: 'pong', data: { timestamp: Date.now() } })));
  }

  // One event handled: a request, a socket message or a close.
  event() {
    const l = this.load;
    const second = Math.floor(Date.now() / 1000);
    if (second !== l.second) {
      l.second = second;
      l.inSecond = 0;
    }
    l.events += 1;
    l.inSecond += 1;
    if (l.inSecond > l.peak) l.peak = l.inSecond;
  }

  async fetch(request) {
    this.event();
    const path = new URL(request.url).pathname;
    if (path === '/websocket') return this.accept(request.headers);
    if (path === '/broadcast') return this.broadcast(request);
    if (path === '/stats') return json(this.stats(request.headers.get('X-User-Id')));
    return json({ error: 'Not found' }, 404);
  }

  accept(h) {
    const now = Date.now();
    const meta = {
      connectionId: crypto.randomUUID(), userId: h.get('X-User-Id'), clientType: h.get('X-Client-Type'),
      sessionId: h.get('X-Session-Id') || undefined, machineId: h.get('X-Machine-Id') || undefined,
      connectedAt: now, lastActivityAt: now,
    };
    const [client, server] = Object.values(new WebSocketPair());
    this.ctx.acceptWebSocket(server, tagsOf(meta));
    server.serializeAttachment(meta);
    const { connectionId, userId, clientType, sessionId, machineId } = meta;
    this.send(server, JSON.stringify({ event: 'connected', data: { connectionId, userId, clientType, sessionId, machineId, timestamp: now } }));
    if (clientType === 'machine-scoped') this.machinePresence(machineId, true);
    return new Response(null, { status: 101, webSocket: client });
  }

  // The platform's connection lifecycle (platform-protocol.md §6.5): on every machine-scoped
  // authenticate and close, machine-status and machine-activity to the user-scoped sockets
  // (its D1 update is left out). Per socket, as the platform does (an overlapping reconnect
  // flaps); the edge counts sockets across shards instead, but sends the same two frames.
  machinePresence(machineId, online) {
    const now = Date.now();
    const frames = [
      JSON.stringify({ event: 'ephemeral', data: { type: 'machine-status', machineId, online, timestamp: now } }),
      JSON.stringify({ event: 'ephemeral', data: { type: 'machine-activity', machineId, active: online, activeAt: now } }),
    ];
    for (const s of this.ctx.getWebSockets('type:user-scoped')) for (const f of frames) this.send(s, f);
  }

  async webSocketMessage(ws, message) {
    this.event();
    // The platform re-serializes the sender's attachment on every inbound frame.
    const meta = ws.deserializeAttachment();
    meta.lastActivityAt = Date.now();
    ws.serializeAttachment(meta);
    let f;
    try {
      f = JSON.parse(typeof message === 'string' ? message : new TextDecoder().decode(message));
    } catch (e) {
      this.send(ws, errorFrame('Invalid JSON message'));
      return;
    }
    const type = f && typeof f === 'object' ? (typeof f.event === 'string' ? f.event : f.type) : undefined;
    if (typeof type !== 'string') {
      this.send(ws, errorFrame('Invalid message format'));
      return;
    }
    if (type === 'ping') {
      this.send(ws, JSON.stringify({ event: 'pong', data: { timestamp: Date.now() } }));
    } else if (type === 'broadcast') {
      const frame = JSON.stringify({ event: 'broadcast', data: typeof f.event === 'string' ? f.data : f.payload });
      for (const s of this.ctx.getWebSockets()) if (s !== ws) this.send(s, frame);
    }
    // Every other event is the platform's routing and business logic, which the baseline
    // leaves out: its load is connections, pings, broadcasts and stats.
  }

  async webSocketClose(ws, code, reason) {
    this.event();
    // Echo the client's code (1005/1006 cannot be sent; 1000 instead).
    ws.close(code === 1005 || code === 1006 ? 1000 : code, reason || 'Connection closed');
    const meta = ws.deserializeAttachment();
    if (meta && meta.clientType === 'machine-scoped') this.machinePresence(meta.machineId, false);
  }

  send(ws, frame) {
    try {
      ws.send(frame);
      this.load.framesSent += 1;
      return 1;
    } catch (e) {
      return 0; // closing
    }
  }

  // Recipients of an HTTP broadcast (platform-protocol.md §6.2).
  recipients(filter) {
    const f = filter || {};
    const every = () => this.ctx.getWebSockets();
    const where = (pred) => every().filter((ws) => pred(ws.deserializeAttachment()));
    switch (f.type) {
      case 'session': return this.ctx.getWebSockets(`session:${String(f.sessionId || '').slice(0, TAG_ID_CHARS)}`);
      case 'machine': return this.ctx.getWebSockets(`machine:${String(f.machineId || '').slice(0, TAG_ID_CHARS)}`);
      case 'user-scoped-only': return where((m) => m.clientType === 'user-scoped');
      case 'exclude': return where((m) => m.connectionId !== f.connectionId);
      case 'machine-scoped-only':
        return where((m) => m.clientType === 'user-scoped' || (m.clientType === 'machine-scoped' && m.machineId === f.machineId));
      case 'all-interested-in-session':
        return where((m) => m.clientType === 'user-scoped' || (m.clientType === 'session-scoped' && m.sessionId === f.sessionId));
      default: return every();
    }
  }

  // Delivered in the client format, {"event":type,"data":payload,"timestamp":ms}, so the
  // sockets can time it (the platform sends its server format, which its clients drop).
  async broadcast(request) {
    let body;
    try {
      body = JSON.parse(await request.text());
    } catch (e) {
      return json({ error: 'Invalid broadcast request' }, 400);
    }
    const message = body && body.message;
    if (!message || typeof message.type !== 'string') return json({ error: 'Invalid broadcast request' }, 400);
    const frame = JSON.stringify({ event: message.type, data: message.payload ?? null, timestamp: message.timestamp ?? Date.now() });
    let delivered = 0;
    for (const ws of this.recipients(body.filter)) delivered += this.send(ws, frame);
    return json({ success: true, delivered });
  }

  // The platform's stats, from every socket's attachment, plus the fields the k6 scenario
  // and the comparison read (one "shard": this object).
  stats(userId) {
    const byType = { 'user-scoped': 0, 'session-scoped': 0, 'machine-scoped': 0 };
    const sessions = new Set();
    const machines = new Set();
    let oldest = null;
    let memoryUsage = 0;
    const sockets = this.ctx.getWebSockets();
    for (const ws of sockets) {
      const m = ws.deserializeAttachment();
      byType[m.clientType] = (byType[m.clientType] || 0) + 1;
      if (m.sessionId) sessions.add(m.sessionId);
      if (m.machineId) machines.add(m.machineId);
      if (oldest === null || m.connectedAt < oldest) oldest = m.connectedAt;
      memoryUsage += SOCKET_BYTES + JSON.stringify(m).length;
    }
    const n = sockets.length;
    const name = `cm:${userId}`;
    const { events, framesSent, peak } = this.load;
    return {
      totalConnections: n, byType, activeSessions: sessions.size, activeMachines: machines.size,
      oldestConnection: oldest, memoryUsage, messageQueueDepth: 0,
      rejected: 0, policy: 'baseline', imbalance: n ? 1 : 0,
      // One object holds all of the user's load.
      load: { objects: 1, events, busiestObject: name, busiestShare: 1, peakEventsPerSecond: peak },
      shards: [{ name, connections: n, oldestConnection: oldest, events, framesSent, peakEventsPerSecond: peak }],
      failedShards: [],
    };
  }
}
