//! Failover between twin signers.
//!
//! ```text
//! call ─► current signer ── answer (any status) ──────────────► caller
//!              │ no answer within `failover_after` / link down
//!              ▼
//!         next signer that answers `hello` ─► the same request body again
//! ```
//!
//! A request that never reached a signer (its link would not open) goes to
//! the next one at once. A request that may have reached it and got no
//! answer goes on only when running it twice is harmless
//! ([`Retry::AnySigner`]: reads, revocations). A request that issues
//! ([`Retry::SameSigner`]: `sign_x509`, `certify_openpgp`) is *in doubt*:
//! the lost signer may have signed it, and its change may not have reached
//! the twin (replication is asynchronous), so the twin would sign a second
//! certificate under the same request id. The caller gets
//! [`ClientError::InDoubt`], and the request id is remembered with its
//! signer: sent again, it goes to that signer only, until one answers that
//! did nothing (a status of [`twin_may_answer`]). Requests without a doubt
//! go to the twin meanwhile. Refusals (any status from a signer) are
//! answers, never a reason to fail over.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use signer_protocol::calls::{self, Retry};
use signer_protocol::{msg, Command, Status};

use crate::{Calls, Client, ClientError, ClientStats, LinkOptions, Reply};

/// An open link: the generation it was opened in, and its client.
type Opened = (u64, Arc<Client>);

/// A link's state: open or not, and when an attempt to open it last
/// failed (its signer did not answer `hello`) and why.
#[derive(Default)]
struct Slot {
    open: Option<Opened>,
    failed: Option<(Instant, String)>,
}

/// A client for a pair (or more) of signers that fails over between them.
/// Each link is opened when first needed and then kept open (a gateway
/// holds every device, so nothing else can take one), until it fails.
pub struct Failover {
    links: Vec<LinkOptions>,
    failover_after: Duration,
    /// One slot per link.
    slots: Vec<Mutex<Slot>>,
    current: AtomicUsize,
    generation: AtomicU64,
    failovers: AtomicU64,
    in_doubt: Mutex<InDoubt>,
}

/// A request id in doubt: its command and id.
type DoubtKey = (Command, String);

/// Request ids that may have been executed by a signer that did not answer,
/// with that signer's link index. Bounded: the oldest is forgotten first.
#[derive(Default)]
struct InDoubt {
    signer: HashMap<DoubtKey, usize>,
    order: VecDeque<DoubtKey>,
}

/// How many request ids in doubt a client remembers.
const IN_DOUBT_KEPT: usize = 100_000;

impl InDoubt {
    fn remember(&mut self, key: DoubtKey, index: usize) {
        if self.signer.insert(key.clone(), index).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > IN_DOUBT_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.signer.remove(&old);
            }
        }
    }

    fn forget(&mut self, key: &DoubtKey) {
        if self.signer.remove(key).is_some() {
            self.order.retain(|k| k != key);
        }
    }
}

/// Whether an error means the signer did not answer: the link failed or
/// timed out, so a request sent may have been executed.
pub fn no_answer(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Timeout(..) | ClientError::Link { .. } | ClientError::Closed
    )
}

impl Failover {
    /// A client for `links`, tried in order. A request that gets no answer
    /// within `failover_after` (retransmissions included) goes to the next
    /// signer that answers.
    pub fn new(links: Vec<LinkOptions>, failover_after: Duration) -> Failover {
        let links: Vec<LinkOptions> = links
            .into_iter()
            .map(|mut l| {
                l.timeout = failover_after;
                l
            })
            .collect();
        Failover {
            slots: links.iter().map(|_| Mutex::new(Slot::default())).collect(),
            links,
            failover_after,
            current: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            in_doubt: Mutex::new(InDoubt::default()),
        }
    }

    fn doubts(&self) -> std::sync::MutexGuard<'_, InDoubt> {
        self.in_doubt.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The link index of the signer that may hold request `request_id` of
    /// `command` (it got no answer there), if any.
    pub fn in_doubt(&self, command: Command, request_id: &str) -> Option<usize> {
        self.doubts()
            .signer
            .get(&(command, request_id.to_string()))
            .copied()
    }

    /// Records that request `request_id` of `command` may have been
    /// executed by the signer on `device` (known from an earlier run): it
    /// will go to that signer only. False when `device` is none of the links.
    pub fn set_in_doubt(&self, command: Command, request_id: &str, device: &Path) -> bool {
        let Some(index) = self.links.iter().position(|l| l.device == device) else {
            return false;
        };
        self.doubts()
            .remember((command, request_id.to_string()), index);
        true
    }

    /// How many request ids are in doubt.
    pub fn in_doubt_count(&self) -> usize {
        self.doubts().signer.len()
    }

    fn in_doubt_error(&self, index: usize, cause: &ClientError) -> ClientError {
        ClientError::InDoubt {
            device: self.links[index].device.display().to_string(),
            cause: cause.to_string(),
        }
    }

    /// The links, in order.
    pub fn links(&self) -> &[LinkOptions] {
        &self.links
    }

    /// The index of the link requests go to now.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::SeqCst) % self.links.len().max(1)
    }

    /// The client of link `index`, opening it if needed. Callers that
    /// waited while another opened the link share that attempt's failure
    /// instead of each waiting out an open of their own, one after another
    /// (a gateway's workers with rows in doubt on a lost signer would
    /// otherwise queue here for minutes while the twin could be working);
    /// a caller that comes later tries again.
    fn slot(&self, index: usize) -> Result<(u64, Arc<Client>), ClientError> {
        let Some(slot) = self.slots.get(index) else {
            return Err(ClientError::Closed);
        };
        let arrived = Instant::now();
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = slot.open.as_ref() {
            return Ok(open.clone());
        }
        if let Some((at, cause)) = &slot.failed {
            if *at >= arrived {
                return Err(ClientError::Link {
                    device: self.links[index].device.display().to_string(),
                    message: format!("{cause} (an attempt made while this one waited to open it)"),
                });
            }
        }
        let client = match Client::open(&self.links[index]) {
            Ok(client) => Arc::new(client),
            Err(e) => {
                slot.failed = Some((Instant::now(), e.to_string()));
                return Err(e);
            }
        };
        slot.failed = None;
        let generation = self.generation.fetch_add(1, Ordering::SeqCst);
        slot.open = Some((generation, Arc::clone(&client)));
        Ok((generation, client))
    }

    /// The signer in use: its link index and client, failing over to the
    /// next link that opens.
    fn client(&self) -> Result<(usize, u64, Arc<Client>), ClientError> {
        let start = self.current();
        let mut last_error = None;
        for k in 0..self.links.len() {
            let index = (start + k) % self.links.len();
            match self.slot(index) {
                Ok((generation, client)) => {
                    if k > 0 {
                        // The signer that should have answered did not.
                        self.switch(start, index);
                    }
                    return Ok((index, generation, client));
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or(ClientError::Closed))
    }

    fn switch(&self, from: usize, to: usize) {
        if self
            .current
            .compare_exchange(from, to, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.failovers.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Closes the client of `generation` on link `index` (if still open) and
    /// moves requests to the next link.
    fn give_up(&self, index: usize, generation: u64) {
        self.close(index, generation);
        self.switch(index, (index + 1) % self.links.len().max(1));
    }

    fn close(&self, index: usize, generation: u64) {
        if let Some(slot) = self.slots.get(index) {
            let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
            if slot.open.as_ref().is_some_and(|(g, _)| *g == generation) {
                slot.open = None;
            }
        }
    }

    /// Sends a request to the signer on link `index` only (no failover): for
    /// a request that may already have reached that signer and must not go
    /// to its twin. A link that fails is closed, to be reopened next time.
    pub fn call_on(
        &self,
        index: usize,
        command: Command,
        body: Vec<u8>,
    ) -> Result<Reply, ClientError> {
        let (generation, client) = self.slot(index)?;
        let result = client.call(command, body);
        if result.as_ref().is_err_and(no_answer) {
            self.close(index, generation);
        }
        result
    }

    /// The `hello` reply of the signer on link `index`, opening it if needed.
    pub fn server_of(&self, index: usize) -> Result<msg::HelloReply, ClientError> {
        let (_, client) = self.slot(index)?;
        client.server().ok_or(ClientError::Closed)
    }

    /// Sends further requests to the link after `index` if `index` is the
    /// current one (its signer did not answer).
    pub fn avoid(&self, index: usize) {
        self.switch(index, (index + 1) % self.links.len().max(1));
    }

    /// Asks the signer on link `index` for its health, whether or not
    /// requests go to it now (a monitor watches the standby too).
    pub fn health_of(&self, index: usize) -> Result<msg::HealthReply, ClientError> {
        let (generation, client) = self.slot(index)?;
        let result = client.request::<calls::Health>(&msg::Empty {});
        if result.as_ref().is_err_and(no_answer) {
            self.close(index, generation);
        }
        result
    }

    /// The `hello` reply of the signer in use.
    pub fn server(&self) -> Option<msg::HelloReply> {
        self.client().ok().and_then(|(_, _, c)| c.server())
    }

    /// Link counters of the signer in use.
    pub fn stats(&self) -> ClientStats {
        self.client().map(|(_, _, c)| c.stats()).unwrap_or_default()
    }

    /// Link counters of every link that is open, by index.
    pub fn link_stats(&self) -> Vec<Option<ClientStats>> {
        self.slots
            .iter()
            .map(|slot| {
                let slot = slot.lock().unwrap_or_else(|p| p.into_inner());
                slot.open.as_ref().map(|(_, c)| c.stats())
            })
            .collect()
    }

    /// How many times this client failed over.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::SeqCst)
    }
}

impl Calls for Failover {
    /// Sends a request to the current signer, failing over while signers
    /// stop answering (every signer gets at most two tries) — except a
    /// request that issues and may have reached a signer: that one stays
    /// with it ([`ClientError::InDoubt`]). While the signers answer
    /// `starting` (their repository checked, their HSM logged in), the
    /// request is sent again every [`STARTING_PAUSE`] for up to
    /// `failover_after`: nothing was done with it.
    fn call(&self, command: Command, body: Vec<u8>) -> Result<Reply, ClientError> {
        let until = Instant::now() + self.failover_after;
        loop {
            let answer = self.call_once(command, body.clone());
            let starting = match &answer {
                Ok(reply) => reply.status == Status::STARTING,
                Err(e) => e.status() == Some(Status::STARTING),
            };
            if !starting || Instant::now() + STARTING_PAUSE > until {
                return answer;
            }
            std::thread::sleep(STARTING_PAUSE);
        }
    }
}

/// How often a request answered `starting` is sent again.
pub const STARTING_PAUSE: Duration = Duration::from_millis(250);

impl Failover {
    fn call_once(&self, command: Command, body: Vec<u8>) -> Result<Reply, ClientError> {
        // A command this library does not know is treated as one that issues.
        let stays = calls::declaration(command).is_none_or(|d| d.retry == Retry::SameSigner);
        let key = stays
            .then(|| calls::request_id(command, &body))
            .flatten()
            .map(|id| (command, id));
        if let Some(key) = &key {
            let pinned = self.doubts().signer.get(key).copied();
            if let Some(index) = pinned {
                match self.call_on(index, command, body.clone()) {
                    Err(e) if no_answer(&e) => return Err(self.in_doubt_error(index, &e)),
                    // Refused before that signer looked at its records (it is
                    // starting or stopping): it may still hold the request
                    // from before, so the doubt stays and the twin is not asked.
                    Ok(reply) if refused_unread(reply.status) => return Ok(reply),
                    // That signer did nothing with it: the twin may answer.
                    Ok(reply) if self.links.len() > 1 && twin_may_answer(reply.status) => {
                        self.doubts().forget(key);
                        self.avoid(index);
                    }
                    answer => {
                        self.doubts().forget(key);
                        return answer;
                    }
                }
            }
        }
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
                Err(e) if no_answer(&e) => {
                    self.give_up(index, generation);
                    if stays && self.links.len() > 1 {
                        if let Some(key) = key {
                            self.doubts().remember(key, index);
                        }
                        return Err(self.in_doubt_error(index, &e));
                    }
                    last_error = Some(e);
                }
                // This signer cannot answer now, and nothing was done: its
                // twin may (same request id, so never twice).
                Ok(reply) if self.links.len() > 1 && twin_may_answer(reply.status) => {
                    // The link works: keep it open, only send requests elsewhere.
                    self.switch(index, (index + 1) % self.links.len());
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

/// Statuses a signer answers without reading its records (it is starting,
/// or stopping): they say nothing of what it did with the same request
/// before, so a request in doubt on it stays there.
pub fn refused_unread(status: Status) -> bool {
    matches!(status, Status::STARTING | Status::SHUTTING_DOWN)
}

/// Statuses after which the other signer is asked: this one did nothing
/// and cannot do it now (its HSM, disk or clock, or it is still starting),
/// while its twin may.
pub fn twin_may_answer(status: Status) -> bool {
    matches!(
        status,
        Status::HSM_UNAVAILABLE
            | Status::REPOSITORY_FAILURE
            | Status::REPOSITORY_CORRUPT
            | Status::CLOCK_UNTRUSTED
            | Status::SHUTTING_DOWN
            | Status::STARTING
    )
}
