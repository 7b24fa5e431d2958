//! A copy of the signer's audit log outside the box (protocol §7.9).
//!
//! ```text
//! DIR/log.vkey                      the audit key's verifier key (signerd audit vkey)
//! DIR/entries                       every entry held: u32 big-endian length, bytes; append-only
//! DIR/checkpoints/<size>.note       every checkpoint held, as the signer signed it
//! DIR/evidence/<time>-<size>.note   checkpoints that contradict one held (kept, never used)
//! ```
//!
//! `sync` takes a new checkpoint only when its signature verifies, the
//! consistency proof from the newest checkpoint held verifies, and the
//! entries held plus the new ones give its root; then it acknowledges the
//! size to the signer. `verify` checks every checkpoint held against the
//! entries held, offline.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use signer_protocol::{calls, msg};
use signer_tlog::merkle::{self, Hash, LeafHashes};
use signer_tlog::note::{SignedCheckpoint, Verifier};

use crate::{Calls, ClientError};

/// Why a copy could not be brought up to date or verified.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The signer's log contradicts what this copy holds: rewritten,
    /// truncated or rolled back. The evidence is kept in `DIR/evidence`.
    #[error("the signer's audit log contradicts the copy: {0}")]
    Contradiction(String),
    /// A checkpoint or entry held here does not verify.
    #[error("the copy does not verify: {0}")]
    Copy(String),
    /// The signer could not be asked.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Reading or writing the copy failed.
    #[error("{0}")]
    Io(String),
}

/// What a sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Size held before.
    pub from: u64,
    /// Size held now (acknowledged to the signer).
    pub to: u64,
}

/// What verifying a copy found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// Entries held.
    pub entries: u64,
    /// Checkpoints verified.
    pub checkpoints: usize,
    /// The newest checkpoint's size.
    pub size: u64,
}

/// A copy of the log in a directory.
pub struct AuditCopy {
    dir: PathBuf,
    verifier: Verifier,
}

fn io(path: &Path, e: impl std::fmt::Display) -> AuditError {
    AuditError::Io(format!("{}: {e}", path.display()))
}

impl AuditCopy {
    /// Opens the copy in `dir` (made if absent). `vkey` is the audit key's
    /// verifier key; when given it is stored as `DIR/log.vkey` on first use
    /// and must match it later.
    pub fn open(dir: &Path, vkey: Option<&str>) -> Result<AuditCopy, AuditError> {
        std::fs::create_dir_all(dir.join("checkpoints")).map_err(|e| io(dir, e))?;
        let path = dir.join("log.vkey");
        let held = match std::fs::read_to_string(&path) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&path, e)),
        };
        let text = match (held, vkey) {
            (Some(h), Some(v)) if h != v.trim() => {
                return Err(AuditError::Copy(format!(
                    "{} holds another log's key ({h}); this copy is of that log",
                    path.display()
                )))
            }
            (Some(h), _) => h,
            (None, Some(v)) => {
                // Checked before it is kept: a copy never holds a key that
                // does not parse.
                Verifier::from_vkey(v.trim())
                    .map_err(|e| AuditError::Copy(format!("not a verifier key: {e}")))?;
                // Whole or not at all, and only if absent: another process
                // opening the same copy (a gateway and its check-config) may
                // keep it at the same moment; then it must be the same key.
                if !keep_if_absent(&path, format!("{}\n", v.trim()).as_bytes())? {
                    let h = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
                    if h.trim() != v.trim() {
                        return Err(AuditError::Copy(format!(
                            "{} holds another log's key ({}); this copy is of that log",
                            path.display(),
                            h.trim()
                        )));
                    }
                }
                v.trim().to_string()
            }
            (None, None) => {
                return Err(AuditError::Copy(format!(
                    "no {}: give the audit key's verifier key (signerd audit vkey) with --vkey",
                    path.display()
                )))
            }
        };
        let verifier = Verifier::from_vkey(&text)
            .map_err(|e| AuditError::Copy(format!("{}: {e}", path.display())))?;
        Ok(AuditCopy {
            dir: dir.to_path_buf(),
            verifier,
        })
    }

    /// The entries held, in order.
    pub fn entries(&self) -> Result<Vec<Vec<u8>>, AuditError> {
        let path = self.dir.join("entries");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(&path, e)),
        };
        let mut out = Vec::new();
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err(AuditError::Copy(format!(
                    "{}: a torn record after entry {}",
                    path.display(),
                    out.len()
                )));
            }
            let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if rest.len() < 4 + n {
                return Err(AuditError::Copy(format!(
                    "{}: a torn record after entry {}",
                    path.display(),
                    out.len()
                )));
            }
            out.push(rest[4..4 + n].to_vec());
            rest = &rest[4 + n..];
        }
        Ok(out)
    }

    /// Every checkpoint held, smallest first, each verified against the
    /// audit key.
    pub fn checkpoints(&self) -> Result<Vec<SignedCheckpoint>, AuditError> {
        let dir = self.dir.join("checkpoints");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| io(&dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "note"))
            .collect();
        names.sort();
        let mut out = Vec::new();
        for path in names {
            let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
            let note = SignedCheckpoint::parse(&text)
                .and_then(|n| n.verify_log(&self.verifier).map(|()| n))
                .map_err(|e| AuditError::Copy(format!("{}: {e}", path.display())))?;
            out.push(note);
        }
        out.sort_by_key(|n| n.checkpoint.size);
        Ok(out)
    }

    /// Checks every checkpoint held against the entries held.
    pub fn verify(&self) -> Result<CopyReport, AuditError> {
        let (entries, checkpoints) = self.load()?;
        Ok(CopyReport {
            entries: entries.len() as u64,
            checkpoints: checkpoints.len(),
            size: checkpoints.last().map_or(0, |c| c.checkpoint.size),
        })
    }

    /// The entries and checkpoints held, read once, each checkpoint checked
    /// against the entries.
    fn load(&self) -> Result<(Vec<Vec<u8>>, Vec<SignedCheckpoint>), AuditError> {
        let entries = self.entries()?;
        let tree = LeafHashes(entries.iter().map(|e| merkle::leaf_hash(e)).collect());
        let checkpoints = self.checkpoints()?;
        for c in &checkpoints {
            let size = c.checkpoint.size;
            if size > entries.len() as u64 {
                return Err(AuditError::Copy(format!(
                    "checkpoint {size} but only {} entries held",
                    entries.len()
                )));
            }
            let root = merkle::root(&tree, size).map_err(AuditError::Copy)?;
            if root != c.checkpoint.root {
                return Err(AuditError::Copy(format!(
                    "the entries held do not give the root of checkpoint {size}"
                )));
            }
        }
        Ok((entries, checkpoints))
    }

    fn evidence(&self, note: &str, size: u64) {
        let dir = self.dir.join("evidence");
        let _ = std::fs::create_dir_all(&dir);
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let _ = std::fs::write(dir.join(format!("{at}-{size:020}.note")), note);
    }

    /// Brings the copy up to the signer's newest checkpoint and
    /// acknowledges it.
    pub fn sync<C: Calls>(&self, signer: &C) -> Result<SyncReport, AuditError> {
        let (mut entries, mut checkpoints) = self.load()?;
        let newest = checkpoints.pop();
        // Entries beyond the newest checkpoint held were never confirmed
        // (a sync that stopped halfway): dropped and fetched again below.
        let held = entries.len();
        entries.truncate(newest.as_ref().map_or(0, |c| c.checkpoint.size) as usize);
        let keep = (held != entries.len())
            .then(|| entries.iter().map(|e| 4 + e.len() as u64).sum::<u64>());
        let (old, old_root): (u64, Hash) = match &newest {
            Some(c) => (c.checkpoint.size, c.checkpoint.root),
            None => (0, merkle::empty_root()),
        };
        let reply = signer.request::<calls::AuditCheckpoint>(&msg::Empty {})?;
        let note = SignedCheckpoint::parse(&reply.checkpoint)
            .and_then(|n| n.verify_log(&self.verifier).map(|()| n))
            .map_err(|e| {
                self.evidence(&reply.checkpoint, 0);
                AuditError::Contradiction(format!("the signer's checkpoint: {e}"))
            })?;
        let new = note.checkpoint.size;
        let new_root = note.checkpoint.root;
        if new < old {
            self.evidence(&reply.checkpoint, new);
            return Err(AuditError::Contradiction(format!(
                "the signer's log has {new} entries, but checkpoint {old} is held: entries were removed or an older repository restored"
            )));
        }
        let proof = signer
            .request::<calls::AuditConsistency>(&msg::AuditConsistency { old, new })?
            .proof;
        let proof = hashes(&proof)?;
        if let Err(e) = merkle::verify_consistency(old, new, &old_root, &new_root, &proof) {
            self.evidence(&reply.checkpoint, new);
            return Err(AuditError::Contradiction(format!(
                "checkpoint {new} does not extend checkpoint {old} held here ({e}): the log was rewritten"
            )));
        }
        let mut fresh = Vec::new();
        while old + (fresh.len() as u64) < new {
            let start = old + fresh.len() as u64;
            let got = signer
                .request::<calls::AuditEntries>(&msg::AuditEntries {
                    start,
                    count: (new - start).min(256),
                })?
                .entries;
            if got.is_empty() {
                return Err(AuditError::Contradiction(format!(
                    "the signer sent no entry {start} below its checkpoint {new}"
                )));
            }
            fresh.extend(got.into_iter().map(|b| b.into_vec()));
        }
        fresh.truncate((new - old) as usize);
        let all: Vec<Hash> = entries
            .iter()
            .chain(fresh.iter())
            .map(|e| merkle::leaf_hash(e))
            .collect();
        let root = merkle::root(&LeafHashes(all), new).map_err(AuditError::Copy)?;
        if root != new_root {
            self.evidence(&reply.checkpoint, new);
            return Err(AuditError::Contradiction(format!(
                "the entries the signer sent do not give the root of its checkpoint {new}"
            )));
        }
        self.store(keep, old, &fresh, &reply.checkpoint, new)?;
        signer.request::<calls::AuditAck>(&msg::AuditAck {
            size: new,
            root: serde_bytes::ByteBuf::from(new_root.to_vec()),
        })?;
        Ok(SyncReport { from: old, to: new })
    }

    /// Appends `fresh` (first cutting the file to `keep` bytes: the
    /// unconfirmed tail of an interrupted sync) and stores checkpoint `new`.
    fn store(
        &self,
        keep: Option<u64>,
        old: u64,
        fresh: &[Vec<u8>],
        note: &str,
        new: u64,
    ) -> Result<(), AuditError> {
        let path = self.dir.join("entries");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        if let Some(keep) = keep {
            file.set_len(keep).map_err(|e| io(&path, e))?;
        }
        let mut buf = Vec::new();
        for e in fresh {
            buf.extend_from_slice(&(e.len() as u32).to_be_bytes());
            buf.extend_from_slice(e);
        }
        file.write_all(&buf)
            .and_then(|()| file.sync_all())
            .map_err(|e| io(&path, e))?;
        if new > old
            || !self
                .dir
                .join(format!("checkpoints/{new:020}.note"))
                .exists()
        {
            let target = self.dir.join(format!("checkpoints/{new:020}.note"));
            let tmp = self.dir.join(format!("checkpoints/{new:020}.tmp"));
            std::fs::write(&tmp, note)
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &target))
                .and_then(|()| std::fs::File::open(self.dir.join("checkpoints"))?.sync_all())
                .map_err(|e| io(&target, e))?;
        }
        Ok(())
    }
}

/// The parts of an audit entry a search needs (protocol §7.9).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct EntryView {
    /// Its number (index + 1).
    pub seq: u64,
    /// What kind of entry (`command`, `setup`, …).
    pub kind: String,
    /// The command or step.
    pub action: String,
    /// Its outcome.
    pub outcome: String,
    /// Its facts.
    #[serde(default)]
    pub facts: std::collections::BTreeMap<String, String>,
}

/// What `prove` found and checked.
#[derive(Debug, Clone)]
pub struct Proven {
    /// The entry.
    pub entry: EntryView,
    /// The checkpoint size it was proven in.
    pub size: u64,
    /// That checkpoint's root.
    pub root: Hash,
}

impl AuditCopy {
    /// Finds the entries held whose facts include every `(key, value)` of
    /// `wanted` (newest last).
    pub fn find(&self, wanted: &[(&str, String)]) -> Result<Vec<(u64, EntryView)>, AuditError> {
        let mut out = Vec::new();
        for (i, bytes) in self.entries()?.iter().enumerate() {
            let entry: EntryView = signer_protocol::decode_body(bytes)
                .map_err(|e| AuditError::Copy(format!("entry {}: {e}", i + 1)))?;
            if wanted
                .iter()
                .all(|(k, v)| entry.facts.get(*k).is_some_and(|f| f == v))
            {
                out.push((i as u64, entry));
            }
        }
        Ok(out)
    }

    /// Proves that entry `index` is in the signer's log as of the newest
    /// checkpoint held: the signer's inclusion proof must lead from the
    /// entry held here to that checkpoint's root.
    pub fn prove<C: Calls>(&self, signer: &C, index: u64) -> Result<Proven, AuditError> {
        let (entries, mut checkpoints) = self.load()?;
        let newest = checkpoints
            .pop()
            .ok_or_else(|| AuditError::Copy("no checkpoint held yet: sync first".into()))?;
        let (size, root) = (newest.checkpoint.size, newest.checkpoint.root);
        let held = entries
            .get(index as usize)
            .filter(|_| index < size)
            .ok_or_else(|| {
                AuditError::Copy(format!(
                    "entry {} is not held below checkpoint {size}",
                    index + 1
                ))
            })?;
        let reply =
            signer.request::<calls::AuditInclusion>(&msg::AuditInclusion { index, size })?;
        if reply.entry.as_slice() != held.as_slice() {
            return Err(AuditError::Contradiction(format!(
                "the signer's entry {} differs from the one held here",
                index + 1
            )));
        }
        let proof = hashes(&reply.proof)?;
        merkle::verify_inclusion(&merkle::leaf_hash(held), index, size, &proof, &root).map_err(
            |e| {
                AuditError::Contradiction(format!(
                    "entry {} is not in checkpoint {size} by the signer's proof: {e}",
                    index + 1
                ))
            },
        )?;
        let entry = signer_protocol::decode_body(held)
            .map_err(|e| AuditError::Copy(format!("entry {}: {e}", index + 1)))?;
        Ok(Proven { entry, size, root })
    }
}

fn hashes(proof: &[serde_bytes::ByteBuf]) -> Result<Vec<Hash>, AuditError> {
    proof
        .iter()
        .map(|h| {
            h.as_slice()
                .try_into()
                .map_err(|_| AuditError::Contradiction("a proof hash is not 32 bytes".into()))
        })
        .collect()
}

/// Writes `bytes` to `path` unless it exists, atomically: a reader sees
/// the whole file or none. False when it existed.
fn keep_if_absent(path: &Path, bytes: &[u8]) -> Result<bool, AuditError> {
    let tmp = path.with_extension(format!(
        "new-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    write_new(&tmp, bytes)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io(path, e)),
    }
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<(), AuditError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io(path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io(path, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test
    use super::*;

    #[test]
    fn copies_opened_at_the_same_moment_keep_one_whole_key() {
        let vkey = |i: u8| {
            Verifier::new("a.example/audit", signer_tlog::note::TYPE_ED25519, [i; 32])
                .unwrap()
                .vkey()
        };
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let mine = vkey(round);
            let opened: Vec<_> = (0..4)
                .map(|_| {
                    let (dir, key) = (dir.path().to_path_buf(), mine.clone());
                    std::thread::spawn(move || AuditCopy::open(&dir, Some(&key)).map(|_| ()))
                })
                .collect();
            for t in opened {
                t.join().unwrap().unwrap();
            }
            assert_eq!(
                std::fs::read_to_string(dir.path().join("log.vkey")).unwrap(),
                format!("{mine}\n")
            );
            // Another log's key is still refused.
            let other = AuditCopy::open(dir.path(), Some(&vkey(round.wrapping_add(1))));
            assert!(other.is_err());
            // No temporary file stays behind.
            let names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names.len(), 2, "{names:?}");
        }
    }
}
