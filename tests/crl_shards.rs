//! Partitioned CRLs end to end: an issuer configured with CRL shards puts
//! each certificate in a shard its serial carries and its CRL distribution
//! point names; each shard's CRL lists that shard's revocations with a
//! critical issuing distribution point byte for byte the certificates' CRL
//! distribution point, travels as a difference like the full CRL, passes
//! pkilint's BR CRL linter and `openssl verify -crl_check -extended_crl`
//! (which checks the CRL's scope); the shards are listed as the CCADB's
//! JSON array of CRL URLs. The full CRL stays available. check-config
//! refuses shard settings that would make a certificate name a CRL no shard
//! publishes.
#![allow(clippy::unwrap_used)] // helpers in test files: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use signer_client::{Calls, Client};
use signer_protocol::{calls, msg, Status};
use signer_testsupport::ca::{
    check_config_refuses, full_crl, make_csr, openssl, pkilint, signer_client, Ceremony,
    SERVER_PROFILE,
};
use signer_testsupport::{bin, output, runbook_block, Bench, LinkSpec};

const SHARDS: usize = 3;
const SHARD_URL: &str = "http://crl.example.org/sub/{shard}.crl";

/// A DV profile whose certificates name their shard's CRL (no `crl_urls`:
/// the issuer's shards give it), and a private one naming the full CRL.
const PROFILES: &str = "  profiles:
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
      ca_issuers_urls: [http://ca.example.org/sub.crt]
      policies: [2.23.140.1.2.1]
    server:
      issuer: sub
      default_days: 90
      max_days: 397
      key_usage: [digital_signature]
      extended_key_usage: [server_auth]
      subject_attributes: [CN]
      san_types: [dns]
      require_san: true
      crl_urls: [http://crl.example.org/sub.crl]
";

/// The ceremony's configuration with `sub` sharded and [`PROFILES`].
fn sharded(c: &mut Ceremony) -> String {
    c.with_crl_shards(SHARDS as u16, SHARD_URL);
    let at = c.ca_yaml.find("  profiles:").unwrap();
    format!("{}{PROFILES}", &c.ca_yaml[..at])
}

fn sign(client: &Client, d: &Path, id: &str, profile: &str) -> msg::SignX509Reply {
    let csr = make_csr(d, id, &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let host = format!("{id}.example.org");
    let reply: msg::SignX509Reply = client
        .request::<calls::SignX509>(&msg::SignX509 {
            request_id: id.into(),
            profile: profile.into(),
            csr,
            subject: Vec::new(),
            sans: vec![msg::SanEntry {
                kind: "dns".into(),
                value: host,
            }],
            validity_days: Some(90),
        })
        .unwrap_or_else(|e| panic!("{id}: {e}"));
    std::fs::write(
        d.join(format!("{id}.pem")),
        signer_x509::cert_pem(&reply.certificate),
    )
    .unwrap();
    reply
}

/// The URIs of a certificate's CRL distribution points.
fn cdp(der: &[u8]) -> Vec<String> {
    use der::Decode;
    let cert = x509_cert::Certificate::from_der(der).unwrap();
    let ext = cert
        .tbs_certificate()
        .extensions()
        .into_iter()
        .flatten()
        .find(|e| e.extn_id.to_string() == "2.5.29.31")
        .expect("a CRL distribution point");
    let dps =
        x509_cert::ext::pkix::CrlDistributionPoints::from_der(ext.extn_value.as_bytes()).unwrap();
    let mut uris = Vec::new();
    for dp in dps.0 {
        if let Some(x509_cert::ext::pkix::name::DistributionPointName::FullName(names)) =
            dp.distribution_point
        {
            for n in names {
                if let x509_cert::ext::pkix::name::GeneralName::UniformResourceIdentifier(u) = n {
                    uris.push(u.to_string());
                }
            }
        }
    }
    uris
}

fn revoke(client: &Client, serial: &[u8], reason: u8) {
    let _: msg::RevokeX509Reply = client
        .request::<calls::RevokeX509>(&msg::RevokeX509 {
            request_id: format!("revoke-{}", hex::encode(serial)),
            issuer: "sub".into(),
            serial: serial.to_vec(),
            reason,
            invalidity_date: None,
        })
        .unwrap();
}

fn shard_url(n: usize) -> String {
    SHARD_URL.replace("{shard}", &n.to_string())
}

#[test]
fn each_shard_has_its_own_crl_naming_it_and_the_full_crl_stays() {
    let mut c = Ceremony::new("p256", SERVER_PROFILE);
    let d = c.dir().to_path_buf();
    let yaml = sharded(&mut c);
    let bench = Bench::start_with_env(LinkSpec::unthrottled(), &yaml, c.env());
    let client = bench.client();
    let device = bench.client_device();
    let cli = |args: &[&str]| {
        let (code, out, err) = signer_client(&device, &d, args);
        assert_eq!(code, Some(0), "{args:?}: {out}{err}");
        out
    };

    // The shards, as ca_certs lists them and as the CCADB asks for them.
    let cas: msg::CaCertsReply = client.request::<calls::CaCerts>(&msg::Empty {}).unwrap();
    let urls: Vec<String> = (0..SHARDS).map(shard_url).collect();
    let sub = cas.cas.iter().find(|c| c.name == "sub").unwrap();
    assert_eq!(sub.crl_shards.as_ref(), Some(&urls));
    let root = cas.cas.iter().find(|c| c.name == "root").unwrap();
    assert_eq!(root.crl_shards, None);
    let mut chain = Vec::new();
    for ca in &cas.cas {
        chain.extend(signer_x509::cert_pem(&ca.certificate).into_bytes());
    }
    std::fs::write(d.join("chain.pem"), &chain).unwrap();

    // Certificates: each in the shard its serial carries, naming that
    // shard's CRL alone; every shard gets some.
    let mut by_shard: BTreeMap<u8, Vec<msg::SignX509Reply>> = BTreeMap::new();
    let mut i = 0;
    while by_shard.len() < SHARDS || by_shard.values().any(|v| v.len() < 2) {
        assert!(i < 200, "shards are chosen at random: {by_shard:?}");
        let reply = sign(&client, &d, &format!("cert{i}"), "web-dv");
        i += 1;
        assert_eq!(reply.serial.len(), 17);
        let shard = signer_x509::shard_of(&reply.serial).unwrap();
        assert!(usize::from(shard) < SHARDS);
        assert_eq!(cdp(&reply.certificate), [shard_url(usize::from(shard))]);
        by_shard.entry(shard).or_default().push(reply);
    }
    let first = &by_shard[&0][0];
    std::fs::write(d.join("leaf.der"), &first.certificate).unwrap();
    let findings = pkilint(
        "lint_cabf_serverauth_cert",
        &["lint", "-d", "-s", "WARNING"],
        &d.join("leaf.der"),
    );
    assert!(findings.is_empty(), "{findings:?}");
    // A profile naming the full CRL: an ordinary serial, the full CRL's URL.
    let plain = sign(&client, &d, "plain", "server");
    assert_eq!(plain.serial.len(), 17);
    assert_eq!(cdp(&plain.certificate), ["http://crl.example.org/sub.crl"]);

    // Revoke the first certificate of every shard (and the plain one).
    for certs in by_shard.values() {
        revoke(&client, &certs[0].serial, 1);
    }
    revoke(&client, &plain.serial, 4);
    drop(client);

    // docs/operations.md's commands, as written.
    std::fs::create_dir_all(d.join("www/crl/sub")).unwrap();
    let ran: Vec<String> = runbook_block(include_str!("../docs/operations.md"), "crl-shards")
        .into_iter()
        .map(|line| {
            let line = line
                .replace("/dev/ttyUSB0", device.to_str().unwrap())
                .replace("/var/www/", &format!("{}/www/", d.display()));
            let words: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(words[0], "signer-client", "{line}");
            let (code, out, err) = output(Command::new(bin("signer-client")).args(&words[1..]));
            assert_eq!(code, Some(0), "{line}: {out}{err}");
            out
        })
        .collect();
    let listed: Vec<String> = serde_json::from_str(&ran[0]).unwrap();
    assert_eq!(listed, urls);
    let (header, _) =
        signer_x509::crl::parse(&std::fs::read(d.join("www/crl/sub/0.crl")).unwrap()).unwrap();
    assert_eq!(header.shard_url, Some(shard_url(0)));
    let (code, out, err) = signer_client(&device, &d, &["crl-urls", "--issuer", "root"]);
    assert!(
        code != Some(0) && format!("{out}{err}").contains("no CRL shards"),
        "{out}{err}"
    );

    for (&shard, certs) in &by_shard {
        let file = format!("shard{shard}.crl");
        let text = cli(&[
            "crl",
            "--issuer",
            "sub",
            "--shard",
            &shard.to_string(),
            "--out",
            &file,
        ]);
        assert!(text.contains("via full"), "{text}");
        let der = std::fs::read(d.join(&file)).unwrap();
        let (header, entries) = signer_x509::crl::parse(&der).unwrap();
        assert_eq!(
            header.shard_url.as_deref(),
            Some(shard_url(usize::from(shard)).as_str())
        );
        let mut listed: Vec<Vec<u8>> = entries.into_iter().map(|e| e.serial).collect();
        let mut expected = vec![certs[0].serial.clone()];
        if signer_x509::shard_of(&plain.serial) == Some(shard) {
            expected.push(plain.serial.clone());
        }
        listed.sort();
        expected.sort();
        assert_eq!(listed, expected, "shard {shard}");
        // The issuing distribution point's name is the certificates' CRL
        // distribution point's, byte for byte.
        let name = {
            let mut v = vec![0x86, shard_url(usize::from(shard)).len() as u8];
            v.extend(shard_url(usize::from(shard)).bytes());
            let full = [vec![0xa0, v.len() as u8], v].concat();
            [vec![0xa0, full.len() as u8], full].concat()
        };
        assert!(der.windows(name.len()).any(|w| w == name));
        assert!(certs[0].certificate.windows(name.len()).any(|w| w == name));
        for profile in ["BR", "PKIX"] {
            let findings = pkilint(
                "lint_crl",
                &["lint", "-t", "CRL", "-p", profile, "-s", "WARNING"],
                &d.join(&file),
            );
            assert!(findings.is_empty(), "shard {shard} {profile}: {findings:?}");
        }
        // openssl checks the CRL's scope against the certificate's CRL
        // distribution point: revoked in its shard, good in its shard, and
        // another shard's CRL does not answer for it.
        let (ok, text) = openssl(
            &d,
            &[
                "crl",
                "-inform",
                "DER",
                "-in",
                &file,
                "-out",
                &format!("{file}.pem"),
            ],
        );
        assert!(ok, "{text}");
        let verify = |leaf: &str, crl: &str| {
            openssl(
                &d,
                &[
                    "verify",
                    "-crl_check",
                    "-extended_crl",
                    "-CAfile",
                    "chain.pem",
                    "-CRLfile",
                    crl,
                    leaf,
                ],
            )
        };
        let pem = |r: &msg::SignX509Reply| {
            let f = format!("{}.leaf.pem", hex::encode(&r.serial));
            std::fs::write(d.join(&f), signer_x509::cert_pem(&r.certificate)).unwrap();
            f
        };
        let (ok, text) = verify(&pem(&certs[0]), &format!("{file}.pem"));
        assert!(!ok && text.contains("revoked"), "shard {shard}: {text}");
        let (ok, text) = verify(&pem(&certs[1]), &format!("{file}.pem"));
        assert!(ok, "shard {shard}: {text}");
        let other = &by_shard[&((shard + 1) % SHARDS as u8)][1];
        let (ok, text) = verify(&pem(other), &format!("{file}.pem"));
        assert!(!ok && text.contains("different CRL scope"), "{text}");
    }

    // The full CRL: every revocation, no issuing distribution point.
    let client = bench.client();
    let full: msg::FetchCrlReply = client.request::<calls::FetchCrl>(&full_crl("sub")).unwrap();
    let (header, entries) = signer_x509::crl::parse(&full.crl.unwrap()).unwrap();
    assert_eq!(header.shard_url, None);
    assert_eq!(entries.len(), SHARDS + 1);

    // A new revocation in shard 0: its CRL travels as a difference and
    // rebuilds to the signer's bytes (the CLI checks the digest); an
    // unchanged shard is not sent again.
    revoke(&client, &by_shard[&0][1].serial, 3);
    drop(client);
    let fetch_shard0 = || {
        cli(&[
            "crl",
            "--issuer",
            "sub",
            "--shard",
            "0",
            "--out",
            "shard0.crl",
        ])
    };
    let text = fetch_shard0();
    assert!(
        text.contains("via difference")
            && text.contains(&format!(
                "{} entries",
                2 + usize::from(signer_x509::shard_of(&plain.serial) == Some(0))
            )),
        "{text}"
    );
    let rebuilt = std::fs::read(d.join("shard0.crl")).unwrap();
    let client = bench.client();
    let whole: msg::FetchCrlReply = client
        .request::<calls::FetchCrl>(&msg::FetchCrl {
            shard: Some(0),
            ..full_crl("sub")
        })
        .unwrap();
    assert_eq!(whole.crl.as_deref(), Some(rebuilt.as_slice()));
    drop(client);
    let text = fetch_shard0();
    assert!(text.contains("unchanged"), "{text}");
    let client = bench.client();
    // A shard's CRL number is not another's: naming shard 1's copy for
    // shard 2 is unknown_crl.
    let one = std::fs::read(d.join("shard1.crl")).unwrap();
    let misnamed = client.request::<calls::FetchCrl>(&msg::FetchCrl {
        issuer: "sub".into(),
        have_number: signer_client::verify::crl_number(&one),
        have_sha256: Some(<sha2::Sha256 as sha2::Digest>::digest(&one).to_vec()),
        shard: Some(2),
    });
    assert!(
        matches!(&misnamed, Err(e) if e.status() == Some(Status::UNKNOWN_CRL)),
        "{misnamed:?}"
    );

    // Shards that do not exist.
    for (issuer, shard) in [("sub", SHARDS as u8), ("sub", 255), ("root", 0)] {
        let refused = client.request::<calls::FetchCrl>(&msg::FetchCrl {
            shard: Some(shard),
            ..full_crl(issuer)
        });
        assert!(
            matches!(&refused, Err(e) if e.status() == Some(Status::UNKNOWN_SHARD)),
            "{issuer} {shard}: {refused:?}"
        );
    }
    drop(client);

    // check-config refuses shard settings that cannot be published.
    let shards = format!("crl_shards: {{count: {SHARDS}, url: \"{SHARD_URL}\"}}");
    check_config_refuses(bench.daemon.config_path(), &[
        (shards.as_str(), "crl_shards: {count: 0, url: \"http://crl.example.org/sub/{shard}.crl\"}", "ca.cas[1].crl_shards.count"),
        (shards.as_str(), "crl_shards: {count: 257, url: \"http://crl.example.org/sub/{shard}.crl\"}", "ca.cas[1].crl_shards.count"),
        (shards.as_str(), "crl_shards: {count: 3, url: \"http://crl.example.org/sub.crl\"}", "ca.cas[1].crl_shards.url"),
        (shards.as_str(), "crl_shards: {count: 3, url: \"https://crl.example.org/{shard}.crl\"}", "ca.cas[1].crl_shards.url"),
        (shards.as_str(), "crl_shards: {count: 3, url: \"http://crl.example.org/{shard}/{shard}.crl\"}", "ca.cas[1].crl_shards.url"),
        ("crl_urls: [http://crl.example.org/sub.crl]", "crl_urls: [\"http://crl.example.org/other/{shard}.crl\"]", "ca.profiles.server.crl_urls"),
        ("crl_urls: [http://crl.example.org/sub.crl]", "crl_urls: [\"http://crl.example.org/sub/{shard}.crl\", http://crl.example.org/sub.crl]", "ca.profiles.server.crl_urls"),
        ("    server:\n      issuer: sub\n", "    server:\n      issuer: sub\n      ca_path_len: 0\n", "ca.profiles.server.ca_path_len"),
        // A shard's URL under an issuer without shards.
        (
            "      issuer: sub\n      default_days: 90\n      max_days: 397\n      key_usage: [digital_signature]\n      extended_key_usage: [server_auth]\n      subject_attributes: [CN]\n      san_types: [dns]\n      require_san: true\n      crl_urls: [http://crl.example.org/sub.crl]",
            "      issuer: root\n      default_days: 90\n      max_days: 397\n      key_usage: [digital_signature]\n      extended_key_usage: [server_auth]\n      subject_attributes: [CN]\n      san_types: [dns]\n      require_san: true\n      crl_urls: [\"http://crl.example.org/root/{shard}.crl\"]",
            "ca.profiles.server.crl_urls",
        ),
        ("{name: root, key: root,", "{name: \"root#1\", key: root,", "ca.cas[0].name"),
    ]);
}

/// Twins put every revocation on the shard its serial names, whichever
/// twin issued or revoked it: once they agree, each shard's CRL lists the
/// same certificates on both.
#[test]
fn twins_list_each_revocation_on_the_same_shard() {
    let mut c = Ceremony::new_as("signer-a", "p256", SERVER_PROFILE);
    c.with_crl_shards(SHARDS as u16, SHARD_URL);
    let t = signer_testsupport::twins::Twins::with_ceremony(c);
    let d = t.ceremony.dir().to_path_buf();
    let (a, b) = (t.a.client(), t.b.client());
    let on_a: Vec<_> = (0..6)
        .map(|i| sign(&a, &d, &format!("ta{i}"), "server"))
        .collect();
    let on_b: Vec<_> = (0..6)
        .map(|i| sign(&b, &d, &format!("tb{i}"), "server"))
        .collect();
    t.wait_in_sync(&a, &b, 12, std::time::Duration::from_secs(60))
        .unwrap();
    // Each twin revokes some of its own and some of the other's.
    for r in on_a.iter().take(2).chain(on_b.iter().skip(4)) {
        revoke(&a, &r.serial, 1);
    }
    for r in on_b.iter().take(2).chain(on_a.iter().skip(4)) {
        revoke(&b, &r.serial, 4);
    }
    // Revoked: the first two and last two of each twin's six.
    let revoked: Vec<&[u8]> = on_a
        .iter()
        .chain(&on_b)
        .enumerate()
        .filter(|(i, _)| !matches!(i % 6, 2 | 3))
        .map(|(_, r)| r.serial.as_slice())
        .collect();
    // Serials listed by one shard's CRL on one twin.
    type Serials = Vec<Vec<u8>>;
    let listed = |client: &Client, shard: u8| -> Serials {
        let reply: msg::FetchCrlReply = client
            .request::<calls::FetchCrl>(&msg::FetchCrl {
                shard: Some(shard),
                ..full_crl("sub")
            })
            .unwrap();
        let (header, entries) = signer_x509::crl::parse(&reply.crl.unwrap()).unwrap();
        assert_eq!(header.shard_url, Some(shard_url(usize::from(shard))));
        let mut serials: Serials = entries.into_iter().map(|e| e.serial).collect();
        serials.sort();
        serials
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let shards: Vec<(Serials, Serials)> = (0..SHARDS as u8)
            .map(|n| (listed(&a, n), listed(&b, n)))
            .collect();
        let agreed = shards.iter().all(|(x, y)| x == y)
            && shards.iter().map(|(x, _)| x.len()).sum::<usize>() == revoked.len();
        if agreed {
            for (n, (x, _)) in shards.iter().enumerate() {
                assert!(x.iter().all(|s| signer_x509::shard_of(s) == Some(n as u8)));
            }
            let mut all: Vec<Vec<u8>> = shards.into_iter().flat_map(|(x, _)| x).collect();
            all.sort();
            let mut want: Vec<Vec<u8>> = revoked.iter().map(|s| s.to_vec()).collect();
            want.sort();
            assert_eq!(all, want);
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "shards differ: {shards:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
