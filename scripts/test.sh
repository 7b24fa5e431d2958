#!/usr/bin/env bash
# The whole test suite: lints, unit, property and integration tests against
# real ptys (and, as they arrive, SoftHSM2 and nats-server). Used by CI.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-debian.sh

# One build from scratch: incremental caches would only take disk space.
export CARGO_INCREMENTAL=0
echo "== disk: $(df -h --output=avail . | tail -n1 | tr -d " ") free"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
log=$(mktemp)
# Every certificate and CRL the tests' signers make is collected here and
# linted with pkilint at the end (tests/python/lint_corpus.py).
SIGNER_LINT_CORPUS=$(mktemp -d)
export SIGNER_LINT_CORPUS
trap 'rm -rf "$log" "$SIGNER_LINT_CORPUS"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
echo "== pkilint over every certificate and CRL the tests made"
"${PKILINT_VENV:-$HOME/.cache/serial-link-signer/pkilint}/bin/python" tests/python/lint_corpus.py "$SIGNER_LINT_CORPUS" ERROR 200
echo "== fuzz targets (short run)"
scripts/fuzz.sh short
echo "== regression guard: instructions per certificate (reported, never failed)"
if cargo build --release --quiet --locked -p signer-bench; then
  target/release/signer-bench --only guard 2>&1 | grep -v '^bench:' || echo "the regression guard did not run"
else
  echo "the regression guard was not built"
fi
passed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) passed.*/\1/' | paste -sd+ | bc)
failed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) failed.*/\1/' | paste -sd+ | bc)
echo "tests: ${passed} passed, ${failed} failed"
