//! Certificates: recorded through the committer, read by request id and
//! by (issuer, serial), and the one insert path that local issuance and the
//! twin's `Issued` events share.

use redb::ReadableTable;

use crate::committer::{Issue, Job, Then};
use crate::outbox::{digest_cert, DigestTable, Target, DIGESTS};
use crate::records::{
    decode, decode_request, encode_cert, encode_request_entry, CertRecord, Recorded, RequestEntry,
};
use crate::schema::{CERTS, EXPIRY, REQUESTS};
use crate::{guard, storage, RepoError, Repository};
use std::sync::mpsc;

impl Repository {
    /// Records an issued certificate durably (group commit); blocks until the
    /// commit holding it is on disk.
    pub fn record_issuance(&self, record: CertRecord) -> Result<Recorded, RepoError> {
        let (reply, rx) = mpsc::channel();
        self.record_issuance_then(
            record,
            Box::new(move |result| {
                let _ = reply.send(result);
            }),
        );
        rx.recv().unwrap_or(Err(RepoError::Closed))
    }

    /// Records an issued certificate durably and calls `then` with the outcome
    /// on the committer thread once the commit is on disk. The caller is not
    /// blocked: records handed over while a commit runs share the next one.
    /// `then` must be quick (it runs between commits).
    pub fn record_issuance_then(&self, record: CertRecord, then: Then) {
        if let Some(Job::Issue(job)) = self.send(Job::Issue(Issue { record, then })) {
            (job.then)(Err(RepoError::Closed));
        }
    }

    /// Hands a job to the committer; the job back if it has stopped.
    pub(crate) fn send(&self, job: Job) -> Option<Job> {
        match self.jobs.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(jobs) => jobs.send(job).err().map(|e| e.0),
            None => Some(job),
        }
    }

    /// The record for a request id, if any.
    pub fn find_by_request(&self, request_id: &str) -> Result<Option<CertRecord>, RepoError> {
        self.snapshot()?.find_by_request(request_id)
    }

    /// Whether `issuer` has issued `serial`.
    pub fn serial_exists(&self, issuer: &str, serial: &[u8]) -> Result<bool, RepoError> {
        self.snapshot()?.serial_exists(issuer, serial)
    }

    /// One consistent view of the repository for several lookups (an
    /// issuance's request id and serial checks): one read transaction
    /// instead of one each. Drop it before anything slow.
    pub fn snapshot(&self) -> Result<Snapshot, RepoError> {
        Ok(Snapshot {
            txn: Some(self.begin_read()?),
        })
    }

    /// The certificate `issuer` issued with `serial`.
    pub fn certificate(
        &self,
        issuer: &str,
        serial: &[u8],
    ) -> Result<Option<CertRecord>, RepoError> {
        self.read(|txn| {
            let certs = txn.open_table(CERTS).map_err(storage)?;
            match certs.get((issuer, serial)).map_err(storage)? {
                Some(v) => Ok(Some(decode(v.value())?)),
                None => Ok(None),
            }
        })
    }

    /// Streams every certificate record (one snapshot; one record in
    /// memory at a time); a record that fails its check is given as the
    /// error naming it, and the stream goes on.
    pub fn for_each_certificate(
        &self,
        mut f: impl FnMut(Result<CertRecord, RepoError>),
    ) -> Result<u64, RepoError> {
        self.read(|txn| {
            let certs = txn.open_table(CERTS).map_err(storage)?;
            let mut n = 0;
            for item in certs.iter().map_err(storage)? {
                let (k, v) = item.map_err(storage)?;
                f(decode(v.value()).map_err(|e| {
                    let (issuer, serial) = k.value();
                    RepoError::Corrupt(format!("certificate {issuer}/{}: {e}", crate::hex(serial)))
                }));
                n += 1;
            }
            Ok(n)
        })
    }
}

/// A consistent view for several lookups ([`Repository::snapshot`]).
pub struct Snapshot {
    /// Always `Some` until dropped.
    txn: Option<redb::ReadTransaction>,
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        // Ending the transaction is guarded like every other storage call.
        let txn = self.txn.take();
        let _ = guard(move || {
            drop(txn);
            Ok(())
        });
    }
}

impl Snapshot {
    fn txn(&self) -> Result<&redb::ReadTransaction, RepoError> {
        self.txn.as_ref().ok_or(RepoError::Closed)
    }

    /// The record for a request id, if any.
    pub fn find_by_request(&self, request_id: &str) -> Result<Option<CertRecord>, RepoError> {
        guard(|| {
            let requests = self.txn()?.open_table(REQUESTS).map_err(storage)?;
            let Some(entry) = requests.get(request_id).map_err(storage)? else {
                return Ok(None);
            };
            let entry: RequestEntry = decode_request(entry.value())?;
            let certs = self.txn()?.open_table(CERTS).map_err(storage)?;
            let found = certs
                .get((entry.issuer.as_str(), entry.serial.as_slice()))
                .map_err(storage)?;
            match found {
                Some(v) => Ok(Some(decode(v.value())?)),
                None => Err(RepoError::Corrupt(format!(
                    "request {request_id} points to a missing certificate"
                ))),
            }
        })
    }

    /// Whether `issuer` has issued `serial`.
    pub fn serial_exists(&self, issuer: &str, serial: &[u8]) -> Result<bool, RepoError> {
        guard(|| {
            let certs = self.txn()?.open_table(CERTS).map_err(storage)?;
            Ok(certs.get((issuer, serial)).map_err(storage)?.is_some())
        })
    }
}

/// The tables a certificate is written to, open in one write transaction.
pub(crate) struct CertTables<'t> {
    pub(crate) certs: redb::Table<'t, (&'static str, &'static [u8]), &'static [u8]>,
    pub(crate) requests: redb::Table<'t, &'static str, &'static [u8]>,
    pub(crate) expiry: redb::Table<'t, (i64, &'static str, &'static [u8]), ()>,
    pub(crate) digests: DigestTable<'t>,
}

impl<'t> CertTables<'t> {
    pub(crate) fn open(txn: &'t redb::WriteTransaction) -> Result<CertTables<'t>, RepoError> {
        Ok(CertTables {
            certs: txn.open_table(CERTS).map_err(storage)?,
            requests: txn.open_table(REQUESTS).map_err(storage)?,
            expiry: txn.open_table(EXPIRY).map_err(storage)?,
            digests: txn.open_table(DIGESTS).map_err(storage)?,
        })
    }
}

/// The one insert path for a certificate record, used by local issuance
/// and by the twin's `Issued` events: the record, its expiry entry and its
/// share of the issuer's set digest. The request-id entry is the caller's
/// ([`insert_request`]): issuance refuses a taken request id, the twin's
/// apply records a conflict instead.
pub(crate) fn insert_certificate(t: &mut CertTables<'_>, r: &CertRecord) -> Result<(), RepoError> {
    let value = encode_cert(r)?;
    t.certs
        .insert((r.issuer.as_str(), r.serial.as_slice()), value.as_slice())
        .map_err(storage)?;
    t.expiry
        .insert((r.not_after, r.issuer.as_str(), r.serial.as_slice()), ())
        .map_err(storage)?;
    digest_cert(&mut t.digests, r)
}

/// Points `r`'s request id at it.
pub(crate) fn insert_request(t: &mut CertTables<'_>, r: &CertRecord) -> Result<(), RepoError> {
    let entry = encode_request_entry(r)?;
    t.requests
        .insert(r.request_id.as_str(), entry.as_slice())
        .map_err(storage)?;
    Ok(())
}

/// Local issuance inside the group commit: the original certificate if
/// the request id is taken, a refusal if the serial is, else the record
/// written (certificate, request id, outbox event).
pub(crate) fn insert_issued(
    outbox: &mut crate::outbox::Outbox<'_>,
    t: &mut CertTables<'_>,
    r: &CertRecord,
) -> Result<Result<Recorded, RepoError>, RepoError> {
    let existing = t
        .requests
        .get(r.request_id.as_str())
        .map_err(storage)?
        .map(|v| v.value().to_vec());
    if let Some(entry) = existing {
        // A damaged record fails this request alone, never the batch.
        let original = decode_request(&entry).and_then(|entry| {
            t.certs
                .get((entry.issuer.as_str(), entry.serial.as_slice()))
                .map_err(storage)?
                .map(|v| decode(v.value()))
                .transpose()?
                .ok_or_else(|| {
                    RepoError::Corrupt(format!(
                        "request {} points to a missing certificate",
                        r.request_id
                    ))
                })
        });
        return Ok(original.map(|o| Recorded::Existing(Box::new(o))));
    }
    if t.certs
        .get((r.issuer.as_str(), r.serial.as_slice()))
        .map_err(storage)?
        .is_some()
    {
        return Ok(Err(RepoError::SerialTaken {
            issuer: r.issuer.clone(),
            serial: crate::hex(&r.serial),
        }));
    }
    insert_certificate(t, r)?;
    insert_request(t, r)?;
    outbox.pointer(Target::Issued(r.issuer.clone(), r.serial.clone()))?;
    Ok(Ok(Recorded::Inserted))
}
