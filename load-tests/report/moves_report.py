#!/usr/bin/env python3
"""What a move cost the platform's clients: one `MODE=platform` run's k6 samples (--out csv),
read for issue 21's counts.

    moves_report.py RUN.k6.csv.gz [POLICY [WINDOW_S]] > RUN.moves.md

Prints, per kind where k6 tags one: calls, answers, calls with no answer in 10 s (lost),
"RPC method not available", other errors, calls in flight when the caller's own socket was
closed, late and repeated acks (duplicates), the alive frames apps got and the ones they
never got (by app kind: mobile sends a correlationId, web none), presence flickers (an app told its machine is
offline while the machine's VU held it), and the reconnects: each burst (reconnects no more
than BURST_GAP_S apart) with its span, its peak per second and its mean per second over the
drain window (WINDOW_S, else a rotation's `drain=` from POLICY) and over the burst itself.
"""

from __future__ import annotations

import csv
import gzip
import re
import sys
from collections import Counter, defaultdict

# Reconnects further apart than this belong to different moves.
BURST_GAP_S = 3

COUNTS = [
    ("rpc_calls", "RPC calls (apps)"),
    ("rpc_acks", "answered"),
    ("frames_dropped", "lost: no answer within 10 s"),
    ("rpc_unavailable", "failed: `RPC method not available`"),
    ("rpc_errors", "failed: other error answers"),
    ("rpc_interrupted", "in flight when a web app's own socket closed (its calls end with it)"),
    ("rpc_late_acks", "answered after 10 s"),
    ("frames_misdelivered", "misdelivered or repeated (duplicates)"),
    ("presence_flicker", "presence flickers (machine offline while held)"),
    ("deliveries_checked", "alive frames apps got from their user's sessions and machine"),
    ("deliveries_lost", "lost: never got, between two the app got from the same sender socket"),
    ("ws_reconnects", "reconnects"),
    ("policy_switches", "run-time policy switches"),
]
COUNTED = {name for name, _ in COUNTS}


def read(path: str):
    totals: Counter = Counter()
    by_tag: dict[str, Counter] = defaultdict(Counter)
    reconnect_at: Counter = Counter()
    applied: list[float] = []
    start = None
    with gzip.open(path, "rt", newline="") as f:
        for row in csv.DictReader(f):
            name = row["metric_name"]
            t = float(row["timestamp"])
            start = t if start is None else min(start, t)
            v = float(row["metric_value"])
            if name == "policy_switch_applied_ms":
                applied.append(v)
                continue
            if name not in COUNTED:
                continue
            totals[name] += v
            tags = dict(kv.split("=", 1) for kv in row.get("extra_tags", "").split("&") if "=" in kv)
            tag = tags.get("kind") or tags.get("reason") or tags.get("policy")
            if tag:
                by_tag[name][tag] += v
            if name == "ws_reconnects":
                reconnect_at[int(t)] += int(v)
    return totals, by_tag, reconnect_at, applied, start or 0


def bursts(at: Counter) -> list[tuple[int, int, int, int]]:
    """(first second, last second, total, peak per second) of each burst of reconnects."""
    out: list[list[int]] = []
    for sec in sorted(at):
        if out and sec - out[-1][1] <= BURST_GAP_S:
            out[-1][1] = sec
            out[-1][2] += at[sec]
            out[-1][3] = max(out[-1][3], at[sec])
        else:
            out.append([sec, sec, at[sec], at[sec]])
    return [tuple(b) for b in out]  # type: ignore[misc]


def window_s(policy: str, given: str | None) -> float | None:
    """The drain window: given, or a rotation's `drain=` (s, m, h)."""
    if given:
        return float(given)
    m = re.search(r"drain=(\d+)([smh])", policy)
    if not m:
        return None
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    totals, by_tag, at, applied, start = read(sys.argv[1])
    policy = sys.argv[2] if len(sys.argv) > 2 else ""
    window = window_s(policy, sys.argv[3] if len(sys.argv) > 3 else None)
    print(f"# Moves under MODE=platform{': ' + policy if policy else ''}\n")
    print("| count | total | by kind / reason |\n|---|---|---|")
    for name, label in COUNTS:
        tags = ", ".join(f"{k} {int(v)}" for k, v in sorted(by_tag[name].items()))
        print(f"| {label} (`{name}`) | {int(totals[name])} | {tags} |")
    if applied:
        print(f"\nSwitch applied (PUT to `/health` showing it): max {max(applied):.0f} ms over {len(applied)} switches.")
    w = f"{window:.0f} s" if window else "unknown"
    print(f"\n| reconnect burst (s into the run) | reconnects | peak per second | mean per second over the drain window ({w}) | mean per second over the burst |")
    print("|---|---|---|---|---|")
    for first, last, total, peak in bursts(at):
        span = last - first + 1
        over_window = f"{total / window:.1f}" if window else "-"
        print(f"| {first - int(start)}-{last - int(start)} | {total} | {peak} | {over_window} | {total / span:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
