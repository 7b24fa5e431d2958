//! `signerd run`: builds the services from the configuration, starts the
//! engine and serves the link until SIGTERM/SIGINT.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use signer_ca::CaService;
use signer_replication::Replicator;
use signer_server::{link, Engine};
use signer_service::{HealthSource, Router};
use tracing::{error, info};

use crate::exit::{ca_exit, EXIT_CONFIG, EXIT_PIN, EXIT_RUNTIME};
use crate::{notify, Config};

/// How long requests in flight may take to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs `run`: the daemon's exit status.
pub fn main(config: &Path) -> ExitCode {
    let c = match crate::config::load_config(config) {
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
                Some(ca @ signer_ca::CaError::Repository(_)) => ca_exit(ca),
                _ => EXIT_RUNTIME,
            };
            error!(cause = %format!("{e:#}"), "signerd stopped");
            eprintln!("signerd: {e:#}");
            ExitCode::from(code)
        }
    }
}

/// Tells systemd the signer is alive twice per watchdog interval, as long
/// as a worker takes a probe: a signer whose workers are all stuck stops
/// feeding it, and systemd restarts it.
fn feed_watchdog(engine: &Engine, interval: Duration, stop: &AtomicBool) {
    let half = interval / 2;
    let mut starving = false;
    while !stop.load(Ordering::SeqCst) {
        let started = std::time::Instant::now();
        if engine.alive(half) {
            notify::notify("WATCHDOG=1");
            starving = false;
        } else if !starving {
            tracing::error!(
                within_ms = half.as_millis() as u64,
                "no worker took the liveness probe: the watchdog is not fed and systemd will restart signerd"
            );
            starving = true;
        }
        while !stop.load(Ordering::SeqCst) && started.elapsed() < half {
            std::thread::sleep(Duration::from_millis(50).min(half));
        }
    }
}

fn init_logging(c: &Config) {
    signer_server::logging::init(&c.log.level, c.log.format);
}

fn run(c: &Config) -> anyhow::Result<()> {
    let mut router = Router::new();
    let mut health: Vec<Arc<dyn HealthSource>> = Vec::new();
    let mut replicator = None;
    let mut audit_log = None;
    let ca = match &c.ca {
        Some(ca_config) => {
            // One HSM session per worker, and one more for the replicator's seals
            // (so sealing never waits for an issuing worker's session).
            // One for the audit log's checkpoints too.
            let sessions = c.protocol.workers
                + usize::from(ca_config.replication.is_some())
                + usize::from(ca_config.audit.is_some());
            let service = {
                // Opening the repository reads the whole file first.
                let _starting = notify::Starting::begin(&ca_config.repository);
                CaService::start(ca_config, &c.signer_id, sessions)?
            };
            router = service.routes(router);
            health.push(service.clone());
            if let Some(r) = &ca_config.replication {
                let started = Arc::new(Replicator::start(
                    r,
                    Arc::clone(service.repository()),
                    Arc::clone(service.backend()),
                )?);
                health.push(started.clone());
                replicator = Some(started);
            }
            if let Some(a) = &ca_config.audit {
                let log = Arc::new(
                    signer_ca::AuditLog::new(
                        a,
                        Arc::clone(service.repository()),
                        Arc::clone(service.backend()),
                        ca_config.replication.as_ref().map(|r| r.peer_id.as_str()),
                    )
                    .map_err(anyhow::Error::msg)?,
                );
                router = log.routes(router);
                health.push(log.clone());
                let thread = log.start();
                audit_log = Some((log, thread));
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
    // A hang-up (the terminal or SSH session that started it went away) does
    // not stop the signer: nothing in flight is dropped. Nothing is reloaded
    // either; a changed configuration takes a restart.
    let hangups = Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hangups))?;
    info!(signer_id = %c.signer_id, version = env!("CARGO_PKG_VERSION"), ca = ca.is_some(), "signerd started");
    notify::notify(&format!(
        "READY=1\nSTATUS=serving {} as {}",
        c.link.device.display(),
        c.signer_id
    ));
    let watchdog = notify::watchdog_interval().map(|interval| {
        let (engine, stop) = (Arc::clone(&engine), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || feed_watchdog(&engine, interval, &stop))
    });
    link::serve(&engine, &c.link, &stop, SHUTDOWN_GRACE);
    notify::notify("STOPPING=1");
    if let Some(Ok(thread)) = watchdog {
        let _ = thread.join();
    }
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
        // The last checkpoint covers the shutdown entry.
        if let Some((log, thread)) = audit_log {
            log.stop();
            let _ = thread.join();
        }
    }
    info!(signal = stop.load(Ordering::SeqCst), "signerd stopped");
    Ok(())
}
