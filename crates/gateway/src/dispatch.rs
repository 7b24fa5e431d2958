//! Moves queued rows to the signers and their answers back.
//!
//! ```text
//! claimer ─ claim(free workers) ─► channel ─► worker × N ─► Failover::call ─► check ─► finish
//! ```
//!
//! The claimer takes only as many rows as there are idle workers, so a
//! claimed row is being sent, not waiting out its lease in a buffer. Each
//! worker's call is pipelined with the others' on the same link.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use signer_client::{verify, Calls, ClientError, Failover};
use signer_protocol::{calls, msg, Status};
use tracing::{info, warn};

use crate::config::QueueConfig;
use crate::metrics::Metrics;
use crate::queue::{Answer, Claimed, Kind, Outcome, Queue};

/// A `sign_x509` row's body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignBody {
    /// Profile name.
    pub profile: String,
    /// The PKCS#10 request, PEM.
    pub csr: String,
    /// The subject as checked by the web application: `[attribute, value]` pairs.
    pub subject: Vec<(String, String)>,
    /// Subject alternative names.
    #[serde(default)]
    pub sans: Vec<msg::SanEntry>,
    /// Validity in days (default: the profile's).
    #[serde(default)]
    pub validity_days: Option<u32>,
}

/// A `revoke_x509` row's body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    /// The issuing CA's name.
    pub issuer: String,
    /// The serial, hex.
    pub serial: String,
    /// RFC 5280 reason code (default 0, unspecified).
    #[serde(default)]
    pub reason: u8,
    /// Invalidity date, Unix seconds.
    #[serde(default)]
    pub invalidity_date: Option<i64>,
}

/// A `certify_openpgp` row's body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertifyBody {
    /// The public key, ASCII-armored.
    pub key: String,
    /// User IDs to certify.
    pub user_ids: Vec<String>,
    /// When the certifications expire, Unix seconds (fixed in the row, so
    /// every attempt sends the same request).
    pub expires_at: i64,
}

/// A row's request, ready to send.
#[derive(Debug, Clone)]
pub enum Request {
    /// `sign_x509`.
    Sign(msg::SignX509),
    /// `revoke_x509`.
    Revoke(msg::RevokeX509),
    /// `certify_openpgp`.
    Certify(msg::CertifyOpenpgp),
}

impl Request {
    /// Reads a row: `Err` says why the body cannot be sent (a final refusal).
    pub fn from_row(request_id: &str, kind: &str, body: &str) -> Result<Request, String> {
        let kind = Kind::parse(kind).ok_or_else(|| format!("unknown kind {kind:?}"))?;
        let request_id = request_id.to_string();
        Ok(match kind {
            Kind::SignX509 => {
                let b: SignBody = serde_json::from_str(body).map_err(|e| e.to_string())?;
                if !b
                    .csr
                    .trim_start()
                    .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
                    && !b
                        .csr
                        .trim_start()
                        .starts_with("-----BEGIN NEW CERTIFICATE REQUEST-----")
                {
                    return Err("csr: not a PEM certificate request".into());
                }
                Request::Sign(msg::SignX509 {
                    request_id,
                    profile: b.profile,
                    csr: b.csr.into_bytes(),
                    subject: b.subject,
                    sans: b.sans,
                    validity_days: b.validity_days,
                })
            }
            Kind::RevokeX509 => {
                let b: RevokeBody = serde_json::from_str(body).map_err(|e| e.to_string())?;
                let serial = hex::decode(b.serial.trim_start_matches("0x"))
                    .map_err(|e| format!("serial: not hex ({e})"))?;
                Request::Revoke(msg::RevokeX509 {
                    request_id,
                    issuer: b.issuer,
                    serial,
                    reason: b.reason,
                    invalidity_date: b.invalidity_date,
                })
            }
            Kind::CertifyOpenpgp => {
                let b: CertifyBody = serde_json::from_str(body).map_err(|e| e.to_string())?;
                Request::Certify(msg::CertifyOpenpgp {
                    request_id,
                    key: b.key.into_bytes(),
                    user_ids: b.user_ids,
                    expires_at: b.expires_at,
                })
            }
        })
    }
}

/// True for statuses that say the request itself is refused: sending it
/// again changes nothing. Everything else (the link, `busy`, the signer's
/// HSM, disk or clock) is worth another attempt.
pub fn is_final(status: Status) -> bool {
    matches!(
        status,
        Status::UNKNOWN_COMMAND | Status::MALFORMED_BODY | Status::NOT_ENABLED
    ) || (100..300).contains(&status.0)
        || (400..500).contains(&status.0)
}

/// CA certificates the answers are checked with, fetched once and again
/// when an answer names a CA not yet known.
#[derive(Default)]
pub struct Trust {
    cas: Mutex<Option<msg::CaCertsReply>>,
    openpgp: Mutex<Option<Vec<u8>>>,
}

impl Trust {
    fn cas(&self, signers: &impl Calls, refresh: bool) -> Result<msg::CaCertsReply, ClientError> {
        let mut cas = self.cas.lock().unwrap_or_else(|p| p.into_inner());
        if refresh || cas.is_none() {
            *cas = Some(signers.request::<calls::CaCerts>(&msg::Empty {})?);
        }
        Ok(cas.clone().unwrap_or(msg::CaCertsReply { cas: Vec::new() }))
    }

    fn openpgp(&self, signers: &impl Calls) -> Result<Vec<u8>, ClientError> {
        let mut ca = self.openpgp.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ca) = ca.as_ref() {
            return Ok(ca.clone());
        }
        let fetched = signers
            .request::<calls::OpenpgpCa>(&msg::Empty {})?
            .certificate;
        *ca = Some(fetched.clone());
        Ok(fetched)
    }
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

/// Sends one request to one signer and checks the answer before anything
/// is written back.
pub fn execute(
    signers: &impl Calls,
    signer: &str,
    trust: &Trust,
    request: &Request,
) -> Result<Answer, ClientError> {
    let signer = signer.to_string();
    let ok =
        |serial: Option<String>, certificate: Option<String>, result: serde_json::Value| Answer {
            status_code: 0,
            status_name: "ok".into(),
            signer: signer.clone(),
            serial,
            certificate,
            result: Some(result.to_string()),
            ..Answer::default()
        };
    match request {
        Request::Sign(r) => {
            let reply = signers.request::<calls::SignX509>(r)?;
            let mut cas = trust.cas(signers, false)?;
            if !cas.cas.iter().any(|c| c.name == reply.issuer) {
                cas = trust.cas(signers, true)?;
            }
            verify::check_issued(&reply, &r.csr, &cas)?;
            Ok(ok(
                Some(hex::encode(&reply.serial)),
                Some(signer_x509::cert_pem(&reply.certificate)),
                serde_json::json!({
                    "issuer": reply.issuer,
                    "not_before": reply.not_before,
                    "not_after": reply.not_after,
                    "replayed": reply.replayed,
                }),
            ))
        }
        Request::Revoke(r) => {
            let reply = signers.request::<calls::RevokeX509>(r)?;
            Ok(ok(
                Some(hex::encode(&r.serial)),
                None,
                serde_json::json!({
                    "issuer": r.issuer,
                    "revoked_at": reply.revoked_at,
                    "reason": reply.reason,
                    "invalidity_date": reply.invalidity_date,
                    "replayed": reply.replayed,
                    "legacy": reply.legacy,
                }),
            ))
        }
        Request::Certify(r) => {
            let ca = trust.openpgp(signers)?;
            let reply = verify::certify_checked(signers, r, Some(&ca))?;
            Ok(ok(
                None,
                Some(signer_openpgp::armor_public_key(&reply.key)),
                serde_json::json!({
                    "fingerprint": reply.fingerprint,
                    "ca_fingerprint": reply.ca_fingerprint,
                    "user_ids": reply.certifications.iter().map(|c| &c.user_id).collect::<Vec<_>>(),
                    "created_at": reply.created_at,
                    "expires_at": reply.expires_at,
                    "replayed": reply.replayed,
                }),
            ))
        }
    }
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
    /// Issuers that revoked since their CRL was last fetched.
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
        let idle = Arc::new(AtomicUsize::new(self.config.workers));
        let mut workers = Vec::new();
        for n in 0..self.config.workers {
            let me = Arc::clone(&self);
            let rx = Arc::clone(&rx);
            let idle = Arc::clone(&idle);
            let spawned = std::thread::Builder::new()
                .name(format!("dispatch-{n}"))
                .spawn(move || me.work(&rx, &idle));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => warn!(cause = %e, "cannot start a dispatch worker"),
            }
        }
        let lease = Duration::from_secs(self.config.lease_s);
        while !stop.load(Ordering::SeqCst) {
            let free = idle.load(Ordering::SeqCst);
            if free == 0 {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            match self.queue.claim(&self.owner, free, lease) {
                Ok(rows) if rows.is_empty() => {
                    self.metrics.note_queue_ok();
                    self.queue.wait(Duration::from_secs(1));
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
    }

    fn work(&self, rx: &Mutex<Receiver<Claimed>>, idle: &AtomicUsize) {
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
            self.handle(&row);
            idle.fetch_add(1, Ordering::SeqCst);
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
    fn send(&self, row: &Claimed, request: &Request) -> Outcome {
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
            let pinned = Pinned {
                signers: &self.signers,
                index,
            };
            let result = execute(&pinned, &signer, &self.trust, request);
            match result {
                // This signer did nothing and cannot now: its twin may.
                Err(e @ ClientError::Signer { status, .. })
                    if links > 1 && signer_client::twin_may_answer(status) =>
                {
                    last = format!("{signer}: {e}");
                    self.signers.avoid(index);
                    continue;
                }
                Err(ClientError::Timeout(..) | ClientError::Link { .. } | ClientError::Closed) => {
                    self.signers.avoid(index);
                }
                _ => {}
            }
            return classify(&self.config, row, result, &signer);
        }
        transient(&self.config, row, last, None)
    }

    /// Sends one claimed row and writes how it ended.
    pub fn handle(&self, row: &Claimed) {
        let outcome = match Request::from_row(&row.request_id, &row.kind, &row.body) {
            Err(message) => Outcome::Refused(Answer {
                status_code: i64::from(Status::MALFORMED_BODY.0),
                status_name: Status::MALFORMED_BODY.to_string(),
                message: format!("the gateway cannot read this row's body: {message}"),
                ..Answer::default()
            }),
            Ok(request) => {
                let outcome = self.send(row, &request);
                if let (Request::Revoke(r), Outcome::Done(_)) = (&request, &outcome) {
                    self.revoked
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(r.issuer.clone());
                }
                outcome
            }
        };
        self.metrics.note_outcome(&outcome);
        loop {
            match self.queue.finish(&self.owner, &row.request_id, &outcome) {
                Ok(true) => return,
                Ok(false) => {
                    // The lease ran out and another gateway took the row: it
                    // sends the same request id and writes the same answer.
                    warn!(request_id = %row.request_id, "row no longer ours; left to its new owner");
                    return;
                }
                Err(e) => {
                    // The answer is recorded on the signer; keep trying to
                    // write it (after a restart the row is sent again and
                    // the signer answers from its record).
                    self.metrics.note_queue_error(&e.to_string());
                    warn!(request_id = %row.request_id, cause = %e, "cannot write the answer; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
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
            Status::INTERNAL,
        ] {
            assert!(!is_final(s), "{s}");
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

    #[test]
    fn unreadable_bodies_say_what_is_wrong() {
        let e = Request::from_row("r", "sign_x509", "{\"profile\":1}").unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
        let e = Request::from_row("r", "mint_coins", "{}").unwrap_err();
        assert!(e.contains("unknown kind"), "{e}");
        let e = Request::from_row(
            "r",
            "sign_x509",
            r#"{"profile":"p","csr":"-----BEGIN PRIVATE KEY-----","subject":[]}"#,
        )
        .unwrap_err();
        assert!(e.contains("not a PEM certificate request"), "{e}");
        let e = Request::from_row("r", "revoke_x509", r#"{"issuer":"sub","serial":"xyz"}"#)
            .unwrap_err();
        assert!(e.contains("serial"), "{e}");
        assert!(matches!(
            Request::from_row(
                "r",
                "revoke_x509",
                r#"{"issuer":"sub","serial":"0a1b","reason":1}"#
            ),
            Ok(Request::Revoke(msg::RevokeX509 { reason: 1, .. }))
        ));
    }
}
