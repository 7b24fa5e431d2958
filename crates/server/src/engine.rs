//! The protocol engine: frames in, frames out, every request executed once.
//!
//! ```text
//! frame ─► envelope ─► (id, digest) in cache? ─ done ──► replay the stored frames
//!                                 │            └ running ► drop (its answer will come)
//!                                 └ new ─► route ─► inline or worker pool ─► store + send
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use signer_frame::FrameError;
use signer_protocol::{
    decode_body, decode_request, encode_body, encode_response, msg, Command, EnvelopeError,
    Request, Status, DEFAULT_MAX_FRAME, VERSION,
};
use tracing::{debug, info, warn};

use signer_protocol::calls;
use signer_service::{
    audit_of, Answer, Audit, AuditSink, CallContext, CommandOutcome, Completion, Failure,
    HealthSource, Placement, Route, Router,
};

/// Limits of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This signer's name.
    pub signer_id: String,
    /// Largest frame content accepted and sent.
    pub max_frame: u32,
    /// Requests that may be executing or queued at once.
    pub max_in_flight: u32,
    /// Completed responses kept for retries, by count.
    pub cache_entries: usize,
    /// Completed responses kept for retries, by encoded size.
    pub cache_bytes: usize,
    /// Worker threads for pooled commands.
    pub workers: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            signer_id: "signer".into(),
            max_frame: 16384,
            max_in_flight: 16,
            cache_entries: 4096,
            cache_bytes: 64 << 20,
            workers: 2,
        }
    }
}

#[derive(Default)]
struct Counters {
    frames_ok: AtomicU64,
    bad_crc: AtomicU64,
    bad_cobs: AtomicU64,
    oversize: AtomicU64,
    short: AtomicU64,
    malformed: AtomicU64,
    sent: AtomicU64,
    /// Answers finished off the engine's threads that found the outgoing
    /// queue full (sent again when the client retransmits).
    deferred_dropped: AtomicU64,
    replayed: AtomicU64,
    duplicates: AtomicU64,
    busy: AtomicU64,
    opens: AtomicU64,
    executed: AtomicU64,
}

type Digest32 = [u8; 32];

enum Entry {
    Running {
        digest: Digest32,
    },
    Done {
        digest: Digest32,
        frames: Arc<Vec<Vec<u8>>>,
    },
}

#[derive(Default)]
struct Cache {
    entries: HashMap<u64, Entry>,
    order: VecDeque<u64>,
    bytes: usize,
    running: u32,
}

struct Job {
    ctx: CallContext,
    digest: Digest32,
    body: Vec<u8>,
    out: Outbox,
}

/// What the workers take: a request, or a liveness probe answered by
/// whichever worker is free first.
enum Work {
    Request(Job),
    Probe(Sender<()>),
}

/// The engine. Cheap to share: clone the `Arc`.
pub struct Engine {
    config: EngineConfig,
    /// `hello` and `health`, served from the start.
    built_in: Router,
    /// The services' commands, once they are ready ([`Engine::ready`]):
    /// until then every other command is answered `starting`.
    services: std::sync::OnceLock<Router>,
    cache: Mutex<Cache>,
    counters: Counters,
    peer_max_frame: AtomicU32,
    started: Instant,
    health: Mutex<Vec<Arc<dyn HealthSource>>>,
    jobs: Mutex<Option<Sender<Work>>>,
    stopping: AtomicBool,
    stop: Arc<AtomicBool>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    audit: std::sync::OnceLock<Arc<dyn AuditSink>>,
}

/// Where encoded frames (wire bytes, delimiter included) go. Bounded: when
/// the peer does not read, senders wait, and so the link reader stops taking
/// input instead of queueing answers without limit.
pub type Outbox = SyncSender<Vec<u8>>;

/// Frames the outgoing queue holds before senders wait.
pub const OUTBOX_FRAMES: usize = 256;

/// A new outgoing queue.
pub fn outbox() -> (Outbox, Receiver<Vec<u8>>) {
    mpsc::sync_channel(OUTBOX_FRAMES)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic inside a handler is caught per job; a poisoned lock only means
    // a panic happened while held, and the data is still consistent enough to serve.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn digest(command: Command, body: &[u8]) -> Digest32 {
    let mut h = Sha256::new();
    h.update(command.0.to_be_bytes());
    h.update(body);
    h.finalize().into()
}

impl Engine {
    /// Builds the engine, starts its worker threads and serves `router`'s
    /// commands.
    pub fn start(
        config: EngineConfig,
        router: Router,
        health: Vec<Arc<dyn HealthSource>>,
    ) -> Arc<Self> {
        let engine = Self::starting(config, Vec::new());
        engine.ready(router, health);
        engine
    }

    /// Builds the engine and starts its worker threads while the services
    /// are still starting (the repository being checked, the HSM logged
    /// in): `hello` and `health` (from `health`, which says what the
    /// start waits for) are answered, every other command `starting`
    /// without effect, until [`Engine::ready`].
    pub fn starting(config: EngineConfig, health: Vec<Arc<dyn HealthSource>>) -> Arc<Self> {
        let (tx, rx) = mpsc::channel::<Work>();
        let engine = Arc::new_cyclic(|weak: &std::sync::Weak<Engine>| Engine {
            peer_max_frame: AtomicU32::new(DEFAULT_MAX_FRAME.min(config.max_frame)),
            config,
            built_in: Self::built_in(weak.clone()),
            services: std::sync::OnceLock::new(),
            cache: Mutex::new(Cache::default()),
            counters: Counters::default(),
            started: Instant::now(),
            health: Mutex::new(health),
            jobs: Mutex::new(Some(tx)),
            stopping: AtomicBool::new(false),
            stop: Arc::new(AtomicBool::new(false)),
            workers: Mutex::new(Vec::new()),
            audit: std::sync::OnceLock::new(),
        });
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = lock(&engine.workers);
        for worker in 0..engine.config.workers.max(1) {
            let rx = Arc::clone(&rx);
            let weak = Arc::downgrade(&engine);
            let spawned = std::thread::Builder::new()
                .name(format!("worker-{worker}"))
                .spawn(move || worker_loop(rx, weak));
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => warn!(worker, cause = %e, "could not start worker thread"),
            }
        }
        drop(handles);
        engine
    }

    /// Serves `router`'s commands from now on, with `health` as the
    /// health sources (replacing those given to [`Engine::starting`]).
    /// Only the first call counts.
    pub fn ready(&self, router: Router, health: Vec<Arc<dyn HealthSource>>) {
        let mut sources = lock(&self.health);
        if self.services.set(router).is_ok() {
            *sources = health;
        }
    }

    /// Whether the services' commands are served ([`Engine::ready`]).
    pub fn is_ready(&self) -> bool {
        self.services.get().is_some()
    }

    /// The route of `command`: the services' once ready (which may answer
    /// `hello` and `health` themselves, as the gateway's relay does), else
    /// a built-in one.
    fn route(&self, command: Command) -> Option<&Route> {
        self.services
            .get()
            .and_then(|r| r.get(command))
            .or_else(|| self.built_in.get(command))
    }

    /// `hello` and `health`: ordinary routes whose handlers ask the engine.
    /// (`fetch_parts` is answered from the response store before routing.)
    fn built_in(weak: std::sync::Weak<Engine>) -> Router {
        let health = weak.clone();
        Router::new()
            .on::<calls::Hello>(move |_, hello| match weak.upgrade() {
                Some(engine) => engine.hello(hello),
                None => Err(Failure::new(
                    Status::SHUTTING_DOWN,
                    "the signer is shutting down",
                )),
            })
            .on::<calls::Health>(move |_, _| match health.upgrade() {
                Some(engine) => Ok(engine.health_report()),
                None => Err(Failure::new(
                    Status::SHUTTING_DOWN,
                    "the signer is shutting down",
                )),
            })
    }

    /// Whether a worker takes work within `within`: the liveness that feeds
    /// systemd's watchdog. False while every worker is stuck (an HSM call
    /// that never returns, a deadlock) or the engine is stopping.
    pub fn alive(&self, within: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        let sent = lock(&self.jobs)
            .as_ref()
            .is_some_and(|jobs| jobs.send(Work::Probe(tx)).is_ok());
        sent && rx.recv_timeout(within).is_ok()
    }

    /// Sends every answered command to `sink` from now on (set once).
    pub fn set_audit(&self, sink: Arc<dyn AuditSink>) {
        let _ = self.audit.set(sink);
    }

    fn audit_refusal(&self, envelope_id: u64, command: Command, failure: &Failure) {
        let audit = audit_of(command);
        if let Some(sink) = self.audit.get() {
            if audit != Audit::Probe {
                sink.command(&CommandOutcome {
                    envelope_id,
                    command,
                    audit,
                    status: failure.status,
                    message: &failure.message,
                    facts: &Vec::new(),
                    elapsed_ms: 0,
                });
            }
        }
    }

    /// The engine's limits.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The daemon's stop flag (set it from a signal handler and pass it to
    /// [`crate::link::serve`]). Once set, answers that cannot be queued
    /// because the peer stopped reading are dropped instead of waited for.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// Records that the serial device was (re)opened.
    pub fn note_open(&self) {
        self.counters.opens.fetch_add(1, Ordering::Relaxed);
    }

    /// Refuses new work from now on and waits up to `grace` for running requests.
    pub fn shutdown(&self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + grace;
        while lock(&self.cache).running > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        lock(&self.jobs).take();
        let handles = std::mem::take(&mut *lock(&self.workers));
        for handle in handles {
            let _ = handle.join();
        }
    }

    /// Requests currently executing or queued.
    pub fn running(&self) -> u32 {
        lock(&self.cache).running
    }

    /// Queues frames for the writer, waiting while the queue is full (the
    /// peer is slow or not reading): that back-pressure is what stops the
    /// reader from taking more input. Gives up only once the daemon is stopping.
    fn send(&self, out: &Outbox, frames: &[Vec<u8>]) {
        for frame in frames {
            let mut frame = frame.clone();
            loop {
                match out.try_send(frame) {
                    Ok(()) => {
                        self.counters.sent.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Err(TrySendError::Disconnected(_)) => return,
                    Err(TrySendError::Full(back)) => {
                        if self.stop.load(Ordering::SeqCst) {
                            return;
                        }
                        frame = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
    }

    fn respond_uncached(&self, out: &Outbox, id: u64, failure: &Failure) {
        let frames = self.encode(id, failure.status, &failure.body());
        self.send(out, &frames);
    }

    fn encode(&self, id: u64, status: Status, body: &[u8]) -> Vec<Vec<u8>> {
        let max = self.peer_max_frame.load(Ordering::Relaxed) as usize;
        encode_response(id, status, body, max)
            .iter()
            .map(|content| signer_frame::encode(content))
            .collect()
    }

    /// Handles one decoded frame (or frame error) from the link.
    pub fn on_frame(self: &Arc<Self>, frame: Result<Vec<u8>, FrameError>, out: &Outbox) {
        let content = match frame {
            Ok(content) => {
                self.counters.frames_ok.fetch_add(1, Ordering::Relaxed);
                content
            }
            Err(err) => {
                let (counter, status) = match err {
                    FrameError::Crc { .. } => (&self.counters.bad_crc, Status::FRAME_CRC),
                    FrameError::Cobs => (&self.counters.bad_cobs, Status::FRAME_COBS),
                    FrameError::Oversize { .. } => {
                        (&self.counters.oversize, Status::FRAME_OVERSIZE)
                    }
                    FrameError::TooShort { .. } => (&self.counters.short, Status::FRAME_SHORT),
                };
                counter.fetch_add(1, Ordering::Relaxed);
                debug!(cause = %err, "rejected frame");
                self.respond_uncached(out, 0, &Failure::new(status, err.to_string()));
                return;
            }
        };
        match decode_request(&content) {
            Ok(request) => self.on_request(request, out),
            Err(EnvelopeError::UnsupportedVersion { version, id }) => {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                let failure = Failure::new(
                    Status::UNSUPPORTED_VERSION,
                    format!("protocol version {version} is not supported; supported: {VERSION}"),
                )
                .with_detail(VERSION.to_string());
                self.respond_uncached(out, id, &failure);
            }
            Err(err @ EnvelopeError::Malformed(_)) => {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                let failure = Failure::new(Status::MALFORMED_ENVELOPE, err.to_string());
                self.audit_refusal(0, Command(0), &failure);
                self.respond_uncached(out, 0, &failure);
            }
            // The id could be read: the client learns, by id, that this
            // request was not executed.
            Err(err @ EnvelopeError::MalformedRequest { id, .. }) => {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                let failure = Failure::new(Status::MALFORMED_ENVELOPE, err.to_string());
                self.audit_refusal(id, Command(0), &failure);
                self.respond_uncached(out, id, &failure);
            }
        }
    }

    fn on_request(self: &Arc<Self>, request: Request<'_>, out: &Outbox) {
        let id = request.id;
        if request.command == Command::FETCH_PARTS {
            self.fetch_parts(id, request.body, out);
            return;
        }
        let digest = digest(request.command, request.body);
        let placement = {
            let mut cache = lock(&self.cache);
            match cache.entries.get(&id) {
                Some(Entry::Done { digest: d, frames }) if *d == digest => {
                    let frames = Arc::clone(frames);
                    drop(cache);
                    self.counters.replayed.fetch_add(1, Ordering::Relaxed);
                    debug!(req_id = id, "replaying stored response");
                    self.send(out, &frames);
                    return;
                }
                Some(Entry::Running { digest: d }) if *d == digest => {
                    self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                    debug!(req_id = id, "retry of a running request ignored");
                    return;
                }
                Some(_) => {
                    drop(cache);
                    let failure = Failure::new(
                        Status::ID_CONFLICT,
                        format!("request id {id} was already used for a different request"),
                    );
                    self.audit_refusal(id, request.command, &failure);
                    self.respond_uncached(out, id, &failure);
                    return;
                }
                None => {}
            }
            if self.stopping.load(Ordering::SeqCst) {
                drop(cache);
                let failure = Failure::new(Status::SHUTTING_DOWN, "the signer is shutting down");
                self.audit_refusal(id, request.command, &failure);
                self.respond_uncached(out, id, &failure);
                return;
            }
            let command = request.command;
            let placement = match self.route(command) {
                Some(route) => route.placement,
                None if !self.is_ready() => {
                    drop(cache);
                    // Not stored: the same id is executed once the signer is ready.
                    let failure = Failure::new(
                        Status::STARTING,
                        "the signer is starting (checking its repository, logging in to the HSM); \
                         retry with the same id later or on the twin",
                    );
                    self.respond_uncached(out, id, &failure);
                    return;
                }
                None => {
                    drop(cache);
                    let failure = if command.name().is_some() {
                        Failure::new(
                            Status::NOT_ENABLED,
                            format!("command {command} is not enabled on this signer"),
                        )
                    } else {
                        Failure::new(
                            Status::UNKNOWN_COMMAND,
                            format!("unknown command {}", command_label(command)),
                        )
                    };
                    self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    self.audit_refusal(id, command, &failure);
                    self.respond_uncached(out, id, &failure);
                    return;
                }
            };
            if cache.running >= self.config.max_in_flight {
                drop(cache);
                self.counters.busy.fetch_add(1, Ordering::Relaxed);
                let failure = Failure::new(
                    Status::BUSY,
                    format!(
                        "{} requests in flight; retry with the same id",
                        self.config.max_in_flight
                    ),
                );
                self.audit_refusal(id, request.command, &failure);
                self.respond_uncached(out, id, &failure);
                return;
            }
            cache.running += 1;
            cache.entries.insert(id, Entry::Running { digest });
            placement
        };
        let ctx = CallContext {
            envelope_id: id,
            command: request.command,
        };
        match placement {
            Placement::Inline => self.run(ctx, digest, request.body, out),
            Placement::Pool => {
                let job = Job {
                    ctx,
                    digest,
                    body: request.body.to_vec(),
                    out: out.clone(),
                };
                let refused = match lock(&self.jobs).as_ref() {
                    Some(jobs) => match jobs.send(Work::Request(job)) {
                        Ok(()) => None,
                        Err(mpsc::SendError(Work::Request(job))) => Some(job),
                        Err(mpsc::SendError(Work::Probe(_))) => None,
                    },
                    None => Some(job),
                };
                if let Some(job) = refused {
                    let failure =
                        Failure::new(Status::SHUTTING_DOWN, "the signer is shutting down");
                    self.forget(id);
                    self.respond_uncached(&job.out, id, &failure);
                }
            }
        }
    }

    fn forget(&self, id: u64) {
        let mut cache = lock(&self.cache);
        if let Some(Entry::Running { .. }) = cache.entries.remove(&id) {
            cache.running = cache.running.saturating_sub(1);
        }
    }

    /// Runs a request; its answer is sent when the [`Completion`] finishes,
    /// which a handler may do later from another thread.
    fn run(self: &Arc<Self>, ctx: CallContext, digest: Digest32, body: &[u8], out: &Outbox) {
        let Some(route) = self.route(ctx.command).cloned() else {
            let failure = Failure::new(Status::UNKNOWN_COMMAND, "unknown command");
            self.complete(ctx, digest, Err(failure), out, true);
            return;
        };
        let pending = Pending {
            engine: Arc::clone(self),
            ctx,
            audit: route.audit,
            digest,
            out: out.clone(),
            started: Instant::now(),
            origin: std::thread::current().id(),
        };
        let done = Completion::new(move |answer| pending.finish(answer));
        // A panic drops `done` while unwinding, which answers `internal`.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            route.handler.call(&ctx, body, done)
        }));
    }

    /// Stores the answer for retries of the same id, then sends it. With
    /// `wait` false (an answer finished on a thread that is not the
    /// engine's, such as the repository's committer) a full outgoing queue
    /// is not waited for: what does not fit is left out, and the client's
    /// retransmission is answered from the store. So a peer that stops
    /// reading never stalls the thread that finished the answer.
    fn complete(
        &self,
        ctx: CallContext,
        digest: Digest32,
        result: Result<Vec<u8>, Failure>,
        out: &Outbox,
        wait: bool,
    ) {
        let frames = match result {
            Ok(body) => self.encode(ctx.envelope_id, Status::OK, &body),
            Err(failure) => self.encode(ctx.envelope_id, failure.status, &failure.body()),
        };
        let frames = Arc::new(frames);
        self.counters.executed.fetch_add(1, Ordering::Relaxed);
        {
            let mut cache = lock(&self.cache);
            cache.running = cache.running.saturating_sub(1);
            cache.bytes += frames.iter().map(Vec::len).sum::<usize>();
            cache.entries.insert(
                ctx.envelope_id,
                Entry::Done {
                    digest,
                    frames: Arc::clone(&frames),
                },
            );
            cache.order.push_back(ctx.envelope_id);
            self.evict(&mut cache);
        }
        if wait {
            self.send(out, &frames);
        } else {
            self.send_now(out, &frames);
        }
    }

    /// Queues what fits without waiting; the rest is left to the client's
    /// retransmission (answered from the store).
    fn send_now(&self, out: &Outbox, frames: &[Vec<u8>]) {
        for frame in frames {
            match out.try_send(frame.clone()) {
                Ok(()) => {
                    self.counters.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Full(_)) => {
                    self.counters
                        .deferred_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }

    fn evict(&self, cache: &mut Cache) {
        while cache.order.len() > self.config.cache_entries || cache.bytes > self.config.cache_bytes
        {
            let Some(old) = cache.order.pop_front() else {
                break;
            };
            if let Some(Entry::Done { frames, .. }) = cache.entries.get(&old) {
                cache.bytes -= frames.iter().map(Vec::len).sum::<usize>();
                cache.entries.remove(&old);
            }
        }
    }

    fn fetch_parts(&self, id: u64, body: &[u8], out: &Outbox) {
        let request: msg::FetchParts = match decode_body(body) {
            Ok(r) => r,
            Err(e) => {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                self.respond_uncached(out, id, &Failure::new(Status::MALFORMED_BODY, e.0));
                return;
            }
        };
        let frames = match lock(&self.cache).entries.get(&request.id) {
            Some(Entry::Done { frames, .. }) => Some(Arc::clone(frames)),
            Some(Entry::Running { .. }) => None,
            None => {
                let failure = Failure::new(
                    Status::UNKNOWN_RESPONSE,
                    format!(
                        "no stored response for request id {}; send the request again",
                        request.id
                    ),
                );
                self.respond_uncached(out, id, &failure);
                return;
            }
        };
        let mut resent = 0u32;
        if let Some(frames) = frames {
            let wanted: Vec<&Vec<u8>> = if request.parts.is_empty() {
                frames.iter().collect()
            } else {
                request
                    .parts
                    .iter()
                    .filter_map(|&p| frames.get(p as usize))
                    .collect()
            };
            for frame in wanted {
                self.send(out, std::slice::from_ref(frame));
                resent += 1;
            }
            self.counters.replayed.fetch_add(1, Ordering::Relaxed);
        }
        let frames = self.encode(
            id,
            Status::OK,
            &encode_body(&msg::FetchPartsReply { resent }),
        );
        self.send(out, &frames);
    }

    fn hello(&self, hello: msg::Hello) -> Result<msg::HelloReply, Failure> {
        if (hello.max_frame as usize) < signer_frame::MIN_MAX_CONTENT {
            return Err(Failure::new(
                Status::MALFORMED_BODY,
                format!(
                    "max_frame {} is below the protocol minimum {}",
                    hello.max_frame,
                    signer_frame::MIN_MAX_CONTENT
                ),
            ));
        }
        let max_frame = hello.max_frame.min(self.config.max_frame);
        self.peer_max_frame.store(max_frame, Ordering::Relaxed);
        info!(client = %hello.client, max_frame, "hello");
        let mut commands: Vec<u16> = self.built_in.commands().map(|c| c.0).collect();
        if let Some(services) = self.services.get() {
            commands.extend(services.commands().map(|c| c.0));
        }
        commands.push(Command::FETCH_PARTS.0);
        commands.sort_unstable();
        commands.dedup();
        Ok(msg::HelloReply {
            version: VERSION,
            versions: vec![VERSION],
            max_frame,
            max_in_flight: self.config.max_in_flight,
            server: format!("signerd {}", env!("CARGO_PKG_VERSION")),
            signer_id: self.config.signer_id.clone(),
            commands,
        })
    }

    /// The link counters as reported in `health`.
    pub fn link_stats(&self) -> msg::LinkStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        msg::LinkStats {
            frames_ok: get(&c.frames_ok),
            frames_bad_crc: get(&c.bad_crc),
            frames_bad_cobs: get(&c.bad_cobs),
            frames_oversize: get(&c.oversize),
            frames_short: get(&c.short),
            malformed: get(&c.malformed),
            frames_sent: get(&c.sent),
            replayed: get(&c.replayed),
            duplicates_in_flight: get(&c.duplicates),
            busy: get(&c.busy),
            opens: get(&c.opens),
            executed: get(&c.executed),
        }
    }

    /// The health report.
    pub fn health_report(&self) -> msg::HealthReply {
        let sources = lock(&self.health).clone();
        let checks: Vec<msg::Check> = sources.iter().flat_map(|s| s.checks()).collect();
        let status = checks
            .iter()
            .map(|c| c.status)
            .max_by_key(|s| match s {
                msg::HealthStatus::Ok => 0,
                msg::HealthStatus::Degraded => 1,
                msg::HealthStatus::Failing => 2,
            })
            .unwrap_or(msg::HealthStatus::Ok);
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        msg::HealthReply {
            status,
            version: env!("CARGO_PKG_VERSION").to_string(),
            signer_id: self.config.signer_id.clone(),
            time_ms,
            uptime_s: self.started.elapsed().as_secs(),
            link: self.link_stats(),
            checks,
        }
    }
}

fn command_label(command: Command) -> String {
    format!("0x{:04x}", command.0)
}

fn worker_loop(rx: Arc<Mutex<Receiver<Work>>>, engine: std::sync::Weak<Engine>) {
    loop {
        let work = match lock(&rx).recv() {
            Ok(work) => work,
            Err(_) => return,
        };
        let Some(engine) = engine.upgrade() else {
            return;
        };
        match work {
            Work::Request(job) => engine.run(job.ctx, job.digest, &job.body, &job.out),
            Work::Probe(done) => {
                let _ = done.send(());
            }
        }
    }
}

struct Pending {
    engine: Arc<Engine>,
    ctx: CallContext,
    audit: Audit,
    digest: Digest32,
    out: Outbox,
    started: Instant,
    /// The engine's thread that started the request: an answer finished
    /// there may wait for room on the link (back-pressure); one finished on
    /// another thread (the repository's committer) never waits.
    origin: std::thread::ThreadId,
}

impl Pending {
    /// Audits, stores and sends a finished answer.
    fn finish(self, answer: Answer) {
        let p = self;
        let elapsed_ms = p.started.elapsed().as_millis() as u64;
        let id = p.ctx.envelope_id;
        match &answer.result {
            _ if answer.abandoned => {
                warn!(req_id = id, cmd = %p.ctx.command, "request abandoned by its handler")
            }
            Ok(_) => debug!(req_id = id, cmd = %p.ctx.command, elapsed_ms, "request done"),
            Err(f) => {
                info!(req_id = id, cmd = %p.ctx.command, elapsed_ms, status = %f.status, cause = %f.message, "request failed")
            }
        }
        if let Some(sink) = p.engine.audit.get() {
            if p.audit != Audit::Probe {
                let (status, message) = match &answer.result {
                    Ok(_) => (Status::OK, ""),
                    Err(f) => (f.status, f.message.as_str()),
                };
                sink.command(&CommandOutcome {
                    envelope_id: id,
                    command: p.ctx.command,
                    audit: p.audit,
                    status,
                    message,
                    facts: &answer.facts,
                    elapsed_ms,
                });
            }
        }
        let wait = std::thread::current().id() == p.origin;
        p.engine
            .complete(p.ctx, p.digest, answer.result, &p.out, wait);
    }
}
