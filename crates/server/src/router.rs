//! Command handlers and the table that routes commands to them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};
use signer_protocol::{decode_body, encode_body, msg, Command, Status};

pub use crate::engine::Completion;

/// A request's failure as the client will see it: a status and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Wire status (never `ok`).
    pub status: Status,
    /// For a person.
    pub message: String,
    /// Machine-readable detail (may be empty).
    pub detail: String,
}

impl Failure {
    /// A failure with a status and message.
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
            detail: String::new(),
        }
    }

    /// Adds machine-readable detail.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    /// The encoded error body.
    pub fn body(&self) -> Vec<u8> {
        encode_body(&msg::ErrorBody {
            message: self.message.clone(),
            detail: self.detail.clone(),
        })
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

/// What a handler learns about the call besides its body.
#[derive(Debug, Clone, Copy)]
pub struct CallContext {
    /// The request id.
    pub id: u64,
    /// The command.
    pub command: Command,
    /// Index of the worker thread running the call (0 for inline calls), so
    /// that a backend can keep one session per worker.
    pub worker: usize,
}

/// Runs one command.
pub trait Handler: Send + Sync + 'static {
    /// Executes the command with its msgpack body; returns the msgpack reply body.
    fn call(&self, ctx: &CallContext, body: &[u8]) -> Result<Vec<u8>, Failure>;

    /// Executes the command and finishes `done` with the reply, possibly
    /// later and from another thread (the worker is then free for the next
    /// request). The default calls [`Handler::call`] and finishes at once.
    fn call_deferred(&self, ctx: &CallContext, body: &[u8], done: Completion) {
        done.finish(self.call(ctx, body));
    }
}

/// A handler from a function over typed request and reply bodies.
struct Typed<F, Req, Rep> {
    f: F,
    _types: std::marker::PhantomData<fn(Req) -> Rep>,
}

impl<F, Req, Rep> Handler for Typed<F, Req, Rep>
where
    F: Fn(&CallContext, Req) -> Result<Rep, Failure> + Send + Sync + 'static,
    Req: DeserializeOwned + 'static,
    Rep: Serialize + 'static,
{
    fn call(&self, ctx: &CallContext, body: &[u8]) -> Result<Vec<u8>, Failure> {
        let request: Req =
            decode_body(body).map_err(|e| Failure::new(Status::MALFORMED_BODY, e.0))?;
        (self.f)(ctx, request).map(|reply| encode_body(&reply))
    }
}

/// Wraps a function over typed bodies as a [`Handler`]; a body that does not
/// decode is answered with `malformed_body`.
pub fn typed<F, Req, Rep>(f: F) -> Arc<dyn Handler>
where
    F: Fn(&CallContext, Req) -> Result<Rep, Failure> + Send + Sync + 'static,
    Req: DeserializeOwned + 'static,
    Rep: Serialize + 'static,
{
    Arc::new(Typed {
        f,
        _types: std::marker::PhantomData,
    })
}

/// Where a command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On the link's reader thread: only for cheap commands that never block.
    Inline,
    /// On the worker pool (anything touching the HSM, the repository or the disk).
    Pool,
}

#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) placement: Placement,
}

/// The command table.
#[derive(Clone, Default)]
pub struct Router {
    routes: BTreeMap<Command, Route>,
}

impl Router {
    /// An empty table (`hello`, `health` and `fetch_parts` are built in).
    pub fn new() -> Self {
        Router::default()
    }

    /// Adds a command.
    pub fn route(
        mut self,
        command: Command,
        placement: Placement,
        handler: Arc<dyn Handler>,
    ) -> Self {
        self.routes.insert(command, Route { handler, placement });
        self
    }

    pub(crate) fn get(&self, command: Command) -> Option<&Route> {
        self.routes.get(&command)
    }

    pub(crate) fn commands(&self) -> impl Iterator<Item = Command> + '_ {
        self.routes.keys().copied()
    }
}
