//! OpenPGP certifications: one record per request id, in its own table,
//! written with its replication event in one transaction.

use redb::{ReadableTable, TableDefinition, TableHandle, WriteTransaction};

use crate::outbox::{append_event, Change};
use crate::records::CertificationRecord;
use crate::records::Conflict;
use crate::{sealed, storage, RepoError, Repository};

/// request id → [`CertificationRecord`] (msgpack).
pub(crate) const CERTIFICATIONS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("openpgp_certifications_v1");

/// What recording a certification did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Certified {
    /// The record is now durable.
    Inserted,
    /// The request id was already recorded: the original record.
    Existing(Box<CertificationRecord>),
}

pub(crate) fn decode(bytes: &[u8]) -> Result<CertificationRecord, RepoError> {
    sealed::open(CERTIFICATIONS.name(), bytes)
}

/// Called with the outcome once the commit holding the record is on disk.
pub type CertifyThen = Box<dyn FnOnce(Result<Certified, RepoError>) + Send>;

/// A certification waiting for the group commit.
pub(crate) struct Certify {
    pub(crate) record: CertificationRecord,
    pub(crate) then: CertifyThen,
}

/// Stores `record` with its replication event in `txn`, unless its request
/// id is already recorded (then the original is returned).
pub(crate) fn store(
    txn: &WriteTransaction,
    origin: &str,
    record: &CertificationRecord,
) -> Result<Certified, RepoError> {
    let existing = {
        let table = txn.open_table(CERTIFICATIONS).map_err(storage)?;
        let found = table.get(record.request_id.as_str()).map_err(storage)?;
        found.map(|v| decode(v.value())).transpose()?
    };
    if let Some(original) = existing {
        return Ok(Certified::Existing(Box::new(original)));
    }
    insert(txn, record)?;
    append_event(txn, origin, Change::Certified(record.clone()))?;
    Ok(Certified::Inserted)
}

impl Repository {
    /// Records certifications durably with the next group commit (with the
    /// replication event), unless the request id is already recorded;
    /// blocks until the commit is on disk.
    pub fn record_certification(
        &self,
        record: CertificationRecord,
    ) -> Result<Certified, RepoError> {
        let (reply, rx) = std::sync::mpsc::channel();
        let job = crate::committer::Job::Certify(Certify {
            record,
            then: Box::new(move |result| {
                let _ = reply.send(result);
            }),
        });
        if self.send(job).is_some() {
            return Err(RepoError::Closed);
        }
        rx.recv().unwrap_or(Err(RepoError::Closed))
    }

    /// The certifications recorded under `request_id`.
    pub fn find_certification(
        &self,
        request_id: &str,
    ) -> Result<Option<CertificationRecord>, RepoError> {
        self.read(|txn| {
            let table = txn.open_table(CERTIFICATIONS).map_err(storage)?;
            let found = table.get(request_id).map_err(storage)?;
            found.map(|v| decode(v.value())).transpose()
        })
    }

    /// How many certification records are stored.
    pub fn certification_count(&self) -> Result<u64, RepoError> {
        use redb::ReadableTableMetadata;
        self.read(|txn| {
            let table = txn.open_table(CERTIFICATIONS).map_err(storage)?;
            table.len().map_err(storage)
        })
    }
}

fn insert(txn: &WriteTransaction, record: &CertificationRecord) -> Result<(), RepoError> {
    let mut table = txn.open_table(CERTIFICATIONS).map_err(storage)?;
    let value = sealed::seal(CERTIFICATIONS.name(), record)?;
    table
        .insert(record.request_id.as_str(), value.as_slice())
        .map_err(storage)?;
    Ok(())
}

/// Applies the twin's certification: stored if the request id is new; a
/// request id certified differently on both twins is a conflict.
pub(crate) fn apply(
    txn: &WriteTransaction,
    conflicts: &mut redb::Table<&str, &[u8]>,
    record: &CertificationRecord,
    origin: &str,
    found_at_ms: i64,
) -> Result<bool, RepoError> {
    let existing = {
        let table = txn.open_table(CERTIFICATIONS).map_err(storage)?;
        let found = table.get(record.request_id.as_str()).map_err(storage)?;
        found.map(|v| decode(v.value())).transpose()?
    };
    match existing {
        None => {
            insert(txn, record)?;
            Ok(false)
        }
        Some(local) if local.certifications == record.certifications => Ok(false),
        Some(local) => {
            let conflict = Conflict {
                request_id: record.request_id.clone(),
                local: ("openpgp".into(), local.fingerprint.clone()),
                remote: ("openpgp".into(), record.fingerprint.clone()),
                origin: origin.to_string(),
                found_at_ms,
            };
            tracing::error!(
                request_id = %record.request_id,
                twin = %origin,
                "request id certified on both twins with different signatures"
            );
            let value = sealed::seal(crate::apply::CONFLICTS.name(), &conflict)?;
            conflicts
                .insert(record.request_id.as_str(), value.as_slice())
                .map_err(storage)?;
            Ok(true)
        }
    }
}
