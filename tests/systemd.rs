//! signerd under systemd, as the unit runs it: readiness and the watchdog
//! through `$NOTIFY_SOCKET`, log lines with their syslog priority when
//! standard error is the journal's stream.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use signer_testsupport::bin;

#[test]
fn readiness_watchdog_and_journal_priorities() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("signerd.yaml");
    // No CA and a device that is not there yet: signerd serves health and
    // keeps trying the device, which is enough to be alive.
    std::fs::write(
        &config,
        format!(
            "signer_id: watched\nlink:\n  device: {}\n",
            dir.path().join("absent.tty").display()
        ),
    )
    .unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let meta = log.metadata().unwrap();
    let mut child = Command::new(bin("signerd"))
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let (mut ready, mut fed) = (false, 0);
    let until = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 512];
    while Instant::now() < until && fed < 3 {
        if let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            ready |= text.starts_with("READY=1");
            if text == "WATCHDOG=1" {
                assert!(ready, "fed before ready");
                fed += 1;
            }
        }
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(ready, "READY=1 sent\n{log}");
    assert_eq!(
        fed, 3,
        "the watchdog is fed while the engine takes work\n{log}"
    );
    assert_eq!(status.code(), Some(0), "{log}");
    // Every line carries its priority for journald; informational lines <6>,
    // the absent device's warning <4>; no colour codes.
    journal_lines(&log);
    assert!(
        log.lines()
            .any(|l| l.starts_with("<6>") && l.contains("signerd started")),
        "{log}"
    );
}

/// Every line carries its syslog priority for journald, informational
/// (`<6>`) and warning (`<4>`) lines among them, and no colour codes.
fn journal_lines(log: &str) {
    assert!(!log.is_empty());
    for line in log.lines() {
        assert!(
            ["<3>", "<4>", "<6>", "<7>"]
                .iter()
                .any(|p| line.starts_with(p)),
            "{line}"
        );
    }
    assert!(log.lines().any(|l| l.starts_with("<6>")), "{log}");
    assert!(log.lines().any(|l| l.starts_with("<4>")), "{log}");
    assert!(!log.contains('\u{1b}'), "{log}");
}

#[test]
fn the_gateway_logs_with_journal_priorities_too() {
    // A gateway whose signer is not there: it starts, warns that the device
    // does not open, and stops on SIGTERM.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "name: watched\nsigners:\n  - {{device: {}, baud: 115200}}\nqueue:\n  sqlite: {}\nhealth:\n  interval_s: 1\n",
            dir.path().join("absent.tty").display(),
            dir.path().join("queue.sqlite").display()
        ),
    )
    .unwrap();
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let meta = log.metadata().unwrap();
    let mut child = Command::new(bin("signer-gateway"))
        .args(["run", "--config"])
        .arg(&config)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        let text = std::fs::read_to_string(&log_path).unwrap();
        if text.lines().any(|l| l.starts_with("<4>")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait().unwrap();
    journal_lines(&std::fs::read_to_string(&log_path).unwrap());
}

#[test]
fn a_signer_with_a_repository_says_it_checks_it_and_extends_the_start() {
    // Opening the repository reads every page first (seconds at millions
    // of records): systemd hears why the start takes long and extends its
    // start timeout, then READY=1 once the link is served.
    use signer_client::Calls;
    use signer_testsupport::ca::{Ceremony, SERVER_PROFILE};
    use signer_testsupport::{Bench, LinkSpec};
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let socket_path = c.dir().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut env = c.env();
    env.push(("NOTIFY_SOCKET".into(), socket_path.clone()));
    let bench = Bench::start_with_env(LinkSpec::unthrottled(), &c.ca_yaml, env);
    let mut got: Vec<String> = Vec::new();
    let until = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 512];
    while Instant::now() < until && !got.iter().any(|m| m.starts_with("READY=1")) {
        if let Ok(n) = socket.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let ready = got.iter().position(|m| m.starts_with("READY=1"));
    let extended = got.iter().position(|m| {
        m.starts_with("EXTEND_TIMEOUT_USEC=30000000\nSTATUS=checking the repository (")
    });
    assert!(
        matches!((extended, ready), (Some(e), Some(r)) if e < r),
        "{got:?}"
    );
    // Serving: nothing more is extended.
    assert!(bench.client().health().is_ok());
    std::thread::sleep(Duration::from_millis(300));
    while let Ok(n) = socket.recv(&mut buf) {
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(!m.starts_with("EXTEND_TIMEOUT_USEC"), "{m}");
    }
}
