//! Reading a user's key, checking it against the policy, and certifying
//! user IDs.

use std::io::Read;

use pgp::composed::{Deserializable, SignedPublicKey};
use pgp::crypto::public_key::PublicKeyAlgorithm;
use pgp::packet::{
    Packet, PacketParser, PacketTrait, Signature, SignatureConfig, SignatureType, Subpacket,
    SubpacketData,
};
use pgp::ser::Serialize as _;
use pgp::types::{
    Duration, EcdsaPublicParams, EddsaLegacyPublicParams, KeyDetails, KeyVersion, Password,
    PublicParams, SignedUser, Tag, Timestamp,
};

use crate::cakey::{ca_err, parse_public_key};
use crate::{Algorithm, HsmSigner, PgpError, Policy};

/// A user's key that passed the checks of [`inspect`].
#[derive(Debug, Clone)]
pub struct UserKey {
    /// The key as parsed.
    pub key: SignedPublicKey,
    /// Its fingerprint, upper-case hex.
    pub fingerprint: String,
}

/// The result of [`certify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certified {
    /// The key with the new certifications, binary.
    pub key: Vec<u8>,
    /// The key's fingerprint, upper-case hex.
    pub fingerprint: String,
    /// Each certified user ID with its new signature packet (with header).
    pub certifications: Vec<(String, Vec<u8>)>,
}

fn malformed(e: impl std::fmt::Display) -> PgpError {
    PgpError::Malformed(e.to_string())
}

/// The binary form of `input`: dearmored if it is ASCII armor.
fn binary(input: &[u8]) -> Result<Vec<u8>, PgpError> {
    let text_start = input
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(input.len());
    let trimmed = &input[text_start..];
    if !trimmed.starts_with(b"-----BEGIN PGP ") {
        return Ok(input.to_vec());
    }
    if trimmed.starts_with(b"-----BEGIN PGP PRIVATE KEY BLOCK-----") {
        return Err(PgpError::SecretKey);
    }
    if !trimmed.starts_with(b"-----BEGIN PGP PUBLIC KEY BLOCK-----") {
        let end = trimmed
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(trimmed.len());
        return Err(PgpError::Malformed(format!(
            "armor {:?} is not a public key block",
            String::from_utf8_lossy(&trimmed[..end.min(64)]).trim()
        )));
    }
    // Exactly one armored block, and nothing after it: the dearmorer would
    // read the first block and ignore the rest (a second key must be
    // refused as the binary form of two keys is).
    const END: &[u8] = b"-----END PGP PUBLIC KEY BLOCK-----";
    let blocks = trimmed
        .windows(b"-----BEGIN PGP ".len())
        .filter(|w| *w == b"-----BEGIN PGP ")
        .count();
    let after = trimmed
        .windows(END.len())
        .position(|w| w == END)
        .map(|at| &trimmed[at + END.len()..]);
    match after {
        _ if blocks > 1 => {
            return Err(PgpError::Malformed(format!(
                "{blocks} armored blocks; send exactly one public key"
            )))
        }
        Some(rest) if rest.iter().any(|b| !b.is_ascii_whitespace()) => {
            return Err(PgpError::Malformed(
                "text after the armored public key block".into(),
            ))
        }
        _ => {}
    }
    let mut dearmor = pgp::armor::Dearmor::new(trimmed);
    let mut out = Vec::new();
    dearmor
        .read_to_end(&mut out)
        .map_err(|e| PgpError::Malformed(format!("ASCII armor: {e}")))?;
    Ok(out)
}

/// Parses `input` (binary or ASCII-armored) as exactly one transferable
/// public key and checks its primary key against the policy: version 4,
/// an allowed algorithm and size, not revoked. User IDs are checked by
/// [`certify`], for the ones requested.
pub fn inspect(input: &[u8], policy: &Policy) -> Result<UserKey, PgpError> {
    if input.len() > policy.max_key_bytes * 4 / 3 + 1024 {
        return Err(PgpError::TooLarge {
            size: input.len(),
            max: policy.max_key_bytes,
        });
    }
    let bytes = binary(input)?;
    if bytes.len() > policy.max_key_bytes {
        return Err(PgpError::TooLarge {
            size: bytes.len(),
            max: policy.max_key_bytes,
        });
    }
    if bytes.is_empty() {
        return Err(PgpError::Malformed("empty input".into()));
    }
    let mut packets = Vec::new();
    for packet in PacketParser::new(bytes.as_slice()) {
        let packet = packet.map_err(malformed)?;
        match packet.tag() {
            Tag::SecretKey | Tag::SecretSubkey => return Err(PgpError::SecretKey),
            Tag::PublicKey if !packets.is_empty() => {
                return Err(PgpError::Malformed(
                    "more than one key; send one key per request".into(),
                ))
            }
            Tag::PublicKey
            | Tag::PublicSubkey
            | Tag::UserId
            | Tag::UserAttribute
            | Tag::Signature
            | Tag::Trust
            | Tag::Marker
            | Tag::Padding => {}
            other => {
                return Err(PgpError::Malformed(format!(
                    "a {other:?} packet does not belong in a public key"
                )))
            }
        }
        packets.push(packet);
    }
    match packets.first().map(Packet::tag) {
        Some(Tag::PublicKey) => {}
        Some(other) => {
            return Err(PgpError::Malformed(format!(
                "the first packet is {other:?}, not a public key"
            )))
        }
        None => {
            return Err(PgpError::Malformed(
                "no OpenPGP packets could be read".into(),
            ))
        }
    }
    let key = SignedPublicKey::from_packets(packets.into_iter().map(Ok).peekable())
        .next()
        .ok_or_else(|| malformed("no key"))?
        .map_err(malformed)?;
    check_primary(&key, policy)?;
    let fingerprint = crate::fingerprint_hex(&key.primary_key.fingerprint());
    for sig in &key.details.revocation_signatures {
        if sig.typ() == Some(SignatureType::KeyRevocation)
            && sig.verify_key(&key.primary_key).is_ok()
        {
            return Err(PgpError::KeyRevoked(fingerprint));
        }
    }
    Ok(UserKey { key, fingerprint })
}

fn check_primary(key: &SignedPublicKey, policy: &Policy) -> Result<(), PgpError> {
    let primary = &key.primary_key;
    if primary.version() != KeyVersion::V4 {
        return Err(PgpError::AlgorithmNotAllowed(format!(
            "key version {:?}; only version 4 keys are certified",
            primary.version()
        )));
    }
    let (algorithm, name) = match primary.public_params() {
        PublicParams::RSA(_) => (Some(Algorithm::Rsa), "RSA".to_string()),
        PublicParams::EdDSALegacy(EddsaLegacyPublicParams::Ed25519 { .. })
        | PublicParams::Ed25519(_) => (Some(Algorithm::Ed25519), "Ed25519".to_string()),
        PublicParams::ECDSA(EcdsaPublicParams::P256 { .. }) => {
            (Some(Algorithm::P256), "ECDSA P-256".to_string())
        }
        PublicParams::ECDSA(EcdsaPublicParams::P384 { .. }) => {
            (Some(Algorithm::P384), "ECDSA P-384".to_string())
        }
        PublicParams::ECDSA(EcdsaPublicParams::P521 { .. }) => {
            (Some(Algorithm::P521), "ECDSA P-521".to_string())
        }
        _ => (None, format!("{:?}", primary.algorithm())),
    };
    if !algorithm.is_some_and(|a| policy.algorithms.contains(&a)) {
        return Err(PgpError::AlgorithmNotAllowed(format!(
            "{name} primary keys are not accepted"
        )));
    }
    if algorithm == Some(Algorithm::Rsa) {
        if !matches!(
            primary.algorithm(),
            PublicKeyAlgorithm::RSA | PublicKeyAlgorithm::RSASign
        ) {
            return Err(PgpError::AlgorithmNotAllowed(
                "an encrypt-only RSA key cannot be a primary key".into(),
            ));
        }
        let params = primary.public_params().to_bytes().map_err(malformed)?;
        let bits = params
            .get(..2)
            .map(|b| u32::from(u16::from_be_bytes([b[0], b[1]])))
            .unwrap_or(0);
        if bits < policy.rsa_min_bits || bits > policy.rsa_max_bits {
            return Err(PgpError::WeakKey(format!(
                "RSA-{bits}; accepted are {}-{} bits",
                policy.rsa_min_bits, policy.rsa_max_bits
            )));
        }
    }
    Ok(())
}

/// True if `sig` claims to be made by `key` (issuer fingerprint or key id).
fn issued_by(sig: &Signature, key: &impl KeyDetails) -> bool {
    let fpr = key.fingerprint();
    let id = key.legacy_key_id();
    sig.issuer_fingerprint().iter().any(|f| **f == fpr)
        || sig.issuer_key_id().iter().any(|k| **k == id)
}

/// The newest valid self-signature over `user`, checked per the policy.
fn newest_self_signature<'k>(
    key: &SignedPublicKey,
    user: &'k SignedUser,
    uid: &str,
    policy: &Policy,
) -> Result<&'k Signature, PgpError> {
    let primary = &key.primary_key;
    let mut newest: Option<&Signature> = None;
    let mut refused_hash = None;
    for sig in &user.signatures {
        let unattributed = sig.issuer_fingerprint().is_empty() && sig.issuer_key_id().is_empty();
        if !issued_by(sig, primary) && !unattributed {
            continue; // a third-party certification: not ours to judge
        }
        let Some(hash) = sig.hash_alg() else {
            continue;
        };
        if !policy.allows_hash(hash) {
            refused_hash = Some(hash);
            continue;
        }
        if let Err(e) = sig.verify_certification(primary, Tag::UserId, &user.id) {
            if unattributed {
                continue;
            }
            return Err(PgpError::BadSelfSignature(format!("user ID {uid:?}: {e}")));
        }
        let created = sig.created().map(Timestamp::as_secs).unwrap_or(0);
        let newer = match newest {
            None => true,
            Some(n) => {
                let n_created = n.created().map(Timestamp::as_secs).unwrap_or(0);
                created > n_created
                    || (created == n_created && sig.typ() == Some(SignatureType::CertRevocation))
            }
        };
        if newer {
            newest = Some(sig);
        }
    }
    match (newest, refused_hash) {
        (Some(sig), _) => Ok(sig),
        (None, Some(hash)) => Err(PgpError::AlgorithmNotAllowed(format!(
            "user ID {uid:?} is self-signed only with {hash:?}, which the policy refuses"
        ))),
        (None, None) => Err(PgpError::BadSelfSignature(format!(
            "user ID {uid:?} has no self-signature"
        ))),
    }
}

/// Checks one user ID at `now`: its newest valid self-signature must be a
/// certification that has not expired. Returns that signature.
pub(crate) fn check_user_id<'k>(
    key: &SignedPublicKey,
    user: &'k SignedUser,
    policy: &Policy,
    now: u32,
) -> Result<&'k Signature, PgpError> {
    let uid = String::from_utf8_lossy(user.id.id()).into_owned();
    let sig = newest_self_signature(key, user, &uid, policy)?;
    if sig.typ() == Some(SignatureType::CertRevocation) {
        return Err(PgpError::UserIdRevoked(uid));
    }
    if passed(sig.created(), sig.signature_expiration_time(), now) {
        return Err(PgpError::UserIdExpired(uid));
    }
    Ok(sig)
}

/// Whether `sig` (created at some time) has passed `lifetime` by `now`.
fn passed(created: Option<Timestamp>, lifetime: Option<Duration>, now: u32) -> bool {
    match (created, lifetime) {
        (Some(c), Some(l)) if l.as_secs() > 0 => {
            u64::from(c.as_secs()) + u64::from(l.as_secs()) <= u64::from(now)
        }
        _ => false,
    }
}

/// Certifies `user_ids` on `user` with the CA key: every requested user ID
/// must be present and valid at `now`; the certifications expire at
/// `expires_at` (Unix seconds). Nothing is signed unless every check passes.
pub fn certify(
    user: UserKey,
    user_ids: &[String],
    now: i64,
    expires_at: i64,
    policy: &Policy,
    signer: &HsmSigner<'_>,
) -> Result<Certified, PgpError> {
    let UserKey {
        mut key,
        fingerprint,
    } = user;
    let now32 = u32::try_from(now).map_err(|_| PgpError::Expiry("clock out of range".into()))?;
    let max = now + i64::from(policy.max_days) * 86_400;
    if expires_at <= now || expires_at > max {
        return Err(PgpError::Expiry(format!(
            "expires_at {expires_at} must lie after now ({now}) and at most {} days ahead ({max})",
            policy.max_days
        )));
    }
    let lifetime = Duration::from_secs(
        u32::try_from(expires_at - now).map_err(|_| PgpError::Expiry("too far ahead".into()))?,
    );
    if user_ids.is_empty() {
        return Err(PgpError::UserIdNotFound(
            "no user IDs were requested".into(),
        ));
    }
    // Check every requested user ID before signing anything.
    let mut targets = Vec::with_capacity(user_ids.len());
    let mut key_lifetime: Option<(u32, Option<Duration>)> = None;
    for uid in user_ids {
        if targets.iter().any(|(u, _): &(&String, usize)| *u == uid) {
            continue;
        }
        let index = key
            .details
            .users
            .iter()
            .position(|u| u.id.id() == uid.as_bytes())
            .ok_or_else(|| PgpError::UserIdNotFound(uid.clone()))?;
        let sig = check_user_id(&key, &key.details.users[index], policy, now32)?;
        let created = sig.created().map(Timestamp::as_secs).unwrap_or(0);
        if key_lifetime.is_none_or(|(c, _)| created > c) {
            key_lifetime = Some((created, sig.key_expiration_time()));
        }
        targets.push((uid, index));
    }
    for sig in &key.details.direct_signatures {
        let created = sig.created().map(Timestamp::as_secs).unwrap_or(0);
        if sig.verify_key(&key.primary_key).is_ok() && key_lifetime.is_none_or(|(c, _)| created > c)
        {
            key_lifetime = Some((created, sig.key_expiration_time()));
        }
    }
    if let Some((_, Some(lifetime))) = key_lifetime {
        if passed(Some(key.primary_key.created_at()), Some(lifetime), now32) {
            return Err(PgpError::KeyExpired(fingerprint));
        }
    }
    let mut certifications = Vec::with_capacity(targets.len());
    for (uid, index) in targets {
        let mut config = SignatureConfig::v4(
            SignatureType::from(policy.certification_level),
            signer.algorithm(),
            signer.hash_algorithm(),
        );
        config.hashed_subpackets = [
            SubpacketData::SignatureCreationTime(Timestamp::from_secs(now32)),
            SubpacketData::SignatureExpirationTime(lifetime),
            SubpacketData::IssuerFingerprint(signer.fingerprint()),
        ]
        .into_iter()
        .map(Subpacket::regular)
        .collect::<Result<_, _>>()
        .map_err(ca_err)?;
        config.unhashed_subpackets =
            vec![
                Subpacket::regular(SubpacketData::IssuerKeyId(signer.legacy_key_id()))
                    .map_err(ca_err)?,
            ];
        let user = &mut key.details.users[index];
        let signature = config
            .sign_certification_third_party(
                signer,
                &Password::empty(),
                &key.primary_key,
                Tag::UserId,
                &user.id,
            )
            .map_err(|e| signer.signing_error(e))?;
        // A faulty HSM must not hand out a certification that does not verify.
        signature
            .verify_third_party_certification(
                &key.primary_key,
                signer.public(),
                Tag::UserId,
                &user.id,
            )
            .map_err(|e| PgpError::CaKey(format!("the new certification does not verify: {e}")))?;
        let mut packet = Vec::new();
        signature
            .to_writer_with_header(&mut packet)
            .map_err(ca_err)?;
        user.signatures.push(signature);
        certifications.push((uid.clone(), packet));
    }
    let key_bytes = key.to_bytes().map_err(ca_err)?;
    Ok(Certified {
        key: key_bytes,
        fingerprint,
        certifications,
    })
}

/// Checks, on the client's side, what a signer returned: `key` parses, has
/// the fingerprint `fingerprint`, and carries each of `certifications`
/// (user ID, signature packet) as a certification by `ca` that verifies.
pub fn verify_certified(
    key: &[u8],
    fingerprint: &str,
    ca: &[u8],
    certifications: &[(String, Vec<u8>)],
) -> Result<(), PgpError> {
    let ca_key = parse_public_key(ca).map_err(ca_err)?;
    let key = SignedPublicKey::from_bytes(key).map_err(malformed)?;
    let got = crate::fingerprint_hex(&key.primary_key.fingerprint());
    if got != fingerprint {
        return Err(PgpError::Malformed(format!(
            "the returned key is {got}, not {fingerprint}"
        )));
    }
    for (uid, packet) in certifications {
        let user = key
            .details
            .users
            .iter()
            .find(|u| u.id.id() == uid.as_bytes())
            .ok_or_else(|| PgpError::UserIdNotFound(uid.clone()))?;
        let good = user.signatures.iter().any(|sig| {
            let mut bytes = Vec::new();
            sig.to_writer_with_header(&mut bytes).is_ok()
                && bytes == *packet
                && sig
                    .verify_third_party_certification(
                        &key.primary_key,
                        &ca_key.primary_key,
                        Tag::UserId,
                        &user.id,
                    )
                    .is_ok()
        });
        if !good {
            return Err(PgpError::BadSelfSignature(format!(
                "the certification of {uid:?} is missing or does not verify with the CA key"
            )));
        }
    }
    Ok(())
}
