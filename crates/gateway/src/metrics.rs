//! What monitoring sees: counters and gauges in the Prometheus text format,
//! served over plain HTTP on a loopback address (`GET /metrics`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use signer_client::Failover;
use signer_protocol::msg::{self, HealthStatus};
use tracing::warn;

use crate::queue::{Outcome, Queue};

/// The last health check of one signer.
#[derive(Debug, Clone, Default)]
pub struct SignerState {
    /// Its device.
    pub device: String,
    /// The last report, if the last check got one.
    pub report: Option<msg::HealthReply>,
    /// Why the last check failed.
    pub error: Option<String>,
    /// Its clock minus ours, seconds.
    pub clock_skew_s: f64,
    /// Checks so far.
    pub checks: u64,
}

/// The published CRL of one issuer.
#[derive(Debug, Clone, Default)]
pub struct CrlState {
    /// thisUpdate of the published CRL, Unix seconds (0: none yet).
    pub this_update: i64,
    /// nextUpdate of the published CRL, Unix seconds.
    pub next_update: i64,
    /// Entries.
    pub entries: u64,
    /// Why the last refresh failed (the published CRL is kept).
    pub error: Option<String>,
    /// Refreshes that published a new CRL.
    pub published: u64,
}

/// One signer's audit log copy.
#[derive(Debug, Clone, Default)]
pub struct AuditState {
    /// Its device.
    pub device: String,
    /// Entries held (and acknowledged to the signer).
    pub size: u64,
    /// When the last sync succeeded, Unix seconds (0: not yet).
    pub synced_at: i64,
    /// Why the last sync failed (the signer did not answer, the disk).
    pub error: Option<String>,
    /// The signer's log contradicts the copy: not synced again.
    pub contradiction: Option<String>,
}

/// Shared counters and states.
#[derive(Default)]
pub struct Metrics {
    /// Rows claimed by this process.
    pub claimed: AtomicU64,
    done: AtomicU64,
    refused: AtomicU64,
    retried: AtomicU64,
    parked: AtomicU64,
    queue_errors: AtomicU64,
    queue_up: AtomicBool,
    last_queue_error: Mutex<String>,
    /// Local socket connections accepted.
    pub relay_connections: AtomicU64,
    /// Local socket requests relayed.
    pub relay_requests: AtomicU64,
    /// Per signer, by link index.
    pub signers: Mutex<BTreeMap<usize, SignerState>>,
    /// Per issuer.
    pub crls: Mutex<BTreeMap<String, CrlState>>,
    /// Per audit log copy, by link index.
    pub audits: Mutex<BTreeMap<usize, AuditState>>,
}

/// Health status as a number: 0 ok, 1 degraded, 2 failing.
pub fn level(status: HealthStatus) -> u8 {
    match status {
        HealthStatus::Ok => 0,
        HealthStatus::Degraded => 1,
        HealthStatus::Failing => 2,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A label value, escaped as the text format wants.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Counts how a row ended this round.
    pub fn note_outcome(&self, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::Done(_) => &self.done,
            Outcome::Refused(_) => &self.refused,
            Outcome::Retry { .. } => &self.retried,
            Outcome::Park { .. } => &self.parked,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The queue answered.
    pub fn note_queue_ok(&self) {
        self.queue_up.store(true, Ordering::Relaxed);
    }

    /// The queue failed.
    pub fn note_queue_error(&self, error: &str) {
        self.queue_up.store(false, Ordering::Relaxed);
        self.queue_errors.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_queue_error) = error.to_string();
    }

    /// The Prometheus text exposition.
    pub fn render(&self, queue: &dyn Queue, signers: &Failover, now: i64) -> String {
        let mut out = String::new();
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        match queue.stats() {
            Ok(stats) => {
                self.note_queue_ok();
                family(
                    &mut out,
                    "signer_gateway_queue_rows",
                    "gauge",
                    "Rows in the queue by state and kind.",
                );
                for (state, kind, n) in &stats.rows {
                    let _ = writeln!(
                        out,
                        "signer_gateway_queue_rows{{state=\"{}\",kind=\"{}\"}} {n}",
                        state.as_str(),
                        kind.as_str()
                    );
                }
                family(
                    &mut out,
                    "signer_gateway_queue_oldest_pending_seconds",
                    "gauge",
                    "Age of the oldest row not yet answered.",
                );
                let _ = writeln!(
                    out,
                    "signer_gateway_queue_oldest_pending_seconds {:.3}",
                    stats.oldest_pending_s
                );
                family(
                    &mut out,
                    "signer_gateway_results",
                    "gauge",
                    "Answered rows in the queue by status.",
                );
                for (status, n) in &stats.by_status {
                    let _ = writeln!(
                        out,
                        "signer_gateway_results{{status=\"{}\"}} {n}",
                        label(status)
                    );
                }
            }
            Err(e) => self.note_queue_error(&e.to_string()),
        }
        family(
            &mut out,
            "signer_gateway_queue_up",
            "gauge",
            "1 when the last queue operation succeeded.",
        );
        let _ = writeln!(
            out,
            "signer_gateway_queue_up {}",
            u8::from(self.queue_up.load(Ordering::Relaxed))
        );
        family(
            &mut out,
            "signer_gateway_queue_errors_total",
            "counter",
            "Failed queue operations.",
        );
        let _ = writeln!(
            out,
            "signer_gateway_queue_errors_total {}",
            self.queue_errors.load(Ordering::Relaxed)
        );
        family(
            &mut out,
            "signer_gateway_rows_total",
            "counter",
            "Row attempts by this process, by how they ended.",
        );
        for (name, c) in [
            ("done", &self.done),
            ("refused", &self.refused),
            ("retry", &self.retried),
            ("parked", &self.parked),
        ] {
            let _ = writeln!(
                out,
                "signer_gateway_rows_total{{outcome=\"{name}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        family(
            &mut out,
            "signer_gateway_failovers_total",
            "counter",
            "Times requests moved to another signer.",
        );
        let _ = writeln!(
            out,
            "signer_gateway_failovers_total {}",
            signers.failovers()
        );
        family(
            &mut out,
            "signer_gateway_relay_connections_total",
            "counter",
            "Local socket connections accepted.",
        );
        let _ = writeln!(
            out,
            "signer_gateway_relay_connections_total {}",
            self.relay_connections.load(Ordering::Relaxed)
        );
        family(
            &mut out,
            "signer_gateway_relay_requests_total",
            "counter",
            "Requests relayed from the local socket.",
        );
        let _ = writeln!(
            out,
            "signer_gateway_relay_requests_total {}",
            self.relay_requests.load(Ordering::Relaxed)
        );

        family(
            &mut out,
            "signer_gateway_link",
            "counter",
            "Client-side counters of each open link.",
        );
        for (index, stats) in signers.link_stats().iter().enumerate() {
            let Some(s) = stats else { continue };
            let device = signers
                .links()
                .get(index)
                .map(|l| l.device.display().to_string())
                .unwrap_or_default();
            let d = label(&device);
            for (name, v) in [
                ("frames_sent", s.frames_sent),
                ("bytes_sent", s.bytes_sent),
                ("bytes_received", s.bytes_received),
                ("frames_ok", s.frames_ok),
                ("frames_bad", s.frames_bad),
                ("retransmits", s.retransmits),
                ("part_requests", s.part_requests),
            ] {
                let _ = writeln!(
                    out,
                    "signer_gateway_link{{device=\"{d}\",counter=\"{name}\"}} {v}"
                );
            }
        }

        family(
            &mut out,
            "signer_gateway_signer_up",
            "gauge",
            "1 when the signer answered its last health check.",
        );
        let signer_states = lock(&self.signers).clone();
        for st in signer_states.values() {
            let _ = writeln!(
                out,
                "signer_gateway_signer_up{{device=\"{}\"}} {}",
                label(&st.device),
                u8::from(st.report.is_some())
            );
        }
        family(
            &mut out,
            "signer_gateway_signer_status",
            "gauge",
            "Signer health: 0 ok, 1 degraded, 2 failing (2 when it does not answer).",
        );
        for st in signer_states.values() {
            let v = st.report.as_ref().map_or(2, |r| level(r.status));
            let _ = writeln!(
                out,
                "signer_gateway_signer_status{{device=\"{}\"}} {v}",
                label(&st.device)
            );
        }
        family(
            &mut out,
            "signer_gateway_signer_check",
            "gauge",
            "Each check of the signer's health: 0 ok, 1 degraded, 2 failing.",
        );
        for st in signer_states.values() {
            if let Some(r) = &st.report {
                for c in &r.checks {
                    let _ = writeln!(
                        out,
                        "signer_gateway_signer_check{{device=\"{}\",signer=\"{}\",check=\"{}\"}} {}",
                        label(&st.device),
                        label(&r.signer_id),
                        label(&c.name),
                        level(c.status)
                    );
                }
            }
        }
        family(
            &mut out,
            "signer_gateway_signer_clock_skew_seconds",
            "gauge",
            "The signer's clock minus this host's.",
        );
        for st in signer_states.values() {
            if st.report.is_some() {
                let _ = writeln!(
                    out,
                    "signer_gateway_signer_clock_skew_seconds{{device=\"{}\"}} {:.3}",
                    label(&st.device),
                    st.clock_skew_s
                );
            }
        }
        family(
            &mut out,
            "signer_gateway_signer_link",
            "counter",
            "The signer's own link counters from its health report.",
        );
        for st in signer_states.values() {
            if let Some(r) = &st.report {
                let l = &r.link;
                for (name, v) in [
                    ("frames_ok", l.frames_ok),
                    ("frames_bad_crc", l.frames_bad_crc),
                    ("frames_bad_cobs", l.frames_bad_cobs),
                    ("frames_oversize", l.frames_oversize),
                    ("malformed", l.malformed),
                    ("replayed", l.replayed),
                    ("busy", l.busy),
                    ("executed", l.executed),
                ] {
                    let _ = writeln!(
                        out,
                        "signer_gateway_signer_link{{device=\"{}\",counter=\"{name}\"}} {v}",
                        label(&st.device)
                    );
                }
            }
        }

        let audits = lock(&self.audits).clone();
        family(
            &mut out,
            "signer_gateway_audit_entries",
            "gauge",
            "Entries of the signer's audit log held (verified and acknowledged) here.",
        );
        for a in audits.values() {
            let _ = writeln!(
                out,
                "signer_gateway_audit_entries{{device=\"{}\"}} {}",
                label(&a.device),
                a.size
            );
        }
        family(
            &mut out,
            "signer_gateway_audit_sync_age_seconds",
            "gauge",
            "Time since the audit log copy was last brought up to date.",
        );
        for a in audits.values().filter(|a| a.synced_at > 0) {
            let _ = writeln!(
                out,
                "signer_gateway_audit_sync_age_seconds{{device=\"{}\"}} {}",
                label(&a.device),
                now - a.synced_at
            );
        }
        family(
            &mut out,
            "signer_gateway_audit_sync_failing",
            "gauge",
            "1 when the last sync of the audit log copy failed.",
        );
        for a in audits.values() {
            let _ = writeln!(
                out,
                "signer_gateway_audit_sync_failing{{device=\"{}\"}} {}",
                label(&a.device),
                u8::from(a.error.is_some())
            );
        }
        family(
            &mut out,
            "signer_gateway_audit_contradiction",
            "gauge",
            "1 when the signer's audit log contradicts the copy (rewritten, truncated or rolled back).",
        );
        for a in audits.values() {
            let _ = writeln!(
                out,
                "signer_gateway_audit_contradiction{{device=\"{}\"}} {}",
                label(&a.device),
                u8::from(a.contradiction.is_some())
            );
        }

        let crls = lock(&self.crls).clone();
        family(
            &mut out,
            "signer_gateway_crl_age_seconds",
            "gauge",
            "Time since the published CRL's thisUpdate.",
        );
        for (issuer, c) in &crls {
            if c.this_update > 0 {
                let _ = writeln!(
                    out,
                    "signer_gateway_crl_age_seconds{{issuer=\"{}\"}} {}",
                    label(issuer),
                    now - c.this_update
                );
            }
        }
        family(
            &mut out,
            "signer_gateway_crl_next_update_seconds",
            "gauge",
            "Time left until the published CRL's nextUpdate (negative: expired).",
        );
        for (issuer, c) in &crls {
            if c.this_update > 0 {
                let _ = writeln!(
                    out,
                    "signer_gateway_crl_next_update_seconds{{issuer=\"{}\"}} {}",
                    label(issuer),
                    c.next_update - now
                );
            }
        }
        family(
            &mut out,
            "signer_gateway_crl_entries",
            "gauge",
            "Entries in the published CRL.",
        );
        for (issuer, c) in &crls {
            let _ = writeln!(
                out,
                "signer_gateway_crl_entries{{issuer=\"{}\"}} {}",
                label(issuer),
                c.entries
            );
        }
        family(
            &mut out,
            "signer_gateway_crl_refresh_failing",
            "gauge",
            "1 when the last refresh of the CRL failed (the last good one stays published).",
        );
        for (issuer, c) in &crls {
            let _ = writeln!(
                out,
                "signer_gateway_crl_refresh_failing{{issuer=\"{}\"}} {}",
                label(issuer),
                u8::from(c.error.is_some())
            );
        }
        out
    }
}

/// Serves `GET /metrics` on `listener` until `stop`.
pub fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    queue: Arc<dyn Queue>,
    signers: Arc<Failover>,
    stop: Arc<AtomicBool>,
) {
    if let Err(e) = listener.set_nonblocking(true) {
        warn!(cause = %e, "metrics endpoint cannot poll; not serving");
        return;
    }
    while !stop.load(Ordering::SeqCst) {
        let (stream, _) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => {
                warn!(cause = %e, "metrics endpoint: accept failed");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
        let mut reader = BufReader::new(&stream);
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).is_err() {
            continue;
        }
        // Skip the headers.
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
            line.clear();
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (status, body) = match (method, path) {
            ("GET", "/metrics") => ("200 OK", metrics.render(&*queue, &signers, crate::now_s())),
            ("GET", _) => (
                "404 Not Found",
                "only /metrics is served here\n".to_string(),
            ),
            _ => ("405 Method Not Allowed", "GET only\n".to_string()),
        };
        let mut stream = &stream;
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}
