//! The foundation end to end: a real `signerd` on a pty served through the
//! link simulator, driven by the client library, the CLI and raw bytes.

#![allow(clippy::unwrap_used)] // helpers in test files: a failed unwrap is a failed test

use signer_client::Calls;
use std::time::{Duration, Instant};

use signer_client::LinkOptions;
use signer_protocol::{
    decode_body, decode_response_part, encode_body, encode_request, msg, Command, Status,
};
use signer_testsupport::{bin, Bench, LinkSpec};

fn health_body() -> Vec<u8> {
    encode_body(&msg::Empty {})
}

#[test]
fn health_round_trips_over_an_unthrottled_pty() {
    let bench = Bench::start(LinkSpec::unthrottled());
    let client = bench.client();
    let hello = client.server().unwrap();
    assert_eq!(hello.version, 1);
    assert_eq!(hello.signer_id, "test-signer");
    let health = client.health().unwrap();
    assert_eq!(health.status, msg::HealthStatus::Ok);
    assert_eq!(health.link.opens, 1);
    let skew = health.time_ms
        - std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
    assert!(
        skew.abs() < 5_000,
        "signer clock is the host clock here: {skew} ms"
    );
}

#[test]
fn pipelined_health_over_a_115200_baud_link() {
    let bench = Bench::start(LinkSpec::baud(115_200));
    let client = bench.client();
    let n = 40;
    let pending: Vec<_> = (0..n)
        .map(|_| client.submit(Command::HEALTH, health_body()))
        .collect();
    for p in pending {
        let reply = p.wait().unwrap();
        assert_eq!(reply.status, Status::OK);
        assert_eq!(reply.attempts, 1, "a clean link needs no retransmission");
    }
    let stats = client.stats();
    assert_eq!(stats.retransmits, 0);
    assert_eq!(stats.frames_bad, 0);
}

/// Every request completes exactly once over a link with bit errors and
/// dropped bytes: the client retransmits with the same id and the signer
/// answers retries from its store instead of executing them again.
fn noisy_link_exactly_once(link: LinkSpec, requests: usize) {
    let bench = Bench::start(link);
    let mut options = bench.link_options();
    options.min_rto = Duration::from_millis(100);
    let client = bench.client_with(options);
    let hello_and_probe = client.health().unwrap().link.executed;
    let pending: Vec<_> = (0..requests)
        .map(|_| client.submit(Command::HEALTH, health_body()))
        .collect();
    let mut attempts = 0;
    for p in pending {
        let reply = p.wait().expect("every request completes");
        assert_eq!(reply.status, Status::OK);
        decode_body::<msg::HealthReply>(&reply.body).expect("an intact health reply");
        attempts += reply.attempts;
    }
    // Ask until an answer arrives (the link is noisy), then compare counts.
    let health = loop {
        match client.health() {
            Ok(h) => break h,
            Err(e) => eprintln!("health retry: {e}"),
        }
    };
    let stats = client.stats();
    eprintln!(
        "client {stats:?}\nsigner {:?}\nlink {:?}",
        health.link,
        bench.sim.stats()
    );
    // Executed: everything before, the batch once each, and nothing twice.
    assert_eq!(health.link.executed, hello_and_probe + 1 + requests as u64);
    let faults = bench
        .sim
        .stats()
        .iter()
        .map(|s| s.bits_flipped + s.bytes_dropped + s.breaks)
        .sum::<u64>();
    assert!(faults > 0, "the link injected faults");
    assert!(
        attempts as usize > requests || stats.frames_bad > 0,
        "faults hit the traffic"
    );
}

#[test]
fn noisy_115200_link_every_request_completes_exactly_once() {
    noisy_link_exactly_once(LinkSpec::baud(115_200).noisy(1e-5, 1e-4, 42), 150);
}

#[test]
fn very_noisy_unthrottled_link_every_request_completes_exactly_once() {
    noisy_link_exactly_once(LinkSpec::unthrottled().noisy(2e-4, 1e-3, 7), 400);
}

#[test]
fn line_breaks_at_115200_every_request_completes_exactly_once() {
    // About one break per 3,000 bytes, each swallowing 24 bytes into one NUL:
    // frames are cut short and resynchronized on the next delimiter.
    noisy_link_exactly_once(
        LinkSpec::baud(115_200).breaks(3e-4).noisy(0.0, 0.0, 11),
        150,
    );
}

#[test]
fn the_daemon_survives_the_device_vanishing_and_returning() {
    let bench = Bench::start(LinkSpec::unthrottled());
    let client = bench.client();
    assert_eq!(client.health().unwrap().link.opens, 1);
    drop(client);
    bench.sim.unplug(signer_linksim::Side::A);
    std::thread::sleep(Duration::from_millis(500));
    bench.sim.replug(signer_linksim::Side::A).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    let health = loop {
        let mut options = bench.link_options();
        options.timeout = Duration::from_millis(500);
        if let Ok(h) = signer_client::Client::open(&options).and_then(|c| c.health()) {
            break h;
        }
        assert!(
            Instant::now() < until,
            "signer did not come back:\n{}",
            bench.daemon.log()
        );
    };
    assert_eq!(health.link.opens, 2);
    assert!(bench.daemon.log().contains("serial device lost"));
}

/// Writes raw bytes on the client end and collects the response frames that
/// arrive within `wait`.
fn exchange(
    port: &mut dyn serialport::SerialPort,
    wire: &[u8],
    frames: usize,
) -> Vec<(u64, Status, String)> {
    port.write_all(wire).unwrap();
    let mut decoder = signer_frame::Decoder::new(1 << 20);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let until = Instant::now() + Duration::from_secs(5);
    while out.len() < frames && Instant::now() < until {
        let n = match port.read(&mut buf) {
            Ok(n) => n,
            Err(_) => continue,
        };
        let mut input = &buf[..n];
        while let Some(frame) = decoder.decode(&mut input) {
            let content = frame.expect("signer frames are intact on a clean link");
            let part = decode_response_part(&content).unwrap();
            let message = if part.status.is_ok() {
                String::new()
            } else {
                decode_body::<msg::ErrorBody>(part.data).unwrap().message
            };
            out.push((part.id, part.status, message));
        }
    }
    out
}

#[test]
fn bad_input_gets_specific_errors_and_the_daemon_keeps_serving() {
    let bench = Bench::start(LinkSpec::unthrottled());
    drop(bench.client());
    let mut port = serialport::new(bench.client_device().to_string_lossy(), 115_200)
        .timeout(Duration::from_millis(50))
        .open()
        .unwrap();
    let frame = |content: &[u8]| signer_frame::encode(content);

    let mut bad_crc = frame(&encode_request(1, Command::HEALTH, &health_body()));
    let last = bad_crc.len() - 2;
    bad_crc[last] = if bad_crc[last] == 0x01 {
        0x02
    } else {
        bad_crc[last] ^ 0x01
    };
    let cases: Vec<(&str, Vec<u8>, u64, Status)> = vec![
        ("bad CRC", bad_crc, 0, Status::FRAME_CRC),
        (
            "truncated COBS",
            vec![0x09, 0x94, 0x01, 0x00],
            0,
            Status::FRAME_COBS,
        ),
        (
            "too short",
            vec![0x03, 0x01, 0x02, 0x00],
            0,
            Status::FRAME_SHORT,
        ),
        (
            "oversize",
            [vec![0x55u8; 20_000], vec![0]].concat(),
            0,
            Status::FRAME_OVERSIZE,
        ),
        (
            "not an envelope",
            frame(&[0x80]),
            0,
            Status::MALFORMED_ENVELOPE,
        ),
        (
            "future version",
            frame(&[0x94, 0x07, 0x05, 0x02, 0x80]),
            5,
            Status::UNSUPPORTED_VERSION,
        ),
        (
            "unknown command",
            frame(&encode_request(6, Command(0x4242), &health_body())),
            6,
            Status::UNKNOWN_COMMAND,
        ),
        (
            "a body that is not msgpack (0xc1 is never used)",
            frame(&encode_request(7, Command::HEALTH, &[0xc1])),
            7,
            Status::MALFORMED_ENVELOPE,
        ),
        (
            "malformed body: a number where health takes a map",
            frame(&encode_request(7, Command::HEALTH, &[0x01])),
            7,
            Status::MALFORMED_BODY,
        ),
        (
            "a byte after the request array, answered by id",
            frame(
                &[
                    &encode_request(10, Command::HEALTH, &health_body())[..],
                    &[0x81],
                ]
                .concat(),
            ),
            10,
            Status::MALFORMED_ENVELOPE,
        ),
        (
            "a readable id, a command that is a string",
            frame(&[0x94, 0x01, 0x0b, 0xa1, 0x78, 0x80]),
            11,
            Status::MALFORMED_ENVELOPE,
        ),
        (
            "a readable id, an array of 2",
            frame(&[0x92, 0x01, 0x0c]),
            12,
            Status::MALFORMED_ENVELOPE,
        ),
        (
            "unknown field",
            frame(&encode_request(
                8,
                Command::HEALTH,
                &hex::decode("81a178c3").unwrap(),
            )),
            8,
            Status::MALFORMED_BODY,
        ),
    ];
    for (what, wire, id, status) in cases {
        let got = exchange(&mut *port, &wire, 1);
        assert_eq!(got.len(), 1, "{what}: one answer");
        assert_eq!((got[0].0, got[0].1), (id, status), "{what}: {}", got[0].2);
        assert!(!got[0].2.is_empty(), "{what}: a message");
    }
    // Random garbage with no delimiter, then a delimiter: one error, then service as usual.
    let garbage: Vec<u8> = (0..3000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 1)
        .collect();
    let got = exchange(&mut *port, &[garbage, vec![0]].concat(), 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, 0);
    let got = exchange(
        &mut *port,
        &frame(&encode_request(9, Command::HEALTH, &health_body())),
        1,
    );
    assert_eq!((got[0].0, got[0].1), (9, Status::OK));
    // The same id again: answered from the store, byte for byte the same request.
    let got = exchange(
        &mut *port,
        &frame(&encode_request(9, Command::HEALTH, &health_body())),
        1,
    );
    assert_eq!((got[0].0, got[0].1), (9, Status::OK));
    let got = exchange(
        &mut *port,
        &frame(&encode_request(
            9,
            Command::HELLO,
            &encode_body(&msg::Hello {
                max_frame: 4096,
                client: String::new(),
            }),
        )),
        1,
    );
    assert_eq!((got[0].0, got[0].1), (9, Status::ID_CONFLICT));
}

#[test]
fn sigterm_stops_the_daemon_cleanly_and_systemd_hears_ready_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut bench = Bench::start_with_env(
        LinkSpec::unthrottled(),
        "",
        vec![("NOTIFY_SOCKET".into(), socket_path)],
    );
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).unwrap();
    let ready = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(ready.starts_with("READY=1\nSTATUS=serving "), "{ready}");
    drop(bench.client());
    // A hang-up (the session that started it closed) does not stop it.
    bench.daemon.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        bench.client().health().unwrap().signer_id,
        "test-signer",
        "still serving after SIGHUP"
    );
    bench.daemon.signal("TERM");
    assert_eq!(bench.daemon.wait(Duration::from_secs(15)), Some(0));
    let log = bench.daemon.log();
    assert!(log.contains("signerd stopped"));
    // Not a terminal: plain text for journald, no colour codes.
    assert!(!log.contains('\u{1b}'), "{log}");
    let n = socket.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
}

#[test]
fn client_cli_health_text_json_and_exit_codes() {
    let bench = Bench::start(LinkSpec::baud(115_200));
    drop(bench.client());
    let device = bench.client_device();
    let out = std::process::Command::new(bin("signer-client"))
        .args(["--link", device.to_str().unwrap(), "--json", "health"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["health"]["signer_id"], "test-signer");
    // Its output closed early (`| head -c0`): no panic, the exit code of the command.
    let mut child = std::process::Command::new(bin("signer-client"))
        .args(["--link", device.to_str().unwrap(), "health"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json["clock_skew_warning"], false);

    let out = std::process::Command::new(bin("signer-client"))
        .args(["--link", device.to_str().unwrap(), "health"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("status    ok") && text.contains("test-signer"),
        "{text}"
    );

    let out = std::process::Command::new(bin("signer-client"))
        .args(["--link", device.to_str().unwrap(), "hello"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("max_in_flight 16"));

    let missing = bench.dir().join("no-such-tty");
    let out = std::process::Command::new(bin("signer-client"))
        .args(["--link", missing.to_str().unwrap(), "health"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "link failure exit code");
    let out = std::process::Command::new(bin("signer-client"))
        .args(["frobnicate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "usage exit code");
}

/// A simulated link in `dir` with no signer on its far end, and the
/// options of its near end.
fn link_to_nobody(dir: &std::path::Path) -> (signer_linksim::LinkSim, LinkOptions) {
    let sim =
        signer_linksim::LinkSim::start(signer_linksim::Options::new(dir.join("a"), dir.join("b")))
            .unwrap();
    let mut options = LinkOptions::new(dir.join("b"));
    options.baud = 4_000_000;
    (sim, options)
}

#[test]
fn client_times_out_when_no_signer_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, mut options) = link_to_nobody(dir.path());
    options.timeout = Duration::from_millis(2500);
    let err = match signer_client::Client::open(&options) {
        Ok(_) => panic!("nobody is listening"),
        Err(e) => e,
    };
    assert!(
        matches!(err, signer_client::ClientError::Timeout(_, n) if n >= 2),
        "{err}"
    );
    drop(sim);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Floods the signer with 3-byte frames (each earns a ~70-byte error
/// answer) from a thread, without reading, until the writes stall. Returns
/// the port for reading, the flooding thread and how many bytes got through.
fn flood_until_stalled(
    bench: &Bench,
    total: usize,
) -> (
    Box<dyn serialport::SerialPort>,
    std::thread::JoinHandle<()>,
    usize,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let port = serialport::new(bench.client_device().to_string_lossy(), 115_200)
        .timeout(Duration::from_millis(200))
        .open()
        .unwrap();
    let mut writer = port.try_clone().unwrap();
    let written = Arc::new(AtomicUsize::new(0));
    let progress = Arc::clone(&written);
    let flood = std::thread::spawn(move || {
        while progress.load(Ordering::SeqCst) < total {
            match writer.write_all(&[0x02, 0x01, 0x00]) {
                Ok(()) => progress.fetch_add(3, Ordering::SeqCst),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                Err(_) => return,
            };
        }
    });
    let mut last = (0, Instant::now());
    let until = Instant::now() + Duration::from_secs(30);
    while last.1.elapsed() < Duration::from_secs(1) {
        assert!(
            Instant::now() < until,
            "the daemon never applied back-pressure"
        );
        std::thread::sleep(Duration::from_millis(50));
        let now = written.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    assert!(last.0 < total, "the flood stalled before its end");
    (port, flood, last.0)
}

/// A peer that floods bad frames and never reads is answered until the line
/// backs up; then the daemon stops reading instead of queueing answers
/// without limit, and serves normally once the peer reads again.
#[test]
fn a_flood_from_a_peer_that_never_reads_keeps_memory_bounded() {
    let bench = Bench::start(LinkSpec::unthrottled());
    drop(bench.client());
    let before = rss_kib(bench.daemon.pid());
    let (mut port, flood, stalled_at) = flood_until_stalled(&bench, 200_000);
    let during = rss_kib(bench.daemon.pid());
    eprintln!("stalled after {stalled_at} bytes; daemon RSS {before} KiB before, {during} KiB while backed up");
    assert!(
        during < before + 32 * 1024,
        "RSS grew from {before} to {during} KiB"
    );
    // Read what is queued until the flood is through, then the daemon serves as usual.
    let mut buf = vec![0u8; 1 << 16];
    let mut quiet = Instant::now();
    let until = Instant::now() + Duration::from_secs(60);
    while !(flood.is_finished() && quiet.elapsed() > Duration::from_millis(500)) {
        assert!(Instant::now() < until, "draining the answers took too long");
        if matches!(port.read(&mut buf), Ok(n) if n > 0) {
            quiet = Instant::now();
        }
    }
    drop(port);
    assert_eq!(
        bench.client().health().unwrap().status,
        msg::HealthStatus::Ok
    );
}

/// SIGTERM stops the daemon even while the peer has stopped reading and
/// every queue is full.
#[test]
fn sigterm_stops_the_daemon_while_the_peer_does_not_read() {
    let mut bench = Bench::start(LinkSpec::unthrottled());
    drop(bench.client());
    let (_port, _flood, _) = flood_until_stalled(&bench, 200_000);
    bench.daemon.signal("TERM");
    assert_eq!(
        bench.daemon.wait(Duration::from_secs(20)),
        Some(0),
        "{}",
        bench.daemon.log()
    );
}

#[test]
fn callers_waiting_for_a_lost_signer_share_one_attempt_to_reach_it() {
    // Two links: the first with nobody on it (a lost signer), the second
    // with a signer. Callers that need the lost one while another is trying
    // to open its link get that attempt's failure instead of each waiting
    // out an attempt of their own in turn (a gateway's workers with rows in
    // doubt on it did, and the twin's rows waited behind them); a caller
    // that comes afterwards tries again; requests go to the one that
    // answers.
    let dir = tempfile::tempdir().unwrap();
    let (sim, lost) = link_to_nobody(dir.path());
    let bench = Bench::start(LinkSpec::unthrottled());
    drop(bench.client());
    let pair = std::sync::Arc::new(signer_client::Failover::new(
        vec![lost, bench.link_options()],
        Duration::from_secs(2),
    ));
    let callers: Vec<_> = (0..3)
        .map(|k| {
            let pair = std::sync::Arc::clone(&pair);
            // The first starts the attempt; the others come while it runs.
            std::thread::sleep(Duration::from_millis(if k == 0 { 0 } else { 300 }));
            std::thread::spawn(move || pair.server_of(0).unwrap_err())
        })
        .collect();
    let errors: Vec<signer_client::ClientError> =
        callers.into_iter().map(|c| c.join().unwrap()).collect();
    let attempts = errors
        .iter()
        .filter(|e| matches!(e, signer_client::ClientError::Timeout(..)))
        .count();
    let shared = errors
        .iter()
        .filter(|e| matches!(e, signer_client::ClientError::Link { message, .. } if message.contains("while this one waited")))
        .count();
    assert_eq!((attempts, shared), (1, 2), "{errors:?}");
    assert!(errors.iter().all(signer_client::no_answer), "{errors:?}");
    // Afterwards: a new attempt of its own.
    let later = pair.server_of(0).unwrap_err();
    assert!(
        matches!(later, signer_client::ClientError::Timeout(..)),
        "{later}"
    );
    // The signer that answers is used meanwhile.
    let reply = pair.call(Command::HEALTH, health_body()).unwrap();
    assert_eq!(reply.status, Status::OK);
    assert_eq!(pair.current(), 1);
    drop(sim);
}
