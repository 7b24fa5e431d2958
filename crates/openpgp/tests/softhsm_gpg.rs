//! Certification with CA keys in a real SoftHSM2 token, checked by GnuPG
//! and Sequoia: users' keys made by gpg (RSA and Ed25519, several user IDs,
//! a revoked one), the CA certificate's stable fingerprint, and every
//! refusal. One test: SoftHSM2 reads its configuration once per process.

#![allow(clippy::unwrap_used)] // helpers in test files: a failed unwrap is a failed test

use signer_hsm::{
    Hash, KeyGenerator, KeyKind, KeySpec, PinSource, Pkcs11Backend, TokenConfig, TokenSelector,
};
use signer_openpgp::{
    ca_certificate, certify, inspect, public_key_packet, verify_certified, CaCertificate,
    HsmSigner, PgpError, Policy,
};
use signer_testsupport::gpg::{sequoia, Gpg};
use signer_testsupport::{SoftHsm, SOFTHSM_MODULE};

/// 2026-01-01T00:00:00Z: the CA key's fixed creation time.
const CREATED: u32 = 1_767_225_600;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn certify_with_softhsm_keys_and_check_with_gpg_and_sq() {
    let hsm = SoftHsm::new("pgp-test");
    std::env::set_var("SOFTHSM2_CONF", &hsm.conf);
    let token = TokenConfig {
        module: SOFTHSM_MODULE.into(),
        token: TokenSelector::Label(hsm.label.clone()),
        pin: PinSource::File(hsm.pin_file()),
    };
    let admin = Pkcs11Backend::open(token.clone(), Vec::new(), 1).unwrap();
    admin
        .generate(KeyKind::Rsa { bits: 3072 }, "ca-rsa")
        .unwrap();
    admin.generate(KeyKind::EcP256, "ca-ec").unwrap();
    let spec = |name: &str| KeySpec {
        name: name.into(),
        label: Some(name.into()),
        id: None,
    };
    let backend = Pkcs11Backend::open(token, vec![spec("ca-rsa"), spec("ca-ec")], 1).unwrap();
    let policy = Policy::default();

    // The users: an RSA key with three user IDs, one of them revoked, and an Ed25519 key.
    let users = Gpg::new();
    let alice = users.alice();
    let bob = users.gen_key("Bob <bob@example.org>", "ed25519");
    let alice_key = users.export(&alice);
    let alice_armored = users.export_with(&["--armor", "--export", &alice]);
    let bob_key = users.export(&bob);

    for (key_name, kind) in [
        ("ca-rsa", KeyKind::Rsa { bits: 3072 }),
        ("ca-ec", KeyKind::EcP256),
    ] {
        // The CA certificate: same key and time, same fingerprint.
        let public = signer_hsm::SigningBackend::public_key(&backend, key_name).unwrap();
        let packet = public_key_packet(&public, CREATED).unwrap();
        let again = public_key_packet(&public, CREATED).unwrap();
        assert_eq!(
            pgp::types::KeyDetails::fingerprint(&packet),
            pgp::types::KeyDetails::fingerprint(&again)
        );
        let signer = HsmSigner::new(&backend, key_name, &packet, kind, Hash::Sha256);
        let cert = ca_certificate(&signer, "Test Signing Authority <sign@example.org>").unwrap();
        let armored =
            pgp::composed::SignedPublicKey::to_armored_bytes(&cert, Default::default()).unwrap();
        let ca = CaCertificate::load(&armored, packet.clone()).unwrap();
        let ca_fpr = ca.fingerprint();
        // A different creation time is a different key: refused.
        let other = public_key_packet(&public, CREATED + 1).unwrap();
        assert!(matches!(
            CaCertificate::load(&armored, other),
            Err(PgpError::CaKey(_))
        ));

        let checker = Gpg::new();
        checker.import("ca.asc", &armored);
        let ca_sigs = checker.check_sigs(&ca_fpr);
        assert_eq!(ca_sigs.len(), 1, "{ca_sigs:?}");
        assert_eq!(ca_sigs[0].0, '!', "CA self-signature good: {ca_sigs:?}");

        // Alice: two valid user IDs certified, from armored input.
        let expires = now() + 30 * 86_400;
        let user = inspect(&alice_armored, &policy).unwrap();
        assert_eq!(user.fingerprint, alice);
        let wanted = vec![
            "Alice <alice@example.org>".to_string(),
            "Alice Work <alice@work.example>".to_string(),
        ];
        let done = certify(user, &wanted, now(), expires, &policy, &signer).unwrap();
        assert_eq!(done.certifications.len(), 2);
        checker.import("alice.pgp", &done.key);
        let sigs = checker.check_sigs(&alice);
        let ca_id = &ca_fpr[24..];
        for uid in &wanted {
            assert!(
                sigs.iter().any(|(v, id, class, u)| *v == '!'
                    && id == ca_id
                    && class == "10x"
                    && u == uid),
                "gpg shows a good generic certification by the CA on {uid}: {sigs:?}"
            );
        }
        assert!(
            !sigs
                .iter()
                .any(|(_, id, _, u)| id == ca_id && u.contains("alice@old")),
            "the revoked user ID is not certified: {sigs:?}"
        );
        // Sequoia reads the result and, trusting the CA as root, authenticates
        // Alice's user IDs through its certifications.
        let (ok, out, err) = sequoia(
            "sq",
            &[
                "inspect",
                "--certifications",
                checker.file("a.pgp", &done.key).to_str().unwrap(),
            ],
        );
        assert!(ok && out.contains(&ca_fpr[24..]), "sq inspect: {out}{err}");
        let ring = checker.file(
            "ring.pgp",
            &[ca.binary().unwrap(), done.key.clone()].concat(),
        );
        let ring = ring.to_str().unwrap();
        for uid in &wanted {
            let (ok, out, err) = sequoia(
                "sq-wot",
                &[
                    "--keyring",
                    ring,
                    "--trust-root",
                    &ca_fpr,
                    "authenticate",
                    uid,
                    &alice,
                ],
            );
            assert!(ok, "sq wot authenticates {uid}: {out}{err}");
        }

        // A tampered certification is reported bad by gpg.
        let (_, sig_packet) = &done.certifications[0];
        let mut tampered = done.key.clone();
        let at = find(&tampered, sig_packet).unwrap() + sig_packet.len() - 3;
        tampered[at] ^= 0x01;
        // The client's check accepts the answer and refuses it tampered.
        verify_certified(&done.key, &alice, &armored, &done.certifications).unwrap();
        assert!(verify_certified(&tampered, &alice, &armored, &done.certifications).is_err());
        assert!(verify_certified(&done.key, &bob, &armored, &done.certifications).is_err());
        let fresh = Gpg::new();
        fresh.import("ca.asc", &armored);
        fresh.run(&["--import", fresh.file("t.pgp", &tampered).to_str().unwrap()]);
        let sigs = fresh.check_sigs(&alice);
        assert!(
            sigs.iter().any(|(v, id, _, _)| *v == '-' && id == ca_id),
            "gpg reports the tampered certification bad: {sigs:?}"
        );

        // Bob: Ed25519, binary input.
        let done = certify(
            inspect(&bob_key, &policy).unwrap(),
            &["Bob <bob@example.org>".to_string()],
            now(),
            expires,
            &policy,
            &signer,
        )
        .unwrap();
        checker.import("bob.pgp", &done.key);
        let sigs = checker.check_sigs(&bob);
        assert!(
            sigs.iter().any(|(v, id, _, _)| *v == '!' && id == ca_id),
            "{sigs:?}"
        );
    }

    // Refusals: each its own error, before any signature is made.
    let public = signer_hsm::SigningBackend::public_key(&backend, "ca-rsa").unwrap();
    let packet = public_key_packet(&public, CREATED).unwrap();
    let signer = HsmSigner::new(
        &backend,
        "ca-rsa",
        &packet,
        KeyKind::Rsa { bits: 3072 },
        Hash::Sha256,
    );
    let expires = now() + 86_400;
    let try_certify = |key: &[u8], uid: &str| {
        inspect(key, &policy)
            .and_then(|u| certify(u, &[uid.to_string()], now(), expires, &policy, &signer))
    };
    assert!(matches!(
        try_certify(b"hello, not a key", "x"),
        Err(PgpError::Malformed(_))
    ));
    assert!(matches!(
        try_certify(&[alice_key.clone(), bob_key.clone()].concat(), "x"),
        Err(PgpError::Malformed(_))
    ));
    // The same two keys ASCII-armored, back to back: refused as well (the
    // first must not be certified with the second ignored), and so is text
    // after one armored key.
    let armored_alice = alice_armored.clone();
    let armored_bob = users.export_with(&["--armor", "--export", &bob]);
    let uid = "Alice <alice@example.org>";
    assert!(
        try_certify(&armored_alice, uid).is_ok(),
        "one armored key is fine"
    );
    for input in [
        [armored_alice.clone(), armored_bob.clone()].concat(),
        [armored_alice.clone(), b"trailing text\n".to_vec()].concat(),
    ] {
        assert!(
            matches!(try_certify(&input, uid), Err(PgpError::Malformed(_))),
            "{}",
            String::from_utf8_lossy(&input)
        );
    }
    let secret = users.export_with(&["--export-secret-keys", &bob]);
    assert_eq!(
        try_certify(&secret, "Bob <bob@example.org>"),
        Err(PgpError::SecretKey)
    );
    let secret_armored = users.export_with(&["--armor", "--export-secret-keys", &bob]);
    assert_eq!(
        try_certify(&secret_armored, "Bob <bob@example.org>"),
        Err(PgpError::SecretKey)
    );
    assert!(matches!(
        try_certify(&alice_key, "Alice Old <alice@old.example>"),
        Err(PgpError::UserIdRevoked(_))
    ));
    assert!(matches!(
        try_certify(&alice_key, "Mallory <mallory@example.org>"),
        Err(PgpError::UserIdNotFound(_))
    ));
    // A user ID altered after it was signed: its self-signature no longer verifies.
    let mut altered = bob_key.clone();
    let at = find(&altered, b"bob@example.org").unwrap();
    altered[at] = b'r';
    assert!(matches!(
        try_certify(&altered, "Bob <rob@example.org>"),
        Err(PgpError::BadSelfSignature(_))
    ));
    // Weak and refused algorithms.
    let weak = users.gen_key("Weak <weak@example.org>", "rsa1024");
    assert!(matches!(
        try_certify(&users.export(&weak), "Weak <weak@example.org>"),
        Err(PgpError::WeakKey(_))
    ));
    let dsa = users.gen_key("Dsa <dsa@example.org>", "dsa2048");
    assert!(matches!(
        try_certify(&users.export(&dsa), "Dsa <dsa@example.org>"),
        Err(PgpError::AlgorithmNotAllowed(_))
    ));
    // An expired key (made in 2020, valid one day).
    let old = users.gen_key_with(
        "Old <old@example.org>",
        "ed25519",
        "1d",
        &["--faked-system-time", "20200101T000000!"],
    );
    assert!(matches!(
        try_certify(&users.export(&old), "Old <old@example.org>"),
        Err(PgpError::KeyExpired(_))
    ));
    // Oversize, and expiry outside the allowed window.
    let small = Policy {
        max_key_bytes: 1024,
        ..Policy::default()
    };
    assert!(matches!(
        inspect(&alice_key, &small),
        Err(PgpError::TooLarge { .. })
    ));
    let bob_user = || inspect(&bob_key, &policy).unwrap();
    let uid = ["Bob <bob@example.org>".to_string()];
    for bad in [now() - 1, now() + i64::from(policy.max_days + 1) * 86_400] {
        assert!(matches!(
            certify(bob_user(), &uid, now(), bad, &policy, &signer),
            Err(PgpError::Expiry(_))
        ));
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
