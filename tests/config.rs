//! `signerd check-config` (and `signer-gateway check-config` for the
//! gateway's): every shipped configuration parses; every broken
//! one fails with exit code 1 and a message naming the offending key.

#![allow(clippy::unwrap_used)] // helpers in test files: a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;

use signer_testsupport::bin;

fn check(path: &Path) -> (Option<i32>, String) {
    // The web host's gateway has its own configuration and checker.
    let program = if path.file_name().is_some_and(|n| n == "gateway.yaml") {
        "signer-gateway"
    } else {
        "signerd"
    };
    let out = Command::new(bin(program))
        .args(["check-config", "--offline", "--config"])
        .arg(path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn every_file_in_configs_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let (code, text) = check(&path);
            assert_eq!(code, Some(0), "{}: {text}", path.display());
            assert!(text.contains("configuration OK"), "{text}");
            seen += 1;
        }
    }
    assert!(
        seen >= 2,
        "configs/ holds the reference and demo configurations"
    );
}

#[test]
fn broken_configs_name_the_key_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "signer_id: a\nlink:\n  device: /dev/x\n  baudrate: 9600\n",
            "baudrate",
        ),
        (
            "signer_id: a\nlink:\n  device: /dev/x\n  baud: fast\n",
            "link.baud",
        ),
        (
            "signer_id: a\nlink:\n  device: /dev/x\nprotocol:\n  max_in_flight: 0\n",
            "protocol.max_in_flight",
        ),
        ("signer_id: a\n", "link"),
        ("signer_id: a\nlink: [\n", "line"),
        (
            "signer_id: a\nlink:\n  device: /dev/x\n  parity: maybe\n",
            "link.parity",
        ),
    ];
    for (yaml, key) in cases {
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, yaml).unwrap();
        let (code, text) = check(&path);
        assert_eq!(code, Some(1), "{yaml}: {text}");
        assert!(text.contains(key), "{yaml}: expected {key:?} in {text}");
    }
    let (code, text) = check(&dir.path().join("missing.yaml"));
    assert_eq!(code, Some(1));
    assert!(text.contains("missing.yaml"), "{text}");
}

#[test]
fn run_refuses_a_broken_config_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "signer_id: a\nlink: {device: /dev/x, stop_bits: 3}\n",
    )
    .unwrap();
    let out = Command::new(bin("signerd"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("link.stop_bits"));
}

#[test]
fn the_nats_server_config_is_valid_for_the_installed_server() {
    // As shipped, with the TLS files `signerd setup nats-tls` makes where
    // the file expects them.
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/nats-server.conf"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let made = signer_replication::tls::new_server_certificate(
        "signer-a nats-server",
        &["192.168.100.1".into()],
        std::time::SystemTime::now(),
    )
    .unwrap();
    std::fs::write(dir.path().join("signer-a.nats.crt"), &made.cert_pem).unwrap();
    std::fs::write(dir.path().join("signer-a.nats.key"), &made.key_pem).unwrap();
    assert!(shipped.contains("/etc/nats-server/signer-a.nats.crt"));
    let conf = dir.path().join("nats-server.conf");
    std::fs::write(
        &conf,
        shipped.replace("/etc/nats-server/", &format!("{}/", dir.path().display())),
    )
    .unwrap();
    let out = Command::new("nats-server")
        .arg("-t")
        .arg("-c")
        .arg(&conf)
        .output()
        .expect("nats-server (Debian package nats-server) must be installed");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Without its key the server does not start: TLS is not optional.
    std::fs::remove_file(dir.path().join("signer-a.nats.key")).unwrap();
    let out = Command::new("nats-server")
        .arg("-t")
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn replication_and_openpgp_settings_are_checked() {
    let reference =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/signerd.yaml"))
            .unwrap();
    let (code, text) = check(&Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/signerd.yaml"));
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("twin signer-b via nats://192.168.100.2:4222"),
        "{text}"
    );
    // A summary for people: the words of the YAML, not the program's.
    for words in [
        "parity none",
        "flow control none",
        "token labelled signer-a",
        "extended key usage server_auth, client_auth",
    ] {
        assert!(text.contains(words), "{words:?} in {text}");
    }
    for debug in ["Label(", "Some(", "None", "[Server"] {
        assert!(!text.contains(debug), "{debug:?} in {text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "peer: nats://192.168.100.2:4222",
            "peer: 192.168.100.2",
            "ca.replication.peer",
        ),
        (
            "peer_id: signer-b",
            "peer_id: Signer B",
            "ca.replication.peer_id",
        ),
        (
            "state_interval_secs: 2",
            "state_interval_secs: 0",
            "ca.replication",
        ),
        ("lag_warning_secs: 300", "lag_warning: 300", "lag_warning"),
        (
            "    key: replication ",
            "    key: replication-x ",
            "ca.replication.key",
        ),
        (
            "held_warning_secs: 60",
            "held_warning_secs: 0",
            "ca.replication.held_warning_secs",
        ),
        (
            "    peer_tls_cert: /etc/signer/ca/signer-b.nats.crt ",
            "    #peer_tls_cert: /etc/signer/ca/signer-b.nats.crt ",
            "ca.replication.tls_cert",
        ),
        (
            "    key: openpgp-2026",
            "    key: openpgp-2027",
            "ca.openpgp.key",
        ),
        ("    key: audit ", "    key: audit-x ", "ca.audit.key"),
        (
            "origin: signer-a.example.org/audit",
            "origin: signer a/audit",
            "ca.audit.origin",
        ),
        ("every_entries: 1000", "every_entries: 0", "ca.audit"),
        ("+720dc504+", "+720dc505+", "ca.audit.peer_vkey"),
        (
            "created: 2026-01-01T00:00:00Z",
            "created: 1 January 2026",
            "ca.openpgp.created",
        ),
        (
            "certification_level: 0x10",
            "certification_level: 0x20",
            "ca.openpgp.policy",
        ),
        ("hash: sha256", "hash: sha1", "sha1"),
        (
            "algorithms: [rsa, ed25519, p256, p384, p521]",
            "algorithms: [rsa, dsa]",
            "dsa",
        ),
    ];
    for (from, to, key) in cases {
        assert!(reference.contains(from), "{from}");
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, reference.replace(from, to)).unwrap();
        let (code, text) = check(&path);
        assert_eq!(code, Some(1), "{to}: {text}");
        assert!(text.contains(key), "{to}: expected {key:?} in {text}");
    }
}

#[test]
fn the_unit_is_rated_ok_by_systemd_analyze() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/signerd.service");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no rating in {text}"));
    let exposure: f64 = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(line.contains(" OK") || line.contains("SAFE"), "{line}");
    assert!(exposure <= 2.0, "{line}");
}

/// The configuration shown in docs/gateway.md is a file the gateway takes.
#[test]
fn the_configuration_in_the_gateway_guide_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("docs/gateway.md")).unwrap();
    let section = &guide[guide.find("## Configuration").unwrap()..];
    let start = section.find("```yaml\n").unwrap() + "```yaml\n".len();
    let yaml = &section[start..start + section[start..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    let (code, text) = check(&path);
    assert_eq!(code, Some(0), "{yaml}\n{text}");
    assert!(text.contains("audit log copied to"), "{text}");
}

/// The lines of `ours` that differ from `reference`'s, in pairs; both must
/// have the same lines apart from comment lines (the header).
fn changed_lines(reference: &str, ours: &str) -> Vec<(String, String)> {
    let body = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    let (reference, ours) = (body(reference), body(ours));
    assert_eq!(reference.len(), ours.len());
    reference
        .iter()
        .zip(ours.iter())
        .filter(|(a, b)| a != b)
        .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()))
        .collect()
}

#[test]
fn the_twin_and_single_configurations_are_the_reference_with_their_names() {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let read = |name: &str| std::fs::read_to_string(configs.join(name)).unwrap();
    let a = read("signerd.yaml");
    // signer-b: only its own names, the twin's and the cable address differ.
    let b = read("signerd-b.yaml");
    let changed = changed_lines(&a, &b);
    let swapped = |line: &str| {
        line.replace("signer-a", "\u{1}")
            .replace("signer-b", "signer-a")
            .replace('\u{1}', "signer-b")
            .replace("replication-a", "replication-b")
            .replace("audit-a", "audit-b")
            .replace("0x21", "0x22")
            .replace("192.168.100.2", "192.168.100.1")
    };
    for (from, to) in &changed {
        if from.starts_with("peer_vkey:") {
            // A placeholder of the other name (its key ID follows the name).
            assert!(to.contains("\"signer-a.example.org/audit+"), "{to}");
            continue;
        }
        assert_eq!(&swapped(from), to, "signerd-b.yaml");
    }
    assert_eq!(changed.len(), 11, "{changed:#?}");
    // A single signer: the reference without its twin.
    let single = read("signerd-single.yaml");
    let without_twin: Vec<&str> = a
        .lines()
        .filter(|l| !l.starts_with('#'))
        .scan(false, |in_replication, l| {
            if l.starts_with("  replication:") {
                *in_replication = true;
            } else if !l.starts_with("    ") {
                *in_replication = false;
            }
            Some((*in_replication, l))
        })
        .filter(|(inside, l)| {
            !inside && !l.contains("peer_vkey:") && !l.contains("{name: replication,")
        })
        .map(|(_, l)| l)
        .collect();
    let single_lines: Vec<&str> = single.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(single_lines, without_twin);
    for name in ["signerd-b.yaml", "signerd-single.yaml"] {
        let (code, text) = check(&configs.join(name));
        assert_eq!(code, Some(0), "{name}: {text}");
    }
    // signer-b's nats-server: signer-a's with the names swapped; the nkey
    // placeholders name the same signer in both files.
    let nats_a = read("nats-server.conf");
    let nats_b = read("nats-server-b.conf");
    for (from, to) in changed_lines(&nats_a, &nats_b) {
        let expected = from
            .replace("signer-a", "\u{1}")
            .replace("signer-b", "signer-a")
            .replace('\u{1}', "signer-b")
            .replace("SIGNER_SIGNER_A", "SIGNER_SIGNER_B")
            .replace(
                "UB4VSAG7MCG6AYI3JBVVMT5AZI7CRJBV53A7IZWFEZ665TY46MATMJJQ",
                "UDRSQXWCOSULAMVKQNARGUMKPJWSMNJOUL2RCRQ3LXJQWVE5G6WBAXTT",
            );
        let expected = if from.contains("UDRSQXWC") {
            from.replace(
                "UDRSQXWCOSULAMVKQNARGUMKPJWSMNJOUL2RCRQ3LXJQWVE5G6WBAXTT",
                "UB4VSAG7MCG6AYI3JBVVMT5AZI7CRJBV53A7IZWFEZ665TY46MATMJJQ",
            )
        } else {
            expected
        };
        assert_eq!(expected, to, "nats-server-b.conf");
    }
}
