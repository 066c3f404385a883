#!/usr/bin/env bash
# Installs what Moat's tests need on a Debian machine with the Rust toolchain, then runs every
# check CI runs: formatting, clippy (warnings are errors), unit tests and the end-to-end suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real clients the end-to-end tests drive: swaks, Python's smtplib, openssl s_client; and
# OpenSSL's headers for the legacy (TLS 1.0/1.1) engine.
missing=()
command -v swaks >/dev/null 2>&1 || missing+=(swaks)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
# Prometheus and promtool: the alert rules' unit tests, `promtool check metrics` on every
# /metrics endpoint, and a real Prometheus scraping a `moat dev` cluster.
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# The system's trusted CAs, which https alert webhooks are checked against.
[ -s /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
# Debian's Chromium, headless, for the admin console's browser tests (and a font to render
# its pages' text in screenshots).
[ -x /usr/bin/chromium ] || missing+=(chromium)
dpkg -s fonts-dejavu-core >/dev/null 2>&1 || missing+=(fonts-dejavu-core)
if ((${#missing[@]})); then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The Helm chart, rendered and linted by Helm's own engine (the helm-python-sdk wheel carries
# it), validated against Kubernetes' schemas.
python3 -c 'import helm_python, kubernetes_validate' 2>/dev/null ||
  python3 -m pip install -q --disable-pip-version-check -r tests/helm/requirements.txt
python3 tests/helm/test_chart.py
# Playwright drives that Chromium; its package carries its own driver and downloads no browser.
python3 -c 'import playwright' 2>/dev/null ||
  python3 -m pip install -q --disable-pip-version-check -r tests/console/requirements.txt
bash tests/prometheus/run.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# The verdict benchmark, once, on a snapshot a hundred times smaller: it works (no timing is
# asserted; `cargo bench -p moat-edge --bench verdict` measures).
cargo test -p moat-edge --bench verdict --locked
# The comparison scripts are run by hand (docs/benchmarks.md); here they only have to parse.
for f in bench/*.sh; do bash -n "$f"; done
python3 -c "import ast, sys; [ast.parse(open(f).read(), f) for f in sys.argv[1:]]" bench/*.py
# Fuzz targets, 20 seconds each from the committed corpus (fuzz/README.md).
bash scripts/fuzz.sh
# Hostile SMTP sessions from Python sockets, and a TLS scan with sslyze (installed from PyPI
# by the script if missing): nothing below the listeners' policy is offered.
python3 tests/adversarial/smtp_sessions.py
python3 tests/adversarial/tls_audit.py
# The admin console in a real browser: sign-in, a flood restricted and unblocked from the
# Restricted entities page, tenant scope, CSRF, a reader, the on-prem pause, CSV downloads.
python3 tests/console/console.py
# Chaos: a 3-node control plane and 2 edges under mail load for 3 minutes while nodes are
# killed, frozen and restarted and the next hop fills up; nothing acknowledged may be lost.
# Network partitions: control nodes and edges in network namespaces, links cut and healed
# (skips with a message where namespaces are not allowed).
python3 tests/partition/partition.py
python3 tests/chaos/chaos.py
python3 tests/chaos/frozen_node.py
# One closing line for the whole run (cargo prints one per test binary, the last often a doc-test
# binary with nothing in it).
awk '/^test result:/ { p += $4; f += $6 } END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
