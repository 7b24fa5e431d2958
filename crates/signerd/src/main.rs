//! `signerd`: the signer daemon. Parses arguments, sets up logging, builds
//! the components from the configuration and serves the serial link.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use signer_server::config::LogFormat;
use signer_server::{link, Config, Engine, Router};
use tracing::{error, info};

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
    /// Validate a configuration file and print what it would use.
    CheckConfig {
        /// Configuration file (YAML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Exit status for a configuration error (usage errors exit with 2, from clap).
const EXIT_CONFIG: u8 = 1;
/// How long requests in flight may take to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Exit status when the daemon failed at run time.
const EXIT_RUNTIME: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::CheckConfig { config } => match Config::load(&config) {
            Ok(c) => {
                print_summary(&c);
                ExitCode::SUCCESS
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
                Err(e) => {
                    error!(cause = %format!("{e:#}"), "signerd stopped");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
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
    let router = Router::new();
    let engine = Engine::start(c.engine(), router, Vec::new());
    let stop = engine.stop_flag();
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    info!(signer_id = %c.signer_id, version = env!("CARGO_PKG_VERSION"), "signerd started");
    link::serve(&engine, &c.link, &stop, SHUTDOWN_GRACE);
    // Without an open device the link had no session to drain; stop the workers here.
    engine.shutdown(SHUTDOWN_GRACE);
    info!(signal = stop.load(Ordering::SeqCst), "signerd stopped");
    Ok(())
}
