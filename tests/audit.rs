//! The audit log end to end: a signer on a real pty with a SoftHSM2 token
//! records the key ceremony, its start and stop, and every command with its
//! outcome; `signerd audit verify` checks the chain and `signerd audit show`
//! finds entries by request id and serial.

#![allow(clippy::unwrap_used)] // helpers in test files: a failed unwrap is a failed test

use signer_client::Calls;
use signer_protocol::calls;
use std::process::Command;
use std::time::Duration;

use signer_protocol::{msg, Status};
use signer_testsupport::ca::{make_csr, sign_request, Ceremony, SERVER_PROFILE};
use signer_testsupport::{bin, output, Bench, LinkSpec};

fn signerd(args: &[&str], config: &std::path::Path) -> (Option<i32>, String) {
    let (code, stdout, stderr) = output(
        Command::new(bin("signerd"))
            .args(args)
            .arg("--config")
            .arg(config),
    );
    (code, format!("{stdout}{stderr}"))
}

#[test]
fn every_command_and_ceremony_step_is_in_a_verifiable_chain() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let d = c.dir().to_path_buf();
    let mut bench = Bench::start_with_env(LinkSpec::unthrottled(), &c.ca_yaml, c.env());
    let client = bench.client();
    let csr = make_csr(
        &d,
        "audited",
        &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let reply: msg::SignX509Reply = client
        .request::<calls::SignX509>(&sign_request("audit-1", csr.clone(), "audited.example.org"))
        .unwrap();
    let mut refused = sign_request("audit-2", csr, "audited.example.org");
    refused.profile = "nope".into();
    let err = client.request::<calls::SignX509>(&refused).unwrap_err();
    assert_eq!(err.status(), Some(Status::UNKNOWN_PROFILE));
    let _: msg::RevokeX509Reply = client
        .request::<calls::RevokeX509>(&msg::RevokeX509 {
            request_id: "audit-r".into(),
            issuer: "sub".into(),
            serial: reply.serial.clone(),
            reason: 1,
            invalidity_date: None,
        })
        .unwrap();
    let health = client.health().unwrap();
    let head = health.checks.iter().find(|c| c.name == "audit").unwrap();
    assert!(head.detail.contains("entries, head"), "{head:?}");
    // The rest of a complete health report: keys, CA expiry, repository.
    let detail = |name: &str| {
        health
            .checks
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.detail.clone())
            .unwrap_or_default()
    };
    assert!(
        detail("hsm:sub").starts_with("logged in; last signature"),
        "{health:?}"
    );
    assert!(detail("ca:sub").contains("days)"), "{health:?}");
    assert!(
        // The intermediate `setup intermediate` recorded, and the one issued.
        detail("repository").starts_with("2 certificates, 1 revocations, ")
            && detail("repository").contains(" MiB"),
        "{health:?}"
    );
    assert!(health.uptime_s < 3600 && !health.version.is_empty());
    drop(client);
    bench.daemon.signal("TERM");
    assert_eq!(bench.daemon.wait(Duration::from_secs(20)), Some(0));

    let config = bench.dir().join("signerd.yaml");
    let (code, text) = signerd(&["audit", "verify"], &config);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("test-signer: ") && text.contains("entries verified"),
        "{text}"
    );

    let (code, text) = signerd(&["audit", "show", "--json"], &config);
    assert_eq!(code, Some(0), "{text}");
    let entries: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<(String, String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let has = |kind: &str, action: &str, outcome: &str| {
        actions
            .iter()
            .any(|a| (a.0.as_str(), a.1.as_str(), a.2.as_str()) == (kind, action, outcome))
    };
    // The ceremony ran against the same repository (Ceremony's setup.yaml).
    assert!(has("setup", "generate-key", "ok"), "{actions:?}");
    assert!(
        has("setup", "generate-key", "failed"),
        "the refused duplicate label: {actions:?}"
    );
    assert!(has("setup", "self-sign", "ok") && has("setup", "intermediate", "ok"));
    assert!(has("startup", "signerd", "ok") && has("shutdown", "signerd", "ok"));
    assert!(has("command", "sign_x509", "ok"));
    assert!(
        has("command", "sign_x509", "unknown_profile"),
        "{actions:?}"
    );
    assert!(has("command", "revoke_x509", "ok"));
    assert!(
        !actions.iter().any(|a| a.1 == "health" || a.1 == "hello"),
        "liveness probes are not audited"
    );
    // No CSR in the log, only its fingerprint.
    assert!(!text.contains("BEGIN") && text.contains("csr_sha256"));

    let serial = hex::encode(&reply.serial);
    let (_, text) = signerd(&["audit", "show", "--serial", &serial], &config);
    assert_eq!(text.lines().count(), 2, "sign and revoke: {text}");
    let (_, text) = signerd(&["audit", "show", "--request-id", "audit-2"], &config);
    assert!(
        text.lines().count() == 1 && text.contains("unknown_profile"),
        "{text}"
    );
    let (code, text) = signerd(&["audit", "show", "--since", "yesterday"], &config);
    assert_eq!(code, Some(1));
    assert!(text.contains("neither Unix seconds nor RFC 3339"), "{text}");
}
