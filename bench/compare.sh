#!/usr/bin/env bash
# Moat's edge against Postfix, Haraka and Stalwart, same machine, same load, same sinks, alternating.
#
#   bench/compare.sh [SECONDS_PER_RUN] [ROUNDS]
#
# - Builds `moat` in release mode, installs Debian's postfix if missing.
# - Starts `moat bench sink` (the shared next hop, which discards every message).
# - Moat: one edge (`moat edge --seed`) with an mx listener on 127.0.0.1:12525, STARTTLS with
#   the certificate below, relaying everything for example.test to the sink.
# - Postfix: a private instance (its own config and queue under $WORK) with smtpd on
#   127.0.0.1:10025, STARTTLS with the same certificate and key, TLS 1.2+ (1.3 negotiated),
#   relaying example.test to the sink, no milters, no header or body checks.
# - Haraka (npm `Haraka@3`, installed under $WORK when npm is there; HARAKA=0 skips it): one
#   process on 127.0.0.1:11025 with the tls, rcpt_to.in_host_list and queue/smtp_forward
#   plugins: STARTTLS with the same certificate, TLS 1.2+, example.test forwarded to the sink
#   (it answers 250 after the sink did, like Moat), log level warn, `nodes=1` (one worker on
#   the server's core). Haraka never turns Nagle's algorithm off on its sockets (no
#   setNoDelay in Haraka 3.3, and no setting for it), and each transaction then waits for two
#   delayed ACKs (about 40 ms each, one on the client's connection, one on the forwarding
#   connection). HARAKA_NODELAY=1 (the default) starts Node with a 4-line `--require` shim that
#   sets TCP_NODELAY on every socket Haraka opens or accepts, as Moat, Postfix and the load
#   generator do; HARAKA_NODELAY=0 measures Haraka as it is shipped.
# - Stalwart (STALWART=/path/to/stalwart, a binary built from its public repository; see
#   docs/benchmarks.md for the build): one process with its SMTP listener on 127.0.0.1:13025,
#   STARTTLS with the same certificate, relaying example.test to a second sink on the host's
#   first non-loopback address (Stalwart never delivers to a loopback address), RocksDB as its
#   store (STALWART_STORE=sqlite for a binary built with SQLite only). Stalwart 0.16 keeps its
#   settings behind its JMAP API, so the script starts it once with its defaults (which bind
#   its default ports, 25, 465, 993, 995, 4190, 443 and 8080, on every address), configures it
#   with bench/stalwart.py (that file says what it sets, and why), and starts it again. Like
#   Postfix it queues each message before answering 250; each run waits until its queue drained.
# - Server pinned to CPU 0, load generator to CPU 1 (taskset) when the machine has 2+ CPUs.
# - Moat as a cluster too, for TLS resumption (issue 20): `moat dev` (control node 1 and edge 1,
#   mx on 127.0.0.1:12526) and a second edge, `moat edge --control` (mx on 127.0.0.1:12527),
#   both relaying to the sink with the same certificate; the control plane gives both the same
#   session ticket keys. (`moat dev --edges 2` would start the second edge itself, but with a
#   maildir next hop that fsyncs every message; this one has the sink like edge 1.)
# - For each workload (STARTTLS with 50 messages per connection; STARTTLS with 1 message per
#   connection; plain with 50; then STARTTLS with 1 message per connection against the cluster:
#   `full` without resumption, `resume` with `moat bench smtp --resume` against edge 1, and
#   `resume2` with `--resume` alternating between edge 1 and edge 2, Moat only) and each round:
#   Moat, then Postfix (and Haraka, and Stalwart), then the next round. Postfix keeps TLS sessions (cache
#   database and tickets, below), so its `resume` row is resumed too.
#   JSON reports go to $WORK/results/*.json and a summary with ratios to stdout.
#
# It needs root (Postfix), and adds the private instance to `alternate_config_directories` in
# /etc/postfix/main.cf (creating that file if the package left none).
#
# Postfix and Stalwart queue before they answer 250 and deliver later; Moat's edge keeps no
# queue and answers 250 only after the next hop did, and so does Haraka with smtp_forward. The
# summary has both figures: accepted messages per second as the client saw them, and sustained
# ones, where a queueing server's run lasts until its queue drained (delivery included, and
# so its CPU); each server starts its run with an empty queue and an idle core.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
ROUNDS=${2:-3}
WORK=${WORK:-/tmp/moat-bench}
rm -rf "$WORK" && mkdir -p "$WORK/results"

command -v postfix >/dev/null 2>&1 || {
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix >/dev/null
}
command -v taskset >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq util-linux >/dev/null
cargo build --release --locked -p moat
# A copy: the target directory may be shared with other worktrees that build meanwhile.
cp "${CARGO_TARGET_DIR:-$PWD/target}/release/moat" "$WORK/moat"
MOAT=$WORK/moat

SERVER_CPU="taskset -c 0"
CLIENT_CPU="taskset -c 1"
if [ "$(nproc)" -lt 2 ]; then SERVER_CPU=""; CLIENT_CPU=""; fi

# One certificate for both servers (ECDSA P-256, CN and SAN localhost).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost 2>/dev/null

$CLIENT_CPU "$MOAT" bench sink --listen 127.0.0.1:0 > "$WORK/sink.addr" &
SINK_PID=$!
cleanup() {
  kill "$SINK_PID" "${EDGE_PID:-}" "${EDGE2_PID:-}" 2>/dev/null || true
  # moat dev stops its own children on SIGTERM.
  [ -z "${DEV_PID:-}" ] || { kill "$DEV_PID" 2>/dev/null; wait "$DEV_PID" 2>/dev/null; } || true
  postfix -c "$WORK/postfix" stop >/dev/null 2>&1 || true
  [ -z "${HARAKA_PID:-}" ] || kill "$HARAKA_PID" 2>/dev/null || true
  kill "${STALWART_PID:-}" "${SINK2_PID:-}" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 50); do [ -s "$WORK/sink.addr" ] && break; sleep 0.1; done
SINK=$(cat "$WORK/sink.addr")
echo "sink on $SINK"

# --- Stalwart (first, while its default ports are free of the others) ----------------------
if [ -n "${STALWART:-}" ]; then
  HOST_IP=$(hostname -I | awk '{print $1}')
  $CLIENT_CPU "$MOAT" bench sink --listen "$HOST_IP:0" > "$WORK/sink2.addr" &
  SINK2_PID=$!
  for _ in $(seq 50); do [ -s "$WORK/sink2.addr" ] && break; sleep 0.1; done
  ST=$WORK/stalwart
  mkdir -p "$ST"
  case "${STALWART_STORE:-rocksdb}" in
    rocksdb) printf '{"@type":"RocksDb","path":"%s/data"}\n' "$ST" ;;
    sqlite) printf '{"@type":"Sqlite","path":"%s/data.db","poolMaxConnections":10}\n' "$ST" ;;
  esac > "$ST/config.json"
  STALWART_ADMIN=admin:$(openssl rand -hex 12)
  export STALWART_RECOVERY_ADMIN=$STALWART_ADMIN
  "$STALWART" --config "$ST/config.json" > "$ST/first.log" 2>&1 &
  STALWART_PID=$!
  python3 bench/stalwart.py configure http://127.0.0.1:8080 "$STALWART_ADMIN" \
    "$WORK/cert.pem" "$WORK/key.pem" 127.0.0.1:13025 "$(cat "$WORK/sink2.addr")" "$ST"
  kill "$STALWART_PID"
  wait "$STALWART_PID" 2>/dev/null || true
  $SERVER_CPU "$STALWART" --config "$ST/config.json" > "$ST/stalwart.out" 2>&1 &
  STALWART_PID=$!
fi

# --- Moat's edge -------------------------------------------------------------------------
cat > "$WORK/seed.toml" <<SEED
[[tenant]]
id = "example.test"
accepted-domains = ["example.test"]
SEED
# An edge's configuration: NODE_ID, its mx listener's address, then any other top-level lines;
# the shared certificate, no session limits in the way, the sink as next hop.
edge_toml() {
  printf 'node-id = "%s"\n' "$1"
  [ -z "${3:-}" ] || printf '%s\n' "$3"
  cat <<TOML
[tls]
cert = "$WORK/cert.pem"
key = "$WORK/key.pem"
[limits]
max-sessions = 10000
max-sessions-per-ip = 10000
[[listener]]
kind = "mx"
address = "$2"
[next-hop]
kind = "smtp"
address = "$SINK"
starttls = "none"
TOML
}
edge_toml bench 127.0.0.1:12525 'hostname = "localhost"' > "$WORK/edge.toml"
$SERVER_CPU "$MOAT" --log warn edge --config "$WORK/edge.toml" --seed "$WORK/seed.toml" \
  2> "$WORK/edge.log" &
EDGE_PID=$!

# --- Moat as a cluster: moat dev (control node 1, edge 1) and a second edge -------------------
edge_toml edge-1 127.0.0.1:12526 > "$WORK/dev-edge.toml"
$SERVER_CPU "$MOAT" --log warn dev --data "$WORK/dev" --config "$WORK/dev-edge.toml" \
  --control-port 0 --console-port 0 > "$WORK/dev.out" 2> "$WORK/dev.log" &
DEV_PID=$!
for _ in $(seq 600); do [ -s "$WORK/dev/endpoints.json" ] && break; sleep 0.1; done
read -r CONTROL ICA ICERT IKEY < <(python3 -c "import json; e=json.load(open('$WORK/dev/endpoints.json')); t=e['internal_tls']; print(','.join(c['address'] for c in e['control']), t['ca'], t['edge_cert'], t['edge_key'])")
edge_toml edge-2 127.0.0.1:12527 > "$WORK/edge2.toml"
printf '[control-tls]\nca = "%s"\ncert = "%s"\nkey = "%s"\n' "$ICA" "$ICERT" "$IKEY" >> "$WORK/edge2.toml"
$SERVER_CPU "$MOAT" --log warn edge --config "$WORK/edge2.toml" --control "$CONTROL" \
  --status 127.0.0.1:12528 2> "$WORK/edge2.log" &
EDGE2_PID=$!

# --- Postfix ------------------------------------------------------------------------------
PF=$WORK/postfix
mkdir -p "$PF" "$WORK/pfqueue" "$WORK/pfdata"
cp /etc/postfix/master.cf "$PF/master.cf"
cat > "$PF/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $WORK/pfqueue
data_directory = $WORK/pfdata
myhostname = localhost
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = example.test
transport_maps = inline:{ example.test=smtp:[${SINK%:*}]:${SINK##*:} }
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
smtpd_tls_cert_file = $WORK/cert.pem
smtpd_tls_key_file = $WORK/key.pem
smtpd_tls_security_level = may
smtpd_tls_protocols = >=TLSv1.2
smtp_tls_security_level = none
default_process_limit = 200
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_error_sleep_time = 0
maillog_file = $WORK/postfix.log
maillog_file_prefixes = /var, /dev/stdout, $WORK
CF
# smtpd on 127.0.0.1:10025 instead of port 25.
sed -i 's/^smtp      inet/127.0.0.1:10025 inet/' "$PF/master.cf"
# TLS sessions: tickets (keys from tlsmgr, shared by every smtpd process, TLS 1.2 and 1.3)
# and a session cache database (TLS 1.2 session ids), both for an hour.
SCACHE_TYPE=btree
postconf -c "$PF" -m | grep -qx lmdb && SCACHE_TYPE=lmdb
cat >> "$PF/main.cf" <<CF
smtpd_tls_session_cache_database = $SCACHE_TYPE:$WORK/pfdata/smtpd_scache
smtpd_tls_session_cache_timeout = 3600s
tls_session_ticket_cipher = aes-256-cbc
CF
# Postfix runs an instance with another config directory only when the default one lists it.
[ -f /etc/postfix/main.cf ] || printf 'compatibility_level = 3.6\n' > /etc/postfix/main.cf
postconf -e "alternate_config_directories = $PF"
# No chroot: the private instance has no chroot tree.
postconf -c "$PF" -F '*/*/chroot = n'
chown postfix "$WORK/pfdata"
postfix -c "$PF" check
$SERVER_CPU postfix -c "$PF" start

# --- Haraka ---------------------------------------------------------------------------------
PORTS="12525 12526 12527 10025"
if [ "${HARAKA:-1}" = 1 ] && command -v npm >/dev/null 2>&1; then
  npm install --silent --no-audit --no-fund --prefix "$WORK/haraka-pkg" Haraka@3 >/dev/null
  HK=$WORK/haraka
  "$WORK/haraka-pkg/node_modules/.bin/haraka" -i "$HK" >/dev/null
  printf 'listen=127.0.0.1:11025\nnodes=1\n' > "$HK/config/smtp.ini"
  printf 'tls\nrcpt_to.in_host_list\nqueue/smtp_forward\n' > "$HK/config/plugins"
  echo example.test > "$HK/config/host_list"
  cp "$WORK/key.pem" "$HK/config/tls_key.pem"
  cp "$WORK/cert.pem" "$HK/config/tls_cert.pem"
  printf 'key=tls_key.pem\ncert=tls_cert.pem\nminVersion=TLSv1.2\n' > "$HK/config/tls.ini"
  printf 'host=%s\nport=%s\n' "${SINK%:*}" "${SINK##*:}" > "$HK/config/smtp_forward.ini"
  printf '[main]\nlevel=warn\n' > "$HK/config/log.ini"
  HK_NODE_OPTIONS=""
  if [ "${HARAKA_NODELAY:-1}" = 1 ]; then
    cat > "$WORK/haraka-nodelay.js" <<'JS'
// TCP_NODELAY on every socket Haraka connects (smtp_forward) or accepts (its listeners).
const net = require('node:net')
const connect = net.Socket.prototype.connect
net.Socket.prototype.connect = function (...a) { this.setNoDelay(true); return connect.apply(this, a) }
const listen = net.Server.prototype.listen
net.Server.prototype.listen = function (...a) { this.on('connection', (s) => s.setNoDelay(true)); return listen.apply(this, a) }
JS
    HK_NODE_OPTIONS="--require $WORK/haraka-nodelay.js"
  fi
  NODE_OPTIONS="$HK_NODE_OPTIONS" $SERVER_CPU "$WORK/haraka-pkg/node_modules/.bin/haraka" -c "$HK" > "$WORK/haraka.log" 2>&1 &
  HARAKA_PID=$!
  PORTS="$PORTS 11025"
fi
[ -z "${STALWART_PID:-}" ] || PORTS="$PORTS 13025"

for port in $PORTS; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done

# CPU clock ticks used so far by processes PIDS and their descendants (reaped children count
# through their parent's cutime and cstime).
ticks() {
  local all=" $* " queue="$*" p c
  while [ -n "${queue// /}" ]; do
    set -- $queue; p=$1; shift; queue="$*"
    for c in $(pgrep -P "$p" 2>/dev/null); do all="$all$c "; queue="$queue $c"; done
  done
  # shellcheck disable=SC2086
  cat $(for p in $all; do echo "/proc/$p/stat"; done) 2>/dev/null |
    awk '{ sub(/.*\) /, ""); t += $12 + $13 + $14 + $15 } END { print t + 0 }'
}

# Postfix and Stalwart answer 250 once a message is queued and deliver it afterwards: a run
# against either ends when its queue is empty again, and the delivery after the client stopped
# counts in the run's figures (below), as it does for the servers that relay before they answer.
postfix_drain() {
  for _ in $(seq 600); do
    [ -z "$(find "$WORK/pfqueue/active" "$WORK/pfqueue/incoming" "$WORK/pfqueue/deferred" -type f 2>/dev/null | head -1)" ] && return
    sleep 0.2
  done
}
stalwart_drain() { python3 bench/stalwart.py drain http://127.0.0.1:8080 "$STALWART_ADMIN"; }

run() { # NAME SERVER MODE PER_CONN CONCURRENCY [--resume]; SERVER_PIDS: the server's processes;
  # DRAIN: for a queueing server, a command that returns once its queue is empty.
  local out="$WORK/results/$1.json" t0 t1 w0 w1 wr
  t0=$(ticks $SERVER_PIDS) w0=$(date +%s.%N)
  $CLIENT_CPU "$MOAT" bench smtp --server "$2" --mode "$3" --messages-per-connection "$4" \
    --concurrency "$5" --duration "$SECONDS_PER_RUN" --tls-version 1.3 ${6:-} > "$out"
  wr=$(date +%s.%N)
  [ -z "${DRAIN:-}" ] || $DRAIN
  t1=$(ticks $SERVER_PIDS) w1=$(date +%s.%N)
  [ -n "${DRAIN:-}" ] || wr=$w1
  # - server_cpu_cores: the server's CPU from the first connection to the last delivery, in
  #   cores (1.0: its whole core); server_cpu_us_per_message: the same CPU per message.
  # - drain_seconds: how long the queue took to empty after the client stopped (0: no queue).
  # - sustained_messages_per_second: messages / (the client's seconds + drain_seconds), what
  #   the server accepted and delivered; messages_per_second is what the client saw accepted.
  python3 - "$out" "$(( t1 - t0 ))" "$(getconf CLK_TCK)" "$w0" "$wr" "$w1" <<'PY'
import json, sys
path, ticks, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
w0, wr, w1 = (float(a) for a in sys.argv[4:7])
r = json.load(open(path))
cpu = ticks / hz
r["server_cpu_cores"] = round(cpu / (w1 - w0), 3)
r["server_cpu_us_per_message"] = round(cpu * 1e6 / r["messages"]) if r["messages"] else None
r["drain_seconds"] = round(w1 - wr, 2)
r["sustained_messages_per_second"] = r["messages"] / (r["seconds"] + r["drain_seconds"])
json.dump(r, open(path, "w"), indent=2)
name = path.rsplit("/", 1)[1][:-5]
p99 = (r["latency"]["transaction"] or {}).get("p99_ms") or 0
line = f"{name:40s} {r['messages_per_second']:9.1f} msg/s {r['handshakes_per_second']:8.1f} hs/s p99 {p99:7.2f} ms errors {sum(r['errors'].values())}"
line += f" cpu {r['server_cpu_cores'] * 100:.0f}%"
if r["drain_seconds"]:
    line += f" drain {r['drain_seconds']:.1f} s sustained {r['sustained_messages_per_second']:.1f} msg/s"
if r.get("resume"):
    line += f" resumed {r['handshakes_resumed']}/{r['handshakes']}"
print(line)
PY
}

# The cluster serves once both edges hold the cluster's ticket keys: a ticket edge 1 issued
# resumes on edge 2 (a short run alternating between them, until most handshakes resume).
for _ in $(seq 60); do
  r=$("$MOAT" bench smtp --server 127.0.0.1:12526,127.0.0.1:12527 --resume --count 20 \
    --concurrency 1 --duration 10 2>/dev/null | python3 -c "import json,sys; r=json.load(sys.stdin); print(r['handshakes_resumed'] * 2 >= r['handshakes'])" || echo False)
  [ "$r" = True ] && break
  sleep 0.5
done
[ "$r" = True ] || { echo "the two edges do not resume each other's tickets" >&2; exit 1; }

# WORKLOADS="MODE PER_CONN CONCURRENCY;..." overrides the default set (e.g. a concurrency sweep).
# A fourth field picks the cluster: `full` (edge 1, no resumption), `resume` (edge 1,
# `--resume`), `resume2` (`--resume`, edges 1 and 2 in turn; Moat only: Postfix, Haraka and Stalwart are
# one server each, their `resume` row is theirs).
IFS=';' read -r -a workloads <<< "${WORKLOADS:-starttls 50 16;starttls 1 16;plain 50 16;starttls 1 16 full;starttls 1 16 resume;starttls 1 16 resume2}"
for workload in "${workloads[@]}"; do
  # shellcheck disable=SC2086
  set -- $workload
  flavour=${4:-}
  moat=127.0.0.1:12525 moat_pids=$EDGE_PID resume="" others=1
  case "$flavour" in
    full) moat=127.0.0.1:12526 moat_pids=$DEV_PID ;;
    resume) moat=127.0.0.1:12526 moat_pids=$DEV_PID resume=--resume ;;
    resume2) moat=127.0.0.1:12526,127.0.0.1:12527 moat_pids="$DEV_PID $EDGE2_PID" resume=--resume others=0 ;;
  esac
  name="$1-$2-c$3${flavour:+-$flavour}"
  for round in $(seq "$ROUNDS"); do
    SERVER_PIDS=$moat_pids run "moat-$name-r$round" "$moat" "$1" "$2" "$3" $resume
    [ "$others" = 0 ] || SERVER_PIDS=$(cat "$WORK/pfqueue/pid/master.pid" 2>/dev/null) \
      DRAIN=postfix_drain run "postfix-$name-r$round" 127.0.0.1:10025 "$1" "$2" "$3" $resume
    [ -z "${HARAKA_PID:-}" ] || [ "$others" = 0 ] ||
      SERVER_PIDS=$HARAKA_PID run "haraka-$name-r$round" 127.0.0.1:11025 "$1" "$2" "$3" $resume
    [ -z "${STALWART_PID:-}" ] || [ "$others" = 0 ] || SERVER_PIDS=$STALWART_PID \
      DRAIN=stalwart_drain run "stalwart-$name-r$round" 127.0.0.1:13025 "$1" "$2" "$3" $resume
  done
done

python3 - "$WORK/results" <<'PY'
import json, os, statistics, sys
d = sys.argv[1]
servers = ("moat", "postfix", "haraka", "stalwart")
runs = {}
for f in sorted(os.listdir(d)):
    server, rest = f.split("-", 1)
    workload = rest.rsplit("-r", 1)[0]
    runs.setdefault(workload, {}).setdefault(server, []).append(json.load(open(os.path.join(d, f))))
ratio = lambda a, b: f"{a / b:7.2f}x" if b else "      -"
for key, title in (
    ("messages_per_second", "accepted msg/s, as the client saw them"),
    ("sustained_messages_per_second", "sustained msg/s: accepted and delivered, the queue drained"),
):
    print(f"\n{title} (medians of rounds)")
    print(f"{'workload':28s}" + "".join(f"{s:>11s}" for s in servers) + "".join(f"{'moat/' + s:>16s}" for s in servers[1:]))
    for w, by in runs.items():
        m = {s: statistics.median(r.get(key, 0) for r in by[s]) if s in by else 0 for s in servers}
        print(f"{w:28s}" + "".join(f"{m[s]:11.1f}" for s in servers) + "".join(f"{ratio(m['moat'], m[s]):>16s}" for s in servers[1:]))
PY
