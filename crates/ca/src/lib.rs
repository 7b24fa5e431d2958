//! The certificate authority service of the signer.
//!
//! ```text
//! sign_x509 ─► request id known? ─ same request ──► original certificate (replayed)
//!                    │            └ other request ─► request_id_conflict
//!                    └ new ─► Issuer::issue (profile, CSR, lint, HSM) ─► Repository (group commit, fsync)
//!                                                                     ─► reply only after the commit
//! ```
//!
//! The HSM may be absent when the daemon starts: the CA certificates are then
//! checked against their keys when the token appears, and requests meanwhile
//! get `hsm_unavailable`. A CA certificate that does not match its key stops
//! startup.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audit;
pub mod ceremony;
pub mod checkpoints;
pub mod config;
pub mod integrity;
pub mod openpgp;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use signer_clock::SharedClock;

use signer_hsm::{HsmError, SigningBackend};
use signer_protocol::calls;
use signer_protocol::{msg, Status};
use signer_repository::{
    CertRecord, CrlMeta, CrlRecord, Recorded, RepoError, Repository, RevocationRecord, Revoked,
};
use signer_service::{CallContext, Failure, HealthSource, Router};
use signer_x509::crl::{CrlBuilder, CrlEntry};
use signer_x509::{CaSigner, IssueError, IssueRequest, Issuer, San};
use tracing::{error, info, warn};

pub use audit::CaAudit;
pub use checkpoints::{AuditConfig, AuditLog};
pub use config::{CaConfig, OpenpgpConfig, ReplicationConfig, StorageConfig};
mod idempotency;
pub mod wire;

pub use integrity::{expected_identity, open_repository, repository_options, verify_certificates};
pub(crate) use wire::repo_failure;
pub use wire::{issue_failure, pgp_failure};

/// Why the CA service could not start.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The HSM backend could not be set up (module, PIN).
    #[error("HSM: {0}")]
    Hsm(#[from] HsmError),
    /// The repository could not be opened (or was refused).
    #[error(transparent)]
    Repository(#[from] RepoError),
    /// A CA is misconfigured (certificate unreadable, not matching its key).
    #[error("{0}")]
    Ca(String),
    /// The token refused the PIN. Not retried: repeated attempts lock tokens.
    #[error("{0}")]
    Pin(String),
}

/// The CA service: HSM backend, repository, profiles and CAs.
pub struct CaService {
    config: CaConfig,
    signer_id: String,
    backend: Arc<dyn SigningBackend>,
    repo: Arc<Repository>,
    issuer: RwLock<Option<Arc<Issuer>>>,
    load_error: Mutex<Option<String>>,
    crl_lock: Mutex<()>,
    /// Stored CRLs linted against this configuration since it started (a
    /// CRL signed under other rules is checked before it is sent again).
    crls_linted: Mutex<std::collections::BTreeSet<String>>,
    openpgp: Mutex<Option<Arc<openpgp::OpenpgpCa>>>,
    clock: SharedClock,
    scrub_state: Mutex<integrity::ScrubState>,
    stop: Arc<integrity::Stop>,
}

fn parse_sans(entries: &[msg::SanEntry]) -> Result<Vec<San>, Failure> {
    entries
        .iter()
        .map(|e| match e.kind.as_str() {
            "dns" => Ok(San::Dns(e.value.clone())),
            "email" => Ok(San::Email(e.value.clone())),
            "uri" => Ok(San::Uri(e.value.clone())),
            "ip" => e.value.parse().map(San::Ip).map_err(|_| {
                Failure::new(
                    Status::SAN_NOT_ALLOWED,
                    format!("{:?} is not an IP address", e.value),
                )
            }),
            other => Err(Failure::new(
                Status::SAN_NOT_ALLOWED,
                format!("unknown SAN type {other:?}; expected dns, email, ip or uri"),
            )),
        })
        .collect()
}

fn reply_from(record: &CertRecord, replayed: bool) -> msg::SignX509Reply {
    msg::SignX509Reply {
        certificate: record.der.clone(),
        serial: record.serial.clone(),
        issuer: record.issuer.clone(),
        not_before: record.not_before,
        not_after: record.not_after,
        replayed,
    }
}

/// The signature value of a DER CRL, read without decoding its entries.
/// The name a CRL is kept under in the repository: the issuer's, or for
/// one of its shards `issuer#shard` (CA names have no '#').
fn crl_scope(issuer: &str, shard: Option<u8>) -> String {
    match shard {
        Some(n) => format!("{issuer}#{n}"),
        None => issuer.to_string(),
    }
}

/// The lint failure of a CRL entry whose reason `refused` (the issuer's
/// rule set, [`CertificateAuthority::refused_reasons`]) forbids.
fn refused_entry(
    refused: Option<(&'static [u8], &'static str)>,
    issuer: &str,
    r: &signer_repository::CrlView,
) -> Option<signer_x509::IssueError> {
    let (reasons, allowed) = refused?;
    reasons
        .contains(&r.reason)
        .then(|| signer_x509::IssueError::Lint {
            rule: "br_crl_reason",
            message: format!(
                "serial {} is revoked with reason {}, which the CRL of {issuer} may not carry under the TLS Baseline Requirements (7.2.2: {allowed}); no CRL was signed or sent",
                hex::encode(&r.serial),
                r.reason
            ),
        })
}

/// Whether a revocation of `serial` goes on the CRL of `shard` (every
/// revocation is on the full CRL).
fn in_shard(serial: &[u8], shard: Option<u8>) -> bool {
    shard.is_none_or(|n| signer_x509::shard_of(serial) == Some(n))
}

fn crl_signature(der: &[u8]) -> Option<Vec<u8>> {
    use der::Decode;
    #[derive(der::Sequence)]
    struct RawCrl<'a> {
        tbs: der::asn1::AnyRef<'a>,
        algorithm: der::asn1::AnyRef<'a>,
        signature: der::asn1::BitStringRef<'a>,
    }
    RawCrl::from_der(der)
        .ok()?
        .signature
        .as_bytes()
        .map(<[u8]>::to_vec)
}

/// Receives the reply to `sign_x509`.
pub type SignThen = Box<dyn FnOnce(Result<msg::SignX509Reply, Failure>) + Send>;

enum Prepared {
    /// The request id was known: the original certificate.
    Replay(msg::SignX509Reply),
    /// A new certificate to record before answering.
    Record(CertRecord, [u8; 32]),
}

fn replay(
    request_id: &str,
    record: &CertRecord,
    digest: &[u8],
) -> Result<msg::SignX509Reply, Failure> {
    idempotency::same_request(
        request_id,
        &record.request_digest,
        digest,
        &format!("serial {}", hex::encode(&record.serial)),
    )?;
    Ok(reply_from(record, true))
}

/// The reply once the repository has decided about `record`.
fn recorded(
    req_id: u64,
    record: &CertRecord,
    csr_fingerprint: &[u8; 32],
    result: Result<Recorded, RepoError>,
) -> Result<msg::SignX509Reply, Failure> {
    match result {
        Ok(Recorded::Inserted) => {
            info!(
                req_id,
                request_id = %record.request_id,
                issuer = %record.issuer,
                serial = %hex::encode(&record.serial),
                profile = %record.profile,
                csr_sha256 = %hex::encode(csr_fingerprint),
                "certificate issued"
            );
            Ok(reply_from(record, false))
        }
        // Another worker recorded the same request id first: its certificate stands.
        Ok(Recorded::Existing(original)) => {
            replay(&record.request_id, &original, &record.request_digest)
        }
        Err(RepoError::SerialTaken { .. }) => Err(Failure::new(
            Status::INTERNAL,
            "serial number collision; nothing was issued, send the request again",
        )),
        Err(e) => Err(repo_failure(&e, "nothing was issued")),
    }
}

impl CaService {
    /// The refusal of an issuer this signer does not have, naming those it has.
    fn unknown_issuer(&self, name: &str) -> Failure {
        let names: Vec<&str> = self.config.cas.iter().map(|c| c.name.as_str()).collect();
        Failure::new(
            Status::UNKNOWN_ISSUER,
            format!(
                "no CA named {name:?} on this signer; its CAs: {}",
                names.join(", ")
            ),
        )
    }

    /// Opens the configured key backend (`sessions` signatures at once) and
    /// the repository, and checks the CA certificates against their keys if
    /// the token is there.
    pub fn start(
        config: &CaConfig,
        signer_id: &str,
        sessions: usize,
    ) -> Result<Arc<CaService>, CaError> {
        let backend = signer_hsm::open(&config.hsm, config.key_specs(), sessions, None)?;
        Self::with_backend(config, signer_id, backend, signer_clock::system())
    }

    /// Like [`CaService::start`] with any backend.
    /// The repository must exist and be this signer's (see [`integrity`]).
    pub fn with_backend(
        config: &CaConfig,
        signer_id: &str,
        backend: Arc<dyn SigningBackend>,
        clock: SharedClock,
    ) -> Result<Arc<CaService>, CaError> {
        let repo = Arc::new(open_repository(config, signer_id)?);
        let service = Arc::new(CaService {
            config: config.clone(),
            signer_id: signer_id.to_string(),
            backend,
            repo,
            issuer: RwLock::new(None),
            load_error: Mutex::new(None),
            crl_lock: Mutex::new(()),
            crls_linted: Mutex::new(std::collections::BTreeSet::new()),
            openpgp: Mutex::new(None),
            clock,
            scrub_state: Mutex::new(integrity::ScrubState::default()),
            stop: Arc::new(integrity::Stop(
                Mutex::new(false),
                std::sync::Condvar::new(),
            )),
        });
        match service.load() {
            Ok(_) => {}
            Err(IssueError::Hsm(e)) if e.is_transient() => {
                warn!(cause = %e, "HSM not available at startup; CA certificates will be checked when it appears");
            }
            Err(IssueError::Hsm(e @ HsmError::Pin(_))) => return Err(CaError::Pin(e.to_string())),
            Err(e) => return Err(CaError::Ca(e.to_string())),
        }
        if let Err(failure) = service.openpgp_ca() {
            match failure.status {
                Status::NOT_ENABLED | Status::HSM_UNAVAILABLE => {}
                _ => return Err(CaError::Ca(format!("ca.openpgp: {}", failure.message))),
            }
        }
        if config.storage.scrub_interval_secs > 0 {
            Self::start_scrub(
                &service,
                Duration::from_secs(config.storage.scrub_interval_secs),
            );
        }
        Ok(service)
    }

    /// Scrubs the repository every `every`, the first time soon after start.
    fn start_scrub(service: &Arc<CaService>, every: Duration) {
        let weak = Arc::downgrade(service);
        let stop = Arc::clone(&service.stop);
        let first = every.min(Duration::from_secs(60));
        let spawned = std::thread::Builder::new()
            .name("repo-scrub".into())
            .spawn(move || {
                let mut wait = first;
                loop {
                    let stopped = stop.0.lock().unwrap_or_else(|p| p.into_inner());
                    let (stopped, _) = stop
                        .1
                        .wait_timeout_while(stopped, wait, |s| !*s)
                        .unwrap_or_else(|p| p.into_inner());
                    if *stopped {
                        return;
                    }
                    drop(stopped);
                    let Some(service) = weak.upgrade() else {
                        return;
                    };
                    if let Err(e) = service.scrub() {
                        tracing::error!(cause = %e, "repository scrub failed");
                        service.note_damage(format!("scrub: {e}"));
                    }
                    wait = every;
                }
            });
        if let Err(e) = spawned {
            warn!(cause = %e, "repository scrub not started");
        }
    }

    /// Stops background work (the scrub); the repository stays open.
    pub fn stop(&self) {
        *self.stop.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.stop.1.notify_all();
    }

    /// The service's clock.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Loads the CA certificates and checks each against its key.
    fn load(&self) -> Result<Arc<Issuer>, IssueError> {
        let mut cas = BTreeMap::new();
        for entry in &self.config.cas {
            let bytes = std::fs::read(&entry.certificate).map_err(|e| {
                IssueError::Issuer(format!(
                    "{}: {}: {e}",
                    entry.name,
                    entry.certificate.display()
                ))
            })?;
            let der = signer_x509::cert_der(&bytes)
                .map_err(|e| IssueError::Issuer(format!("{}: {e}", entry.name)))?;
            let ca = CaSigner::new(&entry.name, &entry.key, der, self.backend.as_ref())?;
            cas.insert(entry.name.clone(), ca);
        }
        let issuer = Arc::new(Issuer {
            profiles: self.config.profiles.clone(),
            cas,
        });
        *self.issuer.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&issuer));
        *self.load_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        info!(
            cas = self.config.cas.len(),
            profiles = self.config.profiles.len(),
            "CA certificates match their HSM keys"
        );
        Ok(issuer)
    }

    fn issuer(&self) -> Result<Arc<Issuer>, Failure> {
        if let Some(issuer) = self
            .issuer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Ok(Arc::clone(issuer));
        }
        self.load().map_err(|e| {
            *self.load_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            issue_failure(&e)
        })
    }

    /// The repository.
    pub fn repository(&self) -> &Arc<Repository> {
        &self.repo
    }

    /// The HSM backend.
    pub fn backend(&self) -> &Arc<dyn SigningBackend> {
        &self.backend
    }

    /// Handles `sign_x509`, blocking until the certificate is recorded.
    pub fn sign(
        &self,
        ctx: &CallContext,
        request: msg::SignX509,
    ) -> Result<msg::SignX509Reply, Failure> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.sign_then(
            ctx,
            request,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        );
        rx.recv().unwrap_or_else(|_| {
            Err(Failure::new(
                Status::INTERNAL,
                "the repository stopped before answering",
            ))
        })
    }

    /// Handles `sign_x509`: checks, issues and hands the certificate to the
    /// repository, then returns; `then` gets the reply on the repository's
    /// committer thread once the certificate is durable (never before).
    pub fn sign_then(&self, ctx: &CallContext, request: msg::SignX509, then: SignThen) {
        match self.prepare(&request) {
            Err(failure) => then(Err(failure)),
            Ok(Prepared::Replay(reply)) => then(Ok(reply)),
            Ok(Prepared::Record(record, csr_fingerprint)) => {
                let req_id = ctx.envelope_id;
                let mine = record.clone();
                self.repo.record_issuance_then(
                    record,
                    Box::new(move |result| then(recorded(req_id, &mine, &csr_fingerprint, result))),
                );
            }
        }
    }

    /// Everything up to the durable record: validation, replay check, issuance.
    fn prepare(&self, request: &msg::SignX509) -> Result<Prepared, Failure> {
        idempotency::check_key(&request.request_id)?;
        let digest = idempotency::request_digest(request);
        // One read transaction for the request id and the serial checks.
        let snapshot = self
            .repo
            .snapshot()
            .map_err(|e| self.damaged(e, "nothing was sent"))?;
        if let Some(record) = snapshot
            .find_by_request(&request.request_id)
            .map_err(|e| self.damaged(e, "nothing was sent"))?
        {
            let reply = replay(&request.request_id, &record, &digest)?;
            self.check_replay(&record)?;
            return Ok(Prepared::Replay(reply));
        }
        let sans = parse_sans(&request.sans)?;
        let issuer = self.issuer()?;
        let ca_name = issuer
            .profiles
            .get(&request.profile)
            .map(|p| p.issuer.clone())
            .ok_or_else(|| {
                let names: Vec<&str> = issuer.profiles.keys().map(String::as_str).collect();
                Failure::new(
                    Status::UNKNOWN_PROFILE,
                    format!(
                        "unknown profile {:?}; this signer's profiles: {}",
                        request.profile,
                        names.join(", ")
                    ),
                )
            })?;
        let issue = IssueRequest {
            profile: request.profile.clone(),
            csr: request.csr.clone(),
            subject: request.subject.clone(),
            sans,
            validity_days: request.validity_days,
        };
        self.check_clock(issuer.cas.get(&ca_name))?;
        let serial = self.fresh_serial(&snapshot, &ca_name)?;
        drop(snapshot);
        let issued = issuer
            .issue(
                self.backend.as_ref(),
                &issue,
                &serial,
                self.clock.now_secs(),
            )
            .map_err(|e| issue_failure(&e))?;
        let record = CertRecord {
            issuer: issued.issuer.clone(),
            serial: issued.serial.clone(),
            der: issued.der,
            profile: request.profile.clone(),
            request_id: request.request_id.clone(),
            request_digest: digest,
            subject: issued.subject,
            not_before: issued.not_before,
            not_after: issued.not_after,
            issued_at_ms: self.clock.now_ms(),
            signer_id: self.signer_id.clone(),
        };
        Ok(Prepared::Record(record, issued.csr_fingerprint))
    }

    /// A serial no certificate of `ca` has; for an issuer with CRL shards,
    /// in a shard chosen at random (the serial carries it).
    fn fresh_serial(
        &self,
        snapshot: &signer_repository::Snapshot,
        ca: &str,
    ) -> Result<Vec<u8>, Failure> {
        let shards = self
            .ca_entry(ca)
            .and_then(|c| c.crl_shards.as_ref())
            .map(|s| s.count);
        for _ in 0..8 {
            let serial = match shards {
                Some(count) => signer_x509::sharded_serial(self.config.serial_prefix, count),
                None => signer_x509::random_serial(self.config.serial_prefix),
            };
            if !snapshot
                .serial_exists(ca, &serial)
                .map_err(|e| self.damaged(e, "nothing was issued"))?
            {
                return Ok(serial);
            }
        }
        Err(Failure::new(
            Status::INTERNAL,
            "could not find a free serial number",
        ))
    }

    /// The CRLReasons the CRL of `issuer` may not carry, with the list it
    /// allows (for messages); None when RFC 5280's rules alone apply. A
    /// hierarchy that issues TLS certificates under the Baseline
    /// Requirements publishes its CRLs under their CRL profile (7.2.2): an
    /// issuer of subscriber certificates allows neither cACompromise nor
    /// aACompromise; an issuer of CA certificates only (a root: its CRL is
    /// an ARL) allows cACompromise but not aACompromise.
    fn refused_reasons(&self, issuer: &str) -> Option<(&'static [u8], &'static str)> {
        let profiles = || self.config.profiles.values();
        if profiles().any(|p| p.issuer == issuer && p.rules.is_cabf_serverauth()) {
            Some((
                &[2, 10],
                "0 unspecified, 1 keyCompromise, 3 affiliationChanged, 4 superseded, 5 cessationOfOperation, 9 privilegeWithdrawn",
            ))
        } else if profiles().any(|p| p.rules.is_cabf_serverauth())
            && !profiles().any(|p| p.issuer == issuer)
        {
            Some((
                &[10],
                "its CRL lists CA certificates: 0 unspecified, 1 keyCompromise, 2 cACompromise, 3 affiliationChanged, 4 superseded, 5 cessationOfOperation, 9 privilegeWithdrawn",
            ))
        } else {
            None
        }
    }

    /// Handles `revoke_x509`: durably recorded before the answer.
    pub fn revoke(
        &self,
        ctx: &CallContext,
        request: msg::RevokeX509,
    ) -> Result<msg::RevokeX509Reply, Failure> {
        idempotency::check_key(&request.request_id)?;
        let entry = self
            .config
            .cas
            .iter()
            .find(|c| c.name == request.issuer)
            .ok_or_else(|| self.unknown_issuer(&request.issuer))?;
        let start = request
            .serial
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(request.serial.len());
        let serial = request.serial[start..].to_vec();
        if serial.is_empty() || serial.len() > 20 {
            return Err(Failure::new(
                Status::MALFORMED_SERIAL,
                "a serial is a positive integer of 1 to 20 octets",
            ));
        }
        if !matches!(request.reason, 0..=5 | 9 | 10) {
            return Err(Failure::new(
                Status::INVALID_REASON,
                format!(
                    "reason {} is not accepted (0-5, 9, 10; certificateHold is not supported)",
                    request.reason
                ),
            ));
        }
        let refused = self
            .refused_reasons(&entry.name)
            .filter(|(reasons, _)| reasons.contains(&request.reason))
            .map(|(_, allowed)| allowed);
        if let Some(allowed) = refused {
            return Err(Failure::new(
                Status::INVALID_REASON,
                format!(
                    "reason {} is not allowed on the CRL of {}, in a hierarchy under the TLS Baseline Requirements (7.2.2: {allowed})",
                    request.reason, entry.name
                ),
            )
            .with_detail("br_crl_reason"));
        }
        let issuer_set = self
            .issuer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.check_clock(issuer_set.as_ref().and_then(|i| i.cas.get(&entry.name)))?;
        let now = self.clock.now_secs();
        if request.invalidity_date.is_some_and(|d| d > now + 60) {
            return Err(Failure::new(
                Status::INVALID_INVALIDITY_DATE,
                "the invalidity date lies in the future",
            ));
        }
        let record = RevocationRecord {
            issuer: entry.name.clone(),
            serial: serial.clone(),
            reason: request.reason,
            revoked_at: now,
            invalidity_date: request.invalidity_date,
            request_id: request.request_id.clone(),
            legacy: false,
            signer_id: self.signer_id.clone(),
            cert_not_after: None,
            seq: 0,
            replaced: false,
        };
        let reply = |r: &RevocationRecord, replayed| msg::RevokeX509Reply {
            revoked_at: r.revoked_at,
            reason: r.reason,
            invalidity_date: r.invalidity_date,
            replayed,
            legacy: r.legacy,
        };
        match self
            .repo
            .record_revocation(record.clone(), entry.legacy_serials)
        {
            Ok(Revoked::Inserted) => {
                let legacy = !self
                    .repo
                    .serial_exists(&entry.name, &serial)
                    .unwrap_or(true);
                info!(req_id = ctx.envelope_id, request_id = %request.request_id, issuer = %entry.name, serial = %hex::encode(&serial), reason = request.reason, legacy, "certificate revoked");
                Ok(reply(&RevocationRecord { legacy, ..record }, false))
            }
            Ok(Revoked::Existing(original)) => Ok(reply(&original, true)),
            Ok(Revoked::Conflict(original)) => Err(Failure::new(
                Status::REVOCATION_CONFLICT,
                format!(
                    "already revoked with reason {}, not {}",
                    original.reason, request.reason
                ),
            )),
            Ok(Revoked::UnknownSerial) => Err(Failure::new(
                Status::UNKNOWN_SERIAL,
                format!(
                    "{} never issued serial {}",
                    entry.name,
                    hex::encode(&serial)
                ),
            )),
            Err(e) => Err(self.damaged(e, "the revocation was not recorded")),
        }
    }

    /// The issuer's current CRL (of its shard `shard`, if given): the
    /// stored one while it is fresh and no revocation came since, else a
    /// new one, signed and stored.
    pub fn current_crl(&self, issuer: &str, shard: Option<u8>) -> Result<CrlRecord, Failure> {
        let _one_at_a_time = self.crl_lock.lock().unwrap_or_else(|p| p.into_inner());
        let shard_url = match shard {
            Some(n) => Some(self.shard_url(issuer, n)?),
            None => None,
        };
        // A shard's CRLs are kept under their own name: their numbers,
        // history and differences are the shard's.
        let scope = crl_scope(issuer, shard);
        let issuer_name = issuer;
        let issuer = scope.as_str();
        let last = self
            .repo
            .last_crl(issuer)
            .map_err(|e| self.damaged(e, "no CRL was sent"))?;
        let seq = self
            .repo
            .revocation_seq(issuer_name)
            .map_err(|e| self.damaged(e, "no CRL was sent"))?;
        // A set-back clock must not judge the stored CRL fresh either.
        self.check_clock(None)?;
        let now = self.clock.now_secs();
        let refresh = i64::from(self.config.crl.refresh_hours) * 3600;
        let last = match last {
            Some(l) if l.revocation_seq == seq && now < l.this_update + refresh => {
                self.lint_stored_crl(issuer_name, shard, &l)?;
                return Ok(l);
            }
            other => other,
        };
        // Only its number and size are needed from here: its DER is not
        // held while the new CRL is built.
        let last = last.map(|l| (l.number, l.der.len()));
        let issuer_set = self.issuer()?;
        let ca = issuer_set
            .cas
            .get(issuer_name)
            .ok_or_else(|| self.unknown_issuer(issuer_name))?;
        self.check_clock(Some(ca))?;
        let scheme = signer_x509::issue::default_scheme(ca.kind);
        let now_us = u128::try_from(self.clock.now_us()).unwrap_or(0);
        // Above this signer's last CRL and every number the twin used.
        let floor = self
            .repo
            .crl_floor(issuer)
            .map_err(|e| self.damaged(e, "no CRL was signed"))?;
        let number = signer_x509::crl::next_number(
            now_us,
            floor.as_deref().or(last.as_ref().map(|l| l.0.as_slice())),
        );
        let next_update = now + i64::from(self.config.crl.next_update_hours) * 3600;
        let capacity = last.as_ref().map_or(1024, |l| l.1);
        let mut builder = CrlBuilder::new(
            ca,
            scheme,
            now,
            next_update,
            &number,
            capacity,
            shard_url.as_deref(),
        )
        .map_err(|e| issue_failure(&e))?;
        let mut failed = None;
        // Linted before it is signed: a reason the issuer's rule set does
        // not allow (a revocation recorded under another configuration, or
        // by the twin under its own) stops the CRL, naming the entry.
        let refused = self.refused_reasons(issuer_name);
        let snapshot_seq = self
            .repo
            .for_each_crl_entry(issuer_name, |r| {
                if !self.on_crl_at(&r, now) || failed.is_some() || !in_shard(&r.serial, shard) {
                    return;
                }
                if let Some(e) = refused_entry(refused, issuer_name, &r) {
                    failed = Some(e);
                    return;
                }
                let entry = CrlEntry {
                    serial: &r.serial,
                    revoked_at: r.revoked_at,
                    reason: r.reason,
                    invalidity_date: r.invalidity_date,
                };
                if let Err(e) = builder.push(&entry) {
                    failed = Some(e);
                }
            })
            .map_err(|e| self.damaged(e, "no CRL was signed"))?;
        if let Some(e) = failed {
            error!(issuer, cause = %e, "CRL not signed");
            return Err(issue_failure(&e));
        }
        let entries = builder.entries();
        let der = builder
            .sign(self.backend.as_ref(), ca, scheme)
            .map_err(|e| issue_failure(&e))?;
        let sha256 = {
            use sha2::Digest;
            sha2::Sha256::digest(&der).to_vec()
        };
        let record = CrlRecord {
            issuer: issuer.to_string(),
            number,
            this_update: now,
            next_update,
            revocation_seq: snapshot_seq,
            entries,
            sha256,
            der,
        };
        self.repo.store_crl(&record).map_err(|e| {
            repo_failure(&e, "the new CRL was signed but not stored, and is not sent")
        })?;
        info!(issuer, crl_number = %hex::encode(&record.number), entries, bytes = record.der.len(), "CRL signed");
        Ok(record)
    }

    /// Whether a revocation is on a CRL made at `at`: not once its
    /// certificate expired more than `ca.crl.expired_grace_days` before.
    fn on_crl_at(&self, r: &signer_repository::CrlView, at: i64) -> bool {
        let grace = i64::from(self.config.crl.expired_grace_days) * 86_400;
        r.cert_not_after.is_none_or(|na| na + grace >= at)
    }

    /// The configuration of CA `name`.
    fn ca_entry(&self, name: &str) -> Option<&config::CaEntry> {
        self.config.cas.iter().find(|c| c.name == name)
    }

    /// The CRL URL of `issuer`'s shard `shard`, which must exist.
    fn shard_url(&self, issuer: &str, shard: u8) -> Result<String, Failure> {
        match self.ca_entry(issuer).and_then(|c| c.crl_shards.as_ref()) {
            Some(s) if u16::from(shard) < s.count => Ok(signer_x509::shard_url(&s.url, shard)),
            Some(s) => Err(Failure::new(
                Status::UNKNOWN_SHARD,
                format!("{issuer} has CRL shards 0 to {}, not {shard}", s.count - 1),
            )),
            None => Err(Failure::new(
                Status::UNKNOWN_SHARD,
                format!("{issuer} has no CRL shards: fetch its CRL without a shard"),
            )),
        }
    }

    /// Lints a stored CRL of `issuer` (its shard `shard`) once per run
    /// before it is sent again: it may have been signed under rules this
    /// configuration no longer has. Its entries are read from the
    /// repository (those it reflects), not parsed from its DER.
    fn lint_stored_crl(
        &self,
        issuer: &str,
        shard: Option<u8>,
        crl: &CrlRecord,
    ) -> Result<(), Failure> {
        let refused = self.refused_reasons(issuer);
        if refused.is_none()
            || self
                .crls_linted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&crl_scope(issuer, shard))
        {
            return Ok(());
        }
        let mut failed = None;
        self.repo
            .for_each_crl_entry(issuer, |r| {
                let listed = r.seq <= crl.revocation_seq
                    && in_shard(&r.serial, shard)
                    && self.on_crl_at(&r, crl.this_update);
                if listed && failed.is_none() {
                    failed = refused_entry(refused, issuer, &r);
                }
            })
            .map_err(|e| self.damaged(e, "no CRL was sent"))?;
        if let Some(e) = failed {
            error!(issuer, cause = %e, "the stored CRL is not sent");
            return Err(issue_failure(&e));
        }
        self.crls_linted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(crl_scope(issuer, shard));
        Ok(())
    }

    /// Handles `fetch_crl`.
    pub fn fetch_crl(
        &self,
        _ctx: &CallContext,
        request: msg::FetchCrl,
    ) -> Result<msg::FetchCrlReply, Failure> {
        if !self.config.cas.iter().any(|c| c.name == request.issuer) {
            return Err(self.unknown_issuer(&request.issuer));
        }
        let crl = self.current_crl(&request.issuer, request.shard)?;
        let scope = crl_scope(&request.issuer, request.shard);
        let mut reply = msg::FetchCrlReply {
            unchanged: false,
            number: crl.number.clone(),
            this_update: crl.this_update,
            next_update: crl.next_update,
            entries: crl.entries,
            sha256: crl.sha256.clone(),
            crl: None,
            diff: None,
        };
        if let Some(have) = &request.have_number {
            let meta = self
                .repo
                .crl_meta(&scope, have)
                .map_err(|e| self.damaged(e, "no CRL was sent"))?;
            let Some(meta) =
                meta.filter(|m| request.have_sha256.as_deref() == Some(m.sha256.as_slice()))
            else {
                return Err(Failure::new(
                    Status::UNKNOWN_CRL,
                    format!(
                        "this signer never issued CRL number {} with that digest for {}",
                        hex::encode(have),
                        scope
                    ),
                ));
            };
            if *have == crl.number {
                reply.unchanged = true;
                return Ok(reply);
            }
            let diff = self.crl_diff(&request.issuer, request.shard, have, &meta, &crl)?;
            let estimate =
                diff.added.len() * 40 + diff.removed.len() * 24 + diff.signature.len() + 64;
            if estimate < crl.der.len() / 2 {
                reply.diff = Some(diff);
                return Ok(reply);
            }
        }
        reply.crl = Some(crl.der);
        Ok(reply)
    }

    /// The difference between an older CRL of this signer and the current
    /// one, derived from the repository: entries added are the revocations
    /// counted after the old CRL (up to the current one), entries removed are
    /// those that expired out between the two thisUpdates.
    fn crl_diff(
        &self,
        issuer: &str,
        shard: Option<u8>,
        base: &[u8],
        old: &CrlMeta,
        current: &CrlRecord,
    ) -> Result<msg::CrlDiff, Failure> {
        let keep = |r: &signer_repository::CrlView, at: i64| self.on_crl_at(r, at);
        let mut added = Vec::new();
        let mut removed = Vec::new();
        self.repo
            .for_each_crl_entry(issuer, |r| {
                if r.seq > current.revocation_seq || !in_shard(&r.serial, shard) {
                    return;
                }
                if r.seq > old.revocation_seq {
                    if r.replaced {
                        // The merge rule changed this entry: drop the old one.
                        removed.push(serde_bytes::ByteBuf::from(r.serial.clone()));
                    }
                    if keep(&r, current.this_update) {
                        added.push(msg::CrlDiffEntry {
                            serial: r.serial,
                            revoked_at: r.revoked_at,
                            reason: r.reason,
                            invalidity_date: r.invalidity_date,
                        });
                    }
                } else if keep(&r, old.this_update) && !keep(&r, current.this_update) {
                    removed.push(serde_bytes::ByteBuf::from(r.serial));
                }
            })
            .map_err(|e| self.damaged(e, "no CRL was sent"))?;
        let signature = crl_signature(&current.der).ok_or_else(|| {
            Failure::new(Status::INTERNAL, "the stored CRL has no readable signature")
        })?;
        Ok(msg::CrlDiff {
            base_number: base.to_vec(),
            added,
            removed,
            signature,
        })
    }

    /// Handles `ca_certs`.
    pub fn ca_certs(&self) -> Result<msg::CaCertsReply, Failure> {
        let issuer = self.issuer()?;
        Ok(msg::CaCertsReply {
            cas: issuer
                .cas
                .values()
                .map(|c| msg::CaCert {
                    name: c.name.clone(),
                    certificate: c.cert_der.clone(),
                    crl_shards: self.ca_entry(&c.name).and_then(config::CaEntry::shard_urls),
                })
                .collect(),
        })
    }

    /// Adds this service's commands to a router.
    pub fn routes(self: &Arc<Self>, router: Router) -> Router {
        let (sign, certs, revoke, crl) = (
            Arc::clone(self),
            Arc::clone(self),
            Arc::clone(self),
            Arc::clone(self),
        );
        let router = router
            // The worker is free once the certificate is signed: the answer
            // goes out from the committer after the fsync'd commit.
            .on_deferred::<calls::SignX509>(move |ctx, r, reply| {
                sign.sign_then(ctx, r, Box::new(move |result| reply.send(result)))
            })
            .on::<calls::RevokeX509>(move |ctx, r| revoke.revoke(ctx, r))
            .on::<calls::FetchCrl>(move |ctx, r| crl.fetch_crl(ctx, r))
            .on::<calls::CaCerts>(move |_, _| certs.ca_certs());
        if self.config.openpgp.is_none() {
            return router;
        }
        let (pgp, pgp_ca) = (Arc::clone(self), Arc::clone(self));
        router
            .on::<calls::CertifyOpenpgp>(move |ctx, r| pgp.certify_openpgp(ctx, r))
            .on::<calls::OpenpgpCa>(move |_, _| pgp_ca.openpgp_certificate())
    }
}

impl HealthSource for CaService {
    fn checks(&self) -> Vec<msg::Check> {
        let mut checks = Vec::new();
        for key in self.backend.status() {
            let (status, detail) = match (&key.last_error, key.available, key.last_sign_us) {
                (Some(e), _, _) => (msg::HealthStatus::Failing, e.clone()),
                (None, true, Some(us)) => (
                    msg::HealthStatus::Ok,
                    format!(
                        "{}; last signature {:.1} ms",
                        if key.logged_in {
                            "logged in"
                        } else {
                            "not logged in"
                        },
                        us as f64 / 1000.0
                    ),
                ),
                _ => (
                    msg::HealthStatus::Ok,
                    format!(
                        "{}; not used yet",
                        if key.logged_in {
                            "logged in"
                        } else {
                            "not logged in"
                        }
                    ),
                ),
            };
            checks.push(msg::Check {
                name: format!("hsm:{}", key.name),
                status,
                detail,
            });
        }
        match self
            .issuer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(issuer) => {
                let now = self.clock.now_secs();
                for ca in issuer.cas.values() {
                    let days = (ca.not_after - now) / 86_400;
                    let status = if days < 0 {
                        msg::HealthStatus::Failing
                    } else if days < i64::from(self.config.expiry_warning_days) {
                        msg::HealthStatus::Degraded
                    } else {
                        msg::HealthStatus::Ok
                    };
                    checks.push(msg::Check {
                        name: format!("ca:{}", ca.name),
                        status,
                        detail: format!(
                            "expires {} ({days} days)",
                            signer_x509::time::rfc3339(ca.not_after)
                        ),
                    });
                }
            }
            None => checks.push(msg::Check {
                name: "ca".into(),
                status: msg::HealthStatus::Failing,
                detail: self
                    .load_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .unwrap_or_else(|| "CA certificates not checked yet (HSM unavailable)".into()),
            }),
        }
        if self.config.openpgp.is_some() {
            // Read only: loading would touch the HSM, and health must answer during a hang.
            let loaded = self
                .openpgp
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            checks.push(match loaded {
                Some(ca) => msg::Check {
                    name: "openpgp".into(),
                    status: msg::HealthStatus::Ok,
                    detail: format!("CA key {}", ca.fingerprint()),
                },
                None => msg::Check {
                    name: "openpgp".into(),
                    status: msg::HealthStatus::Degraded,
                    detail: "CA certificate not checked yet (HSM unavailable)".into(),
                },
            });
        }
        checks.push(match self.repo.audit_head() {
            Ok(Some((n, hash))) => msg::Check {
                name: "audit".into(),
                status: msg::HealthStatus::Ok,
                detail: format!("{n} entries, head {}", hex::encode(&hash[..8])),
            },
            Ok(None) => msg::Check {
                name: "audit".into(),
                status: msg::HealthStatus::Ok,
                detail: "no entries yet".into(),
            },
            Err(e) => msg::Check {
                name: "audit".into(),
                status: msg::HealthStatus::Failing,
                detail: e.to_string(),
            },
        });
        checks.push(self.clock_check());
        checks.push(self.scrub_check());
        if let Some(fault) = self.repo.write_fault() {
            checks.push(msg::Check {
                name: "repository:writes".into(),
                status: msg::HealthStatus::Failing,
                detail: format!(
                    "{} writes failed since {}: {}",
                    fault.failures,
                    signer_x509::time::rfc3339(fault.since_ms.div_euclid(1000)),
                    fault.cause
                ),
            });
        }
        match self.repo.stats() {
            Ok(s) => {
                let size = std::fs::metadata(&self.config.repository)
                    .map(|m| m.len())
                    .unwrap_or(0);
                let consistent = s.expiry_entries == s.certificates;
                checks.push(msg::Check {
                    name: "repository".into(),
                    status: if consistent {
                        msg::HealthStatus::Ok
                    } else {
                        msg::HealthStatus::Failing
                    },
                    detail: format!(
                        "{} certificates, {} revocations, {} OpenPGP certifications, {:.1} MiB; {} commits for {} records since start{}",
                        s.certificates,
                        s.revocations,
                        self.repo.certification_count().unwrap_or(0),
                        size as f64 / (1024.0 * 1024.0),
                        s.commits,
                        s.committed_records,
                        if consistent {
                            String::new()
                        } else {
                            format!(
                                "; INCONSISTENT: {} expiry entries for {} certificates (run signerd repo check)",
                                s.expiry_entries, s.certificates
                            )
                        }
                    ),
                })
            }
            Err(e) => checks.push(msg::Check {
                name: "repository".into(),
                status: msg::HealthStatus::Failing,
                detail: e.to_string(),
            }),
        }
        checks
    }
}
