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
                let mut crls = txn.open_table(CRLS).map_err(storage)?;
                let value = sealed::seal_sized(CRLS.name(), crl, crl.der.len() + 1024)?;
                crls.insert(crl.issuer.as_str(), value.as_slice())
                    .map_err(storage)?;
                drop(value);
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

    /// The issuer's latest CRL.
    pub fn last_crl(&self, issuer: &str) -> Result<Option<CrlRecord>, RepoError> {
        self.read(|txn| {
            let crls = txn.open_table(CRLS).map_err(storage)?;
            match crls.get(issuer).map_err(storage)? {
                Some(v) => Ok(Some(sealed::open(CRLS.name(), v.value())?)),
                None => Ok(None),
            }
        })
    }
}
