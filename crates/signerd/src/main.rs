//! `signerd`: the signer daemon. Parses arguments, sets up logging, builds
//! the components from the configuration and serves the serial link.
#![forbid(unsafe_code)]

mod notify;
mod setup;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use signer_ca::{CaConfig, CaService};
use signer_replication::Replicator;
use signer_server::config::LogFormat;
use signer_server::{link, Engine};
use signer_service::{HealthSource, Router};
use tracing::{error, info};

/// The daemon's configuration: the server's sections plus `ca:`.
pub type Config = signer_server::Config<CaConfig>;

/// The serial-link signer daemon.
#[derive(Parser)]
#[command(name = "signerd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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
    Repo(setup::RepoCmd),
    /// The audit log: verify the hash chain, show entries.
    #[command(subcommand)]
    Audit(setup::AuditCmd),
}

/// Exit status for a configuration error (usage errors exit with 2, from clap).
const EXIT_CONFIG: u8 = 1;
/// How long requests in flight may take to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Exit status when the daemon failed at run time.
const EXIT_RUNTIME: u8 = 3;
/// Exit status when the token refused the PIN: restarting would only count
/// more failed logins against the token, so the unit does not restart on it.
const EXIT_PIN: u8 = 4;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::CheckConfig { config, offline } => match Config::load(&config) {
            Ok(c) => {
                print_summary(&c);
                match (&c.ca, offline) {
                    (Some(ca), false) => match setup::check_token(ca)
                        .and_then(|lines| Ok((lines, setup::check_repository(&c.signer_id, ca)?)))
                    {
                        Ok((lines, repository)) => {
                            for line in lines.iter().chain(&repository) {
                                println!("{line}");
                            }
                            ExitCode::SUCCESS
                        }
                        Err((code, e)) => {
                            eprintln!("signerd: {e}");
                            ExitCode::from(code)
                        }
                    },
                    _ => ExitCode::SUCCESS,
                }
            }
            Err(e) => {
                eprintln!("signerd: configuration error: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Cmd::Run { config } => {
            let c = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("signerd: configuration error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            init_logging(&c);
            match run(&c) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e)
                    if matches!(
                        e.downcast_ref::<signer_ca::CaError>(),
                        Some(signer_ca::CaError::Pin(_))
                    ) =>
                {
                    error!(cause = %e, "the token refused the PIN; fix it and start signerd again");
                    eprintln!("signerd: {e}");
                    ExitCode::from(EXIT_PIN)
                }
                Err(e) => {
                    // A refused or damaged repository is not retried by the
                    // unit (RestartPreventExitStatus): a restart cannot mend it.
                    let code = match e.downcast_ref::<signer_ca::CaError>() {
                        Some(ca @ signer_ca::CaError::Repository(_)) => setup::ca_exit(ca),
                        _ => EXIT_RUNTIME,
                    };
                    error!(cause = %format!("{e:#}"), "signerd stopped");
                    eprintln!("signerd: {e:#}");
                    ExitCode::from(code)
                }
            }
        }
        Cmd::Setup(cmd) => setup::run_setup(cmd),
        Cmd::Repo(cmd) => setup::run_repo(cmd),
        Cmd::Audit(cmd) => setup::run_audit(cmd),
    }
}

fn print_summary(c: &Config) {
    println!("configuration OK");
    println!("signer_id      {}", c.signer_id);
    println!(
        "link           {} at {} baud, {} data bits, parity {:?}, {} stop bit(s), flow control {:?}",
        c.link.device.display(),
        c.link.baud,
        c.link.data_bits,
        c.link.parity,
        c.link.stop_bits,
        c.link.flow_control
    );
    println!(
        "protocol       max_frame {} bytes, {} in flight, {} workers, response cache {} entries / {} MiB",
        c.protocol.max_frame,
        c.protocol.max_in_flight,
        c.protocol.workers,
        c.protocol.response_cache_entries,
        c.protocol.response_cache_mib
    );
    match &c.ca {
        None => println!("ca             none (health only)"),
        Some(ca) => {
            println!(
                "hsm            {}, PIN from {}",
                ca.hsm.describe(),
                ca.hsm.pin().describe()
            );
            for k in &ca.keys {
                println!(
                    "key            {} (label {}, id {})",
                    k.name,
                    k.label.as_deref().unwrap_or("-"),
                    k.id.as_deref().unwrap_or("-")
                );
            }
            for a in &ca.cas {
                println!(
                    "ca             {} with key {}, certificate {}",
                    a.name,
                    a.key,
                    a.certificate.display()
                );
            }
            for (name, p) in &ca.profiles {
                println!(
                    "profile        {name}: issuer {}, {} days default, {} max, EKU {:?}",
                    p.issuer, p.default_days, p.max_days, p.extended_key_usage
                );
            }
            println!("repository     {}", ca.repository.display());
            match &ca.replication {
                None => println!("replication    none (single signer)"),
                Some(r) => println!(
                    "replication    twin {} via {}; own nats-server {}",
                    r.peer_id, r.peer, r.local
                ),
            }
            println!("serial prefix  0x{:02x}", ca.serial_prefix);
        }
    }
}

fn init_logging(c: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&c.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match c.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(c: &Config) -> anyhow::Result<()> {
    let mut router = Router::new();
    let mut health: Vec<Arc<dyn HealthSource>> = Vec::new();
    let mut replicator = None;
    let ca = match &c.ca {
        Some(ca_config) => {
            let service = CaService::start(ca_config, &c.signer_id, c.protocol.workers)?;
            router = service.routes(router);
            health.push(service.clone());
            if let Some(r) = &ca_config.replication {
                let started = Arc::new(Replicator::start(r, Arc::clone(service.repository()))?);
                health.push(started.clone());
                replicator = Some(started);
            }
            Some(service)
        }
        None => None,
    };
    let engine = Engine::start(c.engine(), router, health);
    let mut audit = None;
    if let Some(ca) = &ca {
        let repo = ca.repository();
        let sink = Arc::new(signer_ca::CaAudit::new(Arc::clone(repo)));
        engine.set_audit(sink.clone());
        audit = Some(sink);
        repo.audit(
            signer_repository::AuditEntry::new("startup", "signerd", "ok")
                .fact("version", env!("CARGO_PKG_VERSION"))
                .fact("link", c.link.device.display().to_string()),
        );
    }
    let stop = engine.stop_flag();
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    info!(signer_id = %c.signer_id, version = env!("CARGO_PKG_VERSION"), ca = ca.is_some(), "signerd started");
    notify::notify(&format!(
        "READY=1\nSTATUS=serving {} as {}",
        c.link.device.display(),
        c.signer_id
    ));
    link::serve(&engine, &c.link, &stop, SHUTDOWN_GRACE);
    notify::notify("STOPPING=1");
    // Without an open device the link had no session to drain; stop the workers here.
    engine.shutdown(SHUTDOWN_GRACE);
    if let Some(r) = replicator {
        r.stop();
    }
    if let Some(audit) = audit {
        audit.flush();
    }
    if let Some(ca) = ca {
        ca.stop();
        ca.repository().audit(signer_repository::AuditEntry::new(
            "shutdown", "signerd", "ok",
        ));
        ca.repository().close();
    }
    info!(signal = stop.load(Ordering::SeqCst), "signerd stopped");
    Ok(())
}
