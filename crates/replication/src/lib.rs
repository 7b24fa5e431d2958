//! Replication between twin signers over NATS JetStream.
//!
//! ```text
//!  signer A                                   signer B
//!  repository ─ outbox ─► publisher ─► nats A: stream SIGNER_A ◄─┐
//!                                             (work queue)       │ durable pull consumer
//!                                                                │ "twin_b", across the
//!  repository ◄─ apply ◄─ consumer ──► nats B: stream SIGNER_B   │ crossover cable
//!                            │                                   │
//!                            └── across the crossover cable ─────┴──── B's consumer
//!  state exchange: each side answers `signer.<id>.state` on its own server
//!  and asks the twin's; the answers compare positions and digests.
//! ```
//!
//! Each signer publishes its own changes, in order, to a stream on its own
//! nats-server (message id `<origin>:<epoch>:<seq>`, so a retried publish is stored
//! once), and reads the twin's stream from the twin's server with a durable
//! consumer. A change is acknowledged only after the transaction that
//! applies it is on disk; the stream drops it then (work-queue retention).
//! Events that arrive out of order wait until the gap is filled; repeats are
//! skipped by origin and sequence number. Signing never waits for any of
//! this: the outbox is written in the transaction that records the change.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod config;
pub mod seal;
pub mod tls;

/// A new NATS user nkey: (seed, public key). The seed goes to the signer's
/// `ca.replication.nats_seed` file, the public key into both nats-servers'
/// `authorization` blocks.
pub fn new_nats_user() -> (String, String) {
    let pair = nkeys::KeyPair::new_user();
    (pair.seed().unwrap_or_default(), pair.public_key())
}

pub use config::ReplicationConfig;
pub use seal::Seal;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use signer_clock::Clock as _;
use signer_keys::{PublicKey, SigningBackend};
use signer_protocol::msg::{Check, HealthStatus};
use signer_repository::{AuditEntry, Event, ReplicaState, Repository};
use signer_service::HealthSource;
use tracing::{debug, info, warn};

/// Events one publish round takes from the outbox (an issuance is two: the
/// certificate and its audit entry; [`PUBLISH_BATCH_BYTES`] usually ends a
/// round first).
const PUBLISH_BATCH: usize = 1024;
/// Largest batch message, in event bytes: half of nats-server's default
/// `max_payload` (1 MiB), which configs/nats-server.conf keeps.
const PUBLISH_BATCH_BYTES: usize = 512 * 1024;
/// How long a round waits for more events before it is sealed.
const LINGER: Duration = Duration::from_millis(20);
/// Events arriving within one [`LINGER`] that make a round wait once more
/// (400 per second).
const BUSY_EVENTS: usize = 8;
/// The longest a round waits for more events under load.
const MAX_LINGER: Duration = Duration::from_millis(200);
/// Events one apply transaction takes at most.
const APPLY_BATCH: usize = 1000;
/// Lag samples kept for the percentiles.
const LAG_SAMPLES: usize = 4096;

/// Why the replicator could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The configuration names this signer as its own twin.
    #[error("ca.replication.peer_id is this signer's own id ({0})")]
    SelfPeer(String),
    /// The runtime thread could not be started.
    #[error("replication thread: {0}")]
    Thread(String),
    /// The NATS credentials could not be read (`ca.replication.nats_seed`).
    #[error("{0}")]
    Credentials(String),
    /// The twin's public key could not be read (`ca.replication.peer_key`).
    #[error("{0}")]
    PeerKey(String),
    /// A nats-server certificate could not be read or does not fit its
    /// address (`ca.replication.tls_cert`, `peer_tls_cert`).
    #[error("{0}")]
    Tls(String),
    /// This signer's replication key is not usable.
    #[error("ca.replication.key {0}: {1}")]
    Key(String, String),
}

/// The subject a signer publishes its changes to.
pub fn events_subject(signer_id: &str) -> String {
    format!("signer.{signer_id}.events")
}

/// The subject a signer answers state requests on.
pub fn state_subject(signer_id: &str) -> String {
    format!("signer.{signer_id}.state")
}

/// The stream holding a signer's changes.
pub fn stream_name(signer_id: &str) -> String {
    format!(
        "SIGNER_{}",
        signer_id.to_ascii_uppercase().replace('-', "_")
    )
}

/// The durable consumer through which `reader` reads its twin's stream.
pub fn consumer_name(reader: &str) -> String {
    format!("twin_{}", reader.replace('-', "_"))
}

/// What a signer tells its twin about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerState {
    /// The answering signer.
    pub signer_id: String,
    /// Its repository's replication state.
    pub state: ReplicaState,
    /// Its own events confirmed stored by its nats-server.
    pub published: u64,
    /// Its clock when it answered, Unix milliseconds (the twins compare clocks).
    #[serde(default)]
    pub time_ms: i64,
    /// The message kinds it reads on this signer's stream beyond `batch`
    /// (`batch-lz4`): a signer publishes compressed rounds only to a twin
    /// that says it reads them, so the twins can be upgraded one at a time.
    #[serde(default)]
    pub reads: Vec<String>,
}

/// Lag percentiles of applied events (origin commit → applied here).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LagStats {
    /// Samples.
    pub samples: usize,
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Largest, milliseconds.
    pub max_ms: f64,
}

#[derive(Default)]
struct Status {
    published: u64,
    local_error: Option<String>,
    /// The outbox could not be read (a damaged repository): nothing more
    /// is published until it can.
    outbox_error: Option<String>,
    peer_state: Option<(Instant, PeerState)>,
    peer_error: Option<String>,
    peer_unreachable_since: Option<Instant>,
    consume_error: Option<String>,
    lags_us: VecDeque<i64>,
    applied_total: u64,
    duplicates_total: u64,
    held: usize,
    /// The next event to apply (epoch, sequence number), whether the event
    /// itself (false) or only its seal (true) is missing, and since when.
    waiting_for: Option<(u64, u64, bool, Instant)>,
    last_progress: Option<Instant>,
    /// Seals verified.
    seals_verified: u64,
    /// Messages on the twin's stream refused (forged, altered, unsealed
    /// where a seal says otherwise, undecodable), and the last cause.
    refused: u64,
    last_refusal: Option<(Instant, String)>,
    /// The twin's clock minus this signer's, milliseconds, at the last exchange.
    clock_drift_ms: Option<i64>,
    /// Whether the last round published went compressed (`batch-lz4`).
    last_round_lz4: bool,
}

struct Shared {
    config: ReplicationConfig,
    me: String,
    repo: Arc<Repository>,
    /// Signs this signer's seals (`config.key`).
    backend: Arc<dyn SigningBackend>,
    /// Verifies the twin's seals.
    peer_key: PublicKey,
    /// This signer's NATS nkey seed (`ca.replication.nats_seed`).
    nats_seed: Option<String>,
    /// TLS client configurations for the own and the twin's nats-server,
    /// each trusting only that server's pinned certificate.
    tls: Option<(rustls::ClientConfig, rustls::ClientConfig)>,
    wake: tokio::sync::Notify,
    stop: tokio::sync::Notify,
    stopping: AtomicBool,
    status: Mutex<Status>,
    started: Instant,
}

impl Shared {
    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Sleeps, or returns false at once when the replicator stops.
    async fn pause(&self, d: Duration) -> bool {
        if self.stopping() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => !self.stopping(),
            _ = self.stop.notified() => false,
        }
    }
}

/// Replication to and from the twin; runs on a thread of its own.
pub struct Replicator {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Replicator {
    /// Starts replicating `repo` (whose origin is this signer's id).
    pub fn start(
        config: &ReplicationConfig,
        repo: Arc<Repository>,
        backend: Arc<dyn SigningBackend>,
    ) -> Result<Replicator, ReplicationError> {
        let me = repo.origin().to_string();
        if config.peer_id == me {
            return Err(ReplicationError::SelfPeer(me));
        }
        let peer_key = config
            .peer_public_key()
            .map_err(ReplicationError::PeerKey)?;
        // The token may be absent now; its key is checked when it is there.
        if let Ok(own) = backend.public_key(&config.key) {
            if own == peer_key {
                return Err(ReplicationError::Key(
                    config.key.clone(),
                    "is the twin's key too: each signer needs its own".into(),
                ));
            }
        }
        let nats_seed = config
            .nats_user()
            .map_err(ReplicationError::Credentials)?
            .map(|(seed, _)| seed);
        let tls = match config.tls(None).map_err(ReplicationError::Tls)? {
            Some((own, peer)) => Some((
                own.client_config().map_err(ReplicationError::Tls)?,
                peer.client_config().map_err(ReplicationError::Tls)?,
            )),
            None => None,
        };
        let shared = Arc::new(Shared {
            config: config.clone(),
            me,
            repo,
            backend,
            peer_key,
            nats_seed,
            tls,
            wake: tokio::sync::Notify::new(),
            stop: tokio::sync::Notify::new(),
            stopping: AtomicBool::new(false),
            status: Mutex::new(Status::default()),
            started: Instant::now(),
        });
        {
            let waker = Arc::clone(&shared);
            shared
                .repo
                .set_listener(Arc::new(move || waker.wake.notify_one()));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ReplicationError::Thread(e.to_string()))?;
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("replication".into())
                .spawn(move || runtime.block_on(run(shared)))
                .map_err(|e| ReplicationError::Thread(e.to_string()))?
        };
        info!(peer = %config.peer_id, local = %config.local, peer_server = %config.peer, "replication started");
        Ok(Replicator {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Lag of the events applied recently.
    pub fn lag(&self) -> LagStats {
        let status = self.shared.status();
        lag_stats(&status.lags_us)
    }

    /// Forgets the lag samples (benchmarks measure one phase at a time).
    pub fn reset_lag(&self) {
        self.shared.status().lags_us.clear();
    }

    /// The twin's events this replicator has applied since it started
    /// (counted with their lag, so a benchmark that waits for this count
    /// knows their lag samples are in).
    pub fn applied(&self) -> u64 {
        self.shared.status().applied_total
    }

    /// This signer's events confirmed stored by its nats-server.
    pub fn published(&self) -> u64 {
        self.shared.status().published
    }

    /// Stops the replication thread (pending work stays in the outbox and
    /// in the twin's stream).
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.stop.notify_waiters();
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lag_stats(samples: &VecDeque<i64>) -> LagStats {
    if samples.is_empty() {
        return LagStats::default();
    }
    let mut v: Vec<i64> = samples.iter().copied().collect();
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    LagStats {
        samples: v.len(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

async fn connect(
    url: &str,
    name: String,
    seed: Option<String>,
    tls: Option<rustls::ClientConfig>,
) -> Option<async_nats::Client> {
    let options = match seed {
        Some(seed) => async_nats::ConnectOptions::with_nkey(seed),
        None => async_nats::ConnectOptions::new(),
    };
    let options = match tls {
        Some(config) => options.require_tls(true).tls_client_config(config),
        None => options,
    };
    let options = options
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100 * attempts as u64).min(1000))
        });
    match options.connect(url).await {
        Ok(c) => Some(c),
        Err(e) => {
            warn!(url, cause = %e, "cannot use NATS address");
            None
        }
    }
}

async fn run(shared: Arc<Shared>) {
    let local = connect(
        &shared.config.local,
        format!("{}-local", shared.me),
        shared.nats_seed.clone(),
        shared.tls.as_ref().map(|t| t.0.clone()),
    )
    .await;
    let peer = connect(
        &shared.config.peer,
        format!("{}-peer", shared.me),
        shared.nats_seed.clone(),
        shared.tls.as_ref().map(|t| t.1.clone()),
    )
    .await;
    let (Some(local), Some(peer)) = (local, peer) else {
        shared.status().local_error = Some("invalid NATS address".into());
        return;
    };
    let tasks = vec![
        tokio::spawn(publisher(Arc::clone(&shared), local.clone())),
        tokio::spawn(responder(Arc::clone(&shared), local.clone())),
        tokio::spawn(consumer(Arc::clone(&shared), peer.clone())),
        tokio::spawn(poller(Arc::clone(&shared), peer.clone())),
    ];
    while !shared.stopping() {
        tokio::select! {
            _ = shared.stop.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    let _ = local.drain().await;
    let _ = peer.drain().await;
}

fn stream_config(shared: &Shared) -> stream::Config {
    stream::Config {
        name: stream_name(&shared.me),
        subjects: vec![events_subject(&shared.me)],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        max_bytes: shared.config.stream_max_bytes,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// Where publishing resumes: after the last event the stream holds, or
/// from the oldest event the outbox still has (the twin has not applied it).
async fn resume_point(shared: &Shared, stream: &stream::Stream) -> u64 {
    let state = match shared.repo.replica_state() {
        Ok(s) => s,
        Err(e) => {
            warn!(cause = %e, "replication: repository state unreadable");
            return 0;
        }
    };
    let mut from = state.outbox_first.map(|f| f - 1).unwrap_or(state.own_seq);
    // Resume after the last round that was sealed: events published after
    // it (this signer stopped before sealing them) are sent and sealed
    // again. Only a seal this signer's key made counts.
    let own_key = shared.backend.public_key(&shared.config.key);
    if let (Ok(last), Ok(own_key)) = (
        stream
            .get_last_raw_message_by_subject(&events_subject(&shared.me))
            .await,
        own_key,
    ) {
        let seal = Seal::open(&last.payload, &shared.me, &own_key).or_else(|_| {
            seal::Batch::open(&last.payload, &shared.me, &own_key).map(|(seal, _)| seal)
        });
        if let Ok(seal) = seal {
            // A seal of an earlier repository with this id does not count.
            if seal.body.epoch == state.epoch {
                from = from.max(seal.last());
            }
        }
    }
    from
}

async fn publisher(shared: Arc<Shared>, client: async_nats::Client) {
    let js = jetstream::new(client);
    let subject = events_subject(&shared.me);
    let epoch = shared.repo.replica_state().map_or(0, |s| s.epoch);
    let mut published: Option<u64> = None;
    while !shared.stopping() {
        let after = match published {
            Some(p) => p,
            None => match js.get_or_create_stream(stream_config(&shared)).await {
                Ok(stream) => {
                    let p = resume_point(&shared, &stream).await;
                    debug!(from = p + 1, "replication: publishing resumes");
                    published = Some(p);
                    let mut s = shared.status();
                    s.published = s.published.max(p);
                    s.local_error = None;
                    p
                }
                Err(e) => {
                    shared.status().local_error = Some(format!("stream: {e}"));
                    shared.pause(Duration::from_millis(500)).await;
                    continue;
                }
            },
        };
        let mut batch = match shared.repo.events_after(after, PUBLISH_BATCH) {
            Ok(b) => {
                shared.status().outbox_error = None;
                b
            }
            Err(e) => {
                let first = shared
                    .status()
                    .outbox_error
                    .replace(e.to_string())
                    .is_none();
                if first {
                    tracing::error!(cause = %e, "replication: the outbox cannot be read; nothing more is published");
                }
                shared.pause(Duration::from_secs(1)).await;
                continue;
            }
        };
        if batch.is_empty() {
            let idle = tokio::select! {
                _ = shared.wake.notified() => false,
                _ = tokio::time::sleep(Duration::from_secs(1)) => true,
            };
            // A stream lost with its nats-server's store takes what the
            // twin had not read yet; with nothing new to publish, no
            // publish would fail to tell. Found missing, it is made again
            // and the outbox published anew from what the twin has not
            // applied.
            if idle && js.get_stream(stream_name(&shared.me)).await.is_err() {
                debug!("replication: the stream is gone; publishing again from the outbox");
                published = None;
            }
            continue;
        }
        linger(&shared, &mut batch).await;
        // Within the message size nats-server allows (at least one event).
        let mut bytes = 0;
        let keep = batch
            .iter()
            .take_while(|(_, e)| {
                bytes += e.len();
                bytes <= PUBLISH_BATCH_BYTES
            })
            .count()
            .max(1);
        batch.truncate(keep);
        // Advance only once the round is stored; otherwise it is sent again
        // (and sealed again: the twin skips what it applied).
        let failed = publish_round(&shared, &js, &subject, epoch, &batch)
            .await
            .err();
        if failed.is_none() {
            published = batch.last().map(|(seq, _)| *seq);
        }
        let retry = {
            let mut s = shared.status();
            s.published = s.published.max(published.unwrap_or(0));
            let retry = failed.is_some();
            s.local_error = failed;
            retry
        };
        if retry {
            // The stream may be gone (server store lost): find it again.
            published = None;
            shared.pause(Duration::from_millis(500)).await;
        }
    }
}

/// Waits a moment for the events committed right behind `batch`'s, so
/// that one message, one seal and one acknowledgement carry them all:
/// [`LINGER`] once, and again while events keep arriving at least as
/// fast as [`BUSY_EVENTS`] per [`LINGER`] (a signer under load), up to
/// [`MAX_LINGER`] or a full batch. At a steady trickle a round waits
/// [`LINGER`] only, which keeps the lag short; under load nats-server's
/// per-message work and the seal are shared by many events.
async fn linger(shared: &Shared, batch: &mut Vec<(u64, Vec<u8>)>) {
    let started = Instant::now();
    let mut bytes: usize = batch.iter().map(|(_, e)| e.len()).sum();
    while batch.len() < PUBLISH_BATCH && bytes < PUBLISH_BATCH_BYTES {
        tokio::time::sleep(LINGER).await;
        let Some(&(last, _)) = batch.last() else {
            return;
        };
        let Ok(more) = shared.repo.events_after(last, PUBLISH_BATCH - batch.len()) else {
            return;
        };
        let arrived = more.len();
        bytes += more.iter().map(|(_, e)| e.len()).sum::<usize>();
        batch.extend(more);
        if arrived < BUSY_EVENTS || started.elapsed() >= MAX_LINGER {
            return;
        }
    }
}

/// Signs the round's events with this signer's replication key and
/// publishes them and the seal as one message.
async fn publish_round(
    shared: &Shared,
    js: &jetstream::Context,
    subject: &str,
    epoch: u64,
    batch: &[(u64, Vec<u8>)],
) -> Result<(), String> {
    let backend = Arc::clone(&shared.backend);
    let (key, me, events) = (shared.config.key.clone(), shared.me.clone(), batch.to_vec());
    let (seal, events) = tokio::task::spawn_blocking(move || {
        Seal::make(backend.as_ref(), &key, &me, epoch, &events).map(|seal| (seal, events))
    })
    .await
    .map_err(|e| format!("seal: {e}"))?
    .map_err(|e| format!("seal: replication key {}: {e}", shared.config.key))?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Nats-Msg-Id",
        format!(
            "{}:{epoch:016x}:batch:{}:{}",
            shared.me,
            seal.body.first,
            seal.last()
        )
        .as_str(),
    );
    let encoded = seal::Batch::encode(&seal, &events);
    let lz4 = twin_reads_lz4(shared);
    let payload = if lz4 {
        headers.insert(seal::KIND_HEADER, seal::KIND_BATCH_LZ4);
        seal::Batch::compress(&encoded)
    } else {
        headers.insert(seal::KIND_HEADER, seal::KIND_BATCH);
        encoded
    };
    js.publish_with_headers(subject.to_string(), headers, payload.into())
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    shared.status().last_round_lz4 = lz4;
    Ok(())
}

/// Whether the twin's last signed state answer says it reads compressed
/// batches (a twin not heard from yet, or of an earlier version, gets
/// plain ones).
fn twin_reads_lz4(shared: &Shared) -> bool {
    shared
        .status()
        .peer_state
        .as_ref()
        .is_some_and(|(_, p)| p.reads_lz4())
}

impl PeerState {
    /// Whether this signer reads compressed batches (`batch-lz4`).
    pub fn reads_lz4(&self) -> bool {
        self.reads.iter().any(|k| k == seal::KIND_BATCH_LZ4)
    }
}

async fn responder(shared: Arc<Shared>, client: async_nats::Client) {
    while !shared.stopping() {
        let mut sub = match client.subscribe(state_subject(&shared.me)).await {
            Ok(s) => s,
            Err(e) => {
                debug!(cause = %e, "replication: cannot subscribe for state requests");
                shared.pause(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(request) = sub.next().await {
            let Some(reply) = request.reply else { continue };
            let state = match shared.repo.replica_state() {
                Ok(s) => s,
                Err(e) => {
                    warn!(cause = %e, "replication: repository state unreadable");
                    continue;
                }
            };
            let answer = PeerState {
                signer_id: shared.me.clone(),
                state,
                published: shared.status().published,
                time_ms: signer_clock::SystemClock.now_ms(),
                reads: vec![seal::KIND_BATCH_LZ4.to_string()],
            };
            let Ok(bytes) = rmp_serde::to_vec_named(&answer) else {
                continue;
            };
            // Signed over the asker's nonce, with the replication key.
            let backend = Arc::clone(&shared.backend);
            let key = shared.config.key.clone();
            let nonce = request.payload.to_vec();
            let signed = tokio::task::spawn_blocking(move || {
                seal::SignedState::make(backend.as_ref(), &key, &nonce, bytes)
            })
            .await;
            match signed {
                Ok(Ok(signed)) => {
                    let _ = client
                        .publish(reply, signer_protocol::encode_body(&signed).into())
                        .await;
                }
                Ok(Err(e)) => debug!(cause = %e, "replication: state answer not signed"),
                Err(e) => debug!(cause = %e, "replication: state answer not signed"),
            }
        }
    }
}

async fn poller(shared: Arc<Shared>, client: async_nats::Client) {
    let interval = Duration::from_secs(u64::from(shared.config.state_interval_secs));
    let own_epoch = shared.repo.replica_state().map_or(0, |s| s.epoch);
    let mut trimmed = 0;
    loop {
        let sent_ms = signer_clock::SystemClock.now_ms();
        let nonce: [u8; 16] = rand::random();
        let asked = tokio::time::timeout(
            interval.max(Duration::from_secs(1)),
            client.request(
                state_subject(&shared.config.peer_id),
                bytes::Bytes::copy_from_slice(&nonce),
            ),
        )
        .await;
        let answer = match asked {
            Ok(Ok(m)) => match seal::SignedState::open(&m.payload, &nonce, &shared.peer_key) {
                Ok(state) => rmp_serde::from_slice::<PeerState>(&state)
                    .map_err(|e| format!("unreadable state from the twin: {e}")),
                Err(cause) => {
                    let mut s = shared.status();
                    s.refused += 1;
                    s.last_refusal = Some((Instant::now(), cause.clone()));
                    drop(s);
                    tracing::error!(cause = %cause, peer = %shared.config.peer_id, "replication: refused a state answer");
                    Err(cause)
                }
            },
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer from the twin".into()),
        };
        match answer {
            Ok(peer) => {
                // Only positions in this repository's sequence count.
                let applied = peer
                    .state
                    .applied
                    .get(&shared.me)
                    .filter(|a| a.2 == own_epoch)
                    .map(|a| a.0);
                {
                    let mut s = shared.status();
                    // Against the middle of the round trip.
                    if peer.time_ms != 0 {
                        let now_ms = signer_clock::SystemClock.now_ms();
                        s.clock_drift_ms = Some(peer.time_ms - (sent_ms + now_ms) / 2);
                    }
                    if s.peer_unreachable_since.take().is_some() {
                        info!(peer = %peer.signer_id, "twin reachable again");
                    }
                    s.peer_error = None;
                    s.peer_state = Some((Instant::now(), peer));
                }
                // What the twin has applied leaves the outbox (never more than
                // this signer has published and sealed).
                let published = shared.status().published;
                if let Some(upto) = applied.map(|a| a.min(published)).filter(|&a| a > trimmed) {
                    let repo = Arc::clone(&shared.repo);
                    if let Ok(Ok(_)) =
                        tokio::task::spawn_blocking(move || repo.trim_events(upto)).await
                    {
                        trimmed = upto;
                    }
                }
            }
            Err(e) => {
                let mut s = shared.status();
                if s.peer_unreachable_since.is_none() {
                    warn!(peer = %shared.config.peer_id, cause = %e, "twin unreachable");
                    s.peer_unreachable_since = Some(Instant::now());
                }
                s.peer_error = Some(e);
            }
        }
        if !shared.pause(interval).await {
            return;
        }
    }
}

/// An event of the twin's stream, decoded, waiting to be applied.
struct Candidate {
    event: Event,
    digest: [u8; 32],
    stream_seq: u64,
    /// Its own message, to acknowledge; none for an event of a batch (the
    /// batch is acknowledged as a seal is, once all of it is applied).
    message: Option<jetstream::Message>,
}

/// What the consumer holds of the twin's stream: events by (epoch,
/// sequence number) — several candidates when a forgery arrives beside the
/// real event — the digests verified seals vouch for, and the seal messages
/// (acknowledged once every event they cover is applied).
#[derive(Default)]
struct Inbox {
    events: BTreeMap<(u64, u64), Vec<Candidate>>,
    sealed: BTreeMap<(u64, u64), [u8; 32]>,
    /// (epoch, last sequence number covered, message, when it arrived).
    seals: Vec<(u64, u64, jetstream::Message, Instant)>,
    refusals: Vec<String>,
    /// Stream sequence numbers held (a redelivery is not held twice).
    stream_seqs: std::collections::HashSet<u64>,
    /// Epochs of the twin this consumer moved on from, each with the
    /// highest stream sequence number seen when it did: a seal of such an
    /// epoch delivered late is done; one stored after that was published
    /// again, not by the twin.
    left: std::collections::HashMap<u64, u64>,
    /// The highest stream sequence number held so far.
    last_stream_seq: u64,
}

impl Inbox {
    /// Takes the held candidates of epoch `epoch` with sequence numbers in
    /// `seqs` out of the inbox.
    fn take(&mut self, epoch: u64, seqs: std::ops::RangeInclusive<u64>) -> Vec<Candidate> {
        let keys: Vec<(u64, u64)> = self
            .events
            .range((epoch, *seqs.start())..=(epoch, *seqs.end()))
            .map(|(k, _)| *k)
            .collect();
        keys.into_iter()
            .flat_map(|k| self.events.remove(&k).unwrap_or_default())
            .collect()
    }

    /// Acknowledges a held message (`Ack`, or `Term` for a refusal): it
    /// will not come again, so it is no longer remembered as held.
    async fn done(&mut self, m: &jetstream::Message, kind: jetstream::AckKind) {
        if let Ok(info) = m.info() {
            self.stream_seqs.remove(&info.stream_sequence);
        }
        let _ = m.ack_with(kind).await;
    }
}

async fn consumer(shared: Arc<Shared>, client: async_nats::Client) {
    let js = jetstream::new(client);
    let peer = shared.config.peer_id.clone();
    let durable = consumer_name(&shared.me);
    while !shared.stopping() {
        let consumer = async {
            let stream = js.get_stream(stream_name(&peer)).await?;
            stream
                .get_or_create_consumer::<consumer::pull::Config>(
                    &durable,
                    consumer::pull::Config {
                        durable_name: Some(durable.clone()),
                        ack_policy: consumer::AckPolicy::Explicit,
                        // Unacknowledged events (this signer stopped while
                        // applying them) come again after this long.
                        ack_wait: Duration::from_secs(5),
                        max_ack_pending: 20_000,
                        deliver_policy: consumer::DeliverPolicy::All,
                        ..Default::default()
                    },
                )
                .await
                .map_err(async_nats::Error::from)
        }
        .await;
        let consumer = match consumer {
            Ok(c) => c,
            Err(e) => {
                shared.status().consume_error = Some(format!("twin's stream: {e}"));
                shared.pause(Duration::from_millis(500)).await;
                continue;
            }
        };
        let messages = consumer
            .stream()
            .max_messages_per_batch(APPLY_BATCH)
            .heartbeat(Duration::from_secs(2))
            .expires(Duration::from_secs(10))
            .messages()
            .await;
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                shared.status().consume_error = Some(format!("twin's stream: {e}"));
                shared.pause(Duration::from_millis(500)).await;
                continue;
            }
        };
        shared.status().consume_error = None;
        let mut held = Inbox::default();
        loop {
            let first = tokio::select! {
                m = messages.next() => m,
                _ = shared.stop.notified() => return,
            };
            let mut batch = vec![first];
            while batch.len() < APPLY_BATCH {
                match messages.next().now_or_never() {
                    Some(m) => batch.push(m),
                    None => break,
                }
            }
            let mut broken = None;
            for item in batch {
                match item {
                    None => broken = Some("the twin's stream ended".to_string()),
                    Some(Err(e)) => broken = Some(e.to_string()),
                    Some(Ok(m)) => hold(&shared, &mut held, m).await,
                }
            }
            apply_held(&shared, &mut held).await;
            if let Some(e) = broken {
                debug!(cause = %e, "replication: consumer restarts");
                shared.status().consume_error = Some(e);
                shared.pause(Duration::from_millis(500)).await;
                break;
            }
        }
    }
}

/// Refuses a message of the twin's stream: it is never applied and never
/// counted as applied; JetStream is told to drop it (`Term`), not that it
/// was processed.
async fn refuse(shared: &Shared, held: &mut Inbox, m: Option<&jetstream::Message>, cause: String) {
    tracing::error!(cause = %cause, peer = %shared.config.peer_id, "replication: refused a message on the twin's stream");
    if let Some(m) = m {
        held.done(m, jetstream::AckKind::Term).await;
    }
    let mut s = shared.status();
    s.refused += 1;
    s.last_refusal = Some((Instant::now(), cause.clone()));
    held.refusals.push(cause);
}

/// [`refuse`] for message `stream_seq` of the twin's stream.
async fn refuse_message(
    shared: &Shared,
    held: &mut Inbox,
    m: &jetstream::Message,
    stream_seq: u64,
    cause: &str,
) {
    let cause = format!("stream message {stream_seq}: {cause}");
    refuse(shared, held, Some(m), cause).await;
}

/// Keeps a message of the twin's stream: a seal is verified at once (and
/// refused if it does not verify); an event waits for its seal and for the
/// events before it.
async fn hold(shared: &Shared, held: &mut Inbox, m: jetstream::Message) {
    let stream_seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
    if !held.stream_seqs.insert(stream_seq) {
        // Redelivered while held (its acknowledgement is still owed).
        return;
    }
    held.last_stream_seq = held.last_stream_seq.max(stream_seq);
    let kind_is = |kind: &str| {
        m.headers
            .as_ref()
            .and_then(|h| h.get(seal::KIND_HEADER))
            .is_some_and(|v| v.as_str() == kind)
    };
    let lz4 = kind_is(seal::KIND_BATCH_LZ4);
    if lz4 || kind_is(seal::KIND_BATCH) {
        let payload = if lz4 {
            seal::Batch::decompress(&m.payload).map(bytes::Bytes::from)
        } else {
            Ok(m.payload.clone())
        };
        match payload {
            Ok(payload) => hold_batch(shared, held, m, &payload, stream_seq).await,
            Err(cause) => refuse_message(shared, held, &m, stream_seq, &cause).await,
        }
        return;
    }
    if kind_is(seal::KIND_SEAL) {
        match Seal::open(&m.payload, &shared.config.peer_id, &shared.peer_key) {
            Ok(seal) => keep_seal(shared, held, &seal, m),
            Err(cause) => refuse_message(shared, held, &m, stream_seq, &cause).await,
        }
        return;
    }
    match Event::decode(&m.payload) {
        Ok(mut e) => {
            // The stream is the twin's: its events are the twin's, whatever
            // id the twin's repository was opened under (set-up commands
            // may name the signer differently). The seal binds the bytes.
            e.origin.clone_from(&shared.config.peer_id);
            let digest = seal::event_digest(&m.payload);
            held.events
                .entry((e.epoch, e.seq))
                .or_default()
                .push(Candidate {
                    event: e,
                    digest,
                    stream_seq,
                    message: Some(m),
                });
        }
        Err(e) => {
            refuse_message(
                shared,
                held,
                &m,
                stream_seq,
                &format!("undecodable event: {e}"),
            )
            .await;
        }
    }
}

/// Keeps a sealed batch: its seal is verified and each event checked
/// against it at once (anything amiss refuses the whole message); its
/// events then wait like any event, and the message is acknowledged as a
/// seal is, once all of them are applied.
async fn hold_batch(
    shared: &Shared,
    held: &mut Inbox,
    m: jetstream::Message,
    payload: &[u8],
    stream_seq: u64,
) {
    let opened = seal::Batch::open(payload, &shared.config.peer_id, &shared.peer_key).and_then(
        |(seal, events)| {
            let decoded = events
                .iter()
                .enumerate()
                .map(|(i, bytes)| {
                    Event::decode(bytes).map_err(|e| {
                        format!("undecodable event {}: {e}", seal.body.first + i as u64)
                    })
                })
                .collect::<Result<Vec<Event>, String>>()?;
            // Each event where its seal puts it.
            for (i, e) in decoded.iter().enumerate() {
                let at = seal.body.first + i as u64;
                if (e.epoch, e.seq) != (seal.body.epoch, at) {
                    return Err(format!(
                        "the batch's event {at} of epoch {:016x} names event {} of epoch {:016x}",
                        seal.body.epoch, e.seq, e.epoch
                    ));
                }
            }
            Ok((seal, decoded))
        },
    );
    let (seal, decoded) = match opened {
        Ok(o) => o,
        Err(cause) => {
            refuse_message(shared, held, &m, stream_seq, &cause).await;
            return;
        }
    };
    // Batch::open checked each event against the seal's digest for it.
    for (mut e, d) in decoded.into_iter().zip(&seal.body.digests) {
        e.origin.clone_from(&shared.config.peer_id);
        let mut digest = [0u8; 32];
        digest.copy_from_slice(d);
        held.events
            .entry((e.epoch, e.seq))
            .or_default()
            .push(Candidate {
                event: e,
                digest,
                stream_seq,
                message: None,
            });
    }
    keep_seal(shared, held, &seal, m);
}

/// Keeps a verified seal: the digests it vouches for, by (epoch, sequence
/// number), and its message, acknowledged once all it covers is applied.
fn keep_seal(shared: &Shared, held: &mut Inbox, seal: &Seal, m: jetstream::Message) {
    for (i, d) in seal.body.digests.iter().enumerate() {
        let mut digest = [0u8; 32];
        digest.copy_from_slice(d);
        held.sealed
            .insert((seal.body.epoch, seal.body.first + i as u64), digest);
    }
    shared.status().seals_verified += 1;
    held.seals
        .push((seal.body.epoch, seal.last(), m, Instant::now()));
}

/// Applies the unbroken run of sealed events after the last applied one,
/// in one durable transaction, then acknowledges it (and any repeats and
/// the seals now fully applied) to the twin's stream. An event whose
/// digest differs from its verified seal is refused; an event without a
/// seal waits. A gap is never skipped.
async fn apply_held(shared: &Shared, held: &mut Inbox) {
    let (mut epoch, mut last) = match shared.repo.replica_state() {
        Ok(s) => s
            .applied
            .get(&shared.config.peer_id)
            .map_or((None, 0), |a| (Some(a.2), a.0)),
        Err(e) => {
            shared.status().consume_error = Some(format!("repository: {e}"));
            return;
        }
    };
    // Candidates that contradict a verified seal are forgeries or damage.
    let keys: Vec<(u64, u64)> = held.events.keys().copied().collect();
    for key in keys {
        let Some(&want) = held.sealed.get(&key) else {
            continue;
        };
        let Some(candidates) = held.events.remove(&key) else {
            continue;
        };
        let mut kept = Vec::new();
        for c in candidates {
            if c.digest == want && kept.is_empty() {
                kept.push(c);
            } else if c.digest == want {
                // The same event delivered twice.
                if let Some(m) = &c.message {
                    held.done(m, jetstream::AckKind::Ack).await;
                }
            } else {
                let cause = format!(
                    "event {} of epoch {:016x} (stream message {}) differs from the event the twin sealed",
                    key.1, key.0, c.stream_seq
                );
                refuse(shared, held, c.message.as_ref(), cause).await;
            }
        }
        if !kept.is_empty() {
            held.events.insert(key, kept);
        }
    }
    // Repeats of what was applied (redelivery after a restart).
    if let Some(e) = epoch {
        for c in held.take(e, 0..=last) {
            if let Some(m) = &c.message {
                held.done(m, jetstream::AckKind::Ack).await;
            }
            shared.status().duplicates_total += 1;
        }
    }
    // A new epoch (the twin's repository was replaced) starts at 1, where
    // the twin sealed it, and only when the twin's latest signed state
    // (an answer to this signer's fresh nonce) says it is in that epoch:
    // a batch its former repository sealed, kept and published again, is
    // authentic but not the twin's present, and never taken for it.
    let attested = shared
        .status()
        .peer_state
        .as_ref()
        .map(|(at, p)| (*at, p.state.epoch));
    let continues = epoch.is_some_and(|e| held.sealed.contains_key(&(e, last + 1)));
    if !continues {
        if let Some(&(new_epoch, _)) = held.sealed.keys().find(|(e, seq)| {
            Some(*e) != epoch && *seq == 1 && attested.is_some_and(|(_, now)| now == *e)
        }) {
            if let Some(old) = epoch {
                warn!(
                    epoch = format!("{new_epoch:016x}"),
                    "replication: the twin's repository is new: its sequence starts again"
                );
                held.left.insert(old, held.last_stream_seq);
            }
            epoch = Some(new_epoch);
            last = 0;
        }
    }
    let mut run = Vec::new();
    if let Some(e) = epoch {
        while held.sealed.contains_key(&(e, last + 1 + run.len() as u64)) {
            let key = (e, last + 1 + run.len() as u64);
            match held.events.remove(&key).and_then(|mut c| c.pop()) {
                Some(c) => run.push(c),
                None => break,
            }
        }
    }
    if !run.is_empty() {
        let events: Vec<(Event, u64)> = run
            .iter()
            .map(|c| (c.event.clone(), c.stream_seq))
            .collect();
        let repo = Arc::clone(&shared.repo);
        let applied = tokio::task::spawn_blocking(move || repo.apply_events(&events)).await;
        match applied {
            Ok(Ok(report)) => {
                // Counted as applied when committed, before the (slower)
                // acknowledgements: health and the lag figures then agree
                // with the repository.
                let now = now_us();
                {
                    let mut s = shared.status();
                    for at in &report.applied_at_us {
                        if s.lags_us.len() == LAG_SAMPLES {
                            s.lags_us.pop_front();
                        }
                        s.lags_us.push_back((now - at).max(0));
                    }
                    s.applied_total += report.applied;
                    s.last_progress = Some(Instant::now());
                    s.consume_error = None;
                }
                for c in &run {
                    if let Some(m) = &c.message {
                        held.done(m, jetstream::AckKind::Ack).await;
                    }
                }
                last += run.len() as u64;
            }
            Ok(Err(e)) => {
                warn!(cause = %e, "replication: applying the twin's events failed; they will come again");
                shared.status().consume_error = Some(format!("apply: {e}"));
                // Put them back: the same messages are applied next round.
                for c in run {
                    held.events
                        .entry((c.event.epoch, c.event.seq))
                        .or_default()
                        .push(c);
                }
            }
            Err(e) => {
                shared.status().consume_error = Some(format!("apply: {e}"));
            }
        }
    }
    // Seals whose events are all applied (or of an epoch left behind) are
    // done. A seal of another epoch than the one applied is a replay of the
    // twin's former repository when it was stored after this consumer left
    // that epoch, or when the twin said after it arrived that it is in the
    // applied epoch: refused, with the events it covers.
    let mut open = Vec::new();
    let mut replayed = Vec::new();
    for (e, covered_last, m, arrived) in std::mem::take(&mut held.seals) {
        let stream_seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
        let other = epoch.is_some() && Some(e) != epoch;
        let late = held.left.get(&e).is_some_and(|&upto| stream_seq > upto);
        let not_present = attested.is_some_and(|(at, now)| at > arrived && Some(now) == epoch);
        if other && (late || (!held.left.contains_key(&e) && not_present)) {
            replayed.push((e, m, stream_seq));
        } else if (Some(e) == epoch && covered_last <= last) || held.left.contains_key(&e) {
            held.done(&m, jetstream::AckKind::Ack).await;
        } else {
            open.push((e, covered_last, m, arrived));
        }
    }
    held.seals = open;
    for (e, m, stream_seq) in replayed {
        if !held.seals.iter().any(|s| s.0 == e) {
            held.sealed.retain(|&(se, _), _| se != e);
            for c in held.take(e, 0..=u64::MAX) {
                if let Some(lone) = &c.message {
                    held.done(lone, jetstream::AckKind::Term).await;
                }
            }
        }
        let cause = format!(
            "stream message {stream_seq}: a seal of the twin's epoch {e:016x}, published again: \
             the twin's repository is in epoch {:016x}",
            epoch.unwrap_or(0)
        );
        refuse(shared, held, Some(&m), cause).await;
    }
    if let Some(e) = epoch {
        held.sealed.retain(|&(se, seq), _| se != e || seq > last);
    }
    if !held.refusals.is_empty() {
        let causes = std::mem::take(&mut held.refusals);
        shared.repo.audit(
            AuditEntry::new("replication", "twin message refused", "refused")
                .fact("peer", shared.config.peer_id.clone())
                .fact("count", causes.len().to_string())
                .fact("cause", causes[0].clone()),
        );
    }
    let mut s = shared.status();
    s.held = held.events.values().map(Vec::len).sum();
    // Before anything of the twin was applied, the epoch it sealed (or, for
    // lack of a seal, the epoch its held events name) is the one waited in.
    let current = epoch
        .or_else(|| held.sealed.keys().next().map(|k| k.0))
        .or_else(|| held.events.keys().next().map(|k| k.0))
        .unwrap_or(0);
    let next = (current, last + 1);
    // Waiting means: the next event is held without its seal, or something
    // after it in the current epoch is held or sealed (a gap). Unsealed
    // messages of epochs the twin never sealed wait too, but nothing waits
    // for them.
    let has_next = held.events.contains_key(&next);
    let later = held
        .events
        .range((next.0, next.1 + 1)..=(next.0, u64::MAX))
        .next()
        .is_some()
        || held
            .seals
            .iter()
            .any(|(e, covered_last, _, _)| *e == next.0 && *covered_last >= next.1);
    let waiting = (has_next || later).then_some((next.0, next.1, has_next));
    s.waiting_for = match (waiting, s.waiting_for) {
        (None, _) => None,
        (Some((e, q, seal)), Some((pe, pq, pseal, since))) if (e, q, seal) == (pe, pq, pseal) => {
            Some((e, q, seal, since))
        }
        (Some((e, q, seal)), _) => Some((e, q, seal, Instant::now())),
    };
}

impl HealthSource for Replicator {
    fn checks(&self) -> Vec<Check> {
        let sh = &self.shared;
        let cfg = &sh.config;
        let warn_after = Duration::from_secs(u64::from(cfg.lag_warning_secs));
        let state = sh.repo.replica_state();
        let s = sh.status();
        let mut checks = Vec::new();
        let check = |name: &str, status: HealthStatus, detail: String| Check {
            name: format!("replication:{name}"),
            status,
            detail,
        };
        let fresh = s.peer_state.as_ref().filter(|(at, _)| {
            at.elapsed() < Duration::from_secs(3 * u64::from(cfg.state_interval_secs) + 2)
        });
        checks.push(match (fresh, &s.peer_unreachable_since) {
            (Some((at, _)), _) => check(
                "peer",
                HealthStatus::Ok,
                format!(
                    "twin {} connected via {} (state {:.1} s ago)",
                    cfg.peer_id,
                    cfg.peer,
                    at.elapsed().as_secs_f64()
                ),
            ),
            (None, since) => {
                let down = since.map_or(sh.started.elapsed(), |t| t.elapsed());
                check(
                    "peer",
                    HealthStatus::Degraded,
                    format!(
                        "twin {} not reachable via {} for {} s: {}",
                        cfg.peer_id,
                        cfg.peer,
                        down.as_secs(),
                        s.peer_error.as_deref().unwrap_or("no answer yet")
                    ),
                )
            }
        });
        let Ok(state) = state else {
            checks.push(check(
                "state",
                HealthStatus::Failing,
                "repository state unreadable".into(),
            ));
            return checks;
        };
        let waiting = state.own_seq.saturating_sub(s.published);
        checks.push(check(
            "publish",
            if s.outbox_error.is_some() {
                HealthStatus::Failing
            } else if s.local_error.is_some() && waiting > 0 {
                HealthStatus::Degraded
            } else {
                HealthStatus::Ok
            },
            format!(
                "own events {} published {} waiting {}{}{}{}",
                state.own_seq,
                s.published,
                waiting,
                if s.last_round_lz4 {
                    "; rounds compressed (lz4)"
                } else {
                    ""
                },
                s.outbox_error
                    .as_ref()
                    .map(|e| format!("; outbox unreadable: {e}"))
                    .unwrap_or_default(),
                s.local_error
                    .as_ref()
                    .map(|e| format!("; nats-server {}: {e}", cfg.local))
                    .unwrap_or_default()
            ),
        ));
        let twin_epoch = fresh.map(|(_, p)| p.state.epoch);
        let applied = state
            .applied
            .get(&cfg.peer_id)
            .filter(|a| twin_epoch.is_none_or(|e| e == a.2))
            .map_or(0, |a| a.0);
        let twin_seq = fresh.map(|(_, p)| p.state.own_seq);
        let behind = twin_seq.map(|t| t.saturating_sub(applied));
        let lag = lag_stats(&s.lags_us);
        let stalled = behind.is_some_and(|b| b > 0)
            && s.last_progress
                .map_or(sh.started.elapsed(), |t| t.elapsed())
                > warn_after;
        // Events waiting for the one before them, or for their seal: degraded
        // after `held_warning_secs`, failing after twice that.
        let bound = Duration::from_secs(u64::from(cfg.held_warning_secs));
        let (wait_status, wait_detail) = match s.waiting_for {
            None => (HealthStatus::Ok, String::new()),
            Some((e, seq, has_event, since)) => {
                let waited = since.elapsed();
                let missing = if has_event {
                    format!("the twin's seal of event {seq}")
                } else {
                    format!("event {seq}")
                };
                let gone = fresh
                    .and_then(|(_, p)| p.state.outbox_first)
                    .filter(|&first| !has_event && first > seq)
                    .map(|_| {
                        "; the twin no longer keeps it: seed this signer from the twin's backup (signerd repo seed)"
                    })
                    .unwrap_or_default();
                let status = if waited >= 2 * bound {
                    HealthStatus::Failing
                } else if waited >= bound {
                    HealthStatus::Degraded
                } else {
                    HealthStatus::Ok
                };
                (
                    status,
                    format!(
                        " waiting {} s for {missing} (epoch {e:016x}){gone}",
                        waited.as_secs()
                    ),
                )
            }
        };
        checks.push(check(
            "apply",
            match wait_status {
                HealthStatus::Ok if stalled => HealthStatus::Degraded,
                other => other,
            },
            format!(
                "applied {applied} of {} from {}; behind {}; lag p50 {:.1} ms p99 {:.1} ms over {}; held {}{}{}",
                twin_seq.map_or("?".to_string(), |t| t.to_string()),
                cfg.peer_id,
                behind.map_or("?".to_string(), |b| b.to_string()),
                lag.p50_ms,
                lag.p99_ms,
                lag.samples,
                s.held,
                wait_detail,
                s.consume_error
                    .as_ref()
                    .map(|e| format!("; {e}"))
                    .unwrap_or_default()
            ),
        ));
        // Refusals stay visible for an hour: someone forged, altered or
        // replayed messages on the twin's stream, or it is damaged.
        let recent = s
            .last_refusal
            .as_ref()
            .filter(|(at, _)| at.elapsed() < Duration::from_secs(3600));
        checks.push(match recent {
            Some((at, cause)) => check(
                "authentication",
                HealthStatus::Failing,
                format!(
                    "refused {} message(s) on {}'s stream that its key did not seal; last {} s ago: {cause}",
                    s.refused,
                    cfg.peer_id,
                    at.elapsed().as_secs()
                ),
            ),
            None => check(
                "authentication",
                HealthStatus::Ok,
                format!(
                    "{} seal(s) of {} verified; {} message(s) refused in all",
                    s.seals_verified, cfg.peer_id, s.refused
                ),
            ),
        });
        checks.push(match fresh {
            None => check(
                "agreement",
                HealthStatus::Degraded,
                "unknown: no recent state from the twin".into(),
            ),
            Some((_, peer)) => {
                let twin_applied = peer
                    .state
                    .applied
                    .get(&sh.me)
                    .filter(|a| a.2 == state.epoch)
                    .map_or(0, |a| a.0);
                let caught_up = peer.state.own_seq == applied && state.own_seq == twin_applied;
                if twin_applied > state.own_seq {
                    check(
                        "agreement",
                        HealthStatus::Failing,
                        format!(
                            "the twin has applied {twin_applied} of this signer's events but this repository holds {}: \
                             it is older than what it sent (restored from a copy?); see operations.md, restoring from backup",
                            state.own_seq
                        ),
                    )
                } else if !caught_up {
                    check(
                        "agreement",
                        HealthStatus::Ok,
                        format!(
                            "catching up: this signer lacks {} of the twin's events, the twin {} of ours",
                            peer.state.own_seq.saturating_sub(applied),
                            state.own_seq.saturating_sub(twin_applied)
                        ),
                    )
                } else if peer.state.digests == state.digests {
                    let issued: u64 = state.digests.values().map(|d| d.issued).sum();
                    let revoked: u64 = state.digests.values().map(|d| d.revoked).sum();
                    check(
                        "agreement",
                        HealthStatus::Ok,
                        format!(
                            "in sync: equal digests for {} issuers ({issued} issued, {revoked} revoked)",
                            state.digests.len()
                        ),
                    )
                } else {
                    let differing: Vec<String> = state
                        .digests
                        .keys()
                        .chain(peer.state.digests.keys())
                        .filter(|k| state.digests.get(*k) != peer.state.digests.get(*k))
                        .map(|k| {
                            format!(
                                "{k}: here {} twin {}",
                                state.digests.get(k).map_or("-".into(), |d| d.summary()),
                                peer.state.digests.get(k).map_or("-".into(), |d| d.summary())
                            )
                        })
                        .collect();
                    check(
                        "agreement",
                        HealthStatus::Failing,
                        format!("DIVERGED: {}", differing.join("; ")),
                    )
                }
            }
        });
        if let Some(drift) = s.clock_drift_ms {
            let limit_ms = i64::from(cfg.clock_drift_warning_secs) * 1000;
            checks.push(check(
                "clock",
                if drift.abs() > limit_ms {
                    HealthStatus::Degraded
                } else {
                    HealthStatus::Ok
                },
                format!(
                    "twin {}'s clock is {:+.1} s from this signer's (limit {} s)",
                    cfg.peer_id,
                    drift as f64 / 1000.0,
                    cfg.clock_drift_warning_secs
                ),
            ));
        }
        if state.conflicts > 0 {
            let first = sh
                .repo
                .conflicts()
                .ok()
                .and_then(|c| c.into_iter().next())
                .map(|c| {
                    format!(
                        "; first: request id {} is {}/{} here and {}/{} on {}",
                        c.request_id, c.local.0, c.local.1, c.remote.0, c.remote.1, c.origin
                    )
                })
                .unwrap_or_default();
            checks.push(check(
                "conflicts",
                HealthStatus::Failing,
                format!(
                    "{} request ids were issued on both twins with different certificates{first}",
                    state.conflicts
                ),
            ));
        }
        checks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_twin_of_an_earlier_version_gets_plain_batches() {
        // Its state answer, as it encodes it: no `reads`.
        #[derive(serde::Serialize)]
        struct Earlier {
            signer_id: String,
            state: ReplicaState,
            published: u64,
            time_ms: i64,
        }
        let earlier = rmp_serde::to_vec_named(&Earlier {
            signer_id: "signer-b".into(),
            state: ReplicaState::default(),
            published: 7,
            time_ms: 1,
        })
        .unwrap();
        let read: PeerState = rmp_serde::from_slice(&earlier).unwrap();
        assert_eq!(read.published, 7);
        assert!(!read.reads_lz4());
        // This version's answer says it reads them, and an earlier version
        // reads that answer (the field it does not know is skipped).
        let now = PeerState {
            reads: vec![seal::KIND_BATCH_LZ4.into()],
            ..read
        };
        assert!(now.reads_lz4());
        let bytes = rmp_serde::to_vec_named(&now).unwrap();
        #[derive(serde::Deserialize)]
        struct EarlierRead {
            published: u64,
        }
        assert_eq!(
            rmp_serde::from_slice::<EarlierRead>(&bytes)
                .unwrap()
                .published,
            7
        );
    }

    #[test]
    fn names_are_valid_for_nats() {
        assert_eq!(stream_name("signer-a"), "SIGNER_SIGNER_A");
        assert_eq!(consumer_name("signer-b"), "twin_signer_b");
        assert_eq!(events_subject("a"), "signer.a.events");
    }

    #[test]
    fn lag_percentiles() {
        let samples: VecDeque<i64> = (1..=100).map(|i| i * 1000).collect();
        let lag = lag_stats(&samples);
        assert_eq!(lag.samples, 100);
        assert_eq!(lag.p50_ms, 51.0);
        assert_eq!(lag.p99_ms, 99.0);
        assert_eq!(lag.max_ms, 100.0);
    }
}
