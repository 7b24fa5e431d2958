//! The Debian package: built by scripts/package-deb.sh from this build's
//! binaries, then its control data, maintainer scripts and files checked,
//! and the packaged signerd run from the extracted tree.

#![allow(clippy::unwrap_used)] // helpers in test files: a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;

use signer_testsupport::{bin, output};

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let (code, stdout, stderr) = output(Command::new("dpkg-deb").args(args).arg(deb));
    assert_eq!(code, Some(0), "{stderr}");
    stdout
}

#[test]
fn the_deb_holds_binaries_unit_config_and_creates_the_user() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin_dir = bin("signerd").parent().unwrap().to_path_buf();
    assert!(bin("signer-client").exists());
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(root.join("scripts/package-deb.sh"))
        .env("BIN_DIR", &bin_dir)
        .env("OUT_DIR", out_dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let deb = Path::new(&deb);
    assert!(deb.exists(), "{}", deb.display());

    let contents = dpkg_deb(&["-c"], deb);
    for path in [
        "./usr/bin/signerd",
        "./usr/bin/signer-client",
        "./lib/systemd/system/signerd.service",
        "./etc/signer/signerd.yaml",
        "./usr/share/doc/serial-link-signer/operations.md",
        "./usr/share/doc/serial-link-signer/examples/nats-server.conf",
    ] {
        assert!(contents.contains(path), "{path} missing from\n{contents}");
    }
    assert!(
        contents.contains("root/root"),
        "files owned by root: {contents}"
    );
    assert_eq!(
        dpkg_deb(&["-f"], deb)
            .lines()
            .find(|l| l.starts_with("Package:"))
            .unwrap(),
        "Package: serial-link-signer"
    );

    let tree = tempfile::tempdir().unwrap();
    Command::new("dpkg-deb")
        .arg("-R")
        .arg(deb)
        .arg(tree.path())
        .status()
        .unwrap();
    let postinst = std::fs::read_to_string(tree.path().join("DEBIAN/postinst")).unwrap();
    assert!(postinst.contains("adduser --system --group"), "{postinst}");
    assert!(postinst.contains("install -d -m 0700 -o signer -g signer /var/lib/signer"));
    let conffiles = std::fs::read_to_string(tree.path().join("DEBIAN/conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/signer/signerd.yaml");
    let postrm = std::fs::read_to_string(tree.path().join("DEBIAN/postrm")).unwrap();
    assert!(!postrm.contains("rm "), "the repository is never removed");

    // The packaged binaries run, and the packaged config parses.
    let signerd = tree.path().join("usr/bin/signerd");
    let version = Command::new(&signerd).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("signerd "));
    let check = Command::new(&signerd)
        .args(["check-config", "--offline", "--config"])
        .arg(tree.path().join("etc/signer/signerd.yaml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}
