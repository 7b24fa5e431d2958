//! What a client checks before it uses an answer: a certificate is for the
//! key it asked about and carries a valid signature of the issuer it names.
//! The CLI and a web application linking this library make the same checks,
//! so a certificate damaged anywhere between the HSM and the client is
//! never written out as if it were good.

use der::{Decode, Encode};
use signer_protocol::msg;

use crate::ClientError;

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
