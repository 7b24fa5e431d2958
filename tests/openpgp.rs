//! OpenPGP certification end to end, the way an operator and a signer-client
//! author use it: `signerd setup openpgp` writes the CA's certificate from an
//! HSM key, `signerd check-config` checks it, and `signer-client openpgp`
//! certifies keys made by GnuPG over a real pty. GnuPG and Sequoia check
//! the results; retries replay; refusals record nothing.

#![allow(clippy::unwrap_used)] // helpers in test files: a failed unwrap is a failed test

use std::time::Duration;

use signer_repository::Repository;
use signer_testsupport::ca::{signer_client, Ceremony, SERVER_PROFILE};
use signer_testsupport::gpg::{sequoia, Gpg};
use signer_testsupport::{Bench, LinkSpec};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("JSON from signer-client: {e}: {text}"))
}

#[test]
fn certify_gpg_keys_over_the_link_and_check_with_gpg_and_sq() {
    let mut c = Ceremony::new("p256", SERVER_PROFILE);
    let d = c.dir().to_path_buf();
    let out = c.add_openpgp();
    assert!(out.contains("wrote OpenPGP CA certificate"), "{out}");
    let ca_yaml = c.ca_yaml.clone();
    assert!(ca_yaml.contains("name: openpgp,"));
    let (ok, text) = c.signerd(&["setup", "openpgp", "--config", "setup.yaml"]);
    assert!(!ok && text.contains("--force"), "{text}");
    let checked = c.setup(&["check-config", "--config", "setup.yaml"]);
    assert!(checked.contains("token openpgp"), "{checked}");

    let mut bench = Bench::start_with_env(LinkSpec::unthrottled(), &ca_yaml, c.env());
    let dev = bench.client_device();
    let client = |args: &[&str]| signer_client(&dev, &d, args);

    // The CA certificate as the web application fetches it.
    let (code, out, err) = client(&["--json", "openpgp", "ca-cert", "--out", "fetched-ca.asc"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let ca_fpr = json(&out)["fingerprint"].as_str().unwrap().to_string();
    let written = std::fs::read_to_string(d.join("openpgp-ca.asc")).unwrap();
    let fetched = std::fs::read_to_string(d.join("fetched-ca.asc")).unwrap();
    assert!(written.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"));
    assert!(fetched.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"));
    assert!(out.contains(&ca_fpr) && ca_fpr.len() == 40, "{out}");

    // Users' keys made by GnuPG.
    let users = Gpg::new();
    let alice = users.alice();
    let bob = users.gen_key("Bob <bob@example.org>", "ed25519");
    std::fs::write(
        d.join("alice.asc"),
        users.export_with(&["--armor", "--export", &alice]),
    )
    .unwrap();
    std::fs::write(d.join("bob.pgp"), users.export(&bob)).unwrap();
    std::fs::write(
        d.join("bob-secret.asc"),
        users.export_with(&["--armor", "--export-secret-keys", &bob]),
    )
    .unwrap();
    std::fs::write(d.join("not-a-key.txt"), b"hello").unwrap();

    let certify = |key: &str, uids: &[&str], id: &str, extra: &[&str]| {
        let mut args = vec![
            "--json",
            "openpgp",
            "certify",
            "--key",
            key,
            "--request-id",
            id,
        ];
        for uid in uids {
            args.extend_from_slice(&["--user-id", uid]);
        }
        args.extend_from_slice(extra);
        client(&args)
    };
    let alice_uids = [
        "Alice <alice@example.org>",
        "Alice Work <alice@work.example>",
    ];
    let (code, out, err) = certify(
        "alice.asc",
        &alice_uids,
        "pgp-alice",
        &["--days", "30", "--armor", "--out", "alice-certified.asc"],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let reply = json(&out);
    assert_eq!(reply["fingerprint"], alice.as_str());
    assert_eq!(reply["ca_fingerprint"], ca_fpr.as_str());
    assert_eq!(reply["replayed"], false);
    let (code, out, err) = certify(
        "bob.pgp",
        &["Bob <bob@example.org>"],
        "pgp-bob",
        &["--out", "bob-certified.pgp"],
    );
    assert_eq!(code, Some(0), "{out}{err}");

    // GnuPG: every CA certification is good, casual (0x12) as configured;
    // the revoked user ID got none.
    let checker = Gpg::new();
    checker.import("ca.asc", &std::fs::read(d.join("fetched-ca.asc")).unwrap());
    checker.import(
        "alice.asc",
        &std::fs::read(d.join("alice-certified.asc")).unwrap(),
    );
    checker.import(
        "bob.pgp",
        &std::fs::read(d.join("bob-certified.pgp")).unwrap(),
    );
    let ca_id = &ca_fpr[24..];
    let sigs = checker.check_sigs(&alice);
    for uid in alice_uids {
        assert!(
            sigs.iter()
                .any(|(v, id, class, u)| *v == '!' && id == ca_id && class == "12x" && u == uid),
            "good CA certification on {uid}: {sigs:?}"
        );
    }
    assert!(!sigs
        .iter()
        .any(|(_, id, _, u)| id == ca_id && u.contains("alice@old")));
    let sigs = checker.check_sigs(&bob);
    assert!(
        sigs.iter().any(|(v, id, _, _)| *v == '!' && id == ca_id),
        "{sigs:?}"
    );
    // Sequoia: trusting the CA as root authenticates the bindings.
    let ring = checker.file(
        "ring.pgp",
        &[
            std::fs::read(d.join("fetched-ca.asc")).unwrap(),
            b"\n".to_vec(),
        ]
        .concat(),
    );
    for (fpr, uid, file) in [
        (&alice, alice_uids[0], "alice-certified.asc"),
        (&alice, alice_uids[1], "alice-certified.asc"),
        (&bob, "Bob <bob@example.org>", "bob-certified.pgp"),
    ] {
        let (ok, out, err) = sequoia(
            "sq-wot",
            &[
                "--keyring",
                ring.to_str().unwrap(),
                "--keyring",
                d.join(file).to_str().unwrap(),
                "--trust-root",
                &ca_fpr,
                "authenticate",
                uid,
                fpr,
            ],
        );
        assert!(ok, "sq-wot authenticates {uid}: {out}{err}");
    }

    // A retry (same request: the same expiry) replays the same
    // certifications, byte for byte.
    let first = std::fs::read(d.join("alice-certified.asc")).unwrap();
    let expires = reply["expires_at"].as_i64().unwrap().to_string();
    let (code, out, err) = certify(
        "alice.asc",
        &alice_uids,
        "pgp-alice",
        &[
            "--expires-at",
            &expires,
            "--armor",
            "--out",
            "alice-again.asc",
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(json(&out)["replayed"], true);
    assert_eq!(std::fs::read(d.join("alice-again.asc")).unwrap(), first);
    // The same request id for something else is refused.
    let (code, out, _) = certify(
        "alice.asc",
        &[alice_uids[0]],
        "pgp-alice",
        &["--expires-at", &expires],
    );
    assert_eq!(code, Some(1));
    assert_eq!(json(&out)["status"], "request_id_conflict");

    // Refusals, each with its own status.
    for (key, uid, extra, status) in [
        (
            "alice.asc",
            "Alice Old <alice@old.example>",
            &[][..],
            "user_id_revoked",
        ),
        (
            "alice.asc",
            "Mallory <m@example.org>",
            &[][..],
            "user_id_not_found",
        ),
        (
            "bob-secret.asc",
            "Bob <bob@example.org>",
            &[][..],
            "openpgp_secret_key",
        ),
        (
            "not-a-key.txt",
            "Bob <bob@example.org>",
            &[][..],
            "malformed_openpgp_key",
        ),
        (
            "bob.pgp",
            "Bob <bob@example.org>",
            &["--days", "500"][..],
            "invalid_expiry",
        ),
    ] {
        let id = format!("refused-{status}");
        let (code, out, err) = certify(key, &[uid], &id, extra);
        assert_eq!(code, Some(1), "{status}: {out}{err}");
        assert_eq!(json(&out)["status"], status, "{out}");
    }
    // No user ID at all (the CLI cannot send that; a library caller can).
    {
        use signer_client::Calls;
        use signer_protocol::{calls, msg, Status};
        let link = bench.client();
        let empty = link.request::<calls::CertifyOpenpgp>(&msg::CertifyOpenpgp {
            request_id: "refused-empty".into(),
            key: std::fs::read(d.join("bob.pgp")).unwrap(),
            user_ids: Vec::new(),
            expires_at: expires.parse().unwrap(),
        });
        assert!(
            matches!(&empty, Err(e) if e.status() == Some(Status::USER_ID_NOT_FOUND)),
            "{empty:?}"
        );
    }
    let health = client(&["--json", "health"]);
    assert!(health.1.contains("\"openpgp\""), "{}", health.1);

    // The repository holds exactly the two certifications, and the audit log
    // every request.
    bench.daemon.signal("TERM");
    assert_eq!(bench.daemon.wait(Duration::from_secs(20)), Some(0));
    let yaml = std::fs::read_to_string(d.join("setup.yaml")).unwrap();
    let config =
        signer_server::Config::<signer_ca::CaConfig>::parse(&yaml, &d.join("setup.yaml")).unwrap();
    let ca = config.ca.as_ref().unwrap();
    let repo = Repository::open(
        &d.join("repository.redb"),
        &signer_ca::expected_identity(ca, "test-signer").unwrap(),
        &signer_repository::OpenOptions::default(),
    )
    .unwrap();
    assert_eq!(repo.certification_count().unwrap(), 2);
    let record = repo.find_certification("pgp-alice").unwrap().unwrap();
    assert_eq!(record.fingerprint, alice);
    assert_eq!(record.certifications.len(), 2);
    assert!(repo
        .find_certification("refused-user_id_revoked")
        .unwrap()
        .is_none());
    repo.close();
    drop(repo);
    let (ok, text) = c.signerd(&[
        "audit",
        "show",
        "--config",
        "setup.yaml",
        "--request-id",
        "refused-user_id_revoked",
    ]);
    assert!(ok && text.contains("user_id_revoked"), "{text}");
}
