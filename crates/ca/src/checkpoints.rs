//! Checkpoints of the audit log: the tree head signed with the audit key
//! (Ed25519, in the HSM, used for nothing else) in the C2SP checkpoint
//! format, at least every `every_entries` entries or `every_secs` seconds,
//! at shutdown and whenever a witness asks.
//!
//! Before it signs, the log checks that the tree it is about to sign
//! extends the last checkpoint it signed (same root at that size): a
//! rewritten, truncated or rolled-back log is refused here, health turns
//! FAILING, and nothing is signed that contradicts a checkpoint that may
//! already have left the box.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use signer_hsm::{HsmError, KeyKind, Scheme, SigningBackend};
use signer_protocol::{calls, msg, Status};
use signer_repository::{RepoError, Repository, StoredCheckpoint};
use signer_service::{Failure, HealthSource, Router};
use signer_tlog::note::{
    verify_cosignature_line, Checkpoint, SignatureLine, SignedCheckpoint, Verifier,
    TYPE_COSIGNATURE, TYPE_ED25519,
};
use signer_tlog::Hash;
use tracing::{error, info};

/// `ca.audit`: the audit log's checkpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The audit key (a `ca.keys` entry, Ed25519, made with `signerd setup
    /// generate-key --type ed25519`): signs checkpoints, nothing else.
    pub key: String,
    /// The log's name, the checkpoints' first line and the key name of
    /// their signatures (default `<signer_id>.signer/audit`).
    #[serde(default)]
    pub origin: Option<String>,
    /// A checkpoint at least every this many entries (default 1000).
    #[serde(default = "default_every_entries")]
    pub every_entries: u64,
    /// … and at least every this many seconds when the log grew (default 60).
    #[serde(default = "default_every_secs")]
    pub every_secs: u64,
    /// Health turns degraded when the web host's copy (`signer-client
    /// audit sync`) is more than this many entries behind (default 10000).
    #[serde(default = "default_unacknowledged")]
    pub unacknowledged_warning: u64,
    /// The twin's audit key (`signerd audit vkey` on the twin): this signer
    /// witnesses the twin's checkpoints against its copy of the twin's log
    /// and cosigns them, and checks the twin's cosignatures of its own.
    #[serde(default)]
    pub peer_vkey: Option<String>,
}

fn default_every_entries() -> u64 {
    1000
}
fn default_every_secs() -> u64 {
    60
}
fn default_unacknowledged() -> u64 {
    10_000
}

impl AuditConfig {
    /// The origin line for signer `signer_id`.
    pub fn origin(&self, signer_id: &str) -> String {
        self.origin
            .clone()
            .unwrap_or_else(|| format!("{signer_id}.signer/audit"))
    }
}

/// The audit key's verifier: its name and Ed25519 key.
pub fn verifier(
    config: &AuditConfig,
    signer_id: &str,
    backend: &dyn SigningBackend,
) -> Result<Verifier, String> {
    let public = backend
        .public_key(&config.key)
        .map_err(|e| format!("ca.audit.key ({}): {e}", config.key))?;
    if public.kind != KeyKind::Ed25519 {
        return Err(format!(
            "ca.audit.key ({}): a {} key; the audit key is Ed25519 (setup generate-key --type ed25519)",
            config.key, public.kind
        ));
    }
    let bytes = public
        .ed25519_bytes()
        .ok_or_else(|| format!("ca.audit.key ({}): not a readable Ed25519 key", config.key))?;
    Verifier::new(&config.origin(signer_id), TYPE_ED25519, bytes)
        .map_err(|e| format!("ca.audit.origin: {e}"))
}

/// Why the audit log could not answer.
#[derive(Debug, thiserror::Error)]
pub enum AuditLogError {
    /// The log contradicts its last checkpoint: rewritten, truncated or
    /// rolled back. Nothing is signed.
    #[error("{0}")]
    Contradiction(String),
    /// An acknowledged root that is not the log's.
    #[error("{0}")]
    RootMismatch(String),
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The audit key failed.
    #[error("ca.audit.key: {0}")]
    Hsm(#[from] HsmError),
}

impl AuditLogError {
    fn failure(&self) -> Failure {
        match self {
            AuditLogError::Contradiction(m) => Failure::new(
                Status::REPOSITORY_CORRUPT,
                format!("{m}; no checkpoint is signed until an operator acts"),
            ),
            AuditLogError::RootMismatch(m) => Failure::new(Status::AUDIT_ROOT_MISMATCH, m.clone()),
            AuditLogError::Repo(RepoError::OutOfRange(m)) => {
                Failure::new(Status::AUDIT_RANGE, m.clone())
            }
            AuditLogError::Repo(e) => crate::wire::repo_failure(e, "nothing was changed"),
            AuditLogError::Hsm(h) if h.is_transient() => {
                Failure::new(Status::HSM_UNAVAILABLE, self.to_string())
            }
            AuditLogError::Hsm(_) => Failure::new(Status::HSM_FAILURE, self.to_string()),
        }
    }
}

/// Most entries one `audit_entries` answer carries.
pub const MAX_ENTRIES: u64 = 256;

/// The name a log's audit key cosigns under as witness: `<origin>/witness`.
pub fn witness_name(origin: &str) -> String {
    format!("{origin}/witness")
}

/// The twin: its signer id, its log's verifier and its witness's.
#[derive(Debug, Clone)]
struct Twin {
    id: String,
    log: Verifier,
    witness: Verifier,
}

/// The checkpointer: signs, stores and reports; witnesses the twin's.
pub struct AuditLog {
    repo: Arc<Repository>,
    backend: Arc<dyn SigningBackend>,
    config: AuditConfig,
    verifier: Verifier,
    /// This signer's audit key as a witness (`cosignature/v1`).
    witness: Verifier,
    twin: Option<Twin>,
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    stopping: bool,
    last_signed: Option<(u64, Instant)>,
    error: Option<String>,
    /// Witnessing the twin: the last size cosigned, or why not.
    cosigned: Option<u64>,
    witness_error: Option<String>,
}

impl AuditLog {
    /// The checkpointer of `repo`'s log with `config`.
    /// `twin_id` is the twin's signer id (`ca.replication.peer_id`), when
    /// there is one.
    pub fn new(
        config: &AuditConfig,
        repo: Arc<Repository>,
        backend: Arc<dyn SigningBackend>,
        twin_id: Option<&str>,
    ) -> Result<AuditLog, String> {
        let verifier = verifier(config, repo.origin(), backend.as_ref())?;
        let witness = Verifier::new(
            &witness_name(&verifier.name),
            TYPE_COSIGNATURE,
            verifier.key,
        )
        .map_err(|e| format!("ca.audit.origin: {e}"))?;
        let twin = match (&config.peer_vkey, twin_id) {
            (Some(text), Some(id)) => {
                let log =
                    Verifier::from_vkey(text).map_err(|e| format!("ca.audit.peer_vkey: {e}"))?;
                if log.key == verifier.key {
                    return Err(
                        "ca.audit.peer_vkey is this signer's own audit key: name the twin's".into(),
                    );
                }
                let witness = Verifier::new(&witness_name(&log.name), TYPE_COSIGNATURE, log.key)
                    .map_err(|e| format!("ca.audit.peer_vkey: {e}"))?;
                Some(Twin {
                    id: id.to_string(),
                    log,
                    witness,
                })
            }
            (Some(_), None) => return Err(
                "ca.audit.peer_vkey needs ca.replication (the twin's log arrives by replication)"
                    .into(),
            ),
            (None, _) => None,
        };
        Ok(AuditLog {
            repo,
            backend,
            config: config.clone(),
            verifier,
            witness,
            twin,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        })
    }

    /// The note of checkpoint `c` with the twin's verified cosignatures added.
    fn with_cosignatures(&self, c: StoredCheckpoint) -> StoredCheckpoint {
        let Some(twin) = &self.twin else { return c };
        let Ok(mut note) = SignedCheckpoint::parse(&c.note) else {
            return c;
        };
        for (size, witness, line) in self.repo.cosignatures().unwrap_or_default() {
            if size != c.size || witness != twin.id {
                continue;
            }
            if let Ok(l) = SignatureLine::parse(&line) {
                if verify_cosignature_line(&note.checkpoint, &twin.witness, &l).is_ok() {
                    note.add(l);
                }
            }
        }
        StoredCheckpoint {
            size: c.size,
            note: note.render(),
        }
    }

    /// Witnesses the twin's checkpoints not yet cosigned: each must carry
    /// the twin's signature and give the root of this signer's copy of the
    /// twin's log at its size (a copy that only grows: consistency with
    /// every earlier checkpoint follows). Then cosigns it.
    pub fn witness(&self) -> Result<Option<u64>, String> {
        let Some(twin) = &self.twin else {
            return Ok(None);
        };
        let mut last = None;
        for (size, note, cosigned) in self
            .repo
            .peer_checkpoints(&twin.id)
            .map_err(|e| e.to_string())?
        {
            if cosigned.is_some() {
                last = Some(size);
                continue;
            }
            let mut signed = SignedCheckpoint::parse(&note)
                .and_then(|n| n.verify_log(&twin.log).map(|()| n))
                .map_err(|e| format!("{}'s checkpoint {size}: {e}", twin.id))?;
            if signed.checkpoint.size != size {
                return Err(format!(
                    "{}'s checkpoint {size} names size {}",
                    twin.id, signed.checkpoint.size
                ));
            }
            let root = match self
                .repo
                .peer_audit_root(&twin.id, size)
                .map_err(|e| e.to_string())?
            {
                Some(r) => r,
                // The copy has not reached it yet.
                None => break,
            };
            if root != signed.checkpoint.root {
                return Err(format!(
                    "{}'s checkpoint {size} does not match its log as replicated here: not cosigned",
                    twin.id
                ));
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let line = signed
                .cosign(&self.witness, now, |m| {
                    self.backend
                        .sign_digest(&self.config.key, Scheme::Ed25519, m)
                })
                .map_err(|e| format!("ca.audit.key ({}): {e}", self.config.key))?;
            self.repo
                .record_cosignature(&twin.id, size, line.render().trim_end())
                .map_err(|e| e.to_string())?;
            info!(twin = %twin.id, size, "audit log: twin's checkpoint cosigned");
            last = Some(size);
        }
        Ok(last)
    }

    fn witness_now(&self) {
        if self.twin.is_none() {
            return;
        }
        let result = self.witness();
        let mut state = self.state();
        match result {
            Ok(size) => {
                state.witness_error = None;
                if size.is_some() {
                    state.cosigned = size;
                }
            }
            Err(e) => {
                if state.witness_error.as_deref() != Some(e.as_str()) {
                    error!(cause = %e, "audit log: twin's checkpoint not cosigned");
                }
                state.witness_error = Some(e);
            }
        }
    }

    /// The verifier key string of the audit key (`name+id+key`).
    pub fn vkey(&self) -> String {
        self.verifier.vkey()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The latest checkpoint, signing a new one first when the log grew
    /// since the last.
    pub fn checkpoint(&self) -> Result<StoredCheckpoint, AuditLogError> {
        let result = self.checkpoint_inner();
        let mut state = self.state();
        match &result {
            Ok(c) => {
                state.error = None;
                state.last_signed = Some((c.size, Instant::now()));
            }
            Err(e) => {
                let e = e.to_string();
                if state.error.as_deref() != Some(e.as_str()) {
                    error!(cause = %e, "audit log: no checkpoint signed");
                }
                state.error = Some(e);
            }
        }
        result
    }

    fn checkpoint_inner(&self) -> Result<StoredCheckpoint, AuditLogError> {
        let (size, root) = self.repo.audit_tree_head()?;
        let latest = self.repo.latest_checkpoint()?;
        if let Some(last) = &latest {
            let held = SignedCheckpoint::parse(&last.note)
                .and_then(|n| n.verify_log(&self.verifier).map(|()| n))
                .map_err(|e| {
                    AuditLogError::Contradiction(format!(
                        "the stored checkpoint of size {}: {e}",
                        last.size
                    ))
                })?;
            check_extends(&self.repo, &held.checkpoint, size, &root)?;
            if last.size == size {
                return Ok(last.clone());
            }
        }
        let checkpoint = Checkpoint {
            origin: self.verifier.name.clone(),
            size,
            root,
        };
        let signed = SignedCheckpoint::sign(checkpoint, &self.verifier, |m| {
            self.backend
                .sign_digest(&self.config.key, Scheme::Ed25519, m)
        })?;
        signed.verify_log(&self.verifier).map_err(|e| {
            AuditLogError::Hsm(HsmError::Failed(format!("the checkpoint signature: {e}")))
        })?;
        let note = signed.render();
        self.repo.store_checkpoint(size, &note)?;
        info!(size, "audit log: checkpoint signed");
        Ok(StoredCheckpoint { size, note })
    }

    /// Signs checkpoints as configured until [`AuditLog::stop`]; signs a
    /// last one then.
    pub fn start(self: &Arc<Self>) -> std::thread::JoinHandle<()> {
        let me = Arc::clone(self);
        std::thread::spawn(move || me.run())
    }

    fn run(&self) {
        let every = Duration::from_secs(self.config.every_secs.max(1));
        let poll = Duration::from_secs(1).min(every);
        let mut since = Instant::now();
        loop {
            {
                let state = self.state();
                if state.stopping {
                    break;
                }
                let (state, _) = self
                    .wake
                    .wait_timeout(state, poll)
                    .unwrap_or_else(|p| p.into_inner());
                if state.stopping {
                    break;
                }
            }
            let signed = self.state().last_signed.map_or(0, |(s, _)| s);
            let size = self
                .repo
                .audit_tree_head()
                .map(|(s, _)| s)
                .unwrap_or(signed);
            let due = size >= signed + self.config.every_entries.max(1)
                || (size > signed && since.elapsed() >= every);
            if due {
                let _ = self.checkpoint();
                since = Instant::now();
            }
            self.witness_now();
        }
        let _ = self.checkpoint();
    }

    /// Stops the thread (which signs a last checkpoint).
    pub fn stop(&self) {
        self.state().stopping = true;
        self.wake.notify_all();
    }

    /// Records a witness's acknowledgement of `size` with `root`, after
    /// checking the root is this log's at that size.
    pub fn acknowledge(
        &self,
        who: &str,
        size: u64,
        root: &[u8],
        at_ms: u64,
    ) -> Result<(), AuditLogError> {
        let ours = self.repo.audit_root(size)?;
        if ours.as_slice() != root {
            return Err(AuditLogError::RootMismatch(format!(
                "the root acknowledged for size {size} is not this log's: the copy does not hold this log"
            )));
        }
        Ok(self.repo.acknowledge_audit(who, size, at_ms)?)
    }

    /// Routes the audit commands (protocol §7.9) to this log.
    pub fn routes(self: &Arc<Self>, router: Router) -> Router {
        let (a, b, c, d, e) = (
            Arc::clone(self),
            Arc::clone(self),
            Arc::clone(self),
            Arc::clone(self),
            Arc::clone(self),
        );
        router
            .on::<calls::AuditCheckpoint>(move |_, _| {
                a.checkpoint()
                    .map(|c| msg::AuditCheckpointReply {
                        checkpoint: a.with_cosignatures(c).note,
                    })
                    .map_err(|e| e.failure())
            })
            .on::<calls::AuditConsistency>(move |_, r| {
                let proof = b
                    .repo
                    .audit_consistency(r.old, r.new)
                    .map_err(|e| AuditLogError::from(e).failure())?;
                Ok(msg::AuditConsistencyReply {
                    proof: proof
                        .iter()
                        .map(|h| serde_bytes::ByteBuf::from(h.to_vec()))
                        .collect(),
                })
            })
            .on::<calls::AuditEntries>(move |_, r| {
                let entries = c
                    .repo
                    .audit_leaves(r.start, r.count.min(MAX_ENTRIES))
                    .map_err(|e| AuditLogError::from(e).failure())?;
                Ok(msg::AuditEntriesReply {
                    entries: entries
                        .into_iter()
                        .map(serde_bytes::ByteBuf::from)
                        .collect(),
                })
            })
            .on::<calls::AuditInclusion>(move |_, r| {
                let (entry, proof) = d
                    .repo
                    .audit_inclusion(r.index, r.size)
                    .map_err(|e| AuditLogError::from(e).failure())?;
                Ok(msg::AuditInclusionReply {
                    entry: serde_bytes::ByteBuf::from(entry),
                    proof: proof
                        .iter()
                        .map(|h| serde_bytes::ByteBuf::from(h.to_vec()))
                        .collect(),
                })
            })
            .on::<calls::AuditAck>(move |_, r| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                e.acknowledge("web host", r.size, &r.root, now)
                    .map_err(|e| e.failure())?;
                Ok(msg::Empty {})
            })
    }
}

/// Checks that the tree of `size` with `root` extends `held` (the same root
/// at the held size).
pub fn check_extends(
    repo: &Repository,
    held: &Checkpoint,
    size: u64,
    root: &Hash,
) -> Result<(), AuditLogError> {
    if size < held.size {
        return Err(AuditLogError::Contradiction(format!(
            "the audit log has {size} entries but checkpoint {} was signed: entries were removed or an older repository restored",
            held.size
        )));
    }
    let then = if size == held.size {
        *root
    } else {
        repo.audit_root(held.size)?
    };
    if then != held.root {
        return Err(AuditLogError::Contradiction(format!(
            "the first {} entries of the audit log differ from checkpoint {}: the log was rewritten",
            held.size, held.size
        )));
    }
    Ok(())
}

impl HealthSource for AuditLog {
    fn checks(&self) -> Vec<msg::Check> {
        let state = self.state();
        let (status, detail) = match (&state.error, state.last_signed) {
            (Some(e), _) => (msg::HealthStatus::Failing, e.clone()),
            (None, Some((size, at))) => (
                msg::HealthStatus::Ok,
                format!("checkpoint {size} signed {}s ago", at.elapsed().as_secs()),
            ),
            (None, None) => (msg::HealthStatus::Ok, "no checkpoint yet".to_string()),
        };
        drop(state);
        let mut checks = vec![msg::Check {
            name: "audit:checkpoint".into(),
            status,
            detail,
        }];
        let size = self.repo.audit_tree_head().map(|(s, _)| s).unwrap_or(0);
        let acks = self.repo.audit_acks().unwrap_or_default();
        let held = acks.iter().map(|(_, s, _)| *s).max().unwrap_or(0);
        let behind = size.saturating_sub(held);
        let who = acks
            .iter()
            .map(|(w, s, _)| format!("{w} {s}"))
            .collect::<Vec<_>>()
            .join(", ");
        let detail = if acks.is_empty() {
            format!("no copy acknowledged; entries 1–{size} held only here")
        } else if behind == 0 {
            format!("all {size} entries held outside ({who})")
        } else {
            format!("entries {}–{size} held only here ({who})", held + 1)
        };
        let status = if behind > self.config.unacknowledged_warning {
            msg::HealthStatus::Degraded
        } else {
            msg::HealthStatus::Ok
        };
        checks.push(msg::Check {
            name: "audit:witness".into(),
            status,
            detail,
        });
        if let Some(twin) = &self.twin {
            let state = self.state();
            let own_cosigned = self
                .repo
                .cosignatures()
                .unwrap_or_default()
                .iter()
                .filter(|(_, w, _)| *w == twin.id)
                .map(|(s, _, _)| *s)
                .max()
                .unwrap_or(0);
            let uncosigned = size.saturating_sub(own_cosigned);
            let (status, detail) = match &state.witness_error {
                Some(e) => (msg::HealthStatus::Failing, e.clone()),
                None if uncosigned > self.config.unacknowledged_warning => (
                    msg::HealthStatus::Degraded,
                    format!(
                        "entries {}–{size} of this log not cosigned by {} (is the twin up?)",
                        own_cosigned + 1,
                        twin.id
                    ),
                ),
                None => (
                    msg::HealthStatus::Ok,
                    format!(
                        "{}'s log cosigned up to {}; this log cosigned by {} up to {own_cosigned}",
                        twin.id,
                        state.cosigned.unwrap_or(0),
                        twin.id
                    ),
                ),
            };
            checks.push(msg::Check {
                name: "audit:twin".into(),
                status,
                detail,
            });
        }
        checks
    }
}
