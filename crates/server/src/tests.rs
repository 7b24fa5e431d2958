use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use signer_frame::Decoder;
use signer_protocol::{
    decode_body, decode_response_part, encode_body, encode_request, msg, Command, Status,
};

use signer_protocol::{Audit, Call, Facts, Placement};
use signer_service::{CallContext, Completion, Failure, Handler, Router};

use crate::{Engine, EngineConfig};

const ECHO: Command = Command(0x100);
const SLOW: Command = Command(0x101);
const BIG: Command = Command(0x102);
const PANIC: Command = Command(0x103);

struct Harness {
    engine: Arc<Engine>,
    out: crate::Outbox,
    rx: Receiver<Vec<u8>>,
    echo_calls: Arc<AtomicUsize>,
    gate: Arc<Mutex<()>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Echo {
    n: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Numbers(Vec<u64>);

impl Facts for Echo {}
impl Facts for Numbers {}

/// Test commands, declared as the protocol crate declares its own.
macro_rules! test_call {
    ($name:ident = $code:expr, $rep:ty) => {
        struct $name;
        impl Call for $name {
            const COMMAND: Command = $code;
            const PLACEMENT: Placement = Placement::Pool;
            const AUDIT: Audit = Audit::Counted;
            const RETRY: signer_protocol::Retry = signer_protocol::Retry::AnySigner;
            type Request = Echo;
            type Reply = $rep;
        }
    };
}
test_call!(EchoCall = ECHO, Echo);
test_call!(SlowCall = SLOW, Echo);
test_call!(BigCall = BIG, Numbers);
test_call!(PanicCall = PANIC, Echo);

fn harness(config: EngineConfig) -> Harness {
    let echo_calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Mutex::new(()));
    let router = services(&echo_calls, &gate);
    let engine = Engine::start(config, router, Vec::new());
    let (out, rx) = crate::outbox();
    Harness {
        engine,
        out,
        rx,
        echo_calls,
        gate,
    }
}

/// The test commands' router.
fn services(echo_calls: &Arc<AtomicUsize>, gate: &Arc<Mutex<()>>) -> Router {
    let calls = Arc::clone(echo_calls);
    let g = Arc::clone(gate);
    Router::new()
        .on::<EchoCall>(move |_: &CallContext, e: Echo| -> Result<Echo, Failure> {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(e)
        })
        .on::<SlowCall>(move |_: &CallContext, e: Echo| -> Result<Echo, Failure> {
            let _held = g.lock();
            Ok(e)
        })
        .on::<BigCall>(|_: &CallContext, e: Echo| -> Result<Numbers, Failure> {
            Ok(Numbers((0..e.n).collect()))
        })
        .on::<PanicCall>(|_: &CallContext, _: Echo| -> Result<Echo, Failure> {
            panic!("handler bug")
        })
}

impl Harness {
    fn send(&self, id: u64, command: Command, body: &[u8]) {
        let content = encode_request(id, command, body);
        self.engine.on_frame(Ok(content), &self.out);
    }

    fn send_raw(&self, wire: &[u8]) {
        let mut decoder = Decoder::new(self.engine.config().max_frame as usize);
        let mut input = wire;
        while let Some(frame) = decoder.decode(&mut input) {
            self.engine.on_frame(frame, &self.out);
        }
    }

    /// Next response frame, decoded: (id, status, part, parts, data).
    fn next(&self) -> (u64, Status, u32, u32, Vec<u8>) {
        let wire = self
            .rx
            .recv_timeout(Duration::from_secs(5))
            .expect("a response frame");
        let mut decoder = Decoder::new(1 << 20);
        let mut input = &wire[..];
        let content = decoder.decode(&mut input).unwrap().unwrap();
        let p = decode_response_part(&content).unwrap();
        (p.id, p.status, p.part, p.parts, p.data.to_vec())
    }

    fn nothing_more(&self) {
        assert!(self.rx.recv_timeout(Duration::from_millis(100)).is_err());
    }
}

fn echo(n: u64) -> Vec<u8> {
    encode_body(&Echo { n })
}

#[test]
fn hello_negotiates_the_smaller_frame_limit() {
    let h = harness(EngineConfig {
        max_frame: 8192,
        ..EngineConfig::default()
    });
    h.send(
        1,
        Command::HELLO,
        &encode_body(&msg::Hello {
            max_frame: 100_000,
            client: "t".into(),
        }),
    );
    let (id, status, _, _, data) = h.next();
    assert_eq!((id, status), (1, Status::OK));
    let reply: msg::HelloReply = decode_body(&data).unwrap();
    assert_eq!(reply.max_frame, 8192);
    assert!(reply.commands.contains(&ECHO.0));
    h.send(
        2,
        Command::HELLO,
        &encode_body(&msg::Hello {
            max_frame: 10,
            client: String::new(),
        }),
    );
    assert_eq!(h.next().1, Status::MALFORMED_BODY);
}

#[test]
fn a_retried_id_is_answered_from_the_cache_and_executed_once() {
    let h = harness(EngineConfig::default());
    h.send(7, ECHO, &echo(1));
    let first = h.next();
    h.send(7, ECHO, &echo(1));
    let second = h.next();
    assert_eq!(first, second);
    assert_eq!(h.echo_calls.load(Ordering::SeqCst), 1);
    assert_eq!(h.engine.link_stats().replayed, 1);
}

#[test]
fn a_retry_while_running_is_not_executed_again() {
    let h = harness(EngineConfig::default());
    let held = h.gate.lock().unwrap();
    h.send(9, SLOW, &echo(3));
    h.send(9, SLOW, &echo(3));
    h.nothing_more();
    drop(held);
    assert_eq!(h.next().0, 9);
    h.nothing_more();
    assert_eq!(h.engine.link_stats().duplicates_in_flight, 1);
}

#[test]
fn reusing_an_id_for_another_request_is_refused() {
    let h = harness(EngineConfig::default());
    h.send(5, ECHO, &echo(1));
    h.next();
    h.send(5, ECHO, &echo(2));
    let (id, status, ..) = h.next();
    assert_eq!((id, status), (5, Status::ID_CONFLICT));
    assert_eq!(h.echo_calls.load(Ordering::SeqCst), 1);
}

/// Id 0 is reserved for frames the signer could not read: a request that
/// carries it is never executed (nor stored, so a later id-0 request is
/// refused the same way, not as an id conflict).
#[test]
fn a_request_with_id_0_is_refused_and_never_executed() {
    let h = harness(EngineConfig::default());
    for body in [echo(1), echo(2)] {
        h.send(0, ECHO, &body);
        let (id, status, _, _, data) = h.next();
        assert_eq!((id, status), (0, Status::MALFORMED_ENVELOPE));
        let err: msg::ErrorBody = decode_body(&data).unwrap();
        assert!(err.message.contains("id 0"), "{}", err.message);
    }
    h.send(0, Command::HEALTH, &encode_body(&msg::Empty {}));
    assert_eq!(h.next().1, Status::MALFORMED_ENVELOPE);
    assert_eq!(h.echo_calls.load(Ordering::SeqCst), 0);
    h.nothing_more();
}

#[test]
fn unknown_command_and_bad_body() {
    let h = harness(EngineConfig::default());
    h.send(1, Command(0x7777), &echo(1));
    let (id, status, _, _, data) = h.next();
    assert_eq!((id, status), (1, Status::UNKNOWN_COMMAND));
    let err: msg::ErrorBody = decode_body(&data).unwrap();
    assert!(err.message.contains("0x7777"));
    h.send(2, ECHO, &encode_body(&msg::Empty {}));
    assert_eq!(h.next().1, Status::MALFORMED_BODY);
    // [2, 3, 2, {}]: a future protocol version, answered by id.
    h.engine
        .on_frame(Ok(vec![0x94, 0x02, 0x03, 0x02, 0x80]), &h.out);
    let (id, status, ..) = h.next();
    assert_eq!((id, status), (3, Status::UNSUPPORTED_VERSION));
}

#[test]
fn corrupted_frames_get_an_error_frame_and_the_next_request_works() {
    let h = harness(EngineConfig::default());
    let mut wire = signer_frame::encode(&encode_request(1, ECHO, &echo(1)));
    // Corrupt one byte without creating a delimiter (which would split the frame in two).
    wire[3] = if wire[3] == 0x01 {
        0x03
    } else {
        wire[3] ^ 0x01
    };
    wire.extend(b"\x13\x37garbage\x00");
    wire.extend(signer_frame::encode(&encode_request(2, ECHO, &echo(2))));
    h.send_raw(&wire);
    let (id, status, ..) = h.next();
    assert_eq!(id, 0);
    assert!(
        status == Status::FRAME_COBS || status == Status::FRAME_CRC,
        "{status}"
    );
    let (id, status, ..) = h.next();
    assert_eq!(id, 0);
    assert!(
        status == Status::FRAME_COBS || status == Status::FRAME_CRC,
        "{status}"
    );
    assert_eq!((h.next().0, h.echo_calls.load(Ordering::SeqCst)), (2, 1));
}

#[test]
fn busy_beyond_the_in_flight_limit() {
    let h = harness(EngineConfig {
        max_in_flight: 2,
        ..EngineConfig::default()
    });
    let held = h.gate.lock().unwrap();
    h.send(1, SLOW, &echo(1));
    h.send(2, SLOW, &echo(2));
    h.send(3, SLOW, &echo(3));
    let (id, status, ..) = h.next();
    assert_eq!((id, status), (3, Status::BUSY));
    drop(held);
    let mut done = [h.next().0, h.next().0];
    done.sort();
    assert_eq!(done, [1, 2]);
    // A busy answer is not stored: the retry runs.
    h.send(3, SLOW, &echo(3));
    assert_eq!(h.next().1, Status::OK);
}

#[test]
fn large_response_travels_in_parts_and_lost_parts_can_be_fetched() {
    let h = harness(EngineConfig::default());
    // Default peer limit (4096) until hello.
    h.send(11, BIG, &echo(3000));
    let first = h.next();
    let parts = first.3;
    assert!(parts > 1);
    let mut all = vec![first];
    for _ in 1..parts {
        all.push(h.next());
    }
    h.send(
        12,
        Command::FETCH_PARTS,
        &encode_body(&msg::FetchParts {
            id: 11,
            parts: vec![1],
        }),
    );
    let again = h.next();
    assert_eq!(again, all[1]);
    let (id, status, _, _, data) = h.next();
    assert_eq!((id, status), (12, Status::OK));
    assert_eq!(
        decode_body::<msg::FetchPartsReply>(&data).unwrap().resent,
        1
    );
    let body: Vec<u8> = all.iter().flat_map(|p| p.4.clone()).collect();
    assert_eq!(decode_body::<Vec<u64>>(&body).unwrap().len(), 3000);
    h.send(
        13,
        Command::FETCH_PARTS,
        &encode_body(&msg::FetchParts {
            id: 999,
            parts: vec![],
        }),
    );
    assert_eq!(h.next().1, Status::UNKNOWN_RESPONSE);
}

#[test]
fn a_panicking_handler_answers_internal_and_the_engine_goes_on() {
    let h = harness(EngineConfig::default());
    h.send(1, PANIC, &echo(1));
    assert_eq!(h.next().1, Status::INTERNAL);
    h.send(2, ECHO, &echo(2));
    assert_eq!(h.next().1, Status::OK);
    assert_eq!(h.engine.running(), 0);
}

#[test]
fn the_response_cache_is_bounded() {
    let h = harness(EngineConfig {
        cache_entries: 3,
        ..EngineConfig::default()
    });
    for id in 1..=5 {
        h.send(id, ECHO, &echo(id));
        h.next();
    }
    // Id 1 was evicted: its retry executes again; id 5 is still stored.
    h.send(5, ECHO, &echo(5));
    h.next();
    assert_eq!(h.echo_calls.load(Ordering::SeqCst), 5);
    h.send(1, ECHO, &echo(1));
    h.next();
    assert_eq!(h.echo_calls.load(Ordering::SeqCst), 6);
}

#[test]
fn health_reports_link_counters() {
    let h = harness(EngineConfig::default());
    h.send_raw(b"\x01\x02\x03\x00");
    h.next();
    h.send(1, Command::HEALTH, &encode_body(&msg::Empty {}));
    let (_, status, _, _, data) = h.next();
    assert_eq!(status, Status::OK);
    let health: msg::HealthReply = decode_body(&data).unwrap();
    assert_eq!(health.status, msg::HealthStatus::Ok);
    assert_eq!(
        health.link.frames_bad_cobs + health.link.frames_short + health.link.frames_bad_crc,
        1
    );
    assert!(health.time_ms > 1_700_000_000_000);
}

/// Hands each request's answer to a thread of its own, as the repository's
/// committer finishes `sign_x509` once the certificate is on disk.
struct Committer(Mutex<std::sync::mpsc::Sender<(Vec<u8>, Completion)>>);

impl Handler for Committer {
    fn call(&self, _: &CallContext, body: &[u8], done: Completion) {
        let _ = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send((body.to_vec(), done));
    }
}

#[test]
fn a_peer_that_stops_reading_never_stalls_the_thread_finishing_answers() {
    const DEFER: Command = Command(0x104);
    test_call!(DeferCall = DEFER, Echo);
    let (tx, rx) = std::sync::mpsc::channel::<(Vec<u8>, Completion)>();
    let finished = Arc::new(AtomicUsize::new(0));
    let committer = {
        let finished = Arc::clone(&finished);
        std::thread::spawn(move || {
            for (body, done) in rx {
                done.finish(Ok(body));
                finished.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let router = Router::new().with::<DeferCall>(Arc::new(Committer(Mutex::new(tx))));
    let engine = Engine::start(EngineConfig::default(), router, Vec::new());
    // Nobody reads the outgoing queue (256 frames): the peer stopped reading.
    let (out, unread) = crate::outbox();
    let n = 600;
    for id in 1..=n {
        engine.on_frame(Ok(encode_request(id, DEFER, &echo(id))), &out);
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while finished.load(Ordering::SeqCst) < id as usize {
            assert!(
                std::time::Instant::now() < until,
                "the committer stalled at answer {id} behind a peer that does not read"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // The peer reads again and retransmits an answer it never got: it comes
    // from the store, not from a second execution.
    let mut queued = 0;
    while unread.try_recv().is_ok() {
        queued += 1;
    }
    assert_eq!(queued, 256);
    engine.on_frame(Ok(encode_request(n, DEFER, &echo(n))), &out);
    let wire = unread.recv_timeout(Duration::from_secs(5)).unwrap();
    let mut decoder = Decoder::new(1 << 20);
    let content = decoder.decode(&mut &wire[..]).unwrap().unwrap();
    let part = decode_response_part(&content).unwrap();
    assert_eq!((part.id, part.status), (n, Status::OK));
    assert_eq!(decode_body::<Echo>(part.data).unwrap().n, n);
    assert_eq!(
        finished.load(Ordering::SeqCst),
        n as usize,
        "not executed twice"
    );
    engine.shutdown(Duration::from_secs(5));
    drop(engine);
    drop(out);
    let _ = committer;
}

#[test]
fn liveness_fails_while_every_worker_is_stuck_and_returns_after() {
    let config = EngineConfig {
        workers: 2,
        ..EngineConfig::default()
    };
    let h = harness(config);
    assert!(
        h.engine.alive(Duration::from_secs(5)),
        "idle workers take the probe"
    );
    // Both workers wait on the gate (an HSM call that does not return).
    let held = h.gate.lock().expect("gate");
    let body = encode_body(&Echo { n: 1 });
    h.send(1, SLOW, &body);
    h.send(2, SLOW, &body);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !h.engine.alive(Duration::from_millis(300)),
        "no worker is free: the watchdog must not be fed"
    );
    drop(held);
    assert!(h.engine.alive(Duration::from_secs(5)), "free again");
}

/// What a starting daemon's health says.
struct Waiting;

impl signer_service::HealthSource for Waiting {
    fn checks(&self) -> Vec<msg::Check> {
        vec![msg::Check {
            name: "starting".into(),
            status: msg::HealthStatus::Failing,
            detail: "checking".into(),
        }]
    }
}

/// An engine whose services are still starting.
fn starting() -> Harness {
    let engine = Engine::starting(EngineConfig::default(), vec![Arc::new(Waiting)]);
    let (out, rx) = crate::outbox();
    Harness {
        engine,
        out,
        rx,
        echo_calls: Arc::new(AtomicUsize::new(0)),
        gate: Arc::new(Mutex::new(())),
    }
}

#[test]
fn a_starting_engine_answers_hello_and_health_and_refuses_the_rest_unstored() {
    let h = starting();
    let hello = encode_body(&msg::Hello {
        max_frame: 4096,
        client: "t".into(),
    });
    h.send(1, Command::HELLO, &hello);
    let (_, status, _, _, data) = h.next();
    assert_eq!(status, Status::OK);
    let reply: msg::HelloReply = decode_body(&data).unwrap();
    assert_eq!(reply.commands, vec![1, 2, 3]);
    h.send(2, Command::HEALTH, &encode_body(&msg::Empty {}));
    let health: msg::HealthReply = decode_body(&h.next().4).unwrap();
    assert_eq!(health.status, msg::HealthStatus::Failing);
    assert_eq!(health.checks[0].name, "starting");
    // Known later or not at all: nothing runs, nothing is stored.
    for (id, command) in [(7, ECHO), (8, Command(0x0999)), (9, Command::SIGN_X509)] {
        h.send(id, command, &echo(1));
        let (got, status, _, _, _) = h.next();
        assert_eq!((got, status), (id, Status::STARTING), "{command:?}");
    }
    h.send(7, ECHO, &echo(1));
    assert_eq!(h.next().1, Status::STARTING);
    assert_eq!(h.echo_calls.load(Ordering::SeqCst), 0);
    assert!(!h.engine.is_ready());

    h.engine.ready(services(&h.echo_calls, &h.gate), Vec::new());
    assert!(h.engine.is_ready());
    // The same id, executed now, once.
    h.send(7, ECHO, &echo(1));
    assert_eq!(h.next().1, Status::OK);
    h.send(7, ECHO, &echo(1));
    assert_eq!(h.next().1, Status::OK);
    assert_eq!(h.echo_calls.load(Ordering::SeqCst), 1);
    h.send(8, Command(0x0999), &echo(1));
    assert_eq!(h.next().1, Status::UNKNOWN_COMMAND);
    h.send(10, Command::HEALTH, &encode_body(&msg::Empty {}));
    let health: msg::HealthReply = decode_body(&h.next().4).unwrap();
    assert_eq!(health.status, msg::HealthStatus::Ok);
    assert!(health.checks.is_empty());
    h.send(11, Command::HELLO, &hello);
    let reply: msg::HelloReply = decode_body(&h.next().4).unwrap();
    assert!(reply.commands.contains(&ECHO.0));
    // A second hand-over changes nothing.
    h.engine.ready(Router::new(), vec![Arc::new(Waiting)]);
    h.send(12, ECHO, &echo(2));
    assert_eq!(h.next().1, Status::OK);
    h.nothing_more();
}

#[test]
fn a_service_may_answer_health_itself_as_the_gateways_relay_does() {
    let relayed = Router::new().on::<signer_protocol::calls::Health>(
        |_: &CallContext, _: msg::Empty| -> Result<msg::HealthReply, Failure> {
            Ok(msg::HealthReply {
                status: msg::HealthStatus::Degraded,
                version: "x".into(),
                signer_id: "relayed".into(),
                time_ms: 0,
                uptime_s: 0,
                link: msg::LinkStats::default(),
                checks: Vec::new(),
            })
        },
    );
    let h = starting();
    h.send(1, Command::HEALTH, &encode_body(&msg::Empty {}));
    let own: msg::HealthReply = decode_body(&h.next().4).unwrap();
    assert_eq!(own.checks[0].name, "starting");
    h.engine.ready(relayed, Vec::new());
    h.send(2, Command::HEALTH, &encode_body(&msg::Empty {}));
    let theirs: msg::HealthReply = decode_body(&h.next().4).unwrap();
    assert_eq!(theirs.signer_id, "relayed");
}
