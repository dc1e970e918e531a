#!/usr/bin/env python3
"""Writes the policy-comparison report from one scripts/compare.sh run.

    compare_report.py RUN_DIR OUT_DIR

RUN_DIR (load-tests/out/compare-MODE[-SHAPE]-STAMP/) holds run.json and, per policy NN-slug:
  .meta.json       policy, k6 exit code, times, workerd RSS idle and at the end, the runtime's
                   CPU seconds during the load, the users' final stats
  .summary.json    k6 --summary-export (end-of-test aggregates, threshold results)
  .k6.csv.gz       k6 --out csv (every sample, for time windows and per-tag percentiles)
  .samples.jsonl   the runner's samples every few seconds: workerd RSS, k6 VUs, the users' stats
  .storage.json    the Durable Objects the run left and their storage rows (do_storage.py)
OUT_DIR gets BASE.md in the capacity guide's "Test Results Template" form, its charts
(BASE-*.svg, matplotlib) and BASE.json (the headline figures per policy, for scripts), where
BASE is MODE-DATE, or MODE-SHAPE-DATE for the churn, http and fleet shapes (MODE-fleet-open-DATE
for the fleet's open loop). The policy `baseline` (the single-object baseline) gets a table of
edge/baseline ratios and a chart of its own. Per-object load (stats `load`, objects.py) shows
n/a while the Worker does not report it. Every figure comes from those files; nothing is typed in.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import json
import re
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import charts  # noqa: E402
import objects  # noqa: E402

WINDOW_S = 10  # time-window width for degradation points
MIB = 1024 * 1024

# The guide's targets per threshold set (ms, or a fraction for rates), used for degradation
# points; k6 enforces the same numbers as thresholds in the scenario.
TARGETS = {
    "standard": {"connect": 2000, "ping": 100, "broadcast": 500},
    "extreme": {"connect": 5000, "ping": 500, "broadcast": 2000},
}
EXTREME_MODES = {"extreme", "spikeExtreme", "quick", "platform"}
BASELINE = "baseline"
HTTP_P95_MS = 300  # the platform's HTTP-only threshold
HTTP_OPS = ["stats", "broadcast_all", "broadcast_user_scoped", "broadcast_session", "broadcast_machine",
            "upgrade_no_token", "upgrade_plain"]
MODE_SHAPES = {
    "smoke": "10 VUs for 30 s",
    "scale": "ramp to 120 VUs in three 30 s steps, 90 s at 120 (3 min)",
    "sustained": "30 s ramp to 100 VUs, 6.5 min at 100 (7 min)",
    "stress": "ramp to 200 VUs in 1 min, 3 min at 200 (4 min)",
    "extreme": "gradual ramp to 750 VUs (+100 per minute, last step +150), 3 min at 750 (10 min)",
    "spikeExtreme": "50 VUs, a 10 s burst to 600, 170 s at 600, drop to 50 (5 min)",
    "quick": "compressed extreme: +150 VUs every 20 s to 750, 40 s at 750 (2 min 20 s)",
    "platform": "every user's machine, sessions and apps: a ramp to the peak, then a hold",
}
FLEET_TEXT = ("the production shape (`SHAPE=fleet`): every user has an app socket (user-scoped) and every other user "
              "a CLI session socket too (session-scoped, one stable session id per user). Each socket is held 3-10 s "
              "(random), pings every 2 s (exact `{\"event\":\"ping\"}`, timed by its pong), records the broadcasts it "
              "receives, closes and comes back after 0.5-2 s. Beside them, at constant arrival rates, each user calls "
              "stats every 10 s and broadcasts to itself every 15 s (the users in turn); a broadcast is timed by its "
              "receipt on the user's own open sockets (defaults; the k6 log's setup line has the run's values)")
ARRIVAL_TEXT = {
    "closed": "Closed loop (`ARRIVAL=closed`): one VU per client over the mode's stages scaled to the fleet's clients, "
              "so how many connects a target gets depends on how fast it answers",
    "open": "Open loop (`ARRIVAL=open`): sockets started at a constant rate (k6 `constant-arrival-rate`, `CONNECT_RATE`), "
            "each of the next client in turn, so every target gets the same connects whatever its speed; a socket k6 "
            "could not start on time counts in dropped iterations",
}
SHAPE_TEXT = {
    "steady": "one socket per VU held for the whole run. Client mix 60% session-scoped (VUs in blocks of 5 share a "
              "session id), 25% user-scoped, 15% machine-scoped; ping every 5 s (exact `{\"event\":\"ping\"}`, "
              "answered by auto-response); an HTTP broadcast to all of the user's sockets every 2 s; client "
              "`broadcast` frames from every 150th VU every 15 s; stats polled every 5 s. Rejected connects are "
              "retried honouring `Retry-After` with capped (10 s) exponential backoff and full jitter, so rejection "
              "rates count retries too. `reconnect` frames are followed (reconnection time = hint to new "
              "`connected` frame)",
    "churn": "the platform's own k6 loop (`SHAPE=churn`): every iteration opens a socket (70% user-scoped, 15% "
             "session-scoped, 15% machine-scoped, ids new per iteration), pings at open, three more pings 2 s later, "
             "closes at 5 s; then every 10th VU posts an unfiltered HTTP broadcast, every 20th three filtered ones "
             "(`user-scoped-only`, `session`, `machine`), every 2nd (extreme modes; else every 5th) calls stats; "
             "0.5 s pause. No retries: a refused connect is counted and the loop goes on. Broadcast delivery is "
             "timed at the receiving sockets from the send time in the payload",
    "http": "the platform's HTTP-only loop (`SHAPE=http`): 100 VUs each calling stats, four broadcasts "
            "(unfiltered, `user-scoped-only`, `session`, `machine`) and two refused upgrades (no credential: 401; "
            "no `Upgrade`: 426), then 0.3 s pause; no socket is opened",
    "platform": "`MODE=platform`: per user one machine (machine-scoped, `m-<user>`), sessions (session-scoped, "
                "`s-<user>-<k>`) and apps (user-scoped), one VU each holding its socket. Sessions send `session-alive` "
                "every 2-2.5 s, machines `machine-alive` every 20-25 s; both answer every `rpc-request` at once with "
                "their shard and an echo of the params. Apps call `<machineId>:bash` and `<sessionId>:permission` in "
                "turn (default every 2 s each); an ack not back within 10 s is dropped, an ack or forwarded frame "
                "that is not the app's own is misdelivered. Stats polled every 5 s, one user per poll",
}


def _slope(pts: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x; None for fewer than 3 points or no spread in x."""
    if len(pts) < 3:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx > 0 else None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    # k6's percentile: linear interpolation between closest ranks.
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def p95(values: list[float]) -> float | None:
    return percentile(values, 0.95)


def ms(v: float | None) -> str:
    if v is None:
        return "n/a"
    if v >= 1000:
        return f"{v / 1000:.2f}".rstrip("0").rstrip(".") + " s"
    return f"{v:.0f} ms"


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.1f}%"


def mib(kb: float | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:.0f} MiB"


def mmss(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 60:02d}:{s % 60:02d}"


def upstream_from_metrics(text: str) -> dict | None:
    """The gateway's upstream figures from its /metrics at the end of a run: calls by result
    and the latency histogram summed over tiers and events (None when nothing went upstream)."""
    results: dict[str, float] = {}
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        m = re.match(r'^(edge_upstream_requests_total|edge_upstream_latency_ms_bucket)\{(.*)\} ([0-9.eE+-]+)$', line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        v = float(m.group(3))
        if m.group(1) == "edge_upstream_requests_total":
            results[labels.get("result", "?")] = results.get(labels.get("result", "?"), 0) + v
        else:
            le = float("inf") if labels.get("le") == "+Inf" else float(labels.get("le", "inf"))
            buckets[le] = buckets.get(le, 0) + v
    calls = sum(results.values())
    if not calls:
        return None
    return {"calls": {k: int(v) for k, v in sorted(results.items())},
            "latency_ms": {"p50": histogram_quantile(buckets, 0.5), "p95": histogram_quantile(buckets, 0.95)}}


def histogram_quantile(buckets: dict[float, float], q: float) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket that holds the rank."""
    les = sorted(buckets)
    total = buckets[les[-1]] if les else 0
    if not total:
        return None
    rank, lo, below = q * total, 0.0, 0.0
    for le in les:
        n = buckets[le]
        if n >= rank:
            if le == float("inf"):
                return lo
            return lo + (le - lo) * ((rank - below) / (n - below) if n > below else 1)
        lo, below = le, n
    return lo


class Policy:
    """Everything measured for one policy."""

    def __init__(self, run_dir: Path, slug: str):
        self.slug = slug
        self.meta = json.loads((run_dir / f"{slug}.meta.json").read_text())
        self.name = self.meta["policy"]
        sp = run_dir / f"{slug}.summary.json"
        self.summary = json.loads(sp.read_text()) if sp.exists() else {"metrics": {}}
        self.m = self.summary.get("metrics", {})
        self.samples = []
        samples_path = run_dir / f"{slug}.samples.jsonl"
        if samples_path.exists():
            for line in samples_path.read_text().splitlines():
                if line.strip():
                    self.samples.append(json.loads(line))
        self.series: dict[str, list[tuple[float, float, dict]]] = {}
        csv_path = run_dir / f"{slug}.k6.csv.gz"
        if csv_path.exists():
            self._read_csv(csv_path)
        mp = run_dir / f"{slug}.metrics.txt"
        self.upstream = upstream_from_metrics(mp.read_text()) if mp.exists() else None
        sp = run_dir / f"{slug}.storage.json"
        try:
            self.storage = json.loads(sp.read_text()) if sp.exists() else None
        except ValueError:
            self.storage = None
        # Each user's per-object load (stats `load`), at its most advanced observation.
        self.loads = objects.user_loads(self.samples, self.meta.get("final_stats"))
        self.load = objects.load_figures(self.loads)
        self._windows: list[dict] | None = None
        self.t0 = min([t for rows in self.series.values() for t, _, _ in rows[:1]] + [s["t"] for s in self.samples[:1]]
                      or [self.meta["start"]])

    WANTED = {"ws_connection_success", "do_connection_rejection_rate", "ws_connection_errors",
              "ws_message_latency", "ws_connection_time", "ws_broadcast_delivery_time", "do_response_time",
              "ws_broadcasts_received", "ws_reconnection_time", "ws_reconnects", "vus", "do_connections_rejected",
              "ws_sockets_opened", "ws_sockets_closed", "http_req_duration", "http_op_duration",
              "rpc_round_trip", "forward_delivery_time", "frames_misdelivered", "frames_dropped"}

    def _read_csv(self, path: Path) -> None:
        with gzip.open(path, "rt", newline="") as f:
            for row in csv.DictReader(f):
                name = row["metric_name"]
                if name not in self.WANTED:
                    continue
                tags = dict(kv.split("=", 1) for kv in row.get("extra_tags", "").split("&") if "=" in kv)
                if row.get("status"):
                    tags["status"] = row["status"]
                self.series.setdefault(name, []).append((float(row["timestamp"]), float(row["metric_value"]), tags))

    # -- aggregates from the k6 summary ------------------------------------------------

    def stat(self, metric: str, key: str) -> float | None:
        v = self.m.get(metric, {}).get(key)
        return None if v is None else float(v)

    def count(self, metric: str) -> int:
        return int(self.m.get(metric, {}).get("count", 0) or 0)

    @property
    def attempts(self) -> int:
        r = self.m.get("ws_connection_success", {})
        return int(r.get("passes", 0)) + int(r.get("fails", 0))

    def p95_after_start(self, metric: str) -> float | None:
        """p95 of a Trend's samples after the run's first window: the start, when every user's
        object is created, weighs on the whole run's p95 but says little of steady work."""
        return p95([v for t, v, _ in self.series.get(metric, []) if t >= self.t0 + WINDOW_S])

    def worst_window_p95(self, key: str) -> float | None:
        """The highest p95 of one window after the first (`key`: connect, ping, broadcast,
        stats): a burst of work that the whole run's p95 averages away shows here."""
        return max((w[key + "_p95"] for w in self.windows()[1:] if w[key + "_p95"] is not None), default=None)

    def tagged(self, metric: str, **want: str) -> list[float]:
        return [v for _, v, tags in self.series.get(metric, []) if all(tags.get(k) == x for k, x in want.items())]

    def pctl(self, metric: str, q: float, **want: str) -> float | None:
        """A percentile of a Trend over the samples with the given tags (from the time series)."""
        return percentile(self.tagged(metric, **want), q)

    def by_tag(self, metric: str, tag: str) -> dict[str, int]:
        """A Counter's total per value of one tag."""
        out: dict[str, int] = {}
        for _, v, tags in self.series.get(metric, []):
            out[tags.get(tag, "?")] = out.get(tags.get(tag, "?"), 0) + int(v)
        return out

    def rate(self, metric: str) -> float | None:
        """A Counter's per-second rate over the whole test (k6's own figure)."""
        return self.stat(metric, "rate")

    # -- cost: the runtime's CPU and memory ------------------------------------------------

    @property
    def is_baseline(self) -> bool:
        return self.name == BASELINE

    @property
    def completed_connects(self) -> int:
        """Connects that got their `connected` frame."""
        return int(self.m.get("ws_connection_success", {}).get("passes", 0))

    @property
    def cpu_s(self) -> float | None:
        """The runtime workerd's CPU seconds (user + system) from the start to the end of the load."""
        v = self.meta.get("cpu_runtime_s")
        return None if v is None else float(v)

    def cpu_ms_per(self, n: int | None) -> float | None:
        return self.cpu_s * 1000 / n if self.cpu_s is not None and n else None

    def frames_sample(self) -> dict | None:
        """The sample with the most routed frames (stats `frames` counts per live shard, so it
        is read while the load runs, not after it), if it has the runtime's CPU reading."""
        start = self.meta.get("cpu_start") or {}
        best = None
        for s in self.samples:
            st = s.get("stats")
            frames = st.get("frames") if isinstance(st, dict) else None
            if isinstance(frames, (int, float)) and frames > 0 and (best is None or frames > best["stats"]["frames"]):
                best = s
        if best is None or not start.get("pid") or best.get("cpu_pid") != start.get("pid"):
            return None
        return best

    @property
    def frames_routed(self) -> int | None:
        """Client frames the users' shards routed, up to the sample with the most of them."""
        s = self.frames_sample()
        return int(s["stats"]["frames"]) if s else None

    def cpu_ms_per_frame(self) -> float | None:
        """The runtime's CPU from the start of the load to that sample, per routed frame."""
        s = self.frames_sample()
        if not s:
            return None
        cpu_s = (s["cpu_ticks"] - self.meta["cpu_start"]["ticks"]) / float(self.meta.get("clk_tck") or 100)
        return cpu_s * 1000 / s["stats"]["frames"]

    def subrequests_per_frame(self) -> float | None:
        s = self.frames_sample()
        return s["stats"].get("subrequestsPerFrame") if s else None

    @property
    def runtime_faults(self) -> int | None:
        """Lines of the workerd log that mean a bug of ours or a runtime restart (compare.sh)."""
        v = self.meta.get("runtime_faults")
        return None if v is None else int(v)

    @property
    def rss_end_kb(self) -> float | None:
        return self.meta.get("end_rss_runtime_kb") or None

    def thresholds(self) -> list[tuple[str, str, bool]]:
        out = []
        for metric, body in sorted(self.m.items()):
            for expr, failed in (body.get("thresholds") or {}).items():
                out.append((metric, expr, bool(failed)))  # summary-export: true = failed
        return out

    # -- server-side samples -------------------------------------------------------------

    def loaded_samples(self) -> list[dict]:
        """Samples with stats until the end-of-test closes start (connections falling below
        half of the maximum so far), so RSS-vs-connections lines do not run back to zero."""
        out, most = [], 0
        for s in self.samples:
            if not isinstance(s.get("stats"), dict) or not s.get("rss_runtime_kb"):
                continue
            c = s["stats"].get("totalConnections", 0)
            if most and c < most / 2:
                break
            most = max(most, c)
            out.append(s)
        return out

    def dropped(self) -> int:
        """Sockets the server dropped (not closed by the client or a rotation)."""
        return sum(1 for _, _, t in self.series.get("ws_connection_errors", []) if t.get("kind") == "dropped")

    def peak_shards(self) -> list[dict]:
        """The per-shard rows of the peak stats sample."""
        s = self.peak_sample()
        return s["stats"].get("shards", []) if s else []

    def peak_sample(self) -> dict | None:
        with_stats = [s for s in self.samples if isinstance(s.get("stats"), dict)]
        if not with_stats:
            return None
        return max(with_stats, key=lambda s: (s["stats"].get("totalConnections", 0), -s["t"]))

    def _client_open(self) -> tuple[dict[int, int], int | None]:
        """Open sockets per second from k6's own counters (opened - closed), and the second
        from which they stop being exact: k6 interrupts VUs it removes on a ramp-down without
        letting them count the close, so after the VU count first falls the server's samples
        are used instead."""
        if "_open" not in self.__dict__:
            delta: dict[int, int] = {}
            for name, sign in (("ws_sockets_opened", 1), ("ws_sockets_closed", -1)):
                for t, v, _ in self.series.get(name, []):
                    delta[int(t)] = delta.get(int(t), 0) + sign * int(v)
            open_at, n = {}, 0
            if delta:
                for sec in range(min(delta), max(delta) + 1):
                    n += delta.get(sec, 0)
                    open_at[sec] = n
            exact_until, most = None, 0
            for t, v, _ in self.series.get("vus", []):
                if v < most:
                    exact_until = int(t)
                    break
                most = max(most, v)
            self._open = (open_at, exact_until)
        return self._open

    def connections_at(self, t: float) -> int | None:
        """Open connections at time t: k6's exact per-second count while it is exact,
        otherwise the server's count interpolated between the runner's samples."""
        open_at, exact_until = self._client_open()
        if open_at and (exact_until is None or t < exact_until):
            sec = min(max(int(t), min(open_at)), max(open_at))
            return open_at[sec]
        return self.server_connections_at(t)

    def server_connections_at(self, t: float) -> int | None:
        """Server-side connections at time t, interpolated between the runner's samples."""
        pts = [(s["t"], s["stats"].get("totalConnections", 0)) for s in self.samples if isinstance(s.get("stats"), dict)]
        if not pts:
            return None
        if t <= pts[0][0]:
            return pts[0][1]
        for (t0, c0), (t1, c1) in zip(pts, pts[1:]):
            if t0 <= t <= t1:
                return round(c0 + (c1 - c0) * (t - t0) / (t1 - t0)) if t1 > t0 else c1
        return pts[-1][1]

    def vus_at(self, t: float) -> int | None:
        best = None
        for s in self.samples:
            if s["t"] <= t + 0.5 and s.get("vus") is not None:
                best = s["vus"]
        return best

    def bytes_per_connection(self) -> tuple[float | None, float | None, float | None]:
        """(runtime RSS delta / peak connections, same incl. the dev proxy, least-squares
        slope of runtime RSS over connections during the ramp), in bytes. The slope leaves out
        fixed costs (isolate start, first objects) and what happens after the peak (e.g. RSS
        growing from rejected-connect churn while connections stay flat)."""
        peak = self.peak_sample()
        if not peak:
            return None, None, None
        conns = peak["stats"].get("totalConnections", 0)
        idle_rt = self.meta.get("idle_rss_runtime_kb") or 0
        idle_px = self.meta.get("idle_rss_proxy_kb") or 0
        if conns <= 0:
            return None, None, None
        rt = (peak["rss_runtime_kb"] - idle_rt) * 1024 / conns
        total = (peak["rss_runtime_kb"] + peak["rss_proxy_kb"] - idle_rt - idle_px) * 1024 / conns
        pts = []
        for s in self.loaded_samples():
            pts.append((s["stats"]["totalConnections"], s["rss_runtime_kb"] * 1024))
            if s["stats"]["totalConnections"] >= conns:
                break  # the ramp ends at the first sample at peak
        return rt, total, _slope(pts)

    def hold_memory(self) -> dict | None:
        """workerd RSS while the load holds at its peak (samples with at least 98 % of the
        peak's connections, from the first to the last such sample): first and last values
        and the least-squares trend of runtime RSS, over the whole hold and over its second
        half, in KiB per minute. Flat memory means the trend is near zero, not the absolute."""
        peak = self.peak_sample()
        if not peak:
            return None
        level = 0.98 * peak["stats"].get("totalConnections", 0)
        at_peak = [i for i, s in enumerate(self.samples) if isinstance(s.get("stats"), dict)
                   and s.get("rss_runtime_kb") and s["stats"].get("totalConnections", 0) >= level]
        if len(at_peak) < 4:
            return None
        hold = [s for s in self.samples[at_peak[0]: at_peak[-1] + 1] if s.get("rss_runtime_kb")]

        def trend(rows: list[dict]) -> float | None:
            return _slope([(s["t"] / 60, float(s["rss_runtime_kb"])) for s in rows])
        return {"seconds": hold[-1]["t"] - hold[0]["t"],
                "runtime_first_kb": hold[0]["rss_runtime_kb"], "runtime_last_kb": hold[-1]["rss_runtime_kb"],
                "runtime_trend_kb_per_min": trend(hold),
                "runtime_trend_second_half_kb_per_min": trend(hold[len(hold) // 2:]),
                "proxy_first_kb": hold[0].get("rss_proxy_kb"), "proxy_last_kb": hold[-1].get("rss_proxy_kb")}

    # -- time windows ----------------------------------------------------------------------

    def windows(self) -> list[dict]:
        """The run in WINDOW_S windows, computed once (several figures read them)."""
        if self._windows is None:
            self._windows = self._compute_windows()
        return self._windows

    def _compute_windows(self) -> list[dict]:
        if not self.series:
            return []
        end = max(t for rows in self.series.values() for t, _, _ in rows[-1:])
        n = int((end - self.t0) // WINDOW_S) + 1
        ws = [{"start": self.t0 + i * WINDOW_S, "attempts": 0, "rejected": 0, "dropped": 0, "failed": 0,
               "first_rejected": None, "first_dropped": None, "first_failed": None,
               "ping": [], "connect": [], "broadcast": [], "stats": []} for i in range(n)]

        def at(t: float) -> dict:
            return ws[min(n - 1, max(0, int((t - self.t0) // WINDOW_S)))]
        for t, v, _ in self.series.get("do_connection_rejection_rate", []):
            w = at(t)
            w["attempts"] += 1
            if v > 0:
                w["rejected"] += 1
                w["first_rejected"] = min(t, w["first_rejected"] or t)
        for t, _, tags in self.series.get("ws_connection_errors", []):
            kind = tags.get("kind", "")
            key = "dropped" if kind == "dropped" else "failed" if kind != "rejected" else None
            if key:
                w = at(t)
                w[key] += 1
                w["first_" + key] = min(t, w["first_" + key] or t)
        for metric, key in (("ws_message_latency", "ping"), ("ws_connection_time", "connect"),
                            ("ws_broadcast_delivery_time", "broadcast"), ("do_response_time", "stats")):
            for t, v, _ in self.series.get(metric, []):
                at(t)[key].append(v)
        for w in ws:
            mid = w["start"] + WINDOW_S / 2
            w["connections"] = self.connections_at(mid)
            w["vus"] = self.vus_at(mid)
            for key in ("ping", "connect", "broadcast", "stats"):
                w[key + "_p95"] = p95(w[key])
            w["rejection_rate"] = w["rejected"] / w["attempts"] if w["attempts"] else None
        return ws


def _when(w: dict, event: str | None) -> float:
    """When a degradation showed: the first such event, or the window's middle for a p95."""
    return (w.get(event) if event else None) or (w["start"] + WINDOW_S / 2)


def _checks(targets: dict) -> list[tuple[str, object, object, str | None]]:
    """(label, is-degraded(window), describe(window), event key for the exact time)."""
    return [
        ("rejection rate above 5% (alert: warning)", lambda w: (w["rejection_rate"] or 0) > 0.05,
         lambda w: f"{pct(w['rejection_rate'])} of {w['attempts']} connects rejected", "first_rejected"),
        ("rejection rate above 20% (alert: critical)", lambda w: (w["rejection_rate"] or 0) > 0.20,
         lambda w: f"{pct(w['rejection_rate'])} of {w['attempts']} connects rejected", "first_rejected"),
        (f"ping p95 above {targets['ping']} ms (target)", lambda w: (w["ping_p95"] or 0) > targets["ping"],
         lambda w: f"ping p95 {ms(w['ping_p95'])}", None),
        ("ping p95 above 2 s (alert: critical)", lambda w: (w["ping_p95"] or 0) > 2000,
         lambda w: f"ping p95 {ms(w['ping_p95'])}", None),
        (f"connect p95 above {ms(targets['connect'])} (target)", lambda w: (w["connect_p95"] or 0) > targets["connect"],
         lambda w: f"connect p95 {ms(w['connect_p95'])}", None),
        (f"broadcast delivery p95 above {ms(targets['broadcast'])} (target)",
         lambda w: (w["broadcast_p95"] or 0) > targets["broadcast"], lambda w: f"broadcast p95 {ms(w['broadcast_p95'])}", None),
        ("stats (DO) response p95 above 1 s (alert: warning)", lambda w: (w["stats_p95"] or 0) > 1000,
         lambda w: f"stats p95 {ms(w['stats_p95'])}", None),
        ("sockets dropped by the server", lambda w: w["dropped"] > 0, lambda w: f"{w['dropped']} sockets dropped in 10 s",
         "first_dropped"),
        ("connects failed (not 101, not 429/503)", lambda w: w["failed"] > 0,
         lambda w: f"{w['failed']} connects failed in 10 s", "first_failed"),
    ]


def degradation_points(p: Policy, targets: dict, cap: int) -> list[str]:
    """First window in which each kind of degradation shows, with the load at that time."""
    ws = p.windows()
    found = []
    for label, hit, describe, event in _checks(targets):
        first = next((w for w in ws if hit(w)), None)
        if first is None:
            continue
        t = _when(first, event)
        conns, vus = p.connections_at(t), p.vus_at(t)
        found.append((t, f"At {conns if conns is not None else '?'} connections ({vus if vus is not None else '?'} VUs, "
                         f"t={mmss(t - p.t0)}): {label}: {describe(first)}"))
    over = [s for s in p.samples if isinstance(s.get("stats"), dict)
            and any(x.get("connections", 0) > 400 for x in s["stats"].get("shards", []))]
    if over:
        s = over[0]
        found.append((s["t"], f"At {s['stats']['totalConnections']} connections (t={mmss(s['t'] - p.t0)}): a shard held "
                              "more than 400 sockets (alert: warning)"))
    # The baseline has no per-object cap: its one object passing the edge's cap is no event.
    full = None if p.is_baseline else next((s for s in p.samples if isinstance(s.get("stats"), dict)
                 and any(x.get("connections", 0) >= cap for x in s["stats"].get("shards", []))), None)
    if full is not None:
        shards = full["stats"].get("shards", [])
        n_full = sum(1 for x in shards if x.get("connections", 0) >= cap)
        found.append((full["t"], f"At {full['stats']['totalConnections']} connections (t={mmss(full['t'] - p.t0)}): "
                                 f"first shard at the per-object cap ({n_full} of {len(shards)} shard(s) at {cap}); "
                                 "its new sockets must spill to another candidate or are refused"))
    return [text for _, text in sorted(found, key=lambda x: x[0])]


def healthy_up_to(p: Policy, targets: dict) -> int | None:
    """Connections when the first target broke (or 5% rejections), else the peak."""
    ws = p.windows()
    if not ws:
        return None
    bad_times = []
    for _, hit, _, ev in _checks(targets):
        first = next((w for w in ws if hit(w)), None)
        if first is not None:
            bad_times.append(_when(first, ev))
    if not bad_times:
        peak = p.peak_sample()
        return peak["stats"]["totalConnections"] if peak else None
    return p.connections_at(min(bad_times))


class Run:
    """One comparison: its settings and every policy's measurements."""

    def __init__(self, run_dir: Path, out_dir: Path):
        self.run_dir, self.out_dir = run_dir, out_dir
        self.info = json.loads((run_dir / "run.json").read_text())
        self.mode = self.info["mode"]
        self.shape = self.info.get("shape", "steady")
        self.tset = "extreme" if self.mode in EXTREME_MODES else "standard"
        self.targets = TARGETS[self.tset]
        self.cap = int(self.info["shard_max_connections"])
        slugs = sorted(p.name[: -len(".meta.json")] for p in run_dir.glob("*.meta.json"))
        self.policies = [Policy(run_dir, s) for s in slugs]
        self.edge = [p for p in self.policies if not p.is_baseline]
        self.baseline = next((p for p in self.policies if p.is_baseline), None)
        start = self.policies[0].meta["start"] if self.policies else 0
        self.date = dt.datetime.fromtimestamp(start).strftime("%Y-%m-%d")
        self.upstream = self.info.get("upstream", "off")
        via = {"service": "-upstream", "failing": "-upstream-failing"}.get(self.upstream, "")
        shape = "" if self.shape == "steady" else f"-{self.shape}"
        self.arrival = self.info.get("arrival") or "closed"
        if self.arrival != "closed":
            shape += f"-{self.arrival}"
        tag = f"-{self.info['report_name']}" if self.info.get("report_name") else ""
        self.base = f"{self.mode}{shape}{via}{tag}-{self.date}"

    @property
    def label(self) -> str:
        """The mode, and the shape when it is not the default, for chart titles."""
        if self.shape == "steady":
            return self.mode
        return f"{self.mode}, {self.shape}" + (f", {self.arrival} loop" if self.shape == "fleet" else "")

    @property
    def any_load(self) -> bool:
        """Whether any policy's stats carried per-object load."""
        return any(p.load for p in self.policies)

    @property
    def traffic(self) -> str:
        """What the VUs did: the platform mode, else the shape."""
        return "platform" if self.mode == "platform" else self.shape

    def http_ops(self) -> list[str]:
        """The HTTP operations any policy timed, in the scenario's order."""
        return [op for op in HTTP_OPS if any(p.tagged("http_op_duration", op=op) for p in self.policies)]


def peak_conns(p: Policy) -> int | None:
    s = p.peak_sample()
    return s["stats"]["totalConnections"] if s else None


def _cpu(p: Policy, per: int | None) -> str:
    v = p.cpu_ms_per(per)
    return "n/a" if v is None else f"{v:.2f} ms"


def socket_rows(run: Run, row) -> None:
    """Connections, rejections and the socket-side latencies."""
    row("Peak Connections (server count)", lambda p: str(peak_conns(p) if peak_conns(p) is not None else "n/a"))
    row("Peak VUs (k6)", lambda p: str(int(p.stat("vus", "max") or 0)))
    row("**Rejection Rate** (429/503 per connect attempt)", lambda p: pct(p.stat("do_connection_rejection_rate", "value")))
    row("Rejected connects / attempts", lambda p: f"{p.count('do_connections_rejected')} / {p.attempts}")
    row("Rejections counted by the gateway (stats `rejected`, last poll)", lambda p: str(int(p.stat("do_stats_rejected", "max") or 0)))
    row("Rejections by status and error code", lambda p: ", ".join(
        f"{c} x{n}" for c, n in sorted(_counts(p).items())) or "none")
    row("Connection errors (rejected + failed + dropped)", lambda p: str(p.count("ws_connection_errors")))
    row("Sockets dropped by the server", lambda p: str(p.dropped()))
    row("Connection success rate", lambda p: pct(p.stat("ws_connection_success", "value")))
    row("**p95 Latency**: connect (ws_connection_time)", lambda p: ms(p.stat("ws_connection_time", "p(95)")))
    if run.traffic != "platform":  # no pings or broadcasts there
        row("**p95 Latency**: ping round trip (ws_message_latency)", lambda p: ms(p.stat("ws_message_latency", "p(95)")))
        row("**p95 Latency**: broadcast delivery (ws_broadcast_delivery_time)",
            lambda p: ms(p.stat("ws_broadcast_delivery_time", "p(95)")))
        row("p95 broadcast delivery: HTTP / client frame", lambda p: f"{ms(p95(p.tagged('ws_broadcast_delivery_time', via='http')))}"
            f" / {ms(p95(p.tagged('ws_broadcast_delivery_time', via='client')))}")
        row("HTTP broadcasts received / delivered (server count)", lambda p: _ratio(
            len(p.tagged("ws_broadcasts_received", via="http")), p.count("ws_broadcast_delivered")))
    row("**DO Response Time (p95)** (stats fan-out)", lambda p: ms(p.stat("do_response_time", "p(95)")))
    row("Reconnects (rotation, drop); p95 reconnection time", lambda p: (
        f"{len(p.tagged('ws_reconnects', reason='rotation'))}, {len(p.tagged('ws_reconnects', reason='drop'))}; "
        f"{ms(p.stat('ws_reconnection_time', 'p(95)'))}"))
    row("Shards at peak; most sockets on one shard; imbalance (max/mean)", lambda p: _shards(p))


def http_rows(run: Run, row) -> None:
    """Every HTTP request, each operation, and the iterations of the platform's loops."""
    row(f"**p95 all HTTP requests** (http_req_duration; platform target < {HTTP_P95_MS} ms)",
        lambda p: ms(p.stat("http_req_duration", "p(95)")))
    for op in run.http_ops():
        row(f"p95 HTTP `{op}` (http_op_duration)", lambda p, op=op: ms(p95(p.tagged("http_op_duration", op=op))))
    if run.shape in ("churn", "http"):
        row("Iterations done (k6; per second)", lambda p: f"{p.count('iterations')} ({p.rate('iterations') or 0:.1f}/s)")


def platform_rows(row) -> None:
    """RPC, forwarding and correctness (MODE=platform)."""
    def q3(p: Policy) -> str:
        return " / ".join(ms(p.stat("rpc_round_trip", k)) for k in ("med", "p(95)", "p(99)"))

    def kinds(p: Policy, metric: str, tag: str, a: str, b: str) -> str:
        return " / ".join(f"{ms(p.pctl(metric, 0.95, **{tag: v}))} ({len(p.tagged(metric, **{tag: v}))})" for v in (a, b))

    def cross_ratio(p: Policy) -> str:
        same, cross = p.pctl("rpc_round_trip", 0.95, placement="same"), p.pctl("rpc_round_trip", 0.95, placement="cross")
        return f"{cross / same:.2f}x" if same and cross else "n/a"

    def reasons(p: Policy) -> str:
        by = p.by_tag("frames_misdelivered", "reason")
        return str(p.count("frames_misdelivered")) + (f" ({', '.join(f'{k} x{n}' for k, n in sorted(by.items()))})" if by else "")

    row("**RPC round trip** p50 / p95 / p99 (app -> machine or session -> app)", q3)
    row("RPC p95 (count): machine / session", lambda p: kinds(p, "rpc_round_trip", "kind", "machine", "session"))
    row("RPC p95 (count): same shard / cross shard", lambda p: kinds(p, "rpc_round_trip", "placement", "same", "cross"))
    row("RPC p95 cross-shard / same-shard", cross_ratio)
    row("**Forwarding delivery** p95 (count): session-alive / machine-alive to the apps",
        lambda p: kinds(p, "forward_delivery_time", "kind", "session", "machine"))
    row("Forwarding p50 / p95 (count): as sent (edge only) / the upstream's `activity` ephemerals",
        lambda p: " / ".join(
            f"{ms(p.pctl('forward_delivery_time', 0.5, form=f))}, {ms(p.pctl('forward_delivery_time', 0.95, form=f))} "
            f"({len(p.tagged('forward_delivery_time', form=f))})" for f in ("forwarded", "activity")))
    row("**Upstream calls** by result; upstream time p50 / p95 (gateway `/metrics`, all events)",
        lambda p: "none" if not p.upstream else
        ", ".join(f"{k} {v:,}" for k, v in p.upstream["calls"].items() if v) + "; "
        + f"{ms(p.upstream['latency_ms']['p50'])} / {ms(p.upstream['latency_ms']['p95'])}")
    row("Client frames per second: sent / received", lambda p: f"{p.rate('frames_sent') or 0:.1f} / {p.rate('frames_received') or 0:.1f}")
    row("**Dropped frames** (no ack within 10 s)", lambda p: str(p.count("frames_dropped")))
    row("**Misdelivered frames**", reasons)
    row("RPC calls; acks; `RPC method not available`; other errors; in flight at a close; late acks", lambda p: "; ".join(
        str(p.count(m)) for m in ("rpc_calls", "rpc_acks", "rpc_unavailable", "rpc_errors", "rpc_interrupted", "rpc_late_acks")))
    row("Subrequests per routed frame (stats `subrequestsPerFrame`, last sample)",
        lambda p: "n/a" if p.subrequests_per_frame() is None else f"{p.subrequests_per_frame():.2f}")


def fleet_rows(row) -> None:
    """The fleet's pace: open sockets by k6's own count (the runner samples the users' stats
    only every 20 s here), connects per second and what k6 could not start on time."""
    row("Peak open sockets (k6's count: opened - closed, per second)",
        lambda p: str(max(p._client_open()[0].values(), default=0)) if p._client_open()[0] else "n/a")
    row("Completed connects per second (k6 `ws_sockets_opened` rate)", lambda p: f"{p.rate('ws_sockets_opened') or 0:.1f}/s")
    row("Dropped iterations (k6 could not start a socket or call on time: open loop, side calls)",
        lambda p: str(p.count("dropped_iterations")))


def load_rows(row) -> None:
    """Per-object load (stats `load`) and the objects and storage the run left behind."""
    row("**Busiest object's share** of a user's events (stats `load.busiestShare`): max / mean over the users",
        lambda p: objects.share_text(p.load))
    row("**Peak events per second** on one object (stats `load.peakEventsPerSecond`): max / mean over the users",
        lambda p: objects.peak_text(p.load))
    row("Objects per user (stats `load.objects`): max / mean; events per user: mean", lambda p: objects.objects_text(p.load))
    row("**Durable Objects created** (state files after the run), per class", lambda p: objects.storage_classes_text(p.storage))
    row("Objects holding storage; **storage rows** (key-value + SQL) after the run", lambda p: objects.storage_rows_text(p.storage))


def cost_rows(run: Run, row) -> None:
    """What the load cost the runtime: CPU and memory (per socket only where sockets were held)."""
    sockets = run.shape != "http"
    row("Runtime workerd CPU during the load (user + system)", lambda p: "n/a" if p.cpu_s is None else f"{p.cpu_s:.2f} s")
    if sockets:
        row("Completed connects (`connected` frame received)", lambda p: f"{p.completed_connects:,}")
        row("**CPU per completed connect** (runtime CPU / completed connects)", lambda p: _cpu(p, p.completed_connects))
    if run.shape in ("churn", "http"):
        row("CPU per iteration (runtime CPU / k6 iterations)", lambda p: _cpu(p, p.count("iterations")))
    if run.mode == "platform":
        row("Routed client frames (stats `frames`, last sample); **CPU per routed frame** (runtime CPU to then)",
            lambda p: f"{p.frames_routed if p.frames_routed is not None else 'n/a'}; "
                      + ("n/a" if p.cpu_ms_per_frame() is None else f"{p.cpu_ms_per_frame():.2f} ms"))
    row("**Runtime RSS at the end** of the load", lambda p: mib(p.rss_end_kb))
    row("workerd RSS idle -> peak (runtime + dev proxy)", lambda p: _rss(p))
    if sockets:
        row("**Bytes per open connection** (slope of runtime RSS over connections during the ramp)",
            lambda p: _bytes(p.bytes_per_connection()[2]))
        row("(RSS at peak - idle) / peak connections: runtime; incl. dev proxy", lambda p: (
            f"{_bytes(p.bytes_per_connection()[0])}; {_bytes(p.bytes_per_connection()[1])}"))
        row("Runtime RSS while holding the peak: first -> last; trend (whole hold, second half)", lambda p: _hold(p))
        row("DO memory estimate per connection (stats memoryUsage)", lambda p: _estimate(p))
    row("Mean 1-min load average during the run (2 CPUs)", lambda p: _load(p))
    row("**Runtime faults** in the workerd log (fatal exceptions, cross-request I/O, hung requests, panics)",
        lambda p: "n/a" if p.runtime_faults is None else str(p.runtime_faults))


def result_rows(run: Run) -> list[tuple[str, list[str]]]:
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, f) -> None:
        rows.append((label, [f(p) for p in run.policies]))
    if run.shape != "http":
        socket_rows(run, row)
    else:
        row("**DO Response Time (p95)** (stats fan-out)", lambda p: ms(p.stat("do_response_time", "p(95)")))
    http_rows(run, row)
    if run.mode == "platform":
        platform_rows(row)
    if run.shape == "fleet":
        fleet_rows(row)
    load_rows(row)
    cost_rows(run, row)
    row(f"Thresholds ({run.tset} set)", lambda p: _thresholds(p))
    if run.tset == "extreme" and run.traffic in ("steady", "churn", "fleet"):
        # The guide's standard targets too, evaluated on the same run: where a policy
        # would also meet the stricter set.
        row("Standard set on the same run (connect p95 < 2 s, ping p95 < 100 ms, "
            "broadcast p95 < 500 ms, connection errors < 10)", lambda p: _standard(p))
    return rows


# ---- the edge against the single-object baseline

RATIO_FIGURES = [  # (key in the JSON, label, figure, format)
    ("connect_p95_ms", "connect p95", lambda p: p.stat("ws_connection_time", "p(95)"), ms),
    ("http_p95_ms", "all-HTTP p95", lambda p: p.stat("http_req_duration", "p(95)"), ms),
    ("connect_p95_after_start_ms", f"connect p95 after the first {WINDOW_S} s",
     lambda p: p.p95_after_start("ws_connection_time"), ms),
    ("http_p95_after_start_ms", f"all-HTTP p95 after the first {WINDOW_S} s",
     lambda p: p.p95_after_start("http_req_duration"), ms),
    ("connect_p95_worst_window_ms", f"connect p95 in the worst {WINDOW_S}-second window after the first",
     lambda p: p.worst_window_p95("connect"), ms),
    ("stats_p95_ms", "stats p95", lambda p: p.stat("do_response_time", "p(95)"), ms),
    ("broadcast_delivery_p95_ms", "broadcast delivery p95", lambda p: p.stat("ws_broadcast_delivery_time", "p(95)"), ms),
    ("cpu_ms_per_connect", "CPU per completed connect", lambda p: p.cpu_ms_per(p.completed_connects),
     lambda v: "n/a" if v is None else f"{v:.2f} ms"),
    ("cpu_ms_per_iteration", "CPU per k6 iteration (churn, http)", lambda p: p.cpu_ms_per(p.count("iterations")),
     lambda v: "n/a" if v is None else f"{v:.2f} ms"),
    ("rss_end_runtime_kb", "runtime RSS at the end", lambda p: p.rss_end_kb, mib),
    ("connection_errors", "connection errors", lambda p: p.count("ws_connection_errors"), str),
    ("rejections", "rejections", lambda p: p.count("do_connections_rejected"), str),
    ("busiest_share_max", "busiest object's share of a user's events (max over the users)",
     lambda p: objects.figure(p.load, "busiest_share", "max"),
     lambda v: "n/a" if v is None else f"{v:.2f}"),
    ("busiest_share_mean", "busiest object's share of a user's events (mean over the users)",
     lambda p: objects.figure(p.load, "busiest_share", "mean"),
     lambda v: "n/a" if v is None else f"{v:.2f}"),
    ("peak_events_per_s_max", "peak events per second on one object (max over the users)",
     lambda p: objects.figure(p.load, "peak_events_per_s", "max"),
     lambda v: "n/a" if v is None else f"{v:.0f}"),
    ("objects_created", "Durable Objects created (state files)", lambda p: objects.storage_total(p.storage, "objects"),
     lambda v: "n/a" if v is None else f"{v:,.0f}"),
    ("storage_rows", "storage rows after the run", lambda p: objects.storage_total(p.storage, "rows"),
     lambda v: "n/a" if v is None else f"{v:,.0f}"),
]


def edge_ratio(edge: float | None, base: float | None) -> float | None:
    """edge / base; None when either is missing or the base is 0."""
    return None if edge is None or not base else edge / base


def _ratio_cell(e: float | None, b: float | None, fmt) -> str:
    r = edge_ratio(e, b)
    if r is not None:
        return f"{fmt(e)} / {fmt(b)} = **{r:.2f}x**"
    return f"{fmt(e)} / {fmt(b)}" + (" (both 0)" if e == 0 and b == 0 else "")


def ratio_figures(run: Run) -> list:
    """RATIO_FIGURES this shape measures: per iteration only for the looping shapes."""
    return [x for x in RATIO_FIGURES if x[0] != "cpu_ms_per_iteration" or run.shape in ("churn", "http")]


def ratio_rows(run: Run) -> list[tuple[str, list[str]]]:
    """edge / baseline per figure and edge policy: 'edge / baseline = ratio'; figures this
    shape does not measure are left out."""
    return [(label, [_ratio_cell(f(p), f(run.baseline), fmt) for p in run.edge]) for _, label, f, fmt in ratio_figures(run)
            if f(run.baseline) is not None or any(f(p) is not None for p in run.edge)]


def ratios_json(run: Run) -> dict:
    return {p.name: {key: {"edge": f(p), "baseline": f(run.baseline), "ratio": edge_ratio(f(p), f(run.baseline))}
                     for key, _, f, _ in ratio_figures(run)} for p in run.edge}


# ---- charts

def write_charts(run: Run) -> list[tuple[str, str]]:
    """Writes the charts beside the report; returns (title, file name) for each."""
    written: list[tuple[str, str]] = []
    names = [p.name for p in run.policies]
    targets, mode = run.targets, run.label

    def save(kind: str, title: str, draw, *args, **kwargs) -> None:
        name = f"{run.base}-{kind}.svg"
        draw(run.out_dir / name, *args, **kwargs)
        written.append((title, name))

    save("rejection-rate", "Rejection rate per policy", charts.bar_chart,
         f"Rejection rate per policy ({mode})", names,
         [("rejection rate", [(p.stat("do_connection_rejection_rate", "value") or 0) * 100 for p in run.policies])],
         "% of connect attempts rejected (429/503)",
         refs=[(5, "5% warning", "#e69f00"), (20, "20% critical", "#d62728")], y_max=100)
    save("latency-p95", "Connect, ping and broadcast p95 per policy", charts.bar_chart,
         f"p95 latency per policy ({mode}; log scale)", names,
         [("connect (ws_connection_time)", [p.stat("ws_connection_time", "p(95)") for p in run.policies]),
          ("ping round trip (ws_message_latency)", [p.stat("ws_message_latency", "p(95)") for p in run.policies]),
          ("broadcast delivery (ws_broadcast_delivery_time)", [p.stat("ws_broadcast_delivery_time", "p(95)") for p in run.policies])],
         "p95 (log scale)", log=True,
         refs=[(targets["connect"], f"connect target {ms(targets['connect'])}", charts.PALETTE[0]),
               (targets["ping"], f"ping target {ms(targets['ping'])}", charts.PALETTE[1]),
               (targets["broadcast"], f"broadcast target {ms(targets['broadcast'])}", charts.PALETTE[2])],
         value_fmt=ms)
    panels = []
    for p in run.policies:
        s = p.peak_sample()
        shards = sorted(((x["name"], float(x["connections"])) for x in (s["stats"].get("shards", []) if s else [])),
                        key=lambda kv: -kv[1])
        panels.append((f"{p.name}: {peak_conns(p) or 0} connections at peak", shards))
    save("shards", "Connections per shard at peak", charts.small_multiples,
         f"Connections per shard at the peak sample ({mode})", panels, run.cap, "open sockets")
    conn_series = [(p.name, [(s["t"] - p.t0, s["stats"]["totalConnections"]) for s in p.samples
                             if isinstance(s.get("stats"), dict)], False) for p in run.policies]
    vus_ref = run.policies[0]
    conn_series.append(("k6 VUs (first policy's run)", [(s["t"] - vus_ref.t0, s["vus"]) for s in vus_ref.samples
                                                         if s.get("vus") is not None], True))
    save("connections", "Open connections over time", charts.line_chart,
         f"Open connections over time ({mode})", conn_series, "seconds since start", "open sockets (server count)")
    save("memory", "workerd runtime RSS over open connections", charts.line_chart,
         f"workerd runtime RSS vs. open connections ({mode})",
         [(p.name, [(s["stats"]["totalConnections"], s["rss_runtime_kb"] / 1024) for s in p.loaded_samples()],
           False) for p in run.policies],
         "open sockets (server count)", "runtime RSS (MiB)")
    if run.baseline and run.edge:
        save("baseline", "The edge against the single-object baseline: p95 per operation", charts.bar_chart,
             *baseline_chart(run), "p95 (log scale)", log=True, value_fmt=ms)
    if run.mode == "platform":
        save("rpc", "RPC round trip and forwarding p95 per policy", charts.bar_chart, *rpc_chart(run),
             "p95 (log scale)", log=True, value_fmt=ms,
             refs=[(targets["ping"], f"RPC target {ms(targets['ping'])}", charts.PALETTE[0])])
    if run.any_load:
        # Only policies whose stats carried `load`: the others have nothing to show.
        with_load = [p for p in run.policies if p.load]
        save("load-share", "Busiest object's share of each user's events", charts.bar_chart,
             f"Users by their busiest object's share of their events ({mode})"
             + ("" if len(with_load) > 1 else f"\n{with_load[0].name}"), objects.share_bins(),
             [(p.name, objects.share_histogram(p.loads) or [None] * objects.SHARE_BINS) for p in with_load],
             "% of the users", y_max=100, value_fmt=lambda v: f"{v:.0f}%")
        panels = []
        for p in with_load:
            user = objects.busiest_user(p.loads)
            rows = objects.objects_of(p.samples, p.meta.get("final_stats"), user) if user else []
            panels.append((f"{p.name}: user {user or '?'} (the most events)", rows))
        save("objects-events", "Events per object of the busiest user", charts.small_multiples,
             f"Events per object of the user with the most events ({mode})", panels, None, "events")
    return written


def baseline_chart(run: Run) -> tuple[str, list[str], list]:
    """Operations x targets (the baseline first): title, categories, series."""
    ops = [("connect", lambda p: p.stat("ws_connection_time", "p(95)")),
           ("ping", lambda p: p.stat("ws_message_latency", "p(95)")),
           ("broadcast delivery", lambda p: p.stat("ws_broadcast_delivery_time", "p(95)")),
           ("stats", lambda p: p.stat("do_response_time", "p(95)")),
           ("all HTTP", lambda p: p.stat("http_req_duration", "p(95)"))]
    ops += [(f"HTTP {op}", lambda p, op=op: p95(p.tagged("http_op_duration", op=op)))
            for op in run.http_ops() if op != "stats"]
    ops = [(n, f) for n, f in ops if any(f(p) is not None for p in run.policies)]
    order = [run.baseline] + run.edge
    title = f"p95 per operation: single-object baseline vs. edge ({run.mode}, {run.shape}; log scale)"
    return title, [n for n, _ in ops], [(p.name, [f(p) for _, f in ops]) for p in order]


def rpc_chart(run: Run) -> tuple[str, list[str], list]:
    """Policies x (RPC by kind and placement, forwarding): title, categories, series."""
    figures = [("RPC to machine", "rpc_round_trip", {"kind": "machine"}),
               ("RPC to session", "rpc_round_trip", {"kind": "session"}),
               ("RPC same shard", "rpc_round_trip", {"placement": "same"}),
               ("RPC cross shard", "rpc_round_trip", {"placement": "cross"}),
               ("forwarding to apps", "forward_delivery_time", {})]
    series = [(label, [p.pctl(metric, 0.95, **tags) for p in run.policies]) for label, metric, tags in figures]
    return f"RPC round trip and forwarding p95 ({run.label}; log scale)", [p.name for p in run.policies], series


# ---- markdown

def _mode_text(run: Run) -> str:
    """The mode's stages; the fleet's are the mode's, scaled to its clients (and FLEET_DURATION)."""
    if run.shape != "fleet":
        return MODE_SHAPES.get(run.mode, run.mode)
    users = int(run.info.get("users") or 1)
    clients = users + (users + 1) // 2
    text = f"the mode's stages with the VU targets scaled to the fleet's {clients} clients"
    if run.info.get("fleet_duration_s"):
        text += f", stretched to {run.info['fleet_duration_s']} s (`FLEET_DURATION`)"
    if run.arrival == "open":
        text += "; the open loop's sockets start at a constant rate over the same duration"
    return text


def environment(run: Run) -> list[str]:
    info, policies = run.info, run.policies
    first = policies[0]
    per = [p.meta["end"] - p.meta["start"] for p in policies]
    users = int(info.get("users") or 1)
    if run.shape == "fleet":
        mix = info.get("tier_mix") or "default"
        tiers = ("the gateway's default tier (`DEFAULT_TIER`, `pro` in wrangler.toml: limit 100; no admin call)"
                 if mix == "default" else f"tiers `{mix}` (`TIER_MIX`)")
        load = (f"- Load: **{users} small users** (`load-u-0` ... `load-u-{users - 1}`) in {tiers}; at most two sockets "
                f"each, so no tier limit is reached; the per-object cap is `SHARD_MAX_CONNECTIONS={run.cap}`. The "
                f"runner polled every user's stats every {info.get('sample_interval_s', '?')} s (besides the users' own calls).")
    elif users > 1:
        load = (f"- Load: **{users} users** (`load-u-0` ... `load-u-{users - 1}`), each in a tier `load` with limit "
                f"{info.get('tier_limit')}, above its own sockets, so every rejection comes from the per-object cap "
                f"`SHARD_MAX_CONNECTIONS={run.cap}`.")
    else:
        load = (f"- Load: **one user** (`load-alice`, the capacity guide's single-token test) in a tier `load` with limit "
                f"{info.get('tier_limit')}, above the peak, so **every rejection comes from the per-object cap "
                f"`SHARD_MAX_CONNECTIONS={run.cap}`, not from the tier limit** (the default tiers end at enterprise = 500).")
    lines = [
        "- Target: local `wrangler dev` (workerd) on 127.0.0.1, **not** staging or production. Each policy ran "
        "against its own freshly started gateway with empty state, " + _builds(run.edge) + ".",
        f"- Test Mode: `{run.mode}` ({_mode_text(run)}), shape `{run.shape}`, {run.tset} thresholds.",
        f"- Duration: {', '.join(f'{mmss(s)}' for s in per)} per policy (load plus start/stop); "
        f"the whole comparison took {mmss(info.get('total_s', 0))} (mm:ss).",
        f"- Machine: {info.get('cpus', '?')} CPUs ({info.get('cpu', '?')}), {info.get('memory', '?')}. k6 (up to "
        f"{int(first.stat('vus_max', 'max') or 0)} VUs), wrangler and workerd share these CPUs, so absolute latencies "
        "include client-side queueing; compare policies with each other, not with production.",
        f"- Software: wrangler {info.get('wrangler', '?')}, workerd {info.get('workerd', '?')}, {info.get('k6', '?')}.",
        load,
        f"- Clients: {FLEET_TEXT + '. ' + ARRIVAL_TEXT.get(run.arrival, run.arrival) if run.shape == 'fleet' else SHAPE_TEXT[run.traffic]}.",
        *(["- Upstream: the reference upstream (`examples/upstream/`) beside every edge gateway through the service "
           "binding (`UPSTREAM=service`): the platform's business events (`session-alive`, `machine-alive`, ...) go "
           "through it, and the apps receive its `activity` ephemerals instead of the forwarded frames."]
          if info.get("upstream") == "service" else []),
        *(["- Upstream: `UPSTREAM=failing`, an upstream URL on a loopback port nobody listens on, so every business "
           "event the edge sends upstream fails at once (counted in `edge_upstream_requests_total{result=\"error\"}`); "
           "routing (RPC, acks, presence) must go on unaffected."]
          if info.get("upstream") == "failing" else []),
        "- Memory and CPU: workerd's RSS sampled with `ps` every few seconds; the *runtime* process hosts the Worker "
        "and all Durable Objects (all shards share it locally); the dev *proxy* in front of it exists only under "
        "`wrangler dev`. CPU is the runtime process's user + system time (`/proc/PID/stat`) from the start to the "
        "end of the load, divided by the connects that completed; per routed frame, the CPU up to the last stats "
        "sample that counted frames, divided by the frames counted then.",
        "- Per-object load: each user's stats `load` (the events its objects handled since they started: requests, "
        "socket messages, closes, alarms; the busiest object's share of them and its peak events per second), taken at "
        "the user's observation with the most events (runner samples and the final poll); n/a where the Worker's stats "
        "have no `load`. Objects and storage: the Durable Object SQLite files in the gateway's state directory after "
        "it stopped (`load-tests/lib/do_storage.py`; one per object the run instantiated, storage or not), their "
        "`_cf_KV` rows and the rows of their own SQL tables.",
    ]
    if run.baseline:
        lines.append(f"- `{BASELINE}` is the single-object baseline (`benches/baseline/`, sha256 "
                     f"{run.baseline.meta.get('build_sha256', '?')}…): a JavaScript Worker written the capacity guide's "
                     "way, one Durable Object per user with no cap, hibernation with tags, the auto-response ping, "
                     "broadcast and stats from the sockets' attachments, the platform's token check; served by the "
                     "same wrangler and workerd under the same load.")
    return lines


def markdown(run: Run, rows, chart_files: list[tuple[str, str]]) -> str:
    names = [p.name for p in run.policies]
    shape_arg = ("" if run.shape == "steady" else f"SHAPE={run.shape} ") + (
        f"ARRIVAL={run.arrival} " if run.arrival != "closed" else "") + (
        f"USERS={run.info.get('users')} " if run.shape == "fleet" else "") + (
        f"UPSTREAM={run.upstream} " if run.upstream != "off" else "") + (
        f"GATEWAY_VARS=\"{run.info['gateway_vars']}\" " if run.info.get("gateway_vars") else "")
    md = [
        f"# WebSocket capacity: `{run.mode}` ({run.shape}) policy comparison, {run.date}",
        "",
        f"Generated by `{shape_arg}scripts/compare.sh {run.mode} {' '.join(names)}` (`load-tests/report/compare_report.py`) "
        f"from the raw data in `{run.run_dir.as_posix()}` (k6 summaries and time series, RSS, CPU and stats samples, "
        "gateway logs; not committed). Every number below is computed from those files.",
        "",
        f"## Test Run: {run.date}",
        "",
        "### Environment",
        "",
        *environment(run),
        "",
        "### Results",
        "",
        "| | " + " | ".join(f"`{n}`" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    md += [f"| {label} | " + " | ".join(vals) + " |" for label, vals in rows]
    if run.baseline and run.edge:
        md += ["", "### The edge against the single-object baseline", "",
               "Each cell: the policy's figure / the baseline's = the ratio (below 1 is better for the edge; no "
               "ratio where the baseline's figure is 0 or missing).", "",
               "| edge / baseline | " + " | ".join(f"`{p.name}`" for p in run.edge) + " |",
               "|---|" + "---|" * len(run.edge)]
        md += [f"| {label} | " + " | ".join(vals) + " |" for label, vals in ratio_rows(run)]
    md += ["", "### Charts", ""]
    md += [f"![{t}]({n})" for t, n in chart_files]
    if not run.any_load:
        md += ["", "No per-object load chart: no policy's stats carried `load` (per-object events), so there is "
               "nothing to draw."]
    gaps = sorted(b["t"] - a["t"] for p in run.policies for a, b in zip(p.samples, p.samples[1:]))
    sample_s = gaps[len(gaps) // 2] if gaps else 0.0
    md += ["", "### Degradation Points", "",
           f"When each kind of degradation first appeared (k6 samples in {WINDOW_S}-second windows; for rejections, "
           "drops and failures the time of the first such event), with the open connections at that moment (k6's "
           "per-second count of sockets opened minus closed; after a ramp-down, the server's count interpolated "
           f"between the runner's stats samples, every {sample_s:.0f} s) and k6's VU count. Targets are the guide's "
           f"{run.tset} column; alert levels are its monitoring rules.", ""]
    for p in run.policies:
        pts = degradation_points(p, run.targets, run.cap)
        md += [f"**`{p.name}`**", ""]
        md += [f"- {x}" for x in pts] if pts else [f"- No degradation observed up to {peak_conns(p)} connections."]
        md.append("")
    md += ["### Recommendations", ""]
    md += recommendations(run.edge, run.targets, run.cap, run.tset) if run.edge else ["- Only the baseline ran."]
    md += ["", "### Raw threshold results", "", "| policy | metric | threshold | result |", "|---|---|---|---|"]
    for p in run.policies:
        for metric, expr, failed in p.thresholds():
            md.append(f"| `{p.name}` | `{metric}` | `{expr}` | {'**failed**' if failed else 'passed'} |")
    md.append("")
    return "\n".join(md)


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    run = Run(Path(sys.argv[1]), Path(sys.argv[2]))
    if not run.policies:
        print(f"compare_report: no *.meta.json in {run.run_dir}", file=sys.stderr)
        return 1
    run.out_dir.mkdir(parents=True, exist_ok=True)
    chart_files = write_charts(run)
    report = run.out_dir / f"{run.base}.md"
    report.write_text(markdown(run, result_rows(run), chart_files))
    summary = {"mode": run.mode, "shape": run.shape, "arrival": run.arrival, "date": run.date, "threshold_set": run.tset,
               "shard_max_connections": run.cap, "tier_limit": run.info.get("tier_limit"),
               "users": run.info.get("users", 1), "charts": [n for _, n in chart_files],
               "policies": [_summary(p, peak_conns(p)) for p in run.policies]}
    if run.baseline and run.edge:
        summary["edge_over_baseline"] = ratios_json(run)
    (run.out_dir / f"{run.base}.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"compare_report: wrote {report}, {run.base}.json and {len(chart_files)} charts")
    return 0


def _summary(p: Policy, peak: int | None) -> dict:
    """The report's headline figures for one policy, for scripts (and the pipeline's own test)."""
    shards = p.peak_shards()
    return {
        "policy": p.name,
        "k6_exit": p.meta.get("k6_exit"),
        "peak_connections": peak,
        "attempts": p.attempts,
        "rejected": p.count("do_connections_rejected"),
        "rejection_rate": p.stat("do_connection_rejection_rate", "value"),
        "rejections_by_code": _counts(p),
        "connection_errors": p.count("ws_connection_errors"),
        "dropped": p.dropped(),
        "p95_ms": {"connect": p.stat("ws_connection_time", "p(95)"), "ping": p.stat("ws_message_latency", "p(95)"),
                   "broadcast": p.stat("ws_broadcast_delivery_time", "p(95)"),
                   "do_response": p.stat("do_response_time", "p(95)")},
        "shards_at_peak": len(shards),
        "max_on_one_shard": max((x.get("connections", 0) for x in shards), default=0),
        "bytes_per_connection": p.bytes_per_connection()[2],
        "hold_memory": p.hold_memory(),
        "thresholds_failed": sorted({m for m, _, f in p.thresholds() if f}),
        "target": "baseline" if p.is_baseline else "edge",
        "http_p95_ms": {"all": p.stat("http_req_duration", "p(95)"),
                        **{op: p95(p.tagged("http_op_duration", op=op)) for op in HTTP_OPS
                           if p.tagged("http_op_duration", op=op)}},
        "iterations": p.count("iterations"),
        "completed_connects": p.completed_connects,
        "cpu_runtime_s": p.cpu_s,
        "cpu_ms_per_connect": p.cpu_ms_per(p.completed_connects),
        "frames_routed": p.frames_routed,
        "cpu_ms_per_frame": p.cpu_ms_per_frame(),
        "rss_end_runtime_kb": p.rss_end_kb,
        "runtime_faults": p.runtime_faults,
        "connects_per_s": p.rate("ws_sockets_opened"),
        "dropped_iterations": p.count("dropped_iterations"),
        "load": p.load,
        "storage": p.storage,
        **({"platform": _platform_summary(p)} if p.count("rpc_calls") else {}),
    }


def _platform_summary(p: Policy) -> dict:
    """MODE=platform's figures: RPC percentiles by kind and placement, forwarding, correctness."""
    def q(metric: str, **tags: str) -> dict:
        return {k: p.pctl(metric, v, **tags) for k, v in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))}
    return {
        "rpc_ms": {"all": q("rpc_round_trip"), "machine": q("rpc_round_trip", kind="machine"),
                   "session": q("rpc_round_trip", kind="session"), "same_shard": q("rpc_round_trip", placement="same"),
                   "cross_shard": q("rpc_round_trip", placement="cross")},
        "forward_ms": {"all": q("forward_delivery_time"), "session": q("forward_delivery_time", kind="session"),
                       "machine": q("forward_delivery_time", kind="machine")},
        "frames_per_s": {"sent": p.rate("frames_sent"), "received": p.rate("frames_received")},
        "rpc_calls": p.count("rpc_calls"), "rpc_acks": p.count("rpc_acks"),
        "rpc_unavailable": p.count("rpc_unavailable"), "rpc_errors": p.count("rpc_errors"),
        "rpc_interrupted": p.count("rpc_interrupted"), "rpc_late_acks": p.count("rpc_late_acks"),
        "dropped": p.count("frames_dropped"), "misdelivered": p.count("frames_misdelivered"),
        "misdelivered_by_reason": p.by_tag("frames_misdelivered", "reason"),
        "subrequests_per_frame": p.subrequests_per_frame(),
        "upstream": p.upstream,
        "forward_by_form_ms": {f: {"p50": p.pctl("forward_delivery_time", 0.5, form=f),
                                   "p95": p.pctl("forward_delivery_time", 0.95, form=f),
                                   "count": len(p.tagged("forward_delivery_time", form=f))}
                               for f in ("forwarded", "activity")},
    }


def _counts(p: Policy) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, _, tags in p.series.get("do_connections_rejected", []):
        key = f"{tags.get('status', '?')} {tags.get('code') or '(no code)'}"
        out[key] = out.get(key, 0) + 1
    return out


def _ratio(a: int, b: int) -> str:
    return f"{a} / {b}" + (f" ({a / b * 100:.1f}%)" if b else "")


def _shards(p: Policy) -> str:
    s = p.peak_sample()
    if not s:
        return "n/a"
    shards = p.peak_shards()
    most = max((x.get("connections", 0) for x in shards), default=0)
    return f"{len(shards)}; {most}; {s['stats'].get('imbalance', 0):.2f}"


def _rss(p: Policy) -> str:
    s = p.peak_sample()
    idle = (p.meta.get("idle_rss_runtime_kb") or 0) + (p.meta.get("idle_rss_proxy_kb") or 0)
    peak = max((x["rss_runtime_kb"] + x["rss_proxy_kb"] for x in p.samples), default=None)
    if s is None or peak is None:
        return "n/a"
    return (f"{mib(idle)} -> {mib(peak)} ({mib(p.meta.get('idle_rss_runtime_kb'))} -> "
            f"{mib(max(x['rss_runtime_kb'] for x in p.samples))} runtime)")


def _hold(p: Policy) -> str:
    h = p.hold_memory()
    if not h:
        return "n/a"

    def kpm(v: float | None) -> str:
        return "n/a" if v is None else f"{v:+.0f} KiB/min"
    return (f"{mib(h['runtime_first_kb'])} -> {mib(h['runtime_last_kb'])} over {mmss(h['seconds'])}; "
            f"{kpm(h['runtime_trend_kb_per_min'])}, {kpm(h['runtime_trend_second_half_kb_per_min'])}")


def _bytes(b: float | None) -> str:
    if b is None:
        return "n/a"
    return f"{b / 1024:.1f} KiB" if abs(b) >= 1024 else f"{b:.0f} B"


def _estimate(p: Policy) -> str:
    s = p.peak_sample()
    if not s or not s["stats"].get("totalConnections"):
        return "n/a"
    return _bytes(s["stats"].get("memoryUsage", 0) / s["stats"]["totalConnections"])


def _builds(policies: list[Policy]) -> str:
    if not policies:
        return "the single-object baseline only"
    shas = sorted({p.meta.get("build_sha256", "?") for p in policies})
    if len(shas) == 1:
        return f"the same Worker build (`index_bg.wasm` sha256 {shas[0]}…)"
    return ("**different Worker builds** (" + ", ".join(f"`{p.name}`: {p.meta.get('build_sha256', '?')}…" for p in policies)
            + "): the build changed between policies, so differences may come from the code, not the policy")


def _load(p: Policy) -> str:
    loads = [s["loadavg1"] for s in p.samples if s.get("loadavg1") is not None]
    return f"{sum(loads) / len(loads):.1f} (max {max(loads):.1f})" if loads else "n/a"


def _thresholds(p: Policy) -> str:
    th = p.thresholds()
    failed = [f"{m} `{e}`" for m, e, f in th if f]
    if not th:
        return "no summary"
    return "all passed" if not failed else "**failed**: " + ", ".join(failed)


def _standard(p: Policy) -> str:
    t = TARGETS["standard"]
    checks = [
        ("connect", p.stat("ws_connection_time", "p(95)"), t["connect"]),
        ("ping", p.stat("ws_message_latency", "p(95)"), t["ping"]),
        ("broadcast", p.stat("ws_broadcast_delivery_time", "p(95)"), t["broadcast"]),
    ]
    missed = [f"{n} {ms(v)}" for n, v, lim in checks if v is None or v >= lim]
    errors = p.count("ws_connection_errors")
    if errors >= 10:
        missed.append(f"{errors} connection errors")
    return "all met" if not missed else "missed: " + ", ".join(missed)


def recommendations(policies: list[Policy], targets: dict, cap: int, tset: str) -> list[str]:
    """Derived from the measurements: which policy held up, where `single` degraded,
    what the memory figures imply for a 128 MB object."""
    out = []
    scored = []
    for p in policies:
        failed = sum(1 for _, _, f in p.thresholds() if f)
        rej = p.stat("do_connection_rejection_rate", "value") or 0
        ping = p.stat("ws_message_latency", "p(95)") or float("inf")
        peak = p.peak_sample()
        scored.append((failed, rej, ping, p, peak["stats"]["totalConnections"] if peak else 0))
    scored.sort(key=lambda x: (x[0], x[1], x[2]))
    best = scored[0]
    degraded = {x[3].name for x in scored if degradation_points(x[3], targets, cap) or x[0]}
    single = next((x for x in scored if x[3].name == "single"), None)
    if single is not None and single[3].name in degraded:
        up_to = healthy_up_to(single[3], targets)
        out.append(f"- [ ] Adjust connection limit to {up_to} for users served by one object (`single`): it met every "
                   f"{tset} target and stayed under 5% rejections up to {up_to} connections, and peaked at "
                   f"{single[4]} (the per-object cap is {cap}).")
        out.append(f"- [ ] Implement `{best[3].name}` for users exceeding {up_to} connections: of the policies compared "
                   f"it had the fewest failed thresholds ({best[0]}), a {pct(best[1])} rejection rate and "
                   f"{ms(best[2])} ping p95 while serving up to {best[4]} connections.")
    elif single is not None:
        out.append(f"- No limit change indicated: `single` met every {tset} target up to its peak of {single[4]} "
                   "connections, so this load does not bound the per-object limit; use a heavier mode "
                   "(`quick`, `extreme`) to find it.")
    if not degraded:
        out.append("- Every policy met every target at this load; choose between them on other grounds "
                   "(rotation, isolation, fan-out cost).")
    elif single is None:
        out.append(f"- [ ] Implement `{best[3].name}`: fewest failed thresholds ({best[0]}), {pct(best[1])} rejection "
                   f"rate, {ms(best[2])} ping p95, up to {best[4]} connections.")
    for failed, rej, ping, p, peak in scored:
        if failed:
            broken = ", ".join(sorted({m for m, _, f in p.thresholds() if f}))
            out.append(f"- `{p.name}` failed {failed} threshold(s) ({broken}); its rejection rate was {pct(rej)}.")
    # Per-socket memory from the policy with the most sockets per object (least per-object
    # overhead in the RSS growth); the spread across policies shows what objects cost.
    mem = []
    for p in policies:
        b, peak = p.bytes_per_connection()[2], p.peak_sample()
        if b and b > 0 and peak:
            n_shards = max(1, len(peak["stats"].get("shards", [])))
            mem.append((peak["stats"]["totalConnections"] / n_shards, b, p.name, n_shards))
    if mem:
        _, b, name, _ = max(mem)
        fits = int(128 * MIB / b)
        verdict = (f"so memory does not limit an object at the {cap}-socket cap" if fits > cap else
                   f"so memory, not the {cap}-socket cap, would limit one object: lower SHARD_MAX_CONNECTIONS")
        hi = max(mem, key=lambda x: x[1])
        line = (f"- Memory: workerd runtime RSS grew by {_bytes(b)} per open socket during the ramp under `{name}` "
                f"(the most sockets per object), about {fits:,} sockets per 128 MB if one object paid it all (an "
                f"upper bound: the growth includes the isolate's broadcast and stats work), {verdict}.")
        if hi[2] != name:
            line += (f" The highest figure, {_bytes(hi[1])} under `{hi[2]}`, also pays for {hi[3]} "
                     f"object{'s' if hi[3] != 1 else ''}.")
        out.append(line)
    return out


if __name__ == "__main__":
    sys.exit(main())
