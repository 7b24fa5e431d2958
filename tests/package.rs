//! The Debian package: built by scripts/package-deb.sh from this build's
//! binaries, then its control data, maintainer scripts and files checked,
//! and the packaged signerd run from the extracted tree.

#![allow(clippy::unwrap_used)] // helpers in test files: a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;

use signer_testsupport::{bin, output, package_deb};

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let (code, stdout, stderr) = output(Command::new("dpkg-deb").args(args).arg(deb));
    assert_eq!(code, Some(0), "{stderr}");
    stdout
}

#[test]
fn the_deb_holds_binaries_unit_config_and_creates_the_user() {
    assert!(bin("signer-client").exists());
    let out_dir = tempfile::tempdir().unwrap();
    let deb = &package_deb("signer", out_dir.path());

    let contents = dpkg_deb(&["-c"], deb);
    for path in [
        "./usr/bin/signerd",
        "./usr/bin/signer-client",
        "./lib/systemd/system/signerd.service",
        "./etc/signer/signerd.yaml",
        "./usr/share/doc/serial-link-signer/operations.md",
        "./usr/share/doc/serial-link-signer/examples/nats-server-a.conf",
        "./usr/share/doc/serial-link-signer/examples/nats-server-b.conf",
        "./usr/share/doc/serial-link-signer/examples/signerd-b.yaml",
        "./lib/systemd/system/nats-server.service.d/serial-link-signer.conf",
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
    assert!(
        postinst.contains("install -d -m 0700 /var/lib/signer")
            && postinst.contains("chown signer:signer /var/lib/signer")
    );
    assert!(postinst.contains("adduser signer softhsm"), "{postinst}");
    assert!(
        postinst.contains("install -d -m 0775 -g signer /etc/signer/ca"),
        "{postinst}"
    );
    // The unit points at the documentation where the package puts it.
    let unit =
        std::fs::read_to_string(tree.path().join("lib/systemd/system/signerd.service")).unwrap();
    let doc = unit
        .lines()
        .find_map(|l| l.strip_prefix("Documentation=file://"))
        .unwrap();
    assert!(
        tree.path().join(doc.trim_start_matches('/')).exists(),
        "Documentation={doc} is not in the package"
    );
    // A refused PIN is never tried again by the unit: signerd exits 4 on it
    // (tests/issuance.rs), 4 is in RestartPreventExitStatus=, and nothing
    // else in the unit logs in to the token (RestartPreventExitStatus= and
    // the main process's exit status cover ExecStart= only).
    let restart_prevented: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("RestartPreventExitStatus="))
        .flat_map(str::split_whitespace)
        .collect();
    for code in ["1", "4", "5", "6"] {
        assert!(
            restart_prevented.contains(&code),
            "exit {code} restarted: {unit}"
        );
    }
    for directive in [
        "ExecStartPre=",
        "ExecStartPost=",
        "ExecCondition=",
        "ExecReload=",
    ] {
        assert!(
            !unit.lines().any(|l| l.starts_with(directive)),
            "{directive} would run outside RestartPreventExitStatus=: {unit}"
        );
    }
    let dropin = std::fs::read_to_string(
        tree.path()
            .join("lib/systemd/system/nats-server.service.d/serial-link-signer.conf"),
    )
    .unwrap();
    assert!(dropin.contains("StateDirectory=nats"), "{dropin}");
    let conffiles = std::fs::read_to_string(tree.path().join("DEBIAN/conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/signer/signerd.yaml");
    let postrm = std::fs::read_to_string(tree.path().join("DEBIAN/postrm")).unwrap();
    assert!(!postrm.contains("rm "), "the repository is never removed");

    check_debian_policy(
        deb,
        tree.path(),
        &["signerd", "signer-client"],
        "signerd.service",
    );
    let prerm = std::fs::read_to_string(tree.path().join("DEBIAN/prerm")).unwrap();
    assert!(
        prerm.contains("\"$1\" = remove") && !prerm.contains("rm "),
        "stops the service on removal only: {prerm}"
    );
    assert!(
        postinst.contains("try-restart signerd.service"),
        "{postinst}"
    );

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

#[test]
fn the_gateway_deb_holds_its_binaries_unit_and_config_and_keeps_the_queue() {
    assert!(bin("signer-gateway").exists());
    let out_dir = tempfile::tempdir().unwrap();
    let deb = &package_deb("gateway", out_dir.path());

    let contents = dpkg_deb(&["-c"], deb);
    for path in [
        "./usr/bin/signer-gateway",
        "./usr/bin/signer-client",
        "./lib/systemd/system/signer-gateway.service",
        "./etc/signer-gateway/gateway.yaml",
        "./usr/share/doc/serial-link-signer-gateway/gateway.md",
    ] {
        assert!(contents.contains(path), "{path} missing from\n{contents}");
    }
    assert!(
        !contents.contains("signerd"),
        "no signer on the web host: {contents}"
    );
    let control = dpkg_deb(&["-f"], deb);
    assert!(
        control.contains("Package: serial-link-signer-gateway"),
        "{control}"
    );
    assert!(
        control.contains("Conflicts: serial-link-signer"),
        "{control}"
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
    assert!(
        postinst.contains("/var/lib/signer-gateway/crl"),
        "{postinst}"
    );
    let conffiles = std::fs::read_to_string(tree.path().join("DEBIAN/conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/signer-gateway/gateway.yaml");
    check_debian_policy(
        deb,
        tree.path(),
        &["signer-gateway", "signer-client"],
        "signer-gateway.service",
    );
    let postrm = std::fs::read_to_string(tree.path().join("DEBIAN/postrm")).unwrap();
    assert!(!postrm.contains("rm "), "the queue is never removed");

    // The unit runs what the package installs, with the packaged config,
    // and never restarts on a refused configuration.
    let unit = std::fs::read_to_string(
        tree.path()
            .join("lib/systemd/system/signer-gateway.service"),
    )
    .unwrap();
    assert!(unit.contains(
        "ExecStart=/usr/bin/signer-gateway run --config /etc/signer-gateway/gateway.yaml"
    ));
    assert!(unit.contains("RestartPreventExitStatus=1\n"), "{unit}");
    assert!(
        unit.contains("Documentation=file:///usr/share/doc/serial-link-signer-gateway/gateway.md")
    );
    let gateway = tree.path().join("usr/bin/signer-gateway");
    let check = Command::new(&gateway)
        .args(["check-config", "--offline", "--config"])
        .arg(tree.path().join("etc/signer-gateway/gateway.yaml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // A configuration with a typo is exit 1: the unit does not restart it.
    let bad = tree.path().join("bad.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(tree.path().join("etc/signer-gateway/gateway.yaml"))
            .unwrap()
            .replace("lease_s:", "lease_secs:"),
    )
    .unwrap();
    let check = Command::new(&gateway)
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&check.stderr).contains("lease_secs"));
}

/// What Debian's policy and tools expect of a package: lintian finds
/// nothing (each override in the package says why), binaries are stripped,
/// libc6 is versioned, every binary has its man page and completions, and
/// `systemd-analyze verify` takes the unit.
fn check_debian_policy(deb: &Path, tree: &Path, bins: &[&str], unit: &str) {
    let (code, out, err) = output(
        Command::new("lintian")
            .args(["--fail-on", "error,warning"])
            .arg(deb),
    );
    let text = format!("{out}{err}");
    assert!(
        code == Some(0)
            && !text
                .lines()
                .any(|l| l.starts_with("E:") || l.starts_with("W:")),
        "lintian: {text}"
    );
    let control = dpkg_deb(&["-f"], deb);
    assert!(
        control
            .lines()
            .any(|l| l.starts_with("Depends: libc6 (>= 2.")),
        "{control}"
    );
    for b in bins {
        let path = tree.join("usr/bin").join(b);
        let sections = Command::new("readelf")
            .arg("-S")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&sections.stdout).contains(".symtab"),
            "{b} is not stripped"
        );
        for file in [
            format!("usr/share/man/man1/{b}.1.gz"),
            format!("usr/share/bash-completion/completions/{b}"),
            format!("usr/share/zsh/vendor-completions/_{b}"),
            format!("usr/share/fish/vendor_completions.d/{b}.fish"),
        ] {
            assert!(tree.join(&file).exists(), "{file} missing");
        }
    }
    // The unit as systemd reads it (ExecStart pointed at the packaged binary).
    let text = std::fs::read_to_string(tree.join("lib/systemd/system").join(unit)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join(unit);
    std::fs::write(
        &copy,
        text.replace("/usr/bin/", &format!("{}/usr/bin/", tree.display())),
    )
    .unwrap();
    let (code, out, err) = output(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&copy),
    );
    let said = format!("{out}{err}");
    assert!(
        code == Some(0) && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}
