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

use sha2::Digest;
use signer_protocol::{decode_body, msg, Command, Status};
use signer_repository::{AuditEntry, Repository};
use signer_server::{AuditSink, CommandOutcome};

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
    crls: BTreeMap<String, Vec<u8>>,
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

/// Whether a command's entry is written on its own (it may have changed
/// state) rather than counted.
fn individually(o: &CommandOutcome<'_>, crls: &mut BTreeMap<String, Vec<u8>>) -> bool {
    match o.command {
        Command::SIGN_X509 | Command::REVOKE_X509 | Command::CERTIFY_OPENPGP => true,
        Command::FETCH_CRL => {
            let (Ok(req), Ok(reply)) = (
                decode_body::<msg::FetchCrl>(o.request),
                decode_body::<msg::FetchCrlReply>(o.reply),
            ) else {
                return false;
            };
            let seen = crls.insert(req.issuer, reply.number.clone());
            seen.as_ref() != Some(&reply.number)
        }
        _ => false,
    }
}

fn outcome_name(status: Status) -> String {
    if status == Status::OK {
        "ok".into()
    } else {
        status.to_string()
    }
}

/// The audit entry for one answered command.
pub fn command_entry(o: &CommandOutcome<'_>) -> AuditEntry {
    let action = if o.command == Command(0) {
        "unreadable envelope".to_string()
    } else {
        o.command.to_string()
    };
    let mut e = AuditEntry::new("command", &action, &outcome_name(o.status))
        .fact("req_id", o.id.to_string())
        .fact("elapsed_ms", o.elapsed_ms.to_string());
    if !o.message.is_empty() {
        e = e.fact("message", o.message);
    }
    match o.command {
        Command::SIGN_X509 => {
            if let Ok(r) = decode_body::<msg::SignX509>(o.request) {
                let subject: Vec<String> =
                    r.subject.iter().map(|(k, v)| format!("{k}={v}")).collect();
                e = e
                    .fact("request_id", r.request_id)
                    .fact("profile", r.profile)
                    .fact("subject", subject.join(","))
                    .fact("csr_sha256", hex::encode(sha2::Sha256::digest(&r.csr)));
            }
            if let Ok(r) = decode_body::<msg::SignX509Reply>(o.reply) {
                e = e
                    .fact("issuer", r.issuer)
                    .fact("serial", hex::encode(&r.serial))
                    .fact("replayed", r.replayed.to_string());
            }
        }
        Command::REVOKE_X509 => {
            if let Ok(r) = decode_body::<msg::RevokeX509>(o.request) {
                e = e
                    .fact("request_id", r.request_id)
                    .fact("issuer", r.issuer)
                    .fact("serial", hex::encode(&r.serial))
                    .fact("reason", r.reason.to_string());
            }
        }
        Command::FETCH_CRL => {
            if let Ok(r) = decode_body::<msg::FetchCrl>(o.request) {
                e = e.fact("issuer", r.issuer);
            }
            if let Ok(r) = decode_body::<msg::FetchCrlReply>(o.reply) {
                e = e
                    .fact("crl_number", hex::encode(&r.number))
                    .fact("entries", r.entries.to_string());
            }
        }
        Command::CERTIFY_OPENPGP => {
            if let Ok(r) = decode_body::<msg::CertifyOpenpgp>(o.request) {
                e = e
                    .fact("request_id", r.request_id)
                    .fact("user_ids", r.user_ids.join("; "))
                    .fact("expires_at", r.expires_at.to_string())
                    .fact("key_sha256", hex::encode(sha2::Sha256::digest(&r.key)));
            }
            if let Ok(r) = decode_body::<msg::CertifyOpenpgpReply>(o.reply) {
                e = e
                    .fact("fingerprint", r.fingerprint)
                    .fact("ca_fingerprint", r.ca_fingerprint)
                    .fact("replayed", r.replayed.to_string());
            }
        }
        _ => {}
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
