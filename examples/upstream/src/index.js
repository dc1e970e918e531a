// Reference upstream for the edge gateway. The contract is docs/upstream.md; the event
// semantics are the platform's own (platform-protocol.md §6.3). The gateway POSTs every
// forwarded business event and lifecycle hook to /events and delivers the answer's `ack` to
// the sender and its `deliveries` across the user's sockets.
import { DurableObject } from "cloudflare:workers";

const MINUTE_MS = 60_000;
const SIGNATURE_WINDOW_MS = 5 * MINUTE_MS; // refuse timestamps further off than this
const ALIVE_WINDOW_MS = 10 * MINUTE_MS; // the platform ignores older `*-alive` times
const HOOK_KINDS = new Set(["connected", "disconnected", "machine-online", "machine-offline"]);
const enc = new TextEncoder();

// Test controls (TEST_CONTROL=on only). A module-level variable, so it is per isolate:
// `wrangler dev` runs one, a deployment may run many that each keep their own settings.
const control = { delayMs: 0, fail: false };

export default {
  async fetch(req, env) {
    const url = new URL(req.url);
    const route = `${req.method} ${url.pathname}`;
    if (route === "POST /events") return events(req, env);
    if (env.TEST_CONTROL === "on") {
      if (route === "POST /control") return setControl(req);
      if (route === "GET /hooks") return inspect(url, env, async (u) => ({ hooks: await u.hooks() }));
      if (route === "GET /state") return inspect(url, env, (u) => u.state());
    }
    return error(404, "not_found", `no route ${route}`);
  },
};

// POST /events: one business event (`kind: "event"`) or one lifecycle hook.
async function events(req, env) {
  const raw = await req.text();
  if (env.UPSTREAM_SECRET) {
    const refused = await checkSignature(req, raw, env.UPSTREAM_SECRET);
    if (refused) return error(401, "bad_signature", refused);
  }
  // Injected before any work, so a delayed or failed request changes no state.
  if (control.delayMs > 0) await new Promise((resolve) => setTimeout(resolve, control.delayMs));
  if (control.fail) return Response.json({ error: "injected_failure" }, { status: 500 });

  const body = parseObject(raw);
  if (!body) return error(400, "bad_json", "the body must be a JSON object");

  if (body.kind === "event") {
    const userId = body.sender?.userId;
    if (typeof userId !== "string" || typeof body.event !== "string") {
      return error(400, "bad_request", "an event needs `event` and `sender.userId` strings");
    }
    const { ack, deliveries = [] } = await user(env, userId).event(body.event, body.data);
    // The edge only acks frames that carried an ackId, so only those get one here.
    const hasAckId = body.ackId !== null && body.ackId !== undefined;
    return Response.json(ack !== undefined && hasAckId ? { ack, deliveries } : { deliveries });
  }

  if (HOOK_KINDS.has(body.kind)) {
    // Socket hooks name the user in `sender`, machine hooks at the top level.
    const userId = body.kind.startsWith("machine-") ? body.userId : body.sender?.userId;
    if (typeof userId !== "string" || typeof body.id !== "string") {
      return error(400, "bad_request", `a ${body.kind} hook needs \`id\` and its user id as strings`);
    }
    await user(env, userId).hook(body);
    return Response.json({}); // the edge ignores the body; 2xx tells it the hook is done
  }

  return error(400, "unknown_kind", `unknown kind ${JSON.stringify(body.kind ?? null)}`);
}

// X-Edge-Signature: v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>. Returns why the
// request is refused, or null when it is signed correctly and recently.
async function checkSignature(req, raw, secret) {
  const t = req.headers.get("x-edge-timestamp") ?? "";
  const sig = /^v1=([0-9a-f]{64})$/i.exec(req.headers.get("x-edge-signature") ?? "");
  if (!sig) return "missing or malformed X-Edge-Signature (want v1=<64 hex>)";
  if (!/^\d+$/.test(t)) return "missing or malformed X-Edge-Timestamp (want ms since the epoch)";
  if (Math.abs(Date.now() - Number(t)) > SIGNATURE_WINDOW_MS) return "X-Edge-Timestamp is more than 5 minutes off";
  const key = await crypto.subtle.importKey("raw", enc.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["verify"]);
  const mac = Uint8Array.from(sig[1].match(/../g), (h) => parseInt(h, 16));
  // subtle.verify compares in constant time.
  const ok = await crypto.subtle.verify("HMAC", key, mac, enc.encode(`${t}.${raw}`));
  return ok ? null : "X-Edge-Signature does not match the body";
}

// POST /control {"delayMs"?: number, "fail"?: boolean}: fields left out keep their value.
async function setControl(req) {
  const body = parseObject(await req.text());
  const delayOk = body && (body.delayMs === undefined || (Number.isFinite(body.delayMs) && body.delayMs >= 0));
  const failOk = body && (body.fail === undefined || typeof body.fail === "boolean");
  if (!delayOk || !failOk) return error(400, "bad_request", 'want {"delayMs": number >= 0, "fail": boolean}');
  if (body.delayMs !== undefined) control.delayMs = body.delayMs;
  if (body.fail !== undefined) control.fail = body.fail;
  return Response.json(control);
}

// GET /hooks|/state?userId=...: read one user's object for tests.
async function inspect(url, env, read) {
  const userId = url.searchParams.get("userId");
  if (!userId) return error(400, "bad_request", "the userId query parameter is required");
  return Response.json({ userId, ...(await read(user(env, userId))) });
}

function user(env, userId) {
  return env.USER_STATE.get(env.USER_STATE.idFromName(userId));
}

function parseObject(text) {
  try {
    const value = JSON.parse(text);
    return isObject(value) ? value : null;
  } catch {
    return null;
  }
}

function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function error(status, code, message) {
  return Response.json({ error: code, message }, { status });
}

// ---- Frames and filters (platform-protocol.md §5.3, §6.2) ----

const USER_SCOPED = { type: "user-scoped-only" };
const interestedIn = (sessionId) => ({ type: "all-interested-in-session", sessionId });
const machineScoped = (machineId) => ({ type: "machine-scoped-only", machineId });
const ephemeral = (data) => ({ event: "ephemeral", data });
const deliver = (frame, filter) => ({ frame, filter });
// Update and message ids are UUIDs without hyphens, as on the platform.
const newId = () => crypto.randomUUID().replaceAll("-", "");
const INVALID = { ack: { result: "error", message: "Invalid parameters" } };

// `*-alive` times: clamped to now, and ignored (null) when more than 10 minutes old.
function aliveAt(time, now) {
  return time < now - ALIVE_WINDOW_MS ? null : Math.min(time, now);
}

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS account (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL);
  INSERT OR IGNORE INTO account (id, seq) VALUES (1, 0);
  CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, version INTEGER NOT NULL DEFAULT 0, metadata TEXT,
    message_seq INTEGER NOT NULL DEFAULT 0, active_at INTEGER);
  -- UNIQUE treats NULLs as distinct, so messages without a localId never collide.
  CREATE TABLE IF NOT EXISTS messages (
    sid TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL, local_id TEXT,
    content TEXT NOT NULL, created_at INTEGER NOT NULL,
    PRIMARY KEY (sid, seq), UNIQUE (sid, local_id));
  CREATE TABLE IF NOT EXISTS machines (
    id TEXT PRIMARY KEY, version INTEGER NOT NULL DEFAULT 0, daemon_state TEXT, active_at INTEGER);
  CREATE TABLE IF NOT EXISTS hooks (n INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, body TEXT NOT NULL);
`;

// One object per user holds that user's account seq, sessions, messages, machines and hooks.
// Every method runs synchronously on SQLite storage inside one transaction, with no await,
// so concurrent events for a user cannot interleave and seq numbers are exact.
export class UserState extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.sql.exec(SCHEMA);
  }

  // Returns {ack?, deliveries?}; `data` is the frame's data verbatim.
  event(name, data) {
    const handler = Object.hasOwn(EVENTS, name) ? EVENTS[name] : null;
    if (!handler) return { ack: { result: "error", message: `${name} is not implemented by the reference upstream` } };
    return this.ctx.storage.transactionSync(() => handler.call(this, isObject(data) ? data : {}, Date.now()));
  }

  // At-least-once hooks: a repeated id is already recorded, so it is ignored.
  hook(body) {
    this.sql.exec("INSERT OR IGNORE INTO hooks (id, body) VALUES (?, ?)", body.id, JSON.stringify(body));
  }

  hooks() {
    return this.rows("SELECT body FROM hooks ORDER BY n").map((r) => JSON.parse(r.body));
  }

  state() {
    return {
      seq: this.sql.exec("SELECT seq FROM account").one().seq,
      sessions: this.rows(
        "SELECT id, version, metadata, message_seq AS messageSeq, active_at AS activeAt FROM sessions ORDER BY id"),
      messages: this.rows(
        "SELECT sid, seq, id, local_id AS localId, created_at AS createdAt FROM messages ORDER BY sid, seq"),
      machines: this.rows(
        "SELECT id, version, daemon_state AS daemonState, active_at AS activeAt FROM machines ORDER BY id"),
    };
  }

  rows(query, ...params) {
    return this.sql.exec(query, ...params).toArray();
  }

  // An `update` frame: the account seq is bumped for every update, as on the platform.
  update(body, now) {
    const seq = this.sql.exec("UPDATE account SET seq = seq + 1 RETURNING seq").one().seq;
    return { event: "update", data: { id: newId(), seq, body, createdAt: now } };
  }

  // The platform's optimistic concurrency: write `value` only if the client saw the current
  // version. A row that does not exist yet is at version 0 with a null value.
  versioned(table, column, id, value, expectedVersion) {
    const row = this.rows(`SELECT version, ${column} AS value FROM ${table} WHERE id = ?`, id)[0]
      ?? { version: 0, value: null };
    if (row.version !== expectedVersion) return { ok: false, ...row };
    const version = expectedVersion + 1;
    this.sql.exec(
      `INSERT INTO ${table} (id, version, ${column}) VALUES (?, ?, ?)
       ON CONFLICT (id) DO UPDATE SET version = excluded.version, ${column} = excluded.${column}`,
      id, version, value);
    return { ok: true, version, value };
  }

  // Records the latest activity time of a session or machine (never moving it back).
  touch(table, id, at) {
    this.sql.exec(
      `INSERT INTO ${table} (id, active_at) VALUES (?, ?)
       ON CONFLICT (id) DO UPDATE SET active_at = MAX(COALESCE(active_at, 0), excluded.active_at)`,
      id, at);
  }
}

// The implemented §6.3 events, called with `this` = the user's object. Invalid payloads get
// the error ack where the platform has one, and are otherwise silently ignored ({}).
const EVENTS = {
  "session-alive"({ sid, time, thinking }, now) {
    if (typeof sid !== "string" || typeof time !== "number") return {};
    const activeAt = aliveAt(time, now);
    if (activeAt === null) return {};
    this.touch("sessions", sid, activeAt);
    // `thinking` is passed through as sent (omitted when the client left it out).
    return { deliveries: [deliver(ephemeral({ type: "activity", sid, active: true, activeAt, thinking }), USER_SCOPED)] };
  },

  "machine-alive"({ machineId, time }, now) {
    if (typeof machineId !== "string" || typeof time !== "number") return {};
    const activeAt = aliveAt(time, now);
    if (activeAt === null) return {};
    this.touch("machines", machineId, activeAt);
    return { deliveries: [deliver(ephemeral({ type: "machine-activity", machineId, active: true, activeAt }), USER_SCOPED)] };
  },

  message({ sid, message, localId }, now) {
    if (typeof sid !== "string" || typeof message !== "string") return {};
    localId = typeof localId === "string" ? localId : null;
    // A resent message (same localId in the same session) is a silent no-op.
    if (localId !== null && this.rows("SELECT 1 FROM messages WHERE sid = ? AND local_id = ?", sid, localId).length) {
      return {};
    }
    const seq = this.sql.exec(
      `INSERT INTO sessions (id, message_seq) VALUES (?, 1)
       ON CONFLICT (id) DO UPDATE SET message_seq = message_seq + 1 RETURNING message_seq`, sid).one().message_seq;
    const id = newId();
    this.sql.exec("INSERT INTO messages (sid, seq, id, local_id, content, created_at) VALUES (?, ?, ?, ?, ?, ?)",
      sid, seq, id, localId, message, now);
    const body = {
      t: "new-message", sid,
      message: { id, seq, content: { t: "encrypted", c: message }, localId, createdAt: now, updatedAt: now },
    };
    return { deliveries: [deliver(this.update(body, now), interestedIn(sid))] };
  },

  "update-metadata"({ sid, metadata, expectedVersion }, now) {
    if (typeof sid !== "string" || typeof metadata !== "string" || typeof expectedVersion !== "number") return INVALID;
    const w = this.versioned("sessions", "metadata", sid, metadata, expectedVersion);
    const ack = { result: w.ok ? "success" : "version-mismatch", version: w.version, metadata: w.value };
    if (!w.ok) return { ack };
    const body = { t: "update-session", id: sid, metadata: { value: w.value, version: w.version } };
    return { ack, deliveries: [deliver(this.update(body, now), interestedIn(sid))] };
  },

  "machine-update-state"({ machineId, daemonState, expectedVersion }, now) {
    if (typeof machineId !== "string" || typeof daemonState !== "string" || typeof expectedVersion !== "number") {
      return INVALID;
    }
    const w = this.versioned("machines", "daemon_state", machineId, daemonState, expectedVersion);
    const ack = { result: w.ok ? "success" : "version-mismatch", version: w.version, daemonState: w.value };
    if (!w.ok) return { ack };
    const body = { t: "update-machine", machineId, daemonState: { value: w.value, version: w.version }, activeAt: now };
    return { ack, deliveries: [deliver(this.update(body, now), machineScoped(machineId))] };
  },
};
