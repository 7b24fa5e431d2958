//! Operator set-up: CA certificates made with keys in the HSM.

use signer_keys::{Scheme, SigningBackend};

use crate::issue::{
    default_scheme, encode_extensions, encode_tbs, key_identifier, random_serial, sign_tbs,
    CaSigner, ExtensionSpec, IssueError, TbsSpec,
};
use crate::profile::KeyUsageBit;
use crate::{derw, name};

const CA_KEY_USAGE: &[KeyUsageBit] = &[
    KeyUsageBit::DigitalSignature,
    KeyUsageBit::KeyCertSign,
    KeyUsageBit::CrlSign,
];

/// What a CA certificate says about itself.
#[derive(Debug, Clone)]
pub struct CaSpec {
    /// Subject (attribute, value) pairs.
    pub subject: Vec<(String, String)>,
    /// Validity in days.
    pub days: u32,
    /// basicConstraints pathLenConstraint (None: unlimited).
    pub path_len: Option<u8>,
    /// Serial prefix of this signer.
    pub serial_prefix: u8,
    /// notBefore, Unix seconds.
    pub now: i64,
    /// Signature scheme (None: the default for the signing key).
    pub scheme: Option<Scheme>,
    /// CRL URLs for an intermediate.
    pub crl_urls: Vec<String>,
    /// extKeyUsage of an intermediate (the TLS Baseline Requirements ask
    /// server_auth, with client_auth at most, of a TLS issuing CA).
    pub eku: Vec<crate::profile::Eku>,
    /// certificatePolicies of an intermediate (policy OIDs).
    pub policies: Vec<String>,
    /// authorityInformationAccess of an intermediate: OCSP URLs.
    pub ocsp_urls: Vec<String>,
    /// … and CA issuer URLs (where the issuer's certificate is).
    pub ca_issuers_urls: Vec<String>,
}

/// The extensions of a CA certificate: CA key usage, basic constraints,
/// SKI, AKI (a root's names its own key), and for an intermediate what
/// `spec` asks: CRL distribution points, extKeyUsage, certificatePolicies,
/// authorityInformationAccess.
fn ca_extensions(
    spki_der: &[u8],
    spec: &CaSpec,
    aki: Option<Vec<u8>>,
) -> Result<Vec<Vec<u8>>, IssueError> {
    let ski = key_identifier(&spki_bits(spki_der)?);
    encode_extensions(&ExtensionSpec {
        ca: Some(spec.path_len),
        key_usage: CA_KEY_USAGE,
        eku: &spec.eku,
        sans: Vec::new(),
        empty_subject: false,
        aki: Some(aki.unwrap_or_else(|| ski.clone())),
        ski: Some(ski),
        crl_urls: &spec.crl_urls,
        ocsp_urls: &spec.ocsp_urls,
        ca_issuers_urls: &spec.ca_issuers_urls,
        policies: &spec.policies,
    })
}

fn spki_bits(spki_der: &[u8]) -> Result<Vec<u8>, IssueError> {
    use der::Decode;
    let spki = spki::SubjectPublicKeyInfoRef::from_der(spki_der)
        .map_err(|e| IssueError::Encoding(e.to_string()))?;
    Ok(spki.subject_public_key.raw_bytes().to_vec())
}

/// A self-signed root for the HSM key `key`.
pub fn self_signed_root(
    backend: &dyn SigningBackend,
    key: &str,
    spec: &CaSpec,
) -> Result<Vec<u8>, IssueError> {
    let public = backend.public_key(key)?;
    let scheme = spec.scheme.unwrap_or_else(|| default_scheme(public.kind));
    let subject =
        name::encode(&spec.subject).map_err(|e| IssueError::SubjectNotAllowed(e.to_string()))?;
    let extensions = ca_extensions(&public.spki_der, spec, None)?;
    let serial = random_serial(spec.serial_prefix);
    let tbs = encode_tbs(&TbsSpec {
        serial: &serial,
        scheme,
        issuer: &subject,
        not_before: spec.now,
        not_after: spec.now + i64::from(spec.days) * 86_400 - 1,
        subject: &subject,
        spki: &public.spki_der,
        extensions,
    })?;
    sign_tbs(backend, key, &public.spki_der, scheme, &tbs)
}

/// An intermediate for HSM key `child_key`, signed by `parent` on this signer.
pub fn intermediate(
    backend: &dyn SigningBackend,
    parent: &CaSigner,
    child_key: &str,
    spec: &CaSpec,
) -> Result<Vec<u8>, IssueError> {
    let public = backend.public_key(child_key)?;
    let scheme = spec.scheme.unwrap_or_else(|| default_scheme(parent.kind));
    let subject =
        name::encode(&spec.subject).map_err(|e| IssueError::SubjectNotAllowed(e.to_string()))?;
    let extensions = ca_extensions(&public.spki_der, spec, Some(parent.key_id.clone()))?;
    let serial = random_serial(spec.serial_prefix);
    let not_after = (spec.now + i64::from(spec.days) * 86_400 - 1).min(parent.not_after);
    let tbs = encode_tbs(&TbsSpec {
        serial: &serial,
        scheme,
        issuer: &parent.subject_der,
        not_before: spec.now,
        not_after,
        subject: &subject,
        spki: &public.spki_der,
        extensions,
    })?;
    sign_tbs(backend, &parent.key, &parent.spki_der, scheme, &tbs)
}

/// A PKCS#10 request for HSM key `key`, for a CA outside this signer to sign.
pub fn ca_csr(
    backend: &dyn SigningBackend,
    key: &str,
    subject: &[(String, String)],
) -> Result<Vec<u8>, IssueError> {
    let public = backend.public_key(key)?;
    let scheme = default_scheme(public.kind);
    let subject =
        name::encode(subject).map_err(|e| IssueError::SubjectNotAllowed(e.to_string()))?;
    // CertificationRequestInfo: version 0, subject, key, no attributes ([0] empty).
    let info = derw::seq(&[
        &derw::small_uint(0),
        &subject,
        &public.spki_der,
        &[0xa0, 0x00],
    ]);
    let digest = scheme.hash().digest(&info);
    let signature = backend.sign_digest(key, scheme, &digest)?;
    Ok(derw::seq(&[
        &info,
        &crate::issue::algorithm_identifier(scheme),
        &derw::bit_string(&signature),
    ]))
}
