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

/// How long a stop waits for a start still under way.
const START_ABANDON: Duration = Duration::from_secs(3);

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

/// What the start made: the services the link serves and what stops them.
struct Started {
    ca: Option<Arc<CaService>>,
    replicator: Option<Arc<Replicator>>,
    audit_log: Option<(Arc<signer_ca::AuditLog>, std::thread::JoinHandle<()>)>,
    audit: Option<Arc<signer_ca::CaAudit>>,
    watchdog: Option<std::thread::JoinHandle<()>>,
}

fn run(c: &Config) -> anyhow::Result<()> {
    // The link is served while the services start (the repository's pages
    // checked, the HSM logged in, the CA certificates checked), which takes
    // seconds on a large repository: `health` says what the start waits
    // for, every other request is answered `starting` without effect.
    let starting = Arc::new(StartCheck::new(c));
    let engine = Engine::starting(
        c.engine(),
        vec![Arc::clone(&starting) as Arc<dyn HealthSource>],
    );
    let stop = engine.stop_flag();
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    // A hang-up (the terminal or SSH session that started it went away) does
    // not stop the signer: nothing in flight is dropped. Nothing is reloaded
    // either; a changed configuration takes a restart.
    let hangups = Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hangups))?;
    let start = {
        let (c, engine) = (c.clone(), Arc::clone(&engine));
        std::thread::Builder::new()
            .name("start".into())
            .spawn(move || {
                // A start that panics must not leave the link answering
                // `starting` for good.
                let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    start(&c, &engine, &starting)
                }))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the start failed unexpectedly")));
                if started.is_err() {
                    // The link stops; the error is signerd's exit status.
                    engine.stop_flag().store(true, Ordering::SeqCst);
                }
                started
            })?
    };
    link::serve(&engine, &c.link, &stop, SHUTDOWN_GRACE);
    notify::notify("STOPPING=1");
    // A start still under way (a stop asked for while the repository is
    // checked, or an HSM that does not answer its login) is waited for a
    // moment, then abandoned: nothing was served from it, and the
    // repository is left as by a crash, which it survives.
    let deadline = std::time::Instant::now() + START_ABANDON;
    while !start.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !start.is_finished() {
        engine.shutdown(SHUTDOWN_GRACE);
        anyhow::bail!(
            "stopped while starting: the start did not end within {} s",
            START_ABANDON.as_secs()
        );
    }
    // The start catches its own panics: joining it does not fail.
    let started = start
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("start thread lost")));
    // Without an open device the link had no session to drain; stop the workers here.
    engine.shutdown(SHUTDOWN_GRACE);
    let Started {
        ca,
        replicator,
        audit_log,
        audit,
        watchdog,
    } = started?;
    if let Some(thread) = watchdog {
        let _ = thread.join();
    }
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

/// Starts the services and hands them to the engine; then tells systemd
/// the signer is ready. A stop asked for meanwhile is honoured once the
/// start ends: the services are handed over and stopped as usual.
fn start(c: &Config, engine: &Arc<Engine>, starting: &StartCheck) -> anyhow::Result<Started> {
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
            starting.phase("starting replication and the audit log");
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
    engine.ready(router, health);
    info!(
        signer_id = %c.signer_id,
        version = env!("CARGO_PKG_VERSION"),
        ca = ca.is_some(),
        start_ms = starting.since.elapsed().as_millis() as u64,
        "signerd started"
    );
    // Stopped while starting: handed over to be stopped, never ready.
    let stopping = engine.stop_flag().load(Ordering::SeqCst);
    if !stopping {
        notify::notify(&format!(
            "READY=1\nSTATUS=serving {} as {}",
            c.link.device.display(),
            c.signer_id
        ));
    }
    let watchdog = notify::watchdog_interval()
        .filter(|_| !stopping)
        .and_then(|interval| {
            let (engine, stop) = (Arc::clone(engine), engine.stop_flag());
            std::thread::Builder::new()
                .name("watchdog".into())
                .spawn(move || feed_watchdog(&engine, interval, &stop))
                .ok()
        });
    Ok(Started {
        ca,
        replicator,
        audit_log,
        audit,
        watchdog,
    })
}

/// The `starting` check while the services start: failing, with what the
/// start does and for how long it has.
struct StartCheck {
    since: std::time::Instant,
    phase: std::sync::Mutex<String>,
}

impl StartCheck {
    fn new(c: &Config) -> StartCheck {
        let phase = match &c.ca {
            Some(ca) => {
                format!(
                    "checking the repository ({} MiB), logging in to the HSM, checking the CA certificates",
                    notify::file_len(&ca.repository) >> 20
                )
            }
            None => "starting".into(),
        };
        StartCheck {
            since: std::time::Instant::now(),
            phase: std::sync::Mutex::new(phase),
        }
    }

    fn phase(&self, now: &str) {
        if let Ok(mut p) = self.phase.lock() {
            *p = now.into();
        }
    }
}

impl HealthSource for StartCheck {
    fn checks(&self) -> Vec<signer_protocol::msg::Check> {
        let phase = self.phase.lock().map(|p| p.clone()).unwrap_or_default();
        vec![signer_protocol::msg::Check {
            name: "starting".into(),
            status: signer_protocol::msg::HealthStatus::Failing,
            detail: format!(
                "{phase}: {} s so far; requests are answered `starting` until then",
                self.since.elapsed().as_secs()
            ),
        }]
    }
}
