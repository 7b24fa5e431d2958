//! The local socket: other programs on this host (the CLI, monitoring, a
//! CRL job) reach the signers through the gateway, which holds the serial
//! devices. The socket carries the same frames as the serial link
//! (docs/protocol.md, "A gateway's local socket").
//!
//! ```text
//! connection ─► frames ─► Engine (its own ids, dedupe, parts, hello) ─► Forward ─► Failover
//!      ▲                                                                  │ any thread
//!      └─────────── writer ◄── outbox ◄───────────────────────────────────┘
//! ```
//!
//! Each connection has its own engine, so two programs may use the same
//! envelope ids; the gateway's link to the signer uses ids of its own.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use signer_client::{Calls, ClientError, Failover};
use signer_protocol::calls::ALL;
use signer_protocol::{msg, Command, Status};
use signer_server::{outbox, Engine, EngineConfig};
use signer_service::{CallContext, Completion, Failure, Handler, Router};
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// Forwards a command's body to the signers unchanged and their answer back.
struct Forward {
    signers: Arc<Failover>,
    metrics: Arc<Metrics>,
}

impl Handler for Forward {
    fn call(&self, ctx: &CallContext, body: &[u8], done: Completion) {
        let signers = Arc::clone(&self.signers);
        let command = ctx.command;
        let body = body.to_vec();
        self.metrics.relay_requests.fetch_add(1, Ordering::Relaxed);
        // The call blocks until a signer answers: off the engine's threads.
        let spawned = std::thread::Builder::new()
            .name("relay-call".into())
            .spawn(move || done.finish(forward(&signers, command, body)));
        if let Err(e) = spawned {
            // `done` went with the closure; dropping it answered `internal`.
            warn!(cause = %e, "cannot start a relay thread");
        }
    }
}

/// The answer to relay: the signer's own (any status), or `busy` when no
/// signer answered (nothing was executed by the gateway; try again).
pub fn forward(signers: &Failover, command: Command, body: Vec<u8>) -> Result<Vec<u8>, Failure> {
    let no_signer = |e: ClientError| {
        Failure::new(Status::BUSY, format!("the gateway reached no signer: {e}"))
            .with_detail("gateway_no_signer")
    };
    let reply = signers.call(command, body).map_err(|e| match e {
        // It may have been executed: a retry goes to that signer only.
        e @ ClientError::InDoubt { .. } => Failure::new(Status::BUSY, e.to_string())
            .with_detail(signer_client::IN_DOUBT_AT_GATEWAY),
        e => no_signer(e),
    })?;
    if reply.status.is_ok() {
        return Ok(reply.body);
    }
    // The signer's refusal, passed on as it came.
    match reply.decode::<msg::Empty>() {
        Err(ClientError::Signer {
            status,
            message,
            detail,
        }) => Err(Failure::new(status, message).with_detail(detail)),
        _ => Err(Failure::new(reply.status, "(unreadable error body)")),
    }
}

/// Every declared command except the ones each connection's engine answers
/// itself (`hello`, `fetch_parts`).
fn router(signers: &Arc<Failover>, metrics: &Arc<Metrics>) -> Router {
    let forward: Arc<dyn Handler> = Arc::new(Forward {
        signers: Arc::clone(signers),
        metrics: Arc::clone(metrics),
    });
    ALL.iter()
        .filter(|d| d.command != Command::HELLO && d.command != Command::FETCH_PARTS)
        .fold(Router::new(), |r, d| {
            r.with_declaration(d, Arc::clone(&forward))
        })
}

/// Binds the socket: a stale socket file is replaced, anything else at the
/// path is refused.
pub fn bind(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            if UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    ErrorKind::AddrInUse,
                    format!("{}: another gateway is listening there", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        } else {
            return Err(std::io::Error::new(
                ErrorKind::AlreadyExists,
                format!("{}: exists and is not a socket", path.display()),
            ));
        }
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Accepts connections until `stop`.
pub fn serve(
    listener: UnixListener,
    name: &str,
    signers: Arc<Failover>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) {
    if let Err(e) = listener.set_nonblocking(true) {
        warn!(cause = %e, "local socket cannot poll; not serving");
        return;
    }
    let router = router(&signers, &metrics);
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                metrics.relay_connections.fetch_add(1, Ordering::Relaxed);
                let config = EngineConfig {
                    signer_id: format!("gateway {name}"),
                    max_frame: 65_536,
                    max_in_flight: 64,
                    cache_entries: 4096,
                    cache_bytes: 16 << 20,
                    workers: 2,
                };
                let engine = Engine::start(config, router.clone(), Vec::new());
                let stop = Arc::clone(&stop);
                let spawned = std::thread::Builder::new()
                    .name("relay-conn".into())
                    .spawn(move || connection(&engine, stream, &stop));
                if let Err(e) = spawned {
                    warn!(cause = %e, "cannot start a connection thread");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                warn!(cause = %e, "local socket: accept failed");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// One local connection: reads frames into its engine, writes its answers.
fn connection(engine: &Arc<Engine>, stream: UnixStream, stop: &AtomicBool) {
    debug!("local connection opened");
    let (out_tx, out_rx) = outbox();
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let writer = std::thread::Builder::new()
        .name("relay-writer".into())
        .spawn(move || {
            while let Ok(frame) = out_rx.recv() {
                if writer.write_all(&frame).is_err() {
                    break;
                }
            }
        });
    let mut reader = stream;
    let _ = reader.set_read_timeout(Some(Duration::from_millis(200)));
    let mut decoder = signer_frame::Decoder::new(engine.config().max_frame as usize);
    let mut buf = vec![0u8; 8192];
    while !stop.load(Ordering::SeqCst) {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let mut input = &buf[..n];
                while let Some(frame) = decoder.decode(&mut input) {
                    engine.on_frame(frame, &out_tx);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
    // Answers still owed would go nowhere; requests already sent to a
    // signer finish there and are answered from its record on a retry.
    engine.shutdown(Duration::from_secs(1));
    let _ = reader.shutdown(std::net::Shutdown::Both);
    drop(out_tx);
    if let Ok(w) = writer {
        let _ = w.join();
    }
    info!("local connection closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_replaces_a_stale_one_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gw.sock");
        std::fs::write(&path, b"a file").expect("write");
        let err = bind(&path, 0o660).expect_err("a plain file is not replaced");
        assert!(err.to_string().contains("not a socket"), "{err}");
        std::fs::remove_file(&path).expect("remove");
        // Left behind by a gateway that died: replaced.
        drop(UnixListener::bind(&path).expect("bind"));
        let live = bind(&path, 0o600).expect("stale socket replaced");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Another gateway listening there: refused.
        let err = bind(&path, 0o660).expect_err("in use");
        assert!(err.to_string().contains("another gateway"), "{err}");
        drop(live);
    }
}
