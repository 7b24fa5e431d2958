//! Whose repository this is.
//!
//! ```text
//! repo init / first set-up step ──► identity_v1["identity"] = { schema, signer id, twin,
//!                                                              CA name → SHA-256(SPKI), created }
//! every open ──► compare with what the configuration expects ──► refuse, or record new CAs
//! ```
//!
//! A repository is made only on purpose ([`crate::Repository::create`]); no
//! other open creates one. Every later open names what it expects: the
//! signer id, the twin, and the key fingerprint of every CA whose
//! certificate it has (the daemon checks those certificates against the HSM
//! keys at startup, so the repository is bound to the keys through them). A
//! missing, empty or foreign file, one of another signer or of a newer
//! schema is refused with [`RepoError::Refused`], before anything is read or
//! written.

use std::collections::BTreeMap;

use redb::{TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};

use crate::{sealed, storage, RepoError};

/// The identity record: "identity" → [`Identity`] (sealed).
pub(crate) const IDENTITY: TableDefinition<&str, &[u8]> = TableDefinition::new("identity_v1");
const KEY: &str = "identity";

/// The layout of records this code reads and writes. A repository of a
/// higher schema was written by a newer signer and is refused.
pub const SCHEMA: u32 = 1;

/// What a repository says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Record layout version ([`SCHEMA`] when written by this code).
    pub schema: u32,
    /// The signer this repository belongs to.
    pub signer_id: String,
    /// The twin's signer id, once a replicated configuration used it.
    pub peer_id: Option<String>,
    /// CA name → SHA-256 of the CA certificate's SubjectPublicKeyInfo, hex.
    pub cas: BTreeMap<String, String>,
    /// When it was created, Unix seconds.
    pub created_at: i64,
}

/// What the configuration expects of the repository it names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// This signer's id.
    pub signer_id: String,
    /// The twin's signer id, if replication is configured.
    pub peer_id: Option<String>,
    /// CA name → SHA-256 of its certificate's SubjectPublicKeyInfo, hex, for
    /// every configured CA whose certificate exists.
    pub cas: BTreeMap<String, String>,
}

impl Expected {
    /// Only the signer id (no twin, no CA certificates yet).
    pub fn signer(signer_id: &str) -> Expected {
        Expected {
            signer_id: signer_id.to_string(),
            ..Expected::default()
        }
    }

    /// The identity a new repository gets.
    pub(crate) fn identity(&self, now: i64) -> Identity {
        Identity {
            schema: SCHEMA,
            signer_id: self.signer_id.clone(),
            peer_id: self.peer_id.clone(),
            cas: self.cas.clone(),
            created_at: now,
        }
    }
}

/// Why a repository was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No file at the configured path.
    #[error("there is no repository at {0}; a new signer creates one with `signerd repo init`, an existing one restores its backup (`signerd repo restore`)")]
    Missing(String),
    /// A file of length zero.
    #[error("{0} is empty (0 bytes): the repository was truncated or never written; restore it from a backup")]
    Empty(String),
    /// Not a redb file, or a redb file without an identity record.
    #[error("{path} is not a signer repository ({why})")]
    NotARepository {
        /// The file.
        path: String,
        /// What was found instead.
        why: String,
    },
    /// Written by a newer signer.
    #[error("{path} has record schema {found}; this signerd reads schema {SCHEMA} and older: upgrade signerd")]
    NewerSchema {
        /// The file.
        path: String,
        /// Its schema.
        found: u32,
    },
    /// Another signer's or another CA's repository.
    #[error("{path} is not this signer's repository: {why}")]
    Foreign {
        /// The file.
        path: String,
        /// What does not match.
        why: String,
    },
    /// `create` found a file already there.
    #[error("{0} already exists; a repository is never overwritten (move it away first if it really must be replaced)")]
    Exists(String),
    /// Another process holds the file for writing.
    #[error("{0} is open for writing in another process (is signerd running?)")]
    InUse(String),
}

/// Reads the identity record, if any.
pub(crate) fn read(txn: &redb::ReadTransaction) -> Result<Option<Identity>, RepoError> {
    let table = match txn.open_table(IDENTITY) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(storage(e)),
    };
    let found = table.get(KEY).map_err(storage)?;
    found
        .map(|v| sealed::open(IDENTITY.name(), v.value()))
        .transpose()
}

/// Writes the identity record.
pub(crate) fn write(txn: &redb::WriteTransaction, identity: &Identity) -> Result<(), RepoError> {
    let value = sealed::seal(IDENTITY.name(), identity)?;
    txn.open_table(IDENTITY)
        .map_err(storage)?
        .insert(KEY, value.as_slice())
        .map_err(storage)?;
    Ok(())
}

/// Compares a repository's identity with what is expected; returns the
/// identity to store when the expectation adds to it (a new CA, the twin),
/// or the refusal.
pub(crate) fn reconcile(
    path: &str,
    found: &Identity,
    expected: &Expected,
) -> Result<Option<Identity>, Refusal> {
    let foreign = |why: String| Refusal::Foreign {
        path: path.to_string(),
        why,
    };
    if found.schema > SCHEMA {
        return Err(Refusal::NewerSchema {
            path: path.to_string(),
            found: found.schema,
        });
    }
    if found.signer_id != expected.signer_id {
        return Err(foreign(format!(
            "it belongs to signer {:?}, and this configuration is signer {:?}",
            found.signer_id, expected.signer_id
        )));
    }
    if let (Some(have), Some(want)) = (&found.peer_id, &expected.peer_id) {
        if have != want {
            return Err(foreign(format!(
                "its twin is {have:?}, and this configuration replicates with {want:?}"
            )));
        }
    }
    let mut updated = found.clone();
    for (name, fingerprint) in &found.cas {
        match expected.cas.get(name) {
            Some(f) if f == fingerprint => {}
            Some(f) => {
                return Err(foreign(format!(
                    "its CA {name} has key {}…, and the configured certificate for {name} has key {}…",
                    &fingerprint[..16.min(fingerprint.len())],
                    &f[..16.min(f.len())]
                )))
            }
            None => {
                return Err(foreign(format!(
                    "it holds the records of CA {name}, which this configuration does not name (or whose certificate is missing)"
                )))
            }
        }
    }
    for (name, fingerprint) in &expected.cas {
        updated
            .cas
            .entry(name.clone())
            .or_insert_with(|| fingerprint.clone());
    }
    if updated.peer_id.is_none() {
        updated.peer_id = expected.peer_id.clone();
    }
    Ok((updated != *found).then_some(updated))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(signer: &str, cas: &[(&str, &str)]) -> Expected {
        Expected {
            signer_id: signer.into(),
            peer_id: None,
            cas: cas
                .iter()
                .map(|(n, f)| (n.to_string(), f.to_string()))
                .collect(),
        }
    }

    #[test]
    fn new_cas_are_recorded_and_then_bound() {
        let id = expected("a", &[]).identity(0);
        let grown = reconcile("r", &id, &expected("a", &[("root", "aa")]))
            .unwrap()
            .unwrap();
        assert_eq!(grown.cas["root"], "aa");
        assert_eq!(
            reconcile("r", &grown, &expected("a", &[("root", "aa")])).unwrap(),
            None
        );
        assert!(matches!(
            reconcile("r", &grown, &expected("a", &[("root", "bb")])),
            Err(Refusal::Foreign { .. })
        ));
        assert!(matches!(
            reconcile("r", &grown, &expected("a", &[("other", "aa")])),
            Err(Refusal::Foreign { .. })
        ));
        assert!(matches!(
            reconcile("r", &grown, &expected("b", &[("root", "aa")])),
            Err(Refusal::Foreign { .. })
        ));
    }

    #[test]
    fn newer_schema_and_other_twin_are_refused() {
        let mut id = expected("a", &[]).identity(0);
        id.peer_id = Some("b".into());
        let mut e = expected("a", &[]);
        e.peer_id = Some("c".into());
        assert!(matches!(
            reconcile("r", &id, &e),
            Err(Refusal::Foreign { .. })
        ));
        id.schema = SCHEMA + 1;
        assert!(matches!(
            reconcile("r", &id, &expected("a", &[])),
            Err(Refusal::NewerSchema { .. })
        ));
    }
}
