//! Handlers, owed answers and the table that routes commands to handlers.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use signer_protocol::calls::{declaration, Call, Declaration};
use signer_protocol::{
    decode_body, encode_body, Audit, Command, FactList, Facts, Placement, Status,
};

use crate::Failure;

/// What a handler learns about the call besides its body.
#[derive(Debug, Clone, Copy)]
pub struct CallContext {
    /// The envelope id: what a retransmission of the same frame repeats,
    /// and what the engine deduplicates by. Not the idempotency key
    /// (`request_id` in the bodies of state-changing commands).
    pub envelope_id: u64,
    /// The command.
    pub command: Command,
}

/// A finished answer: the reply body or the failure, and the audit facts.
#[derive(Debug)]
pub struct Answer {
    /// The encoded reply body, or the failure.
    pub result: Result<Vec<u8>, Failure>,
    /// Audit facts of the request and (on success) the reply.
    pub facts: FactList,
    /// True when the handler dropped the answer unfinished (a bug or a
    /// panic); the result is then `internal`.
    pub abandoned: bool,
}

type Finish = Box<dyn FnOnce(Answer) + Send>;

/// The answer to one request, owed. A handler finishes it with the result,
/// now or later from any thread (for example once a commit is on disk); if
/// it is dropped unfinished, the request is answered `internal`.
pub struct Completion {
    finish: Option<Finish>,
    facts: FactList,
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completion")
            .field("finished", &self.finish.is_none())
            .field("facts", &self.facts)
            .finish()
    }
}

impl Completion {
    /// An owed answer delivered to `finish` (the engine's side).
    pub fn new(finish: impl FnOnce(Answer) + Send + 'static) -> Completion {
        Completion {
            finish: Some(Box::new(finish)),
            facts: Vec::new(),
        }
    }

    /// Adds audit facts to the answer.
    pub fn add_facts(&mut self, facts: impl FnOnce(&mut FactList)) {
        facts(&mut self.facts);
    }

    /// Delivers the answer.
    pub fn finish(mut self, result: Result<Vec<u8>, Failure>) {
        self.deliver(result, false);
    }

    fn deliver(&mut self, result: Result<Vec<u8>, Failure>, abandoned: bool) {
        if let Some(finish) = self.finish.take() {
            finish(Answer {
                result,
                facts: std::mem::take(&mut self.facts),
                abandoned,
            });
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.deliver(
            Err(Failure::new(
                Status::INTERNAL,
                "internal error while executing the request",
            )),
            true,
        );
    }
}

/// The typed answer owed for command `C`: finishing it adds the reply's
/// audit facts and encodes the reply.
pub struct Reply<C: Call> {
    done: Completion,
    _call: PhantomData<fn() -> C>,
}

impl<C: Call> Reply<C> {
    /// Delivers the answer.
    pub fn send(self, result: Result<C::Reply, Failure>) {
        let mut done = self.done;
        match result {
            Ok(reply) => {
                reply.facts(&mut done.facts);
                done.finish(Ok(encode_body(&reply)));
            }
            Err(failure) => done.finish(Err(failure)),
        }
    }
}

/// Runs one command.
pub trait Handler: Send + Sync + 'static {
    /// Executes the command with its msgpack body and finishes `done` with
    /// the reply, at once or later from another thread (the worker is then
    /// free for the next request).
    fn call(&self, ctx: &CallContext, body: &[u8], done: Completion);
}

/// Decodes the request of `C`, records its facts, and hands it on.
fn decoded<C: Call>(body: &[u8], done: &mut Completion) -> Result<C::Request, Failure> {
    let request: C::Request =
        decode_body(body).map_err(|e| Failure::new(Status::MALFORMED_BODY, e.0))?;
    request.facts(&mut done.facts);
    Ok(request)
}

struct Immediate<C, F> {
    f: F,
    _call: PhantomData<fn() -> C>,
}

impl<C, F> Handler for Immediate<C, F>
where
    C: Call,
    F: Fn(&CallContext, C::Request) -> Result<C::Reply, Failure> + Send + Sync + 'static,
{
    fn call(&self, ctx: &CallContext, body: &[u8], mut done: Completion) {
        let result = decoded::<C>(body, &mut done).and_then(|request| (self.f)(ctx, request));
        Reply::<C> {
            done,
            _call: PhantomData,
        }
        .send(result);
    }
}

struct Deferred<C, F> {
    f: F,
    _call: PhantomData<fn() -> C>,
}

impl<C, F> Handler for Deferred<C, F>
where
    C: Call,
    F: Fn(&CallContext, C::Request, Reply<C>) + Send + Sync + 'static,
{
    fn call(&self, ctx: &CallContext, body: &[u8], mut done: Completion) {
        match decoded::<C>(body, &mut done) {
            Ok(request) => (self.f)(
                ctx,
                request,
                Reply {
                    done,
                    _call: PhantomData,
                },
            ),
            Err(failure) => done.finish(Err(failure)),
        }
    }
}

/// A command's handler and how it runs.
#[derive(Clone)]
pub struct Route {
    /// The handler.
    pub handler: Arc<dyn Handler>,
    /// Where it runs.
    pub placement: Placement,
    /// How the audit log treats it.
    pub audit: Audit,
}

/// The command table.
#[derive(Clone, Default)]
pub struct Router {
    routes: BTreeMap<Command, Route>,
}

impl Router {
    /// An empty table.
    pub fn new() -> Self {
        Router::default()
    }

    /// Adds command `C`, answered by `f` on the thread that runs it. A body
    /// that does not decode is answered `malformed_body`.
    pub fn on<C: Call>(
        self,
        f: impl Fn(&CallContext, C::Request) -> Result<C::Reply, Failure> + Send + Sync + 'static,
    ) -> Self {
        self.with::<C>(Arc::new(Immediate::<C, _> {
            f,
            _call: PhantomData,
        }))
    }

    /// Adds command `C`, answered by `f` through its [`Reply`], which it may
    /// finish later from another thread.
    pub fn on_deferred<C: Call>(
        self,
        f: impl Fn(&CallContext, C::Request, Reply<C>) + Send + Sync + 'static,
    ) -> Self {
        self.with::<C>(Arc::new(Deferred::<C, _> {
            f,
            _call: PhantomData,
        }))
    }

    /// Adds command `C` with an untyped handler (the engine's transport
    /// commands; services use [`Router::on`]).
    pub fn with<C: Call>(mut self, handler: Arc<dyn Handler>) -> Self {
        self.routes.insert(
            C::COMMAND,
            Route {
                handler,
                placement: C::PLACEMENT,
                audit: C::AUDIT,
            },
        );
        self
    }

    /// Adds a command by its declaration with an untyped handler (a relay
    /// that forwards bodies it does not read).
    pub fn with_declaration(
        mut self,
        declaration: &Declaration,
        handler: Arc<dyn Handler>,
    ) -> Self {
        self.routes.insert(
            declaration.command,
            Route {
                handler,
                placement: declaration.placement,
                audit: declaration.audit,
            },
        );
        self
    }

    /// Adds every route of `other` (a service's table into the daemon's).
    pub fn merge(mut self, other: Router) -> Self {
        self.routes.extend(other.routes);
        self
    }

    /// The route of `command`.
    pub fn get(&self, command: Command) -> Option<&Route> {
        self.routes.get(&command)
    }

    /// The routed commands, in code order.
    pub fn commands(&self) -> impl Iterator<Item = Command> + '_ {
        self.routes.keys().copied()
    }
}

/// How a command that has no route is audited: its declaration's way, or
/// counted for a code the protocol does not know.
pub fn audit_of(command: Command) -> Audit {
    declaration(command).map_or(Audit::Counted, |d: &Declaration| d.audit)
}
