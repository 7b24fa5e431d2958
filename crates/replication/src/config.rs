//! `ca.replication`: the twin and the two nats-servers.

use std::path::{Path, PathBuf};

use signer_keys::PublicKey;

use crate::tls::{url_host, PinnedServer};

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
    /// This signer's replication key (a name in `ca.keys`): it signs every
    /// batch of events this signer publishes (a seal), and never leaves the
    /// token. Made in the pair ceremony (`signerd setup generate-key`).
    pub key: String,
    /// The twin's replication public key (PEM, from `signerd setup
    /// public-key` on the twin): events are applied only under a seal it
    /// verifies. Relative paths are resolved against the config file.
    pub peer_key: PathBuf,
    /// This signer's NATS credentials: a file holding its nkey seed (`signerd
    /// setup nats-key`, mode 0600). Both nats-servers list the public key
    /// with what it may publish and read (configs/nats-server.conf).
    /// Relative paths are resolved against the config file.
    #[serde(default)]
    pub nats_seed: Option<PathBuf>,
    /// This signer's nats-server certificate (PEM, from `signerd setup
    /// nats-tls` on this host): the connection to `local` is TLS and trusts
    /// this certificate only. Relative paths are resolved against the config
    /// file.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The twin's nats-server certificate (PEM, copied from the twin in the
    /// pair ceremony): the connection to `peer`, across the cable, is TLS
    /// and trusts this certificate only.
    #[serde(default)]
    pub peer_tls_cert: Option<PathBuf>,
    /// The twin's key, once read from `peer_key` ([`ReplicationConfig::peer_public_key`]).
    #[serde(skip)]
    pub peer_public: Option<PublicKey>,
    /// Health turns degraded when the twin's events wait this long for the
    /// one before them or for their seal, and failing at twice this
    /// (default 60).
    #[serde(default = "default_held_warning")]
    pub held_warning_secs: u32,
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

fn default_held_warning() -> u32 {
    60
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
    /// The twin's replication public key: `peer_public` if set, else read
    /// from `peer_key`.
    pub fn peer_public_key(&self) -> Result<PublicKey, String> {
        if let Some(k) = &self.peer_public {
            return Ok(k.clone());
        }
        let text = std::fs::read_to_string(&self.peer_key)
            .map_err(|e| format!("ca.replication.peer_key: {}: {e}", self.peer_key.display()))?;
        PublicKey::from_pem(&text)
            .map_err(|e| format!("ca.replication.peer_key: {}: {e}", self.peer_key.display()))
    }

    /// The nkey seed and its public key, when `nats_seed` is set.
    pub fn nats_user(&self) -> Result<Option<(String, String)>, String> {
        let Some(path) = &self.nats_seed else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("ca.replication.nats_seed: {}: {e}", path.display()))?;
        let seed = text.trim().to_string();
        let pair = nkeys::KeyPair::from_seed(&seed).map_err(|e| {
            format!(
                "ca.replication.nats_seed: {}: not an nkey seed: {e}",
                path.display()
            )
        })?;
        Ok(Some((seed, pair.public_key())))
    }

    /// The pinned nats-server certificates (own, twin's), when TLS is set,
    /// each checked for the host of its address (and, with `now`, for its
    /// validity then).
    pub fn tls(
        &self,
        now: Option<std::time::SystemTime>,
    ) -> Result<Option<(PinnedServer, PinnedServer)>, String> {
        let (Some(own), Some(peer)) = (&self.tls_cert, &self.peer_tls_cert) else {
            return Ok(None);
        };
        let read = |key: &str, path: &Path| {
            PinnedServer::read(path)
                .map_err(|e| format!("ca.replication.{key}: {}: {e}", path.display()))
        };
        let (own_path, peer_path) = (own, peer);
        let own = read("tls_cert", own_path)?;
        let peer = read("peer_tls_cert", peer_path)?;
        if own.sha256_hex() == peer.sha256_hex() {
            return Err(format!(
                "ca.replication.peer_tls_cert: {} is this signer's own nats-server certificate: name the twin's",
                peer_path.display()
            ));
        }
        for (key, path, pinned, url) in [
            ("tls_cert", own_path, &own, &self.local),
            ("peer_tls_cert", peer_path, &peer, &self.peer),
        ] {
            pinned
                .check(url_host(url), now)
                .map_err(|e| format!("ca.replication.{key}: {}: {e}", path.display()))?;
        }
        Ok(Some((own, peer)))
    }

    /// Resolves `peer_key` against `base` and checks values;
    /// errors name their key under `ca.replication`.
    pub fn validate(&mut self, file: &Path, base: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            file: file.to_path_buf(),
            key,
            message,
        };
        let r = &*self;
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
        if self.peer_key.is_relative() {
            self.peer_key = base.join(&self.peer_key);
        }
        for path in [
            self.nats_seed.as_mut(),
            self.tls_cert.as_mut(),
            self.peer_tls_cert.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        if self.tls_cert.is_some() != self.peer_tls_cert.is_some() {
            return Err(invalid(
                "ca.replication.tls_cert".into(),
                "tls_cert and peer_tls_cert go together: both nats-servers require TLS or neither does".into(),
            ));
        }
        if self.held_warning_secs == 0 {
            return Err(invalid(
                "ca.replication.held_warning_secs".into(),
                "expected at least 1".into(),
            ));
        }
        Ok(())
    }
}
