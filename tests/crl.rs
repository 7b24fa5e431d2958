//! Revocation and CRLs end to end: certificates issued and revoked over the
//! link, CRLs fetched with `signer-client crl`, checked with `openssl crl`
//! and `openssl verify -crl_check`, for an ECDSA intermediate and an RSA root.

#![allow(clippy::unwrap_used)] // helpers in test files: a failed unwrap is a failed test

use signer_client::Calls;
use signer_protocol::calls;
use std::path::Path;
use std::process::Command;

use signer_protocol::{msg, Status};
use signer_testsupport::ca::{
    make_csr, openssl, sign_request, signer_client, Ceremony, SERVER_PROFILE,
};
use signer_testsupport::{bin, Bench, LinkSpec};

fn sign(client: &signer_client::Client, d: &Path, name: &str) -> msg::SignX509Reply {
    let csr = make_csr(d, name, &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let host = format!("{name}.example.org");
    let reply: msg::SignX509Reply = client
        .request::<calls::SignX509>(&sign_request(&format!("crl-{name}"), csr, &host))
        .unwrap();
    std::fs::write(
        d.join(format!("{name}.pem")),
        signer_x509::cert_pem(&reply.certificate),
    )
    .unwrap();
    reply
}

/// `openssl crl -CAfile`: parses the DER CRL and verifies its signature.
fn check_crl(d: &Path, crl: &str, ca: &str) -> (bool, String) {
    openssl(
        d,
        &["crl", "-inform", "DER", "-in", crl, "-CAfile", ca, "-noout"],
    )
}

fn revoke(
    client: &signer_client::Client,
    issuer: &str,
    serial: &[u8],
    reason: u8,
    invalidity: Option<i64>,
) {
    let _: msg::RevokeX509Reply = client
        .request::<calls::RevokeX509>(&msg::RevokeX509 {
            request_id: "r".into(),
            issuer: issuer.into(),
            serial: serial.to_vec(),
            reason,
            invalidity_date: invalidity,
        })
        .unwrap();
}

#[test]
fn crls_check_out_with_openssl_and_track_revocations() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let d = c.dir().to_path_buf();
    let bench = Bench::start_with_env(LinkSpec::unthrottled(), &c.ca_yaml, c.env());
    let client = bench.client();
    let good = sign(&client, &d, "good");
    let bad = sign(&client, &d, "bad");
    let other = sign(&client, &d, "other");
    let yesterday = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 86_400;
    revoke(&client, "sub", &bad.serial, 1, Some(yesterday));
    revoke(&client, "sub", &other.serial, 0, None);
    drop(client);

    let device = bench.client_device();
    let cli = |args: &[&str]| {
        let (code, out, err) = signer_client(&device, &d, args);
        assert_eq!(code, Some(0), "{out}{err}");
        out
    };
    let text = cli(&["crl", "--issuer", "sub", "--out", "sub.crl"]);
    assert!(
        text.contains("wrote CRL") && text.contains("2 entries"),
        "{text}"
    );
    std::fs::write(
        d.join("chain.pem"),
        [
            std::fs::read(d.join("root.pem")).unwrap(),
            std::fs::read(d.join("sub.pem")).unwrap(),
        ]
        .concat(),
    )
    .unwrap();
    let (ok, text) = check_crl(&d, "sub.crl", "chain.pem");
    assert!(ok && text.contains("verify OK"), "{text}");
    let (_, text) = openssl(
        &d,
        &["crl", "-inform", "DER", "-in", "sub.crl", "-noout", "-text"],
    );
    for needle in [
        "Key Compromise",
        "Invalidity Date",
        "X509v3 CRL Number",
        "X509v3 Authority Key Identifier",
        "Version 2",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    assert_eq!(text.matches("Serial Number:").count(), 2, "{text}");
    let (ok, text) = openssl(
        &d,
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            "sub.crl",
            "-out",
            "sub.crl.pem",
        ],
    );
    assert!(ok, "{text}");
    let verify = |leaf: &str| {
        openssl(
            &d,
            &[
                "verify",
                "-crl_check",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "sub.pem",
                "-CRLfile",
                "sub.crl.pem",
                leaf,
            ],
        )
    };
    let (ok, text) = verify("good.pem");
    assert!(ok, "an unrevoked certificate passes: {text}");
    let (ok, text) = verify("bad.pem");
    assert!(!ok && text.contains("revoked"), "{text}");

    // Unchanged: nothing sent again. A new revocation: a new CRL with a higher number.
    let text = cli(&["crl", "--issuer", "sub", "--out", "sub.crl"]);
    assert!(text.contains("unchanged"), "{text}");
    let before = std::fs::read(d.join("sub.crl")).unwrap();
    let client = bench.client();
    revoke(&client, "sub", &good.serial, 4, None);
    let first: msg::FetchCrlReply = client
        .request::<calls::FetchCrl>(&msg::FetchCrl {
            issuer: "sub".into(),
            have_number: None,
            have_sha256: None,
            shard: None,
        })
        .unwrap();
    assert_eq!(first.entries, 3);
    drop(client);
    let text = cli(&["crl", "--issuer", "sub", "--out", "sub.crl"]);
    assert!(
        text.contains("wrote CRL") && text.contains("3 entries"),
        "{text}"
    );
    assert_ne!(std::fs::read(d.join("sub.crl")).unwrap(), before);

    // Verified against the wrong issuer certificate, the CRL is refused and the file kept.
    let kept = std::fs::read(d.join("sub.crl")).unwrap();
    std::fs::remove_file(d.join("sub.crl")).unwrap();
    let out = Command::new(bin("signer-client"))
        .arg("--link")
        .arg(&device)
        .args([
            "crl",
            "--issuer",
            "sub",
            "--out",
            "sub.crl",
            "--ca-cert",
            "root.pem",
        ])
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not verify"),
        "{out:?}"
    );
    assert!(
        !d.join("sub.crl").exists(),
        "an unverified CRL is not written"
    );
    std::fs::write(d.join("sub.crl"), kept).unwrap();

    // The RSA root's CRL: no entries, signed with RSA.
    let text = cli(&["crl", "--issuer", "root", "--out", "root.crl"]);
    assert!(text.contains("0 entries"), "{text}");
    let (ok, text) = check_crl(&d, "root.crl", "root.pem");
    assert!(ok && text.contains("verify OK"), "{text}");

    // Bad fetches.
    let client = bench.client();
    let err = client
        .request::<calls::FetchCrl>(&msg::FetchCrl {
            issuer: "sub".into(),
            have_number: Some(vec![0x7f; 12]),
            have_sha256: Some(vec![0; 32]),
            shard: None,
        })
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::UNKNOWN_CRL), "{err}");
    // The current CRL's number without its digest is no copy the signer
    // can vouch for (§7.7): unknown_crl, never `unchanged`.
    let current: msg::FetchCrlReply = client
        .request::<calls::FetchCrl>(&signer_testsupport::ca::full_crl("sub"))
        .unwrap();
    let err = client
        .request::<calls::FetchCrl>(&msg::FetchCrl {
            issuer: "sub".into(),
            have_number: Some(current.number.clone()),
            have_sha256: None,
            shard: None,
        })
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::UNKNOWN_CRL), "{err}");
    // A digest without a number names no copy: the whole CRL comes back.
    let whole: msg::FetchCrlReply = client
        .request::<calls::FetchCrl>(&msg::FetchCrl {
            issuer: "sub".into(),
            have_number: None,
            have_sha256: Some(current.sha256.clone()),
            shard: None,
        })
        .unwrap();
    assert!(!whole.unchanged && whole.crl.is_some() && whole.diff.is_none());
    let err = client
        .request::<calls::FetchCrl>(&msg::FetchCrl {
            issuer: "nope".into(),
            have_number: None,
            have_sha256: None,
            shard: None,
        })
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::UNKNOWN_ISSUER), "{err}");
}

#[test]
fn a_root_revokes_the_intermediate_it_signed_and_lists_it_on_its_crl() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let d = c.dir().to_path_buf();
    // `setup intermediate` recorded sub.pem as the root's certificate.
    let (ok, out) = openssl(&d, &["x509", "-in", "sub.pem", "-noout", "-serial"]);
    assert!(ok, "{out}");
    let serial_hex = out.trim().trim_start_matches("serial=").to_lowercase();
    let serial = hex::decode(&serial_hex).unwrap();
    let bench = Bench::start_with_env(LinkSpec::unthrottled(), &c.ca_yaml, c.env());
    let client = bench.client();
    let _: msg::RevokeX509Reply = client
        .request::<calls::RevokeX509>(&msg::RevokeX509 {
            request_id: "revoke-sub".into(),
            issuer: "root".into(),
            serial: serial.clone(),
            reason: 2, // cACompromise
            invalidity_date: None,
        })
        .unwrap();
    let crl: msg::FetchCrlReply = client
        .request::<calls::FetchCrl>(&signer_testsupport::ca::full_crl("root"))
        .unwrap();
    std::fs::write(d.join("root.crl"), crl.crl.unwrap()).unwrap();
    let (ok, text) = openssl(
        &d,
        &[
            "crl", "-inform", "DER", "-in", "root.crl", "-noout", "-text",
        ],
    );
    assert!(ok, "{text}");
    assert!(
        text.to_lowercase().contains(&serial_hex) && text.contains("CA Compromise"),
        "{text}"
    );
    // Signed by the root: it verifies with root.pem.
    let (ok, text) = openssl(
        &d,
        &[
            "crl", "-inform", "DER", "-in", "root.crl", "-noout", "-CAfile", "root.pem",
        ],
    );
    assert!(ok && text.contains("verify OK"), "{text}");
}

/// A CRL is linted before it is signed: a revocation recorded with a
/// reason the issuer's rules allowed then (RFC 5280's: aACompromise) stops
/// the CRL once the issuer publishes under the TLS Baseline Requirements'
/// CRL profile, which forbids it; nothing is signed, the refusal names the
/// entry and the rule, and the log says so.
#[test]
fn a_crl_the_issuers_rules_forbid_is_not_signed() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let d = c.dir().to_path_buf();
    let mut bench = Bench::start_with_env(LinkSpec::unthrottled(), &c.ca_yaml, c.env());
    let client = bench.client();
    let cert = sign(&client, &d, "aa");
    revoke(&client, "sub", &cert.serial, 10, None);
    let crl: msg::FetchCrlReply = client
        .request::<calls::FetchCrl>(&signer_testsupport::ca::full_crl("sub"))
        .unwrap();
    assert_eq!(crl.entries, 1);
    drop(client);

    // The same issuer, now also under the Baseline Requirements.
    let config = bench.daemon.config_path().to_path_buf();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "  profiles:\n",
            "  profiles:
    web-dv:
      issuer: sub
      rules: cabf_serverauth_dv
      default_days: 90
      max_days: 199
      key_usage: [digital_signature]
      extended_key_usage: [server_auth]
      subject_attributes: [CN]
      san_types: [dns]
      require_san: true
      crl_urls: [http://crl.example.org/sub.crl]
      policies: [2.23.140.1.2.1]
",
        ),
    )
    .unwrap();
    bench.daemon.restart();
    let client = bench.client();
    let lint_refused = |client: &signer_client::Client| match client
        .request::<calls::FetchCrl>(&signer_testsupport::ca::full_crl("sub"))
    {
        Err(e) => {
            assert_eq!(e.status(), Some(Status::LINT_FAILED), "{e}");
            let text = e.to_string();
            assert!(
                text.contains("br_crl_reason") && text.contains(&hex::encode(&cert.serial)),
                "{text}"
            );
        }
        Ok(r) => panic!("a CRL was sent: {} entries", r.entries),
    };
    // The CRL signed before is not sent again…
    lint_refused(&client);
    assert!(bench.daemon.log().contains("the stored CRL is not sent"));
    // … nor is a new one signed after another revocation.
    let other = sign(&client, &d, "other");
    revoke(&client, "sub", &other.serial, 1, None);
    lint_refused(&client);
    assert!(bench.daemon.log().contains("CRL not signed"));
    // A new revocation with that reason is refused at the door.
    let third = sign(&client, &d, "third");
    let refused = client.request::<calls::RevokeX509>(&msg::RevokeX509 {
        request_id: "r2".into(),
        issuer: "sub".into(),
        serial: third.serial.clone(),
        reason: 10,
        invalidity_date: None,
    });
    assert!(
        matches!(&refused, Err(e) if e.status() == Some(Status::INVALID_REASON)),
        "{refused:?}"
    );
}
