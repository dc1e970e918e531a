#!/usr/bin/env python3
"""Checks the report of `make compare-smoke` (part of `make test`): the whole compare pipeline
(fresh gateways, k6, sampling, report, charts) on a run small enough for CI.

    check_compare_smoke.py RESULTS_DIR

The run is `smoke` (10 VUs, the steady shape) with a per-object cap of 5 and a tier limit of 20,
for the policies `single` and `hash:shards=auto` (4 shards). So `single` must show the guide's
failure at the cap (5 sockets, the rest refused 503 shard_full) and `hash` must hold all 10 with
no rejection. The five charts must be matplotlib's SVG with something drawn, and the runtime's
CPU and end-of-load RSS must have been read.
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


def main() -> int:
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
    want(len(summary["charts"]) == 5, f"expected 5 charts, got {summary['charts']}")
    for name in summary["charts"]:
        problems.extend(chart_problems(out / name))

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


if __name__ == "__main__":
    sys.exit(main())
