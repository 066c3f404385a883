#!/usr/bin/env bash
# Moat's edge against Postfix and Haraka, same machine, same load, same sink, alternating.
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
#   (it answers 250 after the sink did, like Moat), log level warn.
# - Server pinned to CPU 0, load generator to CPU 1 (taskset) when the machine has 2+ CPUs.
# - For each workload (STARTTLS with 50 messages per connection; STARTTLS with 1 message per
#   connection; plain with 50) and each round: Moat, then Postfix, then the next round.
#   JSON reports go to $WORK/results/*.json and a summary with ratios to stdout.
#
# It needs root (Postfix), and adds the private instance to `alternate_config_directories` in
# /etc/postfix/main.cf (creating that file if the package left none).
#
# Postfix queues (write + fsync) before it answers 250 and delivers later; Moat's edge keeps no
# queue and answers 250 only after the next hop did, and so does Haraka with smtp_forward. Both are "accepted for delivery" as a
# client sees it: that is what is compared.
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
cargo build --release --locked --bin moat
MOAT=$PWD/target/release/moat

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
  kill "$SINK_PID" "${EDGE_PID:-}" 2>/dev/null || true
  postfix -c "$WORK/postfix" stop >/dev/null 2>&1 || true
  [ -z "${HARAKA_PID:-}" ] || kill "$HARAKA_PID" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 50); do [ -s "$WORK/sink.addr" ] && break; sleep 0.1; done
SINK=$(cat "$WORK/sink.addr")
echo "sink on $SINK"

# --- Moat's edge -------------------------------------------------------------------------
cat > "$WORK/seed.toml" <<SEED
[[tenant]]
id = "example.test"
accepted-domains = ["example.test"]
SEED
cat > "$WORK/edge.toml" <<TOML
node-id = "bench"
hostname = "localhost"
[tls]
cert = "$WORK/cert.pem"
key = "$WORK/key.pem"
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
$SERVER_CPU "$MOAT" --log warn edge --config "$WORK/edge.toml" --seed "$WORK/seed.toml" \
  2> "$WORK/edge.log" &
EDGE_PID=$!

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
# Postfix runs an instance with another config directory only when the default one lists it.
[ -f /etc/postfix/main.cf ] || printf 'compatibility_level = 3.6\n' > /etc/postfix/main.cf
postconf -e "alternate_config_directories = $PF"
# No chroot: the private instance has no chroot tree.
postconf -c "$PF" -F '*/*/chroot = n'
chown postfix "$WORK/pfdata"
postfix -c "$PF" check
$SERVER_CPU postfix -c "$PF" start

# --- Haraka ---------------------------------------------------------------------------------
PORTS="12525 10025"
if [ "${HARAKA:-1}" = 1 ] && command -v npm >/dev/null 2>&1; then
  npm install --silent --no-audit --no-fund --prefix "$WORK/haraka-pkg" Haraka@3 >/dev/null
  HK=$WORK/haraka
  "$WORK/haraka-pkg/node_modules/.bin/haraka" -i "$HK" >/dev/null
  printf 'listen=127.0.0.1:11025\n' > "$HK/config/smtp.ini"
  printf 'tls\nrcpt_to.in_host_list\nqueue/smtp_forward\n' > "$HK/config/plugins"
  echo example.test > "$HK/config/host_list"
  cp "$WORK/key.pem" "$HK/config/tls_key.pem"
  cp "$WORK/cert.pem" "$HK/config/tls_cert.pem"
  printf 'key=tls_key.pem\ncert=tls_cert.pem\nminVersion=TLSv1.2\n' > "$HK/config/tls.ini"
  printf 'host=%s\nport=%s\n' "${SINK%:*}" "${SINK##*:}" > "$HK/config/smtp_forward.ini"
  printf '[main]\nlevel=warn\n' > "$HK/config/log.ini"
  $SERVER_CPU "$WORK/haraka-pkg/node_modules/.bin/haraka" -c "$HK" > "$WORK/haraka.log" 2>&1 &
  HARAKA_PID=$!
  PORTS="$PORTS 11025"
fi

for port in $PORTS; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done

run() { # NAME SERVER MODE PER_CONN CONCURRENCY
  local out="$WORK/results/$1.json"
  $CLIENT_CPU "$MOAT" bench smtp --server "$2" --mode "$3" --messages-per-connection "$4" \
    --concurrency "$5" --duration "$SECONDS_PER_RUN" --tls-version 1.3 > "$out"
  python3 -c "import json,sys; r=json.load(open('$out')); print(f\"{'$1':40s} {r['messages_per_second']:9.1f} msg/s {r['handshakes_per_second']:8.1f} hs/s p99 {((r['latency']['transaction'] or {}).get('p99_ms') or 0):7.2f} ms errors {sum(r['errors'].values())}\")"
}

# WORKLOADS="MODE PER_CONN CONCURRENCY;..." overrides the default set (e.g. a concurrency sweep).
IFS=';' read -r -a workloads <<< "${WORKLOADS:-starttls 50 16;starttls 1 16;plain 50 16}"
for workload in "${workloads[@]}"; do
  # shellcheck disable=SC2086
  set -- $workload
  for round in $(seq "$ROUNDS"); do
    run "moat-$1-$2-c$3-r$round" 127.0.0.1:12525 "$1" "$2" "$3"
    run "postfix-$1-$2-c$3-r$round" 127.0.0.1:10025 "$1" "$2" "$3"
    [ -z "${HARAKA_PID:-}" ] || run "haraka-$1-$2-c$3-r$round" 127.0.0.1:11025 "$1" "$2" "$3"
    # Each run starts with an empty Postfix queue: wait until it delivered its backlog (it
    # answers 250 once a message is queued, and delivers to the sink afterwards).
    for _ in $(seq 600); do
      [ -z "$(find "$WORK/pfqueue/active" "$WORK/pfqueue/incoming" "$WORK/pfqueue/deferred" -type f 2>/dev/null | head -1)" ] && break
      sleep 0.2
    done
  done
done

python3 - "$WORK/results" <<'PY'
import json, os, statistics, sys
d = sys.argv[1]
runs = {}
for f in sorted(os.listdir(d)):
    server, rest = f.split("-", 1)
    workload = rest.rsplit("-r", 1)[0]
    runs.setdefault(workload, {}).setdefault(server, []).append(
        json.load(open(os.path.join(d, f)))["messages_per_second"])
print("\nworkload                      moat msg/s   postfix msg/s   haraka msg/s   moat/postfix   moat/haraka  (medians of rounds)")
for w, s in runs.items():
    m, p, h = (statistics.median(s.get(k, [0])) for k in ("moat", "postfix", "haraka"))
    ratio = lambda a, b: f"{a / b:8.2f}x" if b else "       -"
    print(f"{w:28s} {m:11.1f} {p:14.1f} {h:14.1f} {ratio(m, p):>14s} {ratio(m, h):>13s}")
PY
