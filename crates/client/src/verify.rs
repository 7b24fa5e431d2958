//! What a client checks before it uses an answer: a certificate is for the
//! key it asked about and carries a valid signature of the issuer it names;
//! a CRL matches its announced digest and verifies with its issuer's
//! certificate; an OpenPGP certification is by the CA key. The CLI and a
//! web application linking this library make the same checks (the
//! `*_checked` calls), so an answer damaged anywhere between the HSM and
//! the client is never used as if it were good.

use der::{Decode, Encode};
use sha2::Digest;
use signer_protocol::{calls, msg, Status};

use crate::{Calls, ClientError};

/// Issues a certificate and checks it before returning it: it certifies
/// the CSR's key and verifies with the certificate of the CA the reply
/// names (fetched with `ca_certs`).
pub fn sign_checked(
    client: &impl Calls,
    request: &msg::SignX509,
) -> Result<msg::SignX509Reply, ClientError> {
    let reply = client.request::<calls::SignX509>(request)?;
    let cas = client.request::<calls::CaCerts>(&msg::Empty {})?;
    check_issued(&reply, &request.csr, &cas)?;
    Ok(reply)
}

/// A CRL fetched and checked.
#[derive(Debug, Clone)]
pub struct FetchedCrl {
    /// The signer's answer (for a difference, the last one).
    pub reply: msg::FetchCrlReply,
    /// The new CRL (DER), checked; `None` when the copy held is current.
    pub der: Option<Vec<u8>>,
    /// How it came: "unchanged", "full", "difference" or "full after a failed rebuild".
    pub via: &'static str,
}

/// The CRL number of a DER CRL, if it has one.
pub fn crl_number(der: &[u8]) -> Option<Vec<u8>> {
    let crl = <x509_cert::crl::CertificateList>::from_der(der).ok()?;
    let exts = crl.tbs_cert_list.crl_extensions.as_ref()?;
    let ext = exts.iter().find(|e| e.extn_id.to_string() == "2.5.29.20")?;
    let n = der::asn1::Uint::from_der(ext.extn_value.as_bytes()).ok()?;
    Some(n.as_bytes().to_vec())
}

/// Fetches the current CRL of `issuer` (of its shard `shard`, if given),
/// as a difference against `have` (the copy held, if any) where the signer
/// can, and checks it: the bytes match the announced SHA-256, the signature
/// verifies with `issuer_cert` (DER; fetched with `ca_certs` when not
/// given), and a shard's CRL names a shard (its issuing distribution
/// point). A copy the signer does not know, or a difference that does not
/// rebuild the signer's bytes, is answered by fetching the whole CRL.
pub fn fetch_crl_checked(
    client: &impl Calls,
    issuer: &str,
    shard: Option<u8>,
    have: Option<&[u8]>,
    issuer_cert: Option<&[u8]>,
) -> Result<FetchedCrl, ClientError> {
    let request = msg::FetchCrl {
        issuer: issuer.to_string(),
        have_number: have.and_then(crl_number),
        have_sha256: have.map(|d| sha2::Sha256::digest(d).to_vec()),
        shard,
    };
    let whole = msg::FetchCrl {
        have_number: None,
        have_sha256: None,
        ..request.clone()
    };
    let mut reply = match client.request::<calls::FetchCrl>(&request) {
        Err(e) if e.status() == Some(Status::UNKNOWN_CRL) => {
            client.request::<calls::FetchCrl>(&whole)?
        }
        other => other?,
    };
    let mut via = if reply.unchanged { "unchanged" } else { "full" };
    let der = match (&reply.crl, &reply.diff) {
        (Some(der), _) => Some(der.clone()),
        (None, Some(_)) => match crate::rebuild_crl(have.unwrap_or_default(), &reply) {
            Some(der) => {
                via = "difference";
                Some(der)
            }
            None => {
                reply = client.request::<calls::FetchCrl>(&whole)?;
                via = "full after a failed rebuild";
                reply.crl.clone()
            }
        },
        (None, None) => None,
    };
    if let Some(der) = &der {
        if sha2::Sha256::digest(der).as_slice() != reply.sha256.as_slice() {
            return Err(ClientError::Protocol(
                "the CRL does not match its announced SHA-256".into(),
            ));
        }
        let cert = match issuer_cert {
            Some(cert) => cert.to_vec(),
            None => client
                .request::<calls::CaCerts>(&msg::Empty {})?
                .cas
                .into_iter()
                .find(|c| c.name == issuer)
                .map(|c| c.certificate)
                .ok_or_else(|| {
                    ClientError::Protocol(format!("the signer has no CA named {issuer}"))
                })?,
        };
        signer_x509::crl::verify(der, &cert).map_err(|e| {
            ClientError::Protocol(format!("the CRL's signature does not verify: {e}"))
        })?;
        if let Some(shard) = shard {
            let (header, _) = signer_x509::crl::parse(der).map_err(ClientError::Protocol)?;
            if header.shard_url.is_none() {
                return Err(ClientError::Protocol(format!(
                    "the CRL of shard {shard} names no shard (no issuing distribution point)"
                )));
            }
        }
    }
    Ok(FetchedCrl { reply, der, via })
}

/// Certifies user IDs of an OpenPGP key and checks the answer: every
/// certification verifies with the CA's key (`ca_cert`, an OpenPGP
/// certificate; fetched with `openpgp_ca` when not given) and the key
/// returned is the one sent.
pub fn certify_checked(
    client: &impl Calls,
    request: &msg::CertifyOpenpgp,
    ca_cert: Option<&[u8]>,
) -> Result<msg::CertifyOpenpgpReply, ClientError> {
    let ca = match ca_cert {
        Some(cert) => cert.to_vec(),
        None => {
            client
                .request::<calls::OpenpgpCa>(&msg::Empty {})?
                .certificate
        }
    };
    let reply = client.request::<calls::CertifyOpenpgp>(request)?;
    let certifications: Vec<(String, Vec<u8>)> = reply
        .certifications
        .iter()
        .map(|c| (c.user_id.clone(), c.signature.clone()))
        .collect();
    signer_openpgp::verify_certified(&reply.key, &reply.fingerprint, &ca, &certifications)
        .map_err(|e| {
            ClientError::Protocol(format!("the signer's answer does not check out: {e}"))
        })?;
    Ok(reply)
}

/// The SubjectPublicKeyInfo (DER) of a CSR given as PEM or DER.
pub fn csr_spki(csr: &[u8]) -> Option<Vec<u8>> {
    let start = csr
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(0);
    let der_bytes = if csr[start..].starts_with(b"-----BEGIN") {
        der::pem::decode_vec(&csr[start..]).ok()?.1
    } else {
        csr.to_vec()
    };
    let req = x509_cert::request::CertReq::from_der(&der_bytes).ok()?;
    req.info.public_key.to_der().ok()
}

/// Checks a `sign_x509` answer: the certificate parses, certifies the key
/// of the CSR that was sent, and verifies with the certificate of the CA
/// the reply names (from `ca_certs`).
pub fn check_issued(
    reply: &msg::SignX509Reply,
    csr: &[u8],
    cas: &msg::CaCertsReply,
) -> Result<(), ClientError> {
    let parsed = x509_cert::Certificate::from_der(&reply.certificate).map_err(|e| {
        ClientError::Protocol(format!("the signer's certificate does not parse: {e}"))
    })?;
    let spki = parsed
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .ok();
    if spki.is_none() || spki != csr_spki(csr) {
        return Err(ClientError::Protocol(
            "the signer's certificate is not for the CSR's key".into(),
        ));
    }
    let ca = cas
        .cas
        .iter()
        .find(|c| c.name == reply.issuer)
        .ok_or_else(|| {
            ClientError::Protocol(format!(
                "the signer names issuer {} but has no CA certificate of that name",
                reply.issuer
            ))
        })?;
    signer_x509::verify_issued(&reply.certificate, &ca.certificate).map_err(|e| {
        ClientError::Protocol(format!(
            "the signer's certificate fails its issuer {}: {e}",
            reply.issuer
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSR: &[u8] = include_bytes!("../tests/fixtures/host.csr");
    /// Self-signed with the CSR's key: its own issuer.
    const SAME_KEY: &[u8] = include_bytes!("../tests/fixtures/same-key.der");
    /// Self-signed with another key, same names.
    const OTHER_KEY: &[u8] = include_bytes!("../tests/fixtures/other-key.der");

    fn reply(cert: &[u8]) -> msg::SignX509Reply {
        msg::SignX509Reply {
            certificate: cert.to_vec(),
            serial: vec![1],
            issuer: "ca".into(),
            not_before: 0,
            not_after: 0,
            replayed: false,
        }
    }

    fn cas(cert: &[u8]) -> msg::CaCertsReply {
        msg::CaCertsReply {
            cas: vec![msg::CaCert {
                name: "ca".into(),
                certificate: cert.to_vec(),
                crl_shards: None,
            }],
        }
    }

    #[test]
    fn only_a_certificate_for_the_csr_key_signed_by_its_issuer_is_accepted() {
        assert!(check_issued(&reply(SAME_KEY), CSR, &cas(SAME_KEY)).is_ok());
        assert!(check_issued(&reply(OTHER_KEY), CSR, &cas(OTHER_KEY)).is_err());
        assert!(check_issued(&reply(b"not a certificate"), CSR, &cas(SAME_KEY)).is_err());
        let mut truncated = SAME_KEY.to_vec();
        truncated.truncate(truncated.len() - 10);
        assert!(check_issued(&reply(&truncated), CSR, &cas(SAME_KEY)).is_err());
        // Same names, another issuer key: the signature does not verify.
        let err = check_issued(&reply(SAME_KEY), CSR, &cas(OTHER_KEY)).unwrap_err();
        assert!(err.to_string().contains("fails its issuer"), "{err}");
        // One flipped bit in the signature.
        let mut flipped = SAME_KEY.to_vec();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x01;
        assert!(check_issued(&reply(&flipped), CSR, &cas(SAME_KEY)).is_err());
        // An issuer the signer does not list.
        let mut other = reply(SAME_KEY);
        other.issuer = "elsewhere".into();
        assert!(check_issued(&other, CSR, &cas(SAME_KEY)).is_err());
    }
}
