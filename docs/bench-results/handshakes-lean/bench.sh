#!/bin/bash
# usage: LEAN_DIR=DIR bench.sh MOAT KIND(edge|responder) ROUNDS OUTPREFIX [PERF]
# DIR holds the server's cert.pem and key.pem (e.g. copies of a `moat dev` data directory's
# tls/server.pem and tls/server-key.pem) and receives the run's scratch files.
set -u
MOAT=$1; KIND=$2; ROUNDS=$3; OUT=$4; PERF=${5:-}
W=${LEAN_DIR:?set LEAN_DIR to a directory holding cert.pem and key.pem}
cat > $W/seed.toml <<SEED
[[tenant]]
id = "example.test"
accepted-domains = ["example.test"]
SEED
taskset -c 1 $MOAT bench sink --listen 127.0.0.1:0 > $W/sink.addr &
SINK_PID=$!
sleep 0.5
SINK=$(cat $W/sink.addr)
cat > $W/edge.toml <<TOML
node-id = "bench"
hostname = "localhost"
[tls]
cert = "$W/cert.pem"
key = "$W/key.pem"
[limits]
max-sessions = 10000
max-sessions-per-ip = 10000
[[listener]]
kind = "mx"
address = "127.0.0.1:12525"
[next-hop]
kind = "smtp"
address = "$SINK"
starttls = "none"
TOML
if [ $KIND = edge ]; then
  taskset -c 0 $MOAT --log warn edge --config $W/edge.toml --seed $W/seed.toml 2> $W/edge.log &
  PID=$!; PORT=12525
else
  taskset -c 0 $MOAT bench starttls-responder --listen 127.0.0.1:12535 --cert $W/cert.pem --key $W/key.pem > $W/resp.addr &
  PID=$!; PORT=12535
fi
sleep 2
cpu() { awk '{print $14+$15}' /proc/$PID/stat; }
# warm-up
taskset -c 1 $MOAT bench smtp --server 127.0.0.1:$PORT --mode starttls --messages-per-connection 0 --concurrency 16 --duration 1 > /dev/null
for r in $(seq $ROUNDS); do
  c0=$(cpu); t0=$(date +%s.%N)
  if [ -n "$PERF" ]; then perf record -F 999 -g -p $PID -o $W/$OUT.perf.data -- sleep 5 2>/dev/null & PP=$!; fi
  taskset -c 1 $MOAT bench smtp --server 127.0.0.1:$PORT --mode starttls --messages-per-connection 0 --concurrency 16 --duration 5 > $W/$OUT-$r.json
  c1=$(cpu); t1=$(date +%s.%N)
  [ -n "$PERF" ] && wait $PP
  python3 - $W/$OUT-$r.json $c0 $c1 $t0 $t1 "$(uptime)" <<'PY'
import json,sys
d=json.load(open(sys.argv[1])); c=(int(sys.argv[3])-int(sys.argv[2]))/100; w=float(sys.argv[5])-float(sys.argv[4])
hs=d.get('handshakes') or d.get('handshakes_full')
print(f"{sys.argv[1]}: handshakes/s={d.get('handshakes_per_second')} full={d.get('handshakes_full')} errors={d.get('errors')} cpu_s={c:.2f} wall={w:.2f} cpu%={100*c/w:.0f} hs_per_cpu_s={(d.get('handshakes_full',0)+d.get('handshakes_resumed',0))/c:.0f} | {sys.argv[6].split('load')[1]}")
PY
done
kill $PID $SINK_PID; wait 2>/dev/null
