//! What every key backend must do, as a suite any backend's tests run
//! against a real instance (the PKCS#11 backend runs it on SoftHSM2 in
//! `crates/hsm/tests/conformance.rs`).
//!
//! Each check returns a description of the first broken promise, so a new
//! backend's test fails with what it got wrong:
//!
//! - the public key is a SubjectPublicKeyInfo of the kind reported;
//! - every scheme the kind supports makes signatures that verify (checked
//!   with `ring`, an implementation independent of the backend), ECDSA in
//!   DER;
//! - a scheme the kind does not support, a digest of the wrong length and
//!   a key name not configured are refused with the right error kind, and
//!   "no such key" is never reported as "the backend failed";
//! - many threads may sign at once, and every signature verifies;
//! - `status` reports the keys that were used;
//! - a generator refuses a label in use and makes keys of every kind.

use std::sync::Arc;

use der::Decode;
use spki::SubjectPublicKeyInfoRef;

use crate::{Hash, HsmError, KeyGenerator, KeyKind, PublicKey, Scheme, SigningBackend};

/// Every scheme a key of `kind` can sign with.
pub fn schemes(kind: KeyKind) -> Vec<Scheme> {
    let hashes = [Hash::Sha256, Hash::Sha384, Hash::Sha512];
    match kind {
        KeyKind::Rsa { .. } => hashes
            .iter()
            .flat_map(|&h| [Scheme::RsaPkcs1(h), Scheme::RsaPss(h)])
            .collect(),
        // ring verifies P-256 with SHA-256/384 and P-384 with SHA-256/384.
        KeyKind::EcP256 | KeyKind::EcP384 => {
            vec![Scheme::Ecdsa(Hash::Sha256), Scheme::Ecdsa(Hash::Sha384)]
        }
        KeyKind::Ed25519 => vec![Scheme::Ed25519],
    }
}

/// Verifies `signature` over `message` with `public`, independently of any backend.
pub fn verify(
    public: &PublicKey,
    scheme: Scheme,
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    use ring::signature as rs;
    let spki = SubjectPublicKeyInfoRef::from_der(&public.spki_der)
        .map_err(|e| format!("public key is not a SubjectPublicKeyInfo: {e}"))?;
    let key = spki.subject_public_key.raw_bytes();
    let alg: &dyn rs::VerificationAlgorithm = match (public.kind, scheme) {
        (KeyKind::Rsa { .. }, Scheme::RsaPkcs1(Hash::Sha256)) => &rs::RSA_PKCS1_2048_8192_SHA256,
        (KeyKind::Rsa { .. }, Scheme::RsaPkcs1(Hash::Sha384)) => &rs::RSA_PKCS1_2048_8192_SHA384,
        (KeyKind::Rsa { .. }, Scheme::RsaPkcs1(Hash::Sha512)) => &rs::RSA_PKCS1_2048_8192_SHA512,
        (KeyKind::Rsa { .. }, Scheme::RsaPss(Hash::Sha256)) => &rs::RSA_PSS_2048_8192_SHA256,
        (KeyKind::Rsa { .. }, Scheme::RsaPss(Hash::Sha384)) => &rs::RSA_PSS_2048_8192_SHA384,
        (KeyKind::Rsa { .. }, Scheme::RsaPss(Hash::Sha512)) => &rs::RSA_PSS_2048_8192_SHA512,
        (KeyKind::EcP256, Scheme::Ecdsa(Hash::Sha256)) => &rs::ECDSA_P256_SHA256_ASN1,
        (KeyKind::EcP256, Scheme::Ecdsa(Hash::Sha384)) => &rs::ECDSA_P256_SHA384_ASN1,
        (KeyKind::EcP384, Scheme::Ecdsa(Hash::Sha256)) => &rs::ECDSA_P384_SHA256_ASN1,
        (KeyKind::EcP384, Scheme::Ecdsa(Hash::Sha384)) => &rs::ECDSA_P384_SHA384_ASN1,
        (KeyKind::Ed25519, Scheme::Ed25519) => &rs::ED25519,
        (kind, scheme) => {
            return Err(format!(
                "no independent verifier for {scheme:?} with {kind}"
            ))
        }
    };
    rs::UnparsedPublicKey::new(alg, key)
        .verify(message, signature)
        .map_err(|_| {
            format!(
                "{scheme:?} signature by a {} key does not verify",
                public.kind
            )
        })
}

/// Signs a message with every scheme `key` supports and verifies each signature.
pub fn signs_and_verifies(backend: &dyn SigningBackend, key: &str) -> Result<PublicKey, String> {
    let public = backend
        .public_key(key)
        .map_err(|e| format!("public_key({key}): {e}"))?;
    SubjectPublicKeyInfoRef::from_der(&public.spki_der)
        .map_err(|e| format!("public_key({key}) is not DER SubjectPublicKeyInfo: {e}"))?;
    for scheme in schemes(public.kind) {
        let message = format!("conformance {key} {scheme:?}");
        let digest = scheme.prepare(message.as_bytes());
        let signature = backend
            .sign_digest(key, scheme, &digest)
            .map_err(|e| format!("sign_digest({key}, {scheme:?}): {e}"))?;
        verify(&public, scheme, message.as_bytes(), &signature)?;
    }
    Ok(public)
}

/// The refusals: wrong scheme, wrong digest length, unknown key name.
pub fn refuses_what_it_cannot_do(backend: &dyn SigningBackend, key: &str) -> Result<(), String> {
    let public = backend
        .public_key(key)
        .map_err(|e| format!("public_key({key}): {e}"))?;
    let wrong = if public.kind.is_rsa() {
        Scheme::Ecdsa(Hash::Sha256)
    } else {
        Scheme::RsaPkcs1(Hash::Sha256)
    };
    match backend.sign_digest(key, wrong, &[0u8; 32]) {
        Err(HsmError::Unsupported(_)) => {}
        other => {
            return Err(format!(
                "{wrong:?} with a {} key: expected Unsupported, got {other:?}",
                public.kind
            ))
        }
    }
    let scheme = schemes(public.kind)[0];
    // Ed25519 signs messages of any length; the others take one digest length.
    let short: &[u8] = if scheme == Scheme::Ed25519 {
        &[]
    } else {
        &[0u8; 20]
    };
    match backend.sign_digest(key, scheme, short) {
        Err(HsmError::Unsupported(_)) => {}
        other => {
            return Err(format!(
                "{} bytes to sign for {scheme:?}: expected Unsupported, got {other:?}",
                short.len()
            ))
        }
    }
    let absent = "conformance-no-such-key";
    match backend.sign_digest(absent, scheme, &vec![0u8; scheme.hash().len()]) {
        Err(HsmError::UnknownKey(_)) => {}
        other => {
            return Err(format!(
                "signing with an unconfigured key name: expected UnknownKey, got {other:?}"
            ))
        }
    }
    match backend.public_key(absent) {
        Err(HsmError::UnknownKey(_)) => {}
        other => {
            return Err(format!(
                "public key of an unconfigured key name: expected UnknownKey, got {other:?}"
            ))
        }
    }
    Ok(())
}

/// `threads` threads sign `each` digests at once with `key`; every signature must verify.
pub fn signs_concurrently(
    backend: Arc<dyn SigningBackend>,
    key: &str,
    threads: usize,
    each: usize,
) -> Result<(), String> {
    let public = backend
        .public_key(key)
        .map_err(|e| format!("public_key({key}): {e}"))?;
    let scheme = schemes(public.kind)[0];
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let backend = Arc::clone(&backend);
            let key = key.to_string();
            let public = public.clone();
            std::thread::spawn(move || -> Result<(), String> {
                for i in 0..each {
                    let message = format!("thread {t} signature {i}");
                    let digest = scheme.prepare(message.as_bytes());
                    let signature = backend
                        .sign_digest(&key, scheme, &digest)
                        .map_err(|e| format!("thread {t}: {e}"))?;
                    verify(&public, scheme, message.as_bytes(), &signature)?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| "a signing thread panicked".to_string())??;
    }
    let status = backend.status();
    match status.iter().find(|s| s.name == key) {
        Some(s) if s.available && s.last_error.is_none() => Ok(()),
        Some(s) => Err(format!("status of {key} after good signatures: {s:?}")),
        None => Err(format!("status does not list {key} after it signed")),
    }
}

/// A generator refuses a label in use and makes a key of each kind that
/// can be read back (`prefix` makes the labels unique on a shared token).
pub fn generates(
    generator: &dyn KeyGenerator,
    prefix: &str,
) -> Result<Vec<(String, PublicKey)>, String> {
    let mut made = Vec::new();
    for kind in [
        KeyKind::Rsa { bits: 2048 },
        KeyKind::EcP256,
        KeyKind::EcP384,
        KeyKind::Ed25519,
    ] {
        let label = format!(
            "{prefix}-{}",
            kind.to_string().replace(' ', "-").to_lowercase()
        );
        generator
            .check_label_free(&label)
            .map_err(|e| format!("check_label_free({label}) on a fresh label: {e}"))?;
        let (public, id) = generator
            .generate(kind, &label)
            .map_err(|e| format!("generate({kind}, {label}): {e}"))?;
        if public.kind != kind {
            return Err(format!("generate({kind}) returned a {} key", public.kind));
        }
        if id.is_empty() {
            return Err(format!("generate({kind}) returned an empty key id"));
        }
        let read = PublicKey::from_spki_der(&public.spki_der)
            .map_err(|e| format!("generated {kind} key: {e}"))?;
        if read.kind != kind || PublicKey::from_pem(&public.to_pem()).ok() != Some(read) {
            return Err(format!("generated {kind} key reads back differently"));
        }
        if generator.check_label_free(&label).is_ok() {
            return Err(format!(
                "label {label} still reported free after generating a key under it"
            ));
        }
        match generator.generate(kind, &label) {
            Err(_) => {}
            Ok(_) => return Err(format!("a second key was generated under label {label}")),
        }
        made.push((label, public));
    }
    Ok(made)
}
