//! Loading the configuration for an operator command.

use std::path::Path;

use crate::exit::{ca_exit, Failed};
use crate::Config;

/// `--pin-file`, given for this invocation.
static PIN_FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Takes the PIN from `path` instead of `ca.hsm.pin` (`--pin-file`).
pub fn set_pin_file(path: std::path::PathBuf) {
    let _ = PIN_FILE.set(path);
}

/// Reads the configuration file, then settles where this invocation takes
/// the PIN from: `--pin-file` if given; otherwise the configured source,
/// except that a systemd credential, which exists only inside the unit, is
/// asked for on the terminal when a person runs the command by hand.
pub fn load_config(path: &Path) -> Result<Config, signer_service::config::ConfigError> {
    let mut c = Config::load(path)?;
    if let Some(ca) = c.ca.as_mut() {
        let token = ca.hsm.describe();
        let pin = ca.hsm.pin_mut();
        if let Some(file) = PIN_FILE.get() {
            *pin = signer_hsm::PinSource::File(file.clone());
        } else if matches!(pin, signer_hsm::PinSource::Credential(_))
            && std::env::var_os("CREDENTIALS_DIRECTORY").is_none()
            && std::io::IsTerminal::is_terminal(&std::io::stdin())
        {
            *pin = signer_hsm::PinSource::Terminal(token);
        }
    }
    Ok(c)
}

pub fn load(config: &Path) -> Result<(Config, signer_ca::CaConfig), String> {
    let c = load_config(config).map_err(|e| format!("configuration error: {e}"))?;
    let ca = c.ca.clone().ok_or("the configuration has no ca: section")?;
    Ok((c, ca))
}

/// The configuration, its `ca:` section and what it expects of its repository.
pub fn load_expected(
    config: &Path,
) -> Result<(Config, signer_ca::CaConfig, signer_repository::Expected), Failed> {
    let (c, ca) = load(config)?;
    let expected = signer_ca::expected_identity(&ca, &c.signer_id)
        .map_err(|e| Failed(ca_exit(&e), e.to_string()))?;
    Ok((c, ca, expected))
}

/// The configuration file of a setup or repository command.
#[derive(clap::Args)]
pub struct ConfigArg {
    /// Configuration file (its `ca:` section names the token, keys, CAs and repository).
    #[arg(long, short)]
    pub config: std::path::PathBuf,
}
