//! CRLs on a schedule: per issuer, fetched after a revocation went through,
//! when the published one nears its nextUpdate, and at least every
//! `check_s`; transferred as a difference where the signer can; checked
//! (digest, issuer signature, a CRL number that never goes back) and only
//! then published, atomically, under the name the CRL distribution point
//! uses. A CRL that fails a check is not published: the last good one stays
//! and the failure shows in the metrics.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use der::Decode;
use signer_client::{verify, Calls, ClientError, Failover};
use signer_protocol::{calls, msg};
use tracing::{info, warn};

use crate::config::CrlConfig;
use crate::metrics::Metrics;

/// thisUpdate, nextUpdate (Unix seconds) and entry count of a DER CRL.
pub fn crl_times(der: &[u8]) -> Option<(i64, i64, u64)> {
    let crl = <x509_cert::crl::CertificateList>::from_der(der).ok()?;
    let tbs = &crl.tbs_cert_list;
    let this = tbs.this_update.to_unix_duration().as_secs() as i64;
    let next = tbs.next_update?.to_unix_duration().as_secs() as i64;
    let entries = tbs
        .revoked_certificates
        .as_ref()
        .map_or(0, |r| r.len() as u64);
    Some((this, next, entries))
}

/// A CRL number as an unsigned integer (up to 20 octets) for comparison.
fn number(bytes: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    let mut padded = vec![0u8; 32usize.saturating_sub(trimmed.len())];
    padded.extend(trimmed);
    padded
}

/// Writes `bytes` to `dir/name` so that readers see the old file or the
/// new one, never part of one, and the new one survives a power cut.
pub fn publish_file(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// The publisher's per-issuer memory.
struct Held {
    der: Option<Vec<u8>>,
    last_check: Option<Instant>,
}

/// The CRL publisher.
pub struct Publisher {
    /// Settings.
    pub config: CrlConfig,
    /// The signers.
    pub signers: Arc<Failover>,
    /// Where states are shown.
    pub metrics: Arc<Metrics>,
    /// Issuers that revoked since their CRL was fetched (from the dispatcher).
    pub revoked: Arc<Mutex<BTreeMap<String, ()>>>,
    held: Mutex<BTreeMap<String, Held>>,
}

impl Publisher {
    /// A publisher; reads what is already published so that the first
    /// fetch can be a difference and a CRL number never goes back.
    pub fn new(
        config: CrlConfig,
        signers: Arc<Failover>,
        metrics: Arc<Metrics>,
        revoked: Arc<Mutex<BTreeMap<String, ()>>>,
    ) -> Publisher {
        Publisher {
            config,
            signers,
            metrics,
            revoked,
            held: Mutex::new(BTreeMap::new()),
        }
    }

    fn path(&self, issuer: &str) -> PathBuf {
        self.config.directory.join(self.config.file_name(issuer))
    }

    /// The issuers to publish and their certificates.
    fn issuers(&self) -> Result<Vec<msg::CaCert>, ClientError> {
        let cas = self.signers.request::<calls::CaCerts>(&msg::Empty {})?.cas;
        Ok(match &self.config.issuers {
            Some(names) => cas
                .into_iter()
                .filter(|c| names.contains(&c.name))
                .collect(),
            None => cas,
        })
    }

    /// One pass: refreshes every issuer that is due. Returns how many CRLs
    /// were published.
    pub fn tick(&self, now: i64) -> usize {
        let cas = match self.issuers() {
            Ok(cas) => cas,
            Err(e) => {
                warn!(cause = %e, "cannot list the CAs for CRL publishing");
                return 0;
            }
        };
        let mut published = 0;
        for ca in cas {
            match self.refresh_if_due(&ca, now) {
                Ok(true) => published += 1,
                Ok(false) => {}
                Err(e) => {
                    warn!(issuer = %ca.name, cause = %e, "CRL not refreshed; the last good one stays published");
                    let mut crls = self.metrics.crls.lock().unwrap_or_else(|p| p.into_inner());
                    crls.entry(ca.name.clone()).or_default().error = Some(e);
                }
            }
        }
        published
    }

    fn refresh_if_due(&self, ca: &msg::CaCert, now: i64) -> Result<bool, String> {
        let issuer = ca.name.as_str();
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let h = held.entry(issuer.to_string()).or_insert_with(|| {
            // What is published now, if it is this issuer's and intact.
            let der = std::fs::read(self.path(issuer))
                .ok()
                .filter(|d| signer_x509::crl::verify(d, &ca.certificate).is_ok());
            Held {
                der,
                last_check: None,
            }
        });
        let times = h.der.as_deref().and_then(crl_times);
        let revoked = self
            .revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(issuer);
        let due = h.der.is_none()
            || revoked
            || times.is_none_or(|(_, next, _)| now + self.config.refresh_margin_s as i64 >= next)
            || h.last_check
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(self.config.check_s));
        if !due {
            return Ok(false);
        }
        // Taken before the fetch: a revocation recorded meanwhile marks it again.
        self.revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(issuer);
        let fetched = verify::fetch_crl_checked(
            &*self.signers,
            issuer,
            h.der.as_deref(),
            Some(&ca.certificate),
        );
        let fetched = match fetched {
            Ok(f) => f,
            Err(e) => {
                if revoked {
                    self.revoked
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(issuer.to_string(), ());
                }
                return Err(e.to_string());
            }
        };
        h.last_check = Some(Instant::now());
        let mut newly = false;
        if let Some(der) = fetched.der {
            let (this, next, entries) =
                crl_times(&der).ok_or("the new CRL has no nextUpdate or does not parse")?;
            if next <= now {
                return Err(format!("the new CRL's nextUpdate ({next}) has passed"));
            }
            if let Some(old) = h.der.as_deref() {
                let old_number = verify::crl_number(old).unwrap_or_default();
                let new_number = verify::crl_number(&der).unwrap_or_default();
                if number(&new_number) < number(&old_number) {
                    return Err(format!(
                        "the signer's CRL number {} is below the published {}",
                        hex::encode(new_number),
                        hex::encode(old_number)
                    ));
                }
            }
            let name = self.config.file_name(issuer);
            publish_file(&self.config.directory, &name, &der).map_err(|e| {
                format!(
                    "cannot write {}: {e}",
                    self.config.directory.join(&name).display()
                )
            })?;
            if self.config.pem {
                let pem = pem_crl(&der);
                let pem_name = format!("{}.pem", name.trim_end_matches(".crl"));
                publish_file(&self.config.directory, &pem_name, pem.as_bytes())
                    .map_err(|e| format!("cannot write {pem_name}: {e}"))?;
            }
            info!(
                issuer,
                entries,
                this_update = this,
                next_update = next,
                via = fetched.via,
                "CRL published"
            );
            h.der = Some(der);
            newly = true;
        }
        let mut crls = self.metrics.crls.lock().unwrap_or_else(|p| p.into_inner());
        let state = crls.entry(issuer.to_string()).or_default();
        if let Some((this, next, entries)) = h.der.as_deref().and_then(crl_times) {
            state.this_update = this;
            state.next_update = next;
            state.entries = entries;
        }
        state.error = None;
        if newly {
            state.published += 1;
        }
        Ok(newly)
    }

    /// Refreshes on schedule until `stop`.
    pub fn run(&self, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            self.tick(crate::now_s());
            let started = Instant::now();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(1) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A DER CRL as PEM.
pub fn pem_crl(der: &[u8]) -> String {
    der::pem::encode_string("X509 CRL", der::pem::LineEnding::LF, der).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crl_numbers_compare_as_integers() {
        assert!(number(&[1, 0]) > number(&[0xff]));
        assert!(number(&[0, 5]) == number(&[5]));
        assert!(number(&[]) < number(&[1]));
    }

    #[test]
    fn a_published_file_replaces_the_old_one_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        publish_file(dir.path(), "sub.crl", b"old").expect("write");
        publish_file(dir.path(), "sub.crl", b"new").expect("write");
        assert_eq!(
            std::fs::read(dir.path().join("sub.crl")).expect("read"),
            b"new"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("sub.crl")]);
    }
}
