// The Rust floor's entry, as the gateway's scripts/entry.mjs: the object class is a class that
// `extends DurableObject` holding the one worker-build generates, so both floors and the
// gateway share the same shell.
import { DurableObject } from "cloudflare:workers";
import * as wasm from "./build/wasm-bundle.js";

export { default } from "./build/wasm-bundle.js";

export class Floor extends DurableObject {
  #core;

  constructor(ctx, env) {
    super(ctx, env);
    this.#core = new wasm.Floor(ctx, env);
  }

  fetch(request) {
    return this.#core.fetch(request);
  }

  webSocketMessage(ws, message) {
    return this.#core.webSocketMessage(ws, message);
  }

  webSocketClose(ws, code, reason, wasClean) {
    return this.#core.webSocketClose(ws, code, reason, wasClean);
  }
}
