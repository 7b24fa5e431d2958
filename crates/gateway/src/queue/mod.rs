//! The request queue the web application writes to (docs/gateway.md has the
//! schema and the states a row goes through):
//!
//! ```text
//!  INSERT ─► pending ─claim─► claimed ─answer ok──────► done
//!               ▲                │  └─refusal─────────► refused
//!               └──retry later───┤  (link, busy, HSM…)
//!                                └──attempts used up──► parked ─(web app sets pending)─┐
//!                                                                                       ▼
//! ```
//!
//! A row's key is its request id, which is also the idempotency key the
//! signer records: whatever happens to the gateway between claim and
//! answer, sending the row again yields the same certificate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a claim takes, in this order: claims whose lease ran out (their
/// gateway died), then pending rows that are due. Each condition names one
/// state, so the `(state, created_ms, request_id)` index yields rows oldest
/// first and the claim stops at its limit. `$now` is the time parameter.
pub(crate) const DUE: [&str; 2] = [
    "state = 'claimed' AND lease_until_ms < $now",
    "state = 'pending' AND not_before_ms <= $now",
];

pub mod postgres;
pub mod sqlite;

pub use signer_client::requests::{valid_request_id, Kind};

/// A row's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// Waiting to be sent.
    Pending,
    /// A gateway is sending it.
    Claimed,
    /// Answered `ok`: the result columns hold the answer.
    Done,
    /// The signer (or the gateway, for a body it cannot read) refused it: final.
    Refused,
    /// It kept failing; the reason is in `last_error`. The web application
    /// may set it back to `pending`.
    Parked,
}

impl State {
    /// Every state.
    pub const ALL: [State; 5] = [
        State::Pending,
        State::Claimed,
        State::Done,
        State::Refused,
        State::Parked,
    ];

    /// The name in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Claimed => "claimed",
            State::Done => "done",
            State::Refused => "refused",
            State::Parked => "parked",
        }
    }

    /// The state named in the `state` column.
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A row a gateway claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The request id (the row's key).
    pub request_id: String,
    /// The kind as written (may be one the gateway does not know).
    pub kind: String,
    /// The JSON request.
    pub body: String,
    /// Attempts so far, this one included.
    pub attempts: u32,
    /// The signer an earlier attempt may have reached without an answer:
    /// the row goes to that signer only, never to its twin.
    pub sent_to: Option<String>,
}

/// The answer written into a finished row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// The wire status code (`0` for ok).
    pub status_code: i64,
    /// Its name (`ok`, `weak_key`, …).
    pub status_name: String,
    /// The signer's message (empty on success).
    pub message: String,
    /// The signer's machine-readable detail.
    pub detail: String,
    /// The signer that answered.
    pub signer: String,
    /// The certificate's serial, hex (X.509).
    pub serial: Option<String>,
    /// The certificate (PEM) or the certified OpenPGP key (ASCII armor).
    pub certificate: Option<String>,
    /// The whole reply as JSON.
    pub result: Option<String>,
}

/// How a claimed row ends this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answered `ok`.
    Done(Answer),
    /// Refused: final.
    Refused(Answer),
    /// Not done this time: back to `pending`, not before `at`.
    Retry {
        /// Why, for `last_error`.
        error: String,
        /// Earliest next attempt.
        at: SystemTime,
        /// The signer the request may have reached: `None` keeps what the
        /// row holds (written by [`Queue::mark_sent`] before sending), a
        /// name sets it, and an empty name clears it — only for an attempt
        /// whose every signer answered that it did nothing.
        sent_to: Option<String>,
    },
    /// Failed too often: parked.
    Park {
        /// Why, for `last_error`.
        error: String,
    },
}

/// Counts for monitoring.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueStats {
    /// Rows by state and kind.
    pub rows: Vec<(State, Kind, u64)>,
    /// Finished rows by status name.
    pub by_status: Vec<(String, u64)>,
    /// Age of the oldest pending row, seconds.
    pub oldest_pending_s: f64,
}

/// Why the queue failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// SQLite said so.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL said so.
    #[error("postgresql: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// The database holds something the schema does not allow.
    #[error("queue: {0}")]
    Invalid(String),
}

/// A queue backend. Every call is one transaction.
pub trait Queue: Send + Sync {
    /// Claims up to `max` rows that are due (pending and past their retry
    /// time, or claimed by anyone under a lease that ran out), oldest first.
    fn claim(&self, owner: &str, max: usize, lease: Duration) -> Result<Vec<Claimed>, QueueError>;

    /// Records how rows `owner` claimed ended, in one transaction. A row no
    /// longer claimed by `owner` (its lease ran out and another gateway took
    /// it) is left alone; returns, per row, whether it was written.
    fn finish_all(
        &self,
        owner: &str,
        outcomes: &[(String, Outcome)],
    ) -> Result<Vec<bool>, QueueError>;

    /// [`Queue::finish_all`] for one row.
    fn finish(&self, owner: &str, request_id: &str, outcome: &Outcome) -> Result<bool, QueueError> {
        let written = self.finish_all(owner, &[(request_id.to_string(), outcome.clone())])?;
        Ok(written.first().copied().unwrap_or(false))
    }

    /// Records, durably and before the request leaves this host, that row
    /// `request_id` (claimed by `owner`) is about to be sent to `signer`:
    /// from then on the row is in doubt on that signer and goes to no other,
    /// even if this process is killed before the answer arrives. False when
    /// the row is no longer `owner`'s (then nothing is sent).
    fn mark_sent(&self, owner: &str, request_id: &str, signer: &str) -> Result<bool, QueueError> {
        let written = self.mark_sent_all(owner, &[(request_id.to_string(), signer.to_string())])?;
        Ok(written.first().copied().unwrap_or(false))
    }

    /// [`Queue::mark_sent`] for several rows (request id, signer) in one
    /// transaction; per row, whether it was written.
    fn mark_sent_all(
        &self,
        owner: &str,
        marks: &[(String, String)],
    ) -> Result<Vec<bool>, QueueError>;

    /// Returns the rows `owner` holds to `pending` (at start-up: claims of a
    /// run that was killed). Returns how many.
    fn release(&self, owner: &str) -> Result<u64, QueueError>;

    /// Waits until new rows may be there, at most `timeout`.
    fn wait(&self, timeout: Duration);

    /// Adds a row; false when the request id is already queued.
    fn enqueue(&self, request_id: &str, kind: Kind, body: &str) -> Result<bool, QueueError>;

    /// Counts for monitoring.
    fn stats(&self) -> Result<QueueStats, QueueError>;

    /// One row's state and answer (for tools and tests).
    fn row(&self, request_id: &str) -> Result<Option<(State, Answer, u32)>, QueueError>;
}

/// Milliseconds since the Unix epoch.
pub fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What is written for each outcome: state, answer, last error, retry time.
pub(crate) fn columns(
    outcome: &Outcome,
) -> (State, Option<&Answer>, Option<&str>, i64, Option<&str>) {
    match outcome {
        Outcome::Done(a) => (State::Done, Some(a), None, 0, None),
        Outcome::Refused(a) => (State::Refused, Some(a), None, 0, None),
        Outcome::Retry { error, at, sent_to } => (
            State::Pending,
            None,
            Some(error),
            millis(*at),
            sent_to.as_deref(),
        ),
        Outcome::Park { error } => (State::Parked, None, Some(error), 0, None),
    }
}
