//! `signerd`: the signer daemon. Parses arguments and hands each
//! subcommand to its module: `run` serves the link, `check_config`,
//! `setup` (the key ceremony, over `signer_ca::ceremony`), `repo` and
//! `audit` are the operator's commands; `exit` holds the exit statuses.
#![forbid(unsafe_code)]

/// Prints a line; a closed standard output (`signerd setup … | head -1`)
/// must not abort a set-up step after the HSM acted and before the audit
/// log recorded it.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod audit;
mod check_config;
mod config;
mod exit;
mod notify;
mod repo;
mod run;
mod setup;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use signer_ca::CaConfig;

/// The daemon's configuration: the server's sections plus `ca:`.
pub type Config = signer_server::Config<CaConfig>;

/// The serial-link signer daemon.
#[derive(Parser)]
#[command(name = "signerd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Read the token PIN from this file (mode 0600) instead of `ca.hsm.pin`:
    /// for set-up and check commands run by hand when the configuration
    /// takes the PIN from a systemd credential. Without it, such a command
    /// on a terminal asks for the PIN.
    #[arg(long, global = true, value_name = "FILE")]
    pin_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory.
        dir: PathBuf,
    },
    /// Serve the protocol on the configured serial device until SIGTERM/SIGINT.
    Run {
        /// Configuration file (YAML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and print what it would use; with a
    /// `ca:` section also log in to the token and check every key and CA
    /// certificate (as startup does).
    CheckConfig {
        /// Configuration file (YAML).
        #[arg(long, short)]
        config: PathBuf,
        /// Check the file only; do not open the token.
        #[arg(long)]
        offline: bool,
    },
    /// Key ceremony: keys in the HSM and CA certificates.
    #[command(subcommand)]
    Setup(setup::SetupCmd),
    /// The repository: consistency check, export and import.
    #[command(subcommand)]
    Repo(repo::RepoCmd),
    /// The audit log: verify the hash chain, show entries.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(file) = cli.pin_file {
        config::set_pin_file(file);
    }
    match cli.command {
        Cmd::GenerateDocs { dir } => {
            match signer_clidoc::write(<Cli as clap::CommandFactory>::command(), &dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("signerd: {}: {e}", dir.display());
                    ExitCode::from(exit::EXIT_RUNTIME)
                }
            }
        }
        Cmd::Run { config } => run::main(&config),
        Cmd::CheckConfig { config, offline } => check_config::run(&config, offline),
        Cmd::Setup(cmd) => setup::run(cmd),
        Cmd::Repo(cmd) => repo::run(cmd),
        Cmd::Audit(cmd) => audit::run(cmd),
    }
}
