#!/usr/bin/env python3
"""Prints the load's users' stats as one JSON object (scripts/compare.sh samples it).

    user_stats.py BASE_URL TOKENS_FILE

TOKENS_FILE is a JSON object {user id: token}. With one user, its GET /v1/websocket/stats
answer as it is; with several, their answers (fetched concurrently) summed into the same
shape: counts added, shards and failed shards listed together, the oldest connection the
minimum, subrequestsPerFrame recomputed from the sums, and `users` / `usersAnswered` added.
Either way every `shards[]` row gets `user` (whose shard it is), and the users' per-object
load (each answer's `load` object, when the Worker sends one) is kept per user in
`loads` {user id: load}; without any `load` there is no `loads`. Prints `null` when no user
answered. A poll gives up on the users it has not asked after USER_STATS_BUDGET seconds (default
15; they count as not answering), so a saturated gateway cannot hold the runner for minutes.
Standard library only.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

TIMEOUT_S = 4
BUDGET_S = float(os.environ.get("USER_STATS_BUDGET", "15"))
SUMMED = ("totalConnections", "activeSessions", "activeMachines", "memoryUsage", "messageQueueDepth", "rejected",
          "rejectedTierLimit", "rejectedUnavailable", "connectsAccepted", "directoryRoundTrips", "frames",
          "frameSubrequests")


def fetch(base_url: str, token: str, deadline: float) -> dict | None:
    if time.monotonic() > deadline:
        return None
    req = urllib.request.Request(f"{base_url}/v1/websocket/stats", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
            body = json.loads(r.read())
            return body if isinstance(body, dict) else None
    except (OSError, ValueError):
        return None


def annotate(uid: str, answer: dict) -> dict:
    """Marks the answer's shard rows with their user."""
    answer["shards"] = [dict(s, user=uid) for s in answer.get("shards") or [] if isinstance(s, dict)]
    return answer


def loads_of(answers: list[tuple[str, dict]]) -> dict:
    return {uid: a["load"] for uid, a in answers if isinstance(a.get("load"), dict)}


def combine(pairs: list[tuple[str, dict]], users: int) -> dict:
    answers = [a for _, a in pairs]
    out = {k: sum(a.get(k) or 0 for a in answers) for k in SUMMED}
    out["byType"] = {}
    for a in answers:
        for t, n in (a.get("byType") or {}).items():
            out["byType"][t] = out["byType"].get(t, 0) + n
    oldest = [a["oldestConnection"] for a in answers if a.get("oldestConnection")]
    out["oldestConnection"] = min(oldest) if oldest else None
    out["shards"] = [s for a in answers for s in a.get("shards") or []]
    out["failedShards"] = [s for a in answers for s in a.get("failedShards") or []]
    # Imbalance over every user's shards holding sockets (max / mean).
    held = [s.get("connections", 0) for s in out["shards"] if s.get("connections", 0) > 0]
    out["imbalance"] = max(held) / (sum(held) / len(held)) if held else 0
    out["subrequestsPerFrame"] = out["frameSubrequests"] / out["frames"] if out["frames"] else 0
    out["policy"] = answers[0].get("policy")
    out["users"], out["usersAnswered"] = users, len(answers)
    loads = loads_of(pairs)
    if loads:
        out["loads"] = loads
    return out


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    base_url, tokens = sys.argv[1].rstrip("/"), json.loads(open(sys.argv[2]).read())
    deadline = time.monotonic() + BUDGET_S
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(tokens)))) as pool:
        fetched = pool.map(lambda kv: (kv[0], fetch(base_url, kv[1], deadline)), tokens.items())
        pairs = [(uid, annotate(uid, a)) for uid, a in fetched if a is not None]
    if not pairs:
        print("null")
    elif len(tokens) == 1:
        one = pairs[0][1]
        loads = loads_of(pairs)
        if loads:
            one["loads"] = loads
        print(json.dumps(one))
    else:
        print(json.dumps(combine(pairs, len(tokens))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
