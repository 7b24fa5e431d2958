//! `ca.replication`: the twin and the two nats-servers.

use std::path::Path;

use serde::Deserialize;
use signer_service::config::ConfigError;

/// `ca.replication`: the twin and the two nats-servers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    /// This signer's own nats-server, e.g. `nats://127.0.0.1:4222`: its
    /// changes are published to a JetStream stream there.
    pub local: String,
    /// The twin's nats-server across the crossover cable: its stream is
    /// consumed from there with a durable consumer.
    pub peer: String,
    /// The twin's `signer_id`.
    pub peer_id: String,
    /// Largest size of this signer's stream (default 1 GiB; the nats-server's
    /// `jetstream.max_file_store` must allow it). When full, changes wait in
    /// the repository's outbox; nothing is discarded.
    #[serde(default = "default_stream_max_bytes")]
    pub stream_max_bytes: i64,
    /// Seconds between state exchanges with the twin (default 2).
    #[serde(default = "default_state_interval")]
    pub state_interval_secs: u32,
    /// Health turns degraded when the twin is unreachable or behind by more
    /// than this many seconds (default 300).
    #[serde(default = "default_lag_warning")]
    pub lag_warning_secs: u32,
    /// Health turns degraded when the twins' clocks differ by more than this
    /// many seconds, measured at every state exchange (default 30).
    #[serde(default = "default_clock_drift")]
    pub clock_drift_warning_secs: u32,
}

fn default_clock_drift() -> u32 {
    30
}

fn default_stream_max_bytes() -> i64 {
    1 << 30
}
fn default_state_interval() -> u32 {
    2
}
fn default_lag_warning() -> u32 {
    300
}

impl ReplicationConfig {
    /// Checks values; errors name their key under `ca.replication`.
    pub fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            file: file.to_path_buf(),
            key,
            message,
        };
        let r = self;
        for (key, url) in [("local", &r.local), ("peer", &r.peer)] {
            if !url.starts_with("nats://") || url.len() <= "nats://".len() {
                return Err(invalid(
                    format!("ca.replication.{key}"),
                    format!("expected a nats://host:port address, got {url:?}"),
                ));
            }
        }
        let id_ok = !r.peer_id.is_empty()
            && r.peer_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !id_ok {
            return Err(invalid(
                "ca.replication.peer_id".into(),
                format!(
                    "expected lowercase letters, digits and -, got {:?}",
                    r.peer_id
                ),
            ));
        }
        if r.state_interval_secs == 0 || r.stream_max_bytes < 1 << 20 {
            return Err(invalid(
                "ca.replication".into(),
                "state_interval_secs must be at least 1 and stream_max_bytes at least 1 MiB".into(),
            ));
        }
        Ok(())
    }
}
