//! Failover between twin signers.
//!
//! ```text
//! call ─► current signer ── answer (any status) ──────────────► caller
//!              │ no answer within `failover_after` / link down
//!              ▼
//!         next signer that answers `hello` ─► the same request body again
//! ```
//!
//! The request body is sent unchanged, so its request id goes to the twin:
//! if the lost signer recorded the request and its change reached the twin,
//! the twin answers with the original certificate (`replayed`); if the lost
//! signer signed but the change had not left it, the twin issues another
//! certificate, and the twins report the request id as a conflict once they
//! exchange their changes. Refusals (any status from a signer) are answers,
//! never a reason to fail over.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use signer_protocol::{msg, Command, Status};

use crate::{Calls, Client, ClientError, ClientStats, LinkOptions, Reply};

/// A client for a pair (or more) of signers that fails over between them.
pub struct Failover {
    links: Vec<LinkOptions>,
    failover_after: Duration,
    current: Mutex<Option<(usize, u64, Arc<Client>)>>,
    generation: AtomicU64,
    next_index: AtomicUsize,
    failovers: AtomicU64,
}

impl Failover {
    /// A client for `links`, tried in order. A request that gets no answer
    /// within `failover_after` (retransmissions included) goes to the next
    /// signer that answers.
    pub fn new(links: Vec<LinkOptions>, failover_after: Duration) -> Failover {
        let links = links
            .into_iter()
            .map(|mut l| {
                l.timeout = failover_after;
                l
            })
            .collect();
        Failover {
            links,
            failover_after,
            current: Mutex::new(None),
            generation: AtomicU64::new(0),
            next_index: AtomicUsize::new(0),
            failovers: AtomicU64::new(0),
        }
    }

    /// The signer in use: its link index and client, opening one if needed.
    fn client(&self) -> Result<(usize, u64, Arc<Client>), ClientError> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = current.as_ref() {
            return Ok(c.clone());
        }
        let start = self.next_index.load(Ordering::SeqCst);
        let mut last_error = None;
        for k in 0..self.links.len() {
            let index = (start + k) % self.links.len();
            match Client::open(&self.links[index]) {
                Ok(client) => {
                    if k > 0 {
                        // The signer that should have answered did not.
                        self.failovers.fetch_add(1, Ordering::SeqCst);
                    }
                    let generation = self.generation.load(Ordering::SeqCst);
                    let entry = (index, generation, Arc::new(client));
                    *current = Some(entry.clone());
                    return Ok(entry);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or(ClientError::Closed))
    }

    /// Drops the signer of `generation` (if still in use) so the next call
    /// opens the one after it.
    fn give_up(&self, index: usize, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|c| c.1 == generation) {
            *current = None;
            self.next_index.store(index + 1, Ordering::SeqCst);
            self.generation.fetch_add(1, Ordering::SeqCst);
            self.failovers.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The `hello` reply of the signer in use.
    pub fn server(&self) -> Option<msg::HelloReply> {
        self.client().ok().and_then(|(_, _, c)| c.server())
    }

    /// Link counters of the signer in use.
    pub fn stats(&self) -> ClientStats {
        self.client().map(|(_, _, c)| c.stats()).unwrap_or_default()
    }

    /// How many times this client failed over.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::SeqCst)
    }
}

impl Calls for Failover {
    /// Sends a request to the current signer, failing over while signers
    /// stop answering; every signer gets at most two tries.
    fn call(&self, command: Command, body: Vec<u8>) -> Result<Reply, ClientError> {
        let mut last_error = None;
        let tries = if self.links.len() == 1 {
            1
        } else {
            2 * self.links.len()
        };
        for _ in 0..tries {
            let (index, generation, client) = match self.client() {
                Ok(c) => c,
                Err(e) => {
                    last_error = Some(e);
                    std::thread::sleep(self.failover_after / 4);
                    continue;
                }
            };
            match client.call(command, body.clone()) {
                Err(
                    e @ (ClientError::Timeout(..) | ClientError::Link { .. } | ClientError::Closed),
                ) => {
                    self.give_up(index, generation);
                    last_error = Some(e);
                }
                // This signer cannot answer now, and nothing was done: its
                // twin may (same request id, so never twice).
                Ok(reply) if self.links.len() > 1 && twin_may_answer(reply.status) => {
                    self.give_up(index, generation);
                    last_error = Some(
                        reply
                            .decode::<msg::Empty>()
                            .err()
                            .unwrap_or(ClientError::Closed),
                    );
                }
                answer => return answer,
            }
        }
        Err(last_error.unwrap_or(ClientError::Closed))
    }
}

/// Statuses after which the other signer is asked: this one did nothing
/// and cannot do it now (its HSM, disk or clock), while its twin may.
fn twin_may_answer(status: Status) -> bool {
    matches!(
        status,
        Status::HSM_UNAVAILABLE
            | Status::REPOSITORY_FAILURE
            | Status::REPOSITORY_CORRUPT
            | Status::CLOCK_UNTRUSTED
            | Status::SHUTTING_DOWN
    )
}
