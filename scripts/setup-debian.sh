#!/usr/bin/env bash
# Installs the system packages the signer, its demo and its tests use, when
# missing. Idempotent; needs root or sudo only when something is missing.
set -euo pipefail

packages=(softhsm2 opensc nats-server socat openssl python3 python3-venv time systemd dpkg-dev gnupg sq sq-wot faketime postgresql lintian binutils debootstrap iproute2 util-linux)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# pkilint, the CA/Browser Forum linter (PyPI), judges the certificates and
# CRLs the tests issue. In a virtual environment of its own: Debian's Python
# takes no packages from pip.
pkilint="${PKILINT_VENV:-$HOME/.cache/serial-link-signer/pkilint}"
if [ ! -x "$pkilint/bin/lint_cabf_serverauth_cert" ]; then
  echo "setup: installing pkilint into $pkilint"
  python3 -m venv "$pkilint"
  "$pkilint/bin/pip" install -q --disable-pip-version-check pkilint==0.13.3
fi

# A throwaway Debian root (bookworm, minbase, with what the signer host
# installs beside the package) in which tests/debian_root.rs installs the
# .deb and runs the runbook's ceremonies. Made once (about a minute from
# deb.debian.org), kept as a tarball.
debian_root="${SIGNER_DEBIAN_ROOT:-$HOME/.cache/serial-link-signer/bookworm-minbase.tar}"
if [ ! -s "$debian_root" ]; then
  echo "setup: making a Debian root for the package tests ($debian_root)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  tree=$(mktemp -d)
  chmod 0755 "$tree"   # the root directory's mode travels in the tarball
  $sudo debootstrap --variant=minbase --include=adduser,softhsm2,nats-server,openssl,ca-certificates \
    bookworm "$tree" http://deb.debian.org/debian >/dev/null
  mkdir -p "$(dirname "$debian_root")"
  $sudo tar -C "$tree" -cf "$debian_root.part" . && mv "$debian_root.part" "$debian_root"
  $sudo rm -rf "$tree"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found. Install a Rust toolchain (rustup, Rust 1.89 or newer) first." >&2
  exit 1
fi
