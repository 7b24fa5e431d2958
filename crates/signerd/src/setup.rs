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
use std::sync::Arc;

use signer_hsm::{KeyGenerator, KeyKind, SigningBackend};
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
    /// Create the repository for this configuration (the first step of the
    /// key ceremony). Refused if a file is already there.
    Init {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Read every table and every value and check them against each other
    /// (works while signerd runs).
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Write a complete backup of one consistent snapshot (works while
    /// signerd runs): certificates, revocations, CRL state, OpenPGP
    /// certifications, the audit log, replication state and identity.
    Backup {
        #[command(flatten)]
        config: ConfigArg,
        /// The backup file to write (refused if it exists).
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a backup file: its digest, every record's checksum, its counts.
    VerifyBackup {
        /// The backup file.
        #[arg(long = "in")]
        input: PathBuf,
        /// Also check that it is this configuration's signer's backup.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Restore a backup into the configured repository path (which must
    /// not exist: move a damaged repository away first). Stop signerd first.
    Restore {
        #[command(flatten)]
        config: ConfigArg,
        /// The backup file.
        #[arg(long = "in")]
        input: PathBuf,
    },
    /// After a clock that ran ahead was set right: accept the current time
    /// as the latest recorded one, so signing resumes (audited; signerd
    /// stopped). Certificates already dated after it stay as they are.
    AcceptClock {
        #[command(flatten)]
        config: ConfigArg,
        /// Why (kept in the audit entry).
        #[arg(long)]
        reason: String,
    },
    /// Create this signer's repository from a backup of its twin (a
    /// replacement twin): every record the twin holds, and replication goes
    /// on from the backup's position. The configured path must not exist.
    Seed {
        #[command(flatten)]
        config: ConfigArg,
        /// The twin's backup file (`signerd repo backup` on the twin).
        #[arg(long = "in")]
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

fn backend(ca: &signer_ca::CaConfig) -> Result<Arc<dyn KeyGenerator>, String> {
    signer_hsm::open(&ca.hsm, ca.key_specs(), 1, None).map_err(|e| e.to_string())
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
    let backend = signer_hsm::open(&ca.hsm, ca.key_specs(), 1, None)
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
        let signer = ca_signer(ca, &*backend, &entry.name)
            .map_err(|e| (1, format!("ca.cas[{i}] ({}): {e}", entry.name)))?;
        lines.push(format!(
            "token ca       {}: certificate matches key {}, valid until {}",
            entry.name,
            entry.key,
            signer_x509::time::rfc3339(signer.not_after)
        ));
    }
    if let Some(o) = &ca.openpgp {
        let loaded = signer_ca::openpgp::load(&*backend, o)
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

/// Opens the repository as `run` would (read-only beside a running
/// signerd) and describes it; (exit code, message) when it is refused.
pub fn check_repository(
    signer_id: &str,
    ca: &signer_ca::CaConfig,
) -> Result<Vec<String>, (u8, String)> {
    let expected = signer_ca::expected_identity(ca, signer_id)
        .map_err(|e| (ca_exit(&e), format!("ca.repository: {e}")))?;
    let repo = Repository::open_for_inspection(
        &ca.repository,
        &expected,
        &signer_ca::repository_options(ca),
    )
    .map_err(|e| (repo_exit(&e), format!("ca.repository: {e}")))?;
    let id = repo.identity();
    Ok(vec![format!(
        "repository     {}: signer {}, schema {}, CAs {}",
        ca.repository.display(),
        id.signer_id,
        id.schema,
        if id.cas.is_empty() {
            "none yet".to_string()
        } else {
            id.cas.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    )])
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
/// action that cannot be recorded is not performed. The repository must
/// exist (`signerd repo init` is the ceremony's first step).
fn audit_log(signer_id: &str, ca: &signer_ca::CaConfig) -> Result<Repository, Failed> {
    signer_ca::open_repository(ca, signer_id).map_err(|e| {
        let code = ca_exit(&e);
        Failed(
            code,
            format!("{e} (the audit log is needed for set-up; is signerd running?)"),
        )
    })
}

/// A command's failure: its exit code and message.
pub struct Failed(pub u8, pub String);

impl From<String> for Failed {
    fn from(message: String) -> Failed {
        Failed(1, message)
    }
}

impl From<&str> for Failed {
    fn from(message: &str) -> Failed {
        Failed(1, message.to_string())
    }
}

/// Exit status when the repository is refused: missing, empty, foreign,
/// another signer's, of a newer schema, or in use.
pub const EXIT_REPO_REFUSED: u8 = 5;
/// Exit status when the repository is damaged.
pub const EXIT_REPO_DAMAGED: u8 = 6;

/// The exit status for a repository error.
pub fn repo_exit(e: &signer_repository::RepoError) -> u8 {
    match e {
        // Another process holds it for a moment (an inspection command):
        // a run failure the unit may retry, not a refusal.
        signer_repository::RepoError::Refused(signer_repository::Refusal::InUse(_)) => 3,
        signer_repository::RepoError::Refused(_) => EXIT_REPO_REFUSED,
        signer_repository::RepoError::Corrupt(_) => EXIT_REPO_DAMAGED,
        _ => 3,
    }
}

/// The exit status for a CA service error at start.
pub fn ca_exit(e: &signer_ca::CaError) -> u8 {
    match e {
        signer_ca::CaError::Repository(r) => repo_exit(r),
        signer_ca::CaError::Pin(_) => 4,
        _ => 1,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn setup(cmd: SetupCmd) -> Result<(), Failed> {
    let (c, ca) = load(cmd.config())?;
    let repo = audit_log(&c.signer_id, &ca)?;
    let result = perform(cmd, &ca);
    let entry = match &result {
        Ok(entry) => entry.clone(),
        Err((action, e)) => AuditEntry::new("setup", action, "failed").fact("message", e.clone()),
    };
    repo.audit(entry);
    repo.close();
    result.map(|_| ()).map_err(|(_, e)| Failed(1, e))
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
            let der = self_signed_root(&*backend, &key, &spec).map_err(|e| e.to_string())?;
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
            let parent = ca_signer(ca, &*backend, &issuer)?;
            let spec = CaSpec {
                subject: parse_subject(&subject)?,
                days,
                path_len: Some(path_len),
                serial_prefix: ca.serial_prefix,
                now: now(),
                scheme: None,
                crl_urls: crl_url,
            };
            let der = intermediate(&*backend, &parent, &key, &spec).map_err(|e| e.to_string())?;
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
                ca_csr(&*backend, &key, &parse_subject(&subject)?).map_err(|e| e.to_string())?;
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
                &*backend,
                &o.key,
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
            let signer =
                CaSigner::new("import", &key, der, &*backend).map_err(|e| e.to_string())?;
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

/// Runs a setup command; exit code 0 on success, 1 on any error (5 or 6
/// when the repository is refused or damaged).
pub fn run_setup(cmd: SetupCmd) -> ExitCode {
    match setup(cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed(code, e)) => {
            eprintln!("signerd setup: {e}");
            ExitCode::from(code)
        }
    }
}

/// Opens the repository for an inspection command: writable when signerd
/// is stopped, read-only beside it when it runs.
fn inspect(config: &Path) -> Result<Repository, Failed> {
    let (_, ca, expected) = load_expected(config)?;
    Repository::open_for_inspection(
        &ca.repository,
        &expected,
        &signer_ca::repository_options(&ca),
    )
    .map_err(|e| Failed(repo_exit(&e), e.to_string()))
}

/// The configuration, its `ca:` section and what it expects of its repository.
fn load_expected(
    config: &Path,
) -> Result<(Config, signer_ca::CaConfig, signer_repository::Expected), Failed> {
    let (c, ca) = load(config)?;
    let expected = signer_ca::expected_identity(&ca, &c.signer_id)
        .map_err(|e| Failed(ca_exit(&e), e.to_string()))?;
    Ok((c, ca, expected))
}

/// Makes the configured repository from a backup file with `make`
/// (`Repository::restore` or `Repository::seed`).
fn from_backup(
    config: &Path,
    input: &Path,
    make: fn(
        &Path,
        &mut dyn std::io::Read,
        &signer_repository::Expected,
        &signer_repository::OpenOptions,
    ) -> Result<signer_repository::BackupSummary, signer_repository::RepoError>,
) -> Result<
    (
        Config,
        signer_ca::CaConfig,
        signer_repository::BackupSummary,
    ),
    Failed,
> {
    let (c, ca, expected) = load_expected(config)?;
    let file = std::fs::File::open(input).map_err(|e| format!("{}: {e}", input.display()))?;
    let summary = make(
        &ca.repository,
        &mut std::io::BufReader::new(file),
        &expected,
        &signer_ca::repository_options(&ca),
    )
    .map_err(repo_failed)?;
    Ok((c, ca, summary))
}

fn repo_failed(e: signer_repository::RepoError) -> Failed {
    Failed(repo_exit(&e), e.to_string())
}

fn print_summary(s: &signer_repository::BackupSummary) {
    say!(
        "{} certificates, {} revocations, {} OpenPGP certifications, {} audit entries ({} of the twin)",
        s.count("certs_v1"),
        s.count("revocations_v1"),
        s.count("openpgp_certifications_v1"),
        s.count("audit_v1"),
        s.count("audit_peer_v1")
    );
    say!("content sha256 {}", s.content_sha256);
    for (issuer, d) in &s.set_digests {
        say!("set digest     {issuer} {d}");
    }
}

fn repo(cmd: RepoCmd) -> Result<(), Failed> {
    match cmd {
        RepoCmd::Init { config } => {
            let (c, ca, expected) = load_expected(&config.config)?;
            if let Some(dir) = ca.repository.parent() {
                if !dir.as_os_str().is_empty() && !dir.is_dir() {
                    return Err(Failed(
                        1,
                        format!(
                            "{} does not exist; create the state directory first (the package does)",
                            dir.display()
                        ),
                    ));
                }
            }
            let repo = Repository::create(
                &ca.repository,
                &expected,
                &signer_ca::repository_options(&ca),
            )
            .map_err(repo_failed)?;
            say!(
                "created repository {} for signer {}{}",
                ca.repository.display(),
                c.signer_id,
                if expected.cas.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", CAs {}",
                        expected.cas.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                }
            );
            repo.close();
        }
        RepoCmd::Check { config } => {
            let repo = inspect(&config.config)?;
            let mut report = repo.check().map_err(repo_failed)?;
            // Every stored certificate against its CA's certificate file.
            let (_, ca) = load(&config.config)?;
            let mut cas = std::collections::BTreeMap::new();
            for entry in &ca.cas {
                if let Ok(der) = std::fs::read(&entry.certificate)
                    .map_err(|e| e.to_string())
                    .and_then(|b| signer_x509::cert_der(&b))
                {
                    cas.insert(entry.name.clone(), der);
                }
            }
            let (verified, bad) =
                signer_ca::verify_certificates(&repo, &cas).map_err(repo_failed)?;
            report.problems.extend(bad);
            if report.problems.is_empty() {
                say!(
                    "repository consistent: {} records checked, {verified} certificates verified against their CA{}",
                    report.records,
                    if repo.is_read_only() {
                        " (read beside the running signerd)"
                    } else {
                        ""
                    }
                );
            } else {
                for p in &report.problems {
                    say!("problem: {p}");
                }
                return Err(Failed(
                    EXIT_REPO_DAMAGED,
                    format!(
                        "{} problems found; the first: {}",
                        report.problems.len(),
                        report.problems[0]
                    ),
                ));
            }
        }
        RepoCmd::Backup { config, out } => {
            let repo = inspect(&config.config)?;
            if out.exists() {
                return Err(Failed(
                    1,
                    format!("{} exists; not overwritten", out.display()),
                ));
            }
            let partial = out.with_extension("partial");
            let written = (|| -> Result<signer_repository::BackupSummary, Failed> {
                let file = std::fs::File::create(&partial)
                    .map_err(|e| format!("{}: {e}", partial.display()))?;
                let mut w = std::io::BufWriter::new(file);
                let summary = repo.backup(&mut w).map_err(repo_failed)?;
                let file = w
                    .into_inner()
                    .map_err(|e| format!("{}: {e}", partial.display()))?;
                file.sync_all()
                    .map_err(|e| format!("{}: {e}", partial.display()))?;
                std::fs::rename(&partial, &out).map_err(|e| format!("{}: {e}", out.display()))?;
                Ok(summary)
            })();
            let summary = match written {
                Ok(s) => s,
                Err(e) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(e);
                }
            };
            say!("backup written to {}", out.display());
            print_summary(&summary);
        }
        RepoCmd::VerifyBackup { input, config } => {
            let file =
                std::fs::File::open(&input).map_err(|e| format!("{}: {e}", input.display()))?;
            let (identity, summary) =
                signer_repository::verify_backup(&mut std::io::BufReader::new(file))
                    .map_err(repo_failed)?;
            if let Some(config) = config {
                let (c, ca) = load(&config)?;
                if identity.signer_id != c.signer_id {
                    return Err(Failed(
                        EXIT_REPO_REFUSED,
                        format!(
                            "{} is a backup of signer {:?}, not of {:?}",
                            input.display(),
                            identity.signer_id,
                            c.signer_id
                        ),
                    ));
                }
                let _ = ca;
            }
            say!(
                "backup {} verified: signer {}, schema {}",
                input.display(),
                identity.signer_id,
                identity.schema
            );
            print_summary(&summary);
        }
        RepoCmd::Restore { config, input } => {
            let (_, ca, summary) = from_backup(&config.config, &input, Repository::restore)?;
            say!(
                "restored {} into {}; the restored content reproduces the backup's digests",
                input.display(),
                ca.repository.display()
            );
            print_summary(&summary);
        }
        RepoCmd::AcceptClock { config, reason } => {
            let (c, ca, expected) = load_expected(&config.config)?;
            let repo = Repository::open(
                &ca.repository,
                &expected,
                &signer_ca::repository_options(&ca),
            )
            .map_err(repo_failed)?;
            let now_ms = now() * 1000;
            let old = repo.accept_clock(now_ms, &reason).map_err(repo_failed)?;
            repo.close();
            say!(
                "signer {}: latest recorded time was {}, is now {} (this host's clock)",
                c.signer_id,
                old.map(|m| signer_x509::time::rfc3339(m.div_euclid(1000)))
                    .unwrap_or_else(|| "none".into()),
                signer_x509::time::rfc3339(now())
            );
        }
        RepoCmd::Seed { config, input } => {
            // Without ca.replication the expected twin is none, and the seed refuses.
            let (c, ca, summary) = from_backup(&config.config, &input, Repository::seed)?;
            say!(
                "seeded {} for signer {} from the twin's backup {}",
                ca.repository.display(),
                c.signer_id,
                input.display()
            );
            print_summary(&summary);
        }
    }
    Ok(())
}

/// Runs a repository command: 0 on success, 5 when the repository is
/// refused, 6 when it is damaged, 1 for other errors.
pub fn run_repo(cmd: RepoCmd) -> ExitCode {
    match repo(cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed(code, e)) => {
            eprintln!("signerd repo: {e}");
            ExitCode::from(code)
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

fn audit(cmd: AuditCmd) -> Result<ExitCode, Failed> {
    let open = inspect;
    match cmd {
        AuditCmd::Verify { config } => {
            let repo = open(&config.config)?;
            let mut ok = true;
            for r in repo.audit_verify().map_err(repo_failed)? {
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
                .map_err(repo_failed)?;
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

/// Runs an audit command: 0 when everything verified (or was shown), 1
/// otherwise (5 or 6 when the repository is refused or damaged).
pub fn run_audit(cmd: AuditCmd) -> ExitCode {
    match audit(cmd) {
        Ok(code) => code,
        Err(Failed(code, e)) => {
            eprintln!("signerd audit: {e}");
            ExitCode::from(code)
        }
    }
}
