//! The PKCS#11 key backend (`cryptoki`), and the factory that opens the
//! backend a configuration names.
//!
//! ```text
//! ca.hsm (BackendConfig, tagged by `backend:`) ─► open() ─► Arc<dyn KeyGenerator>
//!                                                   └─ pkcs11: Pkcs11Backend
//! ```
//!
//! The trait and the key types live in `signer-keys`; this crate is the only
//! one that loads a PKCS#11 module.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod factory;
mod pin;
mod pkcs11;
mod softhsm;

pub use factory::{open, BackendConfig, Pkcs11Config};
pub use pin::{PinSource, SecretPin};
pub use pkcs11::{KeySpec, Pkcs11Backend, TokenConfig, TokenSelector};
pub use signer_keys::{
    Hash, HsmError, KeyGenerator, KeyKind, KeyStatus, PublicKey, Scheme, SigningBackend,
};
