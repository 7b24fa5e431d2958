//! The signer's protocol engine and serial link handler.
//!
//! ```text
//! serial device ─► link::serve ─► Decoder ─► Engine::on_frame ─► Router ─► Handler
//!        ▲                                        │ (dedupe by id, pipelining, parts)
//!        └──────────── writer thread ◄── Outbox ◄─┘
//! ```
//!
//! The daemon builds a `signer_service::Router` from the services' handlers,
//! starts an [`Engine`] and calls [`link::serve`]. Everything here is
//! independent of what a command does: the handler contract lives in
//! `signer-service`, which the services depend on instead of this crate.
//! `hello` and `health` are ordinary routes the engine adds; `fetch_parts`
//! is answered from the response store.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod config;
pub mod engine;
pub mod link;
pub mod logging;

pub use config::{Config, ConfigError};
pub use engine::{outbox, Engine, EngineConfig, Outbox};

#[cfg(test)]
mod tests;
