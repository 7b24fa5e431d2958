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

pub use config::ReplicationConfig;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use signer_clock::Clock as _;
use signer_protocol::msg::{Check, HealthStatus};
use signer_repository::{Event, ReplicaState, Repository};
use signer_service::HealthSource;
use tracing::{debug, info, warn};

/// Events one publish round takes from the outbox.
const PUBLISH_BATCH: usize = 256;
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
    peer_state: Option<(Instant, PeerState)>,
    peer_error: Option<String>,
    peer_unreachable_since: Option<Instant>,
    consume_error: Option<String>,
    lags_us: VecDeque<i64>,
    applied_total: u64,
    duplicates_total: u64,
    held: usize,
    waiting_for: Option<u64>,
    last_progress: Option<Instant>,
    undecodable: u64,
    gone: u64,
    /// The twin's clock minus this signer's, milliseconds, at the last exchange.
    clock_drift_ms: Option<i64>,
}

struct Shared {
    config: ReplicationConfig,
    me: String,
    repo: Arc<Repository>,
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
    ) -> Result<Replicator, ReplicationError> {
        let me = repo.origin().to_string();
        if config.peer_id == me {
            return Err(ReplicationError::SelfPeer(me));
        }
        let shared = Arc::new(Shared {
            config: config.clone(),
            me,
            repo,
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

async fn connect(url: &str, name: String) -> Option<async_nats::Client> {
    let options = async_nats::ConnectOptions::new()
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
    let local = connect(&shared.config.local, format!("{}-local", shared.me)).await;
    let peer = connect(&shared.config.peer, format!("{}-peer", shared.me)).await;
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
    if let Ok(last) = stream
        .get_last_raw_message_by_subject(&events_subject(&shared.me))
        .await
    {
        if let Ok(e) = Event::decode(&last.payload) {
            // An event of an earlier repository with this id does not count.
            if e.origin == shared.me && e.epoch == state.epoch {
                from = from.max(e.seq);
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
        let batch = match shared.repo.events_after(after, PUBLISH_BATCH) {
            Ok(b) => b,
            Err(e) => {
                shared.status().local_error = Some(format!("outbox: {e}"));
                shared.pause(Duration::from_secs(1)).await;
                continue;
            }
        };
        if batch.is_empty() {
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let mut acks = Vec::with_capacity(batch.len());
        let mut failed = None;
        for (seq, bytes) in batch {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                "Nats-Msg-Id",
                format!("{}:{epoch:016x}:{seq}", shared.me).as_str(),
            );
            match js
                .publish_with_headers(subject.clone(), headers, bytes.into())
                .await
            {
                Ok(ack) => acks.push((seq, ack)),
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        // Advance only over the unbroken run of acknowledged events; the
        // rest is sent again (same message ids) in the next round.
        for (seq, ack) in acks {
            match ack.await {
                Ok(_) if failed.is_none() => published = Some(seq),
                Ok(_) => {}
                Err(e) => {
                    failed.get_or_insert(e.to_string());
                }
            }
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
            };
            if let Ok(bytes) = rmp_serde::to_vec_named(&answer) {
                let _ = client.publish(reply, bytes.into()).await;
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
        let asked = tokio::time::timeout(
            interval.max(Duration::from_secs(1)),
            client.request(state_subject(&shared.config.peer_id), bytes::Bytes::new()),
        )
        .await;
        let answer = match asked {
            Ok(Ok(m)) => rmp_serde::from_slice::<PeerState>(&m.payload)
                .map_err(|e| format!("unreadable state from the twin: {e}")),
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
                // What the twin has applied leaves the outbox.
                if let Some(upto) = applied.filter(|&a| a > trimmed) {
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

type Held = BTreeMap<u64, (Event, u64, jetstream::Message)>;

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
        let mut held = Held::new();
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

/// Keeps an event of the twin until the ones before it are applied.
async fn hold(shared: &Shared, held: &mut Held, m: jetstream::Message) {
    let stream_seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
    match Event::decode(&m.payload) {
        Ok(mut e) => {
            // The stream is the twin's: its events are the twin's, whatever
            // id the twin's repository was opened under (set-up commands
            // may name the signer differently).
            e.origin.clone_from(&shared.config.peer_id);
            held.insert(e.seq, (e, stream_seq, m));
        }
        Err(e) => {
            warn!(cause = %e, stream_seq, "replication: undecodable event on the twin's stream; dropped");
            shared.status().undecodable += 1;
            let _ = m.ack().await;
        }
    }
}

/// Applies the unbroken run after the last applied event, in one durable
/// transaction, then acknowledges it (and any repeats) to the twin's stream.
async fn apply_held(shared: &Shared, held: &mut Held) {
    let epoch = held.values().next().map_or(0, |(e, _, _)| e.epoch);
    let last = match shared.repo.replica_state() {
        Ok(s) => s
            .applied
            .get(&shared.config.peer_id)
            .filter(|a| a.2 == epoch)
            .map_or(0, |a| a.0),
        Err(e) => {
            shared.status().consume_error = Some(format!("repository: {e}"));
            return;
        }
    };
    let repeats: Vec<u64> = held.range(..=last).map(|(k, _)| *k).collect();
    for k in repeats {
        if let Some((_, _, m)) = held.remove(&k) {
            let _ = m.ack().await;
        }
        shared.status().duplicates_total += 1;
    }
    // Events the twin no longer keeps (it trimmed them after a twin with
    // this id applied them: this signer's repository was replaced) can never
    // come: go on after them and say so.
    let mut last = last;
    if !held.contains_key(&(last + 1)) {
        let kept_from = shared
            .status()
            .peer_state
            .as_ref()
            .map(|(_, p)| p.state.outbox_first.unwrap_or(p.state.own_seq + 1));
        if let (Some(from), Some(&first_held)) = (kept_from, held.keys().next()) {
            if from > last + 1 && first_held >= from {
                warn!(
                    missing = from - last - 1,
                    from = last + 1,
                    "replication: the twin no longer keeps events this signer never applied; seed this signer from the twin's backup (signerd repo seed)"
                );
                shared.status().gone += from - last - 1;
                last = from - 1;
            }
        }
    }
    let mut run = Vec::new();
    while let Some(entry) = held.remove(&(last + 1 + run.len() as u64)) {
        run.push(entry);
    }
    let mut next = last + 1;
    if !run.is_empty() {
        let events: Vec<(Event, u64)> = run.iter().map(|(e, s, _)| (e.clone(), *s)).collect();
        let repo = Arc::clone(&shared.repo);
        let applied = tokio::task::spawn_blocking(move || repo.apply_events(&events)).await;
        match applied {
            Ok(Ok(report)) => {
                let now = now_us();
                for (_, _, m) in &run {
                    let _ = m.ack().await;
                }
                let mut s = shared.status();
                for at in &report.applied_at_us {
                    if s.lags_us.len() == LAG_SAMPLES {
                        s.lags_us.pop_front();
                    }
                    s.lags_us.push_back((now - at).max(0));
                }
                s.applied_total += report.applied;
                next += run.len() as u64;
                s.last_progress = Some(Instant::now());
                s.consume_error = None;
            }
            Ok(Err(e)) => {
                warn!(cause = %e, "replication: applying the twin's events failed; they will come again");
                shared.status().consume_error = Some(format!("apply: {e}"));
            }
            Err(e) => {
                shared.status().consume_error = Some(format!("apply: {e}"));
            }
        }
    }
    let mut s = shared.status();
    s.held = held.len();
    s.waiting_for = held.keys().next().map(|_| next);
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
            if s.local_error.is_some() && waiting > 0 {
                HealthStatus::Degraded
            } else {
                HealthStatus::Ok
            },
            format!(
                "own events {} published {} waiting {}{}",
                state.own_seq,
                s.published,
                waiting,
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
        checks.push(check(
            "apply",
            if s.undecodable > 0 || stalled || s.gone > 0 {
                HealthStatus::Degraded
            } else {
                HealthStatus::Ok
            },
            format!(
                "applied {applied} of {} from {}; behind {}; lag p50 {:.1} ms p99 {:.1} ms over {}; held {}{}{}{}",
                twin_seq.map_or("?".to_string(), |t| t.to_string()),
                cfg.peer_id,
                behind.map_or("?".to_string(), |b| b.to_string()),
                lag.p50_ms,
                lag.p99_ms,
                lag.samples,
                s.held,
                s.waiting_for
                    .map(|w| format!(" waiting for event {w}"))
                    .unwrap_or_default(),
                if s.undecodable > 0 {
                    format!("; {} undecodable events dropped", s.undecodable)
                } else {
                    String::new()
                } + &if s.gone > 0 {
                    format!("; {} of the twin's events were gone before this signer had them: import the twin's export (signerd repo export/import)", s.gone)
                } else {
                    String::new()
                },
                s.consume_error
                    .as_ref()
                    .map(|e| format!("; {e}"))
                    .unwrap_or_default()
            ),
        ));
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
