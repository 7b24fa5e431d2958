//! Issuance end to end: a key ceremony with `signerd setup` on a private
//! SoftHSM2 token, then `signerd` on a pty issuing certificates for the
//! client library and CLI; results checked with `openssl verify`.

#![allow(clippy::unwrap_used)] // helpers in test files: a failed unwrap is a failed test

use signer_client::Calls;
use signer_protocol::calls;
use std::process::Command;
use std::time::Duration;

use signer_protocol::{msg, Command as Cmd, Status};
use signer_testsupport::ca::{make_csr, openssl, sign_request, signer_client, Ceremony};
use signer_testsupport::{bin, Bench, LinkSpec};
use signer_x509::cert_pem;

const SERVER_PROFILE: &str = r#"
  profiles:
    server:
      issuer: sub
      default_days: 90
      max_days: 397
      key_usage: [digital_signature, key_encipherment]
      extended_key_usage: [server_auth]
      subject_attributes: [CN, O]
      required_subject_attributes: [CN]
      san_types: [dns]
      require_san: true
      crl_urls: [http://crl.example.org/sub.crl]
"#;

#[test]
fn issue_over_the_link_with_softhsm_and_verify_with_openssl() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let d = c.dir().to_path_buf();
    let mut bench = Bench::start_with_env(LinkSpec::unthrottled(), &c.ca_yaml, c.env());
    let client = bench.client();
    assert!(client
        .server()
        .unwrap()
        .commands
        .contains(&Cmd::SIGN_X509.0));

    // Issue for an RSA and an EC key; openssl verifies the chain.
    let rsa_csr = make_csr(&d, "rsa", &["rsa:2048"]);
    let first: msg::SignX509Reply = client
        .request::<calls::SignX509>(&sign_request("web-1", rsa_csr.clone(), "www.example.org"))
        .unwrap();
    assert!(!first.replayed);
    assert_eq!(first.serial[0], 0x21, "serials carry the signer's prefix");
    std::fs::write(d.join("leaf.pem"), cert_pem(&first.certificate)).unwrap();
    let (ok, text) = openssl(
        &d,
        &[
            "verify",
            "-x509_strict",
            "-purpose",
            "sslserver",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "sub.pem",
            "leaf.pem",
        ],
    );
    assert!(ok, "{text}");
    let ec_csr = make_csr(&d, "ec", &["ec", "-pkeyopt", "ec_paramgen_curve:P-384"]);
    let ec: msg::SignX509Reply = client
        .request::<calls::SignX509>(&sign_request("web-2", ec_csr, "mail.example.org"))
        .unwrap();
    std::fs::write(d.join("ec-leaf.pem"), cert_pem(&ec.certificate)).unwrap();
    let (ok, text) = openssl(
        &d,
        &[
            "verify",
            "-x509_strict",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "sub.pem",
            "ec-leaf.pem",
        ],
    );
    assert!(ok, "{text}");

    // The same request id again: the original certificate, not a new one.
    let again: msg::SignX509Reply = client
        .request::<calls::SignX509>(&sign_request("web-1", rsa_csr.clone(), "www.example.org"))
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.certificate, first.certificate);
    // The same request id for a different request is refused.
    let err = client
        .request::<calls::SignX509>(&sign_request("web-1", rsa_csr.clone(), "other.example.org"))
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::REQUEST_ID_CONFLICT), "{err}");

    // Bad input: each its own status, nothing recorded.
    let weak = make_csr(&d, "weak", &["rsa:1024"]);
    let refusals: Vec<(msg::SignX509, Status)> = vec![
        (
            sign_request("bad-1", weak, "www.example.org"),
            Status::WEAK_KEY,
        ),
        (
            sign_request("bad-2", b"garbage".to_vec(), "www.example.org"),
            Status::MALFORMED_CSR,
        ),
        (
            msg::SignX509 {
                profile: "nope".into(),
                ..sign_request("bad-3", rsa_csr.clone(), "www.example.org")
            },
            Status::UNKNOWN_PROFILE,
        ),
        (
            msg::SignX509 {
                subject: vec![
                    ("OU".into(), "x".into()),
                    ("CN".into(), "www.example.org".into()),
                ],
                ..sign_request("bad-4", rsa_csr.clone(), "www.example.org")
            },
            Status::SUBJECT_NOT_ALLOWED,
        ),
        (
            msg::SignX509 {
                sans: vec![msg::SanEntry {
                    kind: "email".into(),
                    value: "a@example.org".into(),
                }],
                ..sign_request("bad-5", rsa_csr.clone(), "www.example.org")
            },
            Status::SAN_NOT_ALLOWED,
        ),
        (
            msg::SignX509 {
                validity_days: Some(400),
                ..sign_request("bad-6", rsa_csr.clone(), "www.example.org")
            },
            Status::VALIDITY_TOO_LONG,
        ),
        (
            msg::SignX509 {
                sans: vec![msg::SanEntry {
                    kind: "dns".into(),
                    value: "other.example.org".into(),
                }],
                ..sign_request("bad-7", rsa_csr.clone(), "www.example.org")
            },
            Status::LINT_FAILED,
        ),
        (
            sign_request("", rsa_csr.clone(), "www.example.org"),
            Status::MALFORMED_BODY,
        ),
    ];
    for (request, status) in refusals {
        let err = client.request::<calls::SignX509>(&request).unwrap_err();
        assert_eq!(err.status(), Some(status), "{}: {err}", request.request_id);
    }
    let health = client.health().unwrap();
    let repo = health
        .checks
        .iter()
        .find(|c| c.name == "repository")
        .unwrap();
    // Two issued here and the ceremony's intermediate.
    assert!(repo.detail.starts_with("3 certificates"), "{}", repo.detail);
    assert!(health
        .checks
        .iter()
        .any(|c| c.name == "hsm:sub" && c.status == msg::HealthStatus::Ok));
    assert!(health
        .checks
        .iter()
        .any(|c| c.name == "ca:root" && c.detail.contains("expires")));

    // ca_certs
    let cas: msg::CaCertsReply = client.request::<calls::CaCerts>(&msg::Empty {}).unwrap();
    assert_eq!(
        cas.cas.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["root", "sub"]
    );

    // The CLI: PEM out, exit 1 on refusal, 4 on bad local input.
    drop(client);
    let device = bench.client_device();
    let cli = |args: &[&str]| signer_client(&device, &d, args);
    let (code, _, err) = cli(&[
        "sign",
        "--profile",
        "server",
        "--csr",
        "rsa.csr",
        "--request-id",
        "cli-1",
        "--subject",
        "CN=cli.example.org",
        "--san",
        "dns:cli.example.org",
        "--out",
        "cli.pem",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (ok, text) = openssl(
        &d,
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "sub.pem",
            "cli.pem",
        ],
    );
    assert!(ok, "{text}");
    let (code, _, err) = cli(&[
        "sign",
        "--profile",
        "server",
        "--csr",
        "weak.csr",
        "--request-id",
        "cli-2",
        "--subject",
        "CN=cli.example.org",
        "--san",
        "dns:cli.example.org",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("weak_key"), "{err}");
    let (code, _, _) = cli(&[
        "sign",
        "--profile",
        "server",
        "--csr",
        "missing.csr",
        "--request-id",
        "cli-3",
        "--subject",
        "CN=x",
        "--san",
        "dns:x",
    ]);
    assert_eq!(code, Some(4));
    // A private key given as the CSR never leaves this host.
    let (code, _, err) = cli(&[
        "sign",
        "--profile",
        "server",
        "--csr",
        "rsa.key",
        "--request-id",
        "cli-4",
        "--subject",
        "CN=x",
        "--san",
        "dns:x",
    ]);
    assert_eq!(code, Some(4), "{err}");
    assert!(
        err.contains("private key") && err.contains("nothing was sent"),
        "{err}"
    );
    let (code, out, _) = cli(&["--json", "ca-certs"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("BEGIN CERTIFICATE"));
    // With --json, a local input error is JSON on standard output too.
    let (code, out, err) = cli(&[
        "--json",
        "sign",
        "--profile",
        "server",
        "--csr",
        "missing.csr",
        "--request-id",
        "cli-5",
        "--subject",
        "CN=x",
        "--san",
        "dns:x",
    ]);
    assert_eq!(code, Some(4), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["kind"], "input", "{out}");
    // A certificate issued but not writable here: exit 6, not a link
    // failure, and the same command fetches the same certificate.
    let sign_to = |out: &str| {
        cli(&[
            "sign",
            "--profile",
            "server",
            "--csr",
            "rsa.csr",
            "--request-id",
            "cli-6",
            "--subject",
            "CN=cli.example.org",
            "--san",
            "dns:cli.example.org",
            "--out",
            out,
        ])
    };
    let (code, _, err) = sign_to("/nonexistent/dir/cli-6.pem");
    assert_eq!(code, Some(6), "{err}");
    assert!(
        err.contains("was issued") && err.contains("run the same command again"),
        "{err}"
    );
    let (code, _, err) = sign_to("cli-6.pem");
    assert_eq!(code, Some(0), "{err}");
    assert!(d.join("cli-6.pem").exists());
    // A name the signer does not have: refused with the names it has.
    let (code, _, err) = cli(&[
        "sign",
        "--profile",
        "servr",
        "--csr",
        "rsa.csr",
        "--request-id",
        "cli-7",
        "--subject",
        "CN=cli.example.org",
        "--san",
        "dns:cli.example.org",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("this signer's profiles: server"), "{err}");
    let (code, _, err) = cli(&["crl", "--issuer", "subb", "--out", "subb.crl"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("its CAs: root, sub"), "{err}");

    // After kill -9 and restart, the request id still returns the original.
    bench.daemon.kill();
    bench.daemon.restart();
    let client = bench.client();
    let after: msg::SignX509Reply = client
        .request::<calls::SignX509>(&sign_request("web-1", rsa_csr, "www.example.org"))
        .unwrap();
    assert!(after.replayed);
    assert_eq!(after.certificate, first.certificate);
    drop(client);

    // The repository is consistent and exports what was issued.
    bench.daemon.kill();
    std::fs::write(
        d.join("run.yaml"),
        std::fs::read_to_string(bench.dir().join("signerd.yaml")).unwrap(),
    )
    .unwrap();
    let out = c.setup(&["repo", "check", "--config", "run.yaml"]);
    assert!(out.contains("repository consistent"), "{out}");
    let out = c.setup(&[
        "repo",
        "backup",
        "--config",
        "run.yaml",
        "--out",
        "full.backup",
    ]);
    // Four issued here (cli-6 once, though asked twice) and the
    // ceremony's intermediate.
    assert!(out.contains("5 certificates"), "{out}");
}

#[test]
fn startup_refuses_a_ca_certificate_that_does_not_match_its_key() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    // Point the sub CA at the root's certificate.
    let yaml = c
        .ca_yaml
        .replace("certificate: ", "certificate: X")
        .replace(
            &format!("certificate: X{}/sub.pem", c.dir().display()),
            &format!("certificate: {}/root.pem", c.dir().display()),
        );
    let yaml = yaml.replace("certificate: X", "certificate: ");
    // The repository knows sub's key: another certificate for sub is refused
    // before anything is read from the repository (exit 5).
    let mut bench = Bench::start_with_env(LinkSpec::unthrottled(), &yaml, c.env());
    assert_eq!(
        bench.daemon.wait(Duration::from_secs(20)),
        Some(5),
        "{}",
        bench.daemon.log()
    );
    assert!(
        bench
            .daemon
            .log()
            .contains("the configured certificate for sub has key"),
        "{}",
        bench.daemon.log()
    );
    // A new repository made for that configuration: the HSM check stops it (exit 3).
    let fresh = yaml.replace("repository.redb", "fresh.redb");
    std::fs::write(
        c.dir().join("fresh.yaml"),
        format!("signer_id: test-signer\nlink: {{device: /dev/null}}\n{fresh}"),
    )
    .unwrap();
    c.setup(&["repo", "init", "--config", "fresh.yaml"]);
    let mut bench = Bench::start_with_env(LinkSpec::unthrottled(), &fresh, c.env());
    assert_eq!(
        bench.daemon.wait(Duration::from_secs(20)),
        Some(3),
        "{}",
        bench.daemon.log()
    );
    assert!(
        bench.daemon.log().contains("does not match"),
        "{}",
        bench.daemon.log()
    );
}

#[test]
fn check_config_names_ca_keys_and_refuses_an_open_pin_file() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let config = c.dir().join("check.yaml");
    std::fs::write(
        &config,
        format!(
            "signer_id: test-signer\nlink: {{device: /dev/null}}\n{}",
            c.ca_yaml
        ),
    )
    .unwrap();
    let (ok, text) = c.signerd(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(
        text.contains("profile        server") && text.contains("serial prefix  0x21"),
        "{text}"
    );
    assert!(
        text.contains("token key      sub: found (ECDSA P-256)")
            && text.contains("token ca       sub: certificate matches key sub")
            && text.contains("token OK"),
        "{text}"
    );
    // A key label that is not on the token, a certificate that does not
    // match its key: one clear message each, exit 1.
    for (from, to, expected) in [
        (
            "label: sub-key",
            "label: sub-key-2027",
            "ca.keys[1] (sub, label sub-key-2027)",
        ),
        ("/sub.pem}", "/root.pem}", "ca.cas[1] (sub)"),
    ] {
        std::fs::write(
            &config,
            format!(
                "signer_id: test-signer\nlink: {{device: /dev/null}}\n{}",
                c.ca_yaml.replace(from, to)
            ),
        )
        .unwrap();
        let out = std::process::Command::new(signer_testsupport::bin("signerd"))
            .args(["check-config", "--config"])
            .arg(&config)
            .envs(c.env())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(text.contains(expected), "expected {expected:?} in {text}");
        assert_eq!(text.lines().count(), 1, "one message: {text}");
    }
    let broken = c.ca_yaml.replace("issuer: sub", "issuer: nowhere");
    std::fs::write(
        &config,
        format!("signer_id: test-signer\nlink: {{device: /dev/null}}\n{broken}"),
    )
    .unwrap();
    let (ok, text) = c.signerd(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(!ok && text.contains("ca.profiles.server.issuer"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(c.hsm.pin_file(), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(
        &config,
        format!(
            "signer_id: test-signer\nlink: {{device: /dev/null}}\n{}",
            c.ca_yaml
        ),
    )
    .unwrap();
    let (ok, text) = c.signerd(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(
        !ok && text.contains("ca.hsm.pin.file") && text.contains("other users"),
        "{text}"
    );
}

#[test]
fn an_absent_token_is_reported_and_a_refused_pin_stops_startup() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    // The token is not there: the daemon starts, says so, and refuses to sign.
    let yaml = c
        .ca_yaml
        .replace("token: {label: signer-a}", "token: {label: elsewhere}");
    let bench = Bench::start_with_env(LinkSpec::unthrottled(), &yaml, c.env());
    let client = bench.client();
    let health = client.health().unwrap();
    assert_eq!(health.status, msg::HealthStatus::Failing, "{health:?}");
    assert!(health
        .checks
        .iter()
        .any(|k| k.name == "ca" && k.status == msg::HealthStatus::Failing));
    let csr = make_csr(c.dir(), "absent", &["rsa:2048"]);
    let started = std::time::Instant::now();
    let err = client
        .request::<calls::SignX509>(&sign_request("absent-1", csr, "www.example.org"))
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::HSM_UNAVAILABLE), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "fails fast");
    drop(client);
    drop(bench);

    // A wrong PIN: startup stops with exit code 4 and says why.
    let wrong = c.dir().join("wrong.pin");
    std::fs::write(&wrong, "9999\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pin = c.hsm.pin_file();
    let yaml = c
        .ca_yaml
        .replace(&pin.display().to_string(), &wrong.display().to_string());
    let mut bench = Bench::start_with_env(LinkSpec::unthrottled(), &yaml, c.env());
    assert_eq!(
        bench.daemon.wait(Duration::from_secs(20)),
        Some(4),
        "{}",
        bench.daemon.log()
    );
    assert!(bench.daemon.log().contains("PIN"), "{}", bench.daemon.log());
}

fn revoke(serial: &[u8], reason: u8) -> msg::RevokeX509 {
    msg::RevokeX509 {
        request_id: "rev".into(),
        issuer: "sub".into(),
        serial: serial.to_vec(),
        reason,
        invalidity_date: None,
    }
}

#[test]
fn revoke_over_the_link_idempotent_and_durable() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let d = c.dir().to_path_buf();
    // The sub CA accepts revocations of serials from the legacy CA it replaces.
    let yaml = c
        .ca_yaml
        .replace("sub.pem}", "sub.pem, legacy_serials: true}");
    let mut bench = Bench::start_with_env(LinkSpec::unthrottled(), &yaml, c.env());
    let client = bench.client();
    let csr = make_csr(&d, "rev", &["rsa:2048"]);
    let cert: msg::SignX509Reply = client
        .request::<calls::SignX509>(&sign_request("rev-1", csr, "www.example.org"))
        .unwrap();

    let first: msg::RevokeX509Reply = client
        .request::<calls::RevokeX509>(&revoke(&cert.serial, 1))
        .unwrap();
    assert!(!first.replayed && !first.legacy && first.reason == 1);
    let again: msg::RevokeX509Reply = client
        .request::<calls::RevokeX509>(&revoke(&cert.serial, 1))
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.revoked_at, first.revoked_at);

    let refuse = |request: msg::RevokeX509| {
        client
            .request::<calls::RevokeX509>(&request)
            .unwrap_err()
            .status()
    };
    assert_eq!(
        refuse(revoke(&cert.serial, 4)),
        Some(Status::REVOCATION_CONFLICT)
    );
    assert_eq!(
        refuse(msg::RevokeX509 {
            issuer: "nope".into(),
            ..revoke(&cert.serial, 1)
        }),
        Some(Status::UNKNOWN_ISSUER)
    );
    assert_eq!(
        refuse(msg::RevokeX509 {
            issuer: "root".into(),
            ..revoke(&[0x21, 0x01], 1)
        }),
        Some(Status::UNKNOWN_SERIAL)
    );
    assert_eq!(
        refuse(revoke(&cert.serial, 6)),
        Some(Status::INVALID_REASON),
        "certificateHold is refused"
    );
    assert_eq!(refuse(revoke(&[0u8; 3], 1)), Some(Status::MALFORMED_SERIAL));
    assert_eq!(
        refuse(revoke(&[0x11; 21], 1)),
        Some(Status::MALFORMED_SERIAL)
    );
    let future = msg::RevokeX509 {
        invalidity_date: Some(4_000_000_000),
        ..revoke(&[0x42], 1)
    };
    assert_eq!(refuse(future), Some(Status::INVALID_INVALIDITY_DATE));

    // A legacy serial: accepted for `sub`, recorded as such.
    let legacy: msg::RevokeX509Reply = client
        .request::<calls::RevokeX509>(&revoke(&[0x00, 0x0a, 0xbc], 5))
        .unwrap();
    assert!(legacy.legacy);

    // The CLI, and durability across kill -9.
    drop(client);
    let serial_hex: String = cert.serial.iter().map(|b| format!("{b:02x}")).collect();
    let out = Command::new(bin("signer-client"))
        .arg("--link")
        .arg(bench.client_device())
        .args([
            "revoke",
            "--issuer",
            "sub",
            "--serial",
            &serial_hex,
            "--reason",
            "key_compromise",
            "--request-id",
            "cli",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("already revoked"),
        "{out:?}"
    );
    bench.daemon.kill();
    bench.daemon.restart();
    let client = bench.client();
    let after: msg::RevokeX509Reply = client
        .request::<calls::RevokeX509>(&revoke(&cert.serial, 1))
        .unwrap();
    assert!(after.replayed);
    assert_eq!(after.revoked_at, first.revoked_at);
    let legacy_again: msg::RevokeX509Reply = client
        .request::<calls::RevokeX509>(&revoke(&[0x0a, 0xbc], 5))
        .unwrap();
    assert!(legacy_again.replayed && legacy_again.legacy);
}

/// §7 `sign_x509`: a CSR of up to 65,536 bytes, and the whole request
/// within the signer's `max_frame`. With the default 16,384 a larger CSR
/// never reaches the command; with `protocol.max_frame` raised, the CSR's
/// own limit answers (inclusive: 65,536 bytes are read as a CSR, 65,537 are
/// refused for their size).
#[test]
fn the_csr_limit_and_the_frame_limit() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let request = |csr: Vec<u8>| sign_request("big-csr", csr, "www.example.org");
    let status = |r: Result<msg::SignX509Reply, signer_client::ClientError>| match r {
        Err(signer_client::ClientError::Signer {
            status, message, ..
        }) => (status, message),
        other => panic!("expected a refusal, got {other:?}"),
    };

    let small = Bench::start_with_env(LinkSpec::unthrottled(), &c.ca_yaml, c.env());
    let client = small.client();
    assert_eq!(client.server().unwrap().max_frame, 16_384);
    // The client knows the signer's limit from hello and says so at once;
    // the signer itself refuses such a frame with id 0 (tests/link.rs).
    let result = client.request::<calls::SignX509>(&request(vec![0x30; 20_000]));
    let message = match result {
        Err(signer_client::ClientError::Protocol(m)) => m,
        other => panic!("expected a local refusal, got {other:?}"),
    };
    assert!(message.contains("max_frame of 16384"), "{message}");
    drop(client);
    drop(small);

    let yaml = format!("{}protocol:\n  max_frame: 131072\n", c.ca_yaml);
    let large = Bench::start_with_env(LinkSpec::unthrottled(), &yaml, c.env());
    let mut options = large.link_options();
    options.max_frame = 131_072;
    let client = large.client_with(options);
    assert_eq!(client.server().unwrap().max_frame, 131_072);
    let (code, message) = status(client.request::<calls::SignX509>(&request(vec![0x30; 65_537])));
    assert_eq!(code, Status::MALFORMED_CSR, "{message}");
    assert!(message.contains("more than 65536"), "{message}");
    let (code, message) = status(client.request::<calls::SignX509>(&request(vec![0x30; 65_536])));
    assert_eq!(code, Status::MALFORMED_CSR, "{message}");
    assert!(!message.contains("more than"), "{message}");
}
