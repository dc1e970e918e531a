#!/usr/bin/env python3
"""Checks the reports of `make compare-smoke` (part of `make test`): the whole compare pipeline
(fresh gateways, k6, sampling, report, charts) on runs small enough for CI.

    check_compare_smoke.py RESULTS_DIR
    check_compare_smoke.py --fleet RESULTS_DIR

The first run is `smoke` (10 VUs, the steady shape) with a per-object cap of 5 and a tier limit
of 20, for the policies `single` and `hash:shards=auto` (4 shards). So `single` must show the
guide's failure at the cap (5 sockets, the rest refused 503 shard_full) and `hash` must hold all
10 with no rejection. The five charts (seven once the Worker reports per-object load) must be
matplotlib's SVG with something drawn, and the runtime's CPU and end-of-load RSS must have been
read.

--fleet checks the second: `smoke` with SHAPE=fleet and USERS=20 (30 clients coming and going)
for `baseline` and `hash:shards=auto`: no connection error or rejection on either, every p95
measured, CPU per completed connect for both and its edge/baseline ratio, the baseline's
per-object load (one object per user: busiest share 1), the edge's either absent (n/a) or
well-formed, and the objects and storage rows counted for both (the baseline: one object per
user, no storage).
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def chart_problems(path: Path) -> list[str]:
    """What is wrong with one chart: not an SVG, not drawn by matplotlib, or empty."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        return [f"{path.name}: {e}"]
    out = []
    if not root.tag.endswith("svg"):
        out.append(f"{path.name} is not an SVG document")
    if "matplotlib" not in path.read_text().lower():
        out.append(f"{path.name} was not drawn by matplotlib")
    if not any(el.tag.endswith("path") for el in root.iter()):
        out.append(f"{path.name} has nothing drawn")
    return out


BASE_CHARTS = ("rejection-rate", "latency-p95", "shards", "connections", "memory")
LOAD_CHARTS = ("load-share", "objects-events")


def charts_as_expected(summary: dict, out: Path, base: tuple[str, ...]) -> list[str]:
    """The base charts all there, the per-object load charts exactly when a policy had load,
    nothing else, and each one drawn."""
    problems = []
    names = summary["charts"]
    has = {kind: any(n.endswith(f"-{kind}.svg") for n in names) for kind in base + LOAD_CHARTS}
    problems += [f"no {k} chart in {names}" for k in base if not has[k]]
    any_load = any(p.get("load") for p in summary["policies"])
    problems += [f"{k} chart {'missing' if any_load else 'drawn without any per-object load'}"
                 for k in LOAD_CHARTS if has[k] != any_load]
    if len(names) != len(base) + (len(LOAD_CHARTS) if any_load else 0):
        problems.append(f"unexpected charts {names}")
    for name in names:
        problems.extend(chart_problems(out / name))
    return problems


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--fleet":
        return check_fleet(Path(sys.argv[2]))
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    found = sorted(out.glob("smoke-*.json"))
    if len(found) != 1:
        print(f"check_compare_smoke: expected one smoke-*.json in {out}, found {len(found)}", file=sys.stderr)
        return 1
    summary = json.loads(found[0].read_text())
    problems: list[str] = []

    def want(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    report = found[0].with_suffix(".md")
    want(report.exists(), f"{report} is missing")
    text = report.read_text() if report.exists() else ""
    for section in ("### Environment", "### Results", "### Degradation Points", "### Recommendations"):
        want(section in text, f"report has no '{section}'")
    want("shape `steady`" in text and summary.get("shape") == "steady", "report or JSON does not say the shape steady")
    problems.extend(charts_as_expected(summary, out, BASE_CHARTS))

    by = {p["policy"]: p for p in summary["policies"]}
    want(set(by) == {"single", "hash:shards=auto"}, f"unexpected policies {sorted(by)}")
    single, hashed = by.get("single"), by.get("hash:shards=auto")
    if single:
        want(single["peak_connections"] == 5, f"single: peak {single['peak_connections']}, want the cap 5")
        want(single["rejected"] > 0 and (single["rejection_rate"] or 0) > 0, "single: no rejections past the cap")
        want(set(single["rejections_by_code"]) == {"503 shard_full"},
             f"single: rejections {single['rejections_by_code']}, want only 503 shard_full")
        want(single["max_on_one_shard"] == 5, f"single: {single['max_on_one_shard']} on one shard, want 5")
    if hashed:
        want(hashed["peak_connections"] == 10, f"hash: peak {hashed['peak_connections']}, want 10")
        want(hashed["rejected"] == 0 and hashed["connection_errors"] == 0,
             f"hash: {hashed['rejected']} rejected, {hashed['connection_errors']} connection errors, want 0")
        want(hashed["dropped"] == 0, f"hash: {hashed['dropped']} sockets dropped")
        want(hashed["shards_at_peak"] >= 2 and hashed["max_on_one_shard"] <= 5,
             f"hash: {hashed['shards_at_peak']} shards, {hashed['max_on_one_shard']} on one, want >= 2 and <= 5")
        want(not hashed["thresholds_failed"], f"hash: thresholds failed {hashed['thresholds_failed']}")
        want(all(v is not None for v in hashed["p95_ms"].values()), f"hash: a p95 is missing {hashed['p95_ms']}")
    for p in summary["policies"]:
        want((p.get("cpu_runtime_s") or 0) > 0 and (p.get("cpu_ms_per_connect") or 0) > 0,
             f"{p['policy']}: no runtime CPU measured ({p.get('cpu_runtime_s')} s)")
        want((p.get("rss_end_runtime_kb") or 0) > 0, f"{p['policy']}: no runtime RSS at the end")
        want(p.get("runtime_faults") == 0, f"{p['policy']}: {p.get('runtime_faults')} runtime faults in the workerd log")
    if problems:
        print("check_compare_smoke: " + "; ".join(problems), file=sys.stderr)
        return 1
    print(f"check_compare_smoke: report, JSON and {len(summary['charts'])} matplotlib charts as expected "
          f"(single refused past 5: {single['rejected']} of {single['attempts']}; hash held 10 on "
          f"{hashed['shards_at_peak']} shards; runtime CPU {hashed['cpu_ms_per_connect']:.1f} ms per connect)")
    return 0


def check_fleet(out: Path) -> int:
    found = sorted(out.glob("smoke-fleet-*.json"))
    if len(found) != 1:
        print(f"check_compare_smoke: expected one smoke-fleet-*.json in {out}, found {len(found)}", file=sys.stderr)
        return 1
    summary = json.loads(found[0].read_text())
    problems: list[str] = []

    def want(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    report = found[0].with_suffix(".md")
    text = report.read_text() if report.exists() else ""
    want(bool(text), f"{report} is missing")
    for section in ("### Environment", "### Results", "### The edge against the single-object baseline", "### Charts"):
        want(section in text, f"fleet report has no '{section}'")
    for row in ("**Busiest object's share**", "**Durable Objects created**", "**storage rows**", "**CPU per completed connect**"):
        want(row in text, f"fleet report has no row {row}")
    want(summary.get("shape") == "fleet" and summary.get("arrival") == "closed" and summary.get("users") == 20,
         f"fleet: shape {summary.get('shape')}, arrival {summary.get('arrival')}, users {summary.get('users')}")
    problems.extend(charts_as_expected(summary, out, BASE_CHARTS + ("baseline",)))
    by = {p["policy"]: p for p in summary["policies"]}
    want(set(by) == {"baseline", "hash:shards=auto"}, f"fleet: unexpected policies {sorted(by)}")
    for name, p in by.items():
        want(p["completed_connects"] > 30 and p["connection_errors"] == 0 and p["rejected"] == 0 and p["dropped"] == 0,
             f"fleet {name}: {p['completed_connects']} connects, {p['connection_errors']} connection errors, "
             f"{p['rejected']} rejected, {p['dropped']} dropped")
        want(all(v is not None for v in p["p95_ms"].values()), f"fleet {name}: a p95 is missing {p['p95_ms']}")
        want((p.get("cpu_ms_per_connect") or 0) > 0, f"fleet {name}: no CPU per completed connect")
        want(p.get("runtime_faults") == 0, f"fleet {name}: {p.get('runtime_faults')} runtime faults")
        st = (p.get("storage") or {}).get("total")
        want(bool(st) and st["objects"] >= 20, f"fleet {name}: objects not counted ({p.get('storage')})")
    base, edge = by.get("baseline"), by.get("hash:shards=auto")
    if base:
        load = base.get("load") or {}
        want((load.get("users") or 0) >= 20 and (load.get("busiest_share") or {}).get("max") == 1
             and (load.get("objects") or {}).get("max") == 1,
             f"fleet baseline: per-object load {load}, want 20 users with one object each (share 1)")
        st = (base.get("storage") or {}).get("total") or {}
        want(st.get("objects") == 20 and st.get("rows") == 0, f"fleet baseline: storage {st}, want 20 objects, 0 rows")
    if edge and edge.get("load"):
        share = (edge["load"].get("busiest_share") or {})
        want(0 < (share.get("max") or 0) <= 1, f"fleet edge: busiest share {share} out of (0, 1]")
    ratio = ((summary.get("edge_over_baseline") or {}).get("hash:shards=auto") or {}).get("cpu_ms_per_connect") or {}
    want(ratio.get("ratio") is not None, f"fleet: no edge/baseline ratio of CPU per connect ({ratio})")
    # The steady part of the run, without the start when every user's object is created.
    ratios = (summary.get("edge_over_baseline") or {}).get("hash:shards=auto") or {}
    for key in ("connect_p95_after_start_ms", "http_p95_after_start_ms", "connect_p95_worst_window_ms"):
        r = ratios.get(key) or {}
        want(r.get("edge") is not None and r.get("baseline") is not None and r.get("ratio") is not None,
             f"fleet: no edge/baseline {key} ({r})")
    if problems:
        print("check_compare_smoke --fleet: " + "; ".join(problems), file=sys.stderr)
        return 1
    print(f"check_compare_smoke --fleet: report, JSON and {len(summary['charts'])} charts as expected "
          f"(CPU per connect edge/baseline {ratio['ratio']:.2f}x; objects {edge['storage']['total']['objects']} / "
          f"{base['storage']['total']['objects']}, storage rows {edge['storage']['total']['rows']} / "
          f"{base['storage']['total']['rows']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
