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
/// The twin's checkpoints as replicated: (origin, size) → note.
pub(crate) const AUDIT_PEER_CHECKPOINTS: TableDefinition<(&str, u64), &str> =
    TableDefinition::new("audit_peer_checkpoint_v1");
/// What this signer cosigned as witness: (log origin, size) → its line.
pub(crate) const AUDIT_COSIGNED: TableDefinition<(&str, u64), &str> =
    TableDefinition::new("audit_cosigned_v1");
/// Cosignatures of this signer's checkpoints: (size, witness signer) → line.
pub(crate) const AUDIT_COSIGS: TableDefinition<(u64, &str), &str> =
    TableDefinition::new("audit_cosig_v1");

pub(crate) fn store_peer_checkpoint(
    txn: &WriteTransaction,
    origin: &str,
    size: u64,
    note: &str,
) -> Result<(), RepoError> {
    txn.open_table(AUDIT_PEER_CHECKPOINTS)
        .map_err(storage)?
        .insert((origin, size), note)
        .map_err(storage)?;
    Ok(())
}

pub(crate) fn store_cosignature(
    txn: &WriteTransaction,
    size: u64,
    witness: &str,
    line: &str,
) -> Result<(), RepoError> {
    txn.open_table(AUDIT_COSIGS)
        .map_err(storage)?
        .insert((size, witness), line)
        .map_err(storage)?;
    Ok(())
}

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

    /// Stores the checkpoint note for `size` and sends it to the twin.
    pub fn store_checkpoint(&self, size: u64, note: &str) -> Result<(), RepoError> {
        self.write(|txn| {
            let new = txn
                .open_table(AUDIT_CHECKPOINTS)
                .map_err(storage)?
                .insert(size, note)
                .map_err(storage)?
                .is_none();
            if new {
                crate::outbox::append_event(
                    txn,
                    &self.origin,
                    crate::outbox::Change::Checkpoint {
                        size,
                        note: note.to_string(),
                    },
                )?;
            }
            Ok(((), true))
        })
    }

    /// The twin `origin`'s checkpoints as replicated, smallest first, with
    /// this signer's cosignature line where it made one.
    pub fn peer_checkpoints(
        &self,
        origin: &str,
    ) -> Result<Vec<(u64, String, Option<String>)>, RepoError> {
        self.read(|txn| {
            let notes = match txn.open_table(AUDIT_PEER_CHECKPOINTS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(storage(e)),
            };
            let cosigned = match txn.open_table(AUDIT_COSIGNED) {
                Ok(t) => Some(t),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(storage(e)),
            };
            let mut out = Vec::new();
            for item in notes
                .range((origin, 0u64)..=(origin, u64::MAX))
                .map_err(storage)?
            {
                let (k, v) = item.map_err(storage)?;
                let size = k.value().1;
                let line = match &cosigned {
                    Some(t) => t
                        .get((origin, size))
                        .map_err(storage)?
                        .map(|l| l.value().to_string()),
                    None => None,
                };
                out.push((size, v.value().to_string(), line));
            }
            Ok(out)
        })
    }

    /// Records this signer's cosignature of the twin `log`'s checkpoint
    /// `size` and sends it to the twin.
    pub fn record_cosignature(&self, log: &str, size: u64, line: &str) -> Result<(), RepoError> {
        self.write(|txn| {
            txn.open_table(AUDIT_COSIGNED)
                .map_err(storage)?
                .insert((log, size), line)
                .map_err(storage)?;
            crate::outbox::append_event(
                txn,
                &self.origin,
                crate::outbox::Change::Cosignature {
                    log: log.to_string(),
                    size,
                    line: line.to_string(),
                },
            )?;
            Ok(((), true))
        })
    }

    /// Cosignatures of this signer's checkpoints: (size, witness, line).
    pub fn cosignatures(&self) -> Result<Vec<(u64, String, String)>, RepoError> {
        self.read(|txn| {
            let table = match txn.open_table(AUDIT_COSIGS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(storage(e)),
            };
            let mut out = Vec::new();
            for item in table.iter().map_err(storage)? {
                let (k, v) = item.map_err(storage)?;
                let (size, witness) = k.value();
                out.push((size, witness.to_string(), v.value().to_string()));
            }
            Ok(out)
        })
    }

    /// The root of the twin `origin`'s log at `size`, from this signer's
    /// copy of its entries; `None` while the copy is shorter.
    pub fn peer_audit_root(&self, origin: &str, size: u64) -> Result<Option<Hash>, RepoError> {
        self.read(|txn| {
            let copy = txn.open_table(crate::audit::AUDIT_PEER).map_err(storage)?;
            let mut leaves = Vec::with_capacity(size as usize);
            for item in copy
                .range((origin, 1u64)..=(origin, size))
                .map_err(storage)?
            {
                let (k, v) = item.map_err(storage)?;
                if k.value().1 != leaves.len() as u64 + 1 {
                    return Err(RepoError::Corrupt(format!(
                        "the copy of {origin}'s audit log lacks entry {}",
                        leaves.len() + 1
                    )));
                }
                leaves.push(merkle::leaf_hash(v.value()));
            }
            if (leaves.len() as u64) < size {
                return Ok(None);
            }
            merkle::root(&merkle::LeafHashes(leaves), size)
                .map(Some)
                .map_err(RepoError::Corrupt)
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
