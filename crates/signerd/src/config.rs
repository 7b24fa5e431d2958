//! Loading the configuration for an operator command.

use std::path::Path;

use crate::exit::{ca_exit, Failed};
use crate::Config;

pub fn load(config: &Path) -> Result<(Config, signer_ca::CaConfig), String> {
    let c = Config::load(config).map_err(|e| format!("configuration error: {e}"))?;
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
