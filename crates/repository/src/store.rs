//! The database handle behind the repository, and what it does after a
//! failed write.
//!
//! redb latches the first I/O error of a write (a full disk, a vanished
//! device): every later transaction fails with "Previous I/O error" until
//! the database is opened again. The writable handle notes each write's
//! outcome; after a failure it reopens the file before the next write (with
//! the integrity check), so when space returns the signer writes again by
//! itself. Until a write succeeds, [`Writable::fault`] says why, and the
//! daemon's health is failing.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::Database;

use crate::RepoError;

/// The latest failed write, until a write succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFault {
    /// When writes began failing, Unix milliseconds.
    pub since_ms: i64,
    /// Writes failed since then.
    pub failures: u64,
    /// The latest cause.
    pub cause: String,
}

/// The writable database, reopened after a failed write.
pub(crate) struct Writable {
    db: RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    options: crate::OpenOptions,
    needs_reopen: AtomicBool,
    fault: Mutex<Option<WriteFault>>,
}

/// How long a reopen waits for readers to let go of the old handle.
const REOPEN_WAIT: Duration = Duration::from_secs(5);

impl Writable {
    pub(crate) fn new(db: Database, path: PathBuf, options: crate::OpenOptions) -> Writable {
        Writable {
            db: RwLock::new(Some(Arc::new(db))),
            path,
            options,
            needs_reopen: AtomicBool::new(false),
            fault: Mutex::new(None),
        }
    }

    /// The handle to use now (reopened first if the last write failed).
    pub(crate) fn get(&self) -> Result<Arc<Database>, RepoError> {
        if self.needs_reopen.load(Ordering::SeqCst) {
            if let Err(e) = self.reopen() {
                self.note::<()>(&Err(RepoError::Storage(e.to_string())));
                return Err(e);
            }
        }
        self.db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| RepoError::Storage("the repository is being reopened".into()))
    }

    fn reopen(&self) -> Result<(), RepoError> {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        if !self.needs_reopen.load(Ordering::SeqCst) {
            return Ok(());
        }
        if let Some(mut old) = slot.take() {
            // redb holds the file lock until the last handle is gone.
            let deadline = Instant::now() + REOPEN_WAIT;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still_shared) if Instant::now() < deadline => {
                        old = still_shared;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(still_shared) => {
                        *slot = Some(still_shared);
                        return Err(RepoError::Storage(
                            "cannot reopen the repository: a reader still holds it".into(),
                        ));
                    }
                }
            }
        }
        let db = crate::open_checked(&self.path, &self.options)?;
        *slot = Some(Arc::new(db));
        self.needs_reopen.store(false, Ordering::SeqCst);
        tracing::warn!(path = %self.path.display(), "repository reopened after a failed write");
        Ok(())
    }

    /// Notes a write's outcome: a storage failure (not a damaged record)
    /// schedules a reopen and is kept as the fault; a success clears it.
    pub(crate) fn note<T>(&self, result: &Result<T, RepoError>) {
        self.note_write(result, true);
    }

    /// Like [`Writable::note`]; a success clears the fault only when
    /// `clears` (a commit of records: a small audit entry that fits on a
    /// full disk does not show the disk can take certificates again).
    pub(crate) fn note_write<T>(&self, result: &Result<T, RepoError>, clears: bool) {
        let mut fault = self.fault.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(_) if !clears => {}
            Ok(_) => {
                if let Some(f) = fault.take() {
                    tracing::info!(failures = f.failures, "repository writes succeed again");
                }
            }
            // A damaged record is not a failing disk: only storage errors
            // count (and schedule a reopen).
            Err(RepoError::Storage(cause)) => {
                self.needs_reopen.store(true, Ordering::SeqCst);
                let f = fault.get_or_insert_with(|| WriteFault {
                    since_ms: crate::clock::now_us() / 1000,
                    failures: 0,
                    cause: String::new(),
                });
                f.failures += 1;
                f.cause = cause.clone();
            }
            Err(_) => {}
        }
    }

    /// The current write fault, if writes are failing.
    pub(crate) fn fault(&self) -> Option<WriteFault> {
        self.fault.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// How the repository file's bytes are used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Space {
    /// Bytes of keys and values stored.
    pub stored: u64,
    /// Bytes of the trees' own pages (branches, headers).
    pub metadata: u64,
    /// Bytes allocated but unused: partly filled pages and free pages.
    pub fragmented: u64,
    /// The file's length.
    pub file: u64,
    /// The bytes the file takes on disk (a file grown ahead of use is
    /// sparse until written).
    pub on_disk: u64,
}

impl crate::Repository {
    /// How the file's bytes are used (a write transaction, aborted: not
    /// beside a running daemon).
    pub fn space(&self) -> Result<Space, RepoError> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(self.path()).map_err(crate::storage)?;
        let (file, on_disk) = (meta.len(), meta.blocks() * 512);
        self.write(|txn| {
            let stats = txn.stats().map_err(crate::storage)?;
            Ok((
                Space {
                    stored: stats.stored_bytes(),
                    metadata: stats.metadata_bytes(),
                    fragmented: stats.fragmented_bytes(),
                    file,
                    on_disk,
                },
                false,
            ))
        })
    }
}
