// The Worker's entry module: the worker-build bundle, with each Durable Object class given the
// JavaScript shell it needs.
//
// - RPC. workerd accepts Durable Object RPC only on a class that `extends DurableObject`, and
//   the classes worker-build generates do not. Each object here is such a class holding the
//   generated one, passing its handlers through and exposing `handle(path, shard, body)`, the
//   Rust object's RPC entry (src/runtime/calls.rs): the gateway's internal calls go by RPC,
//   which cost about half the runtime CPU of the Request path (scripts/rpc-bench.sh).
// - The frame guard. The shard's incoming frames are checked against MAX_MESSAGE_BYTES here:
//   workers-rs copies every frame into wasm memory (which never shrinks) before our handler
//   can look at its size, and the runtime only refuses frames past 1 MiB; so an oversized
//   frame is refused with the same error frame and close 1009 as src/routing/envelope.rs and
//   never enters wasm.
//
// scripts/build-worker.sh bundles this file over build/index.js (esbuild) and fails the build
// when the bundle's shape changes. The constants mirror src/config and
// src/routing/envelope.rs; `config::tests::the_frame_guard_matches_the_config` checks them.

import { DurableObject } from "cloudflare:workers";
import * as wasm from "../build/wasm-bundle.js";

export * from "../build/wasm-bundle.js";
import Gateway from "../build/wasm-bundle.js";

// `request.cf`: workers-rs reads it for every request it hands to Rust (worker::Request keeps a
// copy), and the runtime builds that object anew on each read; the gateway never looks at it.
// About 3 % of the runtime's CPU per connect in a profile of 200 connects a second
// (docs/capacity-planning.md). An own property shadows the getter, so nothing is read; a
// request that refuses the property keeps its getter.
if (typeof Gateway?.prototype?.fetch !== "function") {
  throw new Error("entry: the bundle's default export has no fetch; update scripts/entry.mjs");
}
const gatewayFetch = Gateway.prototype.fetch;
Gateway.prototype.fetch = function (request) {
  try {
    Object.defineProperty(request, "cf", { value: undefined });
  } catch {}
  return gatewayFetch.call(this, request);
};
export { Gateway as default };

const CORE = Symbol("core");
const HANDLERS = ["alarm", "webSocketMessage", "webSocketClose", "webSocketError"];

// A class that `extends DurableObject` around the generated class `name`.
function objectClass(name) {
  const Core = wasm[name];
  if (typeof Core !== "function" || typeof Core.prototype?.fetch !== "function"
      || typeof Core.prototype?.handle !== "function") {
    // Fails at startup (and so at deploy), never silently.
    throw new Error(`entry: the bundle's ${name} has no fetch or handle; update scripts/entry.mjs`);
  }
  const Shell = class extends DurableObject {
    constructor(ctx, env) {
      super(ctx, env);
      this[CORE] = new Core(ctx, env);
    }

    fetch(request) {
      return this[CORE].fetch(request);
    }

    handle(path, shard, body) {
      return this[CORE].handle(path, shard, body);
    }
  };
  for (const h of HANDLERS) {
    if (typeof Core.prototype[h] === "function") {
      Shell.prototype[h] = function (...args) {
        return this[CORE][h](...args);
      };
    }
  }
  return Shell;
}

export const Registry = objectClass("Registry");
export const Revocations = objectClass("Revocations");
export const Control = objectClass("Control");
const Shard = objectClass("ConnectionManager");
if (typeof Shard.prototype.webSocketMessage !== "function") {
  throw new Error("entry: the bundle has no ConnectionManager.webSocketMessage; update scripts/entry.mjs");
}

const DEFAULT_MAX_MESSAGE_BYTES = 65536;
const MIN_MESSAGE_BYTES = 128;
const MAX_MESSAGE_BYTES_CAP = 1048576;
const MESSAGE_TOO_BIG = 1009;

// The configured limit, as src/config reads it; null (leave it to the wasm side, which
// reports the configuration error) when it does not parse.
function limitOf(env) {
  const raw = env?.MAX_MESSAGE_BYTES;
  if (raw === undefined || raw === null) return DEFAULT_MAX_MESSAGE_BYTES;
  const text = String(raw).trim();
  if (!/^\d{1,10}$/.test(text)) return null;
  const n = Number(text);
  return n >= MIN_MESSAGE_BYTES && n <= MAX_MESSAGE_BYTES_CAP ? n : null;
}

// UTF-8 length of a string as Rust will hold it (a lone surrogate becomes U+FFFD, 3 bytes).
function utf8Length(s) {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

function sizeOf(message, max) {
  if (typeof message === "string") {
    // At most 3 bytes per UTF-16 unit, at least 1: most frames need no count.
    return message.length * 3 <= max ? 0 : utf8Length(message);
  }
  return message?.byteLength ?? 0;
}

function refuse(ws, size, max) {
  const frame = {
    event: "error",
    data: {
      code: MESSAGE_TOO_BIG,
      message: `frame is ${size} bytes; MAX_MESSAGE_BYTES is ${max}`,
      timestamp: Date.now(),
    },
  };
  try {
    ws.send(JSON.stringify(frame));
  } catch {}
  try {
    ws.close(MESSAGE_TOO_BIG, "message too big");
  } catch {
    try {
      ws.close(1000, "message too big");
    } catch {}
  }
}

export class ConnectionManager extends Shard {
  #max;

  constructor(state, env) {
    super(state, env);
    this.#max = limitOf(env);
  }

  webSocketMessage(ws, message) {
    const max = this.#max;
    if (max !== null) {
      const size = sizeOf(message, max);
      if (size > max) {
        refuse(ws, size, max);
        return;
      }
    }
    return super.webSocketMessage(ws, message);
  }
}
