#!/usr/bin/env bash
# Checks Moat's Prometheus alert rules and Grafana dashboard:
#   1. `promtool check rules` on deploy/helm/moat/files/prometheus-rules.yaml;
#   2. `promtool test rules` on tests/prometheus/rules.test.yaml;
#   3. check_metrics.py: every rule and dashboard expression names only contract metrics, the
#      dashboard keeps its uid/title/schema/datasource variable, and (promtool again) every
#      dashboard expression parses.
# Needs promtool (Debian/Ubuntu: `apt-get install --no-install-recommends prometheus`, or the
# binary from a Prometheus release tarball) and python3. Exits non-zero on any failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
rules="$root/deploy/helm/moat/files/prometheus-rules.yaml"
dashboard="$root/deploy/helm/moat/files/grafana-dashboard.json"

if ! command -v promtool >/dev/null 2>&1; then
    echo "promtool not found: install Prometheus' promtool (apt-get install prometheus)" >&2
    exit 2
fi
promtool --version 2>&1 | head -n 1

echo "== promtool check rules"
promtool check rules "$rules"

echo "== promtool test rules"
# The test file names the rule file relative to itself; run from its directory.
(cd "$here" && promtool test rules rules.test.yaml)

echo "== dashboard and metrics contract"
if ! command -v python3 >/dev/null 2>&1; then
    echo "python3 not found" >&2
    exit 2
fi
python3 -m json.tool "$dashboard" >/dev/null
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 "$here/check_metrics.py" "$rules" "$dashboard" "$tmp/dashboard-exprs.yaml"
promtool check rules "$tmp/dashboard-exprs.yaml"

echo "== all Prometheus checks passed"
