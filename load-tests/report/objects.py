"""Per-object load and Durable Object storage for the comparison report (compare_report.py).

Per-object load comes from the users' stats: each answer's `load` object
(`{"objects", "events", "busiestObject", "busiestShare", "peakEventsPerSecond"}`: events are the
requests, socket messages, closes and alarms the user's objects handled since they started) and
each `shards[]` row's `events`, `framesSent`, `peakEventsPerSecond`. The sampler
(load-tests/lib/user_stats.py) keeps every user's `load` in `loads` {user: load} and marks each
shard row with its `user`. A Worker that does not send them yields no figures: the report then
says n/a; nothing here fills a gap with a guess.

Storage comes from load-tests/lib/do_storage.py's count of the state directory after the run.
"""

from __future__ import annotations

SHARE_BINS = 10  # the busiest-share histogram: [0, 0.1), [0.1, 0.2), ... [0.9, 1.0]


def _num(v: object, lo: float = 0.0, hi: float | None = None) -> float | None:
    """A finite number within [lo, hi], else None (booleans are not numbers here)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < lo or (hi is not None and v > hi):
        return None
    return float(v)


def _observations(samples: list[dict], final_stats: object) -> list[dict]:
    """Every stats answer of the run, in time order: the samples', then the final one."""
    out = [s["stats"] for s in samples if isinstance(s.get("stats"), dict)]
    if isinstance(final_stats, dict):
        out.append(final_stats)
    return out


def _loads_in(stats: dict) -> dict[str, dict]:
    loads = stats.get("loads")
    if isinstance(loads, dict):
        return {u: v for u, v in loads.items() if isinstance(v, dict)}
    if isinstance(stats.get("load"), dict):  # one user's answer from an older sampler
        return {"(the user)": stats["load"]}
    return {}


def user_loads(samples: list[dict], final_stats: object) -> dict[str, dict]:
    """Each user's `load`, cleaned, at its most advanced observation (the most events; the
    later on a tie): objects emptied at the end of the load may have left the user's set by
    the final stats, and counters only grow while an object lives."""
    best: dict[str, dict] = {}
    for stats in _observations(samples, final_stats):
        for user, raw in _loads_in(stats).items():
            load = {
                "objects": _num(raw.get("objects"), 0),
                "events": _num(raw.get("events"), 0),
                "busiestObject": raw.get("busiestObject") if isinstance(raw.get("busiestObject"), str) else None,
                "busiestShare": _num(raw.get("busiestShare"), 0, 1),
                "peakEventsPerSecond": _num(raw.get("peakEventsPerSecond"), 0),
            }
            if all(load[k] is None for k in ("objects", "events", "busiestShare", "peakEventsPerSecond")):
                continue
            old = best.get(user)
            if old is None or (load["events"] or 0) >= (old["events"] or 0):
                best[user] = load
    return best


def _max_mean(values: list[float]) -> dict | None:
    return {"max": max(values), "mean": sum(values) / len(values), "users": len(values)} if values else None


def load_figures(loads: dict[str, dict]) -> dict | None:
    """Max and mean over the users of each `load` field; None without any."""
    if not loads:
        return None

    def field(k: str) -> dict | None:
        return _max_mean([v[k] for v in loads.values() if v[k] is not None])
    events = [v["events"] for v in loads.values() if v["events"] is not None]
    return {"users": len(loads), "busiest_share": field("busiestShare"),
            "peak_events_per_s": field("peakEventsPerSecond"), "objects": field("objects"),
            "events": field("events"), "events_total": sum(events) if events else None}


def figure(f: dict | None, field: str, stat: str) -> float | None:
    """One statistic of load_figures' output (e.g. busiest_share max), or None."""
    v = (f or {}).get(field)
    return v.get(stat) if isinstance(v, dict) else None


def share_histogram(loads: dict[str, dict]) -> list[float] | None:
    """Percent of the users whose busiest share falls in each of SHARE_BINS bins."""
    shares = [v["busiestShare"] for v in loads.values() if v["busiestShare"] is not None]
    if not shares:
        return None
    counts = [0] * SHARE_BINS
    for s in shares:
        counts[min(SHARE_BINS - 1, int(s * SHARE_BINS))] += 1
    return [100.0 * c / len(shares) for c in counts]


def share_bins() -> list[str]:
    return [f"{i / SHARE_BINS:.1f}-{(i + 1) / SHARE_BINS:.1f}" for i in range(SHARE_BINS)]


def busiest_user(loads: dict[str, dict]) -> str | None:
    """The user whose objects handled the most events."""
    with_events = [(v["events"], u) for u, v in loads.items() if v["events"] is not None]
    return max(with_events)[1] if with_events else None


def objects_of(samples: list[dict], final_stats: object, user: str) -> list[tuple[str, float]]:
    """Events per object of one user, from the shard rows (with `events`) of the observation
    where they add up to the most; largest first."""
    best: list[tuple[str, float]] = []
    for stats in _observations(samples, final_stats):
        rows = []
        for r in stats.get("shards") or []:
            if not isinstance(r, dict):
                continue
            events = _num(r.get("events"), 0)
            if events is not None and (r.get("user") == user or user == "(the user)"):
                rows.append((str(r.get("name", "?")), events))
        if rows and sum(e for _, e in rows) >= sum(e for _, e in best):
            best = rows
    return sorted(best, key=lambda kv: -kv[1])


def share_text(f: dict | None) -> str:
    if not f or not f["busiest_share"]:
        return "n/a"
    b = f["busiest_share"]
    return f"{b['max']:.2f} / {b['mean']:.2f} ({b['users']} users)"


def peak_text(f: dict | None) -> str:
    if not f or not f["peak_events_per_s"]:
        return "n/a"
    p = f["peak_events_per_s"]
    return f"{p['max']:.0f} / {p['mean']:.1f}"


def objects_text(f: dict | None) -> str:
    if not f or not f["objects"]:
        return "n/a"
    o, e = f["objects"], f["events"]
    return f"{o['max']:.0f} / {o['mean']:.2f}; " + ("n/a" if not e else f"{e['mean']:,.0f}")


# ---- storage (do_storage.py's count)

def class_name(key: str) -> str:
    """`edge-gateway-ConnectionManager` -> `ConnectionManager` (class names have no '-')."""
    return key.rsplit("-", 1)[-1]


def storage_classes_text(storage: dict | None) -> str:
    if not isinstance(storage, dict) or not isinstance(storage.get("classes"), dict):
        return "n/a"
    parts = [f"{class_name(k)} {c.get('objects', 0):,}" for k, c in storage["classes"].items()]
    return ", ".join(parts) if parts else "none"


def storage_rows_text(storage: dict | None) -> str:
    if not isinstance(storage, dict) or not isinstance(storage.get("total"), dict):
        return "n/a"
    t = storage["total"]
    text = (f"{t.get('withStorage', 0):,} of {t.get('objects', 0):,}; {t.get('rows', 0):,} rows "
            f"({t.get('kvRows', 0):,} key-value, {t.get('sqlRows', 0):,} SQL)")
    if t.get("unreadable"):
        text += f"; {t['unreadable']} file(s) unreadable"
    return text


def storage_total(storage: dict | None, key: str) -> float | None:
    if not isinstance(storage, dict) or not isinstance(storage.get("total"), dict):
        return None
    return _num(storage["total"].get(key), 0)
