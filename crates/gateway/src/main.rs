//! `signer-gateway`: the web host's service between the web application's
//! request queue and the signers' serial links.
//!
//! Exit codes: 0 success, 1 the configuration is refused (or, for
//! `check-config`, what it names cannot be opened), 2 usage error, 3 a
//! start-up failure that may pass (the queue, the socket or the metrics
//! address not available; the unit restarts on it), 4 bad input file
//! (enqueue).
#![forbid(unsafe_code)]

use std::io::{BufRead, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use signer_client::requests::{Line, Request};
use signer_gateway::config::Config;
use signer_gateway::queue::{self, Kind, State};

/// Writes a line to standard output, ignoring a closed pipe.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

const DEFAULT_CONFIG: &str = "/etc/signer-gateway/gateway.yaml";

/// The web host's gateway to the serial-link signers.
#[derive(Parser)]
#[command(name = "signer-gateway", version, about)]
struct Cli {
    /// The configuration file.
    #[arg(long, global = true, env = "SIGNER_GATEWAY_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory.
        dir: PathBuf,
    },
    /// Run the gateway (the systemd unit's command).
    Run,
    /// Check the configuration and that the queue opens; print a summary.
    CheckConfig {
        /// Check the file only (no queue, no directories).
        #[arg(long)]
        offline: bool,
    },
    /// Print the queue's SQL schema for a database.
    Schema {
        /// Which database.
        database: Database,
    },
    /// Add requests to the queue from a JSON-lines file ("-": standard
    /// input), one `{"request_id", "kind", "body"}` object a line. A request
    /// id already queued is left as it is.
    Enqueue {
        /// The file.
        file: PathBuf,
    },
    /// Show the queue: rows by state, or one row with its answer.
    Status {
        /// One row's request id.
        request_id: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Database {
    Sqlite,
    Postgres,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::GenerateDocs { dir } = &cli.command {
        return match signer_clidoc::write(<Cli as clap::CommandFactory>::command(), dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("signer-gateway: {}: {e}", dir.display());
                ExitCode::from(3)
            }
        };
    }
    if let Cmd::Schema { database } = cli.command {
        say!(
            "{}",
            match database {
                Database::Sqlite => queue::sqlite::SCHEMA,
                Database::Postgres => queue::postgres::SCHEMA,
            }
        );
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("signer-gateway: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Cmd::Schema { .. } | Cmd::GenerateDocs { .. } => ExitCode::SUCCESS,
        Cmd::Run => run(&config),
        Cmd::CheckConfig { offline } => check_config(&cli.config, &config, offline),
        Cmd::Enqueue { file } => enqueue(&config, &file),
        Cmd::Status { request_id, json } => status(&config, request_id.as_deref(), json),
    }
}

fn run(config: &Config) -> ExitCode {
    signer_server::logging::init("info", signer_server::config::LogFormat::Text);
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("signer-gateway: cannot handle signals: {e}");
            return ExitCode::from(1);
        }
    }
    // A hang-up of the terminal that started it does not stop the gateway.
    let _ = signal_hook::flag::register(
        signal_hook::consts::SIGHUP,
        Arc::new(AtomicBool::new(false)),
    );
    match signer_gateway::run(config, stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("signer-gateway: {e}");
            ExitCode::from(3)
        }
    }
}

fn check_config(path: &std::path::Path, config: &Config, offline: bool) -> ExitCode {
    if offline {
        // The file only.
    } else if let Err(e) = signer_gateway::open_queue(config) {
        eprintln!("signer-gateway: {}: queue: {e}", path.display());
        return ExitCode::from(1);
    }
    if let Some(crl) = config.crl.as_ref().filter(|_| !offline) {
        if !crl.directory.is_dir() {
            eprintln!(
                "signer-gateway: {}: crl.directory {} is not a directory",
                path.display(),
                crl.directory.display()
            );
            return ExitCode::from(1);
        }
    }
    if !offline {
        if let Err(e) = signer_gateway::audit::open(config) {
            eprintln!("signer-gateway: {}: audit log copy: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    say!("configuration OK: {}", path.display());
    say!("name        {}", config.name);
    for (i, s) in config.signers.iter().enumerate() {
        say!(
            "signer {}    {} at {} baud",
            i + 1,
            s.device.display(),
            s.baud
        );
        if let Some(a) = &s.audit {
            say!(
                "            audit log copied to {} every {} s",
                a.copy.display(),
                config.audit_sync_s
            );
        }
    }
    match (&config.queue.sqlite, &config.queue.postgres) {
        (Some(file), _) => say!("queue       sqlite {}", file.display()),
        (_, Some(_)) => say!("queue       postgres (connection string as configured)"),
        _ => {}
    }
    say!(
        "            {} requests at once, lease {} s, {} attempts before a row is parked",
        config.queue.workers,
        config.queue.lease_s,
        config.queue.max_attempts
    );
    if let Some(s) = &config.socket {
        say!("socket      {} mode {}", s.path.display(), s.mode);
    }
    if let Some(c) = &config.crl {
        say!(
            "crl         {} ({}), refreshed {} s before nextUpdate",
            c.directory.display(),
            if c.pem { "DER and PEM" } else { "DER" },
            c.refresh_margin_s
        );
    }
    if let Some(m) = &config.metrics {
        say!("metrics     http://{}/metrics", m.listen);
    }
    ExitCode::SUCCESS
}

fn enqueue(config: &Config, file: &std::path::Path) -> ExitCode {
    let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        match std::fs::File::open(file) {
            Ok(f) => Box::new(std::io::BufReader::new(f)),
            Err(e) => {
                eprintln!("signer-gateway: {}: {e}", file.display());
                return ExitCode::from(4);
            }
        }
    };
    // Every line is checked before any is queued.
    let mut rows = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("signer-gateway: {}: {e}", file.display());
                return ExitCode::from(4);
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line = match serde_json::from_str(&line) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("signer-gateway: {} line {}: {e}", file.display(), n + 1);
                return ExitCode::from(4);
            }
        };
        let Some(kind) = Kind::parse(&parsed.kind) else {
            eprintln!(
                "signer-gateway: {} line {}: kind {:?} is not one of sign_x509, revoke_x509, certify_openpgp",
                file.display(),
                n + 1,
                parsed.kind
            );
            return ExitCode::from(4);
        };
        if !queue::valid_request_id(&parsed.request_id) {
            eprintln!(
                "signer-gateway: {} line {}: request_id must be 1-128 printable ASCII characters without spaces",
                file.display(),
                n + 1
            );
            return ExitCode::from(4);
        }
        let body = parsed.body.to_string();
        if let Err(e) = Request::from_row(&parsed.request_id, kind.as_str(), &body) {
            eprintln!(
                "signer-gateway: {} line {}: body: {e}",
                file.display(),
                n + 1
            );
            return ExitCode::from(4);
        }
        rows.push((parsed.request_id, kind, body));
    }
    let queue = match signer_gateway::open_queue(config) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("signer-gateway: queue: {e}");
            return ExitCode::from(1);
        }
    };
    let (mut added, mut present) = (0, 0);
    for (id, kind, body) in rows {
        match queue.enqueue(&id, kind, &body) {
            Ok(true) => added += 1,
            Ok(false) => present += 1,
            Err(e) => {
                eprintln!("signer-gateway: queue: {e} (after {added} rows added)");
                return ExitCode::from(1);
            }
        }
    }
    say!("{added} requests queued, {present} already in the queue");
    ExitCode::SUCCESS
}

fn status(config: &Config, request_id: Option<&str>, json: bool) -> ExitCode {
    let queue = match signer_gateway::open_queue(config) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("signer-gateway: queue: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(id) = request_id {
        return match queue.row(id) {
            Ok(Some((state, a, attempts))) => {
                if json {
                    say!(
                        "{}",
                        serde_json::json!({
                            "request_id": id, "state": state.as_str(), "attempts": attempts,
                            "status_code": (a.status_code >= 0).then_some(a.status_code),
                            "status_name": a.status_name, "message": a.message,
                            "signer": a.signer, "serial": a.serial,
                            "certificate": a.certificate,
                            "result": a.result.as_deref().and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok()),
                        })
                    );
                } else {
                    say!("{id}: {} after {attempts} attempt(s)", state.as_str());
                    if !a.status_name.is_empty() {
                        say!(
                            "status  {} ({}) {}",
                            a.status_name,
                            a.status_code,
                            a.message
                        );
                    }
                    if let Some(serial) = &a.serial {
                        say!("serial  {serial}");
                    }
                    if let Some(cert) = &a.certificate {
                        let _ = std::io::stdout().write_all(cert.as_bytes());
                    }
                }
                ExitCode::SUCCESS
            }
            Ok(None) => {
                eprintln!("signer-gateway: no request {id} in the queue");
                ExitCode::from(1)
            }
            Err(e) => {
                eprintln!("signer-gateway: queue: {e}");
                ExitCode::from(1)
            }
        };
    }
    match queue.stats() {
        Ok(stats) => {
            let by_state = State::ALL.map(|state| {
                let n: u64 = stats
                    .rows
                    .iter()
                    .filter(|r| r.0 == state)
                    .map(|r| r.2)
                    .sum();
                (state.as_str(), n)
            });
            if json {
                let rows: serde_json::Map<_, _> = by_state
                    .iter()
                    .map(|(state, n)| (state.to_string(), (*n).into()))
                    .collect();
                let by_status: std::collections::BTreeMap<_, _> =
                    stats.by_status.iter().cloned().collect();
                say!(
                    "{}",
                    serde_json::json!({"rows": rows, "oldest_pending_s": stats.oldest_pending_s, "by_status": by_status})
                );
            } else {
                for (state, n) in by_state {
                    say!("{state:<8} {n}");
                }
                say!("oldest unanswered row: {:.1} s", stats.oldest_pending_s);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("signer-gateway: queue: {e}");
            ExitCode::from(1)
        }
    }
}
