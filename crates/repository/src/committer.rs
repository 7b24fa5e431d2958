//! The group-commit thread: certificates, certifications and audit
//! entries that arrive while a commit runs go together into the next one,
//! so durability costs one fsync per batch. A record's `then` runs on this
//! thread after the commit; it must be quick and must never wait for a
//! peer (the engine's answers to deferred requests never do).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Mutex;

use redb::Database;
use tracing::warn;

use crate::certs::{insert_issued, CertTables};
use crate::records::{CertRecord, Recorded};
use crate::storage;
use crate::{
    audit, clock, guard, openpgp, store, AuditEntry, Certified, Listener, RepoError, RepoStats,
};

/// Largest number of records one group commit takes.
pub(crate) const MAX_BATCH: usize = 256;

/// How long the committer waits for more records after the first of a batch.
/// A commit costs two fsyncs and noticeable CPU; waiting this little lets
/// concurrent issuances share one, at the price of this much latency.
pub(crate) const GATHER: std::time::Duration = std::time::Duration::from_millis(1);

/// Called with the outcome once the commit holding the record is on disk.
pub type Then = Box<dyn FnOnce(Result<Recorded, RepoError>) + Send>;

pub(crate) struct Issue {
    pub(crate) record: CertRecord,
    pub(crate) then: Then,
}

pub(crate) enum Job {
    Issue(Issue),
    Audit(AuditEntry),
    Certify(openpgp::Certify),
}

pub(crate) fn committer(
    db: &store::Writable,
    origin: &str,
    rx: &Receiver<Job>,
    stats: &Mutex<RepoStats>,
    listener: &Listener,
    high_water: &AtomicI64,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        // Sleeping through the window, rather than waiting on the queue,
        // spares a wake-up of this thread (and a context switch) for each
        // record that arrives in it.
        std::thread::sleep(GATHER);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut issues = Vec::with_capacity(batch.len());
        let mut audits = Vec::new();
        let mut certifies = Vec::new();
        for job in batch {
            match job {
                Job::Issue(i) => issues.push(i),
                Job::Audit(a) => audits.push(a),
                Job::Certify(c) => certifies.push(c),
            }
        }
        let batch = issues;
        let records = !batch.is_empty() || !certifies.is_empty();
        let outcome = guard(|| {
            let handle = db.get()?;
            commit_batch(&handle, origin, &batch, audits, &certifies)
        });
        // Audit entries alone (the refusal of a request the full disk could
        // not record, say) are small enough to fit where records do not.
        db.note_write(&outcome, records);
        match outcome {
            Ok((results, certified, mark)) => {
                high_water.fetch_max(mark, Ordering::SeqCst);
                let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
                s.commits += 1;
                s.committed_records += results
                    .iter()
                    .filter(|r| matches!(r, Ok(Recorded::Inserted)))
                    .count() as u64;
                drop(s);
                notify(listener);
                for (job, result) in batch.into_iter().zip(results) {
                    (job.then)(result);
                }
                for (job, result) in certifies.into_iter().zip(certified) {
                    (job.then)(Ok(result));
                }
            }
            Err(e) => {
                warn!(cause = %e, records = batch.len() + certifies.len(), "repository commit failed; nothing of the batch was stored");
                let again = |e: &RepoError| match e {
                    RepoError::Corrupt(m) => RepoError::Corrupt(m.clone()),
                    other => RepoError::Storage(other.to_string()),
                };
                for job in batch {
                    (job.then)(Err(again(&e)));
                }
                for job in certifies {
                    (job.then)(Err(again(&e)));
                }
            }
        }
    }
}

/// One transaction for the whole batch. Per-record outcomes (an existing
/// request id, a serial collision) do not fail the others.
pub(crate) fn commit_batch(
    db: &Database,
    origin: &str,
    batch: &[Issue],
    audits: Vec<AuditEntry>,
    certifies: &[openpgp::Certify],
) -> Result<CommitOutcome, RepoError> {
    let txn = db.begin_write().map_err(storage)?;
    let mut results = Vec::with_capacity(batch.len());
    {
        let mut tables = CertTables::open(&txn)?;
        crate::outbox::Outbox::with(&txn, |outbox| {
            for job in batch {
                results.push(insert_issued(outbox, &mut tables, &job.record)?);
            }
            Ok(())
        })?;
    }
    let certified = certifies
        .iter()
        .map(|c| openpgp::store(&txn, origin, &c.record))
        .collect::<Result<Vec<_>, _>>()?;
    if !audits.is_empty() {
        audit::append(&txn, origin, audits)?;
    }
    let latest = batch
        .iter()
        .zip(&results)
        .filter(|(_, r)| matches!(r, Ok(Recorded::Inserted)))
        .map(|(job, _)| job.record.issued_at_ms)
        .chain(
            certifies
                .iter()
                .zip(&certified)
                .filter(|(_, c)| matches!(c, Certified::Inserted))
                .map(|(c, _)| c.record.created_at.saturating_mul(1000)),
        )
        .max();
    let mark = match latest {
        Some(ms) => clock::raise(&txn, ms)?,
        None => i64::MIN,
    };
    txn.commit().map_err(storage)?;
    Ok((results, certified, mark))
}

/// Per-record outcomes of one group commit: certificates, certifications,
/// and the time high-water mark after it.
pub(crate) type CommitOutcome = (Vec<Result<Recorded, RepoError>>, Vec<Certified>, i64);

pub(crate) fn notify(listener: &Listener) {
    let f = listener.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(f) = f {
        f();
    }
}
