//! Every command, declared once: its code, request and reply types, where
//! it runs, how the audit log treats it, and the facts an auditor searches
//! by. The router (`signer-service`), the engine, the audit sink and the
//! client library all read these declarations; none pairs a code with a
//! type by hand.
//!
//! ```
//! use signer_protocol::calls::{Call, SignX509};
//! use signer_protocol::Command;
//! assert_eq!(SignX509::COMMAND, Command::SIGN_X509);
//! ```
//!
//! A new command is one `declare!` line here, its message types in
//! `messages.rs` (with their [`Facts`]), its section in docs/protocol.md,
//! and a handler registered with `Router::on::<NewCommand>`.

use serde::{de::DeserializeOwned, Serialize};
use sha2::Digest;

use crate::codes::Command;
use crate::messages as msg;

/// Where a command runs in the signer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On the link's reader thread: only for cheap commands that never block.
    Inline,
    /// On the worker pool (anything touching the HSM, the repository or the disk).
    Pool,
}

/// How the audit log treats a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audit {
    /// A liveness probe: not recorded (`hello`, `health`, `fetch_parts`).
    Probe,
    /// Counted into the periodic summary entry (it changes nothing).
    Counted,
    /// An entry of its own for every answer, refusals included (it may
    /// change what was issued or revoked).
    Entry,
    /// An entry of its own when the answer's `crl_number` fact differs from
    /// the last one answered for the same `issuer` (a CRL was signed);
    /// counted otherwise.
    EntryWhenNewCrl,
}

/// Where a request may go again when its answer was lost: the signer may
/// have executed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// To either twin: running it on both changes nothing more than running
    /// it once (it reads, or both record the same revocation and the twins
    /// merge it).
    AnySigner,
    /// Only to the signer it went to: the twin would make a second
    /// certificate or certification under the same request id, because the
    /// first may not have reached it yet (replication is asynchronous).
    SameSigner,
}

/// Audit facts: (name, value) pairs an auditor searches by. Never secrets,
/// never whole requests.
pub type FactList = Vec<(&'static str, String)>;

/// What a message contributes to its command's audit entry.
pub trait Facts {
    /// Appends this message's facts (none by default).
    fn facts(&self, _out: &mut FactList) {}
}

/// One command of the protocol.
pub trait Call: 'static {
    /// The wire code.
    const COMMAND: Command;
    /// Where the signer runs it.
    const PLACEMENT: Placement;
    /// How the audit log treats it.
    const AUDIT: Audit;
    /// Where it may go again when its answer was lost.
    const RETRY: Retry;
    /// The request body.
    type Request: Serialize + DeserializeOwned + Facts + Send + 'static;
    /// The reply body on success.
    type Reply: Serialize + DeserializeOwned + Facts + Send + 'static;
}

/// What the engine needs to know about a command without its types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Declaration {
    /// The wire code.
    pub command: Command,
    /// Where the signer runs it.
    pub placement: Placement,
    /// How the audit log treats it.
    pub audit: Audit,
    /// Where it may go again when its answer was lost.
    pub retry: Retry,
}

macro_rules! declare {
    ($( $(#[$meta:meta])* $name:ident = $code:ident, $req:ty => $rep:ty, $place:ident, $audit:ident, $retry:ident; )*) => {
        $(
            $(#[$meta])*
            #[derive(Debug, Clone, Copy)]
            pub struct $name;
            impl Call for $name {
                const COMMAND: Command = Command::$code;
                const PLACEMENT: Placement = Placement::$place;
                const AUDIT: Audit = Audit::$audit;
                const RETRY: Retry = Retry::$retry;
                type Request = $req;
                type Reply = $rep;
            }
        )*

        /// Every declared command.
        pub const ALL: &[Declaration] = &[$(Declaration {
            command: Command::$code,
            placement: Placement::$place,
            audit: Audit::$audit,
            retry: Retry::$retry,
        }),*];

        /// The facts of a request body of `command` (its request id among
        /// them), or `None` when the body does not decode as that command's
        /// request.
        pub fn request_facts(command: Command, body: &[u8]) -> Option<FactList> {
            $(
                if command == Command::$code {
                    let request: $req = crate::decode_body(body).ok()?;
                    let mut facts = FactList::new();
                    request.facts(&mut facts);
                    return Some(facts);
                }
            )*
            None
        }
    };
}

declare! {
    /// Version and limits negotiation.
    Hello = HELLO, msg::Hello => msg::HelloReply, Inline, Probe, AnySigner;
    /// The signer's health report.
    Health = HEALTH, msg::Empty => msg::HealthReply, Inline, Probe, AnySigner;
    /// Parts of a stored response (answered from the response store).
    FetchParts = FETCH_PARTS, msg::FetchParts => msg::FetchPartsReply, Inline, Probe, AnySigner;
    /// Issue an X.509 certificate.
    SignX509 = SIGN_X509, msg::SignX509 => msg::SignX509Reply, Pool, Entry, SameSigner;
    /// Revoke an X.509 certificate.
    RevokeX509 = REVOKE_X509, msg::RevokeX509 => msg::RevokeX509Reply, Pool, Entry, AnySigner;
    /// Fetch a CRL (full or as a difference).
    FetchCrl = FETCH_CRL, msg::FetchCrl => msg::FetchCrlReply, Pool, EntryWhenNewCrl, AnySigner;
    /// The CA certificates this signer issues under.
    CaCerts = CA_CERTS, msg::Empty => msg::CaCertsReply, Pool, Counted, AnySigner;
    /// Certify user IDs of an OpenPGP key.
    CertifyOpenpgp = CERTIFY_OPENPGP, msg::CertifyOpenpgp => msg::CertifyOpenpgpReply, Pool, Entry, SameSigner;
    /// The CA's OpenPGP certificate.
    OpenpgpCa = OPENPGP_CA, msg::Empty => msg::OpenpgpCaReply, Pool, Counted, AnySigner;
    /// The audit log's newest checkpoint (signing one if the log grew).
    AuditCheckpoint = AUDIT_CHECKPOINT, msg::Empty => msg::AuditCheckpointReply, Pool, Counted, AnySigner;
    /// A consistency proof between two sizes of the audit log.
    AuditConsistency = AUDIT_CONSISTENCY, msg::AuditConsistency => msg::AuditConsistencyReply, Pool, Counted, AnySigner;
    /// Audit entries by index.
    AuditEntries = AUDIT_ENTRIES, msg::AuditEntries => msg::AuditEntriesReply, Pool, Counted, AnySigner;
    /// An audit entry with its inclusion proof.
    AuditInclusion = AUDIT_INCLUSION, msg::AuditInclusion => msg::AuditInclusionReply, Pool, Counted, AnySigner;
    /// A copy of the audit log acknowledges the size it holds.
    AuditAck = AUDIT_ACK, msg::AuditAck => msg::Empty, Pool, Counted, AnySigner;
}

/// The request id of a request body of `command`, if its command has one
/// and the body decodes.
pub fn request_id(command: Command, body: &[u8]) -> Option<String> {
    request_facts(command, body)?
        .into_iter()
        .find(|(name, _)| *name == "request_id")
        .map(|(_, value)| value)
}

/// The declaration of `command`, if it is one of the protocol's.
pub fn declaration(command: Command) -> Option<&'static Declaration> {
    ALL.iter().find(|d| d.command == command)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

impl Facts for msg::Empty {}
impl Facts for msg::Hello {}
impl Facts for msg::HelloReply {}
impl Facts for msg::HealthReply {}
impl Facts for msg::FetchParts {}
impl Facts for msg::FetchPartsReply {}
impl Facts for msg::CaCertsReply {}
impl Facts for msg::OpenpgpCaReply {}
impl Facts for msg::AuditCheckpointReply {}
impl Facts for msg::AuditConsistency {}
impl Facts for msg::AuditConsistencyReply {}
impl Facts for msg::AuditEntries {}
impl Facts for msg::AuditEntriesReply {}
impl Facts for msg::AuditInclusion {}
impl Facts for msg::AuditInclusionReply {}
impl Facts for msg::AuditAck {
    fn facts(&self, out: &mut FactList) {
        out.push(("size", self.size.to_string()));
    }
}

impl Facts for msg::SignX509 {
    fn facts(&self, out: &mut FactList) {
        let subject: Vec<String> = self
            .subject
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out.push(("request_id", self.request_id.clone()));
        out.push(("profile", self.profile.clone()));
        out.push(("subject", subject.join(",")));
        out.push(("csr_sha256", sha256_hex(&self.csr)));
    }
}

impl Facts for msg::SignX509Reply {
    fn facts(&self, out: &mut FactList) {
        out.push(("issuer", self.issuer.clone()));
        out.push(("serial", hex(&self.serial)));
        // Whoever holds the certificate finds its entry (and, with
        // `audit_inclusion`, proves it is in the log).
        out.push(("certificate_sha256", sha256_hex(&self.certificate)));
        out.push(("replayed", self.replayed.to_string()));
    }
}

impl Facts for msg::RevokeX509 {
    fn facts(&self, out: &mut FactList) {
        out.push(("request_id", self.request_id.clone()));
        out.push(("issuer", self.issuer.clone()));
        out.push(("serial", hex(&self.serial)));
        out.push(("reason", self.reason.to_string()));
    }
}

impl Facts for msg::RevokeX509Reply {}

impl Facts for msg::FetchCrl {
    fn facts(&self, out: &mut FactList) {
        out.push(("issuer", self.issuer.clone()));
        if let Some(shard) = self.shard {
            out.push(("shard", shard.to_string()));
        }
    }
}

impl Facts for msg::FetchCrlReply {
    fn facts(&self, out: &mut FactList) {
        out.push(("crl_number", hex(&self.number)));
        out.push(("entries", self.entries.to_string()));
    }
}

impl Facts for msg::CertifyOpenpgp {
    fn facts(&self, out: &mut FactList) {
        out.push(("request_id", self.request_id.clone()));
        out.push(("user_ids", self.user_ids.join("; ")));
        out.push(("expires_at", self.expires_at.to_string()));
        out.push(("key_sha256", sha256_hex(&self.key)));
    }
}

impl Facts for msg::CertifyOpenpgpReply {
    fn facts(&self, out: &mut FactList) {
        out.push(("fingerprint", self.fingerprint.clone()));
        out.push(("ca_fingerprint", self.ca_fingerprint.clone()));
        out.push(("replayed", self.replayed.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_command_is_declared_once() {
        for &command in Command::ALL {
            let n = ALL.iter().filter(|d| d.command == command).count();
            assert_eq!(n, 1, "{command} is declared {n} times");
        }
        assert_eq!(ALL.len(), Command::ALL.len());
    }

    #[test]
    fn only_commands_that_issue_stay_with_their_signer_and_they_have_request_ids() {
        let same: Vec<Command> = ALL
            .iter()
            .filter(|d| d.retry == Retry::SameSigner)
            .map(|d| d.command)
            .collect();
        assert_eq!(same, [Command::SIGN_X509, Command::CERTIFY_OPENPGP]);
        let body = crate::encode_body(&msg::CertifyOpenpgp {
            request_id: "pgp-1".into(),
            key: vec![1, 2, 3],
            user_ids: vec!["a <a@example.org>".into()],
            expires_at: 0,
        });
        assert_eq!(
            request_id(Command::CERTIFY_OPENPGP, &body).as_deref(),
            Some("pgp-1")
        );
        // Another command's body, or garbage: no id.
        assert_eq!(request_id(Command::SIGN_X509, &body), None);
        assert_eq!(request_id(Command::CERTIFY_OPENPGP, &[0xc1]), None);
        assert_eq!(request_id(Command::HEALTH, &[0x80]), None);
    }
}
