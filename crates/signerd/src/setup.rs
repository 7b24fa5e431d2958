//! Operator commands: the key ceremony (`signerd setup …`) and repository
//! maintenance (`signerd repo …`). Each prints what it did; none logs a PIN.

/// Prints a line; a closed standard output (`signerd setup … | head -1`)
/// must not abort a set-up step after the HSM acted and before the audit
/// log recorded it.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Subcommand, ValueEnum};
use signer_hsm::{KeyKind, Pkcs11Backend, SigningBackend};
use signer_repository::{AuditEntry, Repository};
use signer_x509::setup::{ca_csr, intermediate, self_signed_root, CaSpec};
use signer_x509::{cert_pem, CaSigner};

use crate::Config;

/// Key types `setup generate-key` can make.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KeyType {
    /// RSA, 2048-bit modulus.
    Rsa2048,
    /// RSA, 3072-bit modulus.
    Rsa3072,
    /// RSA, 4096-bit modulus.
    Rsa4096,
    /// ECDSA on P-256.
    P256,
    /// ECDSA on P-384.
    P384,
}

impl KeyType {
    fn kind(self) -> KeyKind {
        match self {
            KeyType::Rsa2048 => KeyKind::Rsa { bits: 2048 },
            KeyType::Rsa3072 => KeyKind::Rsa { bits: 3072 },
            KeyType::Rsa4096 => KeyKind::Rsa { bits: 4096 },
            KeyType::P256 => KeyKind::EcP256,
            KeyType::P384 => KeyKind::EcP384,
        }
    }
}

/// The configuration file of a setup or repository command.
#[derive(clap::Args)]
pub struct ConfigArg {
    /// Configuration file (its `ca:` section names the token, keys, CAs and repository).
    #[arg(long, short)]
    config: PathBuf,
}

/// `signerd setup …`
#[derive(Subcommand)]
pub enum SetupCmd {
    /// Generate a key pair in the HSM (sensitive, not extractable, random CKA_ID).
    GenerateKey {
        #[command(flatten)]
        config: ConfigArg,
        /// CKA_LABEL of the new key.
        #[arg(long)]
        label: String,
        /// Key type.
        #[arg(long = "type", value_enum)]
        key_type: KeyType,
        /// Log in and check the label is free; generate nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Self-sign a root CA certificate with a configured key.
    SelfSign {
        #[command(flatten)]
        config: ConfigArg,
        /// Key name from `ca.keys`.
        #[arg(long)]
        key: String,
        /// Subject, e.g. "O=Example,CN=Example Root" (no commas inside values).
        #[arg(long)]
        subject: String,
        /// Validity in days.
        #[arg(long, default_value_t = 7305)]
        days: u32,
        /// pathLenConstraint (omit: unlimited).
        #[arg(long)]
        path_len: Option<u8>,
        /// Where to write the certificate (PEM).
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue an intermediate CA certificate from a CA configured on this signer.
    Intermediate {
        #[command(flatten)]
        config: ConfigArg,
        /// Issuing CA name from `ca.cas`.
        #[arg(long)]
        issuer: String,
        /// Key name (from `ca.keys`) of the new intermediate.
        #[arg(long)]
        key: String,
        /// Subject.
        #[arg(long)]
        subject: String,
        /// Validity in days (never beyond the issuer's).
        #[arg(long, default_value_t = 3652)]
        days: u32,
        /// pathLenConstraint (default 0: issues end-entity certificates only).
        #[arg(long, default_value_t = 0)]
        path_len: u8,
        /// CRL distribution point of the issuer.
        #[arg(long)]
        crl_url: Vec<String>,
        /// Where to write the certificate (PEM).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a CSR for a configured key, for a CA outside this signer to sign.
    Csr {
        #[command(flatten)]
        config: ConfigArg,
        /// Key name from `ca.keys`.
        #[arg(long)]
        key: String,
        /// Subject.
        #[arg(long)]
        subject: String,
        /// Where to write the CSR (PEM).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write the CA's OpenPGP certificate (`ca.openpgp`): the configured
    /// key and creation time, self-signed with the configured user ID.
    Openpgp {
        #[command(flatten)]
        config: ConfigArg,
        /// Replace an existing certificate file.
        #[arg(long)]
        force: bool,
    },
    /// Check that an existing CA certificate belongs to a configured key.
    Import {
        #[command(flatten)]
        config: ConfigArg,
        /// Key name from `ca.keys`.
        #[arg(long)]
        key: String,
        /// The certificate (PEM or DER).
        #[arg(long)]
        cert: PathBuf,
    },
}

/// `signerd repo …`
#[derive(Subcommand)]
pub enum RepoCmd {
    /// Check that the repository's tables agree (stop the daemon first).
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Write every certificate record as JSON lines (stop the daemon first).
    Export {
        #[command(flatten)]
        config: ConfigArg,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Add records from an export; records already present are kept.
    Import {
        #[command(flatten)]
        config: ConfigArg,
        /// Input file (JSON lines from `repo export`).
        #[arg(long, name = "in")]
        input: PathBuf,
    },
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Parses "O=Example,CN=Example Root" into pairs.
pub fn parse_subject(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not ATTR=value"))?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

fn load(config: &Path) -> Result<(Config, signer_ca::CaConfig), String> {
    let c = Config::load(config).map_err(|e| format!("configuration error: {e}"))?;
    let ca = c.ca.clone().ok_or("the configuration has no ca: section")?;
    Ok((c, ca))
}

fn backend(ca: &signer_ca::CaConfig) -> Result<Pkcs11Backend, String> {
    Pkcs11Backend::open(ca.token(), ca.key_specs(), 1).map_err(|e| e.to_string())
}

/// Logs in to the token and checks every configured key and CA certificate;
/// the lines to print, or (exit code, message): 4 when the token refused the
/// PIN, 1 for anything the configuration must fix.
pub fn check_token(ca: &signer_ca::CaConfig) -> Result<Vec<String>, (u8, String)> {
    let code = |e: &signer_hsm::HsmError| {
        if matches!(e, signer_hsm::HsmError::Pin(_)) {
            4
        } else {
            1
        }
    };
    let backend = Pkcs11Backend::open(ca.token(), ca.key_specs(), 1)
        .map_err(|e| (code(&e), format!("ca.hsm: {e}")))?;
    let mut lines = Vec::new();
    for (i, k) in ca.keys.iter().enumerate() {
        let public = backend.public_key(&k.name).map_err(|e| {
            (
                code(&e),
                format!(
                    "ca.keys[{i}] ({}, label {}): {e}",
                    k.name,
                    k.label.as_deref().unwrap_or("-")
                ),
            )
        })?;
        lines.push(format!(
            "token key      {}: found ({})",
            k.name, public.kind
        ));
    }
    for (i, entry) in ca.cas.iter().enumerate() {
        let signer = ca_signer(ca, &backend, &entry.name)
            .map_err(|e| (1, format!("ca.cas[{i}] ({}): {e}", entry.name)))?;
        lines.push(format!(
            "token ca       {}: certificate matches key {}, valid until {}",
            entry.name,
            entry.key,
            signer_x509::time::rfc3339(signer.not_after)
        ));
    }
    if let Some(o) = &ca.openpgp {
        let loaded = signer_ca::openpgp::load(&backend, o)
            .map_err(|e| (1, format!("ca.openpgp ({}): {e}", o.key)))?;
        lines.push(format!(
            "token openpgp  {}: certificate {} matches the key",
            o.key,
            loaded.fingerprint()
        ));
    }
    lines.push("token OK".into());
    Ok(lines)
}

fn write_out(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn ca_signer(
    ca: &signer_ca::CaConfig,
    backend: &dyn SigningBackend,
    name: &str,
) -> Result<CaSigner, String> {
    let entry = ca
        .cas
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| format!("no CA named {name} in ca.cas"))?;
    let bytes = std::fs::read(&entry.certificate)
        .map_err(|e| format!("{}: {e}", entry.certificate.display()))?;
    let der = signer_x509::cert_der(&bytes)?;
    CaSigner::new(&entry.name, &entry.key, der, backend).map_err(|e| e.to_string())
}

impl SetupCmd {
    fn config(&self) -> &Path {
        match self {
            SetupCmd::GenerateKey { config, .. }
            | SetupCmd::SelfSign { config, .. }
            | SetupCmd::Intermediate { config, .. }
            | SetupCmd::Csr { config, .. }
            | SetupCmd::Import { config, .. }
            | SetupCmd::Openpgp { config, .. } => &config.config,
        }
    }
}

/// Opens the repository for the audit log before anything is done: a set-up
/// action that cannot be recorded is not performed.
fn audit_log(signer_id: &str, ca: &signer_ca::CaConfig) -> Result<Repository, String> {
    if let Some(dir) = ca.repository.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Repository::open(&ca.repository, signer_id).map_err(|e| {
        format!(
            "{}: {e} (the audit log is needed for set-up; is signerd running?)",
            ca.repository.display()
        )
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn setup(cmd: SetupCmd) -> Result<(), String> {
    let (c, ca) = load(cmd.config())?;
    let repo = audit_log(&c.signer_id, &ca)?;
    let result = perform(cmd, &ca);
    let entry = match &result {
        Ok(entry) => entry.clone(),
        Err((action, e)) => AuditEntry::new("setup", action, "failed").fact("message", e.clone()),
    };
    repo.audit(entry);
    repo.close();
    result.map(|_| ()).map_err(|(_, e)| e)
}

/// Performs a set-up action; returns its audit entry, or the action's name
/// and what went wrong.
fn perform(cmd: SetupCmd, ca: &signer_ca::CaConfig) -> Result<AuditEntry, (&'static str, String)> {
    let action = match &cmd {
        SetupCmd::GenerateKey { .. } => "generate-key",
        SetupCmd::SelfSign { .. } => "self-sign",
        SetupCmd::Intermediate { .. } => "intermediate",
        SetupCmd::Csr { .. } => "csr",
        SetupCmd::Import { .. } => "import",
        SetupCmd::Openpgp { .. } => "openpgp",
    };
    perform_action(cmd, ca).map_err(|e| (action, e))
}

fn perform_action(cmd: SetupCmd, ca: &signer_ca::CaConfig) -> Result<AuditEntry, String> {
    let ok = |action: &str| AuditEntry::new("setup", action, "ok");
    Ok(match cmd {
        SetupCmd::GenerateKey {
            config: _,
            label,
            key_type,
            dry_run,
        } => {
            let backend = backend(ca)?;
            if dry_run {
                backend
                    .check_label_free(&label)
                    .map_err(|e| e.to_string())?;
                say!("dry run: the token accepts the PIN and has no object labelled {label}; nothing generated");
                return Ok(ok("generate-key (dry run)").fact("label", label));
            }
            let (public, id) = backend
                .generate(key_type.kind(), &label)
                .map_err(|e| e.to_string())?;
            say!("generated {} key on the token", public.kind);
            say!("label  {label}");
            say!("id     {}", hex::encode(&id));
            say!(
                "add to ca.keys:  - {{name: {label}, label: {label}, id: {}}}",
                hex::encode(&id)
            );
            ok("generate-key")
                .fact("label", label)
                .fact("id", hex::encode(&id))
                .fact("key_type", public.kind.to_string())
        }
        SetupCmd::SelfSign {
            config: _,
            key,
            subject,
            days,
            path_len,
            out,
        } => {
            let backend = backend(ca)?;
            let spec = CaSpec {
                subject: parse_subject(&subject)?,
                days,
                path_len,
                serial_prefix: ca.serial_prefix,
                now: now(),
                scheme: None,
                crl_urls: Vec::new(),
            };
            let der = self_signed_root(&backend, &key, &spec).map_err(|e| e.to_string())?;
            let pem = cert_pem(&der);
            write_out(&out, &pem)?;
            say!("wrote self-signed root for key {key} to {}", out.display());
            ok("self-sign")
                .fact("key", key)
                .fact("subject", subject)
                .fact("certificate_sha256", sha256_hex(pem.as_bytes()))
                .fact("out", out.display().to_string())
        }
        SetupCmd::Intermediate {
            config: _,
            issuer,
            key,
            subject,
            days,
            path_len,
            crl_url,
            out,
        } => {
            let backend = backend(ca)?;
            let parent = ca_signer(ca, &backend, &issuer)?;
            let spec = CaSpec {
                subject: parse_subject(&subject)?,
                days,
                path_len: Some(path_len),
                serial_prefix: ca.serial_prefix,
                now: now(),
                scheme: None,
                crl_urls: crl_url,
            };
            let der = intermediate(&backend, &parent, &key, &spec).map_err(|e| e.to_string())?;
            let pem = cert_pem(&der);
            write_out(&out, &pem)?;
            say!(
                "wrote intermediate for key {key}, issued by {issuer}, to {}",
                out.display()
            );
            ok("intermediate")
                .fact("key", key)
                .fact("issuer", issuer)
                .fact("subject", subject)
                .fact("certificate_sha256", sha256_hex(pem.as_bytes()))
                .fact("out", out.display().to_string())
        }
        SetupCmd::Csr {
            config: _,
            key,
            subject,
            out,
        } => {
            let backend = backend(ca)?;
            let der =
                ca_csr(&backend, &key, &parse_subject(&subject)?).map_err(|e| e.to_string())?;
            let pem =
                der::pem::encode_string("CERTIFICATE REQUEST", der::pem::LineEnding::LF, &der)
                    .map_err(|e| e.to_string())?;
            write_out(&out, &pem)?;
            say!("wrote CSR for key {key} to {}", out.display());
            ok("csr")
                .fact("key", key)
                .fact("subject", subject)
                .fact("csr_sha256", sha256_hex(pem.as_bytes()))
        }
        SetupCmd::Openpgp { config: _, force } => {
            let o = ca
                .openpgp
                .as_ref()
                .ok_or("no ca.openpgp section in the configuration")?;
            if o.certificate.exists() && !force {
                return Err(format!(
                    "{} exists; pass --force to replace it",
                    o.certificate.display()
                ));
            }
            let backend = backend(ca)?;
            let public = backend.public_key(&o.key).map_err(|e| e.to_string())?;
            let created = o.created_secs()?;
            let packet =
                signer_openpgp::public_key_packet(&public, created).map_err(|e| e.to_string())?;
            let signer = signer_openpgp::HsmSigner::new(
                &backend,
                &o.key,
                0,
                &packet,
                public.kind,
                o.policy.hash,
            );
            let cert = signer_openpgp::CaCertificate {
                certificate: signer_openpgp::ca_certificate(&signer, &o.user_id)
                    .map_err(|e| e.to_string())?,
                public: packet.clone(),
            };
            let armored = cert.armored().map_err(|e| e.to_string())?;
            let fingerprint = cert.fingerprint();
            write_out(&o.certificate, &armored)?;
            say!(
                "wrote OpenPGP CA certificate {fingerprint} ({}, created {}) to {}",
                public.kind,
                o.created,
                o.certificate.display()
            );
            ok("openpgp")
                .fact("key", o.key.clone())
                .fact("user_id", o.user_id.clone())
                .fact("created", o.created.clone())
                .fact("fingerprint", fingerprint)
                .fact("certificate_sha256", sha256_hex(armored.as_bytes()))
        }
        SetupCmd::Import {
            config: _,
            key,
            cert,
        } => {
            let backend = backend(ca)?;
            let bytes = std::fs::read(&cert).map_err(|e| format!("{}: {e}", cert.display()))?;
            let der = signer_x509::cert_der(&bytes)?;
            let signer = CaSigner::new("import", &key, der, &backend).map_err(|e| e.to_string())?;
            say!(
                "{} matches key {key} ({}); valid until {}",
                cert.display(),
                signer.kind,
                signer_x509::time::rfc3339(signer.not_after)
            );
            ok("import")
                .fact("key", key)
                .fact("certificate", cert.display().to_string())
                .fact("certificate_sha256", sha256_hex(&bytes))
        }
    })
}

/// Runs a setup command; exit code 0 on success, 1 on any error.
pub fn run_setup(cmd: SetupCmd) -> ExitCode {
    match setup(cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("signerd setup: {e}");
            ExitCode::from(1)
        }
    }
}

fn repo(cmd: RepoCmd) -> Result<(), String> {
    let open = |config: &Path| -> Result<Repository, String> {
        let (c, ca) = load(config)?;
        Repository::open(&ca.repository, &c.signer_id)
            .map_err(|e| format!("{}: {e}", ca.repository.display()))
    };
    match cmd {
        RepoCmd::Check { config } => {
            let repo = open(&config.config)?;
            let problems = repo.check().map_err(|e| e.to_string())?;
            let stats = repo.stats().map_err(|e| e.to_string())?;
            if problems.is_empty() {
                say!("repository consistent: {} certificates", stats.certificates);
            } else {
                for p in &problems {
                    say!("problem: {p}");
                }
                return Err(format!("{} problems found", problems.len()));
            }
        }
        RepoCmd::Export { config, out } => {
            let repo = open(&config.config)?;
            let mut file = std::io::BufWriter::new(
                std::fs::File::create(&out).map_err(|e| format!("{}: {e}", out.display()))?,
            );
            let n = repo.export(&mut file).map_err(|e| e.to_string())?;
            std::io::Write::flush(&mut file).map_err(|e| e.to_string())?;
            say!("exported {n} certificates to {}", out.display());
        }
        RepoCmd::Import { config, input } => {
            let repo = open(&config.config)?;
            let file =
                std::fs::File::open(&input).map_err(|e| format!("{}: {e}", input.display()))?;
            let (added, present) = repo
                .import(&mut std::io::BufReader::new(file))
                .map_err(|e| e.to_string())?;
            say!("imported {added} certificates, {present} already present");
        }
    }
    Ok(())
}

/// Runs a repository command; exit code 0 on success, 1 on any error.
pub fn run_repo(cmd: RepoCmd) -> ExitCode {
    match repo(cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("signerd repo: {e}");
            ExitCode::from(1)
        }
    }
}

/// `signerd audit …`
#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check the audit chain (and the twin's copy); reports the first broken link.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show audit entries, oldest first.
    Show {
        #[command(flatten)]
        config: ConfigArg,
        /// Only entries at or after this time (RFC 3339 or Unix seconds).
        #[arg(long)]
        since: Option<String>,
        /// Only entries before this time (RFC 3339 or Unix seconds).
        #[arg(long)]
        until: Option<String>,
        /// Only entries with this request id.
        #[arg(long)]
        request_id: Option<String>,
        /// Only entries naming this serial (hex).
        #[arg(long)]
        serial: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(secs * 1000);
    }
    humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("{text:?} is neither Unix seconds nor RFC 3339: {e}"))
        .map(|t| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        })
}

fn audit(cmd: AuditCmd) -> Result<ExitCode, String> {
    let open = |config: &Path| -> Result<Repository, String> {
        let (c, ca) = load(config)?;
        Repository::open(&ca.repository, &c.signer_id)
            .map_err(|e| format!("{}: {e}", ca.repository.display()))
    };
    match cmd {
        AuditCmd::Verify { config } => {
            let repo = open(&config.config)?;
            let mut ok = true;
            for r in repo.audit_verify().map_err(|e| e.to_string())? {
                let head = r
                    .head
                    .as_ref()
                    .map(|(n, h)| format!("head {n} {}", hex::encode(h)))
                    .unwrap_or_else(|| "empty".into());
                match &r.broken {
                    None => say!("{}: {} entries verified, {head}", r.signer_id, r.entries),
                    Some((seq, why)) => {
                        ok = false;
                        say!(
                            "{}: BROKEN at entry {seq}: {why} ({} entries before it verified)",
                            r.signer_id,
                            r.entries
                        );
                    }
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        AuditCmd::Show {
            config,
            since,
            until,
            request_id,
            serial,
            json,
        } => {
            let since = since.as_deref().map(parse_time).transpose()?;
            let until = until.as_deref().map(parse_time).transpose()?;
            let serial = serial.map(|s| s.trim_start_matches("0x").replace(':', "").to_lowercase());
            let repo = open(&config.config)?;
            let entries = repo
                .audit_entries(|e| {
                    since.is_none_or(|t| e.time_ms >= t)
                        && until.is_none_or(|t| e.time_ms < t)
                        && request_id
                            .as_ref()
                            .is_none_or(|r| e.facts.get("request_id") == Some(r))
                        && serial
                            .as_ref()
                            .is_none_or(|s| e.facts.get("serial") == Some(s))
                })
                .map_err(|e| e.to_string())?;
            for e in entries {
                if json {
                    let value = serde_json::json!({
                        "signer_id": e.signer_id,
                        "seq": e.seq,
                        "time_ms": e.time_ms,
                        "kind": e.kind,
                        "action": e.action,
                        "outcome": e.outcome,
                        "facts": e.facts,
                        "hash": hex::encode(&e.hash),
                    });
                    say!("{value}");
                } else {
                    let time =
                        UNIX_EPOCH + std::time::Duration::from_millis(e.time_ms.max(0) as u64);
                    let facts: Vec<String> =
                        e.facts.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    say!(
                        "{} {}#{} {} {} {} {}",
                        humantime::format_rfc3339_millis(time),
                        e.signer_id,
                        e.seq,
                        e.kind,
                        e.action,
                        e.outcome,
                        facts.join(" ")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs an audit command: 0 when everything verified (or was shown), 1 otherwise.
pub fn run_audit(cmd: AuditCmd) -> ExitCode {
    match audit(cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("signerd audit: {e}");
            ExitCode::from(1)
        }
    }
}
