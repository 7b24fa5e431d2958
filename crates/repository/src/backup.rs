//! Online, complete backups.
//!
//! ```text
//! file = "SIGNER-BACKUP 1\n" ‖ section* ‖ SHA-256(everything before)
//! section = u32 length (big-endian) ‖ msgpack(Section)
//! Header { identity, taken_at_ms, tables } · Rows { table, [(key, value)] }* · Trailer { rows per table, content digest, set digests }
//! ```
//!
//! A backup is one read transaction: a consistent snapshot of every table
//! (certificates, request ids, revocations, CRL state, OpenPGP
//! certifications, the audit chain and the twin's copy, replication state,
//! the identity), taken while the daemon serves. Rows are copied as redb
//! stores them, so a restore reproduces the file's content exactly; the
//! content digest (SHA-256 over every table's rows in order) is recomputed
//! from the restored repository and must match. A restored repository gets
//! a new replication epoch (the twin then treats it as a replaced
//! repository rather than mistaking new events for ones it has seen).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use redb::{Key, ReadableDatabase, ReadableTable, TableDefinition, TableHandle, Value};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::schema::{CERTS, CRLS, CRL_HISTORY, EXPIRY, REQUESTS, REVOCATIONS, REVOCATION_SEQ};
use crate::{audit, clock, identity, openpgp, sealed, storage, Identity, RepoError, Repository};

const MAGIC: &[u8] = b"SIGNER-BACKUP 1\n";
/// Rows per section (bounds the memory a backup or restore holds).
const CHUNK: usize = 4096;
/// Rows per restore transaction.
const RESTORE_BATCH: usize = 200_000;

/// One part of a backup file.
#[derive(Debug, Serialize, Deserialize)]
enum Section {
    Header {
        identity: Identity,
        taken_at_ms: i64,
        tables: Vec<String>,
    },
    Rows {
        table: String,
        rows: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>,
    },
    Trailer(Summary),
}

/// What a backup holds, as its trailer states and verification recomputes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Rows per table.
    pub rows: BTreeMap<String, u64>,
    /// SHA-256 over every table's name and rows in order, hex.
    pub content_sha256: String,
    /// Per issuer: the set digest summary (certificates and revocations).
    pub set_digests: BTreeMap<String, String>,
}

impl Summary {
    /// Rows of one table.
    pub fn count(&self, table: &str) -> u64 {
        self.rows.get(table).copied().unwrap_or(0)
    }
}

/// The tables a backup holds, in order; `$f` is applied to each definition.
macro_rules! for_each_table {
    ($f:ident, $($arg:expr),*) => {{
        $f(identity::IDENTITY, $($arg),*)?;
        $f(crate::outbox::META, $($arg),*)?;
        $f(CERTS, $($arg),*)?;
        $f(REQUESTS, $($arg),*)?;
        $f(EXPIRY, $($arg),*)?;
        $f(REVOCATIONS, $($arg),*)?;
        $f(REVOCATION_SEQ, $($arg),*)?;
        $f(CRLS, $($arg),*)?;
        $f(crate::crls::CRL_DER, $($arg),*)?;
        $f(CRL_HISTORY, $($arg),*)?;
        $f(openpgp::CERTIFICATIONS, $($arg),*)?;
        $f(audit::AUDIT, $($arg),*)?;
        $f(audit::AUDIT_PEER, $($arg),*)?;
        $f(crate::tree::AUDIT_TREE, $($arg),*)?;
        $f(crate::tree::AUDIT_CHECKPOINTS, $($arg),*)?;
        $f(crate::tree::AUDIT_ACKS, $($arg),*)?;
        $f(crate::tree::AUDIT_PEER_CHECKPOINTS, $($arg),*)?;
        $f(crate::tree::AUDIT_COSIGNED, $($arg),*)?;
        $f(crate::tree::AUDIT_COSIGS, $($arg),*)?;
        $f(crate::outbox::EVENTS, $($arg),*)?;
        $f(crate::apply::APPLIED, $($arg),*)?;
        $f(crate::outbox::DIGESTS, $($arg),*)?;
        $f(crate::apply::CONFLICTS, $($arg),*)?;
        $f(crate::crls::CRL_FLOOR, $($arg),*)?;
        $f(clock::HIGH_WATER, $($arg),*)?;
    }};
}

/// Streams rows out in sections, hashing as it goes.
struct Out<'w> {
    w: &'w mut dyn Write,
    file: Sha256,
    content: Sha256,
    summary: Summary,
}

impl Out<'_> {
    fn raw(&mut self, bytes: &[u8]) -> Result<(), RepoError> {
        self.file.update(bytes);
        self.w.write_all(bytes).map_err(storage)
    }

    fn section(&mut self, s: &Section) -> Result<(), RepoError> {
        let body = rmp_serde::to_vec(s).map_err(storage)?;
        let len = u32::try_from(body.len()).map_err(storage)?;
        self.raw(&len.to_be_bytes())?;
        self.raw(&body)
    }
}

fn content_row(content: &mut Sha256, table: &str, key: &[u8], value: &[u8]) {
    content.update((table.len() as u32).to_be_bytes());
    content.update(table.as_bytes());
    content.update((key.len() as u32).to_be_bytes());
    content.update(key);
    content.update((value.len() as u32).to_be_bytes());
    content.update(value);
}

fn dump<K: Key + 'static, V: Value + 'static>(
    def: TableDefinition<K, V>,
    txn: &redb::ReadTransaction,
    out: &mut Out<'_>,
) -> Result<(), RepoError> {
    let name = def.name().to_string();
    let table = match txn.open_table(def) {
        Ok(t) => t,
        // A table a newer version added, in a repository it never wrote.
        Err(redb::TableError::TableDoesNotExist(_)) => {
            out.summary.rows.insert(name, 0);
            return Ok(());
        }
        Err(e) => return Err(storage(e)),
    };
    let mut rows = Vec::with_capacity(CHUNK);
    let mut n = 0u64;
    for item in table.iter().map_err(storage)? {
        let (k, v) = item.map_err(storage)?;
        let key = K::as_bytes(&k.value()).as_ref().to_vec();
        let value = V::as_bytes(&v.value()).as_ref().to_vec();
        content_row(&mut out.content, &name, &key, &value);
        rows.push((key.into(), value.into()));
        n += 1;
        if rows.len() == CHUNK {
            out.section(&Section::Rows {
                table: name.clone(),
                rows: std::mem::take(&mut rows),
            })?;
        }
    }
    if !rows.is_empty() {
        out.section(&Section::Rows {
            table: name.clone(),
            rows,
        })?;
    }
    out.summary.rows.insert(name, n);
    Ok(())
}

fn name_of<K: Key + 'static, V: Value + 'static>(
    def: TableDefinition<K, V>,
    collect: &mut dyn FnMut(&str),
) -> Result<(), RepoError> {
    collect(def.name());
    Ok(())
}

fn set_digests(txn: &redb::ReadTransaction) -> Result<BTreeMap<String, String>, RepoError> {
    Ok(crate::apply::read_state(txn)?
        .digests
        .into_iter()
        .map(|(k, d)| (k, d.summary()))
        .collect())
}

/// The summary of `txn`'s content, as a backup would carry it.
fn digest_of(txn: &redb::ReadTransaction) -> Result<Summary, RepoError> {
    let mut sink = std::io::sink();
    let mut out = Out {
        w: &mut sink,
        file: Sha256::new(),
        content: Sha256::new(),
        summary: Summary::default(),
    };
    for_each_table!(dump, txn, &mut out);
    let mut summary = out.summary;
    summary.content_sha256 = hex::encode(out.content.finalize());
    summary.set_digests = set_digests(txn)?;
    Ok(summary)
}

impl Repository {
    /// Writes a complete backup of one consistent snapshot to `w` (works
    /// on a repository opened read-only beside the running daemon).
    pub fn backup(&self, w: &mut dyn Write) -> Result<Summary, RepoError> {
        self.read(|txn| {
            let mut tables = Vec::new();
            let mut collect = |name: &str| tables.push(name.to_string());
            for_each_table!(name_of, &mut collect);
            let mut out = Out {
                w,
                file: Sha256::new(),
                content: Sha256::new(),
                summary: Summary::default(),
            };
            out.raw(MAGIC)?;
            out.section(&Section::Header {
                identity: self.identity.clone(),
                taken_at_ms: clock::now_us() / 1000,
                tables,
            })?;
            for_each_table!(dump, txn, &mut out);
            let mut summary = std::mem::take(&mut out.summary);
            summary.content_sha256 = hex::encode(std::mem::take(&mut out.content).finalize());
            summary.set_digests = set_digests(txn)?;
            out.section(&Section::Trailer(summary.clone()))?;
            let sum = out.file.clone().finalize();
            out.w.write_all(&sum).map_err(storage)?;
            out.w.flush().map_err(storage)?;
            Ok(summary)
        })
    }

    /// The summary a backup taken now would carry (row counts, content and
    /// set digests), for comparing a restored repository with its backup.
    pub fn content_summary(&self) -> Result<Summary, RepoError> {
        self.read(digest_of)
    }
}

/// Reads a backup file whole: its identity, its summary and, section by
/// section, its rows (given to `rows`). Every check a restore relies on is
/// made: the file digest, the section framing, each sealed value's
/// checksum, the row counts and the content digest against the trailer.
fn read_backup(
    r: &mut dyn Read,
    mut rows: impl FnMut(
        &str,
        Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>,
    ) -> Result<(), RepoError>,
) -> Result<(Identity, Summary), RepoError> {
    let bad = |why: String| RepoError::Corrupt(format!("backup: {why}"));
    // Streamed: one section in memory at a time; the file's SHA-256 is
    // computed as it is read and compared at the end (a caller that acted
    // on rows undoes that when this fails).
    let mut file = Sha256::new();
    let mut read_exact = |buf: &mut [u8], file: &mut Sha256| -> Result<(), RepoError> {
        r.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                bad("it is cut short: the file is truncated".into())
            } else {
                storage(e)
            }
        })?;
        file.update(&*buf);
        Ok(())
    };
    let mut magic = vec![0u8; MAGIC.len()];
    read_exact(&mut magic, &mut file)
        .map_err(|_| bad("not a signer backup file (no header)".into()))?;
    if magic != MAGIC {
        return Err(bad("not a signer backup file (no header)".into()));
    }
    let mut identity = None;
    let mut content = Sha256::new();
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    let summary = loop {
        let mut len = [0u8; 4];
        read_exact(&mut len, &mut file)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > 256 * 1024 * 1024 {
            return Err(bad(format!("a section claims {len} bytes")));
        }
        let mut section = vec![0u8; len];
        read_exact(&mut section, &mut file)?;
        let section: Section = rmp_serde::from_slice(&section)
            .map_err(|e| bad(format!("a section does not decode: {e}")))?;
        match section {
            Section::Header { identity: id, .. } => identity = Some(id),
            Section::Rows { table, rows: chunk } => {
                if identity.is_none() {
                    return Err(bad("rows before the header".into()));
                }
                for (k, v) in &chunk {
                    content_row(&mut content, &table, k, v);
                    if SEALED.contains(&table.as_str()) {
                        sealed::payload(&table, v).map_err(|e| bad(e.to_string()))?;
                    }
                }
                *counted.entry(table.clone()).or_default() += chunk.len() as u64;
                rows(&table, chunk)?;
            }
            Section::Trailer(s) => break s,
        }
    };
    let expected_sum = file.finalize();
    let mut sum = [0u8; 32];
    r.read_exact(&mut sum)
        .map_err(|_| bad("its SHA-256 is missing: the file is truncated".into()))?;
    if sum.as_slice() != expected_sum.as_slice() {
        return Err(bad("its SHA-256 does not match: the file is damaged".into()));
    }
    let mut more = [0u8; 1];
    if r.read(&mut more).map_err(storage)? != 0 {
        return Err(bad("bytes follow its SHA-256".into()));
    }
    let identity = identity.ok_or_else(|| bad("no header".into()))?;
    for (table, n) in &summary.rows {
        if counted.get(table).copied().unwrap_or(0) != *n {
            return Err(bad(format!(
                "table {table}: the trailer counts {n} rows, the file holds {}",
                counted.get(table).copied().unwrap_or(0)
            )));
        }
    }
    if hex::encode(content.finalize()) != summary.content_sha256 {
        return Err(bad("its content digest does not match its trailer".into()));
    }
    Ok((identity, summary))
}

/// Reads a backup's magic and header section: its identity, and the bytes
/// read (to be read again with the rest).
fn read_header(r: &mut dyn Read) -> Result<(Identity, Vec<u8>), RepoError> {
    let bad = || RepoError::Corrupt("backup: not a signer backup file (no header)".into());
    let mut bytes = vec![0u8; MAGIC.len() + 4];
    r.read_exact(&mut bytes).map_err(|_| bad())?;
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(bad());
    }
    let len_at = MAGIC.len();
    let len = u32::from_be_bytes([
        bytes[len_at],
        bytes[len_at + 1],
        bytes[len_at + 2],
        bytes[len_at + 3],
    ]) as usize;
    if len > 16 * 1024 * 1024 {
        return Err(bad());
    }
    let mut section = vec![0u8; len];
    r.read_exact(&mut section).map_err(|_| bad())?;
    bytes.extend_from_slice(&section);
    match rmp_serde::from_slice::<Section>(&section) {
        Ok(Section::Header { identity, .. }) => Ok((identity, bytes)),
        _ => Err(bad()),
    }
}

/// Tables whose values are sealed (checked row by row on verification).
const SEALED: &[&str] = &[
    "identity_v1",
    "certs_v1",
    "requests_v1",
    "revocations_v1",
    "crls_v1",
    "crl_history_v1",
    "openpgp_certifications_v1",
    "events_v1",
    "digests_v1",
    "conflicts_v1",
];

/// Checks a backup file without restoring it; returns its identity and summary.
pub fn verify_backup(r: &mut dyn Read) -> Result<(Identity, Summary), RepoError> {
    read_backup(r, |_, _| Ok(()))
}

fn insert_rows<K: Key + 'static, V: Value + 'static>(
    def: TableDefinition<K, V>,
    txn: &redb::WriteTransaction,
    table: &str,
    rows: &[(serde_bytes::ByteBuf, serde_bytes::ByteBuf)],
    done: &mut bool,
) -> Result<(), RepoError> {
    if *done || def.name() != table {
        return Ok(());
    }
    *done = true;
    let mut t = txn.open_table(def).map_err(storage)?;
    for (k, v) in rows {
        t.insert(K::from_bytes(k), V::from_bytes(v))
            .map_err(storage)?;
    }
    Ok(())
}

impl Repository {
    /// Restores a backup into a new repository file at `path` (refused if
    /// anything is there) and checks that the restored content reproduces
    /// the backup's digests; the identity must be the one `expected`
    /// describes. The restored repository gets a new replication epoch.
    /// Returns the backup's summary. A restore that fails leaves no file.
    pub fn restore(
        path: &Path,
        backup: &mut dyn Read,
        expected: &identity::Expected,
        options: &crate::OpenOptions,
    ) -> Result<Summary, RepoError> {
        crate::with_new_file(path, options, |db| restore_into(db, path, backup, expected))
    }
}

fn restore_into(
    db: &redb::Database,
    path: &Path,
    backup: &mut dyn Read,
    expected: &identity::Expected,
) -> Result<Summary, RepoError> {
    let shown = path.display().to_string();
    let first = db.begin_write().map_err(storage)?;
    crate::create_tables(&first)?;
    let mut txn = Some(first);
    let mut pending = 0usize;
    let (found, summary) = read_backup(backup, |table, rows| {
        let Some(t) = txn.as_ref() else {
            return Err(RepoError::Closed);
        };
        let mut done = false;
        for_each_table!(insert_rows, t, table, &rows, &mut done);
        if !done {
            return Err(RepoError::Corrupt(format!("backup: unknown table {table}")));
        }
        pending += rows.len();
        if pending >= RESTORE_BATCH {
            if let Some(t) = txn.take() {
                t.commit().map_err(storage)?;
            }
            txn = Some(db.begin_write().map_err(storage)?);
            pending = 0;
        }
        Ok(())
    })?;
    if let Some(t) = txn.take() {
        t.commit().map_err(storage)?;
    }
    identity::reconcile(&shown, &found, expected)?;
    let restored = digest_of(&db.begin_read().map_err(storage)?)?;
    // A table this version added is empty in a backup an older one took.
    let tables = |s: &Summary| {
        s.rows
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(t, n)| (t.clone(), *n))
            .collect::<BTreeMap<_, _>>()
    };
    if tables(&restored) != tables(&summary)
        || restored.content_sha256 != summary.content_sha256
        || restored.set_digests != summary.set_digests
    {
        return Err(RepoError::Corrupt(format!(
            "the restored repository does not reproduce the backup (content {} against {})",
            restored.content_sha256, summary.content_sha256
        )));
    }
    let txn = db.begin_write().map_err(storage)?;
    crate::create_tables(&txn)?;
    txn.open_table(crate::outbox::META)
        .map_err(storage)?
        .insert("epoch", crate::new_epoch(path))
        .map_err(storage)?;
    audit::append(
        &txn,
        &found.signer_id,
        vec![crate::AuditEntry::new("repository", "restore", "ok")
            .fact("content_sha256", summary.content_sha256.clone())
            .fact("certificates", summary.count(CERTS.name()).to_string())
            .fact("revocations", summary.count(REVOCATIONS.name()).to_string())],
    )?;
    txn.commit().map_err(storage)?;
    Ok(summary)
}

/// Tables a seeded twin takes over from its peer's backup as they are: the
/// records both twins hold (certificates, revocations, certifications) and
/// what keeps CRL numbers above the peer's.
const SEEDED: &[&str] = &[
    "certs_v1",
    "requests_v1",
    "expiry_v1",
    "revocations_v1",
    "revocation_seq_v1",
    "openpgp_certifications_v1",
    "digests_v1",
    "crl_floor_v1",
];

impl Repository {
    /// Creates this signer's repository at `path` from a backup of its
    /// twin (a replacement twin's first step): every certificate,
    /// revocation and OpenPGP certification the twin holds, the twin's
    /// audit chain as this signer's copy of it, the CRL floor, and the
    /// position in the twin's event sequence the backup was taken at, so
    /// replication goes on from there. The new repository has its own
    /// identity (`expected`, whose twin must be the backup's signer) and a
    /// new epoch. Refused if anything is at `path`; a seed that fails
    /// leaves no file.
    pub fn seed(
        path: &Path,
        backup: &mut dyn Read,
        expected: &identity::Expected,
        options: &crate::OpenOptions,
    ) -> Result<Summary, RepoError> {
        let mut backup = std::io::BufReader::new(backup);
        let (peer, header) = read_header(&mut backup)?;
        check_twin(path, &peer, expected)?;
        crate::with_new_file(path, options, |db| {
            seed_into(
                db,
                path,
                &peer,
                &mut std::io::Read::chain(std::io::Cursor::new(header), backup),
                expected,
            )
        })
    }
}

/// A seed takes only the configured twin's backup, of the same CAs.
fn check_twin(
    path: &Path,
    peer: &Identity,
    expected: &identity::Expected,
) -> Result<(), RepoError> {
    let shown = path.display().to_string();
    if expected.peer_id.as_deref() != Some(peer.signer_id.as_str()) {
        return Err(identity::Refusal::Foreign {
            path: shown,
            why: format!(
                "the backup is of signer {:?}, and this configuration's twin is {:?}",
                peer.signer_id, expected.peer_id
            ),
        }
        .into());
    }
    if peer.peer_id.as_deref() != Some(expected.signer_id.as_str()) {
        // Changes made before the twin was configured went to no outbox:
        // only a backup taken once the twin was configured holds them all.
        return Err(identity::Refusal::Foreign {
            path: shown,
            why: format!(
                "the backup of {:?} was taken before it was configured with {:?} as its twin \
                 (start it with the pair's configuration, then take the backup again)",
                peer.signer_id, expected.signer_id
            ),
        }
        .into());
    }
    let mut as_peer = expected.clone();
    as_peer.signer_id = peer.signer_id.clone();
    as_peer.peer_id = None;
    identity::reconcile(&shown, peer, &as_peer)?;
    Ok(())
}

fn seed_into(
    db: &redb::Database,
    path: &Path,
    peer: &Identity,
    backup: &mut dyn Read,
    expected: &identity::Expected,
) -> Result<Summary, RepoError> {
    let shown = path.display().to_string();
    let txn = db.begin_write().map_err(storage)?;
    crate::create_tables(&txn)?;
    let mut mine = expected.identity(clock::now_secs());
    for (name, fingerprint) in &peer.cas {
        mine.cas
            .entry(name.clone())
            .or_insert_with(|| fingerprint.clone());
    }
    identity::write(&txn, &mine)?;
    let mut peer_meta: BTreeMap<String, u64> = BTreeMap::new();
    let mut audit_entries = 0u64;
    let mut former: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let (_, summary) = read_backup(backup, |table, rows| {
        if SEEDED.contains(&table) {
            let mut done = false;
            for_each_table!(insert_rows, &txn, table, &rows, &mut done);
        } else if table == crate::outbox::META.name() {
            for (k, v) in &rows {
                let key = <&str as Value>::from_bytes(k);
                peer_meta.insert(key.to_string(), <u64 as Value>::from_bytes(v));
            }
        } else if table == audit::AUDIT.name() {
            let mut copy = txn.open_table(audit::AUDIT_PEER).map_err(storage)?;
            for (k, v) in &rows {
                let seq = <u64 as Value>::from_bytes(k);
                copy.insert((peer.signer_id.as_str(), seq), v.as_slice())
                    .map_err(storage)?;
                audit_entries += 1;
            }
        } else if table == audit::AUDIT_PEER.name() {
            // The peer's copy of this signer's own former chain.
            for (k, v) in &rows {
                let (signer, seq) = <(&str, u64) as Value>::from_bytes(k);
                if signer == expected.signer_id {
                    former.insert(seq, v.to_vec());
                }
            }
        }
        Ok(())
    })?;
    // This signer's chain goes on from the last entry of it the peer holds
    // (the same signer id, keys and audit log, on a new disk): its new
    // entries link to that one, so the peer's copy and any copy outside
    // the box stay one chain (entries lost with the old disk show there as
    // a log that went back). Started anew instead, its entries would
    // overwrite the peer's copy from 1 on and break it. A copy that does
    // not start at 1 or has a gap cannot be taken up: refused.
    let own_entries = former.len() as u64;
    if !former.is_empty() {
        if former.keys().copied().ne(1..=own_entries) {
            return Err(RepoError::Corrupt(format!(
                "{shown}: the backup's copy of {}'s audit chain is not whole (entries {:?} to {:?}, {} of them)",
                expected.signer_id,
                former.keys().next(),
                former.keys().next_back(),
                own_entries
            )));
        }
        let mut own = txn.open_table(audit::AUDIT).map_err(storage)?;
        for (seq, bytes) in &former {
            own.insert(*seq, bytes.as_slice()).map_err(storage)?;
        }
    }
    {
        let mut meta = txn.open_table(crate::outbox::META).map_err(storage)?;
        meta.insert("epoch", crate::new_epoch(path))
            .map_err(storage)?;
        meta.insert("digests", 1).map_err(storage)?;
        meta.insert("twin", 1).map_err(storage)?;
        let mut applied = txn.open_table(crate::apply::APPLIED).map_err(storage)?;
        applied
            .insert(
                peer.signer_id.as_str(),
                (
                    peer_meta.get("event_seq").copied().unwrap_or(0),
                    0,
                    peer_meta.get("epoch").copied().unwrap_or(0),
                ),
            )
            .map_err(storage)?;
    }
    audit::append(
        &txn,
        &expected.signer_id,
        vec![
            crate::AuditEntry::new("repository", "create", "ok")
                .fact("path", shown.clone())
                .fact("schema", identity::SCHEMA.to_string()),
            crate::AuditEntry::new("repository", "seed", "ok")
                .fact("from", peer.signer_id.clone())
                .fact("content_sha256", summary.content_sha256.clone())
                .fact("certificates", summary.count(CERTS.name()).to_string())
                .fact("revocations", summary.count(REVOCATIONS.name()).to_string())
                .fact("peer_audit_entries", audit_entries.to_string())
                .fact("own_audit_entries", own_entries.to_string())
                .fact(
                    "peer_event_seq",
                    peer_meta.get("event_seq").copied().unwrap_or(0).to_string(),
                ),
        ],
    )?;
    txn.commit().map_err(storage)?;
    Ok(summary)
}
