#!/usr/bin/env bash
# Explain reads and tenant deletions at issue 17's population, through the CLI, so that a
# build without `moat bench policy --explains` can be measured the same way.
#
#   bash bench.sh MOAT_BINARY OUT_DIR [TENANTS]
#
# Starts `moat dev --nodes 3 --edges 1` on free ports, loads TENANTS tenants with
# `moat bench policy` (10 domains, 10 connectors and 1 user each), then times 30
# `moat admin explain` runs (a Partner connector's client sending to its tenant) and 10
# `moat admin tenant delete` runs, each a whole CLI process (start, TLS, the read or write,
# and for explain the verdicts). Writes OUT_DIR/cli.json and the bench's own report.
set -euo pipefail
MOAT=$(realpath "$1"); OUT=$(realpath -m "$2"); TENANTS=${3:-100000}
mkdir -p "$OUT"
D=$(mktemp -d /tmp/explain-scale.XXXXXX)
"$MOAT" dev --data "$D" --nodes 3 --edges 1 --mx-port 0 --submission-port 0 --smtps-port 0 \
    --legacy-port 0 --control-port 0 --console-port 0 >"$D/dev.log" 2>&1 &
DEV=$!
trap 'kill $DEV 2>/dev/null; wait $DEV 2>/dev/null; rm -rf "$D"' EXIT
for _ in $(seq 120); do
    "$MOAT" admin --data "$D" cluster status >/dev/null 2>&1 && break
    sleep 1
done
EXTRA=()
"$MOAT" bench policy --help | grep -q -- --explains && EXTRA=(--explains 30 --deletes 10)
"$MOAT" bench policy --data "$D" --tenants "$TENANTS" --changes 10 "${EXTRA[@]}" >"$OUT/policy.json"
ip() { local n=$1; echo "$((10 + (n >> 24) % 100)).$(((n >> 16) & 255)).$(((n >> 8) & 255)).$((n & 255))"; }
now() { date +%s%N; }
explain_ms=(); delete_ms=()
for i in $(seq 0 29); do
    t=$(((i * 7919 + 13) % (TENANTS - 20)))
    t0=$(now)
    "$MOAT" admin --data "$D" explain --client-ip "$(ip $((t * 10 + 3)))" \
        --mail-from "x@partner3.example" --rcpt "u0@d0.bench-$t.example" -o json >"$D/explain.json"
    explain_ms+=($(( ($(now) - t0) / 1000000 )))
done
cp "$D/explain.json" "$OUT/explain-last.json"
for i in $(seq 0 9); do
    t0=$(now)
    "$MOAT" admin --data "$D" tenant delete "bench-$((TENANTS - 20 - 1 - i))" >/dev/null
    delete_ms+=($(( ($(now) - t0) / 1000000 )))
done
python3 - "$OUT/cli.json" "${explain_ms[*]}" "${delete_ms[*]}" <<'PY'
import json, sys
def stats(v):
    v = sorted(int(x) for x in v.split())
    return {"n": len(v), "p50_ms": v[len(v) // 2], "p99_ms": v[-1], "min_ms": v[0], "max_ms": v[-1]}
json.dump({"explain_cli": stats(sys.argv[2]), "tenant_delete_cli": stats(sys.argv[3])},
          open(sys.argv[1], "w"), indent=2)
PY
cat "$OUT/cli.json"
