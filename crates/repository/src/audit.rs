//! The audit log: a hash chain of everything the signer did.
//!
//! ```text
//! entry n = { seq n, time, kind, command, status, facts…, prev = hash(n-1) }
//! hash(n) = SHA-256(prev ‖ msgpack(entry n without hash))
//! ```
//!
//! Entries are appended by the committer (group commit, the same fsync as
//! the certificates they describe); the chain is built there, in order, so
//! it has no gaps. The twin keeps a copy of this signer's chain.

use std::collections::BTreeMap;

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use sha2::{Digest, Sha256};

use crate::outbox::{Outbox, Target};
use crate::{storage, RepoError};
use tracing::warn;

use crate::committer::Job;
use crate::records::AuditEntry;
use crate::Repository;

/// This signer's chain: seq → entry.
pub(crate) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_v1");
/// The twin's chains as replicated: (origin, seq) → entry.
pub(crate) const AUDIT_PEER: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("audit_peer_v1");

impl AuditEntry {
    /// A new entry for `append` (sequence and hashes are set there).
    pub fn new(kind: &str, action: &str, outcome: &str) -> AuditEntry {
        AuditEntry {
            seq: 0,
            time_ms: crate::clock::now_us() / 1000,
            signer_id: String::new(),
            kind: kind.into(),
            action: action.into(),
            outcome: outcome.into(),
            facts: BTreeMap::new(),
            prev: Vec::new(),
            hash: Vec::new(),
        }
    }

    /// Adds a fact.
    pub fn fact(mut self, key: &str, value: impl Into<String>) -> AuditEntry {
        self.facts.insert(key.into(), value.into());
        self
    }

    /// The hash this entry should carry.
    pub fn compute_hash(&self) -> Vec<u8> {
        let mut bare = self.clone();
        bare.hash = Vec::new();
        let encoded = rmp_serde::to_vec_named(&bare).unwrap_or_default();
        let mut h = Sha256::new();
        h.update(&self.prev);
        h.update(encoded);
        h.finalize().to_vec()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<AuditEntry, RepoError> {
        rmp_serde::from_slice(bytes).map_err(|e| RepoError::Corrupt(format!("audit entry: {e}")))
    }
}

/// Appends entries to this signer's chain in the caller's transaction, each
/// with its replication event for the twin.
pub(crate) fn append(
    txn: &WriteTransaction,
    signer_id: &str,
    entries: Vec<AuditEntry>,
) -> Result<(), RepoError> {
    crate::tree::catch_up(txn)?;
    let mut table = txn.open_table(AUDIT).map_err(storage)?;
    let (mut seq, mut prev) = match table.last().map_err(storage)? {
        Some((k, v)) => (k.value(), AuditEntry::decode(v.value())?.hash),
        None => (0, vec![0; 32]),
    };
    let mut tree = txn.open_table(crate::tree::AUDIT_TREE).map_err(storage)?;
    Outbox::with(txn, |outbox| {
        for mut e in entries {
            seq += 1;
            e.seq = seq;
            e.signer_id = signer_id.to_string();
            e.prev = prev;
            e.hash = e.compute_hash();
            prev = e.hash.clone();
            let bytes = rmp_serde::to_vec_named(&e).map_err(storage)?;
            table.insert(seq, bytes.as_slice()).map_err(storage)?;
            crate::tree::add_leaf(&mut tree, seq - 1, &bytes)?;
            outbox.pointer(Target::Audit(seq))?;
        }
        Ok(())
    })
}

/// Stores a twin's entry (replicated). An entry of the copy is never
/// replaced by a different one: that would rewrite the twin's chain as this
/// signer holds it (evidence), so it is refused and nothing of the
/// transaction is applied. One exception keeps both chains whole: a first
/// entry (sequence 1, linking to nothing) that differs from the held one
/// means the twin's chain started again (its repository made anew instead
/// of seeded); the held copy is then kept under `<twin>~<its first hash>`
/// (verified, searchable, never written again) and the new chain is
/// copied from 1.
pub(crate) fn store_peer(txn: &WriteTransaction, e: &AuditEntry) -> Result<(), RepoError> {
    let bytes = rmp_serde::to_vec_named(e).map_err(storage)?;
    let mut copy = txn.open_table(AUDIT_PEER).map_err(storage)?;
    let held = copy
        .get((e.signer_id.as_str(), e.seq))
        .map_err(storage)?
        .map(|v| v.value().to_vec());
    if let Some(held) = held {
        if held == bytes {
            return Ok(());
        }
        if e.seq != 1 || e.prev != vec![0; 32] {
            return Err(RepoError::Corrupt(format!(
                "audit entry {} of {} differs from the one already held: the copy of its chain is not rewritten",
                e.seq, e.signer_id
            )));
        }
        let former = AuditEntry::decode(&held)?;
        let label = format!(
            "{}~{}",
            e.signer_id,
            crate::hex(&former.hash[..8.min(former.hash.len())])
        );
        let mut moved = Vec::new();
        for item in copy
            .range((e.signer_id.as_str(), 0u64)..=(e.signer_id.as_str(), u64::MAX))
            .map_err(storage)?
        {
            let (k, v) = item.map_err(storage)?;
            moved.push((k.value().1, v.value().to_vec()));
        }
        for (seq, v) in &moved {
            copy.remove((e.signer_id.as_str(), *seq)).map_err(storage)?;
            copy.insert((label.as_str(), *seq), v.as_slice())
                .map_err(storage)?;
        }
        warn!(
            twin = %e.signer_id,
            kept_as = %label,
            entries = moved.len(),
            "the twin's audit chain started again; the copy of its former chain is kept apart"
        );
    }
    copy.insert((e.signer_id.as_str(), e.seq), bytes.as_slice())
        .map_err(storage)?;
    Ok(())
}

/// What verifying a chain found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Whose chain.
    pub signer_id: String,
    /// Entries checked.
    pub entries: u64,
    /// The last entry's sequence number and hash.
    pub head: Option<(u64, Vec<u8>)>,
    /// The first broken link: (sequence number, what is wrong).
    pub broken: Option<(u64, String)>,
}

/// Checks a chain given in order: every entry's hash, every link, no gaps.
/// A copy of a twin's chain may start after 1 (`first` gives where).
pub(crate) fn verify<I>(signer_id: &str, entries: I) -> Result<ChainReport, RepoError>
where
    I: Iterator<Item = Result<(u64, Vec<u8>), RepoError>>,
{
    let mut report = ChainReport {
        signer_id: signer_id.to_string(),
        entries: 0,
        head: None,
        broken: None,
    };
    let mut prev: Option<(u64, Vec<u8>)> = None;
    for item in entries {
        let (key, bytes) = item?;
        let e = match AuditEntry::decode(&bytes) {
            Ok(e) => e,
            Err(err) => {
                report.broken = Some((key, err.to_string()));
                return Ok(report);
            }
        };
        let problem = if e.seq != key {
            Some(format!("stored under {key} but numbered {}", e.seq))
        } else if e.compute_hash() != e.hash {
            Some("its hash does not match its content (altered)".to_string())
        } else {
            match &prev {
                None if e.seq == 1 && e.prev != vec![0; 32] => {
                    Some("the first entry does not start the chain".to_string())
                }
                Some((p, _)) if e.seq != p + 1 => {
                    Some(format!("entries {} to {} are missing", p + 1, e.seq - 1))
                }
                Some((_, h)) if *h != e.prev => {
                    Some("it does not link to the entry before it".to_string())
                }
                _ => None,
            }
        };
        if let Some(p) = problem {
            report.broken = Some((e.seq, p));
            return Ok(report);
        }
        report.entries += 1;
        prev = Some((e.seq, e.hash.clone()));
        report.head = prev.clone();
    }
    Ok(report)
}

/// Verifies this signer's chain (`own`) and every twin's copy in `txn`.
pub(crate) fn verify_all(
    txn: &redb::ReadTransaction,
    own_id: &str,
) -> Result<Vec<ChainReport>, RepoError> {
    let own = txn.open_table(AUDIT).map_err(storage)?;
    let mut reports = vec![verify(
        own_id,
        own.iter().map_err(storage)?.map(|item| {
            let (k, v) = item.map_err(storage)?;
            Ok((k.value(), v.value().to_vec()))
        }),
    )?];
    let peer = txn.open_table(AUDIT_PEER).map_err(storage)?;
    let mut origins = std::collections::BTreeSet::new();
    for item in peer.iter().map_err(storage)? {
        let (k, _) = item.map_err(storage)?;
        origins.insert(k.value().0.to_string());
    }
    for origin in origins {
        let range = peer
            .range((origin.as_str(), 0u64)..=(origin.as_str(), u64::MAX))
            .map_err(storage)?;
        reports.push(verify(
            &origin,
            range.map(|item| {
                let (k, v) = item.map_err(storage)?;
                Ok((k.value().1, v.value().to_vec()))
            }),
        )?);
    }
    Ok(reports)
}

impl Repository {
    /// Appends an entry to the audit chain with the next group commit (the
    /// caller does not wait). After [`Repository::close`] it is written in a
    /// transaction of its own.
    pub fn audit(&self, entry: AuditEntry) {
        if let Some(Job::Audit(entry)) = self.send(Job::Audit(entry)) {
            let written = self.write(|txn| {
                append(txn, &self.origin, vec![entry])?;
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
            let table = txn.open_table(self::AUDIT).map_err(storage)?;
            let head = match table.last().map_err(storage)? {
                Some((k, v)) => Some((k.value(), AuditEntry::decode(v.value())?.hash)),
                None => None,
            };
            Ok(head)
        })
    }

    /// Verifies this signer's audit chain and the twins' copies.
    pub fn audit_verify(&self) -> Result<Vec<self::ChainReport>, RepoError> {
        self.read(|txn| verify_all(txn, &self.origin))
    }

    /// Audit entries (this signer's, then the twins' copies) that `keep` selects.
    pub fn audit_entries(
        &self,
        mut keep: impl FnMut(&AuditEntry) -> bool,
    ) -> Result<Vec<AuditEntry>, RepoError> {
        self.read(|txn| {
            let own = txn.open_table(self::AUDIT).map_err(storage)?;
            let peers = txn.open_table(self::AUDIT_PEER).map_err(storage)?;
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
}
