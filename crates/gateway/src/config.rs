//! The gateway's configuration: strict YAML, every field known.
//!
//! ```yaml
//! name: web-1
//! signers:
//!   - device: /dev/ttyS0
//!   - device: /dev/ttyS1
//! queue:
//!   sqlite: /var/lib/signer-gateway/queue.sqlite
//! socket:
//!   path: /run/signer/gateway.sock
//! crl:
//!   directory: /var/lib/signer-gateway/crl
//! metrics:
//!   listen: 127.0.0.1:9464
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
pub use signer_service::config::ConfigError;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This gateway's name: it marks the queue rows it claims, so that after
    /// a crash it takes back its own claims at once. Two gateways on one
    /// queue need different names.
    pub name: String,
    /// The signers' serial devices, in order of preference (twins).
    pub signers: Vec<SignerLink>,
    /// Seconds without an answer before the next signer is asked.
    #[serde(default = "default_failover_after_s")]
    pub failover_after_s: f64,
    /// The request queue.
    pub queue: QueueConfig,
    /// The local socket other programs on this host use to reach the signers.
    #[serde(default)]
    pub socket: Option<SocketConfig>,
    /// CRL publishing.
    #[serde(default)]
    pub crl: Option<CrlConfig>,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// Health checks of the signers.
    #[serde(default)]
    pub health: HealthConfig,
    /// Seconds between syncs of the audit log copies (`signers[].audit`).
    #[serde(default = "default_audit_sync_s")]
    pub audit_sync_s: u64,
}

/// One signer's link.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerLink {
    /// The serial device.
    pub device: PathBuf,
    /// Line speed.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Keep a verified copy of this signer's audit log.
    #[serde(default)]
    pub audit: Option<AuditCopyConfig>,
}

/// Where one signer's audit log is copied.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditCopyConfig {
    /// The copy's directory (one per signer: twins are two logs).
    pub copy: PathBuf,
    /// A file holding the audit key's verifier key (`signerd audit vkey`
    /// on the signer). Needed for the first sync; afterwards the copy
    /// keeps the key and the file, if named, must hold the same.
    #[serde(default)]
    pub vkey: Option<PathBuf>,
}

/// Where the queue lives: exactly one of `sqlite` and `postgres`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// An SQLite database file (created with the schema if absent).
    #[serde(default)]
    pub sqlite: Option<PathBuf>,
    /// A PostgreSQL connection string (`host=/run/postgresql dbname=ca user=gateway`).
    #[serde(default)]
    pub postgres: Option<String>,
    /// Requests sent at once (the signers pipeline them).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// How often an SQLite queue is polled for new rows, milliseconds
    /// (PostgreSQL wakes the gateway with NOTIFY and is polled as a fallback).
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// How long a claim holds a row before another gateway may take it, seconds.
    #[serde(default = "default_lease_s")]
    pub lease_s: u64,
    /// Attempts before a row that keeps failing is parked.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First retry delay, milliseconds (doubled on every attempt).
    #[serde(default = "default_retry_min_ms")]
    pub retry_min_ms: u64,
    /// Longest retry delay, milliseconds.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
}

/// The local socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketConfig {
    /// Its path.
    pub path: PathBuf,
    /// Its permission bits, as an octal string (who may use the signers).
    #[serde(default = "default_socket_mode")]
    pub mode: String,
}

/// CRL publishing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlConfig {
    /// The directory the web server publishes.
    pub directory: PathBuf,
    /// Issuers to publish (default: every CA the signer lists).
    #[serde(default)]
    pub issuers: Option<Vec<String>>,
    /// File name per issuer, as its CRL distribution point URL ends
    /// (default: `ISSUER.crl`).
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Also write `NAME.pem` beside each DER file.
    #[serde(default)]
    pub pem: bool,
    /// Fetch a new CRL once its nextUpdate is this close, seconds.
    #[serde(default = "default_refresh_margin_s")]
    pub refresh_margin_s: u64,
    /// Warn (metric and health) when the published CRL's nextUpdate is this close, seconds.
    #[serde(default = "default_warn_s")]
    pub warn_s: u64,
    /// Check every CRL at least this often, seconds.
    #[serde(default = "default_check_s")]
    pub check_s: u64,
}

impl CrlConfig {
    /// The file name of `issuer`'s CRL.
    pub fn file_name(&self, issuer: &str) -> String {
        self.files
            .get(issuer)
            .cloned()
            .unwrap_or_else(|| format!("{issuer}.crl"))
    }
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to listen on (loopback unless monitoring needs more).
    pub listen: SocketAddr,
}

/// Health checks of the signers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Seconds between checks.
    #[serde(default = "default_health_s")]
    pub interval_s: u64,
    /// Clock difference to the signer beyond which a check is degraded, seconds.
    #[serde(default = "default_skew_s")]
    pub max_clock_skew_s: f64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_s: default_health_s(),
            max_clock_skew_s: default_skew_s(),
        }
    }
}

fn default_failover_after_s() -> f64 {
    10.0
}
fn default_baud() -> u32 {
    115_200
}
fn default_workers() -> usize {
    32
}
fn default_poll_ms() -> u64 {
    500
}
fn default_lease_s() -> u64 {
    120
}
fn default_max_attempts() -> u32 {
    10
}
fn default_retry_min_ms() -> u64 {
    1_000
}
fn default_retry_max_ms() -> u64 {
    300_000
}
fn default_socket_mode() -> String {
    "0660".into()
}
fn default_refresh_margin_s() -> u64 {
    2 * 86_400
}
fn default_warn_s() -> u64 {
    86_400
}
fn default_check_s() -> u64 {
    300
}
fn default_health_s() -> u64 {
    30
}
fn default_skew_s() -> f64 {
    60.0
}
fn default_audit_sync_s() -> u64 {
    300
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Config = serde_yaml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config
            .check()
            .map_err(|(key, message)| ConfigError::Invalid {
                file: path.to_path_buf(),
                key: key.into(),
                message,
            })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self.name.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(("name", "1–64 printable ASCII characters".into()));
        }
        if self.signers.is_empty() {
            return Err(("signers", "name at least one serial device".into()));
        }
        for s in &self.signers {
            if s.baud == 0 {
                return Err(("signers.baud", "must be positive".into()));
            }
        }
        let copies: Vec<&Path> = self
            .signers
            .iter()
            .filter_map(|s| s.audit.as_ref().map(|a| a.copy.as_path()))
            .collect();
        for (i, copy) in copies.iter().enumerate() {
            if copies[..i].contains(copy) {
                return Err((
                    "signers.audit.copy",
                    format!(
                        "{} is named for two signers: each signer's log needs its own copy",
                        copy.display()
                    ),
                ));
            }
        }
        if self.audit_sync_s == 0 {
            return Err(("audit_sync_s", "must be positive".into()));
        }
        if !(self.failover_after_s.is_finite() && self.failover_after_s > 0.0) {
            return Err(("failover_after_s", "must be a positive number".into()));
        }
        let q = &self.queue;
        match (&q.sqlite, &q.postgres) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => {
                return Err((
                    "queue",
                    "give exactly one of sqlite (a file) and postgres (a connection string)".into(),
                ))
            }
        }
        if q.workers == 0 || q.workers > 1024 {
            return Err(("queue.workers", "1 to 1024".into()));
        }
        if q.max_attempts == 0 {
            return Err(("queue.max_attempts", "at least 1".into()));
        }
        if q.lease_s == 0 || q.poll_ms == 0 {
            return Err(("queue.lease_s/poll_ms", "must be positive".into()));
        }
        if q.retry_min_ms == 0 || q.retry_max_ms < q.retry_min_ms {
            return Err((
                "queue.retry_max_ms",
                "retry_min_ms must be positive and not above retry_max_ms".into(),
            ));
        }
        if let Some(socket) = &self.socket {
            socket_mode(&socket.mode)
                .ok_or(("socket.mode", "an octal mode such as 0660".into()))?;
        }
        if let Some(crl) = &self.crl {
            for (issuer, file) in &crl.files {
                if file.is_empty()
                    || file.contains('/')
                    || file.starts_with('.')
                    || file.ends_with(".pem")
                {
                    return Err((
                        "crl.files",
                        format!("{issuer}: {file:?} is not a plain file name"),
                    ));
                }
            }
            if crl.warn_s >= crl.refresh_margin_s {
                return Err((
                    "crl.warn_s",
                    "must be below refresh_margin_s (the warning is for a refresh that failed)"
                        .into(),
                ));
            }
            if crl.check_s == 0 {
                return Err(("crl.check_s", "must be positive".into()));
            }
        }
        if self.health.interval_s == 0 {
            return Err(("health.interval_s", "must be positive".into()));
        }
        Ok(())
    }

    /// The client library's options for each signer.
    pub fn links(&self) -> Vec<signer_client::LinkOptions> {
        self.signers
            .iter()
            .map(|s| {
                let mut options = signer_client::LinkOptions::new(&s.device);
                options.baud = s.baud;
                options
            })
            .collect()
    }

    /// The failover delay.
    pub fn failover_after(&self) -> Duration {
        Duration::from_secs_f64(self.failover_after_s)
    }
}

/// The permission bits of an octal mode string.
pub fn socket_mode(mode: &str) -> Option<u32> {
    let mode = u32::from_str_radix(mode.trim_start_matches("0o"), 8).ok()?;
    (mode <= 0o777).then_some(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, text).expect("write");
        Config::load(&path)
    }

    const BASE: &str =
        "name: web-1\nsigners:\n  - device: /dev/ttyS0\nqueue:\n  sqlite: /tmp/q.sqlite\n";

    #[test]
    fn a_minimal_file_loads_with_defaults() {
        let c = load(BASE).expect("loads");
        assert_eq!(c.queue.workers, 32);
        assert_eq!(c.signers[0].baud, 115_200);
        assert!(c.socket.is_none() && c.crl.is_none() && c.metrics.is_none());
    }

    #[test]
    fn unknown_fields_and_contradictions_are_refused_by_name() {
        let e = load(&format!("{BASE}colour: blue\n")).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let e = load(&format!("{BASE}  postgres: host=/run/postgresql\n")).unwrap_err();
        assert!(e.to_string().contains("exactly one"), "{e}");
        let e = load(
            &BASE
                .replace("  - device: /dev/ttyS0\n", "  []\n")
                .replace("signers:\n  []", "signers: []"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("signers"), "{e}");
        let e = load(&format!("{BASE}socket:\n  path: /run/x.sock\n  mode: rw\n")).unwrap_err();
        assert!(e.to_string().contains("socket.mode"), "{e}");
        let e = load(&format!(
            "{BASE}crl:\n  directory: /srv/crl\n  files:\n    sub: ../sub.crl\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("crl.files"), "{e}");
        let e = load(&BASE.replace("web-1", "web 1")).unwrap_err();
        assert!(e.to_string().contains("name"), "{e}");
        let e = load(&BASE.replace(
            "  - device: /dev/ttyS0\n",
            "  - {device: /dev/ttyS0, audit: {copy: /srv/a}}\n  - {device: /dev/ttyS1, audit: {copy: /srv/a}}\n",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("own copy"), "{e}");
    }
}
