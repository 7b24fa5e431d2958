#!/usr/bin/env bash
# Builds the Debian package the operator carries to the offline signer host:
# signerd and signer-client, the systemd unit, a default configuration in
# /etc/signer, documentation, and a system user created on install.
#
#   scripts/package-deb.sh                 release build, package in target/deb/
#   BIN_DIR=target/debug scripts/package-deb.sh   package binaries already built there
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
name=serial-link-signer
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release --quiet -p signerd -p signer-client
  BIN_DIR=target/release
fi
out=${OUT_DIR:-target/deb}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

install -D -m 0755 "$BIN_DIR/signerd" "$root/usr/bin/signerd"
install -D -m 0755 "$BIN_DIR/signer-client" "$root/usr/bin/signer-client"
install -D -m 0644 systemd/signerd.service "$root/lib/systemd/system/signerd.service"
install -D -m 0640 configs/signerd.yaml "$root/etc/signer/signerd.yaml"
doc="$root/usr/share/doc/$name"
install -D -m 0644 README.md "$doc/README.md"
for f in operations protocol design decisions; do
  install -D -m 0644 "docs/$f.md" "$doc/$f.md"
done
install -D -m 0644 configs/nats-server.conf "$doc/examples/nats-server.conf"
install -D -m 0644 configs/signerd.yaml "$doc/examples/signerd.yaml"
cat > "$doc/copyright" <<'TXT'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: serial-link-signer
License: Apache-2.0
TXT

mkdir -p "$root/DEBIAN"
size=$(du -sk "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<TXT
Package: $name
Version: $version
Architecture: $arch
Maintainer: Serial-link signer maintainers <signer@example.invalid>
Installed-Size: $size
Depends: libc6, adduser
Recommends: softhsm2 | opensc, nats-server
Section: admin
Priority: optional
Description: offline signing appliance for certificate authorities
 signerd signs X.509 certificates, revocations and CRLs with keys held in a
 PKCS#11 HSM, on commands received over a serial line; twin signers
 replicate over NATS. signer-client is the command-line client.
TXT
echo /etc/signer/signerd.yaml > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/postinst" <<'TXT'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd signer >/dev/null; then
    adduser --system --group --home /var/lib/signer --no-create-home signer
  fi
  adduser signer dialout >/dev/null 2>&1 || true
  install -d -m 0700 -o signer -g signer /var/lib/signer
  chgrp signer /etc/signer/signerd.yaml && chmod 0640 /etc/signer/signerd.yaml
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
  fi
  echo "serial-link-signer: run the key ceremony (/usr/share/doc/serial-link-signer/operations.md),"
  echo "then: systemctl enable --now signerd"
fi
exit 0
TXT
cat > "$root/DEBIAN/postrm" <<'TXT'
#!/bin/sh
set -e
# The repository in /var/lib/signer holds every issued certificate and the
# audit log: it is never removed, not even on purge.
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
TXT
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/postrm"

mkdir -p "$out"
deb="$out/${name}_${version}_${arch}.deb"
dpkg-deb --build --root-owner-group "$root" "$deb" >/dev/null
echo "$deb"
