#!/usr/bin/env bash
# Builds a Debian package and prints its path.
#
#   scripts/package-deb.sh [signer]   serial-link-signer, for the offline signer host:
#                                     signerd and signer-client, the systemd unit, a
#                                     default configuration in /etc/signer, the user signer
#   scripts/package-deb.sh gateway    serial-link-signer-gateway, for the web host:
#                                     signer-gateway and signer-client, its unit, a default
#                                     configuration in /etc/signer-gateway, the user
#                                     signer-gateway
#
#   BIN_DIR=target/debug scripts/package-deb.sh …   package binaries already built there
#   OUT_DIR=dir                                      where the package goes (target/deb)
set -euo pipefail
cd "$(dirname "$0")/.."

kind=${1:-signer}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
case "$kind" in
  signer) name=serial-link-signer; bins=(signerd signer-client) ;;
  gateway) name=serial-link-signer-gateway; bins=(signer-gateway signer-client) ;;
  *) echo "usage: $0 [signer|gateway]" >&2; exit 2 ;;
esac
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release --quiet "${bins[@]/#/--bin=}"
  BIN_DIR=target/release
fi
out=${OUT_DIR:-target/deb}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
# Files are installed world-readable (the maintainer scripts narrow what
# must be), whatever the umask of whoever builds.
umask 022

for b in "${bins[@]}"; do
  # Stripped: the symbols are not needed on the host.
  install -D -s -m 0755 "$BIN_DIR/$b" "$root/usr/bin/$b"
done
# The newest glibc symbol version the binaries use is the libc6 they need.
glibc=$(objdump -T "${bins[@]/#/$root/usr/bin/}" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -Vu | tail -1)
libc="libc6 (>= $glibc)"
# Man pages and shell completions, generated from each binary's own
# command-line definition (a hidden generate-docs command).
gen=$(mktemp -d)
trap 'rm -rf "$root" "$gen"' EXIT
for b in "${bins[@]}"; do
  "$root/usr/bin/$b" generate-docs "$gen/$b"
  for page in "$gen/$b"/man/*.1; do
    install -D -m 0644 "$page" "$root/usr/share/man/man1/$(basename "$page")"
    gzip -9n "$root/usr/share/man/man1/$(basename "$page")"
  done
  install -D -m 0644 "$gen/$b/completions/$b.bash" "$root/usr/share/bash-completion/completions/$b"
  install -D -m 0644 "$gen/$b/completions/_$b" "$root/usr/share/zsh/vendor-completions/_$b"
  install -D -m 0644 "$gen/$b/completions/$b.fish" "$root/usr/share/fish/vendor_completions.d/$b.fish"
done
doc="$root/usr/share/doc/$name"
install -D -m 0644 README.md "$doc/README.md"
cat > "$doc/copyright" <<'TXT'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: serial-link-signer
Source: https://example.invalid/serial-link-signer

Files: *
Copyright: 2026 Serial-link signer maintainers
License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
TXT
# A native package's changelog: this version, built from this tree.
printf '%s (%s) unstable; urgency=medium\n\n  * Built from the source tree.\n\n -- Serial-link signer maintainers <signer@example.invalid>  %s\n' \
  "$name" "$version" "$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")" \
  | gzip -9n > "$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"
# serde_yaml's parser is unsafe-libyaml, a Rust translation of libyaml, not
# a copy of the C library that could be linked instead.
install -d "$root/usr/share/lintian/overrides"
for b in "${bins[@]}"; do
  [ "$b" = signer-client ] || echo "$name: embedded-library libyaml [usr/bin/$b]" >> "$root/usr/share/lintian/overrides/$name"
done
chmod 0644 "$root/usr/share/lintian/overrides/$name"
mkdir -p "$root/DEBIAN"

if [ "$kind" = signer ]; then
  install -D -m 0644 systemd/signerd.service "$root/lib/systemd/system/signerd.service"
  # A single signer's configuration; a twin pair installs the examples
  # signerd-a.yaml and signerd-b.yaml in its place (docs/operations.md).
  install -D -m 0644 configs/signerd-single.yaml "$root/etc/signer/signerd.yaml"
  for f in operations protocol design decisions; do
    install -D -m 0644 "docs/$f.md" "$doc/$f.md"
  done
  install -D -m 0644 configs/nats-server.conf "$doc/examples/nats-server-a.conf"
  install -D -m 0644 configs/nats-server-b.conf "$doc/examples/nats-server-b.conf"
  # Debian's nats-server runs as user nats with no state directory: the
  # JetStream store of configs/nats-server.conf (/var/lib/nats) is made by
  # systemd for it.
  install -D -m 0644 systemd/nats-server-signer.conf \
    "$root/lib/systemd/system/nats-server.service.d/serial-link-signer.conf"
  install -D -m 0644 configs/signerd.yaml "$doc/examples/signerd-a.yaml"
  install -D -m 0644 configs/signerd-b.yaml "$doc/examples/signerd-b.yaml"
  install -D -m 0644 configs/signerd-single.yaml "$doc/examples/signerd-single.yaml"
  conffile=/etc/signer/signerd.yaml
  depends="$libc, adduser"
  relations="Recommends: softhsm2 | opensc, nats-server"
  description="offline signing appliance for certificate authorities
 signerd signs X.509 certificates, revocations and CRLs with keys held in a
 PKCS#11 HSM, on commands received over a serial line; twin signers
 replicate over NATS. signer-client is the command-line client."
  cat > "$root/DEBIAN/postinst" <<'TXT'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  # The home directory first, so that adduser finds it.
  install -d -m 0700 /var/lib/signer
  if ! getent passwd signer >/dev/null; then
    adduser --system --group --home /var/lib/signer --no-create-home signer
  fi
  adduser signer dialout >/dev/null 2>&1 || true
  # SoftHSM2's token directory belongs to group softhsm.
  if getent group softhsm >/dev/null; then
    adduser signer softhsm >/dev/null 2>&1 || true
  fi
  chown signer:signer /var/lib/signer
  # What the ceremony writes as user signer (setup self-sign --out …, the
  # twin's public keys): the daemon itself sees /etc read-only.
  install -d -m 0775 -g signer /etc/signer/ca
  chgrp signer /etc/signer/ca && chmod 0775 /etc/signer/ca
  chgrp signer /etc/signer/signerd.yaml && chmod 0640 /etc/signer/signerd.yaml
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    # An upgrade: a running signer restarts on the new binary (it finishes
    # the requests in flight first); a stopped one stays stopped.
    if [ -n "$2" ]; then
      deb-systemd-invoke try-restart signerd.service >/dev/null 2>&1 || true
    fi
  fi
  if [ -z "$2" ]; then
    echo "serial-link-signer: run the key ceremony (/usr/share/doc/serial-link-signer/operations.md),"
    echo "then: systemctl enable --now signerd"
  fi
fi
exit 0
TXT
  cat > "$root/DEBIAN/prerm" <<'TXT'
#!/bin/sh
set -e
# Removal stops the signer (it finishes the requests in flight); an upgrade
# leaves it running until postinst restarts it on the new binary.
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  deb-systemd-invoke stop signerd.service >/dev/null 2>&1 || true
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
else
  install -D -m 0644 systemd/signer-gateway.service "$root/lib/systemd/system/signer-gateway.service"
  install -D -m 0644 configs/gateway.yaml "$root/etc/signer-gateway/gateway.yaml"
  for f in gateway protocol decisions; do
    install -D -m 0644 "docs/$f.md" "$doc/$f.md"
  done
  install -D -m 0644 configs/gateway.yaml "$doc/examples/gateway.yaml"
  conffile=/etc/signer-gateway/gateway.yaml
  depends="$libc, adduser"
  # Both carry signer-client; the web host and the offline signer host are
  # different machines by design.
  relations="Conflicts: serial-link-signer
Recommends: postgresql-client"
  description="web-host gateway to serial-link signers
 signer-gateway takes the web application's requests from a database queue
 (SQLite or PostgreSQL) to the signers over their serial links and the
 results back, exactly once; publishes CRLs; serves health and metrics.
 signer-client reaches the signers through it."
  cat > "$root/DEBIAN/postinst" <<'TXT'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd signer-gateway >/dev/null; then
    adduser --system --group --home /var/lib/signer-gateway --no-create-home signer-gateway
  fi
  adduser signer-gateway dialout >/dev/null 2>&1 || true
  install -d -m 0750 -o signer-gateway -g signer-gateway /var/lib/signer-gateway
  install -d -m 0755 -o signer-gateway -g signer-gateway /var/lib/signer-gateway/crl
  chgrp signer-gateway /etc/signer-gateway/gateway.yaml && chmod 0640 /etc/signer-gateway/gateway.yaml
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    if [ -n "$2" ]; then
      deb-systemd-invoke try-restart signer-gateway.service >/dev/null 2>&1 || true
    fi
  fi
  if [ -z "$2" ]; then
    echo "serial-link-signer-gateway: set the signers' devices in /etc/signer-gateway/gateway.yaml"
    echo "(/usr/share/doc/serial-link-signer-gateway/gateway.md), then: systemctl enable --now signer-gateway"
  fi
fi
exit 0
TXT
  cat > "$root/DEBIAN/prerm" <<'TXT'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  deb-systemd-invoke stop signer-gateway.service >/dev/null 2>&1 || true
fi
exit 0
TXT
  cat > "$root/DEBIAN/postrm" <<'TXT'
#!/bin/sh
set -e
# The queue in /var/lib/signer-gateway holds the web application's requests
# and their answers: it is never removed, not even on purge.
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
TXT
fi
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"
echo "$conffile" > "$root/DEBIAN/conffiles"
size=$(du -sk "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<TXT
Package: $name
Version: $version
Architecture: $arch
Maintainer: Serial-link signer maintainers <signer@example.invalid>
Installed-Size: $size
Depends: $depends
$relations
Section: admin
Priority: optional
Description: $description
TXT

mkdir -p "$out"
deb="$out/${name}_${version}_${arch}.deb"
dpkg-deb --build --root-owner-group "$root" "$deb" >/dev/null
echo "$deb"
