//! Replication state: the outbox of this signer's own changes, what has been
//! applied of the twin's, the digests that tell whether both agree, and the
//! conflicts found while applying.
//!
//! ```text
//! issuance / revocation / CRL ──► same write transaction ──► EVENTS[seq] (outbox)
//!                                                            DIGESTS[issuer] ^= H(change)
//! twin's events ──► apply_events ──► one transaction: changes + APPLIED[origin] = seq
//!                                    (an event at or below APPLIED is a repeat: skipped)
//! ```
//!
//! Every change is written in the transaction that makes it durable, so a
//! change is never lost between the repository and the publisher; the
//! publisher reads the outbox and trims it once the twin reports it applied.

use std::collections::BTreeMap;

use redb::{ReadableTable, TableDefinition, TableHandle, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    decode, decode_request, decode_revocation, encode_issued, insert_revocation, sealed, storage,
    CertRecord, RepoError, RevocationRecord, CERTS, EXPIRY, REQUESTS, REVOCATIONS, REVOCATION_SEQ,
};

/// This signer's changes, by its own sequence number (1, 2, …).
pub(crate) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events_v1");
/// Counters: `event_seq` (last own sequence number assigned), `digests` (1
/// once the digests cover every record), `epoch` (random, fixed when the
/// repository is created: a replaced repository starts a new sequence).
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta_v1");
/// Per origin: (last sequence number applied, its stream sequence, the
/// origin repository's epoch).
pub(crate) const APPLIED: TableDefinition<&str, (u64, u64, u64)> =
    TableDefinition::new("applied_v2");
/// Per issuer: [`SetDigest`].
pub(crate) const DIGESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("digests_v1");
/// Request ids issued on both twins with different certificates.
pub(crate) const CONFLICTS: TableDefinition<&str, &[u8]> = TableDefinition::new("conflicts_v1");
/// Per issuer: the highest CRL number either twin has used.
pub(crate) const CRL_FLOOR: TableDefinition<&str, &[u8]> = TableDefinition::new("crl_floor_v1");

/// A change of state, as replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A certificate was issued.
    Issued(CertRecord),
    /// A certificate was revoked (or its revocation replaced by the merge rule).
    Revoked(RevocationRecord),
    /// An audit entry of the origin's chain.
    Audit(crate::AuditEntry),
    /// User IDs of an OpenPGP key were certified.
    Certified(crate::CertificationRecord),
    /// A CRL was signed with this number.
    CrlIssued {
        /// Issuer name.
        issuer: String,
        /// CRL number, unsigned big-endian.
        number: Vec<u8>,
        /// thisUpdate, Unix seconds.
        this_update: i64,
    },
}

/// One change with its origin and place in the origin's sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The signer that made the change.
    pub origin: String,
    /// Its sequence number at the origin: 1, 2, … without gaps.
    pub seq: u64,
    /// The origin repository's epoch: sequence numbers count within it.
    #[serde(default)]
    pub epoch: u64,
    /// When the origin committed it, Unix microseconds.
    pub at_us: i64,
    /// The change.
    pub change: Change,
}

impl Event {
    /// The event's wire encoding (msgpack, named fields).
    pub fn encode(&self) -> Result<Vec<u8>, RepoError> {
        rmp_serde::to_vec_named(self).map_err(storage)
    }

    /// Decodes [`Event::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Result<Event, RepoError> {
        rmp_serde::from_slice(bytes).map_err(|e| RepoError::Corrupt(format!("event: {e}")))
    }
}

/// An order-independent digest of an issuer's issued and revoked sets: the
/// XOR of SHA-256 over each member. Two repositories with the same sets have
/// the same digest, whatever order the records arrived in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetDigest {
    /// Certificates issued.
    pub issued: u64,
    /// XOR of SHA-256(issuer ‖ serial ‖ SHA-256(DER)) over them.
    #[serde(with = "serde_bytes")]
    pub issued_xor: Vec<u8>,
    /// Revocations.
    pub revoked: u64,
    /// XOR of SHA-256(issuer ‖ serial ‖ reason ‖ revocation time ‖ invalidity date).
    #[serde(with = "serde_bytes")]
    pub revoked_xor: Vec<u8>,
}

impl SetDigest {
    /// Hex of both XORs with the counts, for comparing and showing.
    pub fn summary(&self) -> String {
        format!(
            "{}:{}/{}:{}",
            self.issued,
            hex_short(&self.issued_xor),
            self.revoked,
            hex_short(&self.revoked_xor)
        )
    }
}

fn hex_short(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "0".into();
    }
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// A request id the twins used for different certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The request id.
    pub request_id: String,
    /// The certificate this signer holds under it (issuer, serial hex).
    pub local: (String, String),
    /// The certificate the twin issued under it.
    pub remote: (String, String),
    /// The twin.
    pub origin: String,
    /// When it was found, Unix milliseconds.
    pub found_at_ms: i64,
}

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

fn xor_into(acc: &mut Vec<u8>, h: &[u8]) {
    if acc.len() != h.len() {
        acc.resize(h.len(), 0);
    }
    for (a, b) in acc.iter_mut().zip(h) {
        *a ^= b;
    }
}

fn cert_member(r: &CertRecord) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((r.issuer.len() as u32).to_be_bytes());
    h.update(r.issuer.as_bytes());
    h.update([r.serial.len() as u8]);
    h.update(&r.serial);
    h.update(Sha256::digest(&r.der));
    h.finalize().into()
}

fn revocation_member(r: &RevocationRecord) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((r.issuer.len() as u32).to_be_bytes());
    h.update(r.issuer.as_bytes());
    h.update([r.serial.len() as u8]);
    h.update(&r.serial);
    h.update([r.reason]);
    h.update(r.revoked_at.to_be_bytes());
    h.update(r.invalidity_date.unwrap_or(i64::MIN).to_be_bytes());
    h.finalize().into()
}

pub(crate) type DigestTable<'t> = redb::Table<'t, &'static str, &'static [u8]>;

fn update_digest(
    digests: &mut DigestTable<'_>,
    issuer: &str,
    f: impl FnOnce(&mut SetDigest),
) -> Result<(), RepoError> {
    let mut d: SetDigest = match digests.get(issuer).map_err(storage)? {
        Some(v) => sealed::open(DIGESTS.name(), v.value())?,
        None => SetDigest::default(),
    };
    f(&mut d);
    let bytes = sealed::seal(DIGESTS.name(), &d)?;
    digests.insert(issuer, bytes.as_slice()).map_err(storage)?;
    Ok(())
}

/// Adds a certificate to a digest being computed.
pub(crate) fn add_cert(d: &mut SetDigest, r: &CertRecord) {
    d.issued += 1;
    xor_into(&mut d.issued_xor, &cert_member(r));
}

/// Adds a revocation to a digest being computed.
pub(crate) fn add_revocation(d: &mut SetDigest, r: &RevocationRecord) {
    d.revoked += 1;
    xor_into(&mut d.revoked_xor, &revocation_member(r));
}

/// Whether two digests describe the same sets (an empty XOR is all zeros).
pub(crate) fn same_sets(a: &SetDigest, b: &SetDigest) -> bool {
    let xor_eq = |x: &[u8], y: &[u8]| {
        let zero = |v: &[u8]| v.iter().all(|&b| b == 0);
        x == y || (zero(x) && zero(y))
    };
    a.issued == b.issued
        && a.revoked == b.revoked
        && xor_eq(&a.issued_xor, &b.issued_xor)
        && xor_eq(&a.revoked_xor, &b.revoked_xor)
}

/// Adds a certificate to its issuer's digest.
pub(crate) fn digest_cert(digests: &mut DigestTable<'_>, r: &CertRecord) -> Result<(), RepoError> {
    update_digest(digests, &r.issuer, |d| add_cert(d, r))
}

/// Adds (`add`) or takes out a revocation from its issuer's digest.
pub(crate) fn digest_revocation(
    digests: &mut DigestTable<'_>,
    r: &RevocationRecord,
    add: bool,
) -> Result<(), RepoError> {
    update_digest(digests, &r.issuer, |d| {
        if add {
            d.revoked += 1;
        } else {
            d.revoked = d.revoked.saturating_sub(1);
        }
        xor_into(&mut d.revoked_xor, &revocation_member(r));
    })
}

use crate::clock::now_us;

/// Appends one of this signer's changes to the outbox, in the caller's
/// transaction; returns its sequence number.
pub(crate) fn append_event(
    txn: &WriteTransaction,
    origin: &str,
    change: Change,
) -> Result<u64, RepoError> {
    let mut meta = txn.open_table(META).map_err(storage)?;
    let epoch = meta.get("epoch").map_err(storage)?.map_or(0, |v| v.value());
    let seq = meta
        .get("event_seq")
        .map_err(storage)?
        .map(|v| v.value())
        .unwrap_or(0)
        + 1;
    let event = Event {
        origin: origin.to_string(),
        seq,
        epoch,
        at_us: now_us(),
        change,
    };
    let bytes = sealed::seal(EVENTS.name(), &event)?;
    txn.open_table(EVENTS)
        .map_err(storage)?
        .insert(seq, bytes.as_slice())
        .map_err(storage)?;
    meta.insert("event_seq", seq).map_err(storage)?;
    Ok(seq)
}

/// The merge rule for two revocations of one serial: the earlier revocation
/// time wins, then the lower reason code, then the lower signer id. Both
/// twins apply it and so keep the same record.
pub fn revocation_wins(a: &RevocationRecord, b: &RevocationRecord) -> bool {
    (a.revoked_at, a.reason, &a.signer_id) < (b.revoked_at, b.reason, &b.signer_id)
}

fn big_endian_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let strip = |x: &[u8]| -> Vec<u8> {
        let start = x.iter().position(|&b| b != 0).unwrap_or(x.len());
        x[start..].to_vec()
    };
    let (a, b) = (strip(a), strip(b));
    a.len().cmp(&b.len()).then_with(|| a.cmp(&b))
}

/// Raises the issuer's CRL floor to `number` if it is higher.
pub(crate) fn raise_crl_floor(
    txn: &WriteTransaction,
    issuer: &str,
    number: &[u8],
) -> Result<(), RepoError> {
    let mut floor = txn.open_table(CRL_FLOOR).map_err(storage)?;
    let higher = match floor.get(issuer).map_err(storage)? {
        Some(v) => big_endian_cmp(number, v.value()).is_gt(),
        None => true,
    };
    if higher {
        floor.insert(issuer, number).map_err(storage)?;
    }
    Ok(())
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
    let mut certs = txn.open_table(CERTS).map_err(storage)?;
    let mut requests = txn.open_table(REQUESTS).map_err(storage)?;
    let mut expiry = txn.open_table(EXPIRY).map_err(storage)?;
    let mut revocations = txn.open_table(REVOCATIONS).map_err(storage)?;
    let mut rseq = txn.open_table(REVOCATION_SEQ).map_err(storage)?;
    let mut digests = txn.open_table(DIGESTS).map_err(storage)?;
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
                let present = certs.get(key).map_err(storage)?.is_some();
                if !present {
                    let value = sealed::seal(CERTS.name(), r)?;
                    certs.insert(key, value.as_slice()).map_err(storage)?;
                    expiry
                        .insert((r.not_after, r.issuer.as_str(), r.serial.as_slice()), ())
                        .map_err(storage)?;
                    digest_cert(&mut digests, r)?;
                }
                let existing = requests
                    .get(r.request_id.as_str())
                    .map_err(storage)?
                    .map(|v| v.value().to_vec());
                match existing {
                    None => {
                        let (_, entry) = encode_issued(r)?;
                        requests
                            .insert(r.request_id.as_str(), entry.as_slice())
                            .map_err(storage)?;
                    }
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
                let cert = certs
                    .get((r.issuer.as_str(), r.serial.as_slice()))
                    .map_err(storage)?
                    .map(|v| decode(v.value()))
                    .transpose()?;
                let mut incoming = r.clone();
                let store = match existing {
                    Some(old) if !revocation_wins(r, &old) => false,
                    Some(old) => {
                        digest_revocation(&mut digests, &old, false)?;
                        incoming.replaced = true;
                        true
                    }
                    None => true,
                };
                if store {
                    let stored =
                        insert_revocation(&mut revocations, &mut rseq, incoming, cert.as_ref())?;
                    digest_revocation(&mut digests, &stored, true)?;
                }
            }
            Change::CrlIssued { issuer, number, .. } => {
                raise_crl_floor(txn, issuer, number)?;
            }
            Change::Audit(entry) => crate::audit::store_peer(txn, entry)?,
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
