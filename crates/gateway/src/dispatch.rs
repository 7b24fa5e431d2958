//! Moves queued rows to the signers and their answers back.
//!
//! ```text
//! claimer ─ claim(free workers) ─► channel ─► worker × N ─► signer ─► check ─► finisher ─► finish_all
//!                                                  │ ▲
//!                                        marker ◄──┘ └── "written": only then is the request sent
//!                                     (mark_sent_all)
//! ```
//!
//! The claimer takes only as many rows as there are idle workers, so a
//! claimed row is being sent, not waiting out its lease in a buffer; under
//! load it waits until a quarter of them are free, so that one claim
//! transaction serves many rows. Each worker's call is pipelined with the
//! others' on the same link. The finisher writes the outcomes that arrived
//! together in one transaction (one fsync for many rows) before the workers
//! count as free again. Where each request goes (`sent_to`) is committed before
//! it is sent; the marker writes the marks that arrive together in one
//! transaction too, so that durable record costs one fsync per group, not one
//! per row.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use signer_client::requests::{self, Request, Trust};
use signer_client::{Calls, ClientError, Failover};
use signer_protocol::Status;
use tracing::{info, warn};

use crate::config::QueueConfig;
use crate::metrics::Metrics;
use crate::queue::{Answer, Claimed, Outcome, Queue};

/// True for statuses that say the request itself is refused: sending it
/// again changes nothing. Everything else (the link, `busy`, a signer still
/// starting, the signer's HSM, disk or clock) is worth another attempt.
pub fn is_final(status: Status) -> bool {
    matches!(
        status,
        Status::UNKNOWN_COMMAND | Status::MALFORMED_BODY | Status::NOT_ENABLED
    ) || (100..300).contains(&status.0)
        || (400..500).contains(&status.0)
}

/// One signer of the pair, as a call surface: no failover.
pub struct Pinned<'a> {
    /// The pair.
    pub signers: &'a Failover,
    /// The link.
    pub index: usize,
}

impl Calls for Pinned<'_> {
    fn call(
        &self,
        command: signer_protocol::Command,
        body: Vec<u8>,
    ) -> Result<signer_client::Reply, ClientError> {
        self.signers.call_on(self.index, command, body)
    }
}

/// Sends one request to one signer and checks the answer.
fn execute(
    signers: &impl Calls,
    signer: &str,
    trust: &Trust,
    request: &Request,
) -> Result<Answer, ClientError> {
    let done = requests::execute(signers, trust, request)?;
    Ok(Answer {
        status_code: 0,
        status_name: "ok".into(),
        signer: signer.to_string(),
        serial: done.serial,
        certificate: done.certificate,
        result: Some(done.result.to_string()),
        ..Answer::default()
    })
}

/// How long to wait before attempt `attempts + 1`: doubling from the
/// minimum, capped, with up to a quarter of jitter so that rows failed
/// together do not come back together.
pub fn backoff(config: &QueueConfig, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(20);
    let base = config
        .retry_min_ms
        .saturating_mul(1u64 << exp)
        .min(config.retry_max_ms);
    let jitter = rand::random::<u64>() % (base / 4 + 1);
    Duration::from_millis(base - jitter)
}

/// A failure that is worth another attempt: parked once the attempts are used up.
fn transient(
    config: &QueueConfig,
    row: &Claimed,
    error: String,
    sent_to: Option<String>,
) -> Outcome {
    if row.attempts >= config.max_attempts {
        Outcome::Park {
            error: format!("{error} (after {} attempts)", row.attempts),
        }
    } else {
        Outcome::Retry {
            error,
            at: SystemTime::now() + backoff(config, row.attempts),
            sent_to,
        }
    }
}

/// The outcome of a request sent to signer `signer`.
fn classify(
    config: &QueueConfig,
    row: &Claimed,
    result: Result<Answer, ClientError>,
    signer: &str,
) -> Outcome {
    match result {
        Ok(answer) => Outcome::Done(answer),
        Err(ClientError::Signer {
            status,
            message,
            detail,
        }) if is_final(status) && status != Status::UNKNOWN_SERIAL => Outcome::Refused(Answer {
            status_code: i64::from(status.0),
            status_name: status.to_string(),
            message,
            detail,
            signer: signer.to_string(),
            ..Answer::default()
        }),
        // The signer did nothing: any signer may take the row next time.
        // (`None` keeps what the row holds: a row in doubt on this signer,
        // which may answer before it reads its records — starting,
        // stopping — stays in doubt here.)
        Err(e @ ClientError::Signer { .. }) => {
            transient(config, row, format!("{signer}: {e}"), None)
        }
        // It may have executed the request: only it may be asked again.
        Err(e) => transient(
            config,
            row,
            format!(
                "{signer}: {e} (the request may have reached it: only {signer} is asked again)"
            ),
            Some(signer.to_string()),
        ),
    }
}

/// A worker's request to the marker: record that a row goes to a signer.
struct Mark {
    request_id: String,
    signer: String,
    /// Whether it was written (false: the row is no longer ours), or why not.
    written: mpsc::Sender<Result<bool, String>>,
}

/// The dispatcher: a claimer and its workers.
pub struct Dispatcher {
    /// The queue.
    pub queue: Arc<dyn Queue>,
    /// The signers.
    pub signers: Arc<Failover>,
    /// Queue settings.
    pub config: QueueConfig,
    /// This gateway's name (the claims' owner).
    pub owner: String,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// CRLs that changed since they were last fetched.
    pub revoked: crate::crl::Revoked,
    /// CA certificates answers are checked with.
    pub trust: Arc<Trust>,
}

impl Dispatcher {
    /// Runs until `stop`; rows in hand are finished (answer or retry) first.
    pub fn run(self: Arc<Self>, stop: &AtomicBool) {
        match self.queue.release(&self.owner) {
            Ok(0) => {}
            Ok(n) => info!(rows = n, "took back the rows an earlier run had claimed"),
            Err(e) => {
                warn!(cause = %e, "cannot take back earlier claims; they wait for their lease")
            }
        }
        let (tx, rx) = mpsc::channel::<Claimed>();
        let rx = Arc::new(Mutex::new(rx));
        let (done_tx, done_rx) = mpsc::channel::<(String, Outcome)>();
        let idle = Arc::new(AtomicUsize::new(self.config.workers));
        let (mark_tx, mark_rx) = mpsc::channel::<Mark>();
        let marker = {
            let me = Arc::clone(&self);
            std::thread::Builder::new()
                .name("dispatch-mark".into())
                .spawn(move || me.mark_groups(&mark_rx))
        };
        let mut workers = Vec::new();
        for n in 0..self.config.workers {
            let me = Arc::clone(&self);
            let rx = Arc::clone(&rx);
            let done = done_tx.clone();
            let marks = mark_tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("dispatch-{n}"))
                .spawn(move || me.work(&rx, &done, &marks));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => warn!(cause = %e, "cannot start a dispatch worker"),
            }
        }
        drop(done_tx);
        drop(mark_tx);
        let finisher = {
            let me = Arc::clone(&self);
            let idle = Arc::clone(&idle);
            std::thread::Builder::new()
                .name("dispatch-finish".into())
                .spawn(move || me.finish_outcomes(&done_rx, &idle))
        };
        let lease = Duration::from_secs(self.config.lease_s);
        let batch = (self.config.workers / 4).max(1);
        while !stop.load(Ordering::SeqCst) {
            let free = idle.load(Ordering::SeqCst);
            let busy = self.config.workers - free;
            if free == 0 || (busy > 0 && free < batch) {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            match self.queue.claim(&self.owner, free, lease) {
                Ok(rows) if rows.is_empty() => {
                    self.metrics.note_queue_ok();
                    if busy == 0 {
                        self.queue.wait(Duration::from_secs(1));
                    } else {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                Ok(rows) => {
                    self.metrics.note_queue_ok();
                    idle.fetch_sub(rows.len(), Ordering::SeqCst);
                    for row in rows {
                        self.metrics.claimed.fetch_add(1, Ordering::Relaxed);
                        if tx.send(row).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    self.metrics.note_queue_error(&e.to_string());
                    warn!(cause = %e, "cannot claim rows; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        drop(tx);
        for w in workers {
            let _ = w.join();
        }
        if let Ok(m) = marker {
            let _ = m.join();
        }
        if let Ok(f) = finisher {
            let _ = f.join();
        }
    }

    fn work(
        &self,
        rx: &Mutex<Receiver<Claimed>>,
        done: &mpsc::Sender<(String, Outcome)>,
        marks: &mpsc::Sender<Mark>,
    ) {
        loop {
            let next = rx
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .recv_timeout(Duration::from_millis(200));
            let row = match next {
                Ok(row) => row,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let outcome = self.outcome(&row, marks);
            if done.send((row.request_id, outcome)).is_err() {
                return;
            }
        }
    }

    /// Writes the marks of where requests go as they come, those that
    /// arrived together in one transaction, and tells each worker.
    fn mark_groups(&self, marks: &Receiver<Mark>) {
        while let Ok(first) = marks.recv() {
            let mut group = vec![first];
            while group.len() < 256 {
                match marks.try_recv() {
                    Ok(more) => group.push(more),
                    Err(_) => break,
                }
            }
            let rows: Vec<(String, String)> = group
                .iter()
                .map(|m| (m.request_id.clone(), m.signer.clone()))
                .collect();
            match self.queue.mark_sent_all(&self.owner, &rows) {
                Ok(written) => {
                    for (m, ok) in group.iter().zip(written) {
                        let _ = m.written.send(Ok(ok));
                    }
                }
                Err(e) => {
                    self.metrics.note_queue_error(&e.to_string());
                    for m in &group {
                        let _ = m.written.send(Err(e.to_string()));
                    }
                }
            }
        }
    }

    /// Records through the marker that `row` goes to `signer`; returns once
    /// it is durable.
    fn mark_sent(
        &self,
        marks: &mpsc::Sender<Mark>,
        row: &Claimed,
        signer: &str,
    ) -> Result<bool, String> {
        let (tx, rx) = mpsc::channel();
        marks
            .send(Mark {
                request_id: row.request_id.clone(),
                signer: signer.to_string(),
                written: tx,
            })
            .map_err(|_| "the gateway is stopping".to_string())?;
        rx.recv()
            .map_err(|_| "the gateway is stopping".to_string())?
    }

    /// Writes outcomes as they come, those that arrived together in one
    /// transaction; the workers that produced them count as free once written.
    fn finish_outcomes(&self, done: &Receiver<(String, Outcome)>, idle: &AtomicUsize) {
        while let Ok(first) = done.recv() {
            let mut group = vec![first];
            while group.len() < 256 {
                match done.try_recv() {
                    Ok(more) => group.push(more),
                    Err(_) => break,
                }
            }
            loop {
                match self.queue.finish_all(&self.owner, &group) {
                    Ok(written) => {
                        for ((request_id, _), ok) in group.iter().zip(written) {
                            if !ok {
                                // The lease ran out and another gateway took the
                                // row: it sends the same request id and writes
                                // the same answer.
                                warn!(%request_id, "row no longer ours; left to its new owner");
                            }
                        }
                        break;
                    }
                    Err(e) => {
                        // The answers are recorded on the signer; keep trying
                        // to write them (after a restart the rows are sent
                        // again and the signer answers from its record).
                        self.metrics.note_queue_error(&e.to_string());
                        warn!(rows = group.len(), cause = %e, "cannot write answers; retrying");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
            idle.fetch_add(group.len(), Ordering::SeqCst);
        }
    }

    /// The link of the signer named `signer_id`, if it answers.
    fn link_of(&self, signer_id: &str) -> Option<usize> {
        (0..self.signers.links().len()).find(|&i| {
            self.signers
                .server_of(i)
                .is_ok_and(|h| h.signer_id == signer_id)
        })
    }

    /// Sends a row: to the signer it may already have reached, if any;
    /// otherwise to the current signer, then its twin while signers are
    /// unreachable or say they cannot act now (nothing was done there).
    fn send(&self, row: &Claimed, request: &Request, marks: &mpsc::Sender<Mark>) -> Outcome {
        if let Some(signer) = &row.sent_to {
            return match self.link_of(signer) {
                Some(index) => {
                    let pinned = Pinned { signers: &self.signers, index };
                    let result = execute(&pinned, signer, &self.trust, request);
                    classify(&self.config, row, result, signer)
                }
                None => transient(
                    &self.config,
                    row,
                    format!("in doubt on {signer}, which does not answer: it may have executed the request, so its twin is not asked"),
                    Some(signer.clone()),
                ),
            };
        }
        let links = self.signers.links().len();
        let start = self.signers.current();
        let mut last = String::from("no signer configured");
        let mut marked = false;
        for k in 0..links {
            let index = (start + k) % links;
            let signer = match self.signers.server_of(index) {
                Ok(hello) => hello.signer_id,
                Err(e) => {
                    // Not opened: nothing was sent there.
                    last = format!("{}: {e}", self.signers.links()[index].device.display());
                    self.signers.avoid(index);
                    continue;
                }
            };
            // Written before anything is sent: a gateway killed while the
            // request is on its way leaves the row in doubt on this signer,
            // never free for its twin (which would sign it a second time).
            match self.mark_sent(marks, row, &signer) {
                Ok(true) => marked = true,
                Ok(false) => {
                    return transient(
                        &self.config,
                        row,
                        "the row is no longer this gateway's; nothing was sent".into(),
                        None,
                    )
                }
                Err(e) => {
                    return transient(
                        &self.config,
                        row,
                        format!("cannot record where the request goes ({e}); nothing was sent"),
                        None,
                    );
                }
            }
            let pinned = Pinned {
                signers: &self.signers,
                index,
            };
            let result = execute(&pinned, &signer, &self.trust, request);
            match &result {
                // This signer did nothing and cannot now: its twin may.
                Err(e @ ClientError::Signer { status, .. })
                    if links > 1 && signer_client::twin_may_answer(*status) =>
                {
                    last = format!("{signer}: {e}");
                    self.signers.avoid(index);
                    continue;
                }
                Err(e) if signer_client::no_answer(e) => self.signers.avoid(index),
                _ => {}
            }
            return classify(&self.config, row, result, &signer);
        }
        // Every signer asked said it did nothing: the row is in doubt nowhere.
        transient(&self.config, row, last, marked.then(String::new))
    }

    /// Sends one claimed row: how it ended.
    fn outcome(&self, row: &Claimed, marks: &mpsc::Sender<Mark>) -> Outcome {
        let outcome = match Request::from_row(&row.request_id, &row.kind, &row.body) {
            Err(message) => Outcome::Refused(Answer {
                status_code: i64::from(Status::MALFORMED_BODY.0),
                status_name: Status::MALFORMED_BODY.to_string(),
                message: format!("the gateway cannot read this row's body: {message}"),
                ..Answer::default()
            }),
            Ok(request) => {
                let outcome = self.send(row, &request, marks);
                if let (Request::Revoke(r), Outcome::Done(_)) = (&request, &outcome) {
                    crate::crl::mark_revoked(&self.revoked, &r.issuer, &r.serial);
                }
                outcome
            }
        };
        self.metrics.note_outcome(&outcome);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> QueueConfig {
        QueueConfig {
            sqlite: None,
            postgres: None,
            workers: 1,
            poll_ms: 10,
            lease_s: 60,
            max_attempts: 3,
            retry_min_ms: 100,
            retry_max_ms: 1000,
        }
    }

    fn row(attempts: u32) -> Claimed {
        Claimed {
            request_id: "r1".into(),
            kind: "sign_x509".into(),
            body: "{}".into(),
            attempts,
            sent_to: None,
        }
    }

    #[test]
    fn a_row_in_doubt_stays_with_a_signer_that_answers_before_reading_its_records() {
        let in_doubt = Claimed {
            sent_to: Some("signer-a".into()),
            ..row(1)
        };
        for status in [Status::STARTING, Status::SHUTTING_DOWN] {
            let refused = Err(ClientError::Signer {
                status,
                message: "not now".into(),
                detail: String::new(),
            });
            // Retried, and the row's signer is kept (`None`), never cleared.
            assert!(matches!(
                classify(&config(), &in_doubt, refused, "signer-a"),
                Outcome::Retry { sent_to: None, .. }
            ));
        }
    }

    #[test]
    fn refusals_are_final_and_failures_retry_until_parked() {
        let refused = classify(
            &config(),
            &row(1),
            Err(ClientError::Signer {
                status: Status::WEAK_KEY,
                message: "too short".into(),
                detail: String::new(),
            }),
            "a",
        );
        assert!(
            matches!(&refused, Outcome::Refused(a) if a.status_name == "weak_key" && a.status_code == 103)
        );
        let busy = ClientError::Signer {
            status: Status::BUSY,
            message: "busy".into(),
            detail: String::new(),
        };
        assert!(matches!(
            classify(&config(), &row(1), Err(busy), "a"),
            Outcome::Retry { .. }
        ));
        let timeout = || Err(ClientError::Timeout(Duration::from_secs(1), 2));
        assert!(matches!(
            classify(&config(), &row(2), timeout(), "a"),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            classify(&config(), &row(3), timeout(), "a"),
            Outcome::Park { .. }
        ));
        for s in [
            Status::HSM_UNAVAILABLE,
            Status::CLOCK_UNTRUSTED,
            Status::SHUTTING_DOWN,
            Status::STARTING,
            Status::INTERNAL,
        ] {
            assert!(!is_final(s), "{s}");
            assert!(
                s == Status::INTERNAL || signer_client::twin_may_answer(s),
                "{s}"
            );
        }
        for s in [
            Status::REQUEST_ID_CONFLICT,
            Status::UNKNOWN_SERIAL,
            Status::USER_ID_NOT_FOUND,
            Status::MALFORMED_BODY,
        ] {
            assert!(is_final(s), "{s}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = config();
        assert!(backoff(&c, 1) <= Duration::from_millis(100));
        assert!(backoff(&c, 1) >= Duration::from_millis(75));
        assert!(backoff(&c, 3) >= Duration::from_millis(300));
        assert!(backoff(&c, 30) <= Duration::from_millis(1000));
    }
}
