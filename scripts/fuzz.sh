#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/. `short` (CI): 20 s per target;
# `long`: 10 min per target; or give seconds. The committed seed corpus in
# fuzz/corpus/<target> is read, new inputs go to a scratch directory.
# Without a nightly toolchain the same entry points already run as property
# tests in `cargo test`, and this script says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-short}" in
  short) secs=20 ;;
  long) secs=600 ;;
  *) secs=$1 ;;
esac

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: no nightly toolchain; the fuzz entry points ran as property tests in cargo test"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo +nightly fuzz list --fuzz-dir fuzz); do
  mkdir -p "$scratch/$target"
  log="$scratch/$target.log"
  if ! cargo +nightly fuzz run --fuzz-dir fuzz "$target" "$scratch/$target" "fuzz/corpus/$target" \
      -- -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz: $target FAILED (crash input under fuzz/artifacts/$target)"
    exit 1
  fi
  execs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
  cov=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -n1 | sed -E 's/.*cov: ([0-9]+).*/\1/')
  echo "fuzz: $target ok: ${execs:-?} executions in ${secs}s, coverage ${cov:-?} edges"
done
