#!/usr/bin/env bash
# Issue 17's import scenario: N tenants (default 20,000) with 10 accepted domains each, applied
# with `moat admin apply` (sent in ~1 MB parts) to `moat dev --nodes 3 --edges 3`; prints the
# seed size, the apply's outcome and time, the raft term before and after (a higher term means
# leadership changed), how many tenants `tenant list -o json` then returns, and the propagation
# of 30 writes to the edges.
#
#   cargo build --release -p moat && N=20000 bench/import.sh
set -u
B=${B:-target/release/moat}
D=${D:-$(mktemp -d)}
N=${N:-20000}
python3 - "$N" > $D/seed.toml <<'PY'
import sys
n=int(sys.argv[1])
for t in range(n):
    print('[[tenant]]'); print(f'id = "tenant{t:06d}.example"')
    print('accepted-domains = [' + ', '.join(f'"d{k}.tenant{t:06d}.example"' for k in range(10)) + ']')
PY
ls -l $D/seed.toml | awk '{print "seed bytes:", $5}'
$B dev --data $D --nodes 3 --edges 3 --mx-port 0 --submission-port 0 --smtps-port 0 --legacy-port 0 --control-port 0 > $D/dev.log 2>&1 &
DEV=$!
for i in $(seq 1 180); do [ -s $D/endpoints.json ] && $B admin --data $D tenant list >/dev/null 2>&1 && break; sleep 1; done
echo "cluster up after ${i}s"
$B admin --data $D cluster status -o json > $D/before.json 2>&1
t0=$(date +%s.%N)
$B admin --data $D apply -f $D/seed.toml > $D/apply.out 2>&1; rc=$?
t1=$(date +%s.%N)
echo "apply rc=$rc in $(python3 -c "print(round($t1 - $t0, 2))") s: $(tail -1 $D/apply.out | cut -c1-200)"
$B admin --data $D cluster status -o json > $D/after.json 2>&1
python3 - $D <<'PY'
import json,sys
d=sys.argv[1]
def term(f):
    try:
        j=json.load(open(f))
    except Exception as e:
        return f"? ({open(f).read()[:200]})"
    return {k:j.get(k) for k in ("term","leader","leader_id") if k in j} or str(j)[:300]
print("before:", term(d+"/before.json")); print("after:", term(d+"/after.json"))
PY
t0=$(date +%s.%N)
n=$($B admin --data $D tenant list -o json 2>$D/list.err | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
t1=$(date +%s.%N)
echo "tenant list -o json: $n tenants in $(python3 -c "print(round($t1 - $t0, 2))") s $(head -c 200 $D/list.err)"
$B bench propagation --data $D --writes 30 2>&1 | grep -E "p50|p99|max"
grep -ci "became leader\|leader changed\|new leader" $D/dev.log | sed 's/^/log lines about leadership: /'
kill $DEV; wait $DEV 2>/dev/null
