// The single-object baseline Worker: authenticates like the platform and hands every request
// of a user to that user's one ConnectionManager (idFromName(userId)). It answers everything
// the k6 scenario calls; tiers do not exist here, so the admin tier call is accepted and ignored.

import { verifyToken } from './auth.js';

export { ConnectionManager } from './connection-manager.js';

const CLIENT_TYPES = ['user-scoped', 'session-scoped', 'machine-scoped'];

function json(body, status = 200) {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
}

function text(body, status) {
  return new Response(body, { status, headers: { 'Content-Type': 'text/plain' } });
}

function bearerOf(request) {
  const [scheme, token] = (request.headers.get('Authorization') || '').split(' ');
  return scheme === 'Bearer' && token ? token : '';
}

function managerOf(env, userId) {
  return env.CONNECTION_MANAGER.get(env.CONNECTION_MANAGER.idFromName(userId));
}

// GET /v1/updates: token from the query (else Bearer), the handshake ids from the query,
// then the upgrade goes to the user's object with the identity in headers.
async function upgrade(request, env, url) {
  if (request.headers.get('Upgrade') !== 'websocket') return text('Expected WebSocket upgrade', 426);
  const token = url.searchParams.get('token') || bearerOf(request);
  if (!token) return text('Missing authentication (provide ticket or token)', 401);
  const userId = await verifyToken(token, env.HAPPY_MASTER_SECRET);
  if (!userId) return text('Invalid authentication token', 401);
  const clientType = url.searchParams.get('clientType') || 'user-scoped';
  const sessionId = url.searchParams.get('sessionId') || '';
  const machineId = url.searchParams.get('machineId') || '';
  if (!CLIENT_TYPES.includes(clientType)) return text('Invalid client type', 400);
  if (clientType === 'session-scoped' && !sessionId) return text('Session ID required for session-scoped connections', 400);
  if (clientType === 'machine-scoped' && !machineId) return text('Machine ID required for machine-scoped connections', 400);
  const headers = new Headers({ Upgrade: 'websocket', 'X-User-Id': userId, 'X-Client-Type': clientType });
  if (sessionId) headers.set('X-Session-Id', sessionId);
  if (machineId) headers.set('X-Machine-Id', machineId);
  return managerOf(env, userId).fetch('https://do/websocket', { headers });
}

// Stats and broadcast: Bearer token, then the user's object.
async function userCall(request, env, path) {
  const token = bearerOf(request);
  if (!token) return json({ error: 'Missing authorization header' }, 401);
  const userId = await verifyToken(token, env.HAPPY_MASTER_SECRET);
  if (!userId) return json({ error: 'Invalid token' }, 401);
  const init = { method: request.method, headers: { 'X-User-Id': userId } };
  if (request.method === 'POST') init.body = await request.text();
  return managerOf(env, userId).fetch(`https://do${path}`, init);
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const { pathname: path } = url;
    const method = request.method;
    if (path === '/health') return json({ status: 'ok', policy: 'baseline', version: 'seed' });
    if (path === '/v1/updates' || path === '/v1/websocket') return upgrade(request, env, url);
    if (path === '/v1/websocket/stats' && method === 'GET') return userCall(request, env, '/stats');
    if (path === '/v1/websocket/broadcast' && method === 'POST') return userCall(request, env, '/broadcast');
    const tier = /^\/admin\/users\/([^/]+)\/tier$/.exec(path);
    if (tier) return json({ user: decodeURIComponent(tier[1]), tier: null, ignored: 'the baseline has no tiers' });
    return json({ error: 'not_found' }, 404);
  },
};
