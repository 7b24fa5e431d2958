//! The signer's protocol engine and serial link handler.
//!
//! ```text
//! serial device ─► link::serve ─► Decoder ─► Engine::on_frame ─► Router ─► Handler
//!        ▲                                        │ (dedupe by id, pipelining, parts)
//!        └──────────── writer thread ◄── Outbox ◄─┘
//! ```
//!
//! The daemon builds a [`Router`] from the component crates' handlers, starts an
//! [`Engine`] and calls [`link::serve`]. Everything here is independent of
//! what a command does; `hello`, `health` and `fetch_parts` are built in.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod config;
pub mod engine;
pub mod link;
pub mod router;

pub use config::{Config, ConfigError};
pub use engine::{outbox, AuditSink, CommandOutcome, Engine, EngineConfig, HealthSource, Outbox};
pub use router::{typed, CallContext, Completion, Failure, Handler, Placement, Router};

#[cfg(test)]
mod tests;
