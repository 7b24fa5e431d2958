//! systemd readiness notification (`Type=notify`): one datagram to
//! `$NOTIFY_SOCKET`. Without the variable (not started by systemd) nothing
//! happens.

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Sends `state` (e.g. `READY=1`) to the service manager, if there is one.
pub fn notify(state: &str) {
    send(std::env::var_os("NOTIFY_SOCKET").as_ref(), state);
}

/// Sends `state` to the notification socket `path` (a path, or an abstract
/// name after `@`), if there is one.
fn send(path: Option<&OsString>, state: &str) {
    let Some(path) = path else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), path)
    };
    if let Err(e) = sent {
        tracing::warn!(cause = %e, "could not notify the service manager");
    }
}

/// The watchdog interval systemd expects (`WatchdogSec=` in the unit, given
/// as `$WATCHDOG_USEC`), if it is meant for this process.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| std::time::Duration::from_micros(usec))
}

/// How often a long start tells systemd it is still starting.
const EXTEND_EVERY: Duration = Duration::from_secs(10);
/// Each time, the start timeout is extended by this much from then.
const EXTEND_BY: Duration = Duration::from_secs(30);
/// The slowest the repository's page check is expected to read (bytes per
/// second; this machine's disks read it at hundreds of MB/s): past the
/// time that rate gives for the file, a start is stuck and no longer
/// extended, so systemd's `TimeoutStartSec` ends it.
const SLOWEST_CHECK: u64 = 20 << 20;

/// A start that takes as long as its repository is large: opening the
/// repository reads every page to verify its checksum (about 2 s for a
/// million certificates and revocations, 20 s for ten million), longer
/// than systemd's default start timeout (90 s) for a large enough file.
/// While a `Starting` lives, systemd is told what the signer is doing
/// (`STATUS=`) and the start timeout is extended (`EXTEND_TIMEOUT_USEC=`)
/// every [`EXTEND_EVERY`], within a budget set by the file's size; a
/// start stuck beyond it is not extended, and systemd's own timeout ends
/// it. Dropping it stops the extensions.
pub struct Starting {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The size of the file at `path` (0 if it cannot be read: the start
/// itself then says why).
pub fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

impl Starting {
    /// Begins the notifications for a start that opens `repository`.
    pub fn begin(repository: &std::path::Path) -> Starting {
        let bytes = file_len(repository);
        let budget = Duration::from_secs(90) + Duration::from_secs(bytes / SLOWEST_CHECK);
        Starting::to(
            std::env::var_os("NOTIFY_SOCKET"),
            format!(
                "checking the repository ({} MiB) before serving",
                bytes >> 20
            ),
            EXTEND_EVERY,
            EXTEND_BY,
            budget,
        )
    }

    /// [`Starting::begin`] with its socket, status and times given.
    fn to(
        socket: Option<OsString>,
        status: String,
        every: Duration,
        by: Duration,
        budget: Duration,
    ) -> Starting {
        if socket.is_none() {
            return Starting {
                stop: None,
                thread: None,
            };
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("starting".into())
            .spawn(move || {
                let started = Instant::now();
                let extend = || {
                    send(
                        socket.as_ref(),
                        &format!(
                            "EXTEND_TIMEOUT_USEC={}\nSTATUS={status}: {} s",
                            by.as_micros(),
                            started.elapsed().as_secs()
                        ),
                    )
                };
                extend();
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    if started.elapsed() + every > budget {
                        tracing::warn!(
                            seconds = started.elapsed().as_secs(),
                            "the start takes longer than the repository's size explains; \
                             systemd's start timeout is no longer extended"
                        );
                        send(
                            socket.as_ref(),
                            &format!("STATUS={status}: stuck? {} s", started.elapsed().as_secs()),
                        );
                        // Wait to be dropped, extending nothing.
                        let _ = stopped.recv();
                        return;
                    }
                    extend();
                }
            })
            .ok();
        Starting {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_start_extends_systemds_timeout_within_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let read = |socket: &UnixDatagram| -> Vec<String> {
            let mut got = Vec::new();
            let mut buf = [0u8; 512];
            while let Ok(n) = socket.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            got
        };
        let starting = Starting::to(
            Some(path.clone().into_os_string()),
            "checking".into(),
            Duration::from_millis(50),
            Duration::from_secs(3),
            Duration::from_millis(400),
        );
        // Until the start is seen as stuck (the budget ends after 400 ms),
        // then a while longer: nothing more comes although it goes on.
        let mut got = Vec::new();
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until && !got.iter().any(|m: &String| m.contains("stuck?")) {
            got.extend(read(&socket));
        }
        std::thread::sleep(Duration::from_millis(200));
        got.extend(read(&socket));
        let extensions = got
            .iter()
            .filter(|m| m.starts_with("EXTEND_TIMEOUT_USEC=3000000\nSTATUS=checking: "))
            .count();
        // At once, then every 50 ms while within the budget: at most eight.
        assert!((1..=8).contains(&extensions), "{got:?}");
        assert!(
            got.last().unwrap().starts_with("STATUS=checking: stuck?"),
            "{got:?}"
        );
        assert_eq!(got.len(), extensions + 1, "{got:?}");
        drop(starting);

        // A start that ends within its budget stops extending when it ends.
        let starting = Starting::to(
            Some(path.into_os_string()),
            "checking".into(),
            Duration::from_millis(50),
            Duration::from_secs(3),
            Duration::from_secs(60),
        );
        std::thread::sleep(Duration::from_millis(120));
        drop(starting);
        let during = read(&socket);
        assert!(!during.is_empty(), "{during:?}");
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(read(&socket), Vec::<String>::new());

        // Without a service manager, nothing is started.
        let quiet = Starting::to(
            None,
            "x".into(),
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
        );
        assert!(quiet.thread.is_none());
    }
}
