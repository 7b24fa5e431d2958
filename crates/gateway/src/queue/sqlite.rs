//! The queue in an SQLite file: the embedded default (nothing to install).
//! One connection behind a lock; claims are `BEGIN IMMEDIATE` transactions,
//! so several gateway processes on one file never take the same row.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{
    columns, millis, Answer, Claimed, Kind, Outcome, Queue, QueueError, QueueStats, State,
};

/// The schema (also printed by `signer-gateway schema sqlite`).
pub const SCHEMA: &str = include_str!("../../schema/sqlite.sql");

/// An SQLite queue.
pub struct SqliteQueue {
    conn: Mutex<Connection>,
    poll: Duration,
}

impl SqliteQueue {
    /// Opens (creating if needed) the database file and its schema.
    pub fn open(path: &Path, poll: Duration) -> Result<SqliteQueue, QueueError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // WAL: the web application reads while the gateway writes. FULL: a
        // finished row survives a power cut once the commit returned.
        // Switching to WAL does not wait for a lock another process holds
        // (a CLI creating the schema at the same moment): try again briefly.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let result = conn
                .pragma_update(None, "journal_mode", "WAL")
                .and_then(|()| conn.pragma_update(None, "synchronous", "FULL"))
                .and_then(|()| conn.execute_batch(SCHEMA));
            match result {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy
                        && std::time::Instant::now() < until =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => {
                    other?;
                    break;
                }
            }
        }
        Ok(SqliteQueue {
            conn: Mutex::new(conn),
            poll,
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Queue for SqliteQueue {
    fn claim(&self, owner: &str, max: usize, lease: Duration) -> Result<Vec<Claimed>, QueueError> {
        let now = millis(SystemTime::now());
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut claimed = Vec::new();
        // Claims whose lease ran out first, then due pending rows, oldest
        // first: each an index walk in (state, created_ms) order that stops
        // at the limit, however long the queue (see schema/sqlite.sql).
        for due in super::DUE {
            let left = max.saturating_sub(claimed.len());
            if left == 0 {
                break;
            }
            let mut stmt = tx.prepare_cached(&format!(
                "UPDATE signer_requests
                    SET state = 'claimed', claimed_by = ?1, lease_until_ms = ?2,
                        attempts = attempts + 1
                  WHERE request_id IN (
                        SELECT request_id FROM signer_requests
                         WHERE {}
                         ORDER BY created_ms, request_id
                         LIMIT ?4)
              RETURNING request_id, kind, body, attempts, sent_to",
                due.replace("$now", "?3")
            ))?;
            let rows = stmt.query_map(
                params![owner, now + lease.as_millis() as i64, now, left as i64],
                |r| {
                    Ok(Claimed {
                        request_id: r.get(0)?,
                        kind: r.get(1)?,
                        body: r.get(2)?,
                        attempts: r.get::<_, i64>(3)?.clamp(0, u32::MAX as i64) as u32,
                        sent_to: r.get(4)?,
                    })
                },
            )?;
            for row in rows {
                claimed.push(row?);
            }
        }
        tx.commit()?;
        Ok(claimed)
    }

    fn finish_all(
        &self,
        owner: &str,
        outcomes: &[(String, Outcome)],
    ) -> Result<Vec<bool>, QueueError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let written = outcomes
            .iter()
            .map(|(request_id, outcome)| finish_one(&tx, owner, request_id, outcome))
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit()?;
        Ok(written)
    }

    fn mark_sent_all(
        &self,
        owner: &str,
        marks: &[(String, String)],
    ) -> Result<Vec<bool>, QueueError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut written = Vec::with_capacity(marks.len());
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE signer_requests SET sent_to = ?3
                  WHERE request_id = ?1 AND state = 'claimed' AND claimed_by = ?2",
            )?;
            for (request_id, signer) in marks {
                written.push(stmt.execute(params![request_id, owner, signer])? == 1);
            }
        }
        tx.commit()?;
        Ok(written)
    }

    fn release(&self, owner: &str) -> Result<u64, QueueError> {
        let n = self.conn().execute(
            "UPDATE signer_requests
                SET state = 'pending', claimed_by = NULL, lease_until_ms = NULL
              WHERE state = 'claimed' AND claimed_by = ?1",
            params![owner],
        )?;
        Ok(n as u64)
    }

    fn wait(&self, timeout: Duration) {
        std::thread::sleep(self.poll.min(timeout));
    }

    fn enqueue(&self, request_id: &str, kind: Kind, body: &str) -> Result<bool, QueueError> {
        let n = self.conn().execute(
            "INSERT INTO signer_requests (request_id, kind, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (request_id) DO NOTHING",
            params![request_id, kind.as_str(), body],
        )?;
        Ok(n == 1)
    }

    fn stats(&self) -> Result<QueueStats, QueueError> {
        let conn = self.conn();
        let mut stats = QueueStats::default();
        let mut stmt = conn.prepare_cached(
            "SELECT state, kind, count(*) FROM signer_requests GROUP BY state, kind",
        )?;
        for row in stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })? {
            let (state, kind, n) = row?;
            if let (Some(state), Some(kind)) = (State::parse(&state), Kind::parse(&kind)) {
                stats.rows.push((state, kind, n.max(0) as u64));
            }
        }
        let mut stmt = conn.prepare_cached(
            "SELECT status_name, count(*) FROM signer_requests
              WHERE status_name IS NOT NULL GROUP BY status_name",
        )?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (name, n) = row?;
            stats.by_status.push((name, n.max(0) as u64));
        }
        let oldest: Option<i64> = conn
            .query_row(
                "SELECT min(created_ms) FROM signer_requests WHERE state IN ('pending', 'claimed')",
                [],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        if let Some(oldest) = oldest {
            stats.oldest_pending_s = ((millis(SystemTime::now()) - oldest).max(0) as f64) / 1000.0;
        }
        Ok(stats)
    }

    fn row(&self, request_id: &str) -> Result<Option<(State, Answer, u32)>, QueueError> {
        let row = self
            .conn()
            .query_row(
                "SELECT state, attempts, status_code, status_name, message, detail, signer,
                        serial, certificate, result
                   FROM signer_requests WHERE request_id = ?1",
                params![request_id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        Answer {
                            status_code: r.get::<_, Option<i64>>(2)?.unwrap_or(-1),
                            status_name: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                            message: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                            detail: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                            signer: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
                            serial: r.get(7)?,
                            certificate: r.get(8)?,
                            result: r.get(9)?,
                        },
                    ))
                },
            )
            .optional()?;
        row.map(|(state, attempts, answer)| {
            let state = State::parse(&state)
                .ok_or_else(|| QueueError::Invalid(format!("row {request_id}: state {state}")))?;
            Ok((state, answer, attempts.clamp(0, u32::MAX as i64) as u32))
        })
        .transpose()
    }
}

/// Writes one row's outcome (see [`Queue::finish_all`]).
fn finish_one(
    conn: &Connection,
    owner: &str,
    request_id: &str,
    outcome: &Outcome,
) -> Result<bool, QueueError> {
    let (state, answer, error, not_before, sent_to) = columns(outcome);
    let empty = Answer::default();
    let a = answer.unwrap_or(&empty);
    let finished = answer.map(|_| millis(SystemTime::now()));
    let n = conn
        .prepare_cached(
            "UPDATE signer_requests
            SET state = ?1, not_before_ms = ?2, last_error = COALESCE(?3, last_error),
                claimed_by = CASE WHEN ?1 = 'pending' THEN NULL ELSE claimed_by END,
                lease_until_ms = NULL, finished_ms = ?4,
                status_code = ?5, status_name = ?6, message = ?7, detail = ?8,
                signer = ?9, serial = ?10, certificate = ?11, result = ?12,
                sent_to = CASE WHEN ?15 = '' THEN NULL ELSE COALESCE(?15, sent_to) END
          WHERE request_id = ?13 AND state = 'claimed' AND claimed_by = ?14",
        )?
        .execute(params![
            state.as_str(),
            not_before,
            error,
            finished,
            answer.map(|a| a.status_code),
            answer.map(|a| a.status_name.as_str()),
            answer.map(|a| a.message.as_str()),
            answer.map(|a| a.detail.as_str()),
            answer.map(|a| a.signer.as_str()),
            a.serial.as_deref(),
            a.certificate.as_deref(),
            a.result.as_deref(),
            request_id,
            owner,
            sent_to,
        ])?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> SqliteQueue {
        SqliteQueue::open(&dir.join("q.sqlite"), Duration::from_millis(1)).expect("open")
    }

    fn answer() -> Answer {
        Answer {
            status_code: 0,
            status_name: "ok".into(),
            serial: Some("21ab".into()),
            ..Answer::default()
        }
    }

    #[test]
    fn claims_walk_the_index_in_order_without_sorting_the_queue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = open(dir.path());
        for due in super::super::DUE {
            let plan: Vec<String> = q
                .conn()
                .prepare(&format!(
                    "EXPLAIN QUERY PLAN SELECT request_id FROM signer_requests WHERE {}
                      ORDER BY created_ms, request_id LIMIT 8",
                    due.replace("$now", "0")
                ))
                .expect("plan")
                .query_map([], |r| r.get::<_, String>(3))
                .expect("rows")
                .collect::<Result<_, _>>()
                .expect("plan rows");
            let plan = plan.join("; ");
            assert!(
                plan.contains("signer_requests_queue") && !plan.contains("TEMP B-TREE"),
                "{due}: {plan}"
            );
        }
    }

    #[test]
    fn a_claimed_row_is_one_gateways_until_its_lease_runs_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = open(dir.path());
        assert!(q.enqueue("r1", Kind::SignX509, "{}").expect("enqueue"));
        assert!(
            !q.enqueue("r1", Kind::RevokeX509, "{}").expect("enqueue"),
            "the key is the request id"
        );
        assert!(q.enqueue("r2", Kind::RevokeX509, "{}").expect("enqueue"));
        let first = q.claim("gw-1", 1, Duration::from_secs(60)).expect("claim");
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].request_id.as_str(), first[0].attempts), ("r1", 1));
        let second = q.claim("gw-2", 10, Duration::from_secs(60)).expect("claim");
        assert_eq!(
            second
                .iter()
                .map(|c| c.request_id.as_str())
                .collect::<Vec<_>>(),
            ["r2"]
        );
        // Another gateway cannot write a row it does not hold.
        assert!(!q
            .finish("gw-2", "r1", &Outcome::Done(answer()))
            .expect("finish"));
        // A lease that ran out: the row is anybody's again, attempts counted.
        assert!(q.enqueue("r3", Kind::SignX509, "{}").expect("enqueue"));
        assert_eq!(q.claim("gw-3", 1, Duration::ZERO).expect("claim").len(), 1);
        std::thread::sleep(Duration::from_millis(5));
        let taken = q.claim("gw-1", 10, Duration::from_secs(60)).expect("claim");
        assert_eq!(taken.len(), 1);
        assert_eq!((taken[0].request_id.as_str(), taken[0].attempts), ("r3", 2));
        assert!(!q
            .finish("gw-3", "r3", &Outcome::Done(answer()))
            .expect("finish"));
        // A restarted gateway takes back its own claims.
        assert_eq!(q.release("gw-1").expect("release"), 2);
        assert_eq!(
            q.row("r1").expect("row").expect("present").0,
            State::Pending
        );
    }

    #[test]
    fn where_a_request_goes_is_written_before_it_is_sent_and_survives_a_kill() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = open(dir.path());
        q.enqueue("r1", Kind::SignX509, "{}").expect("enqueue");
        q.claim("gw", 1, Duration::from_secs(60)).expect("claim");
        assert!(
            !q.mark_sent("other", "r1", "signer-a").expect("mark"),
            "not its row"
        );
        assert!(q.mark_sent("gw", "r1", "signer-a").expect("mark"));
        // The gateway is killed with the request on its way; restarted, it
        // takes its claims back: the row is in doubt on signer-a.
        assert_eq!(q.release("gw").expect("release"), 1);
        let again = q.claim("gw", 1, Duration::from_secs(60)).expect("claim");
        assert_eq!(again[0].sent_to.as_deref(), Some("signer-a"));
        // Every signer said it did nothing: cleared, free for either twin.
        let nothing = Outcome::Retry {
            error: "busy on both".into(),
            at: SystemTime::now(),
            sent_to: Some(String::new()),
        };
        assert!(q.finish("gw", "r1", &nothing).expect("finish"));
        let again = q.claim("gw", 1, Duration::from_secs(60)).expect("claim");
        assert_eq!(again[0].sent_to, None);
    }

    #[test]
    fn marks_written_together_each_say_whether_the_row_was_ours() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = open(dir.path());
        for id in ["m1", "m2", "m3"] {
            q.enqueue(id, Kind::SignX509, "{}").expect("enqueue");
        }
        assert_eq!(
            q.claim("gw", 2, Duration::from_secs(60))
                .expect("claim")
                .len(),
            2
        );
        assert_eq!(
            q.claim("other", 1, Duration::from_secs(60))
                .expect("claim")
                .len(),
            1
        );
        let marks: Vec<(String, String)> = ["m1", "m2", "m3"]
            .iter()
            .map(|id| (id.to_string(), "signer-b".to_string()))
            .collect();
        assert_eq!(
            q.mark_sent_all("gw", &marks).expect("marks"),
            [true, true, false]
        );
        q.release("gw").expect("release");
        let again = q.claim("gw", 3, Duration::from_secs(60)).expect("claim");
        assert_eq!(again.len(), 2);
        assert!(again
            .iter()
            .all(|r| r.sent_to.as_deref() == Some("signer-b")));
    }

    #[test]
    fn outcomes_are_written_and_a_signer_in_doubt_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = open(dir.path());
        q.enqueue("r1", Kind::SignX509, "{}").expect("enqueue");
        q.claim("gw", 1, Duration::from_secs(60)).expect("claim");
        let retry = Outcome::Retry {
            error: "no answer".into(),
            at: SystemTime::now(),
            sent_to: Some("signer-a".into()),
        };
        assert!(q.finish("gw", "r1", &retry).expect("finish"));
        let again = q.claim("gw", 1, Duration::from_secs(60)).expect("claim");
        assert_eq!(again[0].sent_to.as_deref(), Some("signer-a"));
        // A later retry without a signer does not forget it.
        let busy = Outcome::Retry {
            error: "busy".into(),
            at: SystemTime::now(),
            sent_to: None,
        };
        assert!(q.finish("gw", "r1", &busy).expect("finish"));
        let again = q.claim("gw", 1, Duration::from_secs(60)).expect("claim");
        assert_eq!(again[0].sent_to.as_deref(), Some("signer-a"));
        assert!(q
            .finish("gw", "r1", &Outcome::Done(answer()))
            .expect("finish"));
        let (state, a, attempts) = q.row("r1").expect("row").expect("present");
        assert_eq!(
            (state, a.status_name.as_str(), a.serial.as_deref(), attempts),
            (State::Done, "ok", Some("21ab"), 3)
        );
        // Final rows are never claimed again.
        assert!(q.claim("gw", 10, Duration::ZERO).expect("claim").is_empty());
        // A retry not yet due is not claimed either.
        q.enqueue("r2", Kind::SignX509, "{}").expect("enqueue");
        q.claim("gw", 1, Duration::from_secs(60)).expect("claim");
        let later = Outcome::Retry {
            error: "busy".into(),
            at: SystemTime::now() + Duration::from_secs(3600),
            sent_to: None,
        };
        q.finish("gw", "r2", &later).expect("finish");
        assert!(q
            .claim("gw", 10, Duration::from_secs(60))
            .expect("claim")
            .is_empty());
        let stats = q.stats().expect("stats");
        assert!(stats.rows.contains(&(State::Pending, Kind::SignX509, 1)));
        assert!(stats.by_status.contains(&("ok".to_string(), 1)));
    }

    #[test]
    fn a_file_that_is_not_a_queue_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("q.sqlite");
        std::fs::write(
            &path,
            b"this is not a database, only text that fills a page",
        )
        .expect("write");
        let err = SqliteQueue::open(&path, Duration::from_millis(1))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("not a database"), "{err}");
        // A row the schema does not allow cannot be written behind the gateway's back.
        let other = tempfile::tempdir().expect("tempdir");
        let q = open(other.path());
        let conn = q.conn();
        assert!(conn
            .execute(
                "INSERT INTO signer_requests (request_id, kind, body) VALUES ('x', 'mint', '{}')",
                []
            )
            .is_err());
        assert!(conn
            .execute("INSERT INTO signer_requests (request_id, kind, body, state) VALUES ('y', 'sign_x509', '{}', 'lost')", [])
            .is_err());
    }
}
