//! X.509 issuance by profile.
//!
//! ```text
//! IssueRequest ─► profile ─► CSR: parse, key policy, verify self-signature
//!                         ─► subject / SANs / validity checked against the profile
//!                         ─► extensions (SKI/AKI always by the signer) ─► TBS (DER, our encoder)
//!                         ─► lint ─► hash on the host ─► HSM signs the digest
//!                         ─► certificate assembled, parsed back, signature verified
//! ```
//!
//! The TBS is encoded with a small DER writer ([`derw`]) so that every byte
//! is decided here; `x509-cert` supplies extension value types and parses
//! the result back as a check.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod crl;
pub mod csr;
pub mod derw;
pub mod fuzzing;
pub mod issue;
pub mod name;
pub mod names;
pub mod profile;
pub mod setup;
pub mod time;

pub use csr::{Csr, CsrError, SubjectKey};
pub use issue::{
    random_serial, serial_in_shard, shard_of, shard_url, sharded_serial, verify_issued, CaSigner,
    IssueError, IssueRequest, Issued, Issuer, San,
};
pub use profile::Profile;

/// SHA-256 of a certificate's SubjectPublicKeyInfo, hex: how a repository
/// names the key of each CA it belongs to.
pub fn spki_sha256(cert_der: &[u8]) -> Result<String, String> {
    use der::{Decode, Encode};
    use sha2::Digest;
    let cert = x509_cert::Certificate::from_der(cert_der).map_err(|e| e.to_string())?;
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| e.to_string())?;
    Ok(hex::encode(sha2::Sha256::digest(spki)))
}

/// PEM armour for a certificate.
pub fn cert_pem(der: &[u8]) -> String {
    der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, der).unwrap_or_default()
}

/// Reads one certificate from PEM or DER.
pub fn cert_der(input: &[u8]) -> Result<Vec<u8>, String> {
    let start = input
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(0);
    if input[start..].starts_with(b"-----BEGIN") {
        let (label, der) =
            der::pem::decode_vec(&input[start..]).map_err(|e| format!("PEM: {e}"))?;
        if label != "CERTIFICATE" {
            return Err(format!("PEM label {label}, expected CERTIFICATE"));
        }
        Ok(der)
    } else {
        Ok(input.to_vec())
    }
}
