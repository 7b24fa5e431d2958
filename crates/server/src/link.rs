//! The serial link: opens the device, feeds frames to the engine, writes its
//! answers, and reopens the device with backoff when it vanishes.

use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serialport::SerialPort;
use signer_frame::Decoder;
use tracing::{info, warn};

use crate::config::{FlowControl, LinkConfig, Parity};
use crate::engine::Engine;

const POLL: Duration = Duration::from_millis(100);

/// Opens the serial device as configured.
pub fn open(link: &LinkConfig) -> serialport::Result<Box<dyn SerialPort>> {
    let data_bits = match link.data_bits {
        5 => serialport::DataBits::Five,
        6 => serialport::DataBits::Six,
        7 => serialport::DataBits::Seven,
        _ => serialport::DataBits::Eight,
    };
    serialport::new(link.device.to_string_lossy(), link.baud)
        .data_bits(data_bits)
        .parity(match link.parity {
            Parity::None => serialport::Parity::None,
            Parity::Odd => serialport::Parity::Odd,
            Parity::Even => serialport::Parity::Even,
        })
        .stop_bits(if link.stop_bits == 2 {
            serialport::StopBits::Two
        } else {
            serialport::StopBits::One
        })
        .flow_control(match link.flow_control {
            FlowControl::None => serialport::FlowControl::None,
            FlowControl::Software => serialport::FlowControl::Software,
            FlowControl::Hardware => serialport::FlowControl::Hardware,
        })
        .timeout(POLL)
        .open()
}

/// Serves the protocol on the configured device until `stop` is set.
/// Never returns early because of the device: it is reopened with backoff.
/// On `stop`, requests already accepted get up to `grace` to finish and their
/// answers are written before it returns.
pub fn serve(engine: &Arc<Engine>, link: &LinkConfig, stop: &AtomicBool, grace: Duration) {
    let (mut out_tx, out_rx) = crate::engine::outbox();
    let mut out_rx = Some(out_rx);
    let mut backoff = Duration::from_millis(link.reopen_min_ms);
    let max_backoff = Duration::from_millis(link.reopen_max_ms);
    let mut failures: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        let port = match open(link) {
            Ok(port) => port,
            Err(e) => {
                failures += 1;
                // Say it once, then every 30 attempts, so a missing cable does not flood the journal.
                if failures == 1 || failures.is_multiple_of(30) {
                    warn!(device = %link.device.display(), cause = %e, attempts = failures, "cannot open serial device; retrying");
                }
                sleep_unless(stop, backoff);
                backoff = (backoff * 2).min(max_backoff);
                continue;
            }
        };
        info!(device = %link.device.display(), baud = link.baud, "serial device open");
        engine.note_open();
        failures = 0;
        backoff = Duration::from_millis(link.reopen_min_ms);
        let Some(rx) = out_rx.take() else { return };
        match session(engine, port, rx, &out_tx, stop, grace) {
            Some(rx) => out_rx = Some(rx),
            None => {
                // The writer is stuck in a write the device never completes; it
                // keeps the old queue. Answers still in it are lost; retries replay them.
                let (tx, rx) = crate::engine::outbox();
                out_tx = tx;
                out_rx = Some(rx);
            }
        }
        if !stop.load(Ordering::SeqCst) {
            warn!(device = %link.device.display(), "serial device lost; reopening");
            sleep_unless(stop, backoff);
        }
    }
}

fn sleep_unless(stop: &AtomicBool, total: Duration) {
    let until = Instant::now() + total;
    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
        std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
    }
}

/// How long a session waits for its writer to finish after the reader stopped.
const WRITER_WAIT: Duration = Duration::from_secs(5);

/// One open device: reads on this thread, writes on another. Returns the
/// outgoing queue so the next session can continue it, or `None` when the
/// writer did not finish (a peer that stopped reading under flow control
/// blocks a write indefinitely).
fn session(
    engine: &Arc<Engine>,
    mut port: Box<dyn SerialPort>,
    out_rx: Receiver<Vec<u8>>,
    out_tx: &crate::engine::Outbox,
    stop: &AtomicBool,
    grace: Duration,
) -> Option<Receiver<Vec<u8>>> {
    let failed = Arc::new(AtomicBool::new(false));
    let finish = Arc::new(AtomicBool::new(false));
    let writer = match port.try_clone() {
        Ok(w) => w,
        Err(e) => {
            warn!(cause = %e, "cannot clone serial handle");
            return Some(out_rx);
        }
    };
    let writer_failed = Arc::clone(&failed);
    let writer_finish = Arc::clone(&finish);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("link-writer".into())
        .spawn(move || {
            let rx = write_loop(writer, out_rx, &writer_failed, &writer_finish);
            let _ = done_tx.send(rx);
        });
    if let Err(e) = spawned {
        // The queue moved into the closure that never ran; the caller makes a new one.
        warn!(cause = %e, "cannot start writer thread");
        return None;
    }
    let mut decoder = Decoder::new(engine.config().max_frame as usize);
    let mut buf = vec![0u8; 4096];
    while !stop.load(Ordering::SeqCst) && !failed.load(Ordering::SeqCst) {
        match port.read(&mut buf) {
            Ok(0) => std::thread::sleep(POLL),
            Ok(n) => {
                let mut input = &buf[..n];
                while let Some(frame) = decoder.decode(&mut input) {
                    engine.on_frame(frame, out_tx);
                }
            }
            Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                warn!(cause = %e, "serial read failed");
                break;
            }
        }
    }
    if failed.load(Ordering::SeqCst) {
        // The writer gave up; the reader need not go on.
    } else if stop.load(Ordering::SeqCst) {
        engine.shutdown(grace);
        finish.store(true, Ordering::SeqCst);
    } else {
        failed.store(true, Ordering::SeqCst);
    }
    let wait = if stop.load(Ordering::SeqCst) {
        grace.min(WRITER_WAIT)
    } else {
        WRITER_WAIT
    };
    match done_rx.recv_timeout(wait) {
        Ok(rx) => Some(rx),
        Err(_) => {
            warn!(
                waited_ms = wait.as_millis() as u64,
                "serial writer is blocked (peer not reading?); abandoning it"
            );
            None
        }
    }
}

/// Writes queued frames until the link fails, or until `finish` is set and the queue is empty.
fn write_loop(
    mut port: Box<dyn SerialPort>,
    rx: Receiver<Vec<u8>>,
    failed: &AtomicBool,
    finish: &AtomicBool,
) -> Receiver<Vec<u8>> {
    let mut batch = Vec::new();
    while !failed.load(Ordering::SeqCst) {
        let wait = if finish.load(Ordering::SeqCst) {
            Duration::ZERO
        } else {
            POLL
        };
        match rx.recv_timeout(wait) {
            Ok(frame) => {
                batch.clear();
                batch.extend_from_slice(&frame);
                // Coalesce whatever else is queued into one write.
                while batch.len() < 64 * 1024 {
                    match rx.try_recv() {
                        Ok(more) => batch.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                if let Err(e) = write_all(&mut *port, &batch, failed) {
                    warn!(cause = %e, "serial write failed");
                    failed.store(true, Ordering::SeqCst);
                }
            }
            Err(RecvTimeoutError::Timeout) if finish.load(Ordering::SeqCst) => {
                let _ = port.flush();
                break;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    rx
}

/// Writes everything, tolerating the port's poll timeouts (a slow line or
/// flow control) for as long as the session lives.
fn write_all(
    port: &mut dyn SerialPort,
    mut data: &[u8],
    failed: &AtomicBool,
) -> std::io::Result<()> {
    while !data.is_empty() {
        match port.write(data) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    ErrorKind::WriteZero,
                    "device accepted no bytes",
                ))
            }
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::Interrupted => {
                if failed.load(Ordering::SeqCst) {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
