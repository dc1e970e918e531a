// The Durable Object class of the experiment as RPC needs it: workerd only accepts RPC calls
// on a class that `extends DurableObject`, and the class worker-build generates does not. This
// one holds the generated `EchoCore` and passes `fetch` and the RPC method through to Rust.
import { DurableObject } from "cloudflare:workers";
import * as wasm from "./build/wasm-bundle.js";

export { default } from "./build/wasm-bundle.js";

export class Echo extends DurableObject {
  #core;

  constructor(ctx, env) {
    super(ctx, env);
    this.#core = new wasm.EchoCore(ctx, env);
  }

  fetch(request) {
    return this.#core.fetch(request);
  }

  rpcDeliver(body, shard) {
    return this.#core.rpcDeliver(body, shard);
  }
}
