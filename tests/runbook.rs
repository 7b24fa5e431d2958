//! docs/operations.md is a contract: the repository commands it shows run
//! here exactly as written, in the order written, against a real
//! ceremony's configuration. Each block marked `<!-- runbook-test: NAME -->`
//! is run; `/var/lib/signer/` stands for the ceremony's directory.
#![allow(clippy::unwrap_used)] // helpers in test files: a failed unwrap is a failed test

use std::process::Command;

use signer_testsupport::ca::{Ceremony, SERVER_PROFILE};
use signer_testsupport::{bin, output, runbook_block as block};

fn run_block(c: &Ceremony, doc: &str, name: &str) -> Vec<String> {
    let dir = c.dir().display().to_string();
    block(doc, name)
        .into_iter()
        .map(|line| {
            let line = line.replace("/var/lib/signer/", &format!("{dir}/"));
            let words: Vec<&str> = line.split_whitespace().collect();
            let mut cmd = match words[0] {
                "signerd" => Command::new(bin("signerd")),
                "mv" => Command::new("mv"),
                other => panic!("runbook block {name}: unexpected command {other}"),
            };
            cmd.args(&words[1..]).current_dir(c.dir());
            for (k, v) in c.env() {
                cmd.env(k, v);
            }
            let (code, out, err) = output(&mut cmd);
            assert_eq!(code, Some(0), "{line}\n{out}{err}");
            format!("{out}{err}")
        })
        .collect()
}

#[test]
fn the_repository_runbook_runs_as_written() {
    let doc = include_str!("../docs/operations.md");
    let c = Ceremony::new_as("signer-a", "p256", SERVER_PROFILE);
    let d = c.dir();
    let setup = std::fs::read_to_string(d.join("setup.yaml")).unwrap();
    let with_key = |yaml: &str, label: &str| {
        yaml.replacen(
            "    - {name: sub, label: sub-key}\n",
            &format!("    - {{name: sub, label: sub-key}}\n    - {{name: replication, label: {label}}}\n"),
            1,
        )
    };
    let config_a = with_key(&setup, "replication-a");
    let config_b = with_key(
        &setup
            .replace("signer_id: signer-a", "signer_id: signer-b")
            .replace("repository.redb", "twin.redb"),
        "replication-b",
    );
    std::fs::write(d.join("signerd.yaml"), &config_a).unwrap();
    // The pair ceremony's key exchange, as written; B runs the same lines
    // with its own names (B's repository exists for its audit log).
    let out = run_block(&c, doc, "pair-keys");
    assert!(out[0].contains("generated ECDSA P-256 key"), "{out:?}");
    assert!(out[1].contains("signer-a.replication.pem"), "{out:?}");
    assert!(out[2].contains("public key U"), "{out:?}");
    assert!(out[3].contains("certificate sha256"), "{out:?}");
    std::fs::write(d.join("twin.yaml"), &config_b).unwrap();
    for line in block(doc, "pair-keys") {
        let line = line
            .replace("signerd.yaml", "twin.yaml")
            .replace("replication-a", "replication-b")
            .replace("signer-a.", "signer-b.")
            .replace("192.168.100.1", "192.168.100.2");
        if line.contains("generate-key") {
            let mut init = Command::new(bin("signerd"));
            init.args(["repo", "init", "--config", "twin.yaml"])
                .current_dir(d);
            assert_eq!(output(&mut init).0, Some(0));
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut cmd = Command::new(bin("signerd"));
        cmd.args(&words[1..]).current_dir(d);
        for (k, v) in c.env() {
            cmd.env(k, v);
        }
        let (code, out, err) = output(&mut cmd);
        assert_eq!(code, Some(0), "{line}\n{out}{err}");
    }
    // The twin's repository is made again later by seeding (below).
    std::fs::remove_file(d.join("twin.redb")).unwrap();
    let replication = |peer: &str| {
        let own = if peer == "signer-a" {
            "signer-b"
        } else {
            "signer-a"
        };
        format!("  replication:\n    local: nats://127.0.0.1:1\n    peer: nats://192.168.100.2:2\n    peer_id: {peer}\n    key: replication\n    peer_key: {peer}.replication.pem\n    nats_seed: {own}.nats.seed\n    tls_cert: {own}.nats.crt\n    peer_tls_cert: {peer}.nats.crt\n")
    };
    std::fs::write(
        d.join("signerd.yaml"),
        format!("{config_a}{}", replication("signer-b")),
    )
    .unwrap();
    std::fs::write(
        d.join("twin.yaml"),
        format!("{config_b}{}", replication("signer-a")),
    )
    .unwrap();
    // check-config sees both keys and that they differ.
    let mut check = Command::new(bin("signerd"));
    check
        .args(["check-config", "--config", "signerd.yaml"])
        .current_dir(d);
    for (k, v) in c.env() {
        check.env(k, v);
    }
    let (code, out, err) = output(&mut check);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("replication    seals with replication (ECDSA P-256"),
        "{out}"
    );
    assert!(
        out.contains("replication    TLS to nats://127.0.0.1:1"),
        "{out}"
    );
    // The credentials and certificates of the pair, each absent, unreadable,
    // someone else's or not made for the address, are refused by name.
    let base = format!("{config_a}{}", replication("signer-b"));
    std::fs::write(d.join("junk.pem"), "junk").unwrap();
    for (from, to, words) in [
        (
            "signer-b.replication.pem",
            "absent.pem",
            "ca.replication.peer_key",
        ),
        (
            "signer-b.replication.pem",
            "junk.pem",
            "ca.replication.peer_key",
        ),
        (
            "signer-a.nats.seed",
            "absent.seed",
            "ca.replication.nats_seed",
        ),
        ("signer-a.nats.seed", "junk.pem", "not an nkey seed"),
        (
            "peer_tls_cert: signer-b.nats.crt",
            "peer_tls_cert: absent.crt",
            "ca.replication.peer_tls_cert",
        ),
        (
            "peer_tls_cert: signer-b.nats.crt",
            "peer_tls_cert: junk.pem",
            "no PEM certificate",
        ),
        (
            "peer_tls_cert: signer-b.nats.crt",
            "peer_tls_cert: signer-a.nats.crt",
            "own nats-server certificate",
        ),
        (
            "peer: nats://192.168.100.2:2",
            "peer: nats://192.168.100.9:2",
            "not made for 192.168.100.9",
        ),
        (
            "tls_cert: signer-a.nats.crt",
            "tls_cert: signer-b.replication.pem",
            "ca.replication.tls_cert",
        ),
    ] {
        assert!(base.contains(from), "{from}");
        std::fs::write(d.join("broken.yaml"), base.replace(from, to)).unwrap();
        let mut cmd = Command::new(bin("signerd"));
        cmd.args(["check-config", "--config", "broken.yaml"])
            .current_dir(d);
        for (k, v) in c.env() {
            cmd.env(k, v);
        }
        let (code, out, err) = output(&mut cmd);
        assert_eq!(code, Some(1), "{to}: {out}{err}");
        assert!(err.contains(words), "{to}: expected {words:?} in {err}");
        // The daemon refuses to start on the same grounds.
        let mut cmd = Command::new("timeout");
        cmd.args(["60", bin("signerd").to_str().unwrap()])
            .args(["run", "--config", "broken.yaml"])
            .current_dir(d);
        for (k, v) in c.env() {
            cmd.env(k, v);
        }
        let (code, out, err) = output(&mut cmd);
        assert!(code != Some(0) && code != Some(124), "{to}: {out}{err}");
        assert!(
            err.contains(words),
            "run, {to}: expected {words:?} in {err}"
        );
    }
    // A twin configured with its own key as the peer's is refused.
    std::fs::write(
        d.join("same-key.yaml"),
        format!(
            "{config_a}{}",
            replication("signer-b").replace("signer-b.replication.pem", "signer-a.replication.pem")
        ),
    )
    .unwrap();
    let mut same = Command::new(bin("signerd"));
    same.args(["check-config", "--config", "same-key.yaml"])
        .current_dir(d);
    for (k, v) in c.env() {
        same.env(k, v);
    }
    let (code, out, err) = output(&mut same);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("own replication key"), "{err}");

    let out = run_block(&c, doc, "repository");
    assert!(out[0].contains("repository consistent"), "{out:?}");
    assert!(
        out[2].contains("backup written to signer-a.backup"),
        "{out:?}"
    );
    assert!(out[3].contains("verified: signer signer-a"), "{out:?}");

    // Someone else's backup, and none at all, are refused with their cause.
    let refuse = |args: &[&str], code: i32, words: &str| {
        let mut cmd = Command::new(bin("signerd"));
        cmd.args(args).current_dir(d);
        let (got, out, err) = output(&mut cmd);
        assert_eq!(got, Some(code), "{args:?}: {out}{err}");
        assert!(
            format!("{out}{err}").contains(words),
            "{args:?}: {out}{err}"
        );
    };
    refuse(
        &[
            "repo",
            "verify-backup",
            "--in",
            "signer-a.backup",
            "--config",
            "twin.yaml",
        ],
        5,
        "is a backup of signer \"signer-a\"",
    );
    refuse(
        &["repo", "verify-backup", "--in", "absent.backup"],
        1,
        "absent.backup",
    );
    std::fs::write(d.join("empty.backup"), b"").unwrap();
    refuse(
        &["repo", "verify-backup", "--in", "empty.backup"],
        6,
        "not a signer backup",
    );

    let out = run_block(&c, doc, "seed");
    assert!(
        out[1].contains("seeded") && out[1].contains("signer-b"),
        "{out:?}"
    );

    let out = run_block(&c, doc, "restore");
    assert!(d.join("repository.redb.damaged").exists());
    assert!(
        out[1].contains("reproduces the backup's digests"),
        "{out:?}"
    );
    assert!(out[2].contains("repository consistent"), "{out:?}");
}
