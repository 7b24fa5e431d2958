//! The contract between the signer's protocol engine and the services that
//! execute commands (the CA, replication's health, …). The engine
//! (`signer-server`) and every service depend on this crate; nothing but
//! the daemon depends on the engine.
//!
//! ```text
//! engine ─► Router::get(command) ─► Route { handler, placement, audit }
//!                                       │
//!            Handler::call(ctx, body, Completion) ─► Completion::finish(reply | Failure)
//!                                       │                       (now, or later from any thread)
//!            AuditSink::command(CommandOutcome { facts, .. }) ◄─┘
//! ```
//!
//! A service registers typed functions; the declarations in
//! `signer_protocol::calls` supply code, body types, placement and audit
//! treatment, and the request's and reply's audit facts come from their
//! [`signer_protocol::Facts`], so nothing decodes a body twice:
//!
//! ```
//! use signer_protocol::{calls, msg};
//! use signer_service::{CallContext, Failure, Router};
//!
//! let router = Router::new().on::<calls::CaCerts>(|_: &CallContext, _: msg::Empty| {
//!     Ok::<_, Failure>(msg::CaCertsReply { cas: Vec::new() })
//! });
//! assert!(router.get(signer_protocol::Command::CA_CERTS).is_some());
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod config;
mod router;

pub use router::{audit_of, Answer, CallContext, Completion, Handler, Reply, Route, Router};
pub use signer_protocol::{Audit, FactList, Placement};

use signer_protocol::{encode_body, msg, Command, Status};

/// A request's failure as the client will see it: a status and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Wire status (never `ok`).
    pub status: Status,
    /// For a person.
    pub message: String,
    /// Machine-readable detail (may be empty).
    pub detail: String,
}

impl Failure {
    /// A failure with a status and message.
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
            detail: String::new(),
        }
    }

    /// Adds machine-readable detail.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    /// The encoded error body.
    pub fn body(&self) -> Vec<u8> {
        encode_body(&msg::ErrorBody {
            message: self.message.clone(),
            detail: self.detail.clone(),
        })
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

/// What the engine tells the audit log about a command it answered.
#[derive(Debug, Clone, Copy)]
pub struct CommandOutcome<'a> {
    /// The envelope id (the id a retransmission repeats; not the
    /// idempotency key `request_id`, which is among the facts).
    pub envelope_id: u64,
    /// The command (0 when the envelope could not be read).
    pub command: Command,
    /// How the command's declaration says to audit it.
    pub audit: Audit,
    /// The answer's status.
    pub status: Status,
    /// The error message (empty on success).
    pub message: &'a str,
    /// The request's and, on success, the reply's facts (empty for requests
    /// refused before their body was read).
    pub facts: &'a FactList,
    /// Time from start to answer.
    pub elapsed_ms: u64,
}

/// Receives every command the engine answered except the liveness probes
/// (`Audit::Probe`), and except answers replayed from the response store.
/// Must be quick: it runs before the answer is sent.
pub trait AuditSink: Send + Sync + 'static {
    /// One answered command.
    fn command(&self, outcome: &CommandOutcome<'_>);
}

/// Contributes checks to the health report (HSM keys, repository, …).
pub trait HealthSource: Send + Sync + 'static {
    /// Current checks; must not block for long.
    fn checks(&self) -> Vec<msg::Check>;
}
