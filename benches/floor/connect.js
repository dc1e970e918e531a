// k6 client of scripts/floor-bench.sh: N connects at RATE a second (open loop, so every target
// serves the same load and none is driven into saturation), each opens a socket for one of
// USERS users, waits for the first frame (the `connected` frame) and closes: the
// same for the floors (`/ws?user=`) and, with TOKENS_FILE (the token tool's JSON of user ->
// token), for the platform's single object and the edge (`/v1/updates?token=`). CLIENT=session
// opens the fleet's CLI socket instead (session-scoped, one stable session id per user).
import ws from "k6/ws";
import { check } from "k6";
import { Counter } from "k6/metrics";

const greeted = new Counter("floor_greeted");
const tokens = __ENV.TOKENS_FILE ? Object.values(JSON.parse(open(__ENV.TOKENS_FILE))) : null;
const users = tokens ? tokens.length : Number(__ENV.USERS || 200);
const base = __ENV.URL.replace(/^http/, "ws");
const rate = Number(__ENV.RATE || 200);

export const options = {
  scenarios: {
    connects: {
      executor: "constant-arrival-rate",
      rate: rate,
      timeUnit: "1s",
      duration: `${Math.ceil(Number(__ENV.N || 4000) / rate)}s`,
      preAllocatedVUs: 50,
      maxVUs: 200,
    },
  },
  summaryTrendStats: ["med", "p(95)"],
};

export default function () {
  const i = Math.floor(Math.random() * users);
  const session = __ENV.CLIENT === "session" ? `&clientType=session-scoped&sessionId=fs-${i}` : "";
  const url = tokens
    ? `${base}/v1/updates?token=${encodeURIComponent(tokens[i])}${session}`
    : `${base}/ws?user=u${i}${session}`;
  const res = ws.connect(url, null, (s) => {
    s.on("message", () => {
      greeted.add(1);
      s.close(1000);
    });
    s.setTimeout(() => s.close(1000), 5000);
  });
  check(res, { "upgraded (101)": (r) => r && r.status === 101 });
}
