//! The web host's gateway (`signer-gateway`): it owns the serial links to
//! the signers and is the only process that opens them.
//!
//! ```text
//! web application ─INSERT─► queue (SQLite | PostgreSQL) ─claim─► dispatch ─┐
//!        ▲                                                                  │ Failover
//!        └──────── result columns ◄── finish ◄────────────────────────────┤ (both twins'
//! CLI, monitor ─► unix socket ─► relay (one engine per connection) ─────────┤  devices held)
//! CRL directory ◄── crl publisher (schedule, difference transfer) ──────────┤
//! Prometheus ◄── metrics ◄── health poller, queue counts ───────────────────┤
//! audit copies ◄── audit sync (checkpoints, consistency proofs, acks) ──────┘
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audit;
pub mod config;
pub mod crl;
pub mod dispatch;
pub mod health;
pub mod metrics;
pub mod queue;
pub mod relay;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use signer_client::Failover;
use tracing::info;

use config::Config;
use queue::{postgres::PostgresQueue, sqlite::SqliteQueue, Queue, QueueError};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    queue::millis(SystemTime::now())
}

/// Seconds since the Unix epoch.
pub fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Calls `f` every `interval` (measured from the start of each call) until
/// `stop`, checking `stop` every 100 ms in between.
pub fn every(interval: Duration, stop: &AtomicBool, mut f: impl FnMut()) {
    use std::sync::atomic::Ordering;
    while !stop.load(Ordering::SeqCst) {
        let started = std::time::Instant::now();
        f();
        while !stop.load(Ordering::SeqCst) && started.elapsed() < interval {
            std::thread::sleep(Duration::from_millis(100).min(interval));
        }
    }
}

/// Opens the configured queue (creating its schema where missing).
pub fn open_queue(config: &Config) -> Result<Arc<dyn Queue>, QueueError> {
    let poll = Duration::from_millis(config.queue.poll_ms);
    Ok(match (&config.queue.sqlite, &config.queue.postgres) {
        (Some(path), _) => Arc::new(SqliteQueue::open(path, poll)?),
        (None, Some(params)) => Arc::new(PostgresQueue::connect(params, poll)?),
        (None, None) => return Err(QueueError::Invalid("no queue configured".into())),
    })
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The queue.
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    /// The local socket.
    #[error("local socket {path}: {source}")]
    Socket {
        /// Its path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The metrics endpoint.
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        /// Its address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// An audit log copy.
    #[error("audit log copy: {0}")]
    Audit(String),
    /// The CRL directory.
    #[error("CRL directory {path}: {message}")]
    CrlDirectory {
        /// Its path.
        path: std::path::PathBuf,
        /// Why.
        message: String,
    },
}

/// Runs the gateway until `stop` is set: every part binds or opens what it
/// needs first, so that a configuration that cannot work fails at once.
pub fn run(config: &Config, stop: Arc<AtomicBool>) -> Result<(), StartError> {
    let queue = open_queue(config)?;
    let signers = Arc::new(Failover::new(config.links(), config.failover_after()));
    let metrics = Arc::new(metrics::Metrics::default());
    let revoked: crl::Revoked = Arc::default();
    let socket = match &config.socket {
        Some(s) => {
            let mode = config::socket_mode(&s.mode).unwrap_or(0o660);
            let listener = relay::bind(&s.path, mode).map_err(|source| StartError::Socket {
                path: s.path.clone(),
                source,
            })?;
            Some(listener)
        }
        None => None,
    };
    let metrics_listener =
        match &config.metrics {
            Some(m) => Some(std::net::TcpListener::bind(m.listen).map_err(|source| {
                StartError::Metrics {
                    addr: m.listen,
                    source,
                }
            })?),
            None => None,
        };
    if let Some(crl) = &config.crl {
        let meta = std::fs::metadata(&crl.directory).map_err(|e| StartError::CrlDirectory {
            path: crl.directory.clone(),
            message: e.to_string(),
        })?;
        if !meta.is_dir() {
            return Err(StartError::CrlDirectory {
                path: crl.directory.clone(),
                message: "not a directory".into(),
            });
        }
    }
    let witnesses = audit::open(config).map_err(StartError::Audit)?;
    let mut threads = Vec::new();
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new().name(name.into()).spawn(f)
    };
    if let Some(listener) = socket {
        let (signers, metrics, stop) = (
            Arc::clone(&signers),
            Arc::clone(&metrics),
            Arc::clone(&stop),
        );
        let name = config.name.clone();
        threads.push(spawn(
            "relay",
            Box::new(move || relay::serve(listener, &name, signers, metrics, stop)),
        ));
    }
    if let Some(listener) = metrics_listener {
        let (queue, signers, metrics, stop) = (
            Arc::clone(&queue),
            Arc::clone(&signers),
            Arc::clone(&metrics),
            Arc::clone(&stop),
        );
        threads.push(spawn(
            "metrics",
            Box::new(move || metrics::serve(listener, metrics, queue, signers, stop)),
        ));
    }
    {
        let (signers, metrics, stop) = (
            Arc::clone(&signers),
            Arc::clone(&metrics),
            Arc::clone(&stop),
        );
        let interval = Duration::from_secs(config.health.interval_s);
        threads.push(spawn(
            "health",
            Box::new(move || health::run(signers, metrics, interval, stop)),
        ));
    }
    if !witnesses.is_empty() {
        let (signers, metrics, stop) = (
            Arc::clone(&signers),
            Arc::clone(&metrics),
            Arc::clone(&stop),
        );
        let interval = Duration::from_secs(config.audit_sync_s);
        threads.push(spawn(
            "audit",
            Box::new(move || audit::run(signers, metrics, witnesses, interval, stop)),
        ));
    }
    if let Some(crl) = &config.crl {
        let publisher = crl::Publisher::new(
            crl.clone(),
            Arc::clone(&signers),
            Arc::clone(&metrics),
            Arc::clone(&revoked),
        );
        let stop = Arc::clone(&stop);
        threads.push(spawn("crl", Box::new(move || publisher.run(&stop))));
    }
    let dispatcher = Arc::new(dispatch::Dispatcher {
        queue,
        signers,
        config: config.queue.clone(),
        owner: config.name.clone(),
        metrics,
        revoked,
        trust: Arc::default(),
    });
    info!(name = %config.name, signers = config.signers.len(), "gateway running");
    dispatcher.run(&stop);
    for t in threads.into_iter().flatten() {
        let _ = t.join();
    }
    info!("gateway stopped");
    Ok(())
}
