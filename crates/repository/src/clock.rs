//! The time high-water mark: the latest time this signer has put into a
//! record it vouches for (a certificate's issuance, a revocation, a CRL's
//! thisUpdate, an OpenPGP certification).
//!
//! A signer whose clock reads earlier than this mark has been set back (or
//! its RTC lost its battery): whatever it signed now would be dated before
//! what it already signed. The CA service compares its clock with the mark
//! before signing; the mark itself only ever rises, in the transaction of
//! the record that raised it. Twin events do not raise it: each signer
//! answers for its own clock.

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use signer_clock::Clock as _;

use crate::{storage, RepoError};

/// "time_ms" → the mark, Unix milliseconds.
pub(crate) const HIGH_WATER: TableDefinition<&str, i64> = TableDefinition::new("high_water_v1");
const KEY: &str = "time_ms";

/// The system clock in seconds (the repository's own bookkeeping times).
pub(crate) fn now_secs() -> i64 {
    signer_clock::SystemClock.now_secs()
}

/// The system clock in microseconds.
pub(crate) fn now_us() -> i64 {
    signer_clock::SystemClock.now_us()
}

/// Raises the mark to `ms` if that is later; returns the mark.
pub(crate) fn raise(txn: &WriteTransaction, ms: i64) -> Result<i64, RepoError> {
    let mut table = txn.open_table(HIGH_WATER).map_err(storage)?;
    let current = table
        .get(KEY)
        .map_err(storage)?
        .map_or(i64::MIN, |v| v.value());
    if ms > current {
        table.insert(KEY, ms).map_err(storage)?;
        Ok(ms)
    } else {
        Ok(current)
    }
}

/// The mark, if anything raised it yet.
pub(crate) fn read(txn: &redb::ReadTransaction) -> Result<Option<i64>, RepoError> {
    let table = txn.open_table(HIGH_WATER).map_err(storage)?;
    let found = table.get(KEY).map_err(storage)?;
    Ok(found.map(|v| v.value()))
}

/// Sets the mark to `ms` whatever it was (an operator's decision, audited
/// by the caller); returns the mark it replaced.
pub(crate) fn reset(txn: &WriteTransaction, ms: i64) -> Result<Option<i64>, RepoError> {
    let mut table = txn.open_table(HIGH_WATER).map_err(storage)?;
    let old = table.get(KEY).map_err(storage)?.map(|v| v.value());
    table.insert(KEY, ms).map_err(storage)?;
    Ok(old)
}
