#!/usr/bin/env bash
# Demo: a signer with a SoftHSM2 token on a simulated 115,200-baud serial
# link, driven by the client CLI. Everything runs in ./demo-run and is
# stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-debian.sh
echo "== building"
cargo build --quiet --bins
bin=$PWD/target/debug
run=$PWD/demo-run
rm -rf "$run" && mkdir -p "$run/tokens"
cp configs/demo.yaml "$run/signerd.yaml"
cd "$run"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "a private SoftHSM2 token"
export SOFTHSM2_CONF=$run/softhsm2.conf DEMO_PIN=1234
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$run" >"$SOFTHSM2_CONF"
softhsm2-util --init-token --free --label demo --pin "$DEMO_PIN" --so-pin 5678 | tail -1

step "the repository: made on purpose, never as a side effect"
"$bin/signerd" repo init --config signerd.yaml

step "key ceremony: keys in the HSM, a root and an intermediate"
"$bin/signerd" setup generate-key --config signerd.yaml --label demo-root --type rsa2048 | head -1
"$bin/signerd" setup generate-key --config signerd.yaml --label demo-server-ca --type p256 | head -1
"$bin/signerd" setup self-sign --config signerd.yaml --key root --subject "CN=Demo Root,O=Demo" --days 3650 --path-len 1 --out root.pem
"$bin/signerd" setup intermediate --config signerd.yaml --issuer root --key server-ca \
  --subject "CN=Demo Server CA,O=Demo" --days 1825 --out server-ca.pem
openssl verify -CAfile root.pem server-ca.pem
"$bin/signerd" setup generate-key --config signerd.yaml --label demo-openpgp --type rsa3072 | head -1
"$bin/signerd" setup openpgp --config signerd.yaml

step "signer-linksim: two pty endpoints joined by a 115200-baud line"
"$bin/signer-linksim" --pty-a signer.tty --pty-b client.tty --baud 115200 --unplug-ms 1500 >linksim.log 2>&1 &
linksim=$!
pids+=($linksim)
for _ in $(seq 50); do [ -e client.tty ] && break; sleep 0.1; done
cat linksim.log

step "signerd check-config and run (log: demo-run/signerd.log)"
"$bin/signerd" check-config --config signerd.yaml
"$bin/signerd" run --config signerd.yaml >signerd.log 2>&1 &
pids+=($!)
client=("$bin/signer-client" --link client.tty --baud 115200)
# It answers at once; until the repository is checked and the token logged
# in, health says `starting` (and signing is answered `starting`).
for _ in $(seq 100); do
  "${client[@]}" --timeout 2 health 2>/dev/null | grep -q starting || break
  sleep 0.1
done
step "signer-client hello"
"${client[@]}" hello
step "signer-client health"
"${client[@]}" health

step "signer-client sign: a CSR made by openssl, issued with the HSM key"
openssl req -new -newkey rsa:2048 -nodes -keyout host.key -out host.csr -subj /CN=ignored 2>/dev/null
"${client[@]}" sign --profile server --csr host.csr --request-id webdb-1 \
  --subject "CN=www.example.org,O=Example" --san dns:www.example.org --san dns:example.org --days 30 --out host.pem
openssl verify -purpose sslserver -CAfile root.pem -untrusted server-ca.pem host.pem
openssl x509 -in host.pem -noout -subject -issuer -serial -dates -ext subjectAltName

step "the same request id again: the original certificate, not a second one"
"${client[@]}" sign --profile server --csr host.csr --request-id webdb-1 \
  --subject "CN=www.example.org,O=Example" --san dns:www.example.org --san dns:example.org --days 30 --out again.pem
cmp host.pem again.pem && echo "identical certificate returned"

step "refusals: a 1024-bit key, a SAN the profile does not allow"
openssl req -new -newkey rsa:1024 -nodes -keyout weak.key -out weak.csr -subj /CN=x 2>/dev/null
set +e
"${client[@]}" sign --profile server --csr weak.csr --request-id webdb-2 --subject CN=www.example.org --san dns:www.example.org
echo "exit code $? (1 = the signer refused)"
"${client[@]}" sign --profile server --csr host.csr --request-id webdb-3 --subject CN=www.example.org --san email:a@example.org
echo "exit code $?"
set -e

step "signer-client openpgp: certify a user's key made by GnuPG"
export GNUPGHOME=$run/gnupg && mkdir -p -m 700 "$GNUPGHOME"
gpg=(gpg --batch --quiet --pinentry-mode loopback --passphrase '')
"${gpg[@]}" --quick-gen-key "Alice <alice@example.org>" ed25519 cert,sign never 2>/dev/null
"${gpg[@]}" --quick-add-uid "Alice <alice@example.org>" "Alice Work <alice@work.example>" 2>/dev/null
"${gpg[@]}" --armor --export alice@example.org >alice.asc
"${client[@]}" openpgp ca-cert --out openpgp-ca-fetched.asc
"${client[@]}" openpgp certify --key alice.asc --user-id "Alice <alice@example.org>" \
  --user-id "Alice Work <alice@work.example>" --request-id pgp-1 --days 365 --armor --out alice-certified.asc
"${gpg[@]}" --import openpgp-ca-fetched.asc alice-certified.asc 2>/dev/null
"${gpg[@]}" --check-sigs alice@example.org 2>/dev/null | grep -E '^(uid|sig)'

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

step "an online backup while signerd serves, then checked"
"$bin/signerd" repo backup --config signerd.yaml --out demo.backup
"$bin/signerd" repo verify-backup --in demo.backup --config signerd.yaml | head -2
"$bin/signerd" repo check --config signerd.yaml

step "the web host: signer-gateway with an SQLite queue owns the link"
cat >gateway.yaml <<YAML
name: demo-web
signers:
  - {device: $run/client.tty, baud: 115200}
queue:
  sqlite: $run/queue.sqlite
  poll_ms: 100
socket:
  path: $run/gateway.sock
crl:
  directory: $run/crl
  files: {server-ca: server-ca.crl}
  pem: true
  check_s: 5
metrics:
  listen: 127.0.0.1:19464
YAML
mkdir -p crl
"$bin/signer-gateway" check-config --config gateway.yaml
"$bin/signer-gateway" run --config gateway.yaml >gateway.log 2>&1 &
gateway=$!
pids+=($gateway)
for _ in $(seq 50); do [ -S gateway.sock ] && break; sleep 0.1; done

step "the web application queues requests (here from a JSON-lines file; SQL INSERTs alike)"
serial=$(openssl x509 -in host.pem -noout -serial | cut -d= -f2)
csr_json=$(python3 -c 'import json,sys; print(json.dumps(open("host.csr").read()))')
key_json=$(python3 -c 'import json,sys; print(json.dumps(open("alice.asc").read()))')
expires=$(( $(date +%s) + 365*86400 ))
{
  for i in 1 2 3; do
    echo "{\"request_id\": \"web-$i\", \"kind\": \"sign_x509\", \"body\": {\"profile\": \"server\", \"csr\": $csr_json, \"subject\": [[\"CN\", \"shop$i.example.org\"]], \"sans\": [{\"type\": \"dns\", \"value\": \"shop$i.example.org\"}]}}"
  done
  echo "{\"request_id\": \"web-r1\", \"kind\": \"revoke_x509\", \"body\": {\"issuer\": \"server-ca\", \"serial\": \"$serial\", \"reason\": 4}}"
  echo "{\"request_id\": \"web-p1\", \"kind\": \"certify_openpgp\", \"body\": {\"key\": $key_json, \"user_ids\": [\"Alice <alice@example.org>\"], \"expires_at\": $expires}}"
  echo "{\"request_id\": \"web-4\", \"kind\": \"sign_x509\", \"body\": {\"profile\": \"server\", \"csr\": $csr_json, \"subject\": [[\"CN\", \"shop4.example.org\"]], \"sans\": [{\"type\": \"email\", \"value\": \"a@example.org\"}]}}"
} >requests.jsonl
"$bin/signer-gateway" enqueue --config gateway.yaml requests.jsonl
for _ in $(seq 100); do
  st=$("$bin/signer-gateway" status --config gateway.yaml --json)
  case "$st" in *'"claimed":0'*'"pending":0'*) break ;; esac
  sleep 0.2
done
"$bin/signer-gateway" status --config gateway.yaml
"$bin/signer-gateway" status --config gateway.yaml web-1 | head -3
"$bin/signer-gateway" status --config gateway.yaml web-4 | head -2

step "other programs share the link through the gateway's socket"
"$bin/signer-client" --link "unix:$run/gateway.sock" health | head -3

step "the CRL the gateway published after the revocation"
for _ in $(seq 100); do
  [ -e crl/server-ca.crl ] && openssl crl -inform DER -in crl/server-ca.crl -noout -text | grep -q "$serial" && break
  sleep 0.2
done
openssl crl -inform DER -in crl/server-ca.crl -CAfile server-ca.pem -noout
openssl crl -inform DER -in crl/server-ca.crl -noout -text | grep -A1 "Serial Number"

step "metrics for monitoring (Prometheus text)"
python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:19464/metrics").read().decode())' \
  | grep -E '^signer_gateway_(queue_rows|results|signer_status|crl_next_update_seconds)'
kill "$gateway"; wait "$gateway" 2>/dev/null || true

step "what signerd logged"
sed 's/\x1b\[[0-9;]*m//g' signerd.log
echo
echo "demo finished: all processes stopped; files are in demo-run/"
