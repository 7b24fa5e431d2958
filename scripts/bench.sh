#!/usr/bin/env bash
# Runs the benchmark harness and rewrites docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
cargo build --release --quiet --bins
cargo run --release --quiet -p signer-bench -- --out docs/benchmarks.md "$@"
