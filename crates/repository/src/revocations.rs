//! Revocations: recorded with their own write transaction, read per
//! issuer in order, and the one insert path that local revocation and the
//! twin's `Revoked` events share.

use redb::ReadableTable;

use crate::outbox::{append_event, digest_revocation, Change};
use crate::records::{decode, decode_revocation, CertRecord, RevocationRecord, Revoked};
use crate::schema::{CERTS, REVOCATIONS, REVOCATION_SEQ};
use crate::{sealed, storage, RepoError, Repository};
use std::sync::atomic::Ordering;

use crate::clock;
use redb::TableHandle;

/// What a CRL (and a CRL difference) needs of a revocation record: the
/// record's fields in its order (records are stored in order, or by name
/// before), the strings skipped unread.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct CrlView {
    issuer: serde::de::IgnoredAny,
    /// Serial number, unsigned big-endian.
    pub serial: Vec<u8>,
    /// CRLReason code.
    pub reason: u8,
    /// revocationDate, Unix seconds.
    pub revoked_at: i64,
    /// Invalidity date, Unix seconds.
    pub invalidity_date: Option<i64>,
    request_id: serde::de::IgnoredAny,
    legacy: serde::de::IgnoredAny,
    signer_id: serde::de::IgnoredAny,
    /// The certificate's notAfter, where known.
    #[serde(default)]
    pub cert_not_after: Option<i64>,
    /// The issuer's revocation counter value this revocation set.
    #[serde(default)]
    pub seq: u64,
    /// True when it replaced an earlier revocation of the serial.
    #[serde(default)]
    pub replaced: bool,
}

type RevocationTable<'t> = redb::Table<'t, (&'static str, u8, &'static [u8]), &'static [u8]>;
type SeqTable<'t> = redb::Table<'t, &'static str, u64>;

impl Repository {
    /// Records a revocation durably in its own transaction (revocations are
    /// rare; they do not need the group commit). A serial the issuer did not
    /// issue is refused unless `accept_unknown` (legacy migration), and then
    /// recorded with `legacy` set.
    pub fn record_revocation(
        &self,
        record: RevocationRecord,
        accept_unknown: bool,
    ) -> Result<Revoked, RepoError> {
        let mut mark = i64::MIN;
        let outcome = self.write(|txn| {
            let outcome = {
                let certs = txn.open_table(CERTS).map_err(storage)?;
                let mut revocations = txn.open_table(REVOCATIONS).map_err(storage)?;
                let mut seq = txn.open_table(REVOCATION_SEQ).map_err(storage)?;
                let serial_len = u8::try_from(record.serial.len())
                    .map_err(|_| storage("serial longer than 255 octets"))?;
                let key = (record.issuer.as_str(), serial_len, record.serial.as_slice());
                let cert_key = (record.issuer.as_str(), record.serial.as_slice());
                let existing = revocations
                    .get(key)
                    .map_err(storage)?
                    .map(|v| v.value().to_vec());
                if let Some(bytes) = existing {
                    let original: RevocationRecord = decode_revocation(&bytes)?;
                    if original.reason == record.reason {
                        Revoked::Existing(Box::new(original))
                    } else {
                        Revoked::Conflict(Box::new(original))
                    }
                } else {
                    let cert = certs
                        .get(cert_key)
                        .map_err(storage)?
                        .map(|v| decode(v.value()))
                        .transpose()?;
                    if cert.is_none() && !accept_unknown {
                        Revoked::UnknownSerial
                    } else {
                        let stored = insert_revocation(
                            &mut revocations,
                            &mut seq,
                            record.clone(),
                            cert.as_ref(),
                        )?;
                        let mut digests =
                            txn.open_table(crate::outbox::DIGESTS).map_err(storage)?;
                        digest_revocation(&mut digests, &stored, true)?;
                        drop(digests);
                        mark = clock::raise(txn, stored.revoked_at.saturating_mul(1000))?;
                        append_event(txn, &self.origin, Change::Revoked(stored))?;
                        Revoked::Inserted
                    }
                }
            };
            let commit = outcome == Revoked::Inserted;
            Ok((outcome, commit))
        })?;
        if outcome == Revoked::Inserted {
            // Only once the commit holding it is durable.
            self.high_water.fetch_max(mark, Ordering::SeqCst);
            self.notify();
        }
        Ok(outcome)
    }

    /// Records many revocations in one transaction (imports of a legacy CA's
    /// revocations, benchmarks). Serials already revoked are skipped; returns
    /// how many were added. Serials the issuer did not issue are recorded as
    /// legacy, with the `cert_not_after` the caller gives (if it knows it).
    pub fn record_revocations(&self, records: Vec<RevocationRecord>) -> Result<u64, RepoError> {
        let added = self.write(|txn| {
            let mut added = 0;
            {
                let certs = txn.open_table(CERTS).map_err(storage)?;
                let mut revocations = txn.open_table(REVOCATIONS).map_err(storage)?;
                let mut seq = txn.open_table(REVOCATION_SEQ).map_err(storage)?;
                for record in records {
                    let serial_len = u8::try_from(record.serial.len())
                        .map_err(|_| storage("serial longer than 255 octets"))?;
                    let key = (record.issuer.as_str(), serial_len, record.serial.as_slice());
                    if revocations.get(key).map_err(storage)?.is_some() {
                        continue;
                    }
                    let cert = certs
                        .get((record.issuer.as_str(), record.serial.as_slice()))
                        .map_err(storage)?
                        .map(|v| decode(v.value()))
                        .transpose()?;
                    let stored =
                        insert_revocation(&mut revocations, &mut seq, record, cert.as_ref())?;
                    let mut digests = txn.open_table(crate::outbox::DIGESTS).map_err(storage)?;
                    digest_revocation(&mut digests, &stored, true)?;
                    drop(digests);
                    append_event(txn, &self.origin, Change::Revoked(stored))?;
                    added += 1;
                }
            }
            Ok((added, true))
        })?;
        if added > 0 {
            self.notify();
        }
        Ok(added)
    }

    /// The revocation of `serial` by `issuer`, if any.
    pub fn revocation(
        &self,
        issuer: &str,
        serial: &[u8],
    ) -> Result<Option<RevocationRecord>, RepoError> {
        self.read(|txn| {
            let revocations = txn.open_table(REVOCATIONS).map_err(storage)?;
            let len = u8::try_from(serial.len()).unwrap_or(u8::MAX);
            match revocations.get((issuer, len, serial)).map_err(storage)? {
                Some(v) => Ok(Some(decode_revocation(v.value())?)),
                None => Ok(None),
            }
        })
    }

    /// Every revocation by `issuer`, in numeric serial order.
    pub fn revocations(&self, issuer: &str) -> Result<Vec<RevocationRecord>, RepoError> {
        let mut out = Vec::new();
        self.for_each_revocation(issuer, |r| out.push(r))?;
        Ok(out)
    }

    /// Streams the revocations of `issuer` in numeric serial order (for CRLs:
    /// nothing but the record at hand is held in memory). Returns the
    /// issuer's revocation counter as of the same snapshot.
    pub fn for_each_revocation(
        &self,
        issuer: &str,
        f: impl FnMut(RevocationRecord),
    ) -> Result<u64, RepoError> {
        self.scan_revocations(issuer, f)
    }

    /// Streams what a CRL needs of each revocation of `issuer`, in numeric
    /// serial order: the record decoded without its strings (request id,
    /// signer, issuer), checksum verified as always. Returns the issuer's
    /// revocation counter as of the same snapshot.
    pub fn for_each_crl_entry(
        &self,
        issuer: &str,
        f: impl FnMut(CrlView),
    ) -> Result<u64, RepoError> {
        self.scan_revocations(issuer, f)
    }

    /// The revocations of `issuer` in serial order, each decoded as `T`
    /// (the record, or a view of it), and the issuer's counter.
    fn scan_revocations<T: serde::de::DeserializeOwned>(
        &self,
        issuer: &str,
        mut f: impl FnMut(T),
    ) -> Result<u64, RepoError> {
        self.read(|txn| {
            let revocations = txn.open_table(REVOCATIONS).map_err(storage)?;
            let seq = txn.open_table(REVOCATION_SEQ).map_err(storage)?;
            for item in revocations
                .range((issuer, 0u8, &[][..])..)
                .map_err(storage)?
            {
                let (key, value) = item.map_err(storage)?;
                if key.value().0 != issuer {
                    break;
                }
                f(sealed::open(REVOCATIONS.name(), value.value())?);
            }
            Ok(seq
                .get(issuer)
                .map_err(storage)?
                .map(|v| v.value())
                .unwrap_or(0))
        })
    }

    /// The issuer's revocation counter (bumped by every new revocation).
    pub fn revocation_seq(&self, issuer: &str) -> Result<u64, RepoError> {
        self.read(|txn| {
            let seq = txn.open_table(REVOCATION_SEQ).map_err(storage)?;
            Ok(seq
                .get(issuer)
                .map_err(storage)?
                .map(|v| v.value())
                .unwrap_or(0))
        })
    }
}

/// Stores a new revocation: legacy when the issuer has no such certificate,
/// the certificate's notAfter (else the one given), and the issuer's next
/// revocation counter value.
pub(crate) fn insert_revocation(
    revocations: &mut RevocationTable<'_>,
    seq: &mut SeqTable<'_>,
    mut record: RevocationRecord,
    cert: Option<&CertRecord>,
) -> Result<RevocationRecord, RepoError> {
    let serial_len =
        u8::try_from(record.serial.len()).map_err(|_| storage("serial longer than 255 octets"))?;
    record.legacy = cert.is_none();
    record.cert_not_after = cert.map(|c| c.not_after).or(record.cert_not_after);
    let next = seq
        .get(record.issuer.as_str())
        .map_err(storage)?
        .map(|v| v.value())
        .unwrap_or(0)
        + 1;
    record.seq = next;
    let value = sealed::seal_compact(REVOCATIONS.name(), &record)?;
    revocations
        .insert(
            (record.issuer.as_str(), serial_len, record.serial.as_slice()),
            value.as_slice(),
        )
        .map_err(storage)?;
    seq.insert(record.issuer.as_str(), next).map_err(storage)?;
    Ok(record)
}

/// The merge rule for two revocations of one serial: the earlier revocation
/// time wins, then the lower reason code, then the lower signer id. Both
/// twins apply it and so keep the same record.
pub fn revocation_wins(a: &RevocationRecord, b: &RevocationRecord) -> bool {
    (a.revoked_at, a.reason, &a.signer_id) < (b.revoked_at, b.reason, &b.signer_id)
}
