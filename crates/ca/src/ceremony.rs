//! The key ceremony's steps, as a library: generate a key on the token,
//! self-sign a root, issue an intermediate, make a CSR for an external CA,
//! check an imported certificate against its key, and make the OpenPGP CA
//! certificate. `signerd setup …` is a thin front end over [`run`]; tests
//! call the steps directly.
//!
//! Every step is recorded in the repository's audit log, failures included,
//! and a step whose record cannot be written is not performed: the audit
//! log is opened before the token is touched.

use std::path::{Path, PathBuf};

use signer_hsm::{KeyGenerator, KeyKind, SigningBackend};
use signer_repository::AuditEntry;
use signer_x509::setup::{ca_csr, intermediate, self_signed_root, CaSpec};
use signer_x509::{cert_pem, CaSigner};

use crate::{open_repository, CaConfig, CaError};

/// One step of the ceremony.
#[derive(Debug, Clone)]
pub enum Step {
    /// A key pair on the token under `label` (`dry_run`: only check that
    /// the token takes the PIN and the label is free).
    GenerateKey {
        /// `CKA_LABEL` of the new key.
        label: String,
        /// Kind and size.
        kind: KeyKind,
        /// Check only; generate nothing.
        dry_run: bool,
    },
    /// A self-signed root certificate for configured key `key`, to `out`.
    SelfSign {
        /// Configured key name.
        key: String,
        /// "O=…,CN=…".
        subject: String,
        /// Validity in days.
        days: u32,
        /// pathLenConstraint.
        path_len: Option<u8>,
        /// Where the PEM goes.
        out: PathBuf,
    },
    /// An intermediate CA certificate for `key`, issued by configured CA `issuer`.
    Intermediate {
        /// Configured CA name of the issuer.
        issuer: String,
        /// Configured key name of the new CA.
        key: String,
        /// "O=…,CN=…".
        subject: String,
        /// Validity in days.
        days: u32,
        /// pathLenConstraint.
        path_len: u8,
        /// CRL distribution points.
        crl_urls: Vec<String>,
        /// What else the intermediate says of itself (extKeyUsage,
        /// certificatePolicies, authorityInformationAccess).
        extras: IntermediateExtras,
        /// Where the PEM goes.
        out: PathBuf,
    },
    /// A CSR for `key`, for an external CA.
    Csr {
        /// Configured key name.
        key: String,
        /// "O=…,CN=…".
        subject: String,
        /// Where the PEM goes.
        out: PathBuf,
    },
    /// The OpenPGP CA certificate of `ca.openpgp`, to its configured path.
    Openpgp {
        /// Replace an existing certificate file.
        force: bool,
    },
    /// Writes the public key of configured key `key` as PEM to `out` (the
    /// twins exchange their replication keys this way).
    PublicKey {
        /// Configured key name.
        key: String,
        /// Where the PEM goes.
        out: PathBuf,
    },
    /// A NATS user nkey for this signer: the seed to `out` (mode 0600,
    /// never replaced), the public key printed for both nats-servers.
    NatsKey {
        /// Where the seed goes (`ca.replication.nats_seed`).
        out: PathBuf,
    },
    /// A certificate and key for this signer's nats-server (TLS on the
    /// cable): the key to `key` (mode 0600), the certificate to `cert`;
    /// neither replaces a file.
    NatsTls {
        /// This signer's id (the certificate's common name).
        signer_id: String,
        /// Where the certificate goes (the server's `tls.cert_file`; this
        /// signer's `ca.replication.tls_cert`, the twin's `peer_tls_cert`).
        cert: PathBuf,
        /// Where the private key goes (the server's `tls.key_file`).
        key: PathBuf,
        /// The names and addresses the twin reaches this server by.
        hosts: Vec<String>,
    },
    /// Checks that certificate `cert` belongs to configured key `key`.
    Import {
        /// Configured key name.
        key: String,
        /// The certificate (PEM or DER).
        cert: PathBuf,
    },
}

impl Step {
    /// The subject the step writes into a certificate or CSR, if any.
    fn subject(&self) -> Option<&str> {
        match self {
            Step::SelfSign { subject, .. }
            | Step::Intermediate { subject, .. }
            | Step::Csr { subject, .. } => Some(subject),
            _ => None,
        }
    }

    /// The files the step writes (`ca` names the OpenPGP certificate's).
    fn outputs<'a>(&'a self, ca: &'a CaConfig) -> Vec<&'a Path> {
        match self {
            Step::SelfSign { out, .. }
            | Step::Intermediate { out, .. }
            | Step::Csr { out, .. }
            | Step::PublicKey { out, .. }
            | Step::NatsKey { out } => vec![out],
            Step::NatsTls { cert, key, .. } => vec![cert, key],
            Step::Openpgp { .. } => ca
                .openpgp
                .as_ref()
                .map(|o| vec![o.certificate.as_path()])
                .unwrap_or_default(),
            Step::GenerateKey { .. } | Step::Import { .. } => Vec::new(),
        }
    }

    /// The step's name in the audit log.
    pub fn action(&self) -> &'static str {
        match self {
            Step::GenerateKey { .. } => "generate-key",
            Step::SelfSign { .. } => "self-sign",
            Step::Intermediate { .. } => "intermediate",
            Step::Csr { .. } => "csr",
            Step::Openpgp { .. } => "openpgp",
            Step::PublicKey { .. } => "public-key",
            Step::NatsKey { .. } => "nats-key",
            Step::NatsTls { .. } => "nats-tls",
            Step::Import { .. } => "import",
        }
    }
}

/// An intermediate's extensions beyond a CA's own: what the TLS Baseline
/// Requirements ask of a TLS issuing CA (7.1.2.6: extKeyUsage,
/// certificatePolicies, authorityInformationAccess).
#[derive(Debug, Clone, Default)]
pub struct IntermediateExtras {
    /// extKeyUsage.
    pub eku: Vec<signer_x509::profile::Eku>,
    /// certificatePolicies (OIDs).
    pub policies: Vec<String>,
    /// OCSP URLs.
    pub ocsp_urls: Vec<String>,
    /// CA issuer URLs.
    pub ca_issuers_urls: Vec<String>,
}

/// Why a step did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CeremonyError {
    /// The audit log (the repository) could not be opened: nothing was done.
    #[error("{0} (the audit log is needed for set-up; is signerd running?)")]
    AuditLog(#[source] CaError),
    /// The step failed (recorded in the audit log as failed).
    #[error("{0}")]
    Failed(String),
}

/// Parses a subject written by RFC 4514's rules (`CN=Example Root,O=Example`:
/// the most specific first, `\,` for a comma in a value) into pairs in
/// encoding order.
pub fn parse_subject(text: &str) -> Result<Vec<(String, String)>, String> {
    signer_x509::name::parse_rfc4514(text).map_err(|e| format!("--subject: {e}"))
}

/// The configured CA `name` with its certificate, checked against its key.
pub fn ca_signer(
    ca: &CaConfig,
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

/// Runs a step with its audit record: opens the audit log first (a step that
/// cannot be recorded is not performed), performs the step, and records its
/// outcome, failures included. `say` gets the lines to show the operator.
pub fn run(
    step: Step,
    ca: &CaConfig,
    signer_id: &str,
    now: i64,
    say: &mut dyn FnMut(&str),
) -> Result<(), CeremonyError> {
    let repo = open_repository(ca, signer_id).map_err(CeremonyError::AuditLog)?;
    let action = step.action();
    let result = perform(step, ca, &repo, now, say);
    let entry = match &result {
        Ok(entry) => entry.clone(),
        Err(e) => AuditEntry::new("setup", action, "failed").fact("message", e.clone()),
    };
    repo.audit(entry);
    repo.close();
    result.map(|_| ()).map_err(CeremonyError::Failed)
}

fn backend(ca: &CaConfig) -> Result<std::sync::Arc<dyn KeyGenerator>, String> {
    signer_hsm::open(&ca.hsm, ca.key_specs(), 1, None).map_err(|e| e.to_string())
}

/// Whether a file can be made at `path`: its directory exists and takes a
/// new file (tried with a probe file, removed again).
fn check_writable(path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let refuse = |why: String| {
        Err(format!(
            "{}: {why}; nothing was signed or generated: create the directory (e.g. install -d -m 0755 {}) or choose another path",
            dir.display(),
            dir.display()
        ))
    };
    if !dir.is_dir() {
        return refuse("no such directory".into());
    }
    let probe = dir.join(format!(".signerd-write-check-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => refuse(format!("cannot write there ({e})")),
    }
}

fn write_out(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Records a CA certificate `issuer` signed (an intermediate) in the
/// repository like any issued certificate; returns its serial (hex).
fn record_ca_certificate(
    repo: &signer_repository::Repository,
    issuer: &str,
    der: &[u8],
    now: i64,
) -> Result<String, String> {
    use der::Decode;
    let cert = x509_cert::Certificate::from_der(der).map_err(|e| e.to_string())?;
    let tbs = cert.tbs_certificate();
    let serial = tbs.serial_number().as_bytes().to_vec();
    let serial_hex = hex::encode(&serial);
    let secs = |t: &x509_cert::time::Time| t.to_unix_duration().as_secs() as i64;
    let subject = tbs.subject().to_string();
    let digest = {
        use sha2::Digest;
        sha2::Sha256::digest(der).to_vec()
    };
    repo.record_issuance(signer_repository::CertRecord {
        issuer: issuer.to_string(),
        serial,
        der: der.to_vec(),
        profile: "ca".into(),
        request_id: format!("setup-intermediate-{serial_hex}"),
        request_digest: digest,
        subject,
        not_before: secs(&tbs.validity().not_before),
        not_after: secs(&tbs.validity().not_after),
        issued_at_ms: now.saturating_mul(1000),
        signer_id: repo.origin().to_string(),
    })
    .map_err(|e| format!("recording the certificate: {e}"))?;
    Ok(serial_hex)
}

/// Writes a public file that must not replace another.
fn write_new(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes a secret: a new file only, readable by its owner alone.
fn write_secret(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!(
                "{} exists; a credential is never replaced in place",
                path.display()
            )
        } else {
            format!("{}: {e}", path.display())
        }
    })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Performs a step without recording it; returns its audit entry.
pub fn perform(
    step: Step,
    ca: &CaConfig,
    repo: &signer_repository::Repository,
    now: i64,
    say: &mut dyn FnMut(&str),
) -> Result<AuditEntry, String> {
    let ok = |action: &str| AuditEntry::new("setup", action, "ok");
    // What can be checked before the token is used: the subject, and that
    // every output file can be written (a key signed with and no file to
    // show for it is a ceremony to repeat).
    if let Some(subject) = step.subject() {
        parse_subject(subject)?;
    }
    for out in step.outputs(ca) {
        check_writable(out)?;
    }
    Ok(match step {
        Step::GenerateKey {
            label,
            kind,
            dry_run,
        } => {
            let backend = backend(ca)?;
            if dry_run {
                backend
                    .check_label_free(&label)
                    .map_err(|e| e.to_string())?;
                say(&format!("dry run: the token accepts the PIN and has no object labelled {label}; nothing generated"));
                return Ok(ok("generate-key (dry run)").fact("label", label));
            }
            let (public, id) = backend.generate(kind, &label).map_err(|e| e.to_string())?;
            say(&format!("generated {} key on the token", public.kind));
            say(&format!("label  {label}"));
            say(&format!("id     {}", hex::encode(&id)));
            say(&format!(
                "add to ca.keys:  - {{name: {label}, label: {label}, id: {}}}",
                hex::encode(&id)
            ));
            ok("generate-key")
                .fact("label", label)
                .fact("id", hex::encode(&id))
                .fact("key_type", public.kind.to_string())
        }
        Step::SelfSign {
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
                now,
                scheme: None,
                crl_urls: Vec::new(),
                eku: Vec::new(),
                policies: Vec::new(),
                ocsp_urls: Vec::new(),
                ca_issuers_urls: Vec::new(),
            };
            let der = self_signed_root(&*backend, &key, &spec).map_err(|e| e.to_string())?;
            let pem = cert_pem(&der);
            write_out(&out, &pem)?;
            say(&format!(
                "wrote self-signed root for key {key} to {}",
                out.display()
            ));
            ok("self-sign")
                .fact("key", key)
                .fact("subject", subject)
                .fact("certificate_sha256", sha256_hex(pem.as_bytes()))
                .fact("out", out.display().to_string())
        }
        Step::Intermediate {
            issuer,
            key,
            subject,
            days,
            path_len,
            crl_urls,
            extras,
            out,
        } => {
            let backend = backend(ca)?;
            let parent = ca_signer(ca, &*backend, &issuer)?;
            let spec = CaSpec {
                subject: parse_subject(&subject)?,
                days,
                path_len: Some(path_len),
                serial_prefix: ca.serial_prefix,
                now,
                scheme: None,
                crl_urls,
                eku: extras.eku,
                policies: extras.policies,
                ocsp_urls: extras.ocsp_urls,
                ca_issuers_urls: extras.ca_issuers_urls,
            };
            let der = intermediate(&*backend, &parent, &key, &spec).map_err(|e| e.to_string())?;
            // Recorded as the issuer's certificate before it is written out:
            // the root can revoke it and lists it on its CRL.
            let serial = record_ca_certificate(repo, &issuer, &der, now)?;
            say(&format!(
                "recorded as {issuer}'s certificate, serial {serial}"
            ));
            let pem = cert_pem(&der);
            write_out(&out, &pem)?;
            say(&format!(
                "wrote intermediate for key {key}, issued by {issuer}, to {}",
                out.display()
            ));
            ok("intermediate")
                .fact("key", key)
                .fact("issuer", issuer)
                .fact("subject", subject)
                .fact("certificate_sha256", sha256_hex(pem.as_bytes()))
                .fact("serial", serial)
                .fact("out", out.display().to_string())
        }
        Step::Csr { key, subject, out } => {
            let backend = backend(ca)?;
            let der =
                ca_csr(&*backend, &key, &parse_subject(&subject)?).map_err(|e| e.to_string())?;
            let pem =
                der::pem::encode_string("CERTIFICATE REQUEST", der::pem::LineEnding::LF, &der)
                    .map_err(|e| e.to_string())?;
            write_out(&out, &pem)?;
            say(&format!("wrote CSR for key {key} to {}", out.display()));
            ok("csr")
                .fact("key", key)
                .fact("subject", subject)
                .fact("csr_sha256", sha256_hex(pem.as_bytes()))
        }
        Step::Openpgp { force } => {
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
            say(&format!(
                "wrote OpenPGP CA certificate {fingerprint} ({}, created {}) to {}",
                public.kind,
                o.created,
                o.certificate.display()
            ));
            ok("openpgp")
                .fact("key", o.key.clone())
                .fact("user_id", o.user_id.clone())
                .fact("created", o.created.clone())
                .fact("fingerprint", fingerprint)
                .fact("certificate_sha256", sha256_hex(armored.as_bytes()))
        }
        Step::PublicKey { key, out } => {
            let backend = backend(ca)?;
            let public = backend.public_key(&key).map_err(|e| e.to_string())?;
            let pem = public.to_pem();
            write_out(&out, &pem)?;
            say(&format!(
                "wrote the public key of {key} ({}) to {}; SHA-256 of the key {}",
                public.kind,
                out.display(),
                sha256_hex(&public.spki_der)
            ));
            ok("public-key")
                .fact("key", key)
                .fact("kind", public.kind.to_string())
                .fact("spki_sha256", sha256_hex(&public.spki_der))
                .fact("out", out.display().to_string())
        }
        Step::NatsKey { out } => {
            let (seed, public) = signer_replication::new_nats_user();
            write_secret(&out, &seed)?;
            say(&format!(
                "wrote the NATS nkey seed to {} (mode 0600)",
                out.display()
            ));
            say(&format!("public key {public}"));
            say("list it in both nats-servers' authorization blocks (configs/nats-server.conf)");
            ok("nats-key")
                .fact("public_key", public)
                .fact("out", out.display().to_string())
        }
        Step::NatsTls {
            signer_id,
            cert,
            key,
            hosts,
        } => {
            if hosts.is_empty() {
                return Err(
                    "name at least one --host: the address the twin reaches this nats-server by"
                        .into(),
                );
            }
            let made = signer_replication::tls::new_server_certificate(
                &format!("{signer_id} nats-server"),
                &hosts,
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(now.max(0) as u64),
            )?;
            if cert.exists() {
                return Err(format!(
                    "{} exists; a credential is never replaced in place",
                    cert.display()
                ));
            }
            write_secret(&key, made.key_pem.trim_end())?;
            write_new(&cert, &made.cert_pem)?;
            let pinned = signer_replication::tls::PinnedServer::read(&cert)
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            let fingerprint = pinned.sha256_hex();
            say(&format!(
                "wrote the nats-server certificate to {} and its key to {} (mode 0600)",
                cert.display(),
                key.display()
            ));
            say(&format!("certificate sha256 {fingerprint}"));
            say(&format!(
                "valid for 127.0.0.1, localhost, {} for {} days",
                hosts.join(", "),
                signer_replication::tls::VALIDITY_DAYS
            ));
            say("the certificate goes to the twin (its ca.replication.peer_tls_cert); the key stays here");
            ok("nats-tls")
                .fact("certificate_sha256", fingerprint)
                .fact("hosts", hosts.join(","))
                .fact("certificate", cert.display().to_string())
        }
        Step::Import { key, cert } => {
            let backend = backend(ca)?;
            let bytes = std::fs::read(&cert).map_err(|e| format!("{}: {e}", cert.display()))?;
            let der = signer_x509::cert_der(&bytes)?;
            let signer =
                CaSigner::new("import", &key, der.clone(), &*backend).map_err(|e| e.to_string())?;
            say(&format!(
                "{} matches key {key} ({}); valid until {}",
                cert.display(),
                signer.kind,
                signer_x509::time::rfc3339(signer.not_after)
            ));
            // Issued by one of this signer's CAs (signed elsewhere with a copy
            // of the key, or before this repository existed): recorded as that
            // CA's certificate, so that CA can revoke it and list it.
            let issuer = ca.cas.iter().find(|entry| {
                std::fs::read(&entry.certificate)
                    .ok()
                    .and_then(|b| signer_x509::cert_der(&b).ok())
                    .is_some_and(|ca_der| {
                        ca_der != der && signer_x509::verify_issued(&der, &ca_der).is_ok()
                    })
            });
            let entry = ok("import")
                .fact("key", key)
                .fact("certificate", cert.display().to_string())
                .fact("certificate_sha256", sha256_hex(&bytes));
            match issuer {
                Some(entry_ca) => {
                    let serial = record_ca_certificate(repo, &entry_ca.name, &der, now)?;
                    say(&format!(
                        "recorded as {}'s certificate, serial {serial} (revocable by {} like any certificate it issued)",
                        entry_ca.name, entry_ca.name
                    ));
                    entry
                        .fact("issuer", entry_ca.name.clone())
                        .fact("serial", serial)
                }
                None => {
                    say("its issuer is not a CA of this signer: not recorded here (the CA that issued it keeps that record)");
                    entry
                }
            }
        }
    })
}
