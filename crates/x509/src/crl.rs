//! CRL encoding (RFC 5280, section 5): v2, entries in the order given
//! (callers give numeric serial order), reason codes (none for
//! unspecified), invalidity dates, and the CRL extensions authority key
//! identifier (the issuer's own SKI) and CRL number; a shard's CRL (a
//! partitioned CRL) also a critical issuing distribution point naming the
//! shard's URL, byte for byte as its certificates' CRL distribution point.
//!
//! One buffer holds the whole CRL: entries are appended as they come, the
//! TBS header is written afterwards into space reserved in front of them,
//! so memory stays at the CRL's own size.

use const_oid::ObjectIdentifier;
use signer_keys::{Scheme, SigningBackend};

use crate::derw::{self, header_len, push_len};
use crate::issue::{algorithm_identifier, verify_signature, CaSigner, IssueError};
use crate::time;

const REASON_CODE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.21");
const INVALIDITY_DATE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.24");
const AUTHORITY_KEY_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.35");
const CRL_NUMBER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.20");
const ISSUING_DISTRIBUTION_POINT: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.28");

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
    algorithm: Vec<u8>,
    tbs_start: usize,
    tbs_len: usize,
}

/// The fields of a CRL besides its entries and signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// signature AlgorithmIdentifier, DER.
    pub algorithm: Vec<u8>,
    /// issuer Name, DER.
    pub issuer: Vec<u8>,
    /// The issuer's key identifier (authorityKeyIdentifier keyIdentifier).
    pub key_id: Vec<u8>,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds.
    pub next_update: i64,
    /// cRLNumber, unsigned big-endian.
    pub number: Vec<u8>,
    /// A shard's CRL: the URL its issuing distribution point names (the
    /// shard's certificates name it as their CRL distribution point).
    pub shard_url: Option<String>,
}

/// The issuing distribution point extension of a shard's CRL (RFC 5280
/// 5.2.5, BR 7.2.2): critical; distributionPoint fullName the one URI
/// the shard's certificates carry, onlyContainsUserCerts TRUE (shards are
/// for issuers of subscriber certificates).
pub fn issuing_distribution_point(url: &str) -> Vec<u8> {
    let value = derw::seq(&[
        &derw::tlv(0xa0, &derw::tlv(0xa0, &derw::tlv(0x86, url.as_bytes()))),
        &[0x81, 0x01, 0xff],
    ]);
    derw::seq(&[
        &derw::oid(&ISSUING_DISTRIBUTION_POINT),
        &[0x01, 0x01, 0xff],
        &derw::octet_string(&value),
    ])
}

/// The URL of an issuing distribution point made by
/// [`issuing_distribution_point`], from the extension's value.
fn shard_url_of(value: &[u8]) -> Result<String, String> {
    let bad = || "an issuing distribution point this signer does not make".to_string();
    let (h, seq, _) = next_tlv(value).ok_or_else(bad)?;
    let (h1, dp, rest) = next_tlv(&seq[h..]).ok_or_else(bad)?;
    if seq[0] != 0x30 || dp[0] != 0xa0 || rest != [0x81, 0x01, 0xff] {
        return Err(bad());
    }
    let (h2, full, _) = next_tlv(&dp[h1..]).ok_or_else(bad)?;
    let (h3, uri, _) = next_tlv(&full[h2..]).ok_or_else(bad)?;
    if full[0] != 0xa0 || uri[0] != 0x86 || h1 + full.len() != dp.len() {
        return Err(bad());
    }
    String::from_utf8(uri[h3..].to_vec()).map_err(|_| bad())
}

/// An entry as owned data (for differences and rebuilds).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OwnedEntry {
    /// Serial, unsigned big-endian, no leading zero octets.
    pub serial: Vec<u8>,
    /// revocationDate, Unix seconds.
    pub revoked_at: i64,
    /// CRLReason code.
    pub reason: u8,
    /// invalidityDate, Unix seconds.
    pub invalidity_date: Option<i64>,
}

impl OwnedEntry {
    /// The numeric order of serials: shorter (minimal) encodings are smaller numbers.
    pub fn order_key(&self) -> (usize, &[u8]) {
        (self.serial.len(), &self.serial)
    }

    fn as_entry(&self) -> CrlEntry<'_> {
        CrlEntry {
            serial: &self.serial,
            revoked_at: self.revoked_at,
            reason: self.reason,
            invalidity_date: self.invalidity_date,
        }
    }
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

/// Appends the DER of one entry to `out` as [`encode_entry`] makes it,
/// without allocating, when it is short enough for one-octet lengths (any
/// serial of up to 20 octets is); false, with `out` unchanged, otherwise
/// (and for dates out of range: [`encode_entry`] then says why).
fn push_entry(out: &mut Vec<u8>, entry: &CrlEntry<'_>) -> bool {
    let start = out.len();
    let serial = {
        let s = entry.serial;
        let first = s
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(s.len().saturating_sub(1));
        if s.is_empty() {
            &[0u8][..]
        } else {
            &s[first..]
        }
    };
    if serial.len() > 20 {
        return false;
    }
    // SEQUENCE, length patched below; every inner length is < 128.
    out.extend_from_slice(&[0x30, 0]);
    let pad = serial[0] & 0x80 != 0;
    out.extend_from_slice(&[0x02, (serial.len() + usize::from(pad)) as u8]);
    if pad {
        out.push(0);
    }
    out.extend_from_slice(serial);
    if !time::encode_into(entry.revoked_at, false, out) {
        out.truncate(start);
        return false;
    }
    if entry.reason != 0 || entry.invalidity_date.is_some() {
        out.extend_from_slice(&[0x30, 0]);
        let exts = out.len();
        if entry.reason != 0 {
            // SEQUENCE { id-ce-cRLReasons, OCTET STRING { ENUMERATED reason } }
            out.extend_from_slice(&[
                0x30,
                0x0a,
                0x06,
                0x03,
                0x55,
                0x1d,
                0x15,
                0x04,
                0x03,
                0x0a,
                0x01,
                entry.reason,
            ]);
        }
        if let Some(when) = entry.invalidity_date {
            // SEQUENCE { id-ce-invalidityDate, OCTET STRING { GeneralizedTime } }
            out.extend_from_slice(&[0x30, 0x18, 0x06, 0x03, 0x55, 0x1d, 0x18, 0x04, 0x11]);
            if !time::encode_into(when, true, out) {
                out.truncate(start);
                return false;
            }
        }
        out[exts - 1] = (out.len() - exts) as u8;
    }
    let len = out.len() - start - 2;
    if len >= 0x80 {
        out.truncate(start);
        return false;
    }
    out[start + 1] = len as u8;
    true
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
    /// Starts a CRL of `ca` (of its shard at `shard_url`, if given) with
    /// the given times and number; `capacity` is the expected size of the
    /// entries (e.g. the last CRL's size), so the buffer is not
    /// reallocated while it grows.
    pub fn new(
        ca: &CaSigner,
        scheme: Scheme,
        this_update: i64,
        next_update: i64,
        number: &[u8],
        capacity: usize,
        shard_url: Option<&str>,
    ) -> Result<Self, IssueError> {
        let header = Header {
            algorithm: algorithm_identifier(scheme),
            issuer: ca.subject_der.clone(),
            key_id: ca.key_id.clone(),
            this_update,
            next_update,
            number: number.to_vec(),
            shard_url: shard_url.map(str::to_string),
        };
        CrlBuilder::with_header(&header, capacity)
    }

    /// Starts a CRL from its header fields (the rebuild of a CRL from a
    /// difference uses this with the fields of the client's copy).
    pub fn with_header(h: &Header, capacity: usize) -> Result<Self, IssueError> {
        let t = |u: i64| {
            time::encode(u).ok_or_else(|| IssueError::Encoding("CRL time out of range".into()))
        };
        let fixed = [
            derw::small_uint(1),
            h.algorithm.clone(),
            h.issuer.clone(),
            t(h.this_update)?,
            t(h.next_update)?,
        ]
        .concat();
        let aki = derw::seq(&[
            &derw::oid(&AUTHORITY_KEY_ID),
            &derw::octet_string(&derw::seq(&[&derw::tlv(0x80, &h.key_id)])),
        ]);
        let crl_number = derw::seq(&[
            &derw::oid(&CRL_NUMBER),
            &derw::octet_string(&derw::uint(&h.number)),
        ]);
        let idp = h
            .shard_url
            .as_deref()
            .map(issuing_distribution_point)
            .unwrap_or_default();
        let extensions = derw::explicit(0, &derw::seq(&[&aki, &crl_number, &idp]));
        let entries_start = HEADERS + fixed.len();
        let mut buf = Vec::with_capacity(entries_start + capacity + extensions.len() + 600);
        buf.resize(entries_start, 0);
        Ok(CrlBuilder {
            buf,
            fixed,
            entries_start,
            entries: 0,
            extensions,
            algorithm: h.algorithm.clone(),
            tbs_start: 0,
            tbs_len: 0,
        })
    }

    /// Appends one entry (callers give entries in numeric serial order).
    pub fn push(&mut self, entry: &CrlEntry<'_>) -> Result<(), IssueError> {
        if !push_entry(&mut self.buf, entry) {
            let encoded = encode_entry(entry)?;
            self.buf.extend_from_slice(&encoded);
        }
        self.entries += 1;
        Ok(())
    }

    /// Entries so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Finishes the TBSCertList and returns it (to be hashed and signed).
    /// Entries pushed afterwards are a bug; calling it again returns the same bytes.
    pub fn tbs(&mut self) -> &[u8] {
        if self.tbs_len > 0 {
            return &self.buf[self.tbs_start..self.tbs_start + self.tbs_len];
        }
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
        self.tbs_start = self.entries_start - prefix.len();
        self.buf[self.tbs_start..self.entries_start].copy_from_slice(&prefix);
        self.tbs_len = header_len(tbs_content) + tbs_content;
        &self.buf[self.tbs_start..self.tbs_start + self.tbs_len]
    }

    /// Appends the signature to a finished TBS and returns the CRL, in the
    /// same buffer. Call [`CrlBuilder::tbs`] first.
    pub fn assemble(mut self, signature: &[u8]) -> Vec<u8> {
        self.buf.extend_from_slice(&self.algorithm);
        self.buf.extend_from_slice(&derw::bit_string(signature));
        let body = self.buf.len() - self.tbs_start;
        let mut outer = vec![0x30];
        push_len(&mut outer, body);
        let start = self.tbs_start - outer.len();
        self.buf[start..self.tbs_start].copy_from_slice(&outer);
        self.buf.drain(..start);
        self.buf
    }

    /// Hashes the TBSCertList on the host, has the CA's key sign the digest,
    /// and returns the CRL with its signature verified. (No full parse-back,
    /// unlike certificates: decoding a large CRL into structures would cost
    /// several times its size in memory; tests check the encoding with
    /// x509-cert and openssl.)
    pub fn sign(
        mut self,
        backend: &dyn SigningBackend,
        ca: &CaSigner,
        scheme: Scheme,
    ) -> Result<Vec<u8>, IssueError> {
        let tbs = self.tbs();
        let digest = scheme.hash().digest(tbs);
        let signature = backend.sign_digest(&ca.key, scheme, &digest)?;
        verify_signature(&ca.spki_der, scheme, self.tbs(), &signature)?;
        Ok(self.assemble(&signature))
    }
}

/// What changed between two CRLs of one issuer, enough to rebuild the new
/// one from the old: entries added and serials removed, the new header
/// fields and the new signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlDiff {
    /// Entries in the new CRL but not the old.
    pub added: Vec<OwnedEntry>,
    /// Serials in the old CRL but not the new.
    pub removed: Vec<Vec<u8>>,
    /// New thisUpdate.
    pub this_update: i64,
    /// New nextUpdate.
    pub next_update: i64,
    /// New cRLNumber.
    pub number: Vec<u8>,
    /// The new CRL's signature value.
    pub signature: Vec<u8>,
}

fn unix(t: &x509_cert::time::Time) -> i64 {
    t.to_unix_duration().as_secs() as i64
}

/// Reads a CRL made by this encoder: header fields and entries.
pub fn parse(der: &[u8]) -> Result<(Header, Vec<OwnedEntry>), String> {
    use der::{Decode, Encode};
    let crl = <x509_cert::crl::CertificateList>::from_der(der).map_err(|e| e.to_string())?;
    let tbs = &crl.tbs_cert_list;
    let mut key_id = None;
    let mut number = None;
    let mut shard_url = None;
    for ext in tbs.crl_extensions.iter().flatten() {
        if ext.extn_id == AUTHORITY_KEY_ID {
            let aki =
                x509_cert::ext::pkix::AuthorityKeyIdentifier::from_der(ext.extn_value.as_bytes())
                    .map_err(|e| e.to_string())?;
            key_id = aki.key_identifier.map(|k| k.as_bytes().to_vec());
        } else if ext.extn_id == CRL_NUMBER {
            number = Some(
                der::asn1::Uint::from_der(ext.extn_value.as_bytes())
                    .map_err(|e| e.to_string())?
                    .as_bytes()
                    .to_vec(),
            );
        } else if ext.extn_id == ISSUING_DISTRIBUTION_POINT {
            shard_url = Some(shard_url_of(ext.extn_value.as_bytes())?);
        }
    }
    let header = Header {
        algorithm: tbs.signature.to_der().map_err(|e| e.to_string())?,
        issuer: tbs.issuer.to_der().map_err(|e| e.to_string())?,
        key_id: key_id.ok_or("no authority key identifier")?,
        this_update: unix(&tbs.this_update),
        next_update: tbs.next_update.as_ref().map(unix).ok_or("no nextUpdate")?,
        number: number.ok_or("no CRL number")?,
        shard_url,
    };
    let mut entries = Vec::new();
    for rc in tbs.revoked_certificates.iter().flatten() {
        let mut entry = OwnedEntry {
            serial: {
                let b = rc.serial_number.as_bytes();
                let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
                b[start..].to_vec()
            },
            revoked_at: unix(&rc.revocation_date),
            reason: 0,
            invalidity_date: None,
        };
        for ext in rc.crl_entry_extensions.iter().flatten() {
            if ext.extn_id == REASON_CODE {
                entry.reason = *ext
                    .extn_value
                    .as_bytes()
                    .last()
                    .ok_or("empty reason code")?;
            } else if ext.extn_id == INVALIDITY_DATE {
                let t = der::asn1::GeneralizedTime::from_der(ext.extn_value.as_bytes())
                    .map_err(|e| e.to_string())?;
                entry.invalidity_date = Some(t.to_unix_duration().as_secs() as i64);
            }
        }
        entries.push(entry);
    }
    Ok((header, entries))
}

/// Verifies a CRL's signature with the issuer certificate (DER): the issuer
/// names must match and the signature must verify with the certificate's key.
pub fn verify(crl_der: &[u8], issuer_cert_der: &[u8]) -> Result<(), String> {
    use der::{Decode, Encode};
    #[derive(der::Sequence)]
    struct RawCrl<'a> {
        tbs: der::asn1::AnyRef<'a>,
        algorithm: der::asn1::AnyRef<'a>,
        signature: der::asn1::BitStringRef<'a>,
    }
    let raw = RawCrl::from_der(crl_der).map_err(|e| e.to_string())?;
    let tbs = raw.tbs.to_der().map_err(|e| e.to_string())?;
    let algorithm = raw.algorithm.to_der().map_err(|e| e.to_string())?;
    let signature = raw
        .signature
        .as_bytes()
        .ok_or("signature with unused bits")?;
    let cert = x509_cert::Certificate::from_der(issuer_cert_der).map_err(|e| e.to_string())?;
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| e.to_string())?;
    let (header, _) = parse_header(&tbs)?;
    if header.issuer
        != cert
            .tbs_certificate()
            .subject()
            .to_der()
            .map_err(|e| e.to_string())?
    {
        return Err("the CRL's issuer is not the certificate's subject".into());
    }
    let scheme = crate::issue::scheme_of(&algorithm).ok_or("signature algorithm not supported")?;
    verify_signature(&spki, scheme, &tbs, signature).map_err(|e| e.to_string())
}

/// Splits the first DER TLV off `b`: (its header length, the TLV, the rest).
fn next_tlv(b: &[u8]) -> Option<(usize, &[u8], &[u8])> {
    let first = *b.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 || b.len() < 2 + n {
            return None;
        }
        (
            b[2..2 + n]
                .iter()
                .fold(0usize, |a, &x| a << 8 | usize::from(x)),
            2 + n,
        )
    };
    (b.len() >= header + len).then(|| (header, &b[..header + len], &b[header + len..]))
}

/// The algorithm and issuer of a TBSCertList, without decoding its entries.
fn parse_header(tbs: &[u8]) -> Result<(Header, ()), String> {
    let bad = || "malformed TBSCertList".to_string();
    let (header_len, tlv, _) = next_tlv(tbs).ok_or_else(bad)?;
    let content = &tlv[header_len..];
    let (_, _version, rest) = next_tlv(content).ok_or_else(bad)?;
    let (_, algorithm, rest) = next_tlv(rest).ok_or_else(bad)?;
    let (_, issuer, _) = next_tlv(rest).ok_or_else(bad)?;
    Ok((
        Header {
            algorithm: algorithm.to_vec(),
            issuer: issuer.to_vec(),
            key_id: Vec::new(),
            this_update: 0,
            next_update: 0,
            number: Vec::new(),
            shard_url: None,
        },
        (),
    ))
}

/// Rebuilds the new CRL from the old one and a difference. The result is
/// byte for byte the signer's CRL when both sides follow docs/protocol.md;
/// the caller checks its SHA-256 (and falls back to the full CRL otherwise).
pub fn rebuild(old_der: &[u8], diff: &CrlDiff) -> Result<Vec<u8>, String> {
    let (old, mut entries) = parse(old_der)?;
    let removed: std::collections::BTreeSet<&[u8]> =
        diff.removed.iter().map(Vec::as_slice).collect();
    entries.retain(|e| !removed.contains(e.serial.as_slice()));
    entries.extend(diff.added.iter().cloned());
    entries.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    entries.dedup_by(|a, b| a.serial == b.serial);
    let header = Header {
        this_update: diff.this_update,
        next_update: diff.next_update,
        number: diff.number.clone(),
        ..old
    };
    let mut builder = CrlBuilder::with_header(&header, old_der.len()).map_err(|e| e.to_string())?;
    for e in &entries {
        builder.push(&e.as_entry()).map_err(|e| e.to_string())?;
    }
    builder.tbs();
    Ok(builder.assemble(&diff.signature))
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
    fn entries_appended_in_place_equal_the_encoder() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            state >> 11
        };
        let times = [
            -631_152_001, // 1949: out of range
            -631_152_000,
            0,
            1_700_000_000,
            2_524_607_999,   // last UTCTime second
            2_524_608_000,   // first GeneralizedTime
            253_402_300_799, // 9999-12-31T23:59:59
            253_402_300_800, // out of range
            -62_167_219_201, // before year 0
        ];
        for round in 0..20_000u32 {
            let len = (next() % 24) as usize;
            let mut serial: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round.is_multiple_of(5) && !serial.is_empty() {
                serial[0] = 0;
            }
            if round.is_multiple_of(7) && !serial.is_empty() {
                serial[0] |= 0x80;
            }
            let pick = |r: u64| {
                if r.is_multiple_of(3) {
                    times[(r / 3) as usize % times.len()]
                } else {
                    (r % 4_000_000_000) as i64
                }
            };
            let entry = CrlEntry {
                serial: &serial,
                revoked_at: pick(next()),
                reason: (next() % 11) as u8,
                invalidity_date: next().is_multiple_of(2).then(|| pick(next())),
            };
            let mut out = vec![0xaa];
            let fast = push_entry(&mut out, &entry);
            match encode_entry(&entry) {
                Ok(der) if fast => assert_eq!(&out[1..], &der[..], "{entry:?}"),
                Ok(_) => assert!(len > 20, "{entry:?} fell back"),
                Err(_) => assert!(!fast && out == [0xaa], "{entry:?}"),
            }
        }
    }

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
    use signer_keys::{Hash, HsmError, KeyKind, KeyStatus, PublicKey};

    /// A backend that cannot sign: enough to check the TBS encoding through
    /// the error path is not useful, so this test encodes the TBS directly.
    struct NoKey;
    impl SigningBackend for NoKey {
        fn public_key(&self, _: &str) -> Result<PublicKey, HsmError> {
            Err(HsmError::UnknownKey("none".into()))
        }
        fn sign_digest(&self, _: &str, _: Scheme, _: &[u8]) -> Result<Vec<u8>, HsmError> {
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
            not_before: 1_600_000_000,
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
            None,
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
            b.sign(&NoKey, &ca, Scheme::Ecdsa(Hash::Sha256)),
            Err(IssueError::Hsm(_))
        ));
    }
}

#[cfg(test)]
mod rebuild_tests {
    use super::*;

    fn header(this_update: i64, number: u8, shard: bool) -> Header {
        Header {
            algorithm: algorithm_identifier(Scheme::Ecdsa(signer_keys::Hash::Sha256)),
            issuer: crate::name::encode(&[("CN".into(), "Test CA".into())]).unwrap(),
            key_id: vec![7; 20],
            this_update,
            next_update: this_update + 86_400,
            number: vec![number],
            shard_url: shard.then(|| "http://crl.example.org/sub/3.crl".to_string()),
        }
    }

    #[test]
    fn a_shards_crl_names_its_url_in_a_critical_issuing_distribution_point() {
        use der::Decode;
        let h = header(1_700_000_000, 1, true);
        let der = full(&h, &[entry(vec![1, 2], 0, 1, false)], &[1, 2, 3]);
        let crl = <x509_cert::crl::CertificateList>::from_der(&der).unwrap();
        let idp = crl
            .tbs_cert_list
            .crl_extensions
            .iter()
            .flatten()
            .find(|e| e.extn_id == ISSUING_DISTRIBUTION_POINT)
            .expect("an issuing distribution point");
        assert!(idp.critical);
        let value = x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint::from_der(
            idp.extn_value.as_bytes(),
        )
        .unwrap();
        assert!(value.only_contains_user_certs);
        assert!(!value.only_contains_ca_certs && !value.indirect_crl);
        assert!(value.only_some_reasons.is_none());
        // The same bytes as a certificate's CRL distribution point names it.
        let cdp = crate::issue::encode_extensions(&crate::issue::ExtensionSpec {
            ca: None,
            key_usage: &[],
            eku: &[],
            sans: Vec::new(),
            empty_subject: false,
            ski: None,
            aki: None,
            crl_urls: &["http://crl.example.org/sub/3.crl".to_string()],
            ocsp_urls: &[],
            ca_issuers_urls: &[],
            policies: &[],
        })
        .unwrap()
        .pop()
        .unwrap();
        let dp = &idp.extn_value.as_bytes()[2..];
        let name = &dp[..dp.len() - 3];
        assert!(
            cdp.windows(name.len()).any(|w| w == name),
            "{} not in {}",
            hex::encode(name),
            hex::encode(&cdp)
        );
        assert_eq!(parse(&der).unwrap().0, h);
        // The vector of docs/protocol.md (7.7, partitioned CRLs).
        let vector = hex::encode(issuing_distribution_point(
            "http://crl.example.org/sub/3.crl",
        ));
        assert!(include_str!("../../../docs/protocol.md").contains(&format!("`{vector}`")));
        // An issuing distribution point of another shape is not read as one.
        assert!(shard_url_of(&[0x30, 0x03, 0x81, 0x01, 0xff]).is_err());
        assert!(shard_url_of(&[0x30, 0x00]).is_err());
        assert!(shard_url_of(&[]).is_err());
    }

    fn full(h: &Header, entries: &[OwnedEntry], signature: &[u8]) -> Vec<u8> {
        let mut sorted = entries.to_vec();
        sorted.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        let mut b = CrlBuilder::with_header(h, 0).unwrap();
        for e in &sorted {
            b.push(&e.as_entry()).unwrap();
        }
        b.tbs();
        b.assemble(signature)
    }

    fn entry(serial: Vec<u8>, i: i64, reason: u8, invalidity: bool) -> OwnedEntry {
        OwnedEntry {
            serial,
            revoked_at: 1_700_000_000 + i,
            reason,
            invalidity_date: invalidity.then_some(1_699_000_000 + i),
        }
    }

    fn serial_strategy() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        proptest::collection::vec(any::<u8>(), 1..20).prop_map(|mut s| {
            s[0] = (s[0] & 0x7f).max(1); // minimal, positive, non-zero
            s
        })
    }

    proptest::proptest! {
        /// Rebuilding from a difference always equals the full CRL.
        #[test]
        fn rebuild_equals_full(
            old_serials in proptest::collection::btree_set(serial_strategy(), 0..60),
            new_serials in proptest::collection::btree_set(serial_strategy(), 0..30),
            drop_mask in proptest::collection::vec(proptest::bool::ANY, 60),
            reasons in proptest::collection::vec(0u8..6, 90),
            shard in proptest::bool::ANY,
        ) {
            let old: Vec<OwnedEntry> = old_serials.iter().enumerate()
                .map(|(i, s)| entry(s.clone(), i as i64, reasons[i], i % 4 == 0)).collect();
            let old_der = full(&header(1_700_000_000, 1, shard), &old, &[1, 2, 3]);
            // New CRL: some old entries pruned, some new ones added.
            let removed: Vec<Vec<u8>> = old.iter().zip(&drop_mask).filter(|(_, d)| **d).map(|(e, _)| e.serial.clone()).collect();
            let added: Vec<OwnedEntry> = new_serials.iter().filter(|s| !old_serials.contains(*s)).enumerate()
                .map(|(i, s)| entry(s.clone(), 1000 + i as i64, reasons[60 + i], i % 3 == 0)).collect();
            let mut new: Vec<OwnedEntry> = old.iter().filter(|e| !removed.contains(&e.serial)).cloned().collect();
            new.extend(added.iter().cloned());
            let h2 = header(1_700_100_000, 2, shard);
            let signature = vec![9u8; 71];
            let new_der = full(&h2, &new, &signature);
            let diff = CrlDiff {
                added,
                removed,
                this_update: h2.this_update,
                next_update: h2.next_update,
                number: h2.number.clone(),
                signature,
            };
            proptest::prop_assert_eq!(rebuild(&old_der, &diff).unwrap(), new_der);
        }
    }
}
