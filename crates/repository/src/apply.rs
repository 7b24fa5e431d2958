//! Applying the twin's events: one transaction per batch, through the same
//! insert paths local commits use, with what was applied of each origin
//! recorded in that transaction (an event at or below it is a repeat), and
//! the conflicts found on the way.
//!
//! ```text
//! twin's events ──► apply_events ──► one transaction: changes + APPLIED[origin] = seq
//! ```

use std::collections::BTreeMap;

use redb::{ReadableTable, TableDefinition, TableHandle, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::certs::{insert_certificate, insert_request, CertTables};
use crate::clock::now_us;
use crate::crls::raise_crl_floor;
use crate::outbox::{digest_revocation, Change, Event, SetDigest, DIGESTS, EVENTS, META};
use crate::records::{decode, decode_request, decode_revocation, Conflict, RevocationRecord};
use crate::revocations::{insert_revocation, revocation_wins};
use crate::schema::{REVOCATIONS, REVOCATION_SEQ};
use crate::{sealed, storage, RepoError, Repository};

/// Per origin: (last sequence number applied, its stream sequence, the
/// origin repository's epoch).
pub(crate) const APPLIED: TableDefinition<&str, (u64, u64, u64)> =
    TableDefinition::new("applied_v2");

/// Request ids issued on both twins with different certificates.
pub(crate) const CONFLICTS: TableDefinition<&str, &[u8]> = TableDefinition::new("conflicts_v1");

/// What applying a batch of the twin's events did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Events applied.
    pub applied: u64,
    /// Events already applied before (repeated delivery): skipped.
    pub duplicates: u64,
    /// Events missing before one applied (the origin's sequence jumped).
    pub missing: u64,
    /// New request id conflicts found.
    pub conflicts: u64,
    /// The origin time (Unix µs) of each event applied.
    pub applied_at_us: Vec<i64>,
}

/// A consistent snapshot of the replication state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaState {
    /// The last sequence number this signer assigned to its own changes.
    pub own_seq: u64,
    /// The oldest event still in the outbox.
    pub outbox_first: Option<u64>,
    /// This repository's epoch.
    pub epoch: u64,
    /// Per origin: (last sequence number applied, its stream sequence, the
    /// origin's epoch).
    pub applied: BTreeMap<String, (u64, u64, u64)>,
    /// Per issuer: digests of the issued and revoked sets.
    pub digests: BTreeMap<String, SetDigest>,
    /// Request id conflicts found.
    pub conflicts: u64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Applies the twin's events in one transaction. Events of `own_origin`
/// and events at or below what was applied of their origin are skipped.
pub(crate) fn apply(
    txn: &WriteTransaction,
    own_origin: &str,
    events: &[(Event, u64)],
) -> Result<ApplyReport, RepoError> {
    let mut report = ApplyReport::default();
    let mut applied = txn.open_table(APPLIED).map_err(storage)?;
    let mut t = CertTables::open(txn)?;
    let mut revocations = txn.open_table(REVOCATIONS).map_err(storage)?;
    let mut rseq = txn.open_table(REVOCATION_SEQ).map_err(storage)?;
    let mut conflicts = txn.open_table(CONFLICTS).map_err(storage)?;
    for (event, stream_seq) in events {
        if event.origin == own_origin {
            report.duplicates += 1;
            continue;
        }
        let last = match applied.get(event.origin.as_str()).map_err(storage)? {
            Some(v) if v.value().2 == event.epoch => v.value().0,
            Some(_) => {
                tracing::warn!(origin = %event.origin, epoch = event.epoch, "the twin's repository is new: its sequence starts again");
                0
            }
            None => 0,
        };
        if event.seq <= last {
            report.duplicates += 1;
            continue;
        }
        report.missing += event.seq - last - 1;
        match &event.change {
            Change::Issued(r) => {
                let key = (r.issuer.as_str(), r.serial.as_slice());
                let present = t.certs.get(key).map_err(storage)?.is_some();
                if !present {
                    insert_certificate(&mut t, r)?;
                }
                let existing = t
                    .requests
                    .get(r.request_id.as_str())
                    .map_err(storage)?
                    .map(|v| v.value().to_vec());
                match existing {
                    None => insert_request(&mut t, r)?,
                    Some(bytes) => {
                        let entry = decode_request(&bytes)?;
                        if (entry.issuer.as_str(), entry.serial.as_slice()) != key {
                            let conflict = Conflict {
                                request_id: r.request_id.clone(),
                                local: (entry.issuer.clone(), hex(&entry.serial)),
                                remote: (r.issuer.clone(), hex(&r.serial)),
                                origin: event.origin.clone(),
                                found_at_ms: now_us() / 1000,
                            };
                            tracing::error!(
                                request_id = %r.request_id,
                                local_serial = %conflict.local.1,
                                twin_serial = %conflict.remote.1,
                                twin = %event.origin,
                                "request id issued on both twins with different certificates"
                            );
                            let value = sealed::seal(CONFLICTS.name(), &conflict)?;
                            conflicts
                                .insert(r.request_id.as_str(), value.as_slice())
                                .map_err(storage)?;
                            report.conflicts += 1;
                        }
                    }
                }
            }
            Change::Revoked(r) => {
                let len = u8::try_from(r.serial.len())
                    .map_err(|_| RepoError::Corrupt("serial longer than 255 octets".into()))?;
                let key = (r.issuer.as_str(), len, r.serial.as_slice());
                let existing: Option<RevocationRecord> = revocations
                    .get(key)
                    .map_err(storage)?
                    .map(|v| decode_revocation(v.value()))
                    .transpose()?;
                let cert = t
                    .certs
                    .get((r.issuer.as_str(), r.serial.as_slice()))
                    .map_err(storage)?
                    .map(|v| decode(v.value()))
                    .transpose()?;
                let mut incoming = r.clone();
                let store = match existing {
                    Some(old) if !revocation_wins(r, &old) => false,
                    Some(old) => {
                        digest_revocation(&mut t.digests, &old, false)?;
                        incoming.replaced = true;
                        true
                    }
                    None => true,
                };
                if store {
                    let stored =
                        insert_revocation(&mut revocations, &mut rseq, incoming, cert.as_ref())?;
                    digest_revocation(&mut t.digests, &stored, true)?;
                }
            }
            Change::CrlIssued { issuer, number, .. } => {
                raise_crl_floor(txn, issuer, number)?;
            }
            Change::Audit(entry) => crate::audit::store_peer(txn, entry)?,
            Change::Checkpoint { size, note } => {
                crate::tree::store_peer_checkpoint(txn, &event.origin, *size, note)?
            }
            Change::Cosignature { log, size, line } => {
                if log == own_origin {
                    crate::tree::store_cosignature(txn, *size, &event.origin, line)?;
                }
            }
            Change::Certified(record) => {
                if crate::openpgp::apply(
                    txn,
                    &mut conflicts,
                    record,
                    &event.origin,
                    now_us() / 1000,
                )? {
                    report.conflicts += 1;
                }
            }
        }
        applied
            .insert(event.origin.as_str(), (event.seq, *stream_seq, event.epoch))
            .map_err(storage)?;
        report.applied += 1;
        report.applied_at_us.push(event.at_us);
    }
    Ok(report)
}

/// Reads the state tables for [`crate::Repository::replica_state`].
pub(crate) fn read_state(txn: &redb::ReadTransaction) -> Result<ReplicaState, RepoError> {
    let meta = txn.open_table(META).map_err(storage)?;
    let events = txn.open_table(EVENTS).map_err(storage)?;
    let applied = txn.open_table(APPLIED).map_err(storage)?;
    let digests = txn.open_table(DIGESTS).map_err(storage)?;
    let conflicts = txn.open_table(CONFLICTS).map_err(storage)?;
    let mut state = ReplicaState {
        own_seq: meta
            .get("event_seq")
            .map_err(storage)?
            .map(|v| v.value())
            .unwrap_or(0),
        epoch: meta.get("epoch").map_err(storage)?.map_or(0, |v| v.value()),
        outbox_first: events.first().map_err(storage)?.map(|(k, _)| k.value()),
        ..ReplicaState::default()
    };
    for item in applied.iter().map_err(storage)? {
        let (k, v) = item.map_err(storage)?;
        state.applied.insert(k.value().to_string(), v.value());
    }
    for item in digests.iter().map_err(storage)? {
        let (k, v) = item.map_err(storage)?;
        let d: SetDigest = sealed::open(DIGESTS.name(), v.value())?;
        state.digests.insert(k.value().to_string(), d);
    }
    state.conflicts = redb::ReadableTableMetadata::len(&conflicts).map_err(storage)?;
    Ok(state)
}

impl Repository {
    /// Applies the twin's events (each with its stream sequence) in one
    /// durable transaction; repeats and this signer's own events are skipped.
    pub fn apply_events(&self, events: &[(Event, u64)]) -> Result<ApplyReport, RepoError> {
        self.write(|txn| {
            let report = crate::apply::apply(txn, &self.origin, events)?;
            let commit = report.applied > 0;
            Ok((report, commit))
        })
    }

    /// A consistent snapshot of the replication state.
    pub fn replica_state(&self) -> Result<ReplicaState, RepoError> {
        self.read(crate::apply::read_state)
    }

    /// The request id conflicts found while applying the twin's events.
    pub fn conflicts(&self) -> Result<Vec<Conflict>, RepoError> {
        self.read(|txn| {
            let table = txn.open_table(crate::apply::CONFLICTS).map_err(storage)?;
            let mut out = Vec::new();
            for item in table.iter().map_err(storage)? {
                let (_, v) = item.map_err(storage)?;
                out.push(sealed::open(crate::apply::CONFLICTS.name(), v.value())?);
            }
            Ok(out)
        })
    }
}
