//! The `ca:` section of the daemon's configuration.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use signer_hsm::{BackendConfig, KeySpec, PinSource};
pub use signer_replication::ReplicationConfig;
use signer_service::config::{ConfigError, Section};
use signer_x509::Profile;

/// `ca.keys[]`: a key on the token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Name used by `ca.cas[].key`.
    pub name: String,
    /// `CKA_LABEL`.
    #[serde(default)]
    pub label: Option<String>,
    /// `CKA_ID`, hex.
    #[serde(default)]
    pub id: Option<String>,
}

/// `ca.cas[]`: a CA this signer issues under.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaEntry {
    /// CA name (profiles name it as their issuer).
    pub name: String,
    /// Key name from `ca.keys`.
    pub key: String,
    /// The CA certificate (PEM or DER).
    pub certificate: PathBuf,
    /// Accept revocations of serials this signer never issued (certificates
    /// of the legacy CA being migrated); recorded as legacy. Default false.
    #[serde(default)]
    pub legacy_serials: bool,
    /// Partitioned CRLs (absent: one CRL for every certificate).
    #[serde(default)]
    pub crl_shards: Option<CrlShards>,
}

/// `ca.cas[].crl_shards`: the issuer's certificates are spread over
/// `count` CRL shards, each certificate's shard chosen at issuance and kept
/// in its serial; shard *n*'s CRL is at `url` with `{shard}` replaced by
/// *n*, and every certificate's CRL distribution point names its shard's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlShards {
    /// Shards, 1–256. It may grow; it never shrinks (the certificates of a
    /// removed shard would name a CRL no longer published).
    pub count: u16,
    /// The shards' CRL URL, an `http://` URL with `{shard}` once in it,
    /// e.g. `http://crl.example.org/sub/{shard}.crl`.
    pub url: String,
}

impl CaEntry {
    /// The CRL URLs of the issuer's shards in order (None: no shards).
    pub fn shard_urls(&self) -> Option<Vec<String>> {
        self.crl_shards.as_ref().map(|s| {
            (0..s.count)
                .map(|n| signer_x509::shard_url(&s.url, n as u8))
                .collect()
        })
    }
}

/// The `ca:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// The token.
    #[serde(deserialize_with = "BackendConfig::deserialize_defaulted")]
    pub hsm: BackendConfig,
    /// Keys on the token.
    pub keys: Vec<KeyConfig>,
    /// CAs (may be empty during the key ceremony).
    #[serde(default)]
    pub cas: Vec<CaEntry>,
    /// Certificate profiles by name.
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
    /// The repository file (redb).
    pub repository: PathBuf,
    /// First octet of every serial this signer makes, 1–127; the twins differ.
    pub serial_prefix: u8,
    /// Warn in health when a CA certificate expires within this many days (default 90).
    #[serde(default = "default_warn_days")]
    pub expiry_warning_days: u32,
    /// CRL timing.
    #[serde(default)]
    pub crl: CrlConfig,
    /// How the repository is kept and checked, and how far the clock is trusted.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Replication to the twin signer (absent: a single signer).
    #[serde(default)]
    pub replication: Option<ReplicationConfig>,
    /// OpenPGP certification (absent: `certify_openpgp` is not enabled).
    #[serde(default)]
    pub openpgp: Option<OpenpgpConfig>,
    /// The audit log's signed checkpoints (absent: the audit commands are
    /// not enabled).
    #[serde(default)]
    pub audit: Option<crate::checkpoints::AuditConfig>,
}

/// `ca.openpgp`: the CA's OpenPGP key and what it certifies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenpgpConfig {
    /// Key name from `ca.keys` (RSA or ECDSA P-256/P-384).
    pub key: String,
    /// The CA's OpenPGP certificate, written by `signerd setup openpgp`.
    pub certificate: PathBuf,
    /// The CA certificate's user ID, e.g. `CAcert Signing Authority <sign@example.org>`.
    pub user_id: String,
    /// The key's creation time (RFC 3339, e.g. `2026-01-01T00:00:00Z`):
    /// part of the fingerprint, so it never changes for a key.
    pub created: String,
    /// What is accepted and how it is certified.
    #[serde(default)]
    pub policy: signer_openpgp::Policy,
}

impl OpenpgpConfig {
    /// The creation time, Unix seconds (checked by validation).
    pub fn created_secs(&self) -> Result<u32, String> {
        let t = humantime::parse_rfc3339(&self.created)
            .map_err(|e| format!("expected an RFC 3339 time such as 2026-01-01T00:00:00Z: {e}"))?;
        let secs = t
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| "before 1970".to_string())?
            .as_secs();
        u32::try_from(secs).map_err(|_| "after 2106 (OpenPGP times are 32-bit)".to_string())
    }
}

fn default_next_update_hours() -> u32 {
    168
}
fn default_refresh_hours() -> u32 {
    24
}
fn default_grace_days() -> u32 {
    30
}

/// `ca.crl`: when CRLs are made and what they hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlConfig {
    /// nextUpdate = thisUpdate + this many hours (default 168).
    #[serde(default = "default_next_update_hours")]
    pub next_update_hours: u32,
    /// A fetch makes a new CRL when the last is older than this many hours
    /// (default 24), or when revocations changed.
    #[serde(default = "default_refresh_hours")]
    pub refresh_hours: u32,
    /// Entries stay this many days after their certificate expired (default 30).
    #[serde(default = "default_grace_days")]
    pub expired_grace_days: u32,
}

impl Default for CrlConfig {
    fn default() -> Self {
        CrlConfig {
            next_update_hours: default_next_update_hours(),
            refresh_hours: default_refresh_hours(),
            expired_grace_days: default_grace_days(),
        }
    }
}

fn default_warn_days() -> u32 {
    90
}

/// `ca.storage`: the repository's cache, its background scrub and the clock check.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Page cache of the repository, MiB (default 64): a bound on memory.
    #[serde(default = "default_cache_mib")]
    pub cache_mib: u32,
    /// Every this many seconds the whole repository is read and every
    /// stored certificate verified against its issuer (default 86400; 0: never).
    #[serde(default = "default_scrub_secs")]
    pub scrub_interval_secs: u64,
    /// How far the clock may read behind the latest time already recorded
    /// before signing is refused (default 120 seconds).
    #[serde(default = "default_clock_tolerance")]
    pub clock_tolerance_secs: u32,
}

fn default_cache_mib() -> u32 {
    64
}

fn default_scrub_secs() -> u64 {
    86_400
}

fn default_clock_tolerance() -> u32 {
    120
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            cache_mib: default_cache_mib(),
            scrub_interval_secs: default_scrub_secs(),
            clock_tolerance_secs: default_clock_tolerance(),
        }
    }
}

impl CaConfig {
    /// Key specifications for the HSM backend.
    pub fn key_specs(&self) -> Vec<KeySpec> {
        self.keys
            .iter()
            .map(|k| KeySpec {
                name: k.name.clone(),
                label: k.label.clone(),
                id: k.id.as_ref().and_then(|h| hex::decode(h).ok()),
            })
            .collect()
    }
}

fn resolve(base: &Path, path: &mut PathBuf) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}

impl Section for CaConfig {
    fn validate(&mut self, file: &Path, base: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            file: file.to_path_buf(),
            key,
            message,
        };
        resolve(base, &mut self.repository);
        if let PinSource::File(p) = self.hsm.pin_mut() {
            resolve(base, p);
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                match std::fs::metadata(&*p) {
                    Err(e) => {
                        return Err(invalid(
                            "ca.hsm.pin.file".into(),
                            format!("{}: {e}", p.display()),
                        ))
                    }
                    Ok(m) if m.permissions().mode() & 0o007 != 0 => {
                        return Err(invalid(
                            "ca.hsm.pin.file".into(),
                            format!(
                                "{} is accessible to other users (mode {:o}); chmod 600 it",
                                p.display(),
                                m.permissions().mode() & 0o777
                            ),
                        ))
                    }
                    Ok(_) => {}
                }
            }
        }
        if self.crl.refresh_hours == 0 || self.crl.refresh_hours >= self.crl.next_update_hours {
            return Err(invalid(
                "ca.crl.refresh_hours".into(),
                format!(
                    "expected 1 to ca.crl.next_update_hours - 1 ({}), got {}",
                    self.crl.next_update_hours.saturating_sub(1),
                    self.crl.refresh_hours
                ),
            ));
        }
        // The TLS Baseline Requirements (4.9.7): a subscriber CRL's
        // nextUpdate at most ten days after its thisUpdate.
        if self.profiles.values().any(|p| p.rules.is_cabf_serverauth())
            && self.crl.next_update_hours > 240
        {
            return Err(invalid(
                "ca.crl.next_update_hours".into(),
                format!(
                    "at most 240 (ten days) when a profile issues under the TLS Baseline Requirements (4.9.7), got {}",
                    self.crl.next_update_hours
                ),
            ));
        }
        if let Some(r) = self.replication.as_mut() {
            r.validate(file, base)?;
            if !self.keys.iter().any(|k| k.name == r.key) {
                return Err(invalid(
                    "ca.replication.key".into(),
                    format!("{:?} is not a key in ca.keys", r.key),
                ));
            }
        }
        if let Some(a) = &self.audit {
            if !self.keys.iter().any(|k| k.name == a.key) {
                return Err(invalid(
                    "ca.audit.key".into(),
                    format!("{:?} is not a key in ca.keys", a.key),
                ));
            }
            if let Some(origin) = &a.origin {
                signer_tlog::note::Verifier::new(origin, signer_tlog::note::TYPE_ED25519, [0; 32])
                    .map_err(|e| invalid("ca.audit.origin".into(), e))?;
            }
            if let Some(v) = &a.peer_vkey {
                let twin = signer_tlog::note::Verifier::from_vkey(v)
                    .map_err(|e| invalid("ca.audit.peer_vkey".into(), e))?;
                if twin.kind != signer_tlog::note::TYPE_ED25519 {
                    return Err(invalid(
                        "ca.audit.peer_vkey".into(),
                        "not a log's key (signerd audit vkey on the twin prints it)".into(),
                    ));
                }
                if self.replication.is_none() {
                    return Err(invalid(
                        "ca.audit.peer_vkey".into(),
                        "needs ca.replication: the twin's log arrives by replication".into(),
                    ));
                }
            }
            if a.every_entries == 0 || a.every_secs == 0 {
                return Err(invalid(
                    "ca.audit".into(),
                    "every_entries and every_secs must be at least 1".into(),
                ));
            }
        }
        if !(1..=127).contains(&self.serial_prefix) {
            return Err(invalid(
                "ca.serial_prefix".into(),
                format!("expected 1 to 127, got {}", self.serial_prefix),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, k) in self.keys.iter().enumerate() {
            if !names.insert(k.name.as_str()) {
                return Err(invalid(
                    format!("ca.keys[{i}].name"),
                    format!("duplicate key name {}", k.name),
                ));
            }
            if k.label.is_none() && k.id.is_none() {
                return Err(invalid(
                    format!("ca.keys[{i}]"),
                    "expected a label, an id or both".into(),
                ));
            }
            if let Some(id) = &k.id {
                if hex::decode(id).is_err() {
                    return Err(invalid(
                        format!("ca.keys[{i}].id"),
                        format!("expected hex, got {id:?}"),
                    ));
                }
            }
        }
        let mut cas = std::collections::BTreeSet::new();
        for (i, c) in self.cas.iter_mut().enumerate() {
            if !cas.insert(c.name.clone()) {
                return Err(invalid(
                    format!("ca.cas[{i}].name"),
                    format!("duplicate CA name {}", c.name),
                ));
            }
            if !names.contains(c.key.as_str()) {
                return Err(invalid(
                    format!("ca.cas[{i}].key"),
                    format!("no key named {} in ca.keys", c.key),
                ));
            }
            if c.name.contains('#') {
                return Err(invalid(
                    format!("ca.cas[{i}].name"),
                    format!("{:?}: a CA name has no '#' (it names a CRL shard)", c.name),
                ));
            }
            if let Some(shards) = &c.crl_shards {
                if !(1..=256).contains(&shards.count) {
                    return Err(invalid(
                        format!("ca.cas[{i}].crl_shards.count"),
                        format!("expected 1 to 256, got {}", shards.count),
                    ));
                }
                let placeholder = signer_x509::issue::SHARD_PLACEHOLDER;
                if !shards.url.starts_with("http://")
                    || shards.url.matches(placeholder).count() != 1
                {
                    return Err(invalid(
                        format!("ca.cas[{i}].crl_shards.url"),
                        format!(
                            "expected an http:// URL with {placeholder} once in it, such as http://crl.example.org/{}/{placeholder}.crl, got {:?}",
                            c.name, shards.url
                        ),
                    ));
                }
            }
            resolve(base, &mut c.certificate);
        }
        // A sharded issuer's profiles name the shard's CRL: theirs unless
        // they name one themselves (the full CRL, which stays available).
        for (name, p) in self.profiles.iter_mut() {
            let shards = self
                .cas
                .iter()
                .find(|c| c.name == p.issuer)
                .and_then(|c| c.crl_shards.as_ref());
            let placeholder = signer_x509::issue::SHARD_PLACEHOLDER;
            let key = format!("ca.profiles.{name}.crl_urls");
            match shards {
                None => {
                    if p.crl_urls.iter().any(|u| u.contains(placeholder)) {
                        return Err(invalid(
                            key,
                            format!(
                                "{placeholder} names a CRL shard, and ca.cas {} has no crl_shards",
                                p.issuer
                            ),
                        ));
                    }
                }
                Some(shards) => {
                    if p.crl_urls.is_empty() {
                        p.crl_urls = vec![shards.url.clone()];
                    }
                    if p.crl_urls
                        .iter()
                        .any(|u| u.contains(placeholder) && *u != shards.url)
                    {
                        return Err(invalid(
                            key,
                            format!(
                                "a shard's CRL is at ca.cas {}'s crl_shards.url ({}); leave crl_urls out",
                                p.issuer, shards.url
                            ),
                        ));
                    }
                    if p.crl_urls.len() > 1 && p.crl_urls.contains(&shards.url) {
                        return Err(invalid(
                            key,
                            "a certificate in a CRL shard names that shard's CRL alone (its CRL's issuing distribution point names one URL)".into(),
                        ));
                    }
                    if p.ca_path_len.is_some() {
                        return Err(invalid(
                            format!("ca.profiles.{name}.ca_path_len"),
                            format!(
                                "ca.cas {} has crl_shards: a shard's CRL lists subscriber certificates only (onlyContainsUserCerts); issue CA certificates under an issuer without shards",
                                p.issuer
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(o) = &mut self.openpgp {
            if !names.contains(o.key.as_str()) {
                return Err(invalid(
                    "ca.openpgp.key".into(),
                    format!("no key named {} in ca.keys", o.key),
                ));
            }
            if let Err(e) = o.created_secs() {
                return Err(invalid("ca.openpgp.created".into(), e));
            }
            if o.user_id.trim().is_empty() {
                return Err(invalid(
                    "ca.openpgp.user_id".into(),
                    "expected a user ID such as \"Example Signing Authority <sign@example.org>\""
                        .into(),
                ));
            }
            if let Err(e) = o.policy.validate() {
                return Err(invalid("ca.openpgp.policy".into(), e));
            }
            resolve(base, &mut o.certificate);
        }
        for (name, p) in &self.profiles {
            if !cas.contains(&p.issuer) {
                return Err(invalid(
                    format!("ca.profiles.{name}.issuer"),
                    format!("no CA named {} in ca.cas", p.issuer),
                ));
            }
            if p.default_days == 0 || p.default_days > p.max_days {
                return Err(invalid(
                    format!("ca.profiles.{name}.default_days"),
                    format!(
                        "expected 1 to max_days ({}), got {}",
                        p.max_days, p.default_days
                    ),
                ));
            }
            for (i, a) in p
                .subject_attributes
                .iter()
                .chain(&p.required_subject_attributes)
                .enumerate()
            {
                if signer_x509::name::lookup(a).is_none() {
                    return Err(invalid(
                        format!("ca.profiles.{name}.subject_attributes[{i}]"),
                        format!("unknown attribute {a}"),
                    ));
                }
            }
            for (i, oid) in p.policies.iter().enumerate() {
                if oid.parse::<signer_x509::issue::Oid>().is_err() {
                    return Err(invalid(
                        format!("ca.profiles.{name}.policies[{i}]"),
                        format!("not an OID: {oid}"),
                    ));
                }
            }
            if let Err((field, why)) = p.check_rules() {
                return Err(invalid(
                    format!("ca.profiles.{name}.{field}"),
                    format!("rules {}: {why}", p.rules.name()),
                ));
            }
        }
        Ok(())
    }
}
