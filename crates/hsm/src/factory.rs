//! One place that turns a backend configuration into a signing backend.
//!
//! In YAML the `hsm:` section names its backend with `backend:`; `pkcs11`
//! is the default, so a section without the key means PKCS#11:
//!
//! ```yaml
//! hsm:
//!   backend: pkcs11            # the default
//!   module: /usr/lib/softhsm/libsofthsm2.so
//!   token: {label: signer-a}
//!   pin: {credential: token-pin}
//! ```
//!
//! A new backend is a variant here, a crate or module implementing
//! `signer_keys::KeyGenerator`, and a test running
//! `signer_keys::conformance` against it.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use signer_keys::{HsmError, KeyGenerator};

use crate::pin::{PinSource, SecretPin};
use crate::pkcs11::{KeySpec, Pkcs11Backend, TokenConfig, TokenSelector};

/// `backend: pkcs11` — a token reached through a PKCS#11 module.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module.
    pub module: PathBuf,
    /// Which token: `{label: …}`, `{serial: …}` or `{slot: N}`.
    pub token: TokenSelector,
    /// Where the user PIN comes from.
    pub pin: PinSource,
}

impl Pkcs11Config {
    /// The token part of the configuration.
    pub fn token(&self) -> TokenConfig {
        TokenConfig {
            module: self.module.clone(),
            token: self.token.clone(),
            pin: self.pin.clone(),
        }
    }
}

/// Which key backend holds the keys, and how to reach it.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "backend", rename_all = "snake_case", deny_unknown_fields)]
pub enum BackendConfig {
    /// A PKCS#11 token (the default).
    Pkcs11(Pkcs11Config),
}

impl<'de> Deserialize<'de> for WithDefault {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut map = serde_yaml::Mapping::deserialize(d)?;
        let tag = serde_yaml::Value::String("backend".into());
        if !map.contains_key(&tag) {
            map.insert(tag, serde_yaml::Value::String("pkcs11".into()));
        }
        serde_yaml::from_value(serde_yaml::Value::Mapping(map))
            .map(WithDefault)
            .map_err(D::Error::custom)
    }
}

/// A [`BackendConfig`] whose `backend:` key defaults to `pkcs11`.
struct WithDefault(BackendConfig);

impl BackendConfig {
    /// Deserializes a backend section, `backend:` defaulting to `pkcs11`
    /// (for `#[serde(deserialize_with = …)]`).
    pub fn deserialize_defaulted<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        WithDefault::deserialize(d).map(|w| w.0)
    }

    /// Where the PIN comes from (every backend today has one).
    pub fn pin(&self) -> &PinSource {
        match self {
            BackendConfig::Pkcs11(c) => &c.pin,
        }
    }

    /// Mutable access to the PIN source (to resolve relative paths).
    pub fn pin_mut(&mut self) -> &mut PinSource {
        match self {
            BackendConfig::Pkcs11(c) => &mut c.pin,
        }
    }

    /// A one-line description for logs and `check-config`.
    pub fn describe(&self) -> String {
        match self {
            BackendConfig::Pkcs11(c) => {
                format!(
                    "PKCS#11 module {}, token {}",
                    c.module.display(),
                    c.token.describe()
                )
            }
        }
    }
}

/// Opens the backend `config` names, for `keys`, allowing `sessions`
/// signatures at once. Reads the PIN (from `pin` if given, else from the
/// configured source); does not wait for the token.
pub fn open(
    config: &BackendConfig,
    keys: Vec<KeySpec>,
    sessions: usize,
    pin: Option<SecretPin>,
) -> Result<Arc<dyn KeyGenerator>, HsmError> {
    match config {
        BackendConfig::Pkcs11(c) => {
            let backend = match pin {
                Some(pin) => Pkcs11Backend::open_with_pin(c.token(), pin, keys, sessions)?,
                None => Pkcs11Backend::open(c.token(), keys, sessions)?,
            };
            Ok(Arc::new(backend))
        }
    }
}
