//! What a service's configuration section promises the daemon's config
//! loader: it is parsed strictly, then validates itself; every error names
//! its key path.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration problem, naming the offending key where there is one.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// YAML syntax, a wrong type, a missing or unknown key.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// serde_yaml's message (it names the key path and position).
        message: String,
    },
    /// A value out of its allowed range.
    #[error("{file}: {key}: {message}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Dotted key path, e.g. `protocol.max_frame`.
        key: String,
        /// What was expected.
        message: String,
    },
}

/// The `ca:` section a daemon adds to the file. The server crate only
/// parses it strictly and asks it to validate itself.
pub trait Section: DeserializeOwned + Clone + std::fmt::Debug {
    /// Resolves relative paths against `base` and checks values; errors name
    /// their key under `ca.`.
    fn validate(&mut self, file: &Path, base: &Path) -> Result<(), ConfigError>;
}
