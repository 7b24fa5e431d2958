//! `signerd repo …`: create, check, back up, verify, restore and seed the
//! repository, and accept a clock that was refused.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use signer_repository::Repository;

use crate::config::{load, load_expected, ConfigArg};
use crate::exit::{repo_exit, Failed, EXIT_REPO_DAMAGED, EXIT_REPO_REFUSED};
use crate::Config;

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

/// Opens the repository for an inspection command: writable when signerd
/// is stopped, read-only beside it when it runs.
pub(crate) fn inspect(config: &Path) -> Result<Repository, Failed> {
    let (_, ca, expected) = load_expected(config)?;
    Repository::open_for_inspection(
        &ca.repository,
        &expected,
        &signer_ca::repository_options(&ca),
    )
    .map_err(|e| Failed(repo_exit(&e), e.to_string()))
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

pub(crate) fn repo_failed(e: signer_repository::RepoError) -> Failed {
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
pub fn run(cmd: RepoCmd) -> ExitCode {
    match repo(cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed(code, e)) => {
            eprintln!("signerd repo: {e}");
            ExitCode::from(code)
        }
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
