//! Keys as the signer sees them, whatever holds them: the signing trait
//! every key backend implements, key kinds and signature schemes, and the
//! small DER encodings around them. Nothing here loads a PKCS#11 module, so
//! the formats crates (`signer-x509`, `signer-openpgp`) and the client
//! library depend on this crate only.
//!
//! ```text
//! issuer / certifier ─► SigningBackend::sign_digest(key, scheme, digest)
//!                             │
//!                             ├─ signer-hsm: Pkcs11Backend (sessions, key handles, backoff)
//!                             └─ (another backend: same trait, same conformance suite)
//! ```
//!
//! The host hashes; the backend signs the digest, so a large to-be-signed
//! structure never streams through the token. ECDSA signatures are returned
//! DER-encoded, as X.509 wants.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod conformance;
mod der_util;

pub use der_util::{
    ecdsa_raw_to_der, spki_ec, spki_ed25519, spki_rsa, EC_PUBLIC_KEY, ED25519, RSA_ENCRYPTION,
    SECP256R1, SECP384R1,
};

use serde::{Deserialize, Serialize};

/// A digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hash {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl Hash {
    /// Digest of `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            Hash::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Hash::Sha384 => sha2::Sha384::digest(data).to_vec(),
            Hash::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }

    /// Digest length in bytes.
    pub fn len(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    /// Always false: digests are never empty (for clippy's `len` convention).
    pub fn is_empty(self) -> bool {
        false
    }
}

/// How a signature is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// RSASSA-PKCS1-v1_5.
    RsaPkcs1(Hash),
    /// RSASSA-PSS with MGF1 of the same hash and a salt as long as the hash.
    RsaPss(Hash),
    /// ECDSA.
    Ecdsa(Hash),
    /// Pure Ed25519 (RFC 8032): the bytes given to `sign_digest` are the
    /// message itself, not a digest (the audit log's checkpoints and
    /// cosignatures: short notes).
    Ed25519,
}

impl Scheme {
    /// The digest algorithm (Ed25519: SHA-512, which it applies itself).
    pub fn hash(self) -> Hash {
        match self {
            Scheme::RsaPkcs1(h) | Scheme::RsaPss(h) | Scheme::Ecdsa(h) => h,
            Scheme::Ed25519 => Hash::Sha512,
        }
    }

    /// What `sign_digest` takes for `message` with this scheme: its digest,
    /// or (Ed25519) the message itself.
    pub fn prepare(self, message: &[u8]) -> Vec<u8> {
        match self {
            Scheme::Ed25519 => message.to_vec(),
            other => other.hash().digest(message),
        }
    }
}

/// The kind and size of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// RSA with a modulus of this many bits.
    Rsa {
        /// Modulus length.
        bits: u32,
    },
    /// ECDSA on NIST P-256.
    EcP256,
    /// ECDSA on NIST P-384.
    EcP384,
    /// Ed25519 (the audit log's checkpoint and cosigning keys only).
    Ed25519,
}

impl KeyKind {
    /// True for RSA keys.
    pub fn is_rsa(self) -> bool {
        matches!(self, KeyKind::Rsa { .. })
    }

    /// Whether `scheme` can be used with this kind of key.
    pub fn supports(self, scheme: Scheme) -> bool {
        matches!(
            (self, scheme),
            (KeyKind::Rsa { .. }, Scheme::RsaPkcs1(_) | Scheme::RsaPss(_))
                | (KeyKind::EcP256 | KeyKind::EcP384, Scheme::Ecdsa(_))
                | (KeyKind::Ed25519, Scheme::Ed25519)
        )
    }
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyKind::Rsa { bits } => write!(f, "RSA-{bits}"),
            KeyKind::EcP256 => f.write_str("ECDSA P-256"),
            KeyKind::EcP384 => f.write_str("ECDSA P-384"),
            KeyKind::Ed25519 => f.write_str("Ed25519"),
        }
    }
}

/// A public key as the HSM holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// Kind and size.
    pub kind: KeyKind,
    /// DER SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
}

/// Why key access failed. "No such key" is kept apart from "the backend failed".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HsmError {
    /// The configured key is not on the token.
    #[error("key {0} not found on the token")]
    KeyNotFound(String),
    /// The key name is not configured.
    #[error("no key named {0} is configured")]
    UnknownKey(String),
    /// The token or module cannot be reached now; it may come back.
    #[error("HSM unavailable: {0}")]
    Unavailable(String),
    /// The token refused in a way that retrying will not fix.
    #[error("HSM failure: {0}")]
    Failed(String),
    /// The key cannot do what was asked (scheme, algorithm).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The token refused the PIN (incorrect, locked, expired).
    #[error("PIN: {0}")]
    Pin(String),
    /// The PIN could not be read from its configured source (a file, a
    /// variable, a systemd credential): a configuration problem, nothing
    /// was sent to the token.
    #[error("the PIN could not be read: {0}")]
    PinSource(String),
}

impl HsmError {
    /// True where the same call may succeed later without operator action.
    pub fn is_transient(&self) -> bool {
        matches!(self, HsmError::Unavailable(_))
    }
}

/// The state of one configured key, for health reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    /// Configured key name.
    pub name: String,
    /// Whether the last operation succeeded.
    pub available: bool,
    /// Whether a session is logged in.
    pub logged_in: bool,
    /// Duration of the last signature, in microseconds.
    pub last_sign_us: Option<u64>,
    /// The last error, if the last operation failed.
    pub last_error: Option<String>,
}

/// Signs with keys it holds. Handlers see only this trait.
pub trait SigningBackend: Send + Sync {
    /// The public key of a configured key.
    fn public_key(&self, key: &str) -> Result<PublicKey, HsmError>;

    /// Signs a digest already computed with `scheme.hash()`. Returns the
    /// signature value as X.509 carries it (DER for ECDSA). May be called
    /// from many threads at once; how a backend spreads calls over its
    /// sessions is its own business.
    fn sign_digest(&self, key: &str, scheme: Scheme, digest: &[u8]) -> Result<Vec<u8>, HsmError>;

    /// Per-key status.
    fn status(&self) -> Vec<KeyStatus>;
}

/// DigestInfo prefix for RSASSA-PKCS1-v1_5 (RFC 8017, section 9.2, note 1).
pub fn digest_info_prefix(hash: Hash) -> &'static [u8] {
    match hash {
        Hash::Sha256 => &[
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ],
        Hash::Sha384 => &[
            0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x02, 0x05, 0x00, 0x04, 0x30,
        ],
        Hash::Sha512 => &[
            0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x03, 0x05, 0x00, 0x04, 0x40,
        ],
    }
}

impl PublicKey {
    /// Reads a DER SubjectPublicKeyInfo of a key kind the signer uses
    /// (RSA, ECDSA P-256 or P-384, Ed25519).
    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey, HsmError> {
        use der::{asn1::ObjectIdentifier, Decode};
        let bad = |m: String| HsmError::Unsupported(format!("public key: {m}"));
        let spki = spki::SubjectPublicKeyInfoRef::from_der(der).map_err(|e| bad(e.to_string()))?;
        let kind = if spki.algorithm.oid == RSA_ENCRYPTION {
            #[derive(der::Sequence)]
            struct RsaKey<'a> {
                modulus: der::asn1::UintRef<'a>,
                #[allow(dead_code)]
                exponent: der::asn1::UintRef<'a>,
            }
            let key = RsaKey::from_der(spki.subject_public_key.raw_bytes())
                .map_err(|e| bad(format!("RSA key: {e}")))?;
            let m = key.modulus.as_bytes();
            let bits = (m.len() * 8) as u32 - m.first().map_or(0, |b| b.leading_zeros());
            KeyKind::Rsa { bits }
        } else if spki.algorithm.oid == EC_PUBLIC_KEY {
            let curve: ObjectIdentifier = spki
                .algorithm
                .parameters
                .ok_or_else(|| bad("EC key without a curve".into()))?
                .decode_as()
                .map_err(|e| bad(format!("EC curve: {e}")))?;
            match curve {
                c if c == SECP256R1 => KeyKind::EcP256,
                c if c == SECP384R1 => KeyKind::EcP384,
                c => return Err(bad(format!("curve {c} is not supported"))),
            }
        } else if spki.algorithm.oid == ED25519 {
            if spki.algorithm.parameters.is_some()
                || spki.subject_public_key.raw_bytes().len() != 32
            {
                return Err(bad("an Ed25519 key has no parameters and 32 bytes".into()));
            }
            KeyKind::Ed25519
        } else {
            return Err(bad(format!(
                "algorithm {} is not supported",
                spki.algorithm.oid
            )));
        };
        Ok(PublicKey {
            kind,
            spki_der: der.to_vec(),
        })
    }

    /// The key as PEM ("PUBLIC KEY"), for exchanging between twins.
    pub fn to_pem(&self) -> String {
        der::pem::encode_string("PUBLIC KEY", der::pem::LineEnding::LF, &self.spki_der)
            .unwrap_or_default()
    }

    /// Reads a PEM "PUBLIC KEY" (see [`PublicKey::to_pem`]).
    pub fn from_pem(text: &str) -> Result<PublicKey, HsmError> {
        let (label, der) = der::pem::decode_vec(text.trim().as_bytes())
            .map_err(|e| HsmError::Unsupported(format!("public key PEM: {e}")))?;
        if label != "PUBLIC KEY" {
            return Err(HsmError::Unsupported(format!(
                "expected a PEM PUBLIC KEY, found {label}"
            )));
        }
        PublicKey::from_spki_der(&der)
    }

    /// The scheme the signer uses with a key of this kind for its own
    /// authenticators (replication seals): ECDSA with the curve's hash,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    pub fn default_scheme(&self) -> Scheme {
        match self.kind {
            KeyKind::EcP256 => Scheme::Ecdsa(Hash::Sha256),
            KeyKind::EcP384 => Scheme::Ecdsa(Hash::Sha384),
            KeyKind::Rsa { .. } => Scheme::RsaPkcs1(Hash::Sha256),
            KeyKind::Ed25519 => Scheme::Ed25519,
        }
    }

    /// The raw 32 bytes of an Ed25519 key.
    pub fn ed25519_bytes(&self) -> Option<[u8; 32]> {
        use der::Decode;
        if self.kind != KeyKind::Ed25519 {
            return None;
        }
        let spki = spki::SubjectPublicKeyInfoRef::from_der(&self.spki_der).ok()?;
        spki.subject_public_key.raw_bytes().try_into().ok()
    }

    /// Verifies `signature` over `message` made with this key and `scheme`
    /// (independently of any backend: `ring`).
    pub fn verify(&self, scheme: Scheme, message: &[u8], signature: &[u8]) -> Result<(), String> {
        conformance::verify(self, scheme, message, signature)
    }
}

/// Makes keys. Only the key ceremony uses this; handlers never do.
pub trait KeyGenerator: SigningBackend {
    /// Refuses a label some object on the token already has.
    fn check_label_free(&self, label: &str) -> Result<(), HsmError>;

    /// Generates a key pair that never leaves the backend (sensitive,
    /// not extractable) under `label`; returns its public key and the
    /// backend's identifier for it (`CKA_ID` for PKCS#11).
    fn generate(&self, kind: KeyKind, label: &str) -> Result<(PublicKey, Vec<u8>), HsmError>;
}
