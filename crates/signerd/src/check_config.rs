//! `signerd check-config`: the configuration, the token and the repository
//! checked as startup would, with a summary of what would be used.

use std::path::Path;
use std::process::ExitCode;

use signer_repository::Repository;

use crate::exit::{ca_exit, repo_exit, EXIT_CONFIG};
use crate::Config;

/// Runs `check-config`.
pub fn run(config: &Path, offline: bool) -> ExitCode {
    let c = match crate::config::load_config(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("signerd: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let summary = summary(&c);
    let show = |headline: &str, more: &[String]| {
        say!("{headline}");
        for line in summary.iter().chain(more) {
            say!("{line}");
        }
    };
    let Some(ca) = c.ca.as_ref().filter(|_| !offline) else {
        show(
            if offline && c.ca.is_some() {
                "configuration OK (the file only: the token and the repository were not opened)"
            } else {
                "configuration OK"
            },
            &[],
        );
        return ExitCode::SUCCESS;
    };
    // Everything is checked before anything is called OK.
    match check_token(ca).and_then(|lines| Ok((lines, check_repository(&c.signer_id, ca)?))) {
        Ok((lines, repository)) => {
            let more: Vec<String> = lines.into_iter().chain(repository).collect();
            show("configuration OK", &more);
            ExitCode::SUCCESS
        }
        Err((code, e)) => {
            eprintln!("signerd: {e}");
            ExitCode::from(code)
        }
    }
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
        let signer = signer_ca::ceremony::ca_signer(ca, &*backend, &entry.name)
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
    if let Some(r) = &ca.replication {
        let peer = r.peer_public_key().map_err(|e| (1, e))?;
        let own = backend
            .public_key(&r.key)
            .map_err(|e| (code(&e), format!("ca.replication.key ({}): {e}", r.key)))?;
        if own == peer {
            return Err((
                1,
                format!(
                    "ca.replication.peer_key {} is this signer's own replication key ({}): each twin needs its own key and the other's public key",
                    r.peer_key.display(),
                    r.key
                ),
            ));
        }
        let fingerprint = |k: &signer_hsm::PublicKey| {
            use sha2::Digest;
            hex::encode(&sha2::Sha256::digest(&k.spki_der)[..8])
        };
        match r.nats_user().map_err(|e| (1, e))? {
            Some((_, public)) => lines.push(format!("replication    NATS user {public}")),
            None => lines.push(
                "replication    no NATS credentials (ca.replication.nats_seed): only for servers that require none".into(),
            ),
        }
        match r.tls(Some(std::time::SystemTime::now())).map_err(|e| (1, e))? {
            Some((own, twin)) => {
                let until = |p: &signer_replication::tls::PinnedServer| {
                    p.not_after()
                        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                        .unwrap_or_else(|e| e)
                };
                lines.push(format!(
                    "replication    TLS to {} with certificate {} (until {}); to {} with the twin's {} (until {})",
                    r.local,
                    &own.sha256_hex()[..16],
                    until(&own),
                    r.peer,
                    &twin.sha256_hex()[..16],
                    until(&twin)
                ));
            }
            None => lines.push(
                "replication    no TLS (ca.replication.tls_cert, peer_tls_cert): events and credentials cross the cable in clear".into(),
            ),
        }
        lines.push(format!(
            "replication    seals with {} ({}, {}); twin {}'s key {} ({}, {})",
            r.key,
            own.kind,
            fingerprint(&own),
            r.peer_id,
            r.peer_key.display(),
            peer.kind,
            fingerprint(&peer)
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

/// A configuration value as it is written in the YAML (`ServerAuth` →
/// `server_auth`).
fn yaml_word(value: impl std::fmt::Debug) -> String {
    let mut out = String::new();
    for (i, ch) in format!("{value:?}").chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

/// What the file says, for people: one line per setting.
fn summary(c: &Config) -> Vec<String> {
    let mut out = Vec::new();
    out.push(format!("signer_id      {}", c.signer_id));
    out.push(format!(
        "link           {} at {} baud, {} data bits, parity {}, {} stop bit(s), flow control {}",
        c.link.device.display(),
        c.link.baud,
        c.link.data_bits,
        yaml_word(c.link.parity),
        c.link.stop_bits,
        yaml_word(c.link.flow_control)
    ));
    out.push(format!(
        "protocol       max_frame {} bytes, {} in flight, {} workers, response cache {} entries / {} MiB",
        c.protocol.max_frame,
        c.protocol.max_in_flight,
        c.protocol.workers,
        c.protocol.response_cache_entries,
        c.protocol.response_cache_mib
    ));
    match &c.ca {
        None => out.push("ca             none (health only)".into()),
        Some(ca) => {
            out.push(format!(
                "hsm            {}, PIN from {}",
                ca.hsm.describe(),
                ca.hsm.pin().describe()
            ));
            for k in &ca.keys {
                out.push(format!(
                    "key            {} (label {}, id {})",
                    k.name,
                    k.label.as_deref().unwrap_or("-"),
                    k.id.as_deref().unwrap_or("-")
                ));
            }
            for a in &ca.cas {
                out.push(format!(
                    "ca             {} with key {}, certificate {}",
                    a.name,
                    a.key,
                    a.certificate.display()
                ));
            }
            for (name, p) in &ca.profiles {
                out.push(format!(
                    "profile        {name}: issuer {}, {} days default, {} max, extended key usage {}",
                    p.issuer,
                    p.default_days,
                    p.max_days,
                    p.extended_key_usage
                        .iter()
                        .map(yaml_word)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            out.push(format!("repository     {}", ca.repository.display()));
            match &ca.replication {
                None => out.push("replication    none (single signer)".into()),
                Some(r) => out.push(format!(
                    "replication    twin {} via {}; own nats-server {}",
                    r.peer_id, r.peer, r.local
                )),
            }
            out.push(format!("serial prefix  0x{:02x}", ca.serial_prefix));
        }
    }
    out
}
