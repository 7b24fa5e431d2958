//! `signerd setup …`: the key ceremony's front end. The steps themselves
//! are `signer_ca::ceremony`; this parses arguments, prints, and maps
//! failures to exit statuses.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Subcommand, ValueEnum};
use signer_ca::ceremony::{self, CeremonyError, Step};
use signer_hsm::KeyKind;

use crate::config::{load, ConfigArg};
use crate::exit::{ca_exit, Failed};

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
    /// Ed25519: the audit log's checkpoint key only.
    Ed25519,
}

impl KeyType {
    fn kind(self) -> KeyKind {
        match self {
            KeyType::Rsa2048 => KeyKind::Rsa { bits: 2048 },
            KeyType::Rsa3072 => KeyKind::Rsa { bits: 3072 },
            KeyType::Rsa4096 => KeyKind::Rsa { bits: 4096 },
            KeyType::P256 => KeyKind::EcP256,
            KeyType::P384 => KeyKind::EcP384,
            KeyType::Ed25519 => KeyKind::Ed25519,
        }
    }
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
        /// Subject by RFC 4514, most specific first, e.g. "CN=Example Root,O=Example" (escape a comma in a value: "O=Example\, Inc.").
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
        /// Subject by RFC 4514, most specific first (as for self-sign).
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
        /// Extended key usage of the intermediate, e.g. server_auth (the TLS
        /// Baseline Requirements ask it of a TLS issuing CA); repeat for more.
        #[arg(long, value_parser = parse_eku)]
        eku: Vec<signer_x509::profile::Eku>,
        /// Certificate policy OID, e.g. 2.23.140.1.2.1; repeat for more.
        #[arg(long)]
        policy: Vec<String>,
        /// OCSP responder URL of the issuer (authorityInformationAccess).
        #[arg(long)]
        ocsp_url: Vec<String>,
        /// Where the issuer's certificate is published (authorityInformationAccess).
        #[arg(long)]
        ca_issuers_url: Vec<String>,
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
        /// Subject by RFC 4514, most specific first (as for self-sign).
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
    /// Write the public key of a configured key as PEM (the twins exchange
    /// their replication keys this way: each names the other's file in
    /// `ca.replication.peer_key`).
    PublicKey {
        #[command(flatten)]
        config: ConfigArg,
        /// The configured key name (`ca.keys`).
        #[arg(long)]
        key: String,
        /// Where to write the PEM.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make this signer's NATS credentials (an nkey): the seed to --out
    /// (mode 0600; `ca.replication.nats_seed`), the public key printed for
    /// both nats-servers' authorization blocks.
    NatsKey {
        #[command(flatten)]
        config: ConfigArg,
        /// Where to write the seed (a new file).
        #[arg(long)]
        out: PathBuf,
    },
    /// Make this signer's nats-server TLS certificate and key (self-signed,
    /// ECDSA P-256, ten years): the key to --key (mode 0600; the server's
    /// `tls.key_file`), the certificate to --cert (the server's
    /// `tls.cert_file`, this signer's `ca.replication.tls_cert` and the
    /// twin's `peer_tls_cert`).
    NatsTls {
        #[command(flatten)]
        config: ConfigArg,
        /// Where to write the certificate (a new file).
        #[arg(long)]
        cert: PathBuf,
        /// Where to write the private key (a new file).
        #[arg(long)]
        key: PathBuf,
        /// A name or address the twin reaches this nats-server by (the
        /// cable address; repeat for more). 127.0.0.1 and localhost are
        /// always included.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
    },
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

impl SetupCmd {
    fn config(&self) -> &Path {
        match self {
            SetupCmd::GenerateKey { config, .. }
            | SetupCmd::SelfSign { config, .. }
            | SetupCmd::Intermediate { config, .. }
            | SetupCmd::Csr { config, .. }
            | SetupCmd::PublicKey { config, .. }
            | SetupCmd::NatsKey { config, .. }
            | SetupCmd::NatsTls { config, .. }
            | SetupCmd::Import { config, .. }
            | SetupCmd::Openpgp { config, .. } => &config.config,
        }
    }
}

/// An extended key usage by its profile name.
fn parse_eku(name: &str) -> Result<signer_x509::profile::Eku, String> {
    signer_x509::profile::Eku::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = signer_x509::profile::Eku::ALL
            .iter()
            .map(|(n, _)| *n)
            .collect();
        format!("expected one of {}", names.join(", "))
    })
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl SetupCmd {
    /// The ceremony step this command asks for.
    fn step(self, signer_id: &str) -> Step {
        match self {
            SetupCmd::GenerateKey {
                label,
                key_type,
                dry_run,
                ..
            } => Step::GenerateKey {
                label,
                kind: key_type.kind(),
                dry_run,
            },
            SetupCmd::SelfSign {
                key,
                subject,
                days,
                path_len,
                out,
                ..
            } => Step::SelfSign {
                key,
                subject,
                days,
                path_len,
                out,
            },
            SetupCmd::Intermediate {
                issuer,
                key,
                subject,
                days,
                path_len,
                crl_url,
                eku,
                policy,
                ocsp_url,
                ca_issuers_url,
                out,
                ..
            } => Step::Intermediate {
                issuer,
                key,
                subject,
                days,
                path_len,
                crl_urls: crl_url,
                extras: signer_ca::ceremony::IntermediateExtras {
                    eku,
                    policies: policy,
                    ocsp_urls: ocsp_url,
                    ca_issuers_urls: ca_issuers_url,
                },
                out,
            },
            SetupCmd::Csr {
                key, subject, out, ..
            } => Step::Csr { key, subject, out },
            SetupCmd::Openpgp { force, .. } => Step::Openpgp { force },
            SetupCmd::PublicKey { key, out, .. } => Step::PublicKey { key, out },
            SetupCmd::NatsKey { out, .. } => Step::NatsKey { out },
            SetupCmd::NatsTls {
                cert, key, hosts, ..
            } => Step::NatsTls {
                signer_id: signer_id.to_string(),
                cert,
                key,
                hosts,
            },
            SetupCmd::Import { key, cert, .. } => Step::Import { key, cert },
        }
    }
}

fn setup(cmd: SetupCmd) -> Result<(), Failed> {
    let (c, ca) = load(cmd.config())?;
    ceremony::run(
        cmd.step(&c.signer_id),
        &ca,
        &c.signer_id,
        now(),
        &mut |line| say!("{line}"),
    )
    .map_err(|e| match e {
        CeremonyError::AuditLog(ref inner) => Failed(ca_exit(inner), e.to_string()),
        CeremonyError::Failed(message) => Failed(1, message),
    })
}

/// Runs a setup command; exit code 0 on success, 1 on any error (5 or 6
/// when the repository is refused or damaged).
pub fn run(cmd: SetupCmd) -> ExitCode {
    match setup(cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed(code, e)) => {
            eprintln!("signerd setup: {e}");
            ExitCode::from(code)
        }
    }
}
