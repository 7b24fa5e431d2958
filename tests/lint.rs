//! Nothing leaves the signer that an independent linter rejects: every
//! certificate issued under each TLS Baseline Requirements rule set, for
//! RSA and EC keys, goes through pkilint's CA/Browser Forum linter and
//! `openssl verify -x509_strict`; the issuer's CRL through pkilint's BR CRL
//! linter. Hostile requests (what each rule set forbids) are refused before
//! anything is signed, and check-config refuses profiles that could only
//! issue what the rules forbid.
#![allow(clippy::unwrap_used)] // helpers in test files: a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;

use signer_client::{Calls, Client, ClientError};
use signer_protocol::{calls, msg, Status};
use signer_testsupport::ca::{check_config_refuses, full_crl, linter, make_csr, pkilint, Ceremony};
use signer_testsupport::{output, Bench, LinkSpec};

const PROFILES: &str = "  profiles:
    web-dv:
      issuer: sub
      rules: cabf_serverauth_dv
      default_days: 90
      max_days: 199
      key_usage: [digital_signature]
      extended_key_usage: [server_auth, client_auth]
      subject_attributes: [CN]
      san_types: [dns, ip]
      require_san: true
      crl_urls: [http://crl.example.org/sub.crl]
      ca_issuers_urls: [http://ca.example.org/sub.crt]
      policies: [2.23.140.1.2.1]
    web-ov:
      issuer: sub
      rules: cabf_serverauth_ov
      default_days: 90
      max_days: 199
      key_usage: [digital_signature]
      extended_key_usage: [server_auth]
      subject_attributes: [C, ST, L, O, CN]
      required_subject_attributes: [C, O]
      san_types: [dns]
      require_san: true
      crl_urls: [http://crl.example.org/sub.crl]
      ca_issuers_urls: [http://ca.example.org/sub.crt]
      policies: [2.23.140.1.2.2]
    web-iv:
      issuer: sub
      rules: cabf_serverauth_iv
      default_days: 90
      max_days: 199
      key_usage: [digital_signature]
      extended_key_usage: [server_auth]
      subject_attributes: [C, L, GN, SN]
      required_subject_attributes: [C, GN, SN]
      san_types: [dns]
      require_san: true
      crl_urls: [http://crl.example.org/sub.crl]
      ca_issuers_urls: [http://ca.example.org/sub.crt]
      policies: [2.23.140.1.2.3]
    web-ev:
      issuer: sub
      rules: cabf_serverauth_ev
      default_days: 90
      max_days: 199
      key_usage: [digital_signature]
      extended_key_usage: [server_auth]
      subject_attributes: [C, ST, L, O, serialNumber, businessCategory, jurisdictionC, jurisdictionST, jurisdictionL]
      required_subject_attributes: [C, O, serialNumber, businessCategory, jurisdictionC]
      san_types: [dns]
      require_san: true
      crl_urls: [http://crl.example.org/sub.crl]
      ca_issuers_urls: [http://ca.example.org/sub.crt]
      policies: [2.23.140.1.1]
";

/// An extended validation subject: the EV Guidelines' attributes, given in
/// no particular order.
const EV_SUBJECT: [(&str, &str); 8] = [
    ("businessCategory", "Private Organization"),
    ("jurisdictionC", "AU"),
    ("jurisdictionST", "New South Wales"),
    ("serialNumber", "ACN 123 456 789"),
    ("O", "CAcert Inc."),
    ("L", "Sydney"),
    ("ST", "New South Wales"),
    ("C", "AU"),
];

/// Subject attributes of a request.
type Subject<'a> = &'a [(&'a str, &'a str)];

/// A request each rule set must refuse: id, profile, subject, SANs,
/// validity days, and the status it gets.
type Hostile<'a> = (
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    Vec<(&'a str, &'a str)>,
    u32,
    Status,
);

/// Warnings a profile accepts by its own choice, documented in
/// configs/signerd.yaml: a subject CN (the Baseline Requirements say MAY,
/// NOT RECOMMENDED) where the profile lists CN.
const ACCEPTED: [&str; 2] = [
    "cabf.serverauth.dv.common_name_attribute_present",
    "cabf.serverauth.ov.common_name_attribute_present",
];

/// The certificate in PEM file `name` under `d`, written as DER beside it
/// (pkilint reads DER); its path.
fn der_file(d: &Path, name: &str) -> std::path::PathBuf {
    let der = signer_x509::cert_der(&std::fs::read(d.join(name)).unwrap()).unwrap();
    let path = d.join(format!("{name}.der"));
    std::fs::write(&path, der).unwrap();
    path
}

/// The signer's CA certificates, as `chain.pem` in `d` (for openssl verify).
fn write_chain(client: &Client, d: &Path) {
    let cas: msg::CaCertsReply = client.request::<calls::CaCerts>(&msg::Empty {}).unwrap();
    let mut chain = Vec::new();
    for ca in &cas.cas {
        chain.extend(signer_x509::cert_pem(&ca.certificate).into_bytes());
    }
    std::fs::write(d.join("chain.pem"), &chain).unwrap();
}

/// Subject key types each rule set issues for: name, `openssl req -newkey`
/// arguments.
const KEYS: [(&str, &[&str]); 3] = [
    ("p256", &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
    ("p384", &["ec", "-pkeyopt", "ec_paramgen_curve:P-384"]),
    ("rsa", &["rsa:2048"]),
];

/// `openssl verify -x509_strict` (and `extra`) accepts certificate `der`
/// against `d`'s chain.pem.
fn openssl_verify(d: &Path, id: &str, der: &[u8], extra: &[&str]) {
    let pem = d.join(format!("{id}.pem"));
    std::fs::write(&pem, signer_x509::cert_pem(der)).unwrap();
    let (code, out, err) = output(
        Command::new("openssl")
            .args(["verify", "-x509_strict"])
            .args(extra)
            .arg("-CAfile")
            .arg(d.join("chain.pem"))
            .arg(&pem),
    );
    assert_eq!(code, Some(0), "{id}: {out}{err}");
}

/// Each hostile request is refused with its status.
fn refuse_all(client: &Client, csr: &[u8], cases: Vec<Hostile>) {
    for (id, profile, subject, sans, days, status) in cases {
        let refused = sign(client, id, profile, csr, &subject, &sans, days);
        assert!(
            matches!(&refused, Err(e) if e.status() == Some(status)),
            "{id}: {refused:?}"
        );
    }
}

fn sign(
    client: &Client,
    id: &str,
    profile: &str,
    csr: &[u8],
    subject: &[(&str, &str)],
    sans: &[(&str, &str)],
    days: u32,
) -> Result<msg::SignX509Reply, ClientError> {
    client.request::<calls::SignX509>(&msg::SignX509 {
        request_id: id.into(),
        profile: profile.into(),
        csr: csr.to_vec(),
        subject: subject
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        sans: sans
            .iter()
            .map(|(k, v)| msg::SanEntry {
                kind: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        validity_days: Some(days),
    })
}

#[test]
fn certificates_and_crls_pass_the_cabf_linters_and_hostile_requests_are_refused() {
    let c = Ceremony::new("p256", PROFILES);
    let d = c.dir().to_path_buf();
    let bench = Bench::start_with_env(LinkSpec::unthrottled(), &c.ca_yaml, c.env());
    let client = bench.client();
    write_chain(&client, &d);
    let issued: Vec<(&str, &str, Subject)> = vec![
        (
            "web-dv",
            "DV-FINAL-CERTIFICATE",
            &[("CN", "www.cacert.org")],
        ),
        ("web-dv", "DV-FINAL-CERTIFICATE", &[]),
        (
            "web-ov",
            "OV-FINAL-CERTIFICATE",
            &[
                ("C", "AU"),
                ("ST", "New South Wales"),
                ("L", "Sydney"),
                ("O", "CAcert Inc."),
                ("CN", "www.cacert.org"),
            ],
        ),
        (
            "web-iv",
            "IV-FINAL-CERTIFICATE",
            &[("C", "DE"), ("L", "Berlin"), ("GN", "Ann"), ("SN", "Lee")],
        ),
        ("web-ev", "EV-FINAL-CERTIFICATE", &EV_SUBJECT),
        // Asked in the reverse of the Baseline Requirements' order: issued
        // in theirs (7.1.4.2).
        (
            "web-ov",
            "OV-FINAL-CERTIFICATE",
            &[
                ("CN", "www.cacert.org"),
                ("O", "CAcert Inc."),
                ("L", "Sydney"),
                ("C", "AU"),
            ],
        ),
    ];
    let mut serials = Vec::new();
    for (k, (key, key_args)) in KEYS.iter().enumerate() {
        let csr = make_csr(&d, key, key_args);
        for (i, (profile, kind, subject)) in issued.iter().enumerate() {
            let id = format!("{profile}-{key}-{i}");
            let reply = sign(
                &client,
                &id,
                profile,
                &csr,
                subject,
                &[("dns", "www.cacert.org"), ("dns", "cacert.org")],
                90,
            )
            .unwrap_or_else(|e| panic!("{id}: {e}"));
            let file = d.join(format!("{id}.der"));
            std::fs::write(&file, &reply.certificate).unwrap();
            let findings = pkilint(
                "lint_cabf_serverauth_cert",
                &["lint", "-d", "-o", "-s", "WARNING"],
                &file,
            );
            let unexpected: Vec<_> = findings
                .iter()
                .filter(|(code, _)| !ACCEPTED.contains(&code.as_str()))
                .collect();
            assert!(unexpected.is_empty(), "{id}: {unexpected:?}");
            // (The CA/B Forum linter runs RFC 5280's rules too, without the
            // ones the Baseline Requirements supersede, such as RFC 5280's
            // SHOULD for a subject key identifier the BRs advise against.)
            // pkilint recognised the kind the profile issues.
            let (_, _, err) = output(
                linter("lint_cabf_serverauth_cert")
                    .args(["lint", "-d", "-o"])
                    .arg(&file),
            );
            assert!(err.contains(kind), "{id}: detected as {err}");
            openssl_verify(&d, &id, &reply.certificate, &[]);
            if k == 0 {
                serials.push(reply.serial);
            }
        }
    }

    // Hostile requests, each refused before anything is signed.
    let csr = make_csr(&d, "hostile", KEYS[0].1);
    let dns = [("dns", "www.cacert.org")];
    let cases: Vec<Hostile> = vec![
        (
            "o-under-dv",
            "web-dv",
            vec![("O", "Example")],
            dns.to_vec(),
            90,
            Status::SUBJECT_NOT_ALLOWED,
        ),
        (
            "ou-under-ov",
            "web-ov",
            vec![
                ("C", "AU"),
                ("L", "Sydney"),
                ("O", "CAcert Inc."),
                ("OU", "IT"),
            ],
            dns.to_vec(),
            90,
            Status::SUBJECT_NOT_ALLOWED,
        ),
        (
            "ev-wildcard",
            "web-ev",
            EV_SUBJECT.to_vec(),
            vec![("dns", "*.cacert.org")],
            90,
            Status::LINT_FAILED,
        ),
        (
            "ev-business-category",
            "web-ev",
            EV_SUBJECT
                .iter()
                .map(|&(k, v)| {
                    (
                        k,
                        if k == "businessCategory" {
                            "Startup"
                        } else {
                            v
                        },
                    )
                })
                .collect(),
            dns.to_vec(),
            90,
            Status::LINT_FAILED,
        ),
        (
            "ev-jurisdiction-locality-without-state",
            "web-ev",
            EV_SUBJECT
                .iter()
                .map(|&(k, v)| {
                    if k == "jurisdictionST" {
                        ("jurisdictionL", "Sydney")
                    } else {
                        (k, v)
                    }
                })
                .collect(),
            dns.to_vec(),
            90,
            Status::LINT_FAILED,
        ),
        (
            "ev-jurisdiction-country",
            "web-ev",
            EV_SUBJECT
                .iter()
                .map(|&(k, v)| (k, if k == "jurisdictionC" { "QQ" } else { v }))
                .collect(),
            dns.to_vec(),
            90,
            Status::SUBJECT_NOT_ALLOWED,
        ),
        (
            "ev-without-registration-number",
            "web-ev",
            EV_SUBJECT
                .iter()
                .copied()
                .filter(|&(k, _)| k != "serialNumber")
                .collect(),
            dns.to_vec(),
            90,
            Status::SUBJECT_NOT_ALLOWED,
        ),
        (
            "ev-ip",
            "web-ev",
            EV_SUBJECT.to_vec(),
            vec![("dns", "www.cacert.org"), ("ip", "8.8.8.8")],
            90,
            Status::SAN_NOT_ALLOWED,
        ),
        (
            "duplicate-cn",
            "web-dv",
            vec![("CN", "www.cacert.org"), ("CN", "cacert.org")],
            vec![("dns", "www.cacert.org"), ("dns", "cacert.org")],
            90,
            Status::LINT_FAILED,
        ),
        (
            "insignificant-locality",
            "web-ov",
            vec![("C", "AU"), ("L", "-"), ("O", "CAcert Inc.")],
            dns.to_vec(),
            90,
            Status::LINT_FAILED,
        ),
        (
            "reserved-label",
            "web-dv",
            vec![],
            vec![("dns", "ab--cd.cacert.org")],
            90,
            Status::LINT_FAILED,
        ),
        (
            "invalid-punycode",
            "web-dv",
            vec![],
            vec![("dns", "xn--zz9999zz.cacert.org")],
            90,
            Status::LINT_FAILED,
        ),
        (
            "unassigned-country",
            "web-ov",
            vec![("C", "QQ"), ("L", "Sydney"), ("O", "CAcert Inc.")],
            dns.to_vec(),
            90,
            Status::SUBJECT_NOT_ALLOWED,
        ),
        (
            "ov-without-place",
            "web-ov",
            vec![("C", "AU"), ("O", "CAcert Inc.")],
            dns.to_vec(),
            90,
            Status::LINT_FAILED,
        ),
        (
            "ov-without-o",
            "web-ov",
            vec![("C", "AU"), ("L", "Sydney")],
            dns.to_vec(),
            90,
            Status::SUBJECT_NOT_ALLOWED,
        ),
        (
            "reserved-ip",
            "web-dv",
            vec![],
            vec![("ip", "192.0.2.7")],
            90,
            Status::LINT_FAILED,
        ),
        (
            "private-ip",
            "web-dv",
            vec![],
            vec![("ip", "10.0.0.1")],
            90,
            Status::LINT_FAILED,
        ),
        (
            "v6-documentation",
            "web-dv",
            vec![],
            vec![("ip", "2001:db8::1")],
            90,
            Status::LINT_FAILED,
        ),
        (
            "internal-name",
            "web-dv",
            vec![],
            vec![("dns", "printer.corp")],
            90,
            Status::LINT_FAILED,
        ),
        (
            "special-use-name",
            "web-dv",
            vec![],
            vec![("dns", "www.example")],
            90,
            Status::LINT_FAILED,
        ),
        (
            "public-suffix",
            "web-dv",
            vec![],
            vec![("dns", "co.uk")],
            90,
            Status::LINT_FAILED,
        ),
        (
            "cn-in-san-but-another-case",
            "web-dv",
            vec![("CN", "WWW.cacert.org")],
            dns.to_vec(),
            90,
            Status::LINT_FAILED,
        ),
        (
            "cn-not-in-san",
            "web-dv",
            vec![("CN", "other.cacert.org")],
            dns.to_vec(),
            90,
            Status::LINT_FAILED,
        ),
        (
            "too-long-for-the-schedule",
            "web-dv",
            vec![],
            dns.to_vec(),
            199 + 1,
            Status::VALIDITY_TOO_LONG,
        ),
        (
            "email-san",
            "web-dv",
            vec![],
            vec![("email", "a@cacert.org")],
            90,
            Status::SAN_NOT_ALLOWED,
        ),
    ];
    refuse_all(&client, &csr, cases);
    // The BR schedule itself: 200 days today (2026-03-15 to 2027-03-14).
    assert_eq!(
        signer_x509::profile::cabf_max_validity_days(1_790_000_000),
        200
    );
    assert_eq!(
        signer_x509::profile::cabf_max_validity_days(1_806_000_000),
        100
    );
    assert_eq!(
        signer_x509::profile::cabf_max_validity_days(1_900_000_000),
        47
    );
    assert_eq!(
        signer_x509::profile::cabf_max_validity_days(1_700_000_000),
        398
    );

    // Revocations: reasons the BR CRL profile forbids for subscriber
    // certificates are refused; the CRL passes pkilint's BR CRL linter.
    for reason in [2u8, 10] {
        let refused = client.request::<calls::RevokeX509>(&msg::RevokeX509 {
            request_id: format!("bad-reason-{reason}"),
            issuer: "sub".into(),
            serial: serials[0].clone(),
            reason,
            invalidity_date: None,
        });
        assert!(
            matches!(&refused, Err(e) if e.status() == Some(Status::INVALID_REASON)),
            "reason {reason}: {refused:?}"
        );
    }
    for (i, (serial, reason)) in serials.iter().zip([1u8, 4, 0, 5]).enumerate() {
        let _: msg::RevokeX509Reply = client
            .request::<calls::RevokeX509>(&msg::RevokeX509 {
                request_id: format!("revoke-{i}"),
                issuer: "sub".into(),
                serial: serial.clone(),
                reason,
                invalidity_date: None,
            })
            .unwrap();
    }
    let crl: msg::FetchCrlReply = client.request::<calls::FetchCrl>(&full_crl("sub")).unwrap();
    let crl_file = d.join("sub.crl");
    std::fs::write(&crl_file, crl.crl.unwrap()).unwrap();
    for profile in ["BR", "PKIX"] {
        let findings = pkilint(
            "lint_crl",
            &["lint", "-t", "CRL", "-p", profile, "-s", "WARNING"],
            &crl_file,
        );
        assert!(findings.is_empty(), "{profile}: {findings:?}");
    }
    // The CA certificates the ceremony made (setup self-sign and setup
    // intermediate) pass RFC 5280's linter; pkilint recognises the root.
    for file in ["root.pem", "sub.pem"] {
        let der = der_file(&d, file);
        let pkix = pkilint("lint_pkix_cert", &["lint", "-s", "WARNING"], &der);
        assert!(pkix.is_empty(), "{file}: {pkix:?}");
    }
    let (_, _, detected) = output(
        linter("lint_cabf_serverauth_cert")
            .args(["lint", "-d", "-o"])
            .arg(der_file(&d, "root.pem")),
    );
    assert!(detected.contains("ROOT-CA"), "{detected}");
    // The root's CRL lists CA certificates (an ARL): cACompromise is allowed
    // there, aACompromise is not; it passes pkilint's BR ARL linter.
    let (ok, serial) =
        signer_testsupport::ca::openssl(&d, &["x509", "-in", "sub.pem", "-noout", "-serial"]);
    assert!(ok, "{serial}");
    let sub_serial = hex::decode(serial.trim().trim_start_matches("serial=")).unwrap();
    let revoke_sub = |id: &str, reason: u8| {
        client.request::<calls::RevokeX509>(&msg::RevokeX509 {
            request_id: id.into(),
            issuer: "root".into(),
            serial: sub_serial.clone(),
            reason,
            invalidity_date: None,
        })
    };
    let refused = revoke_sub("sub-aa", 10);
    assert!(
        matches!(&refused, Err(e) if e.status() == Some(Status::INVALID_REASON)),
        "{refused:?}"
    );
    revoke_sub("sub-ca-compromise", 2).unwrap();
    let arl: msg::FetchCrlReply = client
        .request::<calls::FetchCrl>(&full_crl("root"))
        .unwrap();
    assert_eq!(arl.entries, 1);
    let arl_file = d.join("root.crl");
    std::fs::write(&arl_file, arl.crl.unwrap()).unwrap();
    for profile in ["BR", "PKIX"] {
        let findings = pkilint(
            "lint_crl",
            &["lint", "-t", "ARL", "-p", profile, "-s", "WARNING"],
            &arl_file,
        );
        assert!(findings.is_empty(), "ARL {profile}: {findings:?}");
    }
    drop(client);

    // check-config refuses profiles that could only issue what the rules forbid.
    check_config_refuses(bench.daemon.config_path(), &[
        ("subject_attributes: [CN]\n", "subject_attributes: [CN, O]\n", "ca.profiles.web-dv.subject_attributes"),
        ("key_usage: [digital_signature]\n      extended_key_usage: [server_auth, client_auth]", "key_usage: [digital_signature, key_encipherment]\n      extended_key_usage: [server_auth, client_auth]", "ca.profiles.web-dv.key_usage"),
        ("      rules: cabf_serverauth_dv\n", "", "ca.profiles.web-dv.rules"),
        ("policies: [2.23.140.1.2.1]", "policies: [2.23.140.1.2.2]", "ca.profiles.web-dv.policies"),
        ("san_types: [dns, ip]", "san_types: [dns, email]", "ca.profiles.web-dv.san_types"),
        ("required_subject_attributes: [C, O]", "required_subject_attributes: [C]", "ca.profiles.web-ov.required_subject_attributes"),
        ("required_subject_attributes: [C, O, serialNumber, businessCategory, jurisdictionC]", "required_subject_attributes: [C, O, businessCategory, jurisdictionC]", "ca.profiles.web-ev.required_subject_attributes"),
        ("san_types: [dns]\n      require_san: true\n      crl_urls: [http://crl.example.org/sub.crl]\n      ca_issuers_urls: [http://ca.example.org/sub.crt]\n      policies: [2.23.140.1.1]", "san_types: [dns, ip]\n      require_san: true\n      crl_urls: [http://crl.example.org/sub.crl]\n      ca_issuers_urls: [http://ca.example.org/sub.crt]\n      policies: [2.23.140.1.1]", "ca.profiles.web-ev.san_types"),
        ("policies: [2.23.140.1.1]", "policies: [2.23.140.1.1, 2.23.140.1.2.2]", "ca.profiles.web-ev.policies"),
        ("  profiles:\n", "  crl: {next_update_hours: 241, refresh_hours: 24}\n  profiles:\n", "ca.crl.next_update_hours"),
    ]);

    // A TLS issuing CA as the Baseline Requirements ask it of the ceremony
    // (7.1.2.6): country in the subject, extKeyUsage, certificatePolicies,
    // authorityInformationAccess; the CA/B Forum linter finds nothing.
    drop(bench);
    let (ok, text) = c.signerd(&[
        "setup",
        "intermediate",
        "--config",
        "setup.yaml",
        "--issuer",
        "root",
        "--key",
        "sub",
        "--subject",
        "CN=Example TLS CA,O=Example,C=DE",
        "--days",
        "1825",
        "--crl-url",
        "http://crl.example.org/root.crl",
        "--eku",
        "server_auth",
        "--eku",
        "client_auth",
        "--policy",
        "2.23.140.1.2.1",
        "--ca-issuers-url",
        "http://www.example.org/root.crt",
        "--ocsp-url",
        "http://ocsp.example.org",
        "--out",
        "tls-ca.pem",
    ]);
    assert!(ok, "{text}");
    let der = der_file(&d, "tls-ca.pem");
    for (tool, args) in [
        ("lint_pkix_cert", &["lint", "-s", "WARNING"][..]),
        (
            "lint_cabf_serverauth_cert",
            &["lint", "-d", "-s", "WARNING"][..],
        ),
    ] {
        let findings = pkilint(tool, args, &der);
        assert!(findings.is_empty(), "{tool}: {findings:?}");
    }
    let (_, _, detected) = output(
        linter("lint_cabf_serverauth_cert")
            .args(["lint", "-d", "-o"])
            .arg(&der),
    );
    assert!(detected.contains("TLS-CA"), "{detected}");
}

const SMIME_PROFILES: &str = "  profiles:
    mail-mv:
      issuer: sub
      rules: cabf_smime_mailbox
      default_days: 365
      max_days: 825
      key_usage: [digital_signature, key_encipherment, key_agreement]
      extended_key_usage: [email_protection]
      subject_attributes: [CN, emailAddress, serialNumber]
      san_types: [email]
      require_san: true
      crl_urls: [http://crl.example.org/sub.crl]
      ca_issuers_urls: [http://ca.example.org/sub.crt]
      policies: [2.23.140.1.5.1.3]
    mail-iv:
      issuer: sub
      rules: cabf_smime_individual
      default_days: 365
      max_days: 825
      key_usage: [digital_signature, non_repudiation]
      extended_key_usage: [email_protection]
      subject_attributes: [CN, GN, SN, pseudonym, emailAddress, title, L, ST, C]
      san_types: [email]
      require_san: true
      crl_urls: [http://crl.example.org/sub.crl]
      ocsp_urls: [http://ocsp.example.org]
      ca_issuers_urls: [http://ca.example.org/sub.crt]
      policies: [2.23.140.1.5.4.3]
    mail-ov:
      issuer: sub
      rules: cabf_smime_organization
      default_days: 365
      max_days: 825
      key_usage: [digital_signature, key_encipherment, key_agreement]
      extended_key_usage: [email_protection]
      subject_attributes: [CN, O, OU, organizationIdentifier, emailAddress, L, ST, C]
      required_subject_attributes: [O, organizationIdentifier]
      san_types: [email]
      require_san: true
      crl_urls: [http://crl.example.org/sub.crl]
      ca_issuers_urls: [http://ca.example.org/sub.crt]
      policies: [2.23.140.1.5.2.3]
    mail-sv:
      issuer: sub
      rules: cabf_smime_sponsor
      default_days: 365
      max_days: 825
      key_usage: [digital_signature]
      extended_key_usage: [email_protection]
      subject_attributes: [CN, O, organizationIdentifier, GN, SN, pseudonym, emailAddress, title, C]
      required_subject_attributes: [O, organizationIdentifier]
      san_types: [email]
      require_san: true
      crl_urls: [http://crl.example.org/sub.crl]
      ca_issuers_urls: [http://ca.example.org/sub.crt]
      policies: [2.23.140.1.5.3.3]
";

#[test]
fn smime_certificates_pass_the_smime_linter_and_hostile_requests_are_refused() {
    let c = Ceremony::new("p256", SMIME_PROFILES);
    let d = c.dir().to_path_buf();
    let bench = Bench::start_with_env(LinkSpec::unthrottled(), &c.ca_yaml, c.env());
    let client = bench.client();
    write_chain(&client, &d);
    let alice = [("email", "alice@cacert.org")];
    let issued: Vec<(&str, &str, Subject)> = vec![
        ("mail-mv", "MAILBOX-STRICT", &[]),
        (
            "mail-mv",
            "MAILBOX-STRICT",
            &[
                ("CN", "alice@cacert.org"),
                ("emailAddress", "alice@cacert.org"),
            ],
        ),
        (
            "mail-iv",
            "INDIVIDUAL-STRICT",
            &[
                ("C", "DE"),
                ("L", "Berlin"),
                ("GN", "Alice"),
                ("SN", "Lee"),
                ("CN", "Alice Lee"),
            ],
        ),
        (
            "mail-iv",
            "INDIVIDUAL-STRICT",
            &[("pseudonym", "Lucky"), ("CN", "Lucky")],
        ),
        (
            "mail-ov",
            "ORGANIZATION-STRICT",
            &[
                ("C", "AU"),
                ("O", "CAcert Inc."),
                ("organizationIdentifier", "NTRAU-123456789"),
                ("CN", "CAcert Inc."),
            ],
        ),
        (
            "mail-ov",
            "ORGANIZATION-STRICT",
            &[
                ("O", "CAcert Inc."),
                ("organizationIdentifier", "LEIXG-529900T8BM49AURSDO55"),
                ("emailAddress", "alice@cacert.org"),
            ],
        ),
        (
            "mail-sv",
            "SPONSORED-STRICT",
            &[
                ("C", "DE"),
                ("O", "Example GmbH"),
                ("organizationIdentifier", "VATDE-123456789"),
                ("GN", "Alice"),
                ("SN", "Lee"),
                ("title", "Engineer"),
                ("CN", "Alice Lee"),
            ],
        ),
    ];
    for (key, key_args) in &KEYS {
        let csr = make_csr(&d, key, key_args);
        for (i, (profile, kind, subject)) in issued.iter().enumerate() {
            let id = format!("{profile}-{key}-{i}");
            let reply = sign(&client, &id, profile, &csr, subject, &alice, 365)
                .unwrap_or_else(|e| panic!("{id}: {e}"));
            let file = d.join(format!("{id}.der"));
            std::fs::write(&file, &reply.certificate).unwrap();
            let findings = pkilint(
                "lint_cabf_smime_cert",
                &["lint", "-d", "-s", "WARNING"],
                &file,
            );
            assert!(findings.is_empty(), "{id}: {findings:?}");
            let (_, _, err) = output(
                linter("lint_cabf_smime_cert")
                    .args(["lint", "-d", "-o"])
                    .arg(&file),
            );
            assert!(err.contains(kind), "{id}: detected as {err}");
            openssl_verify(&d, &id, &reply.certificate, &["-purpose", "smimesign"]);
        }
    }

    // Hostile requests, each refused before anything is signed.
    let csr = make_csr(&d, "hostile", KEYS[0].1);
    let cases: Vec<Hostile> = vec![
        (
            "o-under-mailbox",
            "mail-mv",
            vec![("O", "Example")],
            alice.to_vec(),
            365,
            Status::SUBJECT_NOT_ALLOWED,
        ),
        (
            "cn-another-mailbox",
            "mail-mv",
            vec![("CN", "bob@cacert.org")],
            alice.to_vec(),
            365,
            Status::LINT_FAILED,
        ),
        (
            "cn-a-name-under-mailbox",
            "mail-mv",
            vec![("CN", "Alice Lee")],
            alice.to_vec(),
            365,
            Status::LINT_FAILED,
        ),
        (
            "email-address-not-in-san",
            "mail-mv",
            vec![("emailAddress", "bob@cacert.org")],
            alice.to_vec(),
            365,
            Status::LINT_FAILED,
        ),
        (
            "individual-without-a-name",
            "mail-iv",
            vec![("C", "DE")],
            alice.to_vec(),
            365,
            Status::LINT_FAILED,
        ),
        (
            "pseudonym-and-name",
            "mail-iv",
            vec![("pseudonym", "Lucky"), ("GN", "Alice")],
            alice.to_vec(),
            365,
            Status::LINT_FAILED,
        ),
        (
            "cn-from-nowhere",
            "mail-iv",
            vec![("pseudonym", "Lucky"), ("CN", "Unlucky")],
            alice.to_vec(),
            365,
            Status::LINT_FAILED,
        ),
        (
            "mailbox-in-another-attribute",
            "mail-iv",
            vec![("GN", "Alice"), ("title", "bob@cacert.org")],
            alice.to_vec(),
            365,
            Status::LINT_FAILED,
        ),
        (
            "insignificant-name",
            "mail-iv",
            vec![("GN", "."), ("SN", "Lee")],
            alice.to_vec(),
            365,
            Status::LINT_FAILED,
        ),
        (
            "organization-identifier-syntax",
            "mail-ov",
            vec![
                ("O", "CAcert Inc."),
                ("organizationIdentifier", "ACN 123 456 789"),
            ],
            alice.to_vec(),
            365,
            Status::LINT_FAILED,
        ),
        (
            "organization-identifier-country",
            "mail-ov",
            vec![
                ("C", "AU"),
                ("O", "CAcert Inc."),
                ("organizationIdentifier", "NTRGB-123456"),
            ],
            alice.to_vec(),
            365,
            Status::LINT_FAILED,
        ),
        (
            "lei-check-digits",
            "mail-ov",
            vec![
                ("O", "CAcert Inc."),
                ("organizationIdentifier", "LEIXG-529900T8BM49AURSDO56"),
            ],
            alice.to_vec(),
            365,
            Status::LINT_FAILED,
        ),
        (
            "cn-not-the-organization",
            "mail-ov",
            vec![
                ("O", "CAcert Inc."),
                ("organizationIdentifier", "NTRAU-123456789"),
                ("CN", "Another Inc."),
            ],
            alice.to_vec(),
            365,
            Status::LINT_FAILED,
        ),
        (
            "sponsor-without-a-person",
            "mail-sv",
            vec![
                ("O", "Example GmbH"),
                ("organizationIdentifier", "VATDE-123456789"),
            ],
            alice.to_vec(),
            365,
            Status::LINT_FAILED,
        ),
        (
            "organization-without-identifier",
            "mail-ov",
            vec![("O", "CAcert Inc.")],
            alice.to_vec(),
            365,
            Status::SUBJECT_NOT_ALLOWED,
        ),
        (
            "dns-san",
            "mail-mv",
            vec![],
            vec![("email", "alice@cacert.org"), ("dns", "cacert.org")],
            365,
            Status::SAN_NOT_ALLOWED,
        ),
        (
            "longer-than-825-days",
            "mail-mv",
            vec![],
            alice.to_vec(),
            826,
            Status::VALIDITY_TOO_LONG,
        ),
    ];
    refuse_all(&client, &csr, cases);
    drop(client);

    // check-config refuses S/MIME profiles that could only issue what the
    // rules forbid.
    check_config_refuses(bench.daemon.config_path(), &[
        (
            "subject_attributes: [CN, emailAddress, serialNumber]",
            "subject_attributes: [CN, emailAddress, O]",
            "ca.profiles.mail-mv.subject_attributes",
        ),
        (
            "subject_attributes: [CN, GN, SN, pseudonym, emailAddress, title, L, ST, C]",
            "subject_attributes: [CN, emailAddress, C]",
            "ca.profiles.mail-iv.subject_attributes",
        ),
        (
            "extended_key_usage: [email_protection]",
            "extended_key_usage: [email_protection, client_auth]",
            "ca.profiles.mail-mv.extended_key_usage",
        ),
        (
            "key_usage: [digital_signature, non_repudiation]",
            "key_usage: [non_repudiation]",
            "ca.profiles.mail-iv.key_usage",
        ),
        (
            "key_usage: [digital_signature, key_encipherment, key_agreement]",
            "key_usage: [digital_signature, data_encipherment]",
            "ca.profiles.mail-mv.key_usage",
        ),
        (
            "san_types: [email]",
            "san_types: [email, dns]",
            "ca.profiles.mail-mv.san_types",
        ),
        (
            "policies: [2.23.140.1.5.1.3]",
            "policies: [2.23.140.1.5.1.2]",
            "ca.profiles.mail-mv.policies",
        ),
        (
            "policies: [2.23.140.1.5.1.3]",
            "policies: [2.23.140.1.5.1.3, 2.5.29.32.0]",
            "ca.profiles.mail-mv.policies",
        ),
        (
            "      rules: cabf_smime_mailbox\n",
            "",
            "ca.profiles.mail-mv.rules",
        ),
        (
            "crl_urls: [http://crl.example.org/sub.crl]",
            "crl_urls: [https://crl.example.org/sub.crl]",
            "ca.profiles.mail-mv.crl_urls",
        ),
        (
            "max_days: 825",
            "max_days: 826",
            "ca.profiles.mail-mv.max_days",
        ),
        ("required_subject_attributes: [O, organizationIdentifier]", "required_subject_attributes: [O]", "ca.profiles.mail-ov.required_subject_attributes"),
        ("subject_attributes: [CN, O, OU, organizationIdentifier, emailAddress, L, ST, C]", "subject_attributes: [CN, O, OU, organizationIdentifier, emailAddress, L, ST, C, GN]", "ca.profiles.mail-ov.subject_attributes"),
        ("subject_attributes: [CN, O, organizationIdentifier, GN, SN, pseudonym, emailAddress, title, C]", "subject_attributes: [CN, O, organizationIdentifier, emailAddress, title, C]", "ca.profiles.mail-sv.subject_attributes"),
    ]);
}

/// The profiles configs/signerd.yaml ships (the intermediate named `sub`
/// here): what each issues passes pkilint, the CA/B Forum linter for the
/// TLS server profile and RFC 5280's for the TLS client profile, and
/// `openssl verify -x509_strict` for its purpose.
#[test]
fn the_shipped_profiles_issue_what_the_linters_accept() {
    let shipped = include_str!("../configs/signerd.yaml");
    let profiles = &shipped[shipped.find("  profiles:\n").unwrap()..];
    let profiles = profiles.replace("issuer: class1", "issuer: sub");
    let c = Ceremony::new("p256", &profiles);
    let d = c.dir().to_path_buf();
    let bench = Bench::start_with_env(LinkSpec::unthrottled(), &c.ca_yaml, c.env());
    let client = bench.client();
    write_chain(&client, &d);
    // Profile, subject, SANs, openssl's purpose.
    type Case<'a> = (&'a str, Subject<'a>, Subject<'a>, &'a str);
    let cases: [Case; 2] = [
        (
            "server",
            &[("CN", "www.cacert.org")],
            &[("dns", "www.cacert.org"), ("ip", "8.8.8.8")],
            "sslserver",
        ),
        (
            "client",
            &[("CN", "Alice"), ("emailAddress", "alice@cacert.org")],
            &[("email", "alice@cacert.org")],
            "sslclient",
        ),
    ];
    for (profile, subject, sans, purpose) in cases {
        for (key, key_args) in KEYS {
            let id = format!("shipped-{profile}-{key}");
            let csr = make_csr(&d, &id, key_args);
            let reply = sign(&client, &id, profile, &csr, subject, sans, 90)
                .unwrap_or_else(|e| panic!("{id}: {e}"));
            let file = d.join(format!("{id}.der"));
            std::fs::write(&file, &reply.certificate).unwrap();
            // The linter for what the certificate is: a TLS server or an
            // e-mail certificate is judged by its Forum's rules.
            let ekus = extended_key_usages(&reply.certificate);
            let (tool, args): (&str, &[&str]) = if ekus.iter().any(|e| e == "1.3.6.1.5.5.7.3.4") {
                ("lint_cabf_smime_cert", &["lint", "-d", "-s", "WARNING"])
            } else if ekus.iter().any(|e| e == "1.3.6.1.5.5.7.3.1") {
                (
                    "lint_cabf_serverauth_cert",
                    &["lint", "-d", "-s", "WARNING"],
                )
            } else {
                ("lint_pkix_cert", &["lint", "-s", "WARNING"])
            };
            let findings = pkilint(tool, args, &file);
            let unexpected: Vec<_> = findings
                .iter()
                .filter(|(code, _)| !ACCEPTED.contains(&code.as_str()))
                .collect();
            assert!(unexpected.is_empty(), "{id}: {unexpected:?}");
            openssl_verify(&d, &id, &reply.certificate, &["-purpose", purpose]);
        }
    }
}

/// The extended key usage OIDs of a certificate.
fn extended_key_usages(der: &[u8]) -> Vec<String> {
    use der::Decode;
    let cert = x509_cert::Certificate::from_der(der).unwrap();
    cert.tbs_certificate()
        .extensions()
        .into_iter()
        .flatten()
        .filter(|e| e.extn_id.to_string() == "2.5.29.37")
        .flat_map(|e| {
            x509_cert::ext::pkix::ExtendedKeyUsage::from_der(e.extn_value.as_bytes())
                .unwrap()
                .0
        })
        .map(|oid| oid.to_string())
        .collect()
}
