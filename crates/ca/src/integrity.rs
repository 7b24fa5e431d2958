//! What the CA service trusts before it signs or serves: the repository it
//! opened, the records it reads back, and its own clock.
//!
//! ```text
//! startup ─► expected identity (signer id, twin, CA key fingerprints) ─► Repository::open (refuses others)
//! replay  ─► stored certificate verified against its issuer ─► served, or repository_corrupt
//! sign / revoke / CRL / certify ─► clock ≥ high-water mark − tolerance, within the CA's validity
//!                                  ─► else clock_untrusted (and health failing)
//! scrub   ─► every record read and checked, every certificate verified ─► health
//! ```

use std::sync::Mutex;

use signer_protocol::{msg, Status};
use signer_repository::{Expected, OpenOptions, RepoError, Repository};
use signer_service::Failure;
use signer_x509::CaSigner;

use crate::{CaConfig, CaError};

/// What the configuration expects of its repository: this signer, its twin,
/// and the key of every CA whose certificate file exists.
pub fn expected_identity(config: &CaConfig, signer_id: &str) -> Result<Expected, CaError> {
    let mut expected = Expected::signer(signer_id);
    expected.peer_id = config.replication.as_ref().map(|r| r.peer_id.clone());
    for ca in &config.cas {
        let bytes = match std::fs::read(&ca.certificate) {
            Ok(b) => b,
            // Not made yet (key ceremony): nothing to bind.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(CaError::Ca(format!(
                    "{}: {}: {e}",
                    ca.name,
                    ca.certificate.display()
                )))
            }
        };
        let fingerprint = signer_x509::cert_der(&bytes)
            .and_then(|der| signer_x509::spki_sha256(&der))
            .map_err(|e| CaError::Ca(format!("{}: {}: {e}", ca.name, ca.certificate.display())))?;
        expected.cas.insert(ca.name.clone(), fingerprint);
    }
    Ok(expected)
}

/// Repository options from `ca.storage`.
pub fn repository_options(config: &CaConfig) -> OpenOptions {
    OpenOptions {
        cache_bytes: config.storage.cache_mib as usize * 1024 * 1024,
    }
}

/// Opens the configured repository for this signer (never creates one).
pub fn open_repository(config: &CaConfig, signer_id: &str) -> Result<Repository, CaError> {
    let expected = expected_identity(config, signer_id)?;
    Ok(Repository::open(
        &config.repository,
        &expected,
        &repository_options(config),
    )?)
}

/// Why the clock cannot be trusted now, if it cannot.
pub(crate) fn clock_problem(
    now_ms: i64,
    high_water_ms: Option<i64>,
    tolerance_secs: u32,
    ca: Option<&CaSigner>,
) -> Option<String> {
    let now = now_ms.div_euclid(1000);
    if let Some(mark) = high_water_ms {
        if now_ms < mark - i64::from(tolerance_secs) * 1000 {
            return Some(format!(
                "the clock reads {}, before {} which this signer has already recorded (tolerance {tolerance_secs} s): it was set back",
                signer_x509::time::rfc3339(now),
                signer_x509::time::rfc3339(mark.div_euclid(1000)),
            ));
        }
    }
    if let Some(ca) = ca {
        if now < ca.not_before || now > ca.not_after {
            return Some(format!(
                "the clock reads {}, outside CA {}'s validity ({} to {})",
                signer_x509::time::rfc3339(now),
                ca.name,
                signer_x509::time::rfc3339(ca.not_before),
                signer_x509::time::rfc3339(ca.not_after),
            ));
        }
    }
    None
}

impl crate::CaService {
    /// Refuses with `clock_untrusted` when the clock cannot be trusted to
    /// date something signed by `ca` (or by any CA, when `ca` is `None`).
    pub(crate) fn check_clock(&self, ca: Option<&CaSigner>) -> Result<(), Failure> {
        match clock_problem(
            self.clock.now_ms(),
            self.repo.time_high_water(),
            self.config.storage.clock_tolerance_secs,
            ca,
        ) {
            None => Ok(()),
            Some(why) => {
                tracing::error!(cause = %why, "refusing to sign: the clock cannot be trusted");
                Err(Failure::new(
                    Status::CLOCK_UNTRUSTED,
                    format!("{why}; nothing was signed. Set the clock right, or ask the twin"),
                ))
            }
        }
    }

    /// The `clock` health check.
    pub(crate) fn clock_check(&self) -> msg::Check {
        let issuer = self
            .issuer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let now_ms = self.clock.now_ms();
        let mark = self.repo.time_high_water();
        let tolerance = self.config.storage.clock_tolerance_secs;
        let problem = match &issuer {
            Some(i) => i
                .cas
                .values()
                .find_map(|ca| clock_problem(now_ms, mark, tolerance, Some(ca))),
            None => clock_problem(now_ms, mark, tolerance, None),
        };
        match problem {
            Some(why) => msg::Check {
                name: "clock".into(),
                status: msg::HealthStatus::Failing,
                detail: format!("{why}; signing refused"),
            },
            None => msg::Check {
                name: "clock".into(),
                status: msg::HealthStatus::Ok,
                detail: match mark {
                    Some(m) => format!(
                        "{}; latest recorded time {}",
                        signer_x509::time::rfc3339(now_ms.div_euclid(1000)),
                        signer_x509::time::rfc3339(m.div_euclid(1000))
                    ),
                    None => format!(
                        "{}; nothing recorded yet",
                        signer_x509::time::rfc3339(now_ms.div_euclid(1000))
                    ),
                },
            },
        }
    }
}

/// What the last scrub found.
#[derive(Debug, Clone, Default)]
pub(crate) struct ScrubState {
    /// (finished at Unix seconds, records read, certificates verified, milliseconds taken, problems).
    pub last: Option<(i64, u64, u64, u64, Vec<String>)>,
    /// A damaged record served nowhere but found on the request path.
    pub found_on_request: Vec<String>,
}

impl crate::CaService {
    /// Reads the whole repository and verifies every stored certificate
    /// against its issuer's certificate; the result is kept for health.
    pub fn scrub(&self) -> Result<Vec<String>, RepoError> {
        let started = std::time::Instant::now();
        let report = self.repo.check()?;
        let mut problems = report.problems;
        let issuer = self
            .issuer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut verified = 0u64;
        if let Some(issuer) = issuer {
            let cas = issuer
                .cas
                .iter()
                .map(|(name, ca)| (name.clone(), ca.cert_der.clone()))
                .collect();
            let (n, more) = verify_certificates(&self.repo, &cas)?;
            verified = n;
            problems.extend(
                more.into_iter()
                    .take(100usize.saturating_sub(problems.len())),
            );
        }
        let took = started.elapsed().as_millis() as u64;
        let mut state = self.scrub_state.lock().unwrap_or_else(|p| p.into_inner());
        state.last = Some((
            self.clock.now_secs(),
            report.records,
            verified,
            took,
            problems.clone(),
        ));
        if problems.is_empty() {
            tracing::info!(
                records = report.records,
                certificates = verified,
                elapsed_ms = took,
                "repository scrub: no damage"
            );
        } else {
            tracing::error!(first = %problems[0], problems = problems.len(), "repository scrub found damage");
        }
        Ok(problems)
    }

    /// The `scrub` health check.
    pub(crate) fn scrub_check(&self) -> msg::Check {
        let state = self.scrub_state.lock().unwrap_or_else(|p| p.into_inner());
        let (status, detail) = match (&state.last, state.found_on_request.first()) {
            (_, Some(found)) => (
                msg::HealthStatus::Failing,
                format!("damaged record refused on a request: {found} (run signerd repo check)"),
            ),
            (None, None) => (msg::HealthStatus::Ok, "not run yet".to_string()),
            (Some((at, records, certs, ms, problems)), None) if problems.is_empty() => (
                msg::HealthStatus::Ok,
                format!(
                    "{records} records and {certs} certificates checked at {} in {ms} ms: no damage",
                    signer_x509::time::rfc3339(*at)
                ),
            ),
            (Some((at, _, _, _, problems)), None) => (
                msg::HealthStatus::Failing,
                format!(
                    "{} problems at {}; first: {}",
                    problems.len(),
                    signer_x509::time::rfc3339(*at),
                    problems[0]
                ),
            ),
        };
        msg::Check {
            name: "repository:scrub".into(),
            status,
            detail,
        }
    }

    /// Notes damage found while answering a request (health shows it).
    pub(crate) fn note_damage(&self, what: String) {
        tracing::error!(cause = %what, "damaged record refused");
        let mut state = self.scrub_state.lock().unwrap_or_else(|p| p.into_inner());
        if state.found_on_request.len() < 16 {
            state.found_on_request.push(what);
        }
    }
}

/// Verifies every stored certificate against its issuer's certificate
/// (`cas`: CA name → certificate DER); returns how many were verified and
/// what failed (at most 100). Certificates of CAs not in `cas` are counted
/// as a problem: the repository holds records of a CA nobody can check.
pub fn verify_certificates(
    repo: &Repository,
    cas: &std::collections::BTreeMap<String, Vec<u8>>,
) -> Result<(u64, Vec<String>), RepoError> {
    let mut verified = 0u64;
    let mut problems = Vec::new();
    repo.for_each_certificate(|r| {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                if problems.len() < 100 {
                    problems.push(e.to_string());
                }
                return;
            }
        };
        let outcome = match cas.get(&r.issuer) {
            Some(ca) => {
                verified += 1;
                check_stored(&r, ca)
            }
            None => Err(format!(
                "certificate {}/{}: its issuer is not configured",
                r.issuer,
                hex::encode(&r.serial)
            )),
        };
        if let Err(e) = outcome {
            if problems.len() < 100 {
                problems.push(e);
            }
        }
    })?;
    Ok((verified, problems))
}

/// Checks a stored certificate record: its DER verifies against the CA and
/// carries the record's serial.
pub(crate) fn check_stored(
    r: &signer_repository::CertRecord,
    ca_cert_der: &[u8],
) -> Result<(), String> {
    let whose = format!("certificate {}/{}", r.issuer, hex::encode(&r.serial));
    signer_x509::verify_issued(&r.der, ca_cert_der).map_err(|e| format!("{whose}: {e}"))?;
    use der::Decode;
    let cert = x509_cert::Certificate::from_der(&r.der).map_err(|e| format!("{whose}: {e}"))?;
    let serial = cert.tbs_certificate().serial_number().as_bytes();
    let strip = |s: &[u8]| -> Vec<u8> {
        let start = s.iter().position(|&b| b != 0).unwrap_or(s.len());
        s[start..].to_vec()
    };
    if strip(serial) != strip(&r.serial) {
        return Err(format!(
            "{whose}: its DER carries serial {}",
            hex::encode(serial)
        ));
    }
    Ok(())
}

/// Guards a scrub thread: stops with the service.
pub(crate) struct Stop(pub Mutex<bool>, pub std::sync::Condvar);

impl crate::CaService {
    /// The failure for a repository error met while answering; damage is
    /// also noted for health.
    pub(crate) fn damaged(&self, e: RepoError, undone: &str) -> Failure {
        if matches!(e, RepoError::Corrupt(_)) {
            self.note_damage(e.to_string());
        }
        crate::repo_failure(&e, undone)
    }

    /// A stored certificate is served again only if it still verifies
    /// against its issuer and carries its serial.
    pub(crate) fn check_replay(
        &self,
        record: &signer_repository::CertRecord,
    ) -> Result<(), Failure> {
        let issuer = self.issuer()?;
        let Some(ca) = issuer.cas.get(&record.issuer) else {
            return Err(Failure::new(
                Status::ISSUER_UNAVAILABLE,
                format!(
                    "the certificate for this request id was issued by {}, which this signer no longer has",
                    record.issuer
                ),
            ));
        };
        check_stored(record, &ca.cert_der).map_err(|e| {
            self.note_damage(e.clone());
            Failure::new(
                Status::REPOSITORY_CORRUPT,
                format!("{e}: the stored certificate is damaged and is not served; the operator must run `signerd repo check`"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signer_clock::{Clock, ManualClock};

    fn ca(not_before: i64, not_after: i64) -> CaSigner {
        CaSigner {
            name: "sub".into(),
            key: "sub".into(),
            kind: signer_hsm::KeyKind::EcP256,
            cert_der: Vec::new(),
            subject_der: Vec::new(),
            key_id: Vec::new(),
            not_before,
            not_after,
            spki_der: Vec::new(),
        }
    }

    #[test]
    fn the_clock_is_trusted_only_above_the_mark_and_within_the_ca() {
        let clock = ManualClock::at_ms(1_800_000_000_000);
        let sub = ca(1_700_000_000, 1_900_000_000);
        let mark = Some(clock.now_ms());
        assert_eq!(clock_problem(clock.now_ms(), mark, 120, Some(&sub)), None);
        // Behind the mark within the tolerance: fine (twins, small drift).
        clock.advance_ms(-119_000);
        assert_eq!(clock_problem(clock.now_ms(), mark, 120, Some(&sub)), None);
        // Beyond it: refused, naming both times.
        clock.advance_ms(-2_000);
        let why = clock_problem(clock.now_ms(), mark, 120, Some(&sub)).unwrap();
        assert!(why.contains("already recorded"), "{why}");
        // A year back with nothing recorded yet: before the CA's notBefore.
        let why = clock_problem(1_600_000_000_000, None, 120, Some(&sub)).unwrap();
        assert!(why.contains("outside CA sub"), "{why}");
        // Thirty years ahead: after the CA's notAfter.
        let why = clock_problem(2_800_000_000_000, mark, 120, Some(&sub)).unwrap();
        assert!(why.contains("outside CA sub"), "{why}");
        assert_eq!(clock_problem(2_800_000_000_000, mark, 120, None), None);
    }
}
