//! The queue in PostgreSQL: for production. Claims take rows with
//! `FOR UPDATE SKIP LOCKED`, so any number of gateway processes share one
//! queue without taking the same row; an insert trigger's `NOTIFY` wakes
//! them (they poll as well).

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use super::{
    columns, millis, Answer, Claimed, Kind, Outcome, Queue, QueueError, QueueStats, State,
};

/// The schema (also printed by `signer-gateway schema postgres`).
pub const SCHEMA: &str = include_str!("../../schema/postgres.sql");

/// A PostgreSQL queue.
pub struct PostgresQueue {
    client: Mutex<Client>,
    listener: Mutex<Client>,
    poll: Duration,
}

impl PostgresQueue {
    /// Connects, creates the schema if it is not there and listens for new rows.
    pub fn connect(params: &str, poll: Duration) -> Result<PostgresQueue, QueueError> {
        let mut client = Client::connect(params, NoTls)?;
        client.batch_execute(SCHEMA)?;
        let mut listener = Client::connect(params, NoTls)?;
        listener.batch_execute("LISTEN signer_requests")?;
        Ok(PostgresQueue {
            client: Mutex::new(client),
            listener: Mutex::new(listener),
            poll,
        })
    }

    fn client(&self) -> std::sync::MutexGuard<'_, Client> {
        self.client.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn count(n: i64) -> u64 {
    n.max(0) as u64
}

impl Queue for PostgresQueue {
    fn claim(&self, owner: &str, max: usize, lease: Duration) -> Result<Vec<Claimed>, QueueError> {
        let now = millis(SystemTime::now());
        // Expired claims first, then due pending rows, oldest first (see
        // the SQLite queue); each statement is atomic, and SKIP LOCKED keeps
        // other gateways' claims out.
        let mut rows = Vec::new();
        for due in super::DUE {
            let left = max.saturating_sub(rows.len());
            if left == 0 {
                break;
            }
            rows.extend(self.client().query(
                &format!(
                    "UPDATE signer_requests
                        SET state = 'claimed', claimed_by = $1, lease_until_ms = $2,
                            attempts = attempts + 1
                      WHERE request_id IN (
                            SELECT request_id FROM signer_requests
                             WHERE {}
                             ORDER BY created_ms, request_id
                             LIMIT $4
                               FOR UPDATE SKIP LOCKED)
                  RETURNING request_id, kind, body, attempts, sent_to",
                    due.replace("$now", "$3")
                ),
                &[
                    &owner,
                    &(now + lease.as_millis() as i64),
                    &now,
                    &(left as i64),
                ],
            )?);
        }
        rows.iter()
            .map(|r| {
                Ok(Claimed {
                    request_id: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    body: r.try_get(2)?,
                    attempts: r.try_get::<_, i32>(3)?.max(0) as u32,
                    sent_to: r.try_get(4)?,
                })
            })
            .collect()
    }

    fn finish_all(
        &self,
        owner: &str,
        outcomes: &[(String, Outcome)],
    ) -> Result<Vec<bool>, QueueError> {
        let mut client = self.client();
        let mut tx = client.transaction()?;
        let written = outcomes
            .iter()
            .map(|(request_id, outcome)| finish_one(&mut tx, owner, request_id, outcome))
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit()?;
        Ok(written)
    }

    fn mark_sent_all(
        &self,
        owner: &str,
        marks: &[(String, String)],
    ) -> Result<Vec<bool>, QueueError> {
        let mut client = self.client();
        let mut tx = client.transaction()?;
        let stmt = tx.prepare(
            "UPDATE signer_requests SET sent_to = $3
              WHERE request_id = $1 AND state = 'claimed' AND claimed_by = $2",
        )?;
        let mut written = Vec::with_capacity(marks.len());
        for (request_id, signer) in marks {
            written.push(tx.execute(&stmt, &[request_id, &owner, signer])? == 1);
        }
        tx.commit()?;
        Ok(written)
    }

    fn release(&self, owner: &str) -> Result<u64, QueueError> {
        Ok(self.client().execute(
            "UPDATE signer_requests
                SET state = 'pending', claimed_by = NULL, lease_until_ms = NULL
              WHERE state = 'claimed' AND claimed_by = $1",
            &[&owner],
        )?)
    }

    fn wait(&self, timeout: Duration) {
        let mut listener = self.listener.lock().unwrap_or_else(|p| p.into_inner());
        let mut notifications = listener.notifications();
        let woken = matches!(
            notifications.timeout_iter(self.poll.min(timeout)).next(),
            Ok(Some(_))
        );
        if woken {
            // Take whatever else arrived with it: one claim serves them all.
            let mut rest = notifications.iter();
            while let Ok(Some(_)) = rest.next() {}
        }
    }

    fn enqueue(&self, request_id: &str, kind: Kind, body: &str) -> Result<bool, QueueError> {
        let n = self.client().execute(
            "INSERT INTO signer_requests (request_id, kind, body) VALUES ($1, $2, $3)
             ON CONFLICT (request_id) DO NOTHING",
            &[&request_id, &kind.as_str(), &body],
        )?;
        Ok(n == 1)
    }

    fn stats(&self) -> Result<QueueStats, QueueError> {
        let mut client = self.client();
        let mut stats = QueueStats::default();
        for r in client.query(
            "SELECT state, kind, count(*) FROM signer_requests GROUP BY state, kind",
            &[],
        )? {
            let (state, kind): (String, String) = (r.try_get(0)?, r.try_get(1)?);
            if let (Some(state), Some(kind)) = (State::parse(&state), Kind::parse(&kind)) {
                stats.rows.push((state, kind, count(r.try_get(2)?)));
            }
        }
        for r in client.query(
            "SELECT status_name, count(*) FROM signer_requests
              WHERE status_name IS NOT NULL GROUP BY status_name",
            &[],
        )? {
            stats.by_status.push((r.try_get(0)?, count(r.try_get(1)?)));
        }
        let oldest: Option<i64> = client
            .query_one(
                "SELECT min(created_ms) FROM signer_requests WHERE state IN ('pending', 'claimed')",
                &[],
            )?
            .try_get(0)?;
        if let Some(oldest) = oldest {
            stats.oldest_pending_s = ((millis(SystemTime::now()) - oldest).max(0) as f64) / 1000.0;
        }
        Ok(stats)
    }

    fn row(&self, request_id: &str) -> Result<Option<(State, Answer, u32)>, QueueError> {
        let Some(r) = self.client().query_opt(
            "SELECT state, attempts, status_code, status_name, message, detail, signer,
                    serial, certificate, result
               FROM signer_requests WHERE request_id = $1",
            &[&request_id],
        )?
        else {
            return Ok(None);
        };
        let state: String = r.try_get(0)?;
        let state = State::parse(&state)
            .ok_or_else(|| QueueError::Invalid(format!("row {request_id}: state {state}")))?;
        let answer = Answer {
            status_code: r.try_get::<_, Option<i32>>(2)?.map_or(-1, i64::from),
            status_name: r.try_get::<_, Option<String>>(3)?.unwrap_or_default(),
            message: r.try_get::<_, Option<String>>(4)?.unwrap_or_default(),
            detail: r.try_get::<_, Option<String>>(5)?.unwrap_or_default(),
            signer: r.try_get::<_, Option<String>>(6)?.unwrap_or_default(),
            serial: r.try_get(7)?,
            certificate: r.try_get(8)?,
            result: r.try_get(9)?,
        };
        Ok(Some((state, answer, r.try_get::<_, i32>(1)?.max(0) as u32)))
    }
}

/// Writes one row's outcome (see [`Queue::finish_all`]).
fn finish_one(
    conn: &mut impl postgres::GenericClient,
    owner: &str,
    request_id: &str,
    outcome: &Outcome,
) -> Result<bool, QueueError> {
    let (state, answer, error, not_before, sent_to) = columns(outcome);
    let empty = Answer::default();
    let a = answer.unwrap_or(&empty);
    let finished = answer.map(|_| millis(SystemTime::now()));
    let status_code = answer.map(|a| a.status_code.clamp(0, i32::MAX as i64) as i32);
    let n = conn.execute(
        "UPDATE signer_requests
            SET state = $1, not_before_ms = $2, last_error = COALESCE($3, last_error),
                claimed_by = CASE WHEN $1 = 'pending' THEN NULL ELSE claimed_by END,
                lease_until_ms = NULL, finished_ms = $4,
                status_code = $5, status_name = $6, message = $7, detail = $8,
                signer = $9, serial = $10, certificate = $11, result = $12,
                sent_to = CASE WHEN $15 = '' THEN NULL ELSE COALESCE($15, sent_to) END
          WHERE request_id = $13 AND state = 'claimed' AND claimed_by = $14",
        &[
            &state.as_str(),
            &not_before,
            &error,
            &finished,
            &status_code,
            &answer.map(|a| a.status_name.as_str()),
            &answer.map(|a| a.message.as_str()),
            &answer.map(|a| a.detail.as_str()),
            &answer.map(|a| a.signer.as_str()),
            &a.serial.as_deref(),
            &a.certificate.as_deref(),
            &a.result.as_deref(),
            &request_id,
            &owner,
            &sent_to,
        ],
    )?;
    Ok(n == 1)
}
