//! OpenPGP key certification with the CA's HSM-held key.
//!
//! ```text
//! user key (binary or armored) ─► inspect: one public key, v4, algorithm policy,
//!                                  self-signatures verify, not revoked or expired
//!            requested user IDs ─► each present, its newest self-signature a
//!                                  valid certification (not revoked, not expired)
//!                                ─► certification signature per user ID:
//!                                   hash on the host, HsmSigner signs the digest
//!                                ─► the key with the new certifications
//! ```
//!
//! The CA's OpenPGP certificate is derived from an HSM key pair and a fixed
//! creation time, so its fingerprint never changes; `signerd setup openpgp`
//! writes it once with a self-signed user ID ([`ca_certificate`]).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod cakey;
mod certify;
pub mod fuzzing;

pub use cakey::{ca_certificate, public_key_packet, CaCertificate, HsmSigner};
pub use certify::{certify, inspect, verify_certified, Certified, UserKey};

use pgp::crypto::hash::HashAlgorithm;
use serde::{Deserialize, Serialize};
use signer_keys::HsmError;

/// Why a key cannot be certified or the CA key cannot be used. Each variant
/// has its own wire status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgpError {
    /// Not an OpenPGP transferable public key (or several keys, or unreadable armor).
    #[error("not an OpenPGP public key: {0}")]
    Malformed(String),
    /// A secret key was sent.
    #[error(
        "a secret key was sent; send the public key only (gpg --export, not --export-secret-keys)"
    )]
    SecretKey,
    /// A self-signature does not verify, or a user ID has none.
    #[error("self-signature does not verify: {0}")]
    BadSelfSignature(String),
    /// The key's version, algorithm or a self-signature's hash is refused by the policy.
    #[error("algorithm not allowed: {0}")]
    AlgorithmNotAllowed(String),
    /// The key is too small (or too large).
    #[error("weak key: {0}")]
    WeakKey(String),
    /// A requested user ID is not on the key.
    #[error("user ID not on the key: {0:?}")]
    UserIdNotFound(String),
    /// A requested user ID was revoked by the key's owner.
    #[error("user ID revoked: {0:?}")]
    UserIdRevoked(String),
    /// A requested user ID's self-signature has expired.
    #[error("user ID expired: {0:?}")]
    UserIdExpired(String),
    /// The key was revoked by its owner.
    #[error("the key is revoked: {0}")]
    KeyRevoked(String),
    /// The key has expired.
    #[error("the key expired: {0}")]
    KeyExpired(String),
    /// The requested certification expiry is in the past or beyond the maximum.
    #[error("certification expiry: {0}")]
    Expiry(String),
    /// The key is larger than the policy's limit.
    #[error("the key is {size} bytes; at most {max} are accepted")]
    TooLarge {
        /// Bytes received.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The HSM failed to sign.
    #[error("{0}")]
    Hsm(HsmError),
    /// The CA's OpenPGP key or certificate is not usable.
    #[error("OpenPGP CA key: {0}")]
    CaKey(String),
}

/// A public-key algorithm a user key may use (primary key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// RSA (within `rsa_min_bits`..`rsa_max_bits`).
    Rsa,
    /// EdDSA on Ed25519 (the legacy v4 form and RFC 9580's).
    Ed25519,
    /// ECDSA on NIST P-256.
    P256,
    /// ECDSA on NIST P-384.
    P384,
    /// ECDSA on NIST P-521.
    P521,
}

/// A hash algorithm named in the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyHash {
    /// SHA-1 (refused by default).
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
    /// SHA3-256.
    Sha3_256,
    /// SHA3-512.
    Sha3_512,
}

impl PolicyHash {
    fn algorithm(self) -> HashAlgorithm {
        match self {
            PolicyHash::Sha1 => HashAlgorithm::Sha1,
            PolicyHash::Sha224 => HashAlgorithm::Sha224,
            PolicyHash::Sha256 => HashAlgorithm::Sha256,
            PolicyHash::Sha384 => HashAlgorithm::Sha384,
            PolicyHash::Sha512 => HashAlgorithm::Sha512,
            PolicyHash::Sha3_256 => HashAlgorithm::Sha3_256,
            PolicyHash::Sha3_512 => HashAlgorithm::Sha3_512,
        }
    }
}

/// What the signer accepts and how it certifies (`ca.openpgp` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Certification signature type: 0x10 generic, 0x11 persona, 0x12 casual, 0x13 positive.
    #[serde(default = "default_level")]
    pub certification_level: u8,
    /// Hash of the certification signatures (SHA-256 or stronger).
    #[serde(default = "default_hash")]
    pub hash: signer_keys::Hash,
    /// Longest certification lifetime, in days.
    #[serde(default = "default_max_days")]
    pub max_days: u32,
    /// Largest key accepted, in bytes (binary form; armored input may be a third larger).
    #[serde(default = "default_max_key_bytes")]
    pub max_key_bytes: usize,
    /// Primary key algorithms accepted.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// Smallest RSA modulus accepted.
    #[serde(default = "default_rsa_min")]
    pub rsa_min_bits: u32,
    /// Largest RSA modulus accepted.
    #[serde(default = "default_rsa_max")]
    pub rsa_max_bits: u32,
    /// Hashes a self-signature may use to count.
    #[serde(default = "default_self_hashes")]
    pub self_signature_hashes: Vec<PolicyHash>,
}

fn default_level() -> u8 {
    0x10
}
fn default_hash() -> signer_keys::Hash {
    signer_keys::Hash::Sha256
}
fn default_max_days() -> u32 {
    730
}
fn default_max_key_bytes() -> usize {
    65_536
}
fn default_algorithms() -> Vec<Algorithm> {
    vec![
        Algorithm::Rsa,
        Algorithm::Ed25519,
        Algorithm::P256,
        Algorithm::P384,
        Algorithm::P521,
    ]
}
fn default_rsa_min() -> u32 {
    2048
}
fn default_rsa_max() -> u32 {
    8192
}
fn default_self_hashes() -> Vec<PolicyHash> {
    vec![
        PolicyHash::Sha224,
        PolicyHash::Sha256,
        PolicyHash::Sha384,
        PolicyHash::Sha512,
        PolicyHash::Sha3_256,
        PolicyHash::Sha3_512,
    ]
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            certification_level: default_level(),
            hash: default_hash(),
            max_days: default_max_days(),
            max_key_bytes: default_max_key_bytes(),
            algorithms: default_algorithms(),
            rsa_min_bits: default_rsa_min(),
            rsa_max_bits: default_rsa_max(),
            self_signature_hashes: default_self_hashes(),
        }
    }
}

impl Policy {
    /// Checks the values a YAML file cannot constrain by type.
    pub fn validate(&self) -> Result<(), String> {
        if !(0x10..=0x13).contains(&self.certification_level) {
            return Err(format!(
                "certification_level must be 0x10-0x13 (16-19), not {}",
                self.certification_level
            ));
        }
        if self.max_days == 0 || self.max_days > 3650 {
            return Err("max_days must be 1-3650".into());
        }
        if !(1024..=1_048_576).contains(&self.max_key_bytes) {
            return Err("max_key_bytes must be 1024-1048576".into());
        }
        if self.algorithms.is_empty() {
            return Err("algorithms must name at least one algorithm".into());
        }
        if self.rsa_min_bits < 1024 || self.rsa_min_bits > self.rsa_max_bits {
            return Err("rsa_min_bits must be at least 1024 and not above rsa_max_bits".into());
        }
        if self.self_signature_hashes.is_empty() {
            return Err("self_signature_hashes must name at least one hash".into());
        }
        Ok(())
    }

    fn allows_hash(&self, hash: HashAlgorithm) -> bool {
        self.self_signature_hashes
            .iter()
            .any(|h| h.algorithm() == hash)
    }
}

fn hash_algorithm(hash: signer_keys::Hash) -> HashAlgorithm {
    match hash {
        signer_keys::Hash::Sha256 => HashAlgorithm::Sha256,
        signer_keys::Hash::Sha384 => HashAlgorithm::Sha384,
        signer_keys::Hash::Sha512 => HashAlgorithm::Sha512,
    }
}

/// An OpenPGP fingerprint as upper-case hex (as gpg prints it).
pub fn fingerprint_hex(fpr: &pgp::types::Fingerprint) -> String {
    hex::encode_upper(fpr.as_bytes())
}

/// ASCII armor of a binary public key (RFC 9580 section 6, with CRC-24).
pub fn armor_public_key(binary: &[u8]) -> String {
    use base64::Engine as _;
    let encode = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut out = String::from("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n");
    for line in encode(binary).as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    let crc = crc24(binary).to_be_bytes();
    out.push('=');
    out.push_str(&encode(&crc[1..]));
    out.push_str("\n-----END PGP PUBLIC KEY BLOCK-----\n");
    out
}

fn crc24(data: &[u8]) -> u32 {
    let mut crc: u32 = 0xB7_04CE;
    for &byte in data {
        crc ^= u32::from(byte) << 16;
        for _ in 0..8 {
            crc <<= 1;
            if crc & 0x100_0000 != 0 {
                crc ^= 0x186_4CFB;
            }
        }
    }
    crc & 0xFF_FFFF
}
