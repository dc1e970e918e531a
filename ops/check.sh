#!/usr/bin/env bash
# Checks the ops assets, offline: the Prometheus rules (syntax, lint, unit tests) and the
# Grafana dashboard (JSON, layout, and every PromQL query parsed by promtool).
# Installs promtool (Debian's prometheus package) first when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-promtool.sh
promtool check rules --lint=all --lint-fatal ops/prometheus/alerts.yml
promtool test rules ops/prometheus/alerts.test.yml

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 ops/grafana/check_dashboard.py ops/grafana/dashboard.json "$tmp/dashboard-queries.yml"
promtool check rules "$tmp/dashboard-queries.yml" >/dev/null
echo "check-ops: ok"
