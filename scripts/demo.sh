#!/usr/bin/env bash
# Demo: a signer on a simulated 115,200-baud serial link, driven by the
# client CLI. Everything runs in ./demo-run and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-debian.sh
echo "== building"
cargo build --quiet --bins
bin=target/debug
run=demo-run
rm -rf "$run" && mkdir -p "$run"
cp configs/demo.yaml "$run/signerd.yaml"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "signer-linksim: two pty endpoints joined by a 115200-baud line"
"$bin/signer-linksim" --pty-a "$run/signer.tty" --pty-b "$run/client.tty" --baud 115200 --unplug-ms 1500 \
  >"$run/linksim.log" 2>&1 &
pids+=($!)
linksim=$!
for _ in $(seq 50); do [ -e "$run/client.tty" ] && break; sleep 0.1; done
cat "$run/linksim.log"

step "signerd check-config"
"$bin/signerd" check-config --config "$run/signerd.yaml"

step "signerd run (log: $run/signerd.log)"
"$bin/signerd" run --config "$run/signerd.yaml" >"$run/signerd.log" 2>&1 &
pids+=($!)
sleep 0.5

client=("$bin/signer-client" --link "$run/client.tty" --baud 115200)
step "signer-client hello"
"${client[@]}" hello
step "signer-client health"
"${client[@]}" health

step "unplugging the signer's serial device for 1.5 s (USB cable pulled)"
kill -USR1 "$linksim"
sleep 0.3
set +e
"${client[@]}" --timeout 0.8 health >/dev/null 2>&1
echo "signer-client health while unplugged: exit code $? (3 = link failure / timeout)"
set -e
sleep 2
step "signer-client health after replugging (device opened twice)"
"${client[@]}" health

step "signer-client --json health"
"${client[@]}" --json health

step "what signerd logged"
sed 's/\x1b\[[0-9;]*m//g' "$run/signerd.log"
echo
echo "demo finished: all processes stopped; files are in $run/"
