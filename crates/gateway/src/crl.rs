//! CRLs on a schedule: per issuer, fetched after a revocation went through,
//! when the published one nears its nextUpdate, and at least every
//! `check_s`; transferred as a difference where the signer can; checked
//! (digest, issuer signature, a CRL number that never goes back) and only
//! then published, atomically, under the name the CRL distribution point
//! uses. A CRL that fails a check is not published: the last good one stays
//! and the failure shows in the metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use signer_client::{verify, Calls, ClientError, Failover};
use signer_protocol::{calls, msg};
use tracing::{info, warn};

use crate::config::CrlConfig;
use crate::metrics::Metrics;

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

/// A CRL that is published: its bytes and what they say.
struct Published {
    der: Vec<u8>,
    header: signer_x509::crl::Header,
    entries: u64,
}

impl Published {
    /// A CRL, if it parses and verifies with `issuer_cert`.
    fn read(der: Vec<u8>, issuer_cert: &[u8]) -> Result<Published, String> {
        signer_x509::crl::verify(&der, issuer_cert)?;
        let (header, entries) = signer_x509::crl::parse(&der)?;
        Ok(Published {
            der,
            header,
            entries: entries.len() as u64,
        })
    }
}

/// One CRL to publish: an issuer's full CRL, or one of its shards'.
struct Target {
    /// Its name in the publisher's memory and the metrics: the issuer, or
    /// `issuer#shard`.
    key: String,
    /// A shard's number and CRL URL.
    shard: Option<(u8, String)>,
}

impl Target {
    /// The issuer's full CRL, then its shards' (if it has any).
    fn all(ca: &msg::CaCert) -> Vec<Target> {
        let mut all = vec![Target {
            key: ca.name.clone(),
            shard: None,
        }];
        for (n, url) in ca.crl_shards.iter().flatten().enumerate().take(256) {
            all.push(Target {
                key: format!("{}#{n}", ca.name),
                shard: Some((n as u8, url.clone())),
            });
        }
        all
    }
}

/// Where a shard's CRL is published: the URL's path under the published
/// directory (`http://crl.example.org/sub/3.crl` → `DIR/sub/3.crl`), the
/// web server serving that directory at the URL's host. A path that would
/// leave the directory is refused.
fn shard_file(directory: &Path, url: &str) -> Result<(PathBuf, String), String> {
    let path = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split_once('/'))
        .map(|(_, path)| path)
        .ok_or_else(|| format!("{url}: not an http:// URL with a path"))?;
    let parts: Vec<&str> = path.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('\\'))
    {
        return Err(format!(
            "{url}: its path does not name a file under the CRL directory"
        ));
    }
    let (name, dirs) = parts
        .split_last()
        .ok_or_else(|| format!("{url}: no file name"))?;
    let dir = dirs.iter().fold(directory.to_path_buf(), |d, p| d.join(p));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok((dir, name.to_string()))
}

/// The publisher's per-CRL memory.
#[derive(Default)]
struct Held {
    published: Option<Published>,
    last_check: Option<Instant>,
    /// The directory and file name it is published under.
    dir: PathBuf,
    name: String,
}

/// CRLs that changed since they were last fetched: an issuer's full CRL
/// by its name, a shard's as `issuer#shard`.
pub type Revoked = Arc<Mutex<BTreeSet<String>>>;

/// Marks the CRLs a revocation of `serial` by `issuer` changed: the full
/// CRL, and the shard's its serial carries (if the issuer has shards; the
/// other shards' CRLs are unchanged and wait for their schedule).
pub fn mark_revoked(revoked: &Revoked, issuer: &str, serial: &[u8]) {
    let mut marked = lock(revoked);
    marked.insert(issuer.to_string());
    if let Some(shard) = signer_x509::shard_of(serial) {
        marked.insert(format!("{issuer}#{shard}"));
    }
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
    pub revoked: Revoked,
    held: Mutex<BTreeMap<String, Held>>,
    /// The CAs to publish for, and when they were asked for.
    cas: Mutex<Option<(Instant, Vec<msg::CaCert>)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Publisher {
    /// A publisher; reads what is already published so that the first
    /// fetch can be a difference and a CRL number never goes back.
    pub fn new(
        config: CrlConfig,
        signers: Arc<Failover>,
        metrics: Arc<Metrics>,
        revoked: Revoked,
    ) -> Publisher {
        Publisher {
            config,
            signers,
            metrics,
            revoked,
            held: Mutex::new(BTreeMap::new()),
            cas: Mutex::new(None),
        }
    }

    /// The issuers to publish and their certificates: asked for once every
    /// `check_s` (not on every pass: the link is for requests).
    fn issuers(&self) -> Result<Vec<msg::CaCert>, ClientError> {
        let mut cached = lock(&self.cas);
        let fresh = cached
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < Duration::from_secs(self.config.check_s));
        if !fresh {
            let cas = self.signers.request::<calls::CaCerts>(&msg::Empty {})?.cas;
            let cas = match &self.config.issuers {
                Some(names) => cas
                    .into_iter()
                    .filter(|c| names.contains(&c.name))
                    .collect(),
                None => cas,
            };
            *cached = Some((Instant::now(), cas));
        }
        Ok(cached
            .as_ref()
            .map(|(_, cas)| cas.clone())
            .unwrap_or_default())
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
            for target in Target::all(&ca) {
                // Taken now: a revocation recorded during the fetch marks it again.
                let revoked = lock(&self.revoked).remove(&target.key);
                match self.refresh_if_due(&ca, &target, revoked, now) {
                    Ok(true) => published += 1,
                    Ok(false) => {}
                    Err(e) => {
                        if revoked {
                            lock(&self.revoked).insert(target.key.clone());
                        }
                        warn!(issuer = %ca.name, crl = %target.key, cause = %e, "CRL not refreshed; the last good one stays published");
                        lock(&self.metrics.crls)
                            .entry(target.key.clone())
                            .or_default()
                            .error = Some(e);
                    }
                }
            }
        }
        published
    }

    fn refresh_if_due(
        &self,
        ca: &msg::CaCert,
        target: &Target,
        revoked: bool,
        now: i64,
    ) -> Result<bool, String> {
        let issuer = ca.name.as_str();
        let mut held = lock(&self.held);
        let h = match held.entry(target.key.clone()) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                // Where it goes, once (a shard's URL never changes).
                let (dir, name) = match &target.shard {
                    None => (self.config.directory.clone(), self.config.file_name(issuer)),
                    Some((_, url)) => shard_file(&self.config.directory, url)?,
                };
                e.insert(Held {
                    // What is published now, if it is this CRL's and intact.
                    published: std::fs::read(dir.join(&name))
                        .ok()
                        .and_then(|der| Published::read(der, &ca.certificate).ok()),
                    last_check: None,
                    dir,
                    name,
                })
            }
        };
        let due_by_time = h
            .published
            .as_ref()
            .is_none_or(|p| now + self.config.refresh_margin_s as i64 >= p.header.next_update)
            || h.last_check
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(self.config.check_s));
        if !due_by_time && !revoked {
            return Ok(false);
        }
        let have = h.published.as_ref().map(|p| p.der.as_slice());
        let shard = target.shard.as_ref().map(|(n, _)| *n);
        let fetched =
            verify::fetch_crl_checked(&*self.signers, issuer, shard, have, Some(&ca.certificate))
                .map_err(|e| e.to_string())?;
        h.last_check = Some(Instant::now());
        let newly = match fetched.der {
            Some(der) => {
                let new = Published::read(der, &ca.certificate)?;
                if let Some((n, url)) = &target.shard {
                    if new.header.shard_url.as_deref() != Some(url.as_str()) {
                        return Err(format!(
                            "the CRL of shard {n} names {:?} in its issuing distribution point, not {url}",
                            new.header.shard_url
                        ));
                    }
                }
                self.publish(&h.dir, &h.name, h.published.as_ref(), &new, now)?;
                info!(
                    issuer,
                    crl = %target.key,
                    entries = new.entries,
                    this_update = new.header.this_update,
                    next_update = new.header.next_update,
                    via = fetched.via,
                    "CRL published"
                );
                h.published = Some(new);
                true
            }
            None => false,
        };
        let mut crls = lock(&self.metrics.crls);
        let state = crls.entry(target.key.clone()).or_default();
        if let Some(p) = &h.published {
            state.this_update = p.header.this_update;
            state.next_update = p.header.next_update;
            state.entries = p.entries;
        }
        state.error = None;
        if newly {
            state.published += 1;
        }
        Ok(newly)
    }

    /// Checks a new CRL against the published one and writes it out.
    fn publish(
        &self,
        dir: &Path,
        name: &str,
        old: Option<&Published>,
        new: &Published,
        now: i64,
    ) -> Result<(), String> {
        if new.header.next_update <= now {
            return Err(format!(
                "the new CRL's nextUpdate ({}) has passed",
                new.header.next_update
            ));
        }
        if let Some(old) = old {
            if number(&new.header.number) < number(&old.header.number) {
                return Err(format!(
                    "the signer's CRL number {} is below the published {}",
                    hex::encode(&new.header.number),
                    hex::encode(&old.header.number)
                ));
            }
        }
        publish_file(dir, name, &new.der)
            .map_err(|e| format!("cannot write {}: {e}", dir.join(name).display()))?;
        if self.config.pem {
            let pem_name = format!("{}.pem", name.trim_end_matches(".crl"));
            publish_file(dir, &pem_name, pem_crl(&new.der).as_bytes())
                .map_err(|e| format!("cannot write {pem_name}: {e}"))?;
        }
        Ok(())
    }

    /// Refreshes on schedule until `stop`.
    pub fn run(&self, stop: &AtomicBool) {
        crate::every(Duration::from_secs(1), stop, || {
            self.tick(crate::now_s());
        });
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
    fn a_shards_crl_is_published_under_its_urls_path_and_never_outside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (d, name) = shard_file(dir.path(), "http://crl.example.org/sub/3.crl").unwrap();
        assert_eq!((d, name.as_str()), (dir.path().join("sub"), "3.crl"));
        assert!(dir.path().join("sub").is_dir());
        for bad in [
            "http://crl.example.org/../3.crl",
            "http://crl.example.org/sub//3.crl",
            "http://crl.example.org/sub/",
            "http://crl.example.org",
            "https://crl.example.org/3.crl",
            "http://crl.example.org/./3.crl",
        ] {
            assert!(shard_file(dir.path(), bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_revocation_marks_the_full_crl_and_its_shards_alone() {
        let revoked = Revoked::default();
        mark_revoked(&revoked, "sub", &signer_x509::serial_in_shard(0x21, 3));
        mark_revoked(&revoked, "root", &signer_x509::random_serial(0x21));
        let marked: Vec<String> = lock(&revoked).iter().cloned().collect();
        assert_eq!(marked, ["root", "sub", "sub#3"]);
    }

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
