//! Periodic health checks of every signer, the standby twin included.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use signer_client::Failover;
use signer_protocol::msg::HealthStatus;
use tracing::warn;

use crate::metrics::{Metrics, SignerState};

/// Checks each signer once and records the result.
pub fn check_all(signers: &Failover, metrics: &Metrics) {
    for (index, link) in signers.links().iter().enumerate() {
        let before = crate::now_ms();
        let result = signers.health_of(index);
        let after = crate::now_ms();
        let mut states = metrics.signers.lock().unwrap_or_else(|p| p.into_inner());
        let state = states.entry(index).or_insert_with(|| SignerState {
            device: link.device.display().to_string(),
            ..SignerState::default()
        });
        state.checks += 1;
        match result {
            Ok(report) => {
                state.clock_skew_s = (report.time_ms - (before + after) / 2) as f64 / 1000.0;
                if report.status != HealthStatus::Ok {
                    warn!(device = %state.device, signer = %report.signer_id, status = ?report.status, "signer is not healthy");
                }
                state.report = Some(report);
                state.error = None;
            }
            Err(e) => {
                warn!(device = %state.device, cause = %e, "signer did not answer its health check");
                state.report = None;
                state.error = Some(e.to_string());
            }
        }
    }
}

/// Checks every `interval` until `stop`.
pub fn run(
    signers: Arc<Failover>,
    metrics: Arc<Metrics>,
    interval: Duration,
    stop: Arc<AtomicBool>,
) {
    crate::every(interval, &stop, || check_all(&signers, &metrics));
}
