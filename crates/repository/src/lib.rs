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
//! Tables: certificates by (issuer, serial); request id → (issuer, serial,
//! request digest); expiry index (notAfter, issuer, serial). Revocations,
//! CRL state, the audit log and replication state get tables of their own
//! beside these.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
};
use serde::{Deserialize, Serialize};
use tracing::warn;

pub mod audit;
pub mod backup;
mod check;
mod clock;
pub mod identity;
pub mod openpgp;
pub mod replica;
mod sealed;
mod store;
pub use audit::{AuditEntry, ChainReport};
pub use backup::{verify_backup, Summary as BackupSummary};
pub use check::CheckReport;
pub use identity::{Expected, Identity, Refusal};
pub use openpgp::{CertificationRecord, Certified};
use replica::{append_event, digest_cert, digest_revocation, Change};
pub use replica::{ApplyReport, Conflict, Event, ReplicaState, SetDigest};
pub use store::WriteFault;

const CERTS: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new("certs_v1");
const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("requests_v1");
const EXPIRY: TableDefinition<(i64, &str, &[u8]), ()> = TableDefinition::new("expiry_v1");
/// Key: (issuer, serial length, serial): iteration yields serials in numeric order.
const REVOCATIONS: TableDefinition<(&str, u8, &[u8]), &[u8]> =
    TableDefinition::new("revocations_v1");
/// Per issuer: a counter bumped by every new revocation (tells a stale CRL).
const REVOCATION_SEQ: TableDefinition<&str, u64> = TableDefinition::new("revocation_seq_v1");
/// Per issuer: the last CRL signed.
const CRLS: TableDefinition<&str, &[u8]> = TableDefinition::new("crls_v1");
/// Every CRL signed, without its DER: (issuer, number) → metadata. A client's
/// older copy is recognised here, and its entries derived for a difference.
const CRL_HISTORY: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new("crl_history_v1");

/// Largest number of records one group commit takes.
const MAX_BATCH: usize = 256;

/// How long the committer waits for more records after the first of a batch.
/// A commit costs two fsyncs and noticeable CPU; waiting this little lets
/// concurrent issuances share one, at the price of this much latency.
const GATHER: std::time::Duration = std::time::Duration::from_millis(1);

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
    /// A write on a repository opened read-only (beside a running daemon).
    #[error("the repository is open read-only here (signerd holds it for writing)")]
    ReadOnly,
}

fn storage(e: impl std::fmt::Display) -> RepoError {
    RepoError::Storage(e.to_string())
}

/// An issued certificate and what the signer knows about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// Issuer (CA) name as configured.
    pub issuer: String,
    /// Serial number, big-endian bytes as encoded in the certificate.
    pub serial: Vec<u8>,
    /// The certificate, DER.
    #[serde(with = "b64")]
    pub der: Vec<u8>,
    /// Profile used.
    pub profile: String,
    /// The client's idempotency key.
    pub request_id: String,
    /// SHA-256 of the request that produced it (detects a reused request id).
    #[serde(with = "b64")]
    pub request_digest: Vec<u8>,
    /// Subject, RFC 4514 string.
    pub subject: String,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// When it was issued, Unix milliseconds.
    pub issued_at_ms: i64,
    /// Which signer issued it.
    pub signer_id: String,
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Serialize, Deserialize)]
struct RequestEntry {
    issuer: String,
    serial: Vec<u8>,
    digest: Vec<u8>,
}

/// A revocation as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationRecord {
    /// Issuer (CA) name as configured.
    pub issuer: String,
    /// Serial number, unsigned big-endian, no leading zero octets.
    pub serial: Vec<u8>,
    /// RFC 5280 CRLReason code.
    pub reason: u8,
    /// When the signer recorded it, Unix seconds (the CRL's revocationDate).
    pub revoked_at: i64,
    /// When the key is believed compromised or the certificate unfit, Unix seconds.
    pub invalidity_date: Option<i64>,
    /// The client's request id.
    pub request_id: String,
    /// True for a serial this signer did not issue (migrated from a legacy CA).
    pub legacy: bool,
    /// Which signer recorded it.
    pub signer_id: String,
    /// The certificate's notAfter (Unix seconds) where known: expired entries
    /// leave the CRL after a grace period.
    #[serde(default)]
    pub cert_not_after: Option<i64>,
    /// The issuer's revocation counter value this revocation set (1, 2, …):
    /// a CRL made at counter N holds exactly the revocations with seq ≤ N
    /// (less expired ones).
    #[serde(default)]
    pub seq: u64,
    /// True when this record replaced an earlier revocation of the serial
    /// (the twins' merge rule): a CRL difference then removes and adds it.
    #[serde(default)]
    pub replaced: bool,
}

/// What is kept of every CRL signed (its DER only for the latest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrlMeta {
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// The revocation counter it reflects.
    pub revocation_seq: u64,
    /// SHA-256 of its DER.
    pub sha256: Vec<u8>,
    /// Entries.
    pub entries: u64,
    /// DER size in bytes.
    pub size: u64,
}

/// The last CRL signed for an issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrlRecord {
    /// Issuer (CA) name.
    pub issuer: String,
    /// CRL number, unsigned big-endian.
    pub number: Vec<u8>,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds.
    pub next_update: i64,
    /// The issuer's revocation counter the CRL reflects.
    pub revocation_seq: u64,
    /// Entries in the CRL.
    pub entries: u64,
    /// SHA-256 of the DER.
    #[serde(with = "b64")]
    pub sha256: Vec<u8>,
    /// The CRL, DER.
    #[serde(with = "b64")]
    pub der: Vec<u8>,
}

/// What recording a revocation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// Newly revoked; durable.
    Inserted,
    /// Already revoked with the same reason: the original record.
    Existing(Box<RevocationRecord>),
    /// Already revoked with another reason: the original record; nothing changed.
    Conflict(Box<RevocationRecord>),
    /// The issuer never issued this serial (and unknown serials are not accepted).
    UnknownSerial,
}

/// What recording an issuance did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The record is now durable.
    Inserted,
    /// The request id was already recorded: this is the original record;
    /// the new certificate was not stored (and must not be handed out).
    Existing(Box<CertRecord>),
}

/// Called with the outcome once the commit holding the record is on disk.
pub type Then = Box<dyn FnOnce(Result<Recorded, RepoError>) + Send>;

struct Issue {
    record: CertRecord,
    then: Then,
}

enum Job {
    Issue(Issue),
    Audit(AuditEntry),
    Certify(openpgp::Certify),
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
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| match e.kind() {
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

/// Every table, created with the repository.
fn create_tables(txn: &redb::WriteTransaction) -> Result<(), RepoError> {
    txn.open_table(identity::IDENTITY).map_err(storage)?;
    txn.open_table(replica::EVENTS).map_err(storage)?;
    txn.open_table(replica::META).map_err(storage)?;
    txn.open_table(replica::DIGESTS).map_err(storage)?;
    txn.open_table(audit::AUDIT).map_err(storage)?;
    txn.open_table(audit::AUDIT_PEER).map_err(storage)?;
    txn.open_table(replica::APPLIED).map_err(storage)?;
    txn.open_table(replica::CONFLICTS).map_err(storage)?;
    txn.open_table(replica::CRL_FLOOR).map_err(storage)?;
    txn.open_table(openpgp::CERTIFICATIONS).map_err(storage)?;
    txn.open_table(CERTS).map_err(storage)?;
    txn.open_table(REQUESTS).map_err(storage)?;
    txn.open_table(EXPIRY).map_err(storage)?;
    txn.open_table(REVOCATIONS).map_err(storage)?;
    txn.open_table(REVOCATION_SEQ).map_err(storage)?;
    txn.open_table(CRLS).map_err(storage)?;
    txn.open_table(CRL_HISTORY).map_err(storage)?;
    txn.open_table(clock::HIGH_WATER).map_err(storage)?;
    Ok(())
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
                let mut meta = txn.open_table(replica::META).map_err(storage)?;
                meta.insert("epoch", new_epoch(path)).map_err(storage)?;
                meta.insert("digests", 1).map_err(storage)?;
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
                None => found,
                Some(updated) => {
                    create_tables(&txn)?;
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
        guard(|| {
            let txn = match &self.db {
                Store::Writable(w) => w.get()?.begin_read(),
                Store::ReadOnly(db) => db.begin_read(),
            }
            .map_err(storage)?;
            f(&txn)
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
    fn send(&self, job: Job) -> Option<Job> {
        match self.jobs.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(jobs) => jobs.send(job).err().map(|e| e.0),
            None => Some(job),
        }
    }

    /// Appends an entry to the audit chain with the next group commit (the
    /// caller does not wait). After [`Repository::close`] it is written in a
    /// transaction of its own.
    pub fn audit(&self, entry: AuditEntry) {
        if let Some(Job::Audit(entry)) = self.send(Job::Audit(entry)) {
            let written = self.write(|txn| {
                audit::append(txn, &self.origin, vec![entry])?;
                Ok(((), true))
            });
            if let Err(e) = written {
                warn!(cause = %e, "audit entry not written");
            }
        }
    }

    /// The head of this signer's audit chain: (entries, last hash).
    pub fn audit_head(&self) -> Result<Option<(u64, Vec<u8>)>, RepoError> {
        self.read(|txn| {
            let table = txn.open_table(audit::AUDIT).map_err(storage)?;
            let head = match table.last().map_err(storage)? {
                Some((k, v)) => Some((k.value(), AuditEntry::decode(v.value())?.hash)),
                None => None,
            };
            Ok(head)
        })
    }

    /// Verifies this signer's audit chain and the twins' copies.
    pub fn audit_verify(&self) -> Result<Vec<audit::ChainReport>, RepoError> {
        self.read(|txn| audit::verify_all(txn, &self.origin))
    }

    /// Audit entries (this signer's, then the twins' copies) that `keep` selects.
    pub fn audit_entries(
        &self,
        mut keep: impl FnMut(&AuditEntry) -> bool,
    ) -> Result<Vec<AuditEntry>, RepoError> {
        self.read(|txn| {
            let own = txn.open_table(audit::AUDIT).map_err(storage)?;
            let peers = txn.open_table(audit::AUDIT_PEER).map_err(storage)?;
            let own = own.iter().map_err(storage)?.map(|item| {
                item.map_err(storage)
                    .and_then(|(_, v)| AuditEntry::decode(v.value()))
            });
            let peers = peers.iter().map_err(storage)?.map(|item| {
                item.map_err(storage)
                    .and_then(|(_, v)| AuditEntry::decode(v.value()))
            });
            let mut out = Vec::new();
            for e in own.chain(peers) {
                let e = e?;
                if keep(&e) {
                    out.push(e);
                }
            }
            Ok(out)
        })
    }

    /// The record for a request id, if any.
    pub fn find_by_request(&self, request_id: &str) -> Result<Option<CertRecord>, RepoError> {
        self.read(|txn| {
            let requests = txn.open_table(REQUESTS).map_err(storage)?;
            let Some(entry) = requests.get(request_id).map_err(storage)? else {
                return Ok(None);
            };
            let entry: RequestEntry = decode_request(entry.value())?;
            let certs = txn.open_table(CERTS).map_err(storage)?;
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
        self.read(|txn| {
            let certs = txn.open_table(CERTS).map_err(storage)?;
            Ok(certs.get((issuer, serial)).map_err(storage)?.is_some())
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
                    RepoError::Corrupt(format!("certificate {issuer}/{}: {e}", hex(serial)))
                }));
                n += 1;
            }
            Ok(n)
        })
    }

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
                        let mut digests = txn.open_table(replica::DIGESTS).map_err(storage)?;
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
                    let mut digests = txn.open_table(replica::DIGESTS).map_err(storage)?;
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
        mut f: impl FnMut(RevocationRecord),
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
                f(decode_revocation(value.value())?);
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

    /// Stores a signed CRL as the issuer's latest.
    pub fn store_crl(&self, crl: &CrlRecord) -> Result<(), RepoError> {
        let mark = self.write(|txn| {
            {
                let mut crls = txn.open_table(CRLS).map_err(storage)?;
                let value = sealed::seal(CRLS.name(), crl)?;
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
            replica::raise_crl_floor(txn, &crl.issuer, &crl.number)?;
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
            let floor = txn.open_table(replica::CRL_FLOOR).map_err(storage)?;
            Ok(floor
                .get(issuer)
                .map_err(storage)?
                .map(|v| v.value().to_vec()))
        })
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

    /// Up to `limit` outbox events with sequence numbers above `after`, encoded.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, RepoError> {
        self.read(|txn| {
            let events = txn.open_table(replica::EVENTS).map_err(storage)?;
            let mut out = Vec::new();
            for item in events.range(after + 1..).map_err(storage)?.take(limit) {
                let (k, v) = item.map_err(storage)?;
                out.push((
                    k.value(),
                    sealed::payload(replica::EVENTS.name(), v.value())?.to_vec(),
                ));
            }
            Ok(out)
        })
    }

    /// Drops outbox events up to `upto` (the twin has applied them).
    pub fn trim_events(&self, upto: u64) -> Result<u64, RepoError> {
        self.write(|txn| {
            let removed = {
                let mut events = txn.open_table(replica::EVENTS).map_err(storage)?;
                let mut n = 0;
                events
                    .retain_in(..=upto, |_, _| {
                        n += 1;
                        false
                    })
                    .map_err(storage)?;
                n
            };
            Ok((removed, true))
        })
    }

    /// Applies the twin's events (each with its stream sequence) in one
    /// durable transaction; repeats and this signer's own events are skipped.
    pub fn apply_events(&self, events: &[(Event, u64)]) -> Result<ApplyReport, RepoError> {
        self.write(|txn| {
            let report = replica::apply(txn, &self.origin, events)?;
            let commit = report.applied > 0;
            Ok((report, commit))
        })
    }

    /// A consistent snapshot of the replication state.
    pub fn replica_state(&self) -> Result<ReplicaState, RepoError> {
        self.read(replica::read_state)
    }

    /// The request id conflicts found while applying the twin's events.
    pub fn conflicts(&self) -> Result<Vec<Conflict>, RepoError> {
        self.read(|txn| {
            let table = txn.open_table(replica::CONFLICTS).map_err(storage)?;
            let mut out = Vec::new();
            for item in table.iter().map_err(storage)? {
                let (_, v) = item.map_err(storage)?;
                out.push(sealed::open(replica::CONFLICTS.name(), v.value())?);
            }
            Ok(out)
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

type Listener = Arc<Mutex<Option<Arc<dyn Fn() + Send + Sync>>>>;

fn notify(listener: &Listener) {
    let f = listener.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(f) = f {
        f();
    }
}

type RevocationTable<'t> = redb::Table<'t, (&'static str, u8, &'static [u8]), &'static [u8]>;
type SeqTable<'t> = redb::Table<'t, &'static str, u64>;

/// Stores a new revocation: legacy when the issuer has no such certificate,
/// the certificate's notAfter (else the one given), and the issuer's next
/// revocation counter value.
fn insert_revocation(
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
    let value = sealed::seal(REVOCATIONS.name(), &record)?;
    revocations
        .insert(
            (record.issuer.as_str(), serial_len, record.serial.as_slice()),
            value.as_slice(),
        )
        .map_err(storage)?;
    seq.insert(record.issuer.as_str(), next).map_err(storage)?;
    Ok(record)
}

fn decode(bytes: &[u8]) -> Result<CertRecord, RepoError> {
    sealed::open(CERTS.name(), bytes)
}

fn decode_request(bytes: &[u8]) -> Result<RequestEntry, RepoError> {
    sealed::open(REQUESTS.name(), bytes)
}

fn decode_revocation(bytes: &[u8]) -> Result<RevocationRecord, RepoError> {
    sealed::open(REVOCATIONS.name(), bytes)
}

/// A certificate record and its request id entry, sealed for their tables.
fn encode_issued(r: &CertRecord) -> Result<(Vec<u8>, Vec<u8>), RepoError> {
    let entry = RequestEntry {
        issuer: r.issuer.clone(),
        serial: r.serial.clone(),
        digest: r.request_digest.clone(),
    };
    Ok((
        sealed::seal(CERTS.name(), r)?,
        sealed::seal(REQUESTS.name(), &entry)?,
    ))
}

fn committer(
    db: &store::Writable,
    origin: &str,
    rx: &Receiver<Job>,
    stats: &Mutex<RepoStats>,
    listener: &Listener,
    high_water: &AtomicI64,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let until = std::time::Instant::now() + GATHER;
        while batch.len() < MAX_BATCH {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
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
        let outcome = guard(|| {
            let handle = db.get()?;
            commit_batch(&handle, origin, &batch, audits, &certifies)
        });
        db.note(&outcome);
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
fn commit_batch(
    db: &Database,
    origin: &str,
    batch: &[Issue],
    audits: Vec<AuditEntry>,
    certifies: &[openpgp::Certify],
) -> Result<CommitOutcome, RepoError> {
    let txn = db.begin_write().map_err(storage)?;
    let mut results = Vec::with_capacity(batch.len());
    {
        let mut certs = txn.open_table(CERTS).map_err(storage)?;
        let mut requests = txn.open_table(REQUESTS).map_err(storage)?;
        let mut expiry = txn.open_table(EXPIRY).map_err(storage)?;
        let mut digests = txn.open_table(replica::DIGESTS).map_err(storage)?;
        for job in batch {
            let r = &job.record;
            let existing = requests
                .get(r.request_id.as_str())
                .map_err(storage)?
                .map(|v| v.value().to_vec());
            if let Some(entry) = existing {
                // A damaged record fails this request alone, never the batch.
                let original = decode_request(&entry).and_then(|entry| {
                    certs
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
                results.push(original.map(|o| Recorded::Existing(Box::new(o))));
                continue;
            }
            if certs
                .get((r.issuer.as_str(), r.serial.as_slice()))
                .map_err(storage)?
                .is_some()
            {
                results.push(Err(RepoError::SerialTaken {
                    issuer: r.issuer.clone(),
                    serial: hex(&r.serial),
                }));
                continue;
            }
            let (value, entry) = encode_issued(r)?;
            certs
                .insert((r.issuer.as_str(), r.serial.as_slice()), value.as_slice())
                .map_err(storage)?;
            requests
                .insert(r.request_id.as_str(), entry.as_slice())
                .map_err(storage)?;
            expiry
                .insert((r.not_after, r.issuer.as_str(), r.serial.as_slice()), ())
                .map_err(storage)?;
            digest_cert(&mut digests, r)?;
            append_event(&txn, origin, Change::Issued(r.clone()))?;
            results.push(Ok(Recorded::Inserted));
        }
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
type CommitOutcome = (Vec<Result<Recorded, RepoError>>, Vec<Certified>, i64);

/// Base64 of DER, for logs and exports.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests;
