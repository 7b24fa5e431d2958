//! The CA's OpenPGP key: a public-key packet derived from the HSM key and a
//! fixed creation time, a signer that hands digests to the HSM, and the
//! self-signed certificate.

use std::sync::Mutex;

use pgp::composed::{ArmorOptions, Deserializable, SignedKeyDetails, SignedPublicKey};
use pgp::crypto::hash::HashAlgorithm;
use pgp::crypto::public_key::PublicKeyAlgorithm;
use pgp::packet::{
    KeyFlags, PubKeyInner, PublicKey, SignatureConfig, SignatureType, Subpacket, SubpacketData,
    UserId,
};
use pgp::ser::Serialize as _;
use pgp::types::{
    Fingerprint, KeyDetails, KeyId, KeyVersion, Mpi, PacketHeaderVersion, Password, PublicParams,
    SignatureBytes, SigningKey, Tag, Timestamp,
};
use signer_keys::{Hash, HsmError, KeyKind, Scheme, SigningBackend};

use crate::{hash_algorithm, PgpError};

pub(crate) fn ca_err(e: impl std::fmt::Display) -> PgpError {
    PgpError::CaKey(e.to_string())
}

/// An MPI in OpenPGP wire form: bit count, then the big-endian value.
fn write_mpi(out: &mut Vec<u8>, value: &[u8]) {
    let start = value.iter().position(|&b| b != 0).unwrap_or(value.len());
    let value = &value[start..];
    let bits = match value.first() {
        Some(first) => value.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    };
    out.extend_from_slice(&(bits as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// The OpenPGP public-key packet (v4) of an HSM key created at `created`
/// (Unix seconds). The same key and time always give the same fingerprint.
pub fn public_key_packet(
    key: &signer_keys::PublicKey,
    created: u32,
) -> Result<PublicKey, PgpError> {
    use der::Decode;
    let spki = spki::SubjectPublicKeyInfoRef::from_der(&key.spki_der).map_err(ca_err)?;
    let bits = spki.subject_public_key.raw_bytes();
    let mut wire = Vec::new();
    let algorithm = match key.kind {
        KeyKind::Rsa { .. } => {
            #[derive(der::Sequence)]
            struct RsaPublic<'a> {
                n: der::asn1::UintRef<'a>,
                e: der::asn1::UintRef<'a>,
            }
            let rsa = RsaPublic::from_der(bits).map_err(ca_err)?;
            write_mpi(&mut wire, rsa.n.as_bytes());
            write_mpi(&mut wire, rsa.e.as_bytes());
            PublicKeyAlgorithm::RSA
        }
        KeyKind::EcP256 | KeyKind::EcP384 => {
            let oid: &[u8] = if key.kind == KeyKind::EcP256 {
                &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
            } else {
                &[0x2b, 0x81, 0x04, 0x00, 0x22]
            };
            wire.push(oid.len() as u8);
            wire.extend_from_slice(oid);
            write_mpi(&mut wire, bits);
            PublicKeyAlgorithm::ECDSA
        }
        KeyKind::Ed25519 => {
            return Err(ca_err(
                "an Ed25519 key is for the audit log, not for OpenPGP certification",
            ))
        }
    };
    let params = PublicParams::try_from_reader(algorithm, None, wire.as_slice()).map_err(ca_err)?;
    let inner = PubKeyInner::new(
        KeyVersion::V4,
        algorithm,
        Timestamp::from_secs(created),
        None,
        params,
    )
    .map_err(ca_err)?;
    PublicKey::from_inner(inner).map_err(ca_err)
}

/// Signs OpenPGP digests with an HSM key: the host hashes, the HSM signs
/// the digest (PKCS#1 v1.5 for RSA, ECDSA for EC keys).
pub struct HsmSigner<'a> {
    backend: &'a dyn SigningBackend,
    key: &'a str,
    public: &'a PublicKey,
    kind: KeyKind,
    hash: Hash,
    failure: Mutex<Option<HsmError>>,
}

impl std::fmt::Debug for HsmSigner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmSigner")
            .field("key", &self.key)
            .field("kind", &self.kind)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl<'a> HsmSigner<'a> {
    /// A signer for `key` (a configured key name) whose public-key packet is `public`.
    pub fn new(
        backend: &'a dyn SigningBackend,
        key: &'a str,
        public: &'a PublicKey,
        kind: KeyKind,
        hash: Hash,
    ) -> Self {
        HsmSigner {
            backend,
            key,
            public,
            kind,
            hash,
            failure: Mutex::new(None),
        }
    }

    /// The HSM error behind a failed signature, if that is why it failed.
    pub fn take_failure(&self) -> Option<HsmError> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Maps an rpgp error from a signing call to the HSM error behind it, if any.
    pub(crate) fn signing_error(&self, e: pgp::errors::Error) -> PgpError {
        match self.take_failure() {
            Some(hsm) => PgpError::Hsm(hsm),
            None => PgpError::CaKey(format!("signing: {e}")),
        }
    }

    /// The CA key's public-key packet.
    pub fn public(&self) -> &'a PublicKey {
        self.public
    }

    /// The hash algorithm certifications use.
    pub fn hash_algorithm(&self) -> HashAlgorithm {
        hash_algorithm(self.hash)
    }
}

impl KeyDetails for HsmSigner<'_> {
    fn version(&self) -> KeyVersion {
        self.public.version()
    }
    fn legacy_key_id(&self) -> KeyId {
        self.public.legacy_key_id()
    }
    fn fingerprint(&self) -> Fingerprint {
        self.public.fingerprint()
    }
    fn algorithm(&self) -> PublicKeyAlgorithm {
        self.public.algorithm()
    }
    fn created_at(&self) -> Timestamp {
        self.public.created_at()
    }
    fn legacy_v3_expiration_days(&self) -> Option<u16> {
        None
    }
    fn public_params(&self) -> &PublicParams {
        self.public.public_params()
    }
}

/// (r, s) of a DER ECDSA-Sig-Value.
fn ecdsa_der_to_rs(der_sig: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    use der::Decode;
    #[derive(der::Sequence)]
    struct Sig<'a> {
        r: der::asn1::UintRef<'a>,
        s: der::asn1::UintRef<'a>,
    }
    let sig = Sig::from_der(der_sig).ok()?;
    Some((sig.r.as_bytes().to_vec(), sig.s.as_bytes().to_vec()))
}

impl SigningKey for HsmSigner<'_> {
    fn sign(
        &self,
        _key_pw: &Password,
        hash: HashAlgorithm,
        digest: &[u8],
    ) -> pgp::errors::Result<SignatureBytes> {
        let ours = match hash {
            HashAlgorithm::Sha256 => Hash::Sha256,
            HashAlgorithm::Sha384 => Hash::Sha384,
            HashAlgorithm::Sha512 => Hash::Sha512,
            other => return Err(format!("hash {other:?} is not used for signing").into()),
        };
        let scheme = if self.kind.is_rsa() {
            Scheme::RsaPkcs1(ours)
        } else {
            Scheme::Ecdsa(ours)
        };
        let signature = match self.backend.sign_digest(self.key, scheme, digest) {
            Ok(s) => s,
            Err(e) => {
                let text = e.to_string();
                *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                return Err(text.into());
            }
        };
        if self.kind.is_rsa() {
            return Ok(SignatureBytes::Mpis(vec![Mpi::from_slice(&signature)]));
        }
        let (r, s) = ecdsa_der_to_rs(&signature)
            .ok_or_else(|| String::from("the HSM returned an unreadable ECDSA signature"))?;
        Ok(SignatureBytes::Mpis(vec![
            Mpi::from_slice(&r),
            Mpi::from_slice(&s),
        ]))
    }

    fn hash_alg(&self) -> HashAlgorithm {
        hash_algorithm(self.hash)
    }
}

/// The CA's self-signed OpenPGP certificate: its public key with one user
/// ID, self-certified (positive, 0x13) at the key's creation time so the
/// result depends only on the key, the time and the user ID.
pub fn ca_certificate(signer: &HsmSigner<'_>, user_id: &str) -> Result<SignedPublicKey, PgpError> {
    let uid = UserId::from_str(PacketHeaderVersion::New, user_id).map_err(ca_err)?;
    let mut config = SignatureConfig::v4(
        SignatureType::CertPositive,
        signer.algorithm(),
        signer.hash_algorithm(),
    );
    let mut flags = KeyFlags::default();
    flags.set_certify(true);
    flags.set_sign(true);
    config.hashed_subpackets = [
        SubpacketData::SignatureCreationTime(signer.created_at()),
        SubpacketData::IssuerFingerprint(signer.fingerprint()),
        SubpacketData::KeyFlags(flags),
        SubpacketData::PreferredHashAlgorithms(
            [
                HashAlgorithm::Sha512,
                HashAlgorithm::Sha384,
                HashAlgorithm::Sha256,
            ]
            .into_iter()
            .collect(),
        ),
        SubpacketData::IsPrimary(true),
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
    let signature = config
        .sign_certification(signer, signer.public, &Password::empty(), Tag::UserId, &uid)
        .map_err(|e| signer.signing_error(e))?;
    let details = SignedKeyDetails::new(
        vec![],
        vec![],
        vec![pgp::types::SignedUser::new(uid, vec![signature])],
        vec![],
    );
    Ok(SignedPublicKey::new(signer.public.clone(), details, vec![]))
}

/// A public key, ASCII-armored or binary (trusted input: the CA's own certificate).
pub(crate) fn parse_public_key(bytes: &[u8]) -> pgp::errors::Result<SignedPublicKey> {
    if bytes.starts_with(b"-----BEGIN") {
        SignedPublicKey::from_armor_single(bytes).map(|(k, _)| k)
    } else {
        SignedPublicKey::from_bytes(bytes)
    }
}

/// The CA's OpenPGP certificate as loaded at startup: checked against the
/// key packet derived from the HSM.
#[derive(Debug, Clone)]
pub struct CaCertificate {
    /// The public-key packet (from the HSM key and the configured creation time).
    pub public: PublicKey,
    /// The certificate file's key.
    pub certificate: SignedPublicKey,
}

impl CaCertificate {
    /// Reads a certificate (armored or binary) and checks that its primary
    /// key is `public` and its self-signatures verify.
    pub fn load(bytes: &[u8], public: PublicKey) -> Result<CaCertificate, PgpError> {
        let certificate = parse_public_key(bytes).map_err(ca_err)?;
        if certificate.primary_key.fingerprint() != public.fingerprint() {
            return Err(PgpError::CaKey(format!(
                "the certificate's key {} is not the HSM key with the configured creation time ({})",
                crate::fingerprint_hex(&certificate.primary_key.fingerprint()),
                crate::fingerprint_hex(&public.fingerprint()),
            )));
        }
        certificate.verify_bindings().map_err(|e| {
            PgpError::CaKey(format!(
                "the certificate's self-signatures do not verify: {e}"
            ))
        })?;
        Ok(CaCertificate {
            public,
            certificate,
        })
    }

    /// The fingerprint, upper-case hex.
    pub fn fingerprint(&self) -> String {
        crate::fingerprint_hex(&self.public.fingerprint())
    }

    /// The certificate, ASCII-armored.
    pub fn armored(&self) -> Result<String, PgpError> {
        self.certificate
            .to_armored_string(ArmorOptions::default())
            .map_err(ca_err)
    }

    /// The certificate, binary.
    pub fn binary(&self) -> Result<Vec<u8>, PgpError> {
        self.certificate.to_bytes().map_err(ca_err)
    }
}
