// k6 client of scripts/floor-bench.sh with OP=stats or OP=broadcast (the platform's single
// object and the edge only: the floors have no HTTP API). Two roles, two k6 processes, so the
// script reads the runtime's CPU around the calls alone:
//   ROLE=hold   one socket for each of the TOKENS_FILE users, held HOLD_S seconds (the
//               script stops it earlier), counting the frames they receive;
//   ROLE=call   N calls at RATE a second (open loop), each for one user in turn:
//               GET /v1/websocket/stats, or POST /v1/websocket/broadcast to all of the user's
//               sockets (the fleet shape's self-broadcast).
import ws from "k6/ws";
import http from "k6/http";
import { check } from "k6";
import exec from "k6/execution";
import { Counter } from "k6/metrics";

const held = new Counter("floor_held");
const ok = new Counter("floor_ok");
const tokens = Object.values(JSON.parse(open(__ENV.TOKENS_FILE)));
const base = __ENV.URL;
const role = __ENV.ROLE;
const op = __ENV.OP || "stats";
const rate = Number(__ENV.RATE || 200);
const n = Number(__ENV.N || 4000);

export const options =
  role === "hold"
    ? {
        scenarios: {
          hold: { executor: "per-vu-iterations", vus: tokens.length, iterations: 1, maxDuration: `${Number(__ENV.HOLD_S || 600) + 30}s` },
        },
      }
    : {
        scenarios: {
          calls: {
            executor: "constant-arrival-rate",
            rate: rate,
            timeUnit: "1s",
            duration: `${Math.ceil(n / rate)}s`,
            preAllocatedVUs: 50,
            maxVUs: 200,
          },
        },
        summaryTrendStats: ["med", "p(95)"],
      };

export default function () {
  if (role === "hold") {
    const token = tokens[exec.vu.idInTest - 1];
    ws.connect(`${base.replace(/^http/, "ws")}/v1/updates?token=${encodeURIComponent(token)}`, null, (s) => {
      s.on("open", () => held.add(1));
      s.setTimeout(() => s.close(1000), Number(__ENV.HOLD_S || 600) * 1000);
    });
    return;
  }
  const token = tokens[exec.scenario.iterationInTest % tokens.length];
  const headers = { Authorization: `Bearer ${token}`, "Content-Type": "application/json" };
  const r =
    op === "broadcast"
      ? http.post(`${base}/v1/websocket/broadcast`, JSON.stringify({ message: { type: "bench", payload: { at: Date.now() } } }), { headers })
      : http.get(`${base}/v1/websocket/stats`, { headers });
  if (check(r, { "200": (x) => x.status === 200 })) ok.add(1);
}
