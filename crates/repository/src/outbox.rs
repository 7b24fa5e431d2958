//! The outbox of this signer's own changes and the set digests.
//!
//! ```text
//! issuance / revocation / CRL ──► same write transaction ──► EVENTS[seq] (outbox)
//!                                                            DIGESTS[issuer] ^= H(change)
//! ```
//!
//! Every change is written in the transaction that makes it durable, so a
//! change is never lost between the repository and the publisher; the
//! publisher reads the outbox and trims it once the twin reports it applied.

use redb::{ReadableTable, TableDefinition, TableHandle, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::now_us;
use crate::records::{AuditEntry, CertRecord, CertificationRecord, RevocationRecord};
use crate::{sealed, storage, RepoError, Repository};

/// This signer's changes, by its own sequence number (1, 2, …): each a
/// whole [`Event`] (msgpack map, sealed) or, for an issuance or an audit
/// entry, a [`Pointer`] to the record written in the same transaction
/// (msgpack array, sealed), which [`Repository::events_after`] turns into
/// the whole event. The record is not written twice.
pub(crate) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events_v1");

/// Counters: `event_seq` (last own sequence number assigned), `digests` (1
/// once the digests cover every record), `epoch` (random, fixed when the
/// repository is created: a replaced repository starts a new sequence),
/// `twin` (1 once the repository belongs to a pair: only then are changes
/// written to the outbox; a single signer keeps no second copy of each
/// record that nothing would ever read or trim).
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta_v1");

/// Per issuer: [`SetDigest`].
pub(crate) const DIGESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("digests_v1");

/// A change of state, as replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A certificate was issued.
    Issued(CertRecord),
    /// A certificate was revoked (or its revocation replaced by the merge rule).
    Revoked(RevocationRecord),
    /// An audit entry of the origin's chain.
    Audit(AuditEntry),
    /// User IDs of an OpenPGP key were certified.
    Certified(CertificationRecord),
    /// The origin signed a checkpoint of its audit log (for the twin to
    /// witness).
    Checkpoint {
        /// Tree size.
        size: u64,
        /// The signed note.
        note: String,
    },
    /// The origin, as witness, cosigned a checkpoint of log `log`.
    Cosignature {
        /// The cosigned log's origin (its signer id).
        log: String,
        /// The checkpoint's size.
        size: u64,
        /// The cosignature line of the note.
        line: String,
    },
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

/// An outbox entry naming the record it replicates (records are never
/// changed once written): when the origin committed it, its epoch, and
/// where the record is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pointer {
    at_us: i64,
    epoch: u64,
    target: Target,
}

/// Where a [`Pointer`]'s record is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Target {
    /// A certificate: `Change::Issued` of CERTS\[(issuer, serial)\].
    Issued(String, #[serde(with = "serde_bytes")] Vec<u8>),
    /// An entry of this signer's audit chain: `Change::Audit` of AUDIT\[seq\].
    Audit(u64),
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

/// Marks the repository as one of a pair (in the caller's transaction):
/// from then on its changes go to the outbox. Never undone.
pub(crate) fn mark_twinned(txn: &WriteTransaction) -> Result<(), RepoError> {
    txn.open_table(META)
        .map_err(storage)?
        .insert("twin", 1)
        .map_err(storage)?;
    Ok(())
}

/// A single signer's repository becomes one of a pair: marked, and
/// everything it recorded alone goes to the outbox as events, in the
/// caller's transaction, so that the twin receives the whole record (its
/// audit chain from the first entry, every certificate, revocation,
/// certification and CRL number). Returns the events written.
pub(crate) fn become_twinned(txn: &WriteTransaction, origin: &str) -> Result<u64, RepoError> {
    use crate::records::{decode, decode_revocation, CrlMeta};
    use crate::schema::{CERTS, CRL_HISTORY, REVOCATIONS};
    mark_twinned(txn)?;
    // Appended as they are read (the outbox tables are others than these):
    // nothing of a large repository is held in memory. The audit chain and
    // the certificates by pointer (each read to be sure it can be
    // replicated).
    Outbox::with(txn, |outbox| {
        let mut n = 0u64;
        for item in txn
            .open_table(crate::audit::AUDIT)
            .map_err(storage)?
            .iter()
            .map_err(storage)?
        {
            let (k, v) = item.map_err(storage)?;
            AuditEntry::decode(v.value())?;
            outbox.pointer(Target::Audit(k.value()))?;
            n += 1;
        }
        for item in txn
            .open_table(CERTS)
            .map_err(storage)?
            .iter()
            .map_err(storage)?
        {
            let (k, v) = item.map_err(storage)?;
            decode(v.value())?;
            let (issuer, serial) = k.value();
            outbox.pointer(Target::Issued(issuer.to_string(), serial.to_vec()))?;
            n += 1;
        }
        let mut add = |change: Change| -> Result<(), RepoError> {
            outbox.event(origin, change)?;
            n += 1;
            Ok(())
        };
        for item in txn
            .open_table(REVOCATIONS)
            .map_err(storage)?
            .iter()
            .map_err(storage)?
        {
            add(Change::Revoked(decode_revocation(
                item.map_err(storage)?.1.value(),
            )?))?;
        }
        for item in txn
            .open_table(crate::openpgp::CERTIFICATIONS)
            .map_err(storage)?
            .iter()
            .map_err(storage)?
        {
            add(Change::Certified(crate::openpgp::decode(
                item.map_err(storage)?.1.value(),
            )?))?;
        }
        for item in txn
            .open_table(CRL_HISTORY)
            .map_err(storage)?
            .iter()
            .map_err(storage)?
        {
            let (k, v) = item.map_err(storage)?;
            let (issuer, number) = k.value();
            let meta: CrlMeta = sealed::open(CRL_HISTORY.name(), v.value())?;
            add(Change::CrlIssued {
                issuer: issuer.to_string(),
                number: number.to_vec(),
                this_update: meta.this_update,
            })?;
        }
        Ok(n)
    })
}

/// Whether the repository is one of a pair (its changes are replicated).
pub(crate) fn twinned(
    meta: &impl redb::ReadableTable<&'static str, u64>,
) -> Result<bool, RepoError> {
    Ok(meta
        .get("twin")
        .map_err(storage)?
        .is_some_and(|v| v.value() == 1))
}

/// Appends one of this signer's changes to the outbox, in the caller's
/// transaction; returns its sequence number, or `None` when the
/// repository has no twin (nothing is written and no number is used).
pub(crate) fn append_event(
    txn: &WriteTransaction,
    origin: &str,
    change: Change,
) -> Result<Option<u64>, RepoError> {
    Outbox::with(txn, |outbox| outbox.event(origin, change))
}

/// The outbox opened once for many entries of one transaction (a group
/// commit's certificates or audit entries): the tables and the position
/// are looked up once, and the position written once, instead of per
/// entry. While it is open, nothing else in the transaction may open the
/// outbox's tables (redb refuses a table opened twice), so it lives only
/// within [`Outbox::with`].
pub(crate) struct Outbox<'t> {
    meta: redb::Table<'t, &'static str, u64>,
    events: redb::Table<'t, u64, &'static [u8]>,
    /// (epoch, last sequence number) when the repository has a twin.
    at: Option<(u64, u64)>,
    /// Whether entries were appended (the position has moved).
    moved: bool,
}

impl<'t> Outbox<'t> {
    /// Runs `f` with the outbox of `txn`, then records the position past
    /// what `f` appended. An error from `f` is returned without it: the
    /// caller's transaction is then not committed, so no entry stays
    /// without its position.
    pub(crate) fn with<T>(
        txn: &'t WriteTransaction,
        f: impl FnOnce(&mut Outbox<'t>) -> Result<T, RepoError>,
    ) -> Result<T, RepoError> {
        let mut outbox = Outbox::open(txn)?;
        let out = f(&mut outbox)?;
        if let (true, Some((_, last))) = (outbox.moved, outbox.at) {
            outbox.meta.insert("event_seq", last).map_err(storage)?;
        }
        Ok(out)
    }

    fn open(txn: &'t WriteTransaction) -> Result<Outbox<'t>, RepoError> {
        let meta = txn.open_table(META).map_err(storage)?;
        let at = if twinned(&meta)? {
            let get = |k: &str| -> Result<u64, RepoError> {
                Ok(meta.get(k).map_err(storage)?.map_or(0, |v| v.value()))
            };
            Some((get("epoch")?, get("event_seq")?))
        } else {
            None
        };
        Ok(Outbox {
            meta,
            events: txn.open_table(EVENTS).map_err(storage)?,
            at,
            moved: false,
        })
    }

    /// Writes the next entry, made by `entry` from its sequence number and
    /// the epoch, if the repository has a twin.
    fn append(
        &mut self,
        entry: impl FnOnce(u64, u64) -> Result<Vec<u8>, RepoError>,
    ) -> Result<Option<u64>, RepoError> {
        let Some((epoch, last)) = self.at else {
            return Ok(None);
        };
        let seq = last + 1;
        let bytes = entry(seq, epoch)?;
        self.events.insert(seq, bytes.as_slice()).map_err(storage)?;
        self.at = Some((epoch, seq));
        self.moved = true;
        Ok(Some(seq))
    }

    /// [`append_event`] through this outbox.
    pub(crate) fn event(&mut self, origin: &str, change: Change) -> Result<Option<u64>, RepoError> {
        self.append(|seq, epoch| {
            sealed::seal(
                EVENTS.name(),
                &Event {
                    origin: origin.to_string(),
                    seq,
                    epoch,
                    at_us: now_us(),
                    change,
                },
            )
        })
    }

    /// An entry naming a record written in this transaction (see
    /// [`Pointer`]): the outbox does not hold a second copy.
    pub(crate) fn pointer(&mut self, target: Target) -> Result<Option<u64>, RepoError> {
        self.append(|_, epoch| {
            sealed::seal_compact(
                EVENTS.name(),
                &Pointer {
                    at_us: now_us(),
                    epoch,
                    target,
                },
            )
        })
    }
}

/// An outbox entry as the twin receives it: a whole event's bytes as
/// stored, or a [`Pointer`]'s record read from `certs` / `audit` and
/// encoded as the event.
pub(crate) fn materialize(
    origin: &str,
    seq: u64,
    stored: &[u8],
    certs: &impl ReadableTable<(&'static str, &'static [u8]), &'static [u8]>,
    audit: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<Vec<u8>, RepoError> {
    let payload = sealed::payload(EVENTS.name(), stored)?;
    // A whole event is a map; a pointer an array.
    if !matches!(payload.first(), Some(0x90..=0x9f | 0xdc | 0xdd)) {
        return Ok(payload.to_vec());
    }
    let pointer: Pointer = sealed::open(EVENTS.name(), stored)?;
    let missing = |what: String| {
        RepoError::Corrupt(format!(
            "outbox event {seq} names {what}, which is not in the repository"
        ))
    };
    // The record's stored encoding (checked against its checksum) goes
    // into the event as it is: the same value as `Event::encode` of the
    // decoded record would carry, without decoding and encoding it again.
    let (variant, record) = match pointer.target {
        Target::Issued(issuer, serial) => {
            let stored = certs
                .get((issuer.as_str(), serial.as_slice()))
                .map_err(storage)?
                .ok_or_else(|| missing(format!("certificate {issuer}/{}", crate::hex(&serial))))?;
            let record = sealed::payload(crate::schema::CERTS.name(), stored.value())?.to_vec();
            ("Issued", record)
        }
        Target::Audit(n) => {
            let stored = audit
                .get(n)
                .map_err(storage)?
                .ok_or_else(|| missing(format!("audit entry {n}")))?;
            ("Audit", stored.value().to_vec())
        }
    };
    Ok(encode_event(
        origin,
        seq,
        pointer.epoch,
        pointer.at_us,
        variant,
        &record,
    ))
}

/// [`Event::encode`] of an event whose change is `variant` of the record
/// already encoded as `record` (msgpack).
fn encode_event(
    origin: &str,
    seq: u64,
    epoch: u64,
    at_us: i64,
    variant: &str,
    record: &[u8],
) -> Vec<u8> {
    use rmp::encode as e;
    let mut out = Vec::with_capacity(record.len() + origin.len() + 64);
    // Writing to a Vec cannot fail.
    let _ = e::write_map_len(&mut out, 5);
    let _ = e::write_str(&mut out, "origin");
    let _ = e::write_str(&mut out, origin);
    let _ = e::write_str(&mut out, "seq");
    let _ = e::write_uint(&mut out, seq);
    let _ = e::write_str(&mut out, "epoch");
    let _ = e::write_uint(&mut out, epoch);
    let _ = e::write_str(&mut out, "at_us");
    let _ = e::write_sint(&mut out, at_us);
    let _ = e::write_str(&mut out, "change");
    let _ = e::write_map_len(&mut out, 1);
    let _ = e::write_str(&mut out, variant);
    out.extend_from_slice(record);
    out
}

impl Repository {
    /// Up to `limit` outbox events with sequence numbers above `after`, encoded.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, RepoError> {
        self.read(|txn| {
            let events = txn.open_table(crate::outbox::EVENTS).map_err(storage)?;
            let certs = txn.open_table(crate::schema::CERTS).map_err(storage)?;
            let audit = txn.open_table(crate::audit::AUDIT).map_err(storage)?;
            let mut out = Vec::new();
            for item in events.range(after + 1..).map_err(storage)?.take(limit) {
                let (k, v) = item.map_err(storage)?;
                let seq = k.value();
                out.push((
                    seq,
                    materialize(&self.origin, seq, v.value(), &certs, &audit)?,
                ));
            }
            Ok(out)
        })
    }

    /// Drops outbox events up to `upto` (the twin has applied them).
    pub fn trim_events(&self, upto: u64) -> Result<u64, RepoError> {
        self.write(|txn| {
            let removed = {
                let mut events = txn.open_table(crate::outbox::EVENTS).map_err(storage)?;
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
}
