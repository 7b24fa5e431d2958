//! `repo check`: every table, every value.
//!
//! Each value is read and its checksum verified ([`crate::sealed`]); keys
//! must agree with the records they hold; the indexes must point at records
//! that exist and every record must be indexed; the stored set digests
//! must equal digests recomputed from the records (a record lost to damage
//! shows there); the audit chain must link. Reading is streamed: memory
//! stays bounded whatever the size.

use std::collections::BTreeMap;

use redb::{ReadableTable, TableHandle};

use crate::outbox::SetDigest;
use crate::records::{decode, decode_request, decode_revocation};
use crate::schema::{CERTS, CRLS, CRL_HISTORY, EXPIRY, REQUESTS, REVOCATIONS, REVOCATION_SEQ};
use crate::{audit, hex, identity, openpgp, sealed, storage, CrlMeta, RepoError, Repository};

/// At most this many problems are listed; the first is the one to act on.
const MAX_PROBLEMS: usize = 100;

/// What `repo check` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Values read and checked.
    pub records: u64,
    /// What is wrong, first damage first (empty when consistent).
    pub problems: Vec<String>,
}

struct Found {
    report: CheckReport,
}

impl Found {
    fn problem(&mut self, p: String) {
        if self.report.problems.len() < MAX_PROBLEMS {
            self.report.problems.push(p);
        }
    }
}

impl Repository {
    /// Reads every table and every value of one consistent snapshot and
    /// checks them against each other (see the module documentation).
    pub fn check(&self) -> Result<CheckReport, RepoError> {
        self.read(|txn| {
            let mut f = Found {
                report: CheckReport::default(),
            };
            check_tables(txn, &self.origin, &mut f)?;
            Ok(f.report)
        })
    }
}

/// Order-independent sums of what the certificates say their index
/// entries are, and of the index entries found.
#[derive(Default)]
struct IndexSums {
    from_certs: ([u8; 32], [u8; 32], u64),
    requests: ([u8; 32], u64),
    expiry: ([u8; 32], u64),
    undecodable: bool,
}

fn member(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u32).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

fn xor(acc: &mut [u8; 32], m: [u8; 32]) {
    for (a, b) in acc.iter_mut().zip(m) {
        *a ^= b;
    }
}

impl IndexSums {
    fn certificate(&mut self, request_id: &str, not_after: i64, issuer: &str, serial: &[u8]) {
        let (req, exp, n) = &mut self.from_certs;
        xor(
            req,
            member(&[request_id.as_bytes(), issuer.as_bytes(), serial]),
        );
        xor(
            exp,
            member(&[&not_after.to_be_bytes(), issuer.as_bytes(), serial]),
        );
        *n += 1;
    }

    fn request(&mut self, request_id: &str, issuer: &str, serial: &[u8]) {
        xor(
            &mut self.requests.0,
            member(&[request_id.as_bytes(), issuer.as_bytes(), serial]),
        );
        self.requests.1 += 1;
    }

    /// A certificate whose request id the index gives to another (a
    /// twins' conflict).
    fn also_indexed(&mut self, request_id: &str, issuer: &str, serial: &[u8]) {
        self.request(request_id, issuer, serial);
    }

    fn expiry(&mut self, not_after: i64, issuer: &str, serial: &[u8]) {
        xor(
            &mut self.expiry.0,
            member(&[&not_after.to_be_bytes(), issuer.as_bytes(), serial]),
        );
        self.expiry.1 += 1;
    }

    fn agree(&self) -> bool {
        let (req, exp, n) = self.from_certs;
        !self.undecodable && self.requests == (req, n) && self.expiry == (exp, n)
    }
}

type CertsTable = redb::ReadOnlyTable<(&'static str, &'static [u8]), &'static [u8]>;
type RequestsTable = redb::ReadOnlyTable<&'static str, &'static [u8]>;
type ExpiryTable = redb::ReadOnlyTable<(i64, &'static str, &'static [u8]), ()>;

/// The indexes disagree with the certificates: every record looked up in
/// the others, naming each one that is missing or points nowhere.
fn cross_check(
    certs: &CertsTable,
    requests: &RequestsTable,
    expiry: &ExpiryTable,
    f: &mut Found,
) -> Result<(), RepoError> {
    for item in certs.iter().map_err(storage)? {
        let (key, value) = item.map_err(storage)?;
        let (issuer, serial) = key.value();
        let Ok(r) = decode(value.value()) else {
            continue;
        };
        if requests
            .get(r.request_id.as_str())
            .map_err(storage)?
            .is_none()
        {
            f.problem(format!(
                "certificate {issuer}/{}: request id {} not indexed",
                hex(serial),
                r.request_id
            ));
        }
        if expiry
            .get((r.not_after, issuer, serial))
            .map_err(storage)?
            .is_none()
        {
            f.problem(format!(
                "certificate {issuer}/{}: not in the expiry index",
                hex(serial)
            ));
        }
    }
    for item in requests.iter().map_err(storage)? {
        let (key, value) = item.map_err(storage)?;
        if let Ok(entry) = decode_request(value.value()) {
            if certs
                .get((entry.issuer.as_str(), entry.serial.as_slice()))
                .map_err(storage)?
                .is_none()
            {
                f.problem(format!(
                    "request {}: its certificate is missing",
                    key.value()
                ));
            }
        }
    }
    for item in expiry.iter().map_err(storage)? {
        let (key, _) = item.map_err(storage)?;
        let (_, issuer, serial) = key.value();
        if certs.get((issuer, serial)).map_err(storage)?.is_none() {
            f.problem(format!(
                "expiry index: {issuer}/{} has no certificate",
                hex(serial)
            ));
        }
    }
    Ok(())
}

fn check_tables(txn: &redb::ReadTransaction, origin: &str, f: &mut Found) -> Result<(), RepoError> {
    match identity::read(txn) {
        Ok(Some(_)) => f.report.records += 1,
        Ok(None) => f.problem("identity: the record is missing".into()),
        Err(e) => f.problem(format!("identity: {e}")),
    }
    let certs = txn.open_table(CERTS).map_err(storage)?;
    let requests = txn.open_table(REQUESTS).map_err(storage)?;
    let expiry = txn.open_table(EXPIRY).map_err(storage)?;
    let revocations = txn.open_table(REVOCATIONS).map_err(storage)?;
    let mut digests: BTreeMap<String, SetDigest> = BTreeMap::new();

    // One pass over each table, in its own key order: the indexes agree
    // with the certificates when the multisets of (request id, issuer,
    // serial) and (notAfter, issuer, serial) seen from both sides are
    // equal (order-independent sums; no lookup per record, so the pass
    // reads the file sequentially). Only when they differ is every record
    // looked up, to name what is wrong.
    let mut sums = IndexSums::default();
    for item in certs.iter().map_err(storage)? {
        let (key, value) = item.map_err(storage)?;
        let (issuer, serial) = key.value();
        f.report.records += 1;
        let r = match decode(value.value()) {
            Ok(r) => r,
            Err(e) => {
                f.problem(format!("certificate {issuer}/{}: {e}", hex(serial)));
                sums.undecodable = true;
                continue;
            }
        };
        if r.issuer != issuer || r.serial != serial {
            f.problem(format!(
                "certificate {issuer}/{}: the record names {}/{}",
                hex(serial),
                r.issuer,
                hex(&r.serial)
            ));
        }
        sums.certificate(&r.request_id, r.not_after, issuer, serial);
        crate::outbox::add_cert(digests.entry(r.issuer.clone()).or_default(), &r);
    }
    for item in requests.iter().map_err(storage)? {
        let (key, value) = item.map_err(storage)?;
        f.report.records += 1;
        match decode_request(value.value()) {
            Err(e) => {
                f.problem(format!("request {}: {e}", key.value()));
                sums.undecodable = true;
            }
            Ok(entry) => sums.request(key.value(), &entry.issuer, &entry.serial),
        }
    }
    for item in expiry.iter().map_err(storage)? {
        let (key, _) = item.map_err(storage)?;
        let (not_after, issuer, serial) = key.value();
        sums.expiry(not_after, issuer, serial);
    }
    // A request id both twins used names two certificates; the index
    // keeps this signer's, the conflict record the twin's.
    let conflicts = txn.open_table(crate::apply::CONFLICTS).map_err(storage)?;
    for item in conflicts.iter().map_err(storage)? {
        let (_, value) = item.map_err(storage)?;
        let conflict =
            sealed::open::<crate::records::Conflict>(crate::apply::CONFLICTS.name(), value.value());
        match conflict
            .ok()
            .and_then(|c| Some((hex::decode(&c.remote.1).ok()?, c)))
        {
            Some((serial, c)) => sums.also_indexed(&c.request_id, &c.remote.0, &serial),
            None => sums.undecodable = true,
        }
    }
    if !sums.agree() {
        let before = f.report.problems.len();
        cross_check(&certs, &requests, &expiry, f)?;
        if f.report.problems.len() == before && !sums.undecodable {
            f.problem(
                "indexes: the request id and expiry indexes do not hold exactly the certificates' entries".into(),
            );
        }
    }
    let seqs = txn.open_table(REVOCATION_SEQ).map_err(storage)?;
    for item in revocations.iter().map_err(storage)? {
        let (key, value) = item.map_err(storage)?;
        let (issuer, _, serial) = key.value();
        f.report.records += 1;
        match decode_revocation(value.value()) {
            Err(e) => f.problem(format!("revocation {issuer}/{}: {e}", hex(serial))),
            Ok(r) => {
                if r.issuer != issuer || r.serial != serial {
                    f.problem(format!(
                        "revocation {issuer}/{}: the record names {}/{}",
                        hex(serial),
                        r.issuer,
                        hex(&r.serial)
                    ));
                }
                let counter = seqs.get(issuer).map_err(storage)?.map_or(0, |v| v.value());
                if r.seq > counter {
                    f.problem(format!(
                        "revocation {issuer}/{}: counted {} beyond the issuer's counter {counter}",
                        hex(serial),
                        r.seq
                    ));
                }
                crate::outbox::add_revocation(digests.entry(r.issuer.clone()).or_default(), &r);
            }
        }
    }
    let history = txn.open_table(CRL_HISTORY).map_err(storage)?;
    for item in history.iter().map_err(storage)? {
        let (key, value) = item.map_err(storage)?;
        f.report.records += 1;
        if let Err(e) = sealed::open::<CrlMeta>(CRL_HISTORY.name(), value.value()) {
            f.problem(format!(
                "CRL history {}/{}: {e}",
                key.value().0,
                hex(key.value().1)
            ));
        }
    }
    let crls = txn.open_table(CRLS).map_err(storage)?;
    let parts = txn.open_table(crate::crls::CRL_DER).map_err(storage)?;
    for item in crls.iter().map_err(storage)? {
        let (key, _) = item.map_err(storage)?;
        f.report.records += 1;
        match crate::crls::read_crl(&crls, &parts, key.value()) {
            Err(e) => f.problem(format!("latest CRL of {}: {e}", key.value())),
            Ok(None) => {}
            Ok(Some(crl)) => {
                if history
                    .get((crl.issuer.as_str(), crl.number.as_slice()))
                    .map_err(storage)?
                    .is_none()
                {
                    f.problem(format!(
                        "CRL of {}: number {} missing from the history",
                        key.value(),
                        hex(&crl.number)
                    ));
                }
            }
        }
    }
    let certifications = txn.open_table(openpgp::CERTIFICATIONS).map_err(storage)?;
    for item in certifications.iter().map_err(storage)? {
        let (key, value) = item.map_err(storage)?;
        f.report.records += 1;
        match openpgp::decode(value.value()) {
            Err(e) => f.problem(format!("OpenPGP certification {}: {e}", key.value())),
            Ok(r) if r.request_id != key.value() => f.problem(format!(
                "OpenPGP certification {}: the record names {}",
                key.value(),
                r.request_id
            )),
            Ok(_) => {}
        }
    }
    let conflicts = txn.open_table(crate::apply::CONFLICTS).map_err(storage)?;
    for item in conflicts.iter().map_err(storage)? {
        let (key, value) = item.map_err(storage)?;
        f.report.records += 1;
        if let Err(e) =
            sealed::open::<crate::records::Conflict>(crate::apply::CONFLICTS.name(), value.value())
        {
            f.problem(format!("conflict {}: {e}", key.value()));
        }
    }
    // Each outbox entry can be sent as its event (a pointer's record is
    // there and readable).
    let events = txn.open_table(crate::outbox::EVENTS).map_err(storage)?;
    let certs = txn.open_table(CERTS).map_err(storage)?;
    let audit = txn.open_table(crate::audit::AUDIT).map_err(storage)?;
    for item in events.iter().map_err(storage)? {
        let (key, value) = item.map_err(storage)?;
        f.report.records += 1;
        let seq = key.value();
        if let Err(e) = crate::outbox::materialize("", seq, value.value(), &certs, &audit) {
            f.problem(match e {
                RepoError::Corrupt(why) if why.starts_with("outbox event") => why,
                e => format!("outbox event {seq}: {e}"),
            });
        }
    }
    let stored = txn.open_table(crate::outbox::DIGESTS).map_err(storage)?;
    let mut issuers: Vec<String> = digests.keys().cloned().collect();
    for item in stored.iter().map_err(storage)? {
        let (key, _) = item.map_err(storage)?;
        if !digests.contains_key(key.value()) {
            issuers.push(key.value().to_string());
        }
    }
    for issuer in issuers {
        let computed = digests.remove(&issuer).unwrap_or_default();
        let have: SetDigest = match stored.get(issuer.as_str()).map_err(storage)? {
            None => SetDigest::default(),
            Some(v) => match sealed::open(crate::outbox::DIGESTS.name(), v.value()) {
                Ok(d) => d,
                Err(e) => {
                    f.problem(format!("set digest of {issuer}: {e}"));
                    continue;
                }
            },
        };
        if !crate::outbox::same_sets(&have, &computed) {
            f.problem(format!(
                "set digest of {issuer}: stored {}, the records give {} (a record was lost or added outside the signer)",
                have.summary(),
                computed.summary()
            ));
        }
    }
    for report in audit::verify_all(txn, origin)? {
        f.report.records += report.entries;
        if let Some((seq, why)) = report.broken {
            f.problem(format!(
                "audit chain of {}: entry {seq}: {why}",
                report.signer_id
            ));
        }
    }
    Ok(())
}
