//! TLS on the NATS connections. Each nats-server has a certificate of its own
//! made in the pair ceremony (`signerd setup nats-tls`); a signer trusts
//! exactly that certificate for that server (it is pinned: nothing from the
//! system's store), so a host on the cable that is not the twin's
//! nats-server cannot take its place, and nothing crosses the cable in clear.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

/// How long a certificate made by [`new_server_certificate`] is valid.
pub const VALIDITY_DAYS: u32 = 3650;

/// A nats-server's certificate and private key, PEM.
pub struct ServerCertificate {
    /// The self-signed certificate: the server's `tls.cert_file`, and what
    /// both signers pin for that server.
    pub cert_pem: String,
    /// Its private key (PKCS#8): the server's `tls.key_file`.
    pub key_pem: String,
}

/// A self-signed ECDSA P-256 certificate for a nats-server reached as any
/// of `hosts` (DNS names or IP addresses; 127.0.0.1 and localhost are always
/// added for the signer on the same host), valid from `now` for
/// [`VALIDITY_DAYS`].
pub fn new_server_certificate(
    server_name: &str,
    hosts: &[String],
    now: SystemTime,
) -> Result<ServerCertificate, String> {
    let mut names: Vec<String> = vec!["127.0.0.1".into(), "localhost".into()];
    for h in hosts {
        let h = h.trim();
        if h.is_empty() {
            return Err("an empty host name".into());
        }
        if !names.iter().any(|n| n.eq_ignore_ascii_case(h)) {
            names.push(h.to_string());
        }
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("cannot make a key: {e}"))?;
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|e| format!("host names: {e}"))?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, server_name);
    params.distinguished_name = dn;
    let since = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the clock is before 1970".to_string())?;
    let start = time::OffsetDateTime::from_unix_timestamp(since.as_secs() as i64)
        .map_err(|e| format!("the clock: {e}"))?;
    params.not_before = start;
    params.not_after = start + time::Duration::days(VALIDITY_DAYS.into());
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("cannot sign the certificate: {e}"))?;
    Ok(ServerCertificate {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A pinned nats-server certificate, read from its PEM file.
#[derive(Clone)]
pub struct PinnedServer {
    der: CertificateDer<'static>,
    verifier: Arc<rustls::client::WebPkiServerVerifier>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl std::fmt::Debug for PinnedServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PinnedServer({})", self.sha256_hex())
    }
}

impl PinnedServer {
    /// Reads the one certificate in `path` (PEM).
    pub fn read(path: &Path) -> Result<PinnedServer, String> {
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        let mut certs = Vec::new();
        for c in CertificateDer::pem_slice_iter(&bytes) {
            certs.push(c.map_err(|e| format!("not a PEM certificate: {e}"))?);
        }
        let der = match certs.len() {
            1 => certs.remove(0),
            0 => return Err("no PEM certificate in it".into()),
            n => {
                return Err(format!(
                    "{n} certificates in it: expected exactly the nats-server's one"
                ))
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(der.clone())
            .map_err(|e| format!("not a usable certificate: {e}"))?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| format!("not a usable certificate: {e}"))?;
        Ok(PinnedServer {
            der,
            verifier,
            provider,
        })
    }

    /// SHA-256 of the certificate, hex (what the runbook compares on both hosts).
    pub fn sha256_hex(&self) -> String {
        Sha256::digest(self.der.as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The end of its validity.
    pub fn not_after(&self) -> Result<SystemTime, String> {
        use der::Decode;
        let cert = x509_cert::Certificate::from_der(self.der.as_ref())
            .map_err(|e| format!("not a certificate: {e}"))?;
        Ok(cert.tbs_certificate().validity().not_after.to_system_time())
    }

    /// The start of its validity.
    pub fn not_before(&self) -> Result<SystemTime, String> {
        use der::Decode;
        let cert = x509_cert::Certificate::from_der(self.der.as_ref())
            .map_err(|e| format!("not a certificate: {e}"))?;
        Ok(cert
            .tbs_certificate()
            .validity()
            .not_before
            .to_system_time())
    }

    /// Checks that a TLS connection to `host` (as in a `nats://host:port`
    /// address) at `now` would accept the server presenting this
    /// certificate: the name is in it and it is valid then. With `now`
    /// `None`, only the name is checked.
    pub fn check(&self, host: &str, now: Option<SystemTime>) -> Result<(), String> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host:?} is not a host name: {e}"))?;
        let now = match now {
            Some(t) => t,
            None => self.not_before()? + Duration::from_secs(1),
        };
        let secs = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        self.verifier
            .verify_server_cert(
                &self.der,
                &[],
                &name,
                &[],
                UnixTime::since_unix_epoch(Duration::from_secs(secs)),
            )
            .map(|_| ())
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
                | rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForNameContext { .. },
                ) => format!("not made for {host} (make it with --host {host})"),
                other => other.to_string(),
            })
    }

    /// A client configuration that trusts this certificate and nothing else.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.der.clone())
            .map_err(|e| format!("not a usable certificate: {e}"))?;
        Ok(
            rustls::ClientConfig::builder_with_provider(self.provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

/// The host of a `nats://host:port` or `tls://host:port` address.
pub fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    if let Some(v6) = rest.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    rest.split([':', '/']).next().unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_made_certificate_is_valid_for_its_hosts_only() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let made = new_server_certificate(
            "signer-a",
            &["10.0.0.1".into(), "signer-a.cable".into()],
            now,
        )
        .unwrap();
        let path = dir.path().join("c.pem");
        std::fs::write(&path, &made.cert_pem).unwrap();
        let pinned = PinnedServer::read(&path).unwrap();
        for host in ["127.0.0.1", "localhost", "10.0.0.1", "signer-a.cable"] {
            pinned.check(host, Some(now)).unwrap();
        }
        let e = pinned.check("10.0.0.2", None).unwrap_err();
        assert!(e.contains("not made for 10.0.0.2"), "{e}");
        let later = now + Duration::from_secs(u64::from(VALIDITY_DAYS + 1) * 86400);
        let e = pinned.check("10.0.0.1", Some(later)).unwrap_err();
        assert!(e.to_lowercase().contains("expired"), "{e}");
        assert!(pinned.not_after().unwrap() > now);
        assert!(made.key_pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn what_is_not_one_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.pem");
        std::fs::write(&path, "hello").unwrap();
        assert!(PinnedServer::read(&path)
            .unwrap_err()
            .contains("no PEM certificate"));
        let one = new_server_certificate("a", &[], SystemTime::now())
            .unwrap()
            .cert_pem;
        std::fs::write(&path, format!("{one}{one}")).unwrap();
        assert!(PinnedServer::read(&path)
            .unwrap_err()
            .contains("2 certificates"));
        assert!(PinnedServer::read(&dir.path().join("absent")).is_err());
    }

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(url_host("nats://127.0.0.1:4222"), "127.0.0.1");
        assert_eq!(url_host("tls://signer-b.cable:4222"), "signer-b.cable");
        assert_eq!(url_host("nats://[fe80::1]:4222"), "fe80::1");
        assert_eq!(url_host("nats://u:p@host"), "host");
    }
}
