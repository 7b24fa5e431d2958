//! CRLs: the last one per issuer with its history of numbers, and the
//! floor below which no CRL number may be used again (raised by either twin).

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use crate::clock;
use crate::outbox::{append_event, Change};
use crate::records::{CrlMeta, CrlRecord};
use crate::schema::{CRLS, CRL_HISTORY};
use crate::{sealed, storage, RepoError, Repository};
use redb::TableHandle;
use std::sync::atomic::Ordering;

/// Per issuer: the highest CRL number either twin has used.
pub(crate) const CRL_FLOOR: TableDefinition<&str, &[u8]> = TableDefinition::new("crl_floor_v1");

/// The latest CRL's DER per issuer, in parts: (issuer, part) → part ‖
/// CRC-32. The record in `crls_v1` keeps the rest (its `der` left empty),
/// and its SHA-256 is checked over the parts put together. Parts keep a
/// large CRL from being one value (which the storage engine would copy
/// whole and round up to a power of two).
pub(crate) const CRL_DER: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("crl_der_v1");

/// Bytes of DER per part: with its checksum and the page's own header, a
/// part fills a 64 KiB page.
const PART: usize = 64 * 1024 - 512;

/// Replaces `issuer`'s CRL parts with `der`'s.
fn store_parts(txn: &WriteTransaction, issuer: &str, der: &[u8]) -> Result<(), RepoError> {
    let mut parts = txn.open_table(CRL_DER).map_err(storage)?;
    parts
        .retain_in((issuer, 0)..=(issuer, u32::MAX), |_, _| false)
        .map_err(storage)?;
    for (i, part) in der.chunks(PART).enumerate() {
        let index = u32::try_from(i).map_err(storage)?;
        let value = sealed::seal_raw(CRL_DER.name(), part);
        parts
            .insert((issuer, index), value.as_slice())
            .map_err(storage)?;
    }
    Ok(())
}

/// The CRL record of `issuer` with its DER, read from `crls` and its parts
/// (or, written before parts, from the record itself); its digest checked.
pub(crate) fn read_crl(
    crls: &impl ReadableTable<&'static str, &'static [u8]>,
    parts: &impl ReadableTable<(&'static str, u32), &'static [u8]>,
    issuer: &str,
) -> Result<Option<CrlRecord>, RepoError> {
    let Some(v) = crls.get(issuer).map_err(storage)? else {
        return Ok(None);
    };
    let mut crl: CrlRecord = sealed::open(CRLS.name(), v.value())?;
    if crl.der.is_empty() {
        let range = (issuer, 0)..=(issuer, u32::MAX);
        let last = parts
            .range(range.clone())
            .map_err(storage)?
            .next_back()
            .transpose()
            .map_err(storage)?
            .map_or(0, |(k, _)| k.value().1 as usize + 1);
        let mut der = Vec::with_capacity(last * PART);
        for (expected, item) in parts.range(range).map_err(storage)?.enumerate() {
            let (k, v) = item.map_err(storage)?;
            if k.value().1 as usize != expected {
                return Err(RepoError::Corrupt(format!(
                    "CRL of {issuer}: part {expected} is missing"
                )));
            }
            der.extend_from_slice(sealed::payload(CRL_DER.name(), v.value())?);
        }
        crl.der = der;
    }
    use sha2::Digest;
    if sha2::Sha256::digest(&crl.der).as_slice() != crl.sha256.as_slice() {
        return Err(RepoError::Corrupt(format!(
            "CRL of {issuer}: its DER does not match its digest ({} bytes)",
            crl.der.len()
        )));
    }
    Ok(Some(crl))
}

fn big_endian_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let strip = |x: &[u8]| -> Vec<u8> {
        let start = x.iter().position(|&b| b != 0).unwrap_or(x.len());
        x[start..].to_vec()
    };
    let (a, b) = (strip(a), strip(b));
    a.len().cmp(&b.len()).then_with(|| a.cmp(&b))
}

/// Raises the issuer's CRL floor to `number` if it is higher.
pub(crate) fn raise_crl_floor(
    txn: &WriteTransaction,
    issuer: &str,
    number: &[u8],
) -> Result<(), RepoError> {
    let mut floor = txn.open_table(CRL_FLOOR).map_err(storage)?;
    let higher = match floor.get(issuer).map_err(storage)? {
        Some(v) => big_endian_cmp(number, v.value()).is_gt(),
        None => true,
    };
    if higher {
        floor.insert(issuer, number).map_err(storage)?;
    }
    Ok(())
}

impl Repository {
    /// Stores a signed CRL as the issuer's latest.
    pub fn store_crl(&self, crl: &CrlRecord) -> Result<(), RepoError> {
        let mark = self.write(|txn| {
            {
                store_parts(txn, &crl.issuer, &crl.der)?;
                let mut crls = txn.open_table(CRLS).map_err(storage)?;
                let value = sealed::seal(
                    CRLS.name(),
                    &CrlRecord {
                        der: Vec::new(),
                        ..crl.clone_without_der()
                    },
                )?;
                crls.insert(crl.issuer.as_str(), value.as_slice())
                    .map_err(storage)?;
                let mut history = txn.open_table(CRL_HISTORY).map_err(storage)?;
                let meta = sealed::seal(
                    CRL_HISTORY.name(),
                    &CrlMeta {
                        this_update: crl.this_update,
                        revocation_seq: crl.revocation_seq,
                        sha256: crl.sha256.clone(),
                        entries: crl.entries,
                        size: crl.der.len() as u64,
                    },
                )?;
                history
                    .insert(
                        (crl.issuer.as_str(), crl.number.as_slice()),
                        meta.as_slice(),
                    )
                    .map_err(storage)?;
            }
            crate::crls::raise_crl_floor(txn, &crl.issuer, &crl.number)?;
            let mark = clock::raise(txn, crl.this_update.saturating_mul(1000))?;
            append_event(
                txn,
                &self.origin,
                Change::CrlIssued {
                    issuer: crl.issuer.clone(),
                    number: crl.number.clone(),
                    this_update: crl.this_update,
                },
            )?;
            Ok((mark, true))
        })?;
        self.high_water.fetch_max(mark, Ordering::SeqCst);
        self.notify();
        Ok(())
    }

    /// The highest CRL number either twin has used for `issuer`.
    pub fn crl_floor(&self, issuer: &str) -> Result<Option<Vec<u8>>, RepoError> {
        self.read(|txn| {
            let floor = txn.open_table(crate::crls::CRL_FLOOR).map_err(storage)?;
            Ok(floor
                .get(issuer)
                .map_err(storage)?
                .map(|v| v.value().to_vec()))
        })
    }

    /// What is known of CRL `number` of `issuer`, if this signer made it.
    pub fn crl_meta(&self, issuer: &str, number: &[u8]) -> Result<Option<CrlMeta>, RepoError> {
        self.read(|txn| {
            let history = txn.open_table(CRL_HISTORY).map_err(storage)?;
            match history.get((issuer, number)).map_err(storage)? {
                Some(v) => Ok(Some(sealed::open(CRL_HISTORY.name(), v.value())?)),
                None => Ok(None),
            }
        })
    }

    /// Every latest CRL kept (one per issuer and per CRL shard, under the
    /// name it is kept by), each with its DER checked against its digest;
    /// one that fails is given as the error naming it.
    pub fn for_each_latest_crl(
        &self,
        mut f: impl FnMut(Result<CrlRecord, RepoError>),
    ) -> Result<(), RepoError> {
        self.read(|txn| {
            let crls = txn.open_table(CRLS).map_err(storage)?;
            let parts = txn.open_table(CRL_DER).map_err(storage)?;
            for item in crls.iter().map_err(storage)? {
                let (key, _) = item.map_err(storage)?;
                match read_crl(&crls, &parts, key.value()) {
                    Ok(Some(crl)) => f(Ok(crl)),
                    Ok(None) => {}
                    Err(e) => f(Err(e)),
                }
            }
            Ok(())
        })
    }

    /// The issuer's latest CRL.
    pub fn last_crl(&self, issuer: &str) -> Result<Option<CrlRecord>, RepoError> {
        self.read(|txn| {
            let crls = txn.open_table(CRLS).map_err(storage)?;
            let parts = txn.open_table(CRL_DER).map_err(storage)?;
            read_crl(&crls, &parts, issuer)
        })
    }
}
