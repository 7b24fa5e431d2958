//! The signer's durable repository, on redb.
//!
//! ```text
//! workers ─► Repository::record_issuance ─► committer thread ─► one redb write
//!   (block until durable)       ▲            (takes every waiting record:       transaction,
//!                               └─────────── group commit)                     fsync'd commit
//! ```
//!
//! A certificate is recorded before its response leaves: `record_issuance`
//! returns only after the commit that holds it is on disk. Records that
//! arrive while a commit runs go together into the next one, so durability
//! costs one fsync per batch, not per certificate.
//!
//! Modules by responsibility (dependencies point down; no cycles between
//! the record writers):
//!
//! | module | holds |
//! |---|---|
//! | `schema` | the certificate, request-id, expiry, revocation and CRL tables |
//! | `records` | the stored record types and their sealed encodings |
//! | `sealed` | CRC-32 over table name and value on every stored record |
//! | `outbox` | this signer's change events and the per-issuer set digests |
//! | `certs`, `revocations`, `crls`, `openpgp`, `audit` | per-record writers and readers; each record kind has one insert path, used by local commits and by the twin's events alike |
//! | `committer` | the group-commit thread (certificates, certifications, audit entries) |
//! | `apply` | the twin's events, applied through the same insert paths |
//! | `identity`, `clock`, `store` | whose repository this is, the time high-water mark, the write handle that reopens after a failed write |
//! | `check`, `backup` | maintenance: full check, backup, verify, restore, seed |
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use redb::{Database, ReadableDatabase, ReadableTableMetadata};

use committer::{committer, notify, Job};
use schema::{create_tables, CERTS, EXPIRY, REQUESTS, REVOCATIONS};

mod apply;
pub mod audit;
pub mod backup;
mod certs;
mod check;
mod clock;
mod committer;
mod crls;
pub mod identity;
pub mod openpgp;
mod outbox;
mod records;
mod revocations;
mod schema;
mod sealed;
mod store;
mod tree;

pub use apply::{ApplyReport, ReplicaState};
pub use audit::ChainReport;
pub use backup::{verify_backup, Summary as BackupSummary};
pub use certs::Snapshot;
pub use check::CheckReport;
pub use committer::Then;
pub use identity::{Expected, Identity, Refusal};
pub use openpgp::Certified;
pub use outbox::{Change, Event, SetDigest};
pub use records::{
    AuditEntry, CertRecord, CertificationRecord, Conflict, CrlMeta, CrlRecord, Recorded,
    RevocationRecord, Revoked,
};
pub use revocations::{revocation_wins, CrlView};
pub use store::{Space, WriteFault};
pub use tree::StoredCheckpoint;

/// Why a repository operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The database could not be opened, read or written.
    #[error("repository storage: {0}")]
    Storage(String),
    /// A stored record could not be decoded.
    #[error("repository record corrupt: {0}")]
    Corrupt(String),
    /// The serial is already taken for this issuer by another certificate.
    #[error("serial {serial} already issued by {issuer}")]
    SerialTaken {
        /// Issuer name.
        issuer: String,
        /// Serial, hex.
        serial: String,
    },
    /// The committer is gone (the daemon is stopping).
    #[error("repository closed")]
    Closed,
    /// The file is not this signer's repository, or there is none.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// An audit index or tree size beyond the log.
    #[error("not in the audit log: {0}")]
    OutOfRange(String),
    /// A write on a repository opened read-only (beside a running daemon).
    #[error("the repository is open read-only here (signerd holds it for writing)")]
    ReadOnly,
}

fn storage(e: impl std::fmt::Display) -> RepoError {
    RepoError::Storage(e.to_string())
}

/// Counters of the repository.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepoStats {
    /// Certificates stored.
    pub certificates: u64,
    /// Commits made by the committer.
    pub commits: u64,
    /// Records those commits held.
    pub committed_records: u64,
    /// Entries of the request id index (equal to `certificates` when consistent).
    pub requests: u64,
    /// Entries of the expiry index (equal to `certificates` when consistent).
    pub expiry_entries: u64,
    /// Revocations stored.
    pub revocations: u64,
}

/// The repository. Cheap to share behind an `Arc`.
pub struct Repository {
    db: Store,
    path: PathBuf,
    origin: String,
    identity: Identity,
    high_water: Arc<AtomicI64>,
    listener: Listener,
    jobs: Mutex<Option<Sender<Job>>>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    stats: Arc<Mutex<RepoStats>>,
}

/// The database handle: the daemon writes; inspection commands run beside
/// it on a read-only handle that follows its commits.
enum Store {
    Writable(Arc<store::Writable>),
    ReadOnly(redb::ReadOnlyDatabase),
}

/// How a repository is opened.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Bytes of memory redb may use to cache pages (a bound, not a target).
    pub cache_bytes: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A random-enough identifier for a new repository (time, process, path).
fn new_epoch(path: &Path) -> u64 {
    use sha2::Digest;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = sha2::Sha256::new();
    h.update(nanos.to_be_bytes());
    h.update(std::process::id().to_be_bytes());
    h.update(path.as_os_str().as_encoded_bytes());
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]) | 1
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `f`, turning a panic inside the storage engine (which a damaged
/// page can cause) into [`RepoError::Corrupt`]: nothing read from the disk
/// may take the daemon down.
pub(crate) fn guard<T>(f: impl FnOnce() -> Result<T, RepoError>) -> Result<T, RepoError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown failure".into());
        Err(RepoError::Corrupt(format!(
            "the storage engine failed on damaged data: {what}"
        )))
    })
}

fn builder(options: &OpenOptions) -> redb::Builder {
    let mut b = Database::builder();
    b.set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
        .set_cache_size(options.cache_bytes);
    b
}

/// Classifies a failure to open the file.
fn open_error(path: &str, e: redb::DatabaseError) -> RepoError {
    use redb::{DatabaseError as D, StorageError as S};
    match e {
        D::DatabaseAlreadyOpen | D::LockProtocolMismatch => Refusal::InUse(path.into()).into(),
        D::Storage(S::Corrupted(m)) if m.contains("magic number") => Refusal::NotARepository {
            path: path.into(),
            why: "not a redb database file".into(),
        }
        .into(),
        D::Storage(S::Io(e)) if e.to_string().contains("Not a redb database") => {
            Refusal::NotARepository {
                path: path.into(),
                why: "not a redb database file".into(),
            }
            .into()
        }
        D::Storage(S::Corrupted(m)) => RepoError::Corrupt(format!("{path}: {m}")),
        D::RepairAborted => RepoError::Corrupt(format!("{path}: damaged, and not repaired")),
        D::UpgradeRequired(v) => Refusal::NotARepository {
            path: path.into(),
            why: format!("redb file format {v}, older than this signerd reads"),
        }
        .into(),
        other => RepoError::Storage(format!("{path}: {other}")),
    }
}

/// Opens the file for writing with every page's checksum verified first: a
/// file damaged outside redb is refused rather than read.
pub(crate) fn open_checked(path: &Path, options: &OpenOptions) -> Result<Database, RepoError> {
    let shown = path.display().to_string();
    guard(|| {
        builder(options)
            .set_check_integrity_on_open(true)
            .open(path)
            .map_err(|e| open_error(&shown, e))
    })
}

/// Refuses a path that holds no repository file before redb sees it.
fn existing_file(path: &Path) -> Result<(), RepoError> {
    let shown = path.display().to_string();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Refusal::Missing(shown).into()),
        Err(e) => Err(RepoError::Storage(format!("{shown}: {e}"))),
        Ok(m) if !m.is_file() => Err(Refusal::NotARepository {
            path: shown,
            why: "not a regular file".into(),
        }
        .into()),
        Ok(m) if m.len() == 0 => Err(Refusal::Empty(shown).into()),
        Ok(_) => Ok(()),
    }
}

/// Makes a new redb file at `path` (refused when anything is there, even
/// from a racing creator) and lets `fill` write it; a failure leaves no file.
pub(crate) fn with_new_file<T>(
    path: &Path,
    options: &OpenOptions,
    fill: impl FnOnce(&Database) -> Result<T, RepoError>,
) -> Result<T, RepoError> {
    let shown = path.display().to_string();
    let mut new = std::fs::OpenOptions::new();
    new.read(true).write(true).create_new(true);
    // Every issued certificate and the audit log: this user's alone,
    // whatever the umask of whoever ran the command.
    std::os::unix::fs::OpenOptionsExt::mode(&mut new, 0o600);
    let file = new.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => RepoError::from(Refusal::Exists(shown.clone())),
        _ => RepoError::Storage(format!("{shown}: {e}")),
    })?;
    let result = guard(|| {
        let backend = redb::backends::FileBackend::new(file)
            .map_err(|e| RepoError::Storage(format!("{shown}: {e}")))?;
        let db = builder(options)
            .create_with_backend(backend)
            .map_err(|e| open_error(&shown, e))?;
        fill(&db)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

impl Repository {
    /// Creates a new, empty repository for `expected` and opens it. Refused
    /// when anything is already at `path` (a repository is never replaced
    /// by accident). The creation is the first entry of the audit log.
    pub fn create(
        path: &Path,
        expected: &Expected,
        options: &OpenOptions,
    ) -> Result<Repository, RepoError> {
        with_new_file(path, options, |db| {
            let txn = db.begin_write().map_err(storage)?;
            create_tables(&txn)?;
            identity::write(&txn, &expected.identity(clock::now_secs()))?;
            {
                let mut meta = txn.open_table(crate::outbox::META).map_err(storage)?;
                meta.insert("epoch", new_epoch(path)).map_err(storage)?;
                meta.insert("digests", 1).map_err(storage)?;
            }
            if expected.peer_id.is_some() {
                outbox::mark_twinned(&txn)?;
            }
            audit::append(
                &txn,
                &expected.signer_id,
                vec![AuditEntry::new("repository", "create", "ok")
                    .fact("path", path.display().to_string())
                    .fact("schema", identity::SCHEMA.to_string())],
            )?;
            txn.commit().map_err(storage)
        })?;
        Repository::open(path, expected, options)
    }

    /// Opens an existing repository after checking that it is the one
    /// `expected` describes (see [`identity`]) and that every page of it
    /// passes redb's checksums; starts the committer. Never creates a file.
    /// CAs that `expected` names for the first time are bound to the
    /// repository (and audited).
    pub fn open(
        path: &Path,
        expected: &Expected,
        options: &OpenOptions,
    ) -> Result<Repository, RepoError> {
        existing_file(path)?;
        let shown = path.display().to_string();
        let db = open_checked(path, options)?;
        let identity = guard(|| {
            let txn = db.begin_write().map_err(storage)?;
            let found = {
                let read = db.begin_read().map_err(storage)?;
                identity::read(&read)?
            };
            let Some(found) = found else {
                return Err(Refusal::NotARepository {
                    path: shown.clone(),
                    why: "it has no identity record (made by no signerd, or by one before repository identities)".into(),
                }
                .into());
            };
            let identity = match identity::reconcile(&shown, &found, expected)? {
                None if found.peer_id.is_some()
                    && !outbox::twinned(&txn.open_table(outbox::META).map_err(storage)?)? =>
                {
                    // A pair's repository written before the outbox was
                    // kept only for pairs.
                    outbox::mark_twinned(&txn)?;
                    txn.commit().map_err(storage)?;
                    return Ok(found);
                }
                None => found,
                Some(updated) => {
                    create_tables(&txn)?;
                    let twinned = outbox::twinned(&txn.open_table(outbox::META).map_err(storage)?)?;
                    if found.peer_id.is_some() && !twinned {
                        // A pair's repository from before the outbox was
                        // kept only for pairs: its events are all there.
                        outbox::mark_twinned(&txn)?;
                    } else if updated.peer_id.is_some() && !twinned {
                        let events = outbox::become_twinned(&txn, &expected.signer_id)?;
                        tracing::info!(
                            events,
                            twin = updated.peer_id.as_deref().unwrap_or_default(),
                            "the repository is one of a pair now: what it recorded alone goes to the twin"
                        );
                    }
                    identity::write(&txn, &updated)?;
                    let added: Vec<String> = updated
                        .cas
                        .keys()
                        .filter(|k| !found.cas.contains_key(*k))
                        .cloned()
                        .collect();
                    let mut entry =
                        AuditEntry::new("repository", "bind", "ok").fact("cas", added.join(","));
                    if found.peer_id != updated.peer_id {
                        entry = entry.fact("peer_id", updated.peer_id.clone().unwrap_or_default());
                    }
                    audit::append(&txn, &expected.signer_id, vec![entry])?;
                    txn.commit().map_err(storage)?;
                    return Ok(updated);
                }
            };
            txn.abort().map_err(storage)?;
            Ok(identity)
        })?;
        let mark = guard(|| clock::read(&db.begin_read().map_err(storage)?))?;
        let high_water = Arc::new(AtomicI64::new(mark.unwrap_or(i64::MIN)));
        let db = Arc::new(store::Writable::new(
            db,
            path.to_path_buf(),
            options.clone(),
        ));
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Mutex::new(RepoStats::default()));
        let listener: Listener = Arc::new(Mutex::new(None));
        let origin = expected.signer_id.clone();
        let handle = {
            let db = Arc::clone(&db);
            let stats = Arc::clone(&stats);
            let origin = origin.clone();
            let listener = Arc::clone(&listener);
            let high_water = Arc::clone(&high_water);
            std::thread::Builder::new()
                .name("repo-committer".into())
                .spawn(move || committer(&db, &origin, &rx, &stats, &listener, &high_water))
                .map_err(storage)?
        };
        Ok(Repository {
            db: Store::Writable(db),
            path: path.to_path_buf(),
            origin,
            identity,
            high_water,
            listener,
            jobs: Mutex::new(Some(tx)),
            committer: Mutex::new(Some(handle)),
            stats,
        })
    }

    /// Opens a repository for reading only, beside a daemon that holds it
    /// for writing (it follows the daemon's commits): inspection, checks and
    /// backups while the signer serves. The identity is checked as by
    /// [`Repository::open`], but nothing is recorded. A file that needs
    /// recovery after a crash is refused here; open it writable (with the
    /// daemon stopped) to recover it.
    pub fn open_read_only(
        path: &Path,
        expected: &Expected,
        options: &OpenOptions,
    ) -> Result<Repository, RepoError> {
        existing_file(path)?;
        let shown = path.display().to_string();
        let db = guard(|| {
            builder(options)
                .open_read_only(path)
                .map_err(|e| open_error(&shown, e))
        })?;
        let (identity, mark) = guard(|| {
            let txn = db.begin_read().map_err(storage)?;
            let found = identity::read(&txn)?.ok_or_else(|| Refusal::NotARepository {
                path: shown.clone(),
                why: "it has no identity record".into(),
            })?;
            identity::reconcile(&shown, &found, expected)?;
            Ok((found, clock::read(&txn)?))
        })?;
        Ok(Repository {
            db: Store::ReadOnly(db),
            path: path.to_path_buf(),
            origin: expected.signer_id.clone(),
            identity,
            high_water: Arc::new(AtomicI64::new(mark.unwrap_or(i64::MIN))),
            listener: Arc::new(Mutex::new(None)),
            jobs: Mutex::new(None),
            committer: Mutex::new(None),
            stats: Arc::new(Mutex::new(RepoStats::default())),
        })
    }

    /// Opens the repository writable if no other process holds it, else
    /// read-only beside the process that does (the running daemon).
    pub fn open_for_inspection(
        path: &Path,
        expected: &Expected,
        options: &OpenOptions,
    ) -> Result<Repository, RepoError> {
        match Repository::open(path, expected, options) {
            Err(RepoError::Refused(Refusal::InUse(_))) => {
                Repository::open_read_only(path, expected, options)
            }
            other => other,
        }
    }

    /// True when opened read-only beside a running daemon.
    pub fn is_read_only(&self) -> bool {
        matches!(self.db, Store::ReadOnly(_))
    }

    /// The latest time (Unix milliseconds) this signer has put into a record
    /// it vouches for; `None` before the first.
    pub fn time_high_water(&self) -> Option<i64> {
        let v = self.high_water.load(Ordering::SeqCst);
        (v != i64::MIN).then_some(v)
    }

    /// Lowers (or sets) the time high-water mark to the clock's current
    /// time: the operator's answer to a clock that ran ahead and was set
    /// right, after which signing was refused. The change is audited with
    /// the old and new mark and `reason`; returns the old mark.
    pub fn accept_clock(&self, now_ms: i64, reason: &str) -> Result<Option<i64>, RepoError> {
        let old = self.write(|txn| {
            let old = clock::reset(txn, now_ms)?;
            audit::append(
                txn,
                &self.origin,
                vec![AuditEntry::new("setup", "accept-clock", "ok")
                    .fact(
                        "old_mark_ms",
                        old.map(|m| m.to_string()).unwrap_or_default(),
                    )
                    .fact("new_mark_ms", now_ms.to_string())
                    .fact("reason", reason.to_string())],
            )?;
            Ok((old, true))
        })?;
        self.high_water.store(now_ms, Ordering::SeqCst);
        Ok(old)
    }

    /// Why writes are failing, while they are (cleared by the next write
    /// that succeeds).
    pub fn write_fault(&self) -> Option<WriteFault> {
        match &self.db {
            Store::Writable(w) => w.fault(),
            Store::ReadOnly(_) => None,
        }
    }

    /// The repository's identity as stored.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a read transaction (a consistent snapshot), guarded
    /// against panics of the storage engine.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, RepoError>,
    ) -> Result<T, RepoError> {
        let txn = self.begin_read()?;
        // Moved in, so that its end is guarded too.
        guard(move || f(&txn))
    }

    /// A read transaction (a consistent snapshot), guarded like
    /// [`Repository::read`].
    pub(crate) fn begin_read(&self) -> Result<redb::ReadTransaction, RepoError> {
        guard(|| {
            match &self.db {
                Store::Writable(w) => w.get()?.begin_read(),
                Store::ReadOnly(db) => db.begin_read(),
            }
            .map_err(storage)
        })
    }

    /// Runs `f` in a write transaction, committed when it returns
    /// `(_, true)` and aborted otherwise; guarded like [`Repository::read`].
    /// The outcome is noted for [`Repository::write_fault`].
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(T, bool), RepoError>,
    ) -> Result<T, RepoError> {
        let Store::Writable(w) = &self.db else {
            return Err(RepoError::ReadOnly);
        };
        let result = guard(|| {
            let txn = w.get()?.begin_write().map_err(storage)?;
            let (value, commit) = f(&txn)?;
            if commit {
                txn.commit().map_err(storage)?;
            } else {
                txn.abort().map_err(storage)?;
            }
            Ok(value)
        });
        w.note(&result);
        result
    }

    /// This signer's id (the origin of its events).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Sets the function called after every commit that added events to the
    /// outbox (the publisher's wake-up). It must be quick and not block.
    pub fn set_listener(&self, f: Arc<dyn Fn() + Send + Sync>) {
        *self.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }

    fn notify(&self) {
        notify(&self.listener);
    }

    /// Counters.
    pub fn stats(&self) -> Result<RepoStats, RepoError> {
        self.read(|txn| {
            let certs = txn.open_table(CERTS).map_err(storage)?;
            let mut stats = *self.stats.lock().unwrap_or_else(|p| p.into_inner());
            stats.certificates = certs.len().map_err(storage)?;
            stats.requests = txn
                .open_table(REQUESTS)
                .map_err(storage)?
                .len()
                .map_err(storage)?;
            stats.expiry_entries = txn
                .open_table(EXPIRY)
                .map_err(storage)?
                .len()
                .map_err(storage)?;
            stats.revocations = txn
                .open_table(REVOCATIONS)
                .map_err(storage)?
                .len()
                .map_err(storage)?;
            Ok(stats)
        })
    }

    /// Stops the committer after the records already handed to it.
    pub fn close(&self) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = self
            .committer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = handle.join();
        }
    }
}

impl Drop for Repository {
    fn drop(&mut self) {
        self.close();
    }
}

pub(crate) type Listener = Arc<Mutex<Option<Arc<dyn Fn() + Send + Sync>>>>;

/// Base64 of DER, for logs and exports.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests;
