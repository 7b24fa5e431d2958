//! What the audit log records of each command: the outcome and the facts an
//! auditor searches by (request id, issuer, serial, CSR fingerprint), never
//! whole requests or anything secret.
//!
//! Every command that can change what the signer issued or revoked
//! (`sign_x509`, `revoke_x509`, `certify_openpgp`) gets an entry of its own,
//! refusals included, and so does a `fetch_crl` that signed a new CRL.
//! Commands that change nothing (`hello`, `health`, `ca_certs`,
//! `openpgp_ca`, `fetch_parts`, a `fetch_crl` answered with a CRL already
//! signed, unreadable frames) are counted instead and written as one
//! summary entry per interval and at shutdown: a client looping on them
//! cannot grow the repository.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use signer_protocol::{Audit, Command, Status};
use signer_repository::{AuditEntry, Repository};
use signer_service::{AuditSink, CommandOutcome};

/// How often the counts of commands that change nothing are written.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(600);

/// Appends an entry per state-changing command to the repository's audit
/// chain, and a periodic summary of the rest.
pub struct CaAudit {
    repo: Arc<Repository>,
    counts: Mutex<Counts>,
}

struct Counts {
    since: Instant,
    since_ms: i64,
    /// (command, outcome) → how many.
    by: BTreeMap<(String, String), u64>,
    /// Per issuer: the last CRL number answered (a new one is audited).
    crls: BTreeMap<String, String>,
}

impl CaAudit {
    /// An audit sink writing to `repo`.
    pub fn new(repo: Arc<Repository>) -> CaAudit {
        CaAudit {
            repo,
            counts: Mutex::new(Counts {
                since: Instant::now(),
                since_ms: signer_clock::Clock::now_ms(&signer_clock::SystemClock),
                by: BTreeMap::new(),
                crls: BTreeMap::new(),
            }),
        }
    }

    /// Writes the summary of commands counted so far (also at shutdown).
    pub fn flush(&self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        Self::flush_locked(&self.repo, &mut c);
    }

    fn flush_locked(repo: &Repository, c: &mut Counts) {
        if !c.by.is_empty() {
            let total: u64 = c.by.values().sum();
            let mut e = AuditEntry::new("command", "summary", "ok")
                .fact("since_ms", c.since_ms.to_string())
                .fact("commands", total.to_string());
            for ((command, outcome), n) in &c.by {
                e = e.fact(&format!("{command}:{outcome}"), n.to_string());
            }
            repo.audit(e);
            c.by.clear();
        }
        c.since = Instant::now();
        c.since_ms = signer_clock::Clock::now_ms(&signer_clock::SystemClock);
    }
}

/// The value of fact `name`.
fn fact<'a>(o: &'a CommandOutcome<'_>, name: &str) -> Option<&'a str> {
    o.facts
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
}

/// Whether a command's entry is written on its own (it may have changed
/// state) rather than counted, as its declaration says.
fn individually(o: &CommandOutcome<'_>, crls: &mut BTreeMap<String, String>) -> bool {
    match o.audit {
        Audit::Entry => true,
        Audit::EntryWhenNewCrl => {
            let (Some(issuer), Some(number)) = (fact(o, "issuer"), fact(o, "crl_number")) else {
                return false;
            };
            let seen = crls.insert(issuer.to_string(), number.to_string());
            seen.as_deref() != Some(number)
        }
        Audit::Counted | Audit::Probe => false,
    }
}

fn outcome_name(status: Status) -> String {
    if status == Status::OK {
        "ok".into()
    } else {
        status.to_string()
    }
}

/// The audit entry for one answered command: its outcome, then the facts
/// its request and reply declare (`signer_protocol::Facts`).
pub fn command_entry(o: &CommandOutcome<'_>) -> AuditEntry {
    let action = if o.command == Command(0) {
        "unreadable envelope".to_string()
    } else {
        o.command.to_string()
    };
    let mut e = AuditEntry::new("command", &action, &outcome_name(o.status))
        .fact("req_id", o.envelope_id.to_string())
        .fact("elapsed_ms", o.elapsed_ms.to_string());
    if !o.message.is_empty() {
        e = e.fact("message", o.message);
    }
    for (name, value) in o.facts {
        e = e.fact(name, value.clone());
    }
    e
}

impl AuditSink for CaAudit {
    fn command(&self, outcome: &CommandOutcome<'_>) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if individually(outcome, &mut c.crls) {
            drop(c);
            self.repo.audit(command_entry(outcome));
            return;
        }
        let action = if outcome.command == Command(0) {
            "unreadable envelope".to_string()
        } else {
            outcome.command.to_string()
        };
        *c.by
            .entry((action, outcome_name(outcome.status)))
            .or_default() += 1;
        if c.since.elapsed() >= SUMMARY_INTERVAL {
            Self::flush_locked(&self.repo, &mut c);
        }
    }
}
