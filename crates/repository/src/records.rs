//! The records the repository keeps, as they are stored (msgpack, sealed
//! with their table's CRC; see `sealed`) and replicated.

use serde::{Deserialize, Serialize};

use crate::schema::{CERTS, REQUESTS, REVOCATIONS};
use crate::{sealed, RepoError};
use redb::TableHandle;
use std::collections::BTreeMap;

/// An issued certificate and what the signer knows about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// Issuer (CA) name as configured.
    pub issuer: String,
    /// Serial number, big-endian bytes as encoded in the certificate.
    pub serial: Vec<u8>,
    /// The certificate, DER.
    #[serde(with = "b64")]
    pub der: Vec<u8>,
    /// Profile used.
    pub profile: String,
    /// The client's idempotency key.
    pub request_id: String,
    /// SHA-256 of the request that produced it (detects a reused request id).
    #[serde(with = "b64")]
    pub request_digest: Vec<u8>,
    /// Subject, RFC 4514 string.
    pub subject: String,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// When it was issued, Unix milliseconds.
    pub issued_at_ms: i64,
    /// Which signer issued it.
    pub signer_id: String,
}

/// Binary fields of the records: msgpack `bin` where stored and
/// replicated (records written before kept them as base64 text, which is
/// still read), base64 text in human-readable formats (JSON).
mod b64 {
    use base64::Engine as _;
    use serde::de::{Error, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
        } else {
            s.serialize_bytes(v)
        }
    }

    struct BytesOrText;

    impl<'de> Visitor<'de> for BytesOrText {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("bytes, or base64 text")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<Vec<u8>, E> {
            base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(E::custom)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            d.deserialize_str(BytesOrText)
        } else {
            d.deserialize_bytes(BytesOrText)
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct RequestEntry {
    pub(crate) issuer: String,
    pub(crate) serial: Vec<u8>,
    pub(crate) digest: Vec<u8>,
}

/// A revocation as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationRecord {
    /// Issuer (CA) name as configured.
    pub issuer: String,
    /// Serial number, unsigned big-endian, no leading zero octets.
    pub serial: Vec<u8>,
    /// RFC 5280 CRLReason code.
    pub reason: u8,
    /// When the signer recorded it, Unix seconds (the CRL's revocationDate).
    pub revoked_at: i64,
    /// When the key is believed compromised or the certificate unfit, Unix seconds.
    pub invalidity_date: Option<i64>,
    /// The client's request id.
    pub request_id: String,
    /// True for a serial this signer did not issue (migrated from a legacy CA).
    pub legacy: bool,
    /// Which signer recorded it.
    pub signer_id: String,
    /// The certificate's notAfter (Unix seconds) where known: expired entries
    /// leave the CRL after a grace period.
    #[serde(default)]
    pub cert_not_after: Option<i64>,
    /// The issuer's revocation counter value this revocation set (1, 2, …):
    /// a CRL made at counter N holds exactly the revocations with seq ≤ N
    /// (less expired ones).
    #[serde(default)]
    pub seq: u64,
    /// True when this record replaced an earlier revocation of the serial
    /// (the twins' merge rule): a CRL difference then removes and adds it.
    #[serde(default)]
    pub replaced: bool,
}

/// What is kept of every CRL signed (its DER only for the latest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrlMeta {
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// The revocation counter it reflects.
    pub revocation_seq: u64,
    /// SHA-256 of its DER.
    pub sha256: Vec<u8>,
    /// Entries.
    pub entries: u64,
    /// DER size in bytes.
    pub size: u64,
}

/// The last CRL signed for an issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrlRecord {
    /// Issuer (CA) name.
    pub issuer: String,
    /// CRL number, unsigned big-endian.
    pub number: Vec<u8>,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds.
    pub next_update: i64,
    /// The issuer's revocation counter the CRL reflects.
    pub revocation_seq: u64,
    /// Entries in the CRL.
    pub entries: u64,
    /// SHA-256 of the DER.
    #[serde(with = "b64")]
    pub sha256: Vec<u8>,
    /// The CRL, DER.
    #[serde(with = "b64")]
    pub der: Vec<u8>,
}

impl CrlRecord {
    /// A copy of everything but the DER (left empty).
    pub(crate) fn clone_without_der(&self) -> CrlRecord {
        CrlRecord {
            issuer: self.issuer.clone(),
            number: self.number.clone(),
            this_update: self.this_update,
            next_update: self.next_update,
            revocation_seq: self.revocation_seq,
            entries: self.entries,
            sha256: self.sha256.clone(),
            der: Vec::new(),
        }
    }
}

/// What recording a revocation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// Newly revoked; durable.
    Inserted,
    /// Already revoked with the same reason: the original record.
    Existing(Box<RevocationRecord>),
    /// Already revoked with another reason: the original record; nothing changed.
    Conflict(Box<RevocationRecord>),
    /// The issuer never issued this serial (and unknown serials are not accepted).
    UnknownSerial,
}

/// What recording an issuance did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The record is now durable.
    Inserted,
    /// The request id was already recorded: this is the original record;
    /// the new certificate was not stored (and must not be handed out).
    Existing(Box<CertRecord>),
}

pub(crate) fn decode(bytes: &[u8]) -> Result<CertRecord, RepoError> {
    sealed::open(CERTS.name(), bytes)
}

pub(crate) fn decode_request(bytes: &[u8]) -> Result<RequestEntry, RepoError> {
    sealed::open(REQUESTS.name(), bytes)
}

pub(crate) fn decode_revocation(bytes: &[u8]) -> Result<RevocationRecord, RepoError> {
    sealed::open(REVOCATIONS.name(), bytes)
}

/// A certificate record, sealed for its table.
pub(crate) fn encode_cert(r: &CertRecord) -> Result<Vec<u8>, RepoError> {
    sealed::seal_compact(CERTS.name(), r)
}

/// A certificate record's request id entry, sealed for its table.
pub(crate) fn encode_request_entry(r: &CertRecord) -> Result<Vec<u8>, RepoError> {
    let entry = RequestEntry {
        issuer: r.issuer.clone(),
        serial: r.serial.clone(),
        digest: r.request_digest.clone(),
    };
    sealed::seal(REQUESTS.name(), &entry)
}

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the chain: 1, 2, …
    pub seq: u64,
    /// Unix milliseconds.
    pub time_ms: i64,
    /// The signer that wrote it.
    pub signer_id: String,
    /// `command`, `startup`, `shutdown`, `setup`.
    pub kind: String,
    /// The command's name (for `command`), or the set-up action.
    pub action: String,
    /// Outcome: `ok` or the status name.
    pub outcome: String,
    /// Facts: request id, serial, issuer, CSR fingerprint, message… never
    /// secrets or whole requests.
    pub facts: BTreeMap<String, String>,
    /// The previous entry's hash (32 zero octets for the first).
    #[serde(with = "serde_bytes")]
    pub prev: Vec<u8>,
    /// SHA-256(prev ‖ this entry encoded with an empty `hash`).
    #[serde(with = "serde_bytes")]
    pub hash: Vec<u8>,
}

/// The certifications made for one `certify_openpgp` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificationRecord {
    /// The client's request id.
    pub request_id: String,
    /// SHA-256 of the request's canonical encoding.
    #[serde(with = "serde_bytes")]
    pub request_digest: Vec<u8>,
    /// The user key's fingerprint, upper-case hex.
    pub fingerprint: String,
    /// The CA key's fingerprint, upper-case hex.
    pub ca_fingerprint: String,
    /// (user ID, signature packet with header), in request order.
    pub certifications: Vec<(String, serde_bytes::ByteBuf)>,
    /// The key with the certifications, binary, as returned.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Signature creation time, Unix seconds.
    pub created_at: i64,
    /// Signature expiration, Unix seconds.
    pub expires_at: i64,
    /// Which signer made them.
    pub signer_id: String,
}

/// A request id the twins used for different certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The request id.
    pub request_id: String,
    /// The certificate this signer holds under it (issuer, serial hex).
    pub local: (String, String),
    /// The certificate the twin issued under it.
    pub remote: (String, String),
    /// The twin.
    pub origin: String,
    /// When it was found, Unix milliseconds.
    pub found_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> CertRecord {
        CertRecord {
            issuer: "sub".into(),
            serial: vec![0x41, 2],
            der: (0..=255u8).cycle().take(1028).collect(),
            profile: "server".into(),
            request_id: "r-1".into(),
            request_digest: vec![7; 32],
            subject: "CN=x".into(),
            not_before: 1,
            not_after: 2,
            issued_at_ms: 3,
            signer_id: "a".into(),
        }
    }

    /// The layout records had when binary fields were base64 text.
    #[derive(Serialize)]
    struct Before<'a> {
        issuer: &'a str,
        serial: &'a [u8],
        der: String,
        profile: &'a str,
        request_id: &'a str,
        request_digest: String,
        subject: &'a str,
        not_before: i64,
        not_after: i64,
        issued_at_ms: i64,
        signer_id: &'a str,
    }

    #[test]
    fn der_is_stored_as_bytes_and_records_in_base64_are_still_read() {
        let r = cert();
        let now = rmp_serde::to_vec_named(&r).unwrap();
        assert!(now.len() < r.der.len() + 200, "{} bytes", now.len());
        assert_eq!(rmp_serde::from_slice::<CertRecord>(&now).unwrap(), r);
        let b64 = |v: &[u8]| crate::b64(v);
        let old = rmp_serde::to_vec_named(&Before {
            issuer: &r.issuer,
            serial: &r.serial,
            der: b64(&r.der),
            profile: &r.profile,
            request_id: &r.request_id,
            request_digest: b64(&r.request_digest),
            subject: &r.subject,
            not_before: r.not_before,
            not_after: r.not_after,
            issued_at_ms: r.issued_at_ms,
            signer_id: &r.signer_id,
        })
        .unwrap();
        assert!(old.len() > now.len() + 300);
        assert_eq!(rmp_serde::from_slice::<CertRecord>(&old).unwrap(), r);
        // Text that is not base64 is a decoding error, not a record.
        let mut bad = old.clone();
        let at = bad.windows(3).position(|w| w == b"der").unwrap() + 6;
        bad[at] = b'!';
        assert!(rmp_serde::from_slice::<CertRecord>(&bad).is_err());
        // JSON keeps base64 text.
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(&b64(&r.der)));
        assert_eq!(serde_json::from_str::<CertRecord>(&json).unwrap(), r);
    }
}

#[cfg(test)]
mod compact_tests {
    use super::*;

    fn revocation() -> RevocationRecord {
        RevocationRecord {
            issuer: "sub".into(),
            serial: vec![0x21, 0x80, 3],
            reason: 1,
            revoked_at: 1_700_000_000,
            invalidity_date: Some(1_699_000_000),
            request_id: "r-1".into(),
            legacy: false,
            signer_id: "a".into(),
            cert_not_after: Some(1_800_000_000),
            seq: 7,
            replaced: true,
        }
    }

    #[test]
    fn records_stored_in_order_or_by_name_read_the_same() {
        let r = revocation();
        let compact = sealed::seal_compact(REVOCATIONS.name(), &r).unwrap();
        let named = sealed::seal(REVOCATIONS.name(), &r).unwrap();
        assert!(
            compact.len() + 60 < named.len(),
            "{} / {}",
            compact.len(),
            named.len()
        );
        assert_eq!(decode_revocation(&compact).unwrap(), r);
        assert_eq!(decode_revocation(&named).unwrap(), r);
        // What a CRL reads of it, from either form.
        for bytes in [&compact, &named] {
            let view: crate::CrlView = sealed::open(REVOCATIONS.name(), bytes).unwrap();
            assert_eq!(
                (
                    view.serial,
                    view.reason,
                    view.revoked_at,
                    view.invalidity_date
                ),
                (r.serial.clone(), r.reason, r.revoked_at, r.invalidity_date)
            );
            assert_eq!(
                (view.cert_not_after, view.seq, view.replaced),
                (r.cert_not_after, r.seq, r.replaced)
            );
        }
        // A record from before the later fields existed: they default.
        #[derive(Serialize)]
        struct Early<'a>(
            &'a str,
            &'a [u8],
            u8,
            i64,
            Option<i64>,
            &'a str,
            bool,
            &'a str,
        );
        let early =
            rmp_serde::to_vec(&Early("sub", &r.serial, 1, 5, None, "r", false, "a")).unwrap();
        let mut sealed_early = early.clone();
        let mut h = crc32fast::Hasher::new();
        h.update(REVOCATIONS.name().as_bytes());
        h.update(&[0]);
        h.update(&early);
        sealed_early.extend_from_slice(&h.finalize().to_be_bytes());
        let back = decode_revocation(&sealed_early).unwrap();
        assert_eq!(
            (back.seq, back.cert_not_after, back.replaced),
            (0, None, false)
        );
        let cert = encode_cert(&CertRecord {
            issuer: "sub".into(),
            serial: vec![1],
            der: vec![0x30, 0],
            profile: "p".into(),
            request_id: "r".into(),
            request_digest: vec![9; 32],
            subject: "CN=x".into(),
            not_before: 1,
            not_after: 2,
            issued_at_ms: 3,
            signer_id: "a".into(),
        })
        .unwrap();
        assert_eq!(decode(&cert).unwrap().request_id, "r");
    }
}
