//! Issuance with keys in a real SoftHSM2 token, checked by `openssl`:
//! roots and intermediates for RSA and ECDSA issuers, leaves from CSRs made
//! by openssl, and every refusal. One test: SoftHSM2 reads its
//! configuration once per process.

#![allow(clippy::unwrap_used)] // helpers in test files: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::Path;

use signer_hsm::{
    KeyGenerator, KeyKind, KeySpec, PinSource, Pkcs11Backend, TokenConfig, TokenSelector,
};
use signer_testsupport::ca::make_csr;
use signer_testsupport::{SoftHsm, SOFTHSM_MODULE};
use signer_x509::issue::IssueError;
use signer_x509::setup::{ca_csr, intermediate, self_signed_root, CaSpec};
use signer_x509::{
    cert_pem, random_serial, CaSigner, CsrError, IssueRequest, Issuer, Profile, San,
};

fn openssl(args: &[&str], dir: &Path) -> String {
    let (ok, text) = signer_testsupport::ca::openssl(dir, args);
    assert!(ok, "openssl {args:?}: {text}");
    text
}

/// A CSR from openssl; `extra` adds arguments to `openssl req`.
fn csr(dir: &Path, name: &str, key_args: &[&str], extra: &[&str]) -> Vec<u8> {
    if extra.is_empty() {
        return make_csr(dir, name, key_args);
    }
    let (key, csr) = (format!("{name}.key"), format!("{name}.csr"));
    let mut args = vec!["req", "-new", "-newkey"];
    args.extend_from_slice(key_args);
    args.extend_from_slice(&["-nodes", "-keyout", &key, "-out", &csr, "-subj", "/CN=x"]);
    args.extend_from_slice(extra);
    openssl(&args, dir);
    std::fs::read(dir.join(csr)).unwrap()
}

fn p(k: &str, v: &str) -> (String, String) {
    (k.into(), v.into())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

const SERVER_PROFILE: &str = r#"
issuer: sub
default_days: 90
max_days: 397
key_usage: [digital_signature, key_encipherment]
extended_key_usage: [server_auth]
key_types: {rsa_min_bits: 2048, ec_curves: [p256, p384]}
subject_attributes: [CN, O, C]
required_subject_attributes: [CN]
san_types: [dns, ip]
require_san: true
crl_urls: [http://crl.example.org/sub.crl]
ocsp_urls: [http://ocsp.example.org]
ca_issuers_urls: [http://ca.example.org/sub.crt]
policies: [2.23.140.1.2.1]
"#;

const CLIENT_PROFILE: &str = r#"
issuer: ec-root
max_days: 730
key_usage: [digital_signature]
extended_key_usage: [client_auth, email_protection]
subject_attributes: [CN, emailAddress]
san_types: [email]
"#;

#[test]
fn issue_with_softhsm_keys_and_verify_with_openssl() {
    let hsm = SoftHsm::new("x509-test");
    std::env::set_var("SOFTHSM2_CONF", &hsm.conf);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let token = TokenConfig {
        module: SOFTHSM_MODULE.into(),
        token: TokenSelector::Label(hsm.label.clone()),
        pin: PinSource::File(hsm.pin_file()),
    };
    let admin = Pkcs11Backend::open(token.clone(), Vec::new(), 1).unwrap();
    admin.generate(KeyKind::Rsa { bits: 2048 }, "root").unwrap();
    admin.generate(KeyKind::Rsa { bits: 2048 }, "sub").unwrap();
    admin.generate(KeyKind::EcP384, "ec-root").unwrap();
    admin.generate(KeyKind::EcP256, "external").unwrap();
    admin
        .generate(KeyKind::Rsa { bits: 4096 }, "root4096")
        .unwrap();
    let spec = |name: &str| KeySpec {
        name: name.into(),
        label: Some(name.into()),
        id: None,
    };
    let backend = Pkcs11Backend::open(
        token,
        vec![
            spec("root"),
            spec("sub"),
            spec("ec-root"),
            spec("external"),
            spec("root4096"),
        ],
        2,
    )
    .unwrap();

    // Set-up: an RSA root, an RSA intermediate under it, an ECDSA P-384 root.
    let ca = |subject: &str, path_len| CaSpec {
        subject: vec![p("O", "Test CA"), p("CN", subject)],
        days: 3650,
        path_len,
        serial_prefix: 0x11,
        now: now() - 60,
        scheme: None,
        crl_urls: vec!["http://crl.example.org/root.crl".into()],
        eku: Vec::new(),
        policies: Vec::new(),
        ocsp_urls: Vec::new(),
        ca_issuers_urls: Vec::new(),
    };
    let root_der = self_signed_root(&backend, "root", &ca("Test Root", Some(1))).unwrap();
    let root = CaSigner::new("root", "root", root_der.clone(), &backend).unwrap();
    let sub_der = intermediate(&backend, &root, "sub", &ca("Test Sub", Some(0))).unwrap();
    let sub = CaSigner::new("sub", "sub", sub_der.clone(), &backend).unwrap();
    let ec_root_der = self_signed_root(&backend, "ec-root", &ca("Test EC Root", None)).unwrap();
    let ec_root = CaSigner::new("ec-root", "ec-root", ec_root_der.clone(), &backend).unwrap();
    std::fs::write(d.join("root.pem"), cert_pem(&root_der)).unwrap();
    std::fs::write(d.join("sub.pem"), cert_pem(&sub_der)).unwrap();
    std::fs::write(d.join("ec-root.pem"), cert_pem(&ec_root_der)).unwrap();
    openssl(
        &["verify", "-x509_strict", "-CAfile", "root.pem", "sub.pem"],
        d,
    );
    openssl(
        &[
            "verify",
            "-x509_strict",
            "-CAfile",
            "ec-root.pem",
            "ec-root.pem",
        ],
        d,
    );

    // A CA certificate that does not belong to the key is refused.
    assert!(
        matches!(CaSigner::new("bad", "sub", root_der.clone(), &backend), Err(IssueError::Issuer(m)) if m.contains("does not match"))
    );

    // A CSR for an externally signed intermediate, checked by openssl.
    let ext_csr = ca_csr(&backend, "external", &[p("CN", "External Sub")]).unwrap();
    std::fs::write(d.join("external.csr"), &ext_csr).unwrap();
    let text = openssl(
        &[
            "req",
            "-inform",
            "DER",
            "-in",
            "external.csr",
            "-verify",
            "-noout",
            "-subject",
        ],
        d,
    );
    assert!(text.contains("External Sub"), "{text}");

    // An RSA-4096 root signed with RSASSA-PSS, and a PSS-signed leaf under it.
    let pss_root_der = self_signed_root(
        &backend,
        "root4096",
        &CaSpec {
            scheme: Some(signer_hsm::Scheme::RsaPss(signer_hsm::Hash::Sha384)),
            ..ca("Test PSS Root", None)
        },
    )
    .unwrap();
    let pss_root = CaSigner::new("pss-root", "root4096", pss_root_der.clone(), &backend).unwrap();
    std::fs::write(d.join("pss-root.pem"), cert_pem(&pss_root_der)).unwrap();
    let text = openssl(&["x509", "-in", "pss-root.pem", "-noout", "-text"], d);
    assert!(
        text.contains("rsassaPss") && text.contains("4096 bit"),
        "{text}"
    );
    openssl(
        &[
            "verify",
            "-x509_strict",
            "-CAfile",
            "pss-root.pem",
            "pss-root.pem",
        ],
        d,
    );

    let mut profiles = BTreeMap::new();
    let mut pss_profile = serde_yaml::from_str::<Profile>(CLIENT_PROFILE).unwrap();
    pss_profile.issuer = "pss-root".into();
    pss_profile.signature = Some(serde_yaml::from_str("{scheme: pss, hash: sha256}").unwrap());
    profiles.insert("pss".to_string(), pss_profile);
    profiles.insert(
        "server".to_string(),
        serde_yaml::from_str::<Profile>(SERVER_PROFILE).unwrap(),
    );
    profiles.insert(
        "client".to_string(),
        serde_yaml::from_str::<Profile>(CLIENT_PROFILE).unwrap(),
    );
    let mut cas = BTreeMap::new();
    for c in [root, sub, ec_root, pss_root] {
        cas.insert(c.name.clone(), c);
    }
    let issuer = Issuer { profiles, cas };

    // Server certificates for RSA and EC keys under the RSA intermediate.
    for (name, key_args) in [
        ("rsa", &["rsa:2048"][..]),
        ("ec", &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"][..]),
    ] {
        let request = IssueRequest {
            profile: "server".into(),
            csr: csr(d, name, key_args, &[]),
            subject: vec![p("C", "DE"), p("O", "Example"), p("CN", "www.example.org")],
            sans: vec![
                San::Dns("www.example.org".into()),
                San::Dns("example.org".into()),
                San::Ip("192.0.2.7".parse().unwrap()),
            ],
            validity_days: Some(30),
        };
        let issued = issuer
            .issue(&backend, &request, &random_serial(0x11), now())
            .unwrap();
        assert_eq!(issued.not_after - issued.not_before, 30 * 86_400 - 1);
        let leaf = format!("{name}-leaf.pem");
        std::fs::write(d.join(&leaf), cert_pem(&issued.der)).unwrap();
        let ok = openssl(
            &[
                "verify",
                "-x509_strict",
                "-purpose",
                "sslserver",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "sub.pem",
                &leaf,
            ],
            d,
        );
        assert!(ok.contains(": OK"), "{ok}");
        let text = openssl(&["x509", "-in", &leaf, "-noout", "-text"], d);
        for needle in [
            "DNS:www.example.org",
            "IP Address:192.0.2.7",
            "TLS Web Server Authentication",
            "http://crl.example.org/sub.crl",
            "OCSP - URI:http://ocsp.example.org",
            "2.23.140.1.2.1",
            "CA:FALSE",
            "Subject Key Identifier",
            "Authority Key Identifier",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }

    // A client certificate under the ECDSA root, validity capped by default days.
    let request = IssueRequest {
        profile: "client".into(),
        csr: csr(
            d,
            "client",
            &["ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
            &[],
        ),
        subject: vec![p("CN", "Alice"), p("emailAddress", "alice@example.org")],
        sans: vec![San::Email("alice@example.org".into())],
        validity_days: None,
    };
    let issued = issuer
        .issue(&backend, &request, &random_serial(0x11), now())
        .unwrap();
    std::fs::write(d.join("client-leaf.pem"), cert_pem(&issued.der)).unwrap();
    let ok = openssl(
        &[
            "verify",
            "-x509_strict",
            "-purpose",
            "sslclient",
            "-CAfile",
            "ec-root.pem",
            "client-leaf.pem",
        ],
        d,
    );
    assert!(ok.contains(": OK"), "{ok}");

    let request = IssueRequest {
        profile: "pss".into(),
        ..request
    };
    let issued = issuer
        .issue(&backend, &request, &random_serial(0x11), now())
        .unwrap();
    std::fs::write(d.join("pss-leaf.pem"), cert_pem(&issued.der)).unwrap();
    let ok = openssl(
        &[
            "verify",
            "-x509_strict",
            "-CAfile",
            "pss-root.pem",
            "pss-leaf.pem",
        ],
        d,
    );
    assert!(ok.contains(": OK"), "{ok}");

    // Refusals, each with its own error.
    let good_csr = std::fs::read(d.join("rsa.csr")).unwrap();
    let base = IssueRequest {
        profile: "server".into(),
        csr: good_csr.clone(),
        subject: vec![p("CN", "www.example.org")],
        sans: vec![San::Dns("www.example.org".into())],
        validity_days: None,
    };
    let refuse = |r: IssueRequest| {
        issuer
            .issue(&backend, &r, &random_serial(0x11), now())
            .unwrap_err()
    };
    assert!(matches!(
        refuse(IssueRequest {
            profile: "nope".into(),
            ..base.clone()
        }),
        IssueError::UnknownProfile(_)
    ));
    let weak = csr(d, "weak", &["rsa:1024"], &[]);
    assert!(matches!(
        refuse(IssueRequest {
            csr: weak,
            ..base.clone()
        }),
        IssueError::WeakKey(_)
    ));
    let mut tampered = good_csr.clone();
    let pos = String::from_utf8_lossy(&tampered).find("MII").unwrap() + 40;
    tampered[pos] = if tampered[pos] == b'A' { b'B' } else { b'A' };
    let e = refuse(IssueRequest {
        csr: tampered,
        ..base.clone()
    });
    assert!(
        matches!(
            e,
            IssueError::Csr(CsrError::BadSignature(_)) | IssueError::Csr(CsrError::Malformed(_))
        ),
        "{e}"
    );
    assert!(matches!(
        refuse(IssueRequest {
            csr: b"not a csr".to_vec(),
            ..base.clone()
        }),
        IssueError::Csr(CsrError::Malformed(_))
    ));
    let critical = csr(
        d,
        "crit",
        &["rsa:2048"],
        &["-addext", "1.2.3.4=critical,DER:05:00"],
    );
    assert!(matches!(
        refuse(IssueRequest {
            csr: critical,
            ..base.clone()
        }),
        IssueError::Csr(CsrError::UnknownCriticalExtension(_))
    ));
    let ed = csr(d, "ed", &["ed25519"], &[]);
    assert!(matches!(
        refuse(IssueRequest {
            csr: ed,
            ..base.clone()
        }),
        IssueError::Csr(CsrError::UnsupportedKey(_))
    ));
    assert!(matches!(
        refuse(IssueRequest {
            subject: vec![p("OU", "x"), p("CN", "www.example.org")],
            ..base.clone()
        }),
        IssueError::SubjectNotAllowed(_)
    ));
    assert!(matches!(
        refuse(IssueRequest {
            subject: vec![p("O", "x")],
            ..base.clone()
        }),
        IssueError::SubjectNotAllowed(_)
    ));
    assert!(matches!(
        refuse(IssueRequest {
            sans: vec![San::Email("a@example.org".into())],
            ..base.clone()
        }),
        IssueError::SanNotAllowed(_)
    ));
    assert!(matches!(
        refuse(IssueRequest {
            sans: vec![San::Dns("bad name".into())],
            ..base.clone()
        }),
        IssueError::SanNotAllowed(_)
    ));
    assert!(matches!(
        refuse(IssueRequest {
            sans: vec![],
            ..base.clone()
        }),
        IssueError::SanNotAllowed(_)
    ));
    assert!(matches!(
        refuse(IssueRequest {
            validity_days: Some(398),
            ..base.clone()
        }),
        IssueError::ValidityTooLong {
            asked: 398,
            max: 397
        }
    ));
    assert!(matches!(
        refuse(IssueRequest {
            sans: vec![San::Dns("other.example.org".into())],
            ..base.clone()
        }),
        IssueError::Lint {
            rule: "server_cn_in_san",
            ..
        }
    ));
}
