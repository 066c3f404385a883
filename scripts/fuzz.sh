#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for FUZZ_SECONDS seconds each (default 20), starting
# from the committed corpus in fuzz/corpus; any crash, panic or leak fails the run and leaves the
# input in fuzz/artifacts/. New inputs found go to a temporary directory, so the committed corpus
# changes only when someone merges them on purpose:
#   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O TARGET -- -max_total_time=600 && cargo fuzz cmin -O TARGET
# cargo fuzz wants a nightly toolchain; RUSTC_BOOTSTRAP=1 lets the stable one build it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.2
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
found=$(mktemp -d)
trap 'rm -rf "$found"' EXIT
for target in $(cargo fuzz list); do
  mkdir -p "$found/$target"
  status=0
  cargo fuzz run -O "$target" "$found/$target" "corpus/$target" -- \
    -max_total_time="${FUZZ_SECONDS:-20}" -rss_limit_mb=2048 -print_final_stats=1 \
    > "$found/$target.log" 2>&1 || status=$?
  grep -E '^(stat::number_of_executed_units|Done )' "$found/$target.log" || true
  if [ "$status" -ne 0 ]; then
    tail -50 "$found/$target.log" >&2
    echo "fuzz: $target failed (exit $status); the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  echo "fuzz: $target ok"
done
