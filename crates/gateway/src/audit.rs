//! The web host's copies of the signers' audit logs: each signer named with
//! an `audit` section has its log copied into a directory, every
//! checkpoint verified against the last one held (a consistency proof) and
//! acknowledged, exactly as `signer-client audit sync` does (the same code,
//! `signer_client::audit`). Each copy is of one signer, never through
//! failover: twins are two logs.
//!
//! A signer whose log contradicts its copy (rewritten, truncated, an older
//! repository restored) is not synced again until the gateway restarts:
//! nothing more is acknowledged, the evidence stays in the copy's
//! `evidence` directory, the log has an error line and the metric
//! `signer_gateway_audit_contradiction` is 1.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signer_client::audit::{AuditCopy, AuditError};
use signer_client::Failover;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::dispatch::Pinned;
use crate::metrics::{AuditState, Metrics};

/// One signer's copy.
pub struct Witness {
    /// The signer's link index.
    pub index: usize,
    /// Its device, for logs and metrics.
    pub device: String,
    /// The copy's directory.
    pub dir: PathBuf,
    copy: AuditCopy,
}

/// Reads the verifier key file named in the configuration.
fn read_vkey(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text.trim().to_string())
}

/// Opens every configured copy (making its directory): a verifier key file
/// that cannot be read or does not hold a verifier key, or one that is not
/// the key of the log already copied there, is refused.
pub fn open(config: &Config) -> Result<Vec<Witness>, String> {
    let mut witnesses = Vec::new();
    for (index, link) in config.signers.iter().enumerate() {
        let Some(audit) = &link.audit else { continue };
        let vkey = audit.vkey.as_deref().map(read_vkey).transpose()?;
        let copy = AuditCopy::open(&audit.copy, vkey.as_deref())
            .map_err(|e| format!("{}: {e}", audit.copy.display()))?;
        witnesses.push(Witness {
            index,
            device: link.device.display().to_string(),
            dir: audit.copy.clone(),
            copy,
        });
    }
    Ok(witnesses)
}

/// Syncs each copy not yet contradicted once.
pub fn sync_all(signers: &Failover, witnesses: &[Witness], metrics: &Metrics) {
    for w in witnesses {
        let mut states = metrics.audits.lock().unwrap_or_else(|p| p.into_inner());
        let state = states.entry(w.index).or_insert_with(|| AuditState {
            device: w.device.clone(),
            ..AuditState::default()
        });
        if state.contradiction.is_some() {
            continue;
        }
        drop(states);
        let result = w.copy.sync(&Pinned {
            signers,
            index: w.index,
        });
        let mut states = metrics.audits.lock().unwrap_or_else(|p| p.into_inner());
        let Some(state) = states.get_mut(&w.index) else {
            continue;
        };
        match result {
            Ok(report) => {
                if report.to != report.from {
                    info!(device = %w.device, from = report.from, to = report.to, "audit log copied");
                }
                state.size = report.to;
                state.synced_at = crate::now_s();
                state.error = None;
            }
            Err(AuditError::Contradiction(cause)) => {
                error!(device = %w.device, copy = %w.dir.display(), %cause,
                    "the signer's audit log contradicts the copy held here: nothing more is acknowledged; the evidence is kept in the copy's evidence directory");
                state.contradiction = Some(cause);
            }
            Err(e) => {
                warn!(device = %w.device, cause = %e, "audit log copy not brought up to date");
                state.error = Some(e.to_string());
            }
        }
    }
}

/// Syncs every `interval` until `stop`.
pub fn run(
    signers: Arc<Failover>,
    metrics: Arc<Metrics>,
    witnesses: Vec<Witness>,
    interval: Duration,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        sync_all(&signers, &witnesses, &metrics);
        while !stop.load(Ordering::SeqCst) && started.elapsed() < interval {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
