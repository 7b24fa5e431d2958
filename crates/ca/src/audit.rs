//! What the audit log records of each command: the outcome and the facts an
//! auditor searches by (request id, issuer, serial, CSR fingerprint), never
//! whole requests or anything secret.

use std::sync::Arc;

use sha2::Digest;
use signer_protocol::{decode_body, msg, Command, Status};
use signer_repository::{AuditEntry, Repository};
use signer_server::{AuditSink, CommandOutcome};

/// Appends an entry per answered command to the repository's audit chain.
pub struct CaAudit {
    repo: Arc<Repository>,
}

impl CaAudit {
    /// An audit sink writing to `repo`.
    pub fn new(repo: Arc<Repository>) -> CaAudit {
        CaAudit { repo }
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
        self.repo.audit(command_entry(outcome));
    }
}
