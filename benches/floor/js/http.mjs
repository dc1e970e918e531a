// The HTTP-only loop's floor (scripts/harness-floor.sh): every call of the platform's
// HTTP-only k6 loop (load-tests/scenarios/lib/http.js) answered at once by the Worker, with
// no Durable Object and no credential check. What the harness measures when the server does
// no work: the latency of k6, wrangler's dev proxy and the runtime themselves on this machine.
const json = (body, status = 200) =>
  new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });

export default {
  async fetch(request) {
    const url = new URL(request.url);
    switch (url.pathname) {
      case "/health":
        return json({ status: "ok", policy: "floor" });
      case "/v1/websocket/stats":
        return json({ totalConnections: 0, shards: [], rejected: 0 });
      case "/v1/websocket/broadcast":
        return json({ delivered: 0 });
      case "/v1/updates":
        // The two refused upgrades: no credential at all (401), a token without Upgrade (426).
        return url.searchParams.has("token") ? new Response("upgrade required", { status: 426 })
          : new Response("unauthorized", { status: 401 });
    }
    if (request.method === "PUT" && url.pathname.startsWith("/admin/users/")) return json({ ok: true });
    return new Response("not found", { status: 404 });
  },
};
