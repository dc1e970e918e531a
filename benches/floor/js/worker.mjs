// The floor in JavaScript: the same Worker and Durable Object as src/lib.rs, written as the
// platform's single object is (no framework).
import { DurableObject } from "cloudflare:workers";

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/health") return new Response("ok");
    const user = url.searchParams.get("user") ?? "";
    return env.FLOOR.get(env.FLOOR.idFromName(user)).fetch(request);
  },
};

// About the size of the platform's `connected` frame.
const CONNECTED = '{"event":"connected","data":{"connectionId":"c-0000000000000000","timestamp":0}}';

export class Floor extends DurableObject {
  fetch() {
    const pair = new WebSocketPair();
    this.ctx.acceptWebSocket(pair[1]);
    pair[1].send(CONNECTED);
    return new Response(null, { status: 101, webSocket: pair[0] });
  }

  webSocketMessage(ws, message) {
    ws.send(message);
  }

  webSocketClose(ws, code, reason) {
    ws.close(code === 1005 ? 1000 : code, reason);
  }
}
