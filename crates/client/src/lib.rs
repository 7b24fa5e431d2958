//! Client library for the serial-link signer.
//!
//! ```text
//! call / submit ─► driver thread ─► frames ─► serial device ─► signer
//!                      ▲  │ retransmit (same id) on timeout, fetch_parts for lost pieces
//!   reply channel ◄────┘  └◄── reader thread ◄── frames ◄────────┘
//! ```
//!
//! One driver thread owns the link's write side and every outstanding
//! request; any number of threads may submit requests, and up to the signer's
//! `max_in_flight` travel at once (pipelining). A request that gets no answer
//! in time is sent again *with the same id*, so the signer answers it from its
//! store instead of executing it twice.
//!
//! ```no_run
//! use signer_client::{Calls, Client, LinkOptions};
//! use signer_protocol::{calls, msg};
//!
//! let client = Client::open(&LinkOptions::new("/dev/ttyUSB0")).unwrap();
//! let health = client.health().unwrap();
//! println!("{} is {:?}", health.signer_id, health.status);
//! // Any command, typed by its declaration in `signer_protocol::calls`:
//! let cas = client.request::<calls::CaCerts>(&msg::Empty {}).unwrap();
//! println!("{} CA certificates", cas.cas.len());
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audit;
mod failover;
mod port;
pub mod requests;
pub mod verify;
pub use failover::{no_answer, refused_unread, twin_may_answer, Failover};
use port::Port;
pub use port::{unix_path, UNIX_PREFIX};

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use signer_frame::{Decoder, FrameError};
use signer_protocol::{
    calls, decode_body, decode_response_part, encode_body, encode_request, msg, Call, Command,
    Reassembly, Status,
};

/// The typed call surface of a signer, the same whether requests go to one
/// signer ([`Client`]) or to a pair with failover ([`Failover`]). Commands
/// are named by their declaration in `signer_protocol::calls`, which fixes
/// the request and reply types.
pub trait Calls {
    /// Sends a request body and waits for the answer (any status).
    fn call(&self, command: Command, body: Vec<u8>) -> Result<Reply, ClientError>;

    /// Sends command `C` and decodes its reply; error statuses become
    /// [`ClientError::Status`].
    fn request<C: Call>(&self, request: &C::Request) -> Result<C::Reply, ClientError>
    where
        Self: Sized,
    {
        self.call(C::COMMAND, encode_body(request))?.decode()
    }

    /// The signer's health report.
    fn health(&self) -> Result<msg::HealthReply, ClientError>
    where
        Self: Sized,
    {
        self.request::<calls::Health>(&msg::Empty {})
    }
}

/// How to reach a signer.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// Serial device path.
    pub device: PathBuf,
    /// Line speed; also used to estimate how long frames take on the wire.
    pub baud: u32,
    /// Give up on a request after this long (retries included).
    pub timeout: Duration,
    /// Largest frame content this client accepts.
    pub max_frame: u32,
    /// Upper bound on requests in flight (the signer's limit also applies).
    pub window: u32,
    /// Shortest retransmission timeout.
    pub min_rto: Duration,
    /// Largest response, in parts, this client accepts.
    pub max_parts: u32,
}

impl LinkOptions {
    /// Defaults for a device: 115200 baud, 30 s timeout, 64 KiB frames.
    pub fn new(device: impl Into<PathBuf>) -> Self {
        LinkOptions {
            device: device.into(),
            baud: 115_200,
            timeout: Duration::from_secs(30),
            max_frame: 65_536,
            window: 32,
            min_rto: Duration::from_millis(250),
            max_parts: 1 << 20,
        }
    }

    /// Time for `bytes` on the wire at the configured baud (8N1: 10 bits a byte).
    pub fn wire_time(&self, bytes: usize) -> Duration {
        Duration::from_micros((bytes as u64) * 10 * 1_000_000 / u64::from(self.baud.max(1)))
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The device could not be opened or failed.
    #[error("link {device}: {message}")]
    Link {
        /// The device.
        device: String,
        /// What happened.
        message: String,
    },
    /// No complete answer within the timeout.
    #[error("no answer within {0:?} (request sent {1} times)")]
    Timeout(Duration, u32),
    /// The signer answered with an error status.
    #[error("signer refused: {status}: {message}")]
    Signer {
        /// Wire status.
        status: Status,
        /// The signer's message.
        message: String,
        /// Machine-readable detail.
        detail: String,
    },
    /// The signer's answer could not be read.
    #[error("unreadable answer: {0}")]
    Protocol(String),
    /// The client is shut down.
    #[error("client closed")]
    Closed,
    /// A request that issues (`sign_x509`, `certify_openpgp`) got no answer
    /// from the signer it went to, which may have executed it. It was not
    /// sent to the twin, which would issue a second certificate; sent again
    /// with the same request id it goes to that signer only.
    #[error("no answer from {device} ({cause}); it may have executed the request, so it was not sent to the other signer (that would issue twice): send it again with the same request id once {device} answers")]
    InDoubt {
        /// The signer's device that may hold the request.
        device: String,
        /// Why there was no answer.
        cause: String,
    },
}

impl ClientError {
    /// The signer's status, where the signer answered.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Signer { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A complete answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Request id it answers.
    pub id: u64,
    /// Outcome.
    pub status: Status,
    /// Msgpack body (the reply, or an `ErrorBody`).
    pub body: Vec<u8>,
    /// How many times the request was sent.
    pub attempts: u32,
}

impl Reply {
    /// Decodes an `ok` reply's body, or turns an error status into [`ClientError::Signer`].
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        if self.status.is_ok() {
            return decode_body(&self.body).map_err(|e| ClientError::Protocol(e.0));
        }
        let err: msg::ErrorBody = decode_body(&self.body).unwrap_or(msg::ErrorBody {
            message: "(unreadable error body)".into(),
            detail: String::new(),
        });
        Err(ClientError::Signer {
            status: self.status,
            message: err.message,
            detail: err.detail,
        })
    }
}

/// Counters of the client's side of the link.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ClientStats {
    /// Frames sent (requests, retries and part requests).
    pub frames_sent: u64,
    /// Bytes sent on the wire.
    pub bytes_sent: u64,
    /// Bytes received from the wire.
    pub bytes_received: u64,
    /// Frames received intact.
    pub frames_ok: u64,
    /// Frames received damaged (dropped).
    pub frames_bad: u64,
    /// Requests sent again after a timeout.
    pub retransmits: u64,
    /// `fetch_parts` requests sent.
    pub part_requests: u64,
    /// Error frames from the signer about frames it could not read.
    pub signer_frame_errors: u64,
    /// Answers for ids no longer outstanding (late duplicates).
    pub stray: u64,
}

/// A pending answer.
pub struct Pending {
    rx: Receiver<Result<Reply, ClientError>>,
    timeout: Duration,
}

/// Extra time [`Pending::wait`] allows beyond the request timeout, in case the
/// driver itself is held up (a write blocked by flow control).
const WAIT_SLACK: Duration = Duration::from_secs(5);

impl Pending {
    /// Waits for the answer; never longer than the request timeout plus a few
    /// seconds, even if the line is stalled.
    pub fn wait(self) -> Result<Reply, ClientError> {
        match self.rx.recv_timeout(self.timeout + WAIT_SLACK) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(ClientError::Timeout(self.timeout, 0)),
            Err(RecvTimeoutError::Disconnected) => Err(ClientError::Closed),
        }
    }
}

enum Event {
    Submit {
        id: u64,
        command: Command,
        body: Vec<u8>,
        reply: Sender<Result<Reply, ClientError>>,
    },
    Frame(Result<Vec<u8>, FrameError>),
    LinkDown(String),
}

/// Signer limits learned from `hello`.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// The `hello` reply.
    pub hello: msg::HelloReply,
}

/// A connection to one signer over one serial device.
pub struct Client {
    events: Sender<Event>,
    next_id: AtomicU64,
    stats: Arc<Mutex<ClientStats>>,
    closed: Arc<AtomicBool>,
    info: Mutex<Option<msg::HelloReply>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    options: LinkOptions,
}

impl Client {
    /// Opens the device, starts the link threads and says `hello`.
    pub fn open(options: &LinkOptions) -> Result<Client, ClientError> {
        let client = Client::connect(options)?;
        let hello = client.request::<calls::Hello>(&msg::Hello {
            max_frame: options.max_frame,
            client: format!("signer-client {}", env!("CARGO_PKG_VERSION")),
        })?;
        *client.info.lock().unwrap_or_else(|p| p.into_inner()) = Some(hello);
        Ok(client)
    }

    /// Opens the device and starts the link threads without saying `hello`
    /// (the signer then assumes the protocol's default limits).
    pub fn connect(options: &LinkOptions) -> Result<Client, ClientError> {
        let link_err = |e: std::io::Error| ClientError::Link {
            device: options.device.display().to_string(),
            message: e.to_string(),
        };
        let mut port = Port::open(&options.device, options.baud, Duration::from_millis(50))
            .map_err(link_err)?;
        // A lone delimiter ends any partial frame the signer may still hold.
        port.write_all(&[signer_frame::DELIMITER])
            .map_err(link_err)?;
        let reader = port.try_clone().map_err(link_err)?;
        let (events, rx) = mpsc::channel();
        let stats = Arc::new(Mutex::new(ClientStats::default()));
        let closed = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let events = events.clone();
            let stats = Arc::clone(&stats);
            let closed = Arc::clone(&closed);
            let max = options.max_frame as usize;
            threads.push(
                std::thread::Builder::new()
                    .name("client-reader".into())
                    .spawn(move || read_loop(reader, max, &events, &stats, &closed))
                    .map_err(|e| ClientError::Link {
                        device: String::new(),
                        message: e.to_string(),
                    })?,
            );
        }
        {
            let stats = Arc::clone(&stats);
            let closed = Arc::clone(&closed);
            let opts = options.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("client-driver".into())
                    .spawn(move || Driver::new(port, opts, stats).run(&rx, &closed))
                    .map_err(|e| ClientError::Link {
                        device: String::new(),
                        message: e.to_string(),
                    })?,
            );
        }
        // Ids start at a random point so that a new client never collides with
        // ids an earlier run left in the signer's response store.
        let start = rand::random::<u64>() >> 2 | 1;
        Ok(Client {
            events,
            next_id: AtomicU64::new(start),
            stats,
            closed,
            info: Mutex::new(None),
            threads: Mutex::new(threads),
            options: options.clone(),
        })
    }

    /// The options this client was opened with.
    pub fn options(&self) -> &LinkOptions {
        &self.options
    }

    /// The signer's `hello` reply, if `hello` was said.
    pub fn server(&self) -> Option<msg::HelloReply> {
        self.info.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A fresh request id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a request with the given id (reuse an id only to retry the very same request).
    pub fn submit_with_id(&self, id: u64, command: Command, body: Vec<u8>) -> Pending {
        let (reply, rx) = mpsc::channel();
        if self
            .events
            .send(Event::Submit {
                id,
                command,
                body,
                reply: reply.clone(),
            })
            .is_err()
        {
            let _ = reply.send(Err(ClientError::Closed));
        }
        Pending {
            rx,
            timeout: self.options.timeout,
        }
    }

    /// Sends a request with a fresh id; returns at once.
    pub fn submit(&self, command: Command, body: Vec<u8>) -> Pending {
        self.submit_with_id(self.next_id(), command, body)
    }

    /// Counters of this client's link.
    pub fn stats(&self) -> ClientStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Calls for Client {
    fn call(&self, command: Command, body: Vec<u8>) -> Result<Reply, ClientError> {
        self.submit(command, body).wait()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

fn read_loop(
    mut port: Port,
    max_frame: usize,
    events: &Sender<Event>,
    stats: &Mutex<ClientStats>,
    closed: &AtomicBool,
) {
    let mut decoder = Decoder::new(max_frame);
    let mut buf = vec![0u8; 8192];
    while !closed.load(Ordering::SeqCst) {
        match port.read_some(&mut buf) {
            Ok(None) => {}
            Ok(Some(n)) => {
                stats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .bytes_received += n as u64;
                let mut input = &buf[..n];
                while let Some(frame) = decoder.decode(&mut input) {
                    if events.send(Event::Frame(frame)).is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = events.send(Event::LinkDown(e.to_string()));
                return;
            }
        }
    }
}

type ReplyTx = Sender<Result<Reply, ClientError>>;

struct Queued {
    id: u64,
    command: Command,
    body: Vec<u8>,
    reply: ReplyTx,
}

struct Outstanding {
    wire: Vec<u8>,
    command: Command,
    first_sent: Option<Instant>,
    last_sent: Instant,
    attempts: u32,
    part_requests: u32,
    parts: Option<Reassembly>,
    reply: ReplyTx,
    deadline: Instant,
}

/// Longest wait before a retransmission, however often a request was sent.
const MAX_RTO: Duration = Duration::from_secs(10);

/// Retransmission timer in the manner of TCP (RFC 6298): smoothed round
/// trip and its variance, sampled only from requests sent once.
struct Rto {
    srtt: Option<Duration>,
    rttvar: Duration,
    min: Duration,
}

impl Rto {
    fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    fn current(&self) -> Duration {
        match self.srtt {
            None => self.min * 2,
            Some(srtt) => (srtt + self.rttvar * 4).max(self.min),
        }
        .min(MAX_RTO)
    }
}

struct Driver {
    port: Port,
    options: LinkOptions,
    stats: Arc<Mutex<ClientStats>>,
    outstanding: HashMap<u64, Outstanding>,
    queue: VecDeque<Queued>,
    window: usize,
    rto: Rto,
    link_down: Option<String>,
    fetch_id: u64,
    /// The signer's own frame limit, once `hello` showed it (the agreed
    /// limit, when it is below what this client announced).
    signer_max_frame: Option<usize>,
}

impl Driver {
    fn new(port: Port, options: LinkOptions, stats: Arc<Mutex<ClientStats>>) -> Self {
        // Until hello says otherwise, stay within the protocol's default in-flight budget.
        let min =
            options.min_rto + options.wire_time(2 * signer_protocol::DEFAULT_MAX_FRAME as usize);
        Driver {
            port,
            // One at a time until hello tells the signer's limit.
            window: 1,
            options,
            stats,
            outstanding: HashMap::new(),
            queue: VecDeque::new(),
            rto: Rto {
                srtt: None,
                rttvar: Duration::ZERO,
                min,
            },
            link_down: None,
            fetch_id: rand::random::<u64>() | 1 << 63,
            signer_max_frame: None,
        }
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, ClientStats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(mut self, rx: &Receiver<Event>, closed: &AtomicBool) {
        while !closed.load(Ordering::SeqCst) {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(event) => {
                    self.on_event(event);
                    // Take everything already waiting before looking at timers.
                    while let Ok(event) = rx.try_recv() {
                        self.on_event(event);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.fill_window();
            self.check_timers();
        }
        for (_, o) in self.outstanding.drain() {
            let _ = o.reply.send(Err(ClientError::Closed));
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Submit {
                id,
                command,
                body,
                reply,
            } => {
                // The signer would refuse the frame (§3.3) without knowing
                // which request it was: say so now instead of waiting out
                // the retransmissions.
                let too_large = self.signer_max_frame.and_then(|max| {
                    let size = encode_request(id, command, &[]).len() + body.len();
                    (size > max).then_some((size, max))
                });
                if let Some(message) = &self.link_down {
                    let _ = reply.send(Err(ClientError::Link {
                        device: self.options.device.display().to_string(),
                        message: message.clone(),
                    }));
                } else if let Some((size, max)) = too_large {
                    let _ = reply.send(Err(ClientError::Protocol(format!(
                        "the request is {size} bytes, more than the signer's max_frame of {max}: \
                         it would refuse the frame (raise protocol.max_frame on the signer)"
                    ))));
                } else {
                    self.queue.push_back(Queued {
                        id,
                        command,
                        body,
                        reply,
                    });
                }
            }
            Event::Frame(Ok(content)) => {
                self.stats().frames_ok += 1;
                self.on_content(&content);
            }
            Event::Frame(Err(_)) => self.stats().frames_bad += 1,
            Event::LinkDown(message) => {
                let device = self.options.device.display().to_string();
                for (_, o) in self.outstanding.drain() {
                    let _ = o.reply.send(Err(ClientError::Link {
                        device: device.clone(),
                        message: message.clone(),
                    }));
                }
                for q in self.queue.drain(..) {
                    let _ = q.reply.send(Err(ClientError::Link {
                        device: device.clone(),
                        message: message.clone(),
                    }));
                }
                self.link_down = Some(message);
            }
        }
    }

    fn on_content(&mut self, content: &[u8]) {
        let part = match decode_response_part(content) {
            Ok(p) => p,
            Err(_) => {
                self.stats().frames_bad += 1;
                return;
            }
        };
        if part.id == 0 {
            // The signer could not read one of our frames; the timer will resend it.
            self.stats().signer_frame_errors += 1;
            return;
        }
        let Some(o) = self.outstanding.get_mut(&part.id) else {
            self.stats().stray += 1;
            return;
        };
        if part.parts == 1 && o.parts.is_none() {
            let body = part.data.to_vec();
            self.finish(part.id, part.status, body);
            return;
        }
        let added = match o.parts.as_mut() {
            Some(r) => r.add(&part),
            None => Reassembly::new(&part, self.options.max_parts).map(|r| {
                o.parts = Some(r);
            }),
        };
        if let Err(e) = added {
            if let Some(o) = self.outstanding.remove(&part.id) {
                let _ = o.reply.send(Err(ClientError::Protocol(e.to_string())));
            }
            return;
        }
        // Parts are arriving: wait a full timer after the latest before asking for missing ones.
        o.last_sent = Instant::now();
        if o.parts.as_ref().is_some_and(Reassembly::is_complete) {
            let status = part.status;
            if let Some(body) = o.parts.take().and_then(Reassembly::into_body) {
                self.finish(part.id, status, body);
            }
        }
    }

    fn finish(&mut self, id: u64, status: Status, body: Vec<u8>) {
        let Some(o) = self.outstanding.remove(&id) else {
            return;
        };
        // Karn's rule: sample only answers to requests sent once and answered whole.
        if o.attempts == 1 && o.part_requests == 0 {
            if let Some(first) = o.first_sent {
                self.rto.sample(first.elapsed());
            }
        }
        if o.command == Command::HELLO && status.is_ok() {
            if let Ok(hello) = decode_body::<msg::HelloReply>(&body) {
                self.window = (self.options.window.min(hello.max_in_flight).max(1)) as usize;
                self.signer_max_frame =
                    (hello.max_frame < self.options.max_frame).then_some(hello.max_frame as usize);
            }
        }
        if status == Status::BUSY && !in_doubt_at_gateway(&body) {
            // Not stored by the signer: queue it again behind the others.
            let body = extract_body(&o.wire);
            self.queue.push_back(Queued {
                id,
                command: o.command,
                body,
                reply: o.reply,
            });
            return;
        }
        let _ = o.reply.send(Ok(Reply {
            id,
            status,
            body,
            attempts: o.attempts,
        }));
    }

    fn fill_window(&mut self) {
        while self.outstanding.len() < self.window {
            let Some(Queued {
                id,
                command,
                body,
                reply,
            }) = self.queue.pop_front()
            else {
                break;
            };
            let wire = signer_frame::encode(&encode_request(id, command, &body));
            let now = Instant::now();
            let mut o = Outstanding {
                wire,
                command,
                first_sent: None,
                last_sent: now,
                attempts: 0,
                part_requests: 0,
                parts: None,
                reply,
                deadline: now + self.options.timeout,
            };
            if self.transmit(&mut o).is_ok() {
                self.outstanding.insert(id, o);
            }
        }
    }

    fn transmit(&mut self, o: &mut Outstanding) -> Result<(), ()> {
        let wire = std::mem::take(&mut o.wire);
        let result = self.write(&wire);
        o.wire = wire;
        match result {
            Ok(()) => {
                let now = Instant::now();
                o.first_sent.get_or_insert(now);
                o.last_sent = now;
                o.attempts += 1;
                Ok(())
            }
            Err(message) => {
                let _ = o.reply.send(Err(ClientError::Link {
                    device: self.options.device.display().to_string(),
                    message,
                }));
                Err(())
            }
        }
    }

    fn write(&mut self, wire: &[u8]) -> Result<(), String> {
        let mut data = wire;
        let deadline = Instant::now() + self.options.timeout;
        while !data.is_empty() {
            match self.port.write(data) {
                Ok(0) => return Err("device accepted no bytes".into()),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::Interrupted => {
                    if Instant::now() > deadline {
                        return Err("write timed out (flow control or a stalled line)".into());
                    }
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        let mut s = self.stats();
        s.frames_sent += 1;
        s.bytes_sent += wire.len() as u64;
        Ok(())
    }

    fn check_timers(&mut self) {
        let now = Instant::now();
        let rto = self.rto.current();
        let ids: Vec<u64> = self.outstanding.keys().copied().collect();
        for id in ids {
            let Some(mut o) = self.outstanding.remove(&id) else {
                continue;
            };
            if now >= o.deadline {
                let _ = o
                    .reply
                    .send(Err(ClientError::Timeout(self.options.timeout, o.attempts)));
                continue;
            }
            // Back off exponentially per attempt, as TCP does.
            let backoff = rto
                * 2u32
                    .saturating_pow(o.attempts.saturating_sub(1) + o.part_requests)
                    .min(16);
            let wait = backoff + self.options.wire_time(o.wire.len());
            if now.duration_since(o.last_sent) < wait {
                self.outstanding.insert(id, o);
                continue;
            }
            let missing = o
                .parts
                .as_ref()
                .map(Reassembly::missing)
                .unwrap_or_default();
            if !missing.is_empty() && o.part_requests < 3 {
                let fetch = msg::FetchParts { id, parts: missing };
                self.fetch_id = self.fetch_id.wrapping_add(1) | 1 << 63;
                let wire = signer_frame::encode(&encode_request(
                    self.fetch_id,
                    Command::FETCH_PARTS,
                    &encode_body(&fetch),
                ));
                if self.write(&wire).is_ok() {
                    self.stats().part_requests += 1;
                }
                o.part_requests += 1;
                o.last_sent = now;
            } else {
                self.stats().retransmits += 1;
                if self.transmit(&mut o).is_err() {
                    continue;
                }
            }
            self.outstanding.insert(id, o);
        }
    }
}

/// Rebuilds the current CRL from the client's copy and a `fetch_crl` reply
/// carrying a difference (docs/protocol.md, §7.7); `None` unless the result
/// has exactly the announced SHA-256 (the caller then fetches the whole CRL).
pub fn rebuild_crl(old: &[u8], reply: &msg::FetchCrlReply) -> Option<Vec<u8>> {
    use sha2::Digest;
    let diff = reply.diff.as_ref()?;
    let d = signer_x509::crl::CrlDiff {
        added: diff
            .added
            .iter()
            .map(|e| signer_x509::crl::OwnedEntry {
                serial: e.serial.clone(),
                revoked_at: e.revoked_at,
                reason: e.reason,
                invalidity_date: e.invalidity_date,
            })
            .collect(),
        removed: diff.removed.iter().map(|b| b.to_vec()).collect(),
        this_update: reply.this_update,
        next_update: reply.next_update,
        number: reply.number.clone(),
        signature: diff.signature.clone(),
    };
    let der = signer_x509::crl::rebuild(old, &d).ok()?;
    (sha2::Sha256::digest(&der).as_slice() == reply.sha256.as_slice()).then_some(der)
}

/// The body of an encoded request frame (for re-queueing after `busy`).
/// Whether a `busy` answer is a gateway's `gateway_in_doubt`: the request
/// may have been executed by a signer that stopped answering. That is the
/// caller's to know, not a reason to send it again at once.
fn in_doubt_at_gateway(body: &[u8]) -> bool {
    decode_body::<msg::ErrorBody>(body).is_ok_and(|e| e.detail == IN_DOUBT_AT_GATEWAY)
}

/// The `detail` of a gateway's `busy` for a request in doubt (protocol §2.1).
pub const IN_DOUBT_AT_GATEWAY: &str = "gateway_in_doubt";

fn extract_body(wire: &[u8]) -> Vec<u8> {
    let mut decoder = Decoder::new(wire.len());
    let mut input = wire;
    match decoder.decode(&mut input) {
        Some(Ok(content)) => signer_protocol::decode_request(&content)
            .map(|r| r.body.to_vec())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}
