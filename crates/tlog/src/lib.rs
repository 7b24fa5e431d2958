//! The audit log as a transparency log.
//!
//! - [`merkle`]: the RFC 9162 Merkle tree over the audit entries, inclusion
//!   and consistency proofs and their verification.
//! - [`note`]: checkpoints (c2sp.org/tlog-checkpoint) signed by the log's
//!   Ed25519 audit key, and witness cosignatures
//!   (c2sp.org/tlog-cosignature, `cosignature/v1`).
//!
//! Nothing here holds a key: signing is the caller's (the keys are in the
//! HSM); verifying needs only public keys, so the web host checks the log
//! with this crate and no PKCS#11.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod merkle;
pub mod note;

pub use merkle::{Hash, Nodes};
pub use note::{Checkpoint, SignedCheckpoint, Verifier};
