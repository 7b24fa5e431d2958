//! The audit log's Merkle tree (RFC 9162) and its signed checkpoints.
//!
//! ```text
//! leaf i   = the stored bytes of audit entry i+1 (msgpack, as in audit_v1)
//! audit_tree_v1        (level, index) → hash of that perfect subtree
//! audit_checkpoint_v1  size → signed note (C2SP checkpoint, cosignatures appended)
//! audit_ack_v1         who → (size, time ms): how far a witness holds the log
//! ```
//!
//! Leaves and the nodes they complete are written in the same transaction
//! as the entries (the committer's group commit), so the tree always covers
//! exactly the entries. A repository written before the tree existed gets
//! its tree built on the next append.

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use signer_tlog::merkle::{self, Hash, Nodes};

use crate::audit::AUDIT;
use crate::{storage, RepoError, Repository};

/// Perfect-subtree hashes: (level, index) → 32 bytes.
pub(crate) const AUDIT_TREE: TableDefinition<(u8, u64), &[u8]> =
    TableDefinition::new("audit_tree_v1");
/// Checkpoints this signer signed: tree size → note text.
pub(crate) const AUDIT_CHECKPOINTS: TableDefinition<u64, &str> =
    TableDefinition::new("audit_checkpoint_v1");
/// Acknowledgements: who → (size held, when, ms).
pub(crate) const AUDIT_ACKS: TableDefinition<&str, (u64, u64)> =
    TableDefinition::new("audit_ack_v1");

/// The tree as read from a table.
struct TableNodes<'t, T>(&'t T);

impl<T: ReadableTable<(u8, u64), &'static [u8]>> Nodes for TableNodes<'_, T> {
    type Error = RepoError;
    fn node(&self, level: u8, index: u64) -> Result<Hash, RepoError> {
        let value = self
            .0
            .get((level, index))
            .map_err(storage)?
            .ok_or_else(|| {
                RepoError::Corrupt(format!(
                    "audit tree: node {index} of level {level} is missing"
                ))
            })?;
        value.value().try_into().map_err(|_| {
            RepoError::Corrupt(format!(
                "audit tree: node {index} of level {level} is not a hash"
            ))
        })
    }
}

/// Number of leaves in the tree table.
fn leaves<T: ReadableTable<(u8, u64), &'static [u8]>>(tree: &T) -> Result<u64, RepoError> {
    let last = tree
        .range((0u8, 0u64)..=(0u8, u64::MAX))
        .map_err(storage)?
        .next_back()
        .transpose()
        .map_err(storage)?;
    Ok(last.map_or(0, |(k, _)| k.value().1 + 1))
}

/// Adds leaf `index` with the stored bytes of its entry, and every node it
/// completes.
pub(crate) fn add_leaf(
    tree: &mut redb::Table<(u8, u64), &'static [u8]>,
    index: u64,
    entry: &[u8],
) -> Result<(), RepoError> {
    let made = merkle::completed_by(index, merkle::leaf_hash(entry), |level, i| {
        TableNodes(&*tree).node(level, i)
    })?;
    for (level, i, hash) in made {
        tree.insert((level, i), hash.as_slice()).map_err(storage)?;
    }
    Ok(())
}

/// Makes the tree cover entries 1..=`entries` (a repository from before the
/// tree; a no-op otherwise). More leaves than entries means entries were
/// removed: refused.
pub(crate) fn catch_up(txn: &WriteTransaction) -> Result<(), RepoError> {
    let log = txn.open_table(AUDIT).map_err(storage)?;
    let entries = log.last().map_err(storage)?.map_or(0, |(k, _)| k.value());
    let mut tree = txn.open_table(AUDIT_TREE).map_err(storage)?;
    let have = leaves(&tree)?;
    if have > entries {
        return Err(RepoError::Corrupt(format!(
            "the audit tree has {have} leaves but the log {entries} entries: entries were removed"
        )));
    }
    if have == entries {
        return Ok(());
    }
    for seq in have + 1..=entries {
        let bytes = log
            .get(seq)
            .map_err(storage)?
            .ok_or_else(|| RepoError::Corrupt(format!("audit entry {seq} is missing")))?
            .value()
            .to_vec();
        add_leaf(&mut tree, seq - 1, &bytes)?;
    }
    Ok(())
}

/// A checkpoint as stored: its size and note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// Tree size.
    pub size: u64,
    /// The signed note (with any cosignatures).
    pub note: String,
}

impl Repository {
    /// The tree's size and root over this signer's audit log.
    pub fn audit_tree_head(&self) -> Result<(u64, Hash), RepoError> {
        self.read(|txn| {
            let tree = txn.open_table(AUDIT_TREE).map_err(storage)?;
            let size = leaves(&tree)?;
            let entries = txn
                .open_table(AUDIT)
                .map_err(storage)?
                .len()
                .map_err(storage)?;
            if size != entries {
                return Err(RepoError::Corrupt(format!(
                    "the audit tree covers {size} entries, the log has {entries}"
                )));
            }
            Ok((size, merkle::root(&TableNodes(&tree), size)?))
        })
    }

    /// The root of the tree at `size` (at most the current size).
    pub fn audit_root(&self, size: u64) -> Result<Hash, RepoError> {
        self.read(|txn| {
            let tree = txn.open_table(AUDIT_TREE).map_err(storage)?;
            if size > leaves(&tree)? {
                return Err(RepoError::OutOfRange(format!(
                    "an audit tree of size {size}"
                )));
            }
            merkle::root(&TableNodes(&tree), size)
        })
    }

    /// The consistency proof from size `old` to size `new`.
    pub fn audit_consistency(&self, old: u64, new: u64) -> Result<Vec<Hash>, RepoError> {
        self.read(|txn| {
            let tree = txn.open_table(AUDIT_TREE).map_err(storage)?;
            if new > leaves(&tree)? {
                return Err(RepoError::OutOfRange(format!(
                    "an audit tree of size {new}"
                )));
            }
            merkle::consistency_proof(&TableNodes(&tree), old, new).map_err(|e| match e {
                merkle::ProofError::Range(m) => RepoError::OutOfRange(m),
                merkle::ProofError::Store(e) => e,
            })
        })
    }

    /// Entry `index` (0-based: entry number index+1) as stored, with its
    /// inclusion proof in the tree of `size`.
    pub fn audit_inclusion(
        &self,
        index: u64,
        size: u64,
    ) -> Result<(Vec<u8>, Vec<Hash>), RepoError> {
        self.read(|txn| {
            let tree = txn.open_table(AUDIT_TREE).map_err(storage)?;
            if size > leaves(&tree)? {
                return Err(RepoError::OutOfRange(format!(
                    "an audit tree of size {size}"
                )));
            }
            let proof =
                merkle::inclusion_proof(&TableNodes(&tree), index, size).map_err(|e| match e {
                    merkle::ProofError::Range(m) => RepoError::OutOfRange(m),
                    merkle::ProofError::Store(e) => e,
                })?;
            let entry = txn
                .open_table(AUDIT)
                .map_err(storage)?
                .get(index + 1)
                .map_err(storage)?
                .ok_or_else(|| RepoError::OutOfRange(format!("audit entry {}", index + 1)))?
                .value()
                .to_vec();
            Ok((entry, proof))
        })
    }

    /// Up to `count` stored entries from index `start` (0-based), as stored.
    pub fn audit_leaves(&self, start: u64, count: u64) -> Result<Vec<Vec<u8>>, RepoError> {
        self.read(|txn| {
            let log = txn.open_table(AUDIT).map_err(storage)?;
            let mut out = Vec::new();
            if count == 0 {
                return Ok(out);
            }
            let first = start.saturating_add(1);
            for item in log
                .range(first..=first.saturating_add(count - 1))
                .map_err(storage)?
            {
                let (_, v) = item.map_err(storage)?;
                out.push(v.value().to_vec());
            }
            Ok(out)
        })
    }

    /// The checkpoint with the largest size, if any.
    pub fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, RepoError> {
        self.read(|txn| {
            let table = txn.open_table(AUDIT_CHECKPOINTS).map_err(storage)?;
            let last = table.last().map_err(storage)?;
            Ok(last.map(|(k, v)| StoredCheckpoint {
                size: k.value(),
                note: v.value().to_string(),
            }))
        })
    }

    /// Every stored checkpoint, smallest first.
    pub fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, RepoError> {
        self.read(|txn| {
            let table = txn.open_table(AUDIT_CHECKPOINTS).map_err(storage)?;
            let mut out = Vec::new();
            for item in table.iter().map_err(storage)? {
                let (k, v) = item.map_err(storage)?;
                out.push(StoredCheckpoint {
                    size: k.value(),
                    note: v.value().to_string(),
                });
            }
            Ok(out)
        })
    }

    /// Stores a checkpoint note for `size` (replacing the note of that size:
    /// the same checkpoint with more cosignatures).
    pub fn store_checkpoint(&self, size: u64, note: &str) -> Result<(), RepoError> {
        self.write(|txn| {
            txn.open_table(AUDIT_CHECKPOINTS)
                .map_err(storage)?
                .insert(size, note)
                .map_err(storage)?;
            Ok(((), true))
        })
    }

    /// Records that `who` holds the log up to `size` (never lowers it).
    pub fn acknowledge_audit(&self, who: &str, size: u64, at_ms: u64) -> Result<(), RepoError> {
        self.write(|txn| {
            let mut acks = txn.open_table(AUDIT_ACKS).map_err(storage)?;
            let held = acks.get(who).map_err(storage)?.map_or(0, |v| v.value().0);
            if size > held {
                acks.insert(who, (size, at_ms)).map_err(storage)?;
            }
            Ok(((), size > held))
        })
    }

    /// Acknowledgements: who → (size, when ms).
    pub fn audit_acks(&self) -> Result<Vec<(String, u64, u64)>, RepoError> {
        self.read(|txn| {
            let acks = txn.open_table(AUDIT_ACKS).map_err(storage)?;
            let mut out = Vec::new();
            for item in acks.iter().map_err(storage)? {
                let (k, v) = item.map_err(storage)?;
                let (size, at) = v.value();
                out.push((k.value().to_string(), size, at));
            }
            Ok(out)
        })
    }
}
