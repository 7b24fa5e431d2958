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
use std::time::Duration;

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
    /// The signer's log contradicted the copy: not synced again.
    contradicted: AtomicBool,
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
            contradicted: AtomicBool::new(false),
        });
    }
    Ok(witnesses)
}

/// Syncs each copy not yet contradicted once.
pub fn sync_all(signers: &Failover, witnesses: &[Witness], metrics: &Metrics) {
    for w in witnesses {
        if w.contradicted.load(Ordering::SeqCst) {
            continue;
        }
        let result = w.copy.sync(&Pinned {
            signers,
            index: w.index,
        });
        let mut states = metrics.audits.lock().unwrap_or_else(|p| p.into_inner());
        let state = states.entry(w.index).or_insert_with(|| AuditState {
            device: w.device.clone(),
            ..AuditState::default()
        });
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
                w.contradicted.store(true, Ordering::SeqCst);
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
    crate::every(interval, &stop, || sync_all(&signers, &witnesses, &metrics));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Well-formed verifier keys of two logs (C2SP signed-note key IDs over
    /// an all-zero Ed25519 key).
    const VKEY: &str =
        "signer-a.example/audit+069c0388+AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    const OTHER: &str =
        "signer-b.example/audit+91022cb6+AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    fn config(dir: &Path, vkey: Option<&str>) -> Config {
        let vkey_file = dir.join("signer-a.vkey");
        if let Some(text) = vkey {
            std::fs::write(&vkey_file, text).expect("write vkey");
        }
        let yaml = format!(
            "name: web-1\nsigners:\n  - {{device: /dev/null, audit: {{copy: {}, vkey: {}}}}}\nqueue:\n  sqlite: {}\n",
            dir.join("copy").display(),
            vkey_file.display(),
            dir.join("q.sqlite").display()
        );
        let path = dir.join("gateway.yaml");
        std::fs::write(&path, yaml).expect("write config");
        Config::load(&path).expect("config")
    }

    #[test]
    fn a_verifier_key_file_absent_empty_corrupt_or_of_another_log_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let e = open(&config(d, None)).err().expect("absent");
        assert!(e.contains("signer-a.vkey"), "{e}");
        for bad in [
            "",
            "\n",
            "not a key",
            "signer-a.example/audit+00000000+AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            let e = open(&config(d, Some(bad))).err().expect("refused");
            assert!(e.contains("copy"), "{bad:?}: {e}");
            assert!(
                !d.join("copy/log.vkey").exists(),
                "{bad:?}: a key that does not parse is never kept"
            );
        }
        // The right key: kept; later another log's key is refused.
        assert_eq!(open(&config(d, Some(VKEY))).expect("opens").len(), 1);
        let e = open(&config(d, Some(OTHER))).err().expect("another log");
        assert!(e.contains("another log"), "{e}");
    }
}
