#!/usr/bin/env python3
"""Checks ops/grafana/dashboard.json: valid JSON, a sound panel layout, declared variables,
every capacity-guide metric on some panel, and writes every PromQL query (variables
substituted) into a rules file so that `promtool check rules` parses each one.

usage: check_dashboard.py DASHBOARD.json OUT-rules.yml
"""
import json
import re
import sys

# The capacity guide's metrics: each must be on the dashboard.
SEED_METRICS = [
    "do_connections_total", "do_connections_rejected", "do_connection_rejection_rate",
    "do_response_time", "do_memory_usage_bytes", "do_oldest_connection_ms",
    "ws_message_latency", "ws_broadcast_delivery_time", "ws_connection_time",
    "ws_connection_success", "ws_connection_errors",
]
# What a query variable stands for when promtool parses the query.
SUBSTITUTE = {"$tier": ".*", "$user": ".*", "$__rate_interval": "5m", "$__interval": "1m"}


def fail(msg):
    sys.exit(f"dashboard check: {msg}")


def panels_of(dash):
    for p in dash.get("panels", []):
        yield p
        yield from p.get("panels", [])


def main(path, out):
    try:
        with open(path, encoding="utf-8") as f:
            dash = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        fail(f"{path}: {e}")
    for key in ("uid", "title", "schemaVersion", "panels", "templating"):
        if key not in dash:
            fail(f"missing top-level {key!r}")
    variables = {v["name"] for v in dash["templating"]["list"]}
    ids, queries = set(), []
    for p in panels_of(dash):
        title = p.get("title", "?")
        if p.get("id") in ids:
            fail(f"duplicate panel id {p.get('id')} ({title})")
        ids.add(p.get("id"))
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in "hwxy") or g["x"] + g["w"] > 24:
            fail(f"panel {title!r}: bad gridPos {g}")
        if p.get("type") == "row":
            continue
        ds = p.get("datasource", {}).get("uid", "")
        if ds != "${datasource}":
            fail(f"panel {title!r}: datasource {ds!r} is not the ${{datasource}} variable")
        targets = p.get("targets", [])
        if not targets:
            fail(f"panel {title!r} has no query")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            fail(f"panel {title!r}: duplicate refId")
        for t in targets:
            expr = t.get("expr", "").strip()
            if not expr:
                fail(f"panel {title!r}: empty query")
            for var in re.findall(r"\$\{?(\w+)", expr):
                if var not in variables and f"${var}" not in SUBSTITUTE:
                    fail(f"panel {title!r}: undeclared variable ${var}")
            for var, value in SUBSTITUTE.items():
                expr = expr.replace(var, value)
            queries.append((title, expr))
    text = " ".join(q for _, q in queries)
    missing = [m for m in SEED_METRICS if not re.search(rf"\b{m}(_bucket|_count|_sum)?\b", text)]
    if missing:
        fail(f"no panel shows {', '.join(missing)}")
    with open(out, "w", encoding="utf-8") as f:
        f.write("groups:\n  - name: dashboard-queries\n    rules:\n")
        for i, (title, expr) in enumerate(queries):
            f.write(f"      # {title}\n      - record: dashboard:query:{i}\n")
            f.write(f"        expr: {json.dumps(expr)}\n")
    print(f"dashboard: {len(ids)} panels, {len(queries)} queries, every guide metric shown")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
