//! Issuance: request + profile + CA → checked TBS → HSM signature → certificate.

use std::collections::BTreeMap;
use std::net::IpAddr;

use const_oid::ObjectIdentifier;
use der::asn1::{Ia5String, OctetString};
use der::{Decode, Encode};
use signer_keys::{Hash, HsmError, KeyKind, Scheme, SigningBackend};
use x509_cert::ext::pkix::certpolicy::PolicyInformation;
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{
    AccessDescription, AuthorityInfoAccessSyntax, AuthorityKeyIdentifier, BasicConstraints,
    CertificatePolicies, CrlDistributionPoints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName, SubjectKeyIdentifier,
};

use crate::csr::{Csr, CsrError, SubjectKey};
use crate::profile::{Curve, Eku, KeyUsageBit, Profile, SanType, SchemeName};
use crate::{derw, name, time};

/// Object identifiers, for configuration checks.
pub type Oid = ObjectIdentifier;

/// A subject alternative name in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    /// dNSName.
    Dns(String),
    /// rfc822Name.
    Email(String),
    /// iPAddress.
    Ip(IpAddr),
    /// uniformResourceIdentifier.
    Uri(String),
}

impl San {
    fn kind(&self) -> SanType {
        match self {
            San::Dns(_) => SanType::Dns,
            San::Email(_) => SanType::Email,
            San::Ip(_) => SanType::Ip,
            San::Uri(_) => SanType::Uri,
        }
    }
}

/// What the client asks for.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// Profile name.
    pub profile: String,
    /// PKCS#10, DER or PEM.
    pub csr: Vec<u8>,
    /// Subject as the web application checked it: (attribute, value) in order.
    pub subject: Vec<(String, String)>,
    /// SANs as the web application checked them.
    pub sans: Vec<San>,
    /// Validity in days (default: the profile's).
    pub validity_days: Option<u32>,
}

/// Why a request was refused. Each variant has its own wire status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// No such profile.
    #[error("unknown profile {0}")]
    UnknownProfile(String),
    /// CSR problems.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// Key too small or too large.
    #[error("weak key: {0}")]
    WeakKey(String),
    /// Key type the profile does not accept.
    #[error("key type not allowed: {0}")]
    KeyNotAllowed(String),
    /// Subject outside the profile.
    #[error("subject not allowed: {0}")]
    SubjectNotAllowed(String),
    /// SAN outside the profile.
    #[error("subject alternative name not allowed: {0}")]
    SanNotAllowed(String),
    /// Validity over the profile's limit.
    #[error("validity of {asked} days exceeds the profile's {max}")]
    ValidityTooLong {
        /// Asked.
        asked: u32,
        /// Allowed.
        max: u32,
    },
    /// The TBS fails a lint rule.
    #[error("lint {rule}: {message}")]
    Lint {
        /// Rule name.
        rule: &'static str,
        /// What failed.
        message: String,
    },
    /// The issuer's key cannot be used now.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// The issuer or its certificate is unusable (configuration).
    #[error("issuer: {0}")]
    Issuer(String),
    /// An internal encoding step failed.
    #[error("encoding: {0}")]
    Encoding(String),
}

fn enc(e: impl std::fmt::Display) -> IssueError {
    IssueError::Encoding(e.to_string())
}

/// Subject key identifier: the leftmost 160 bits of the SHA-256 of the
/// subjectPublicKey bits (RFC 7093, section 2, method 1).
pub fn key_identifier(public_key_bits: &[u8]) -> Vec<u8> {
    Hash::Sha256.digest(public_key_bits)[..20].to_vec()
}

fn subject_public_key_bits(spki_der: &[u8]) -> Result<Vec<u8>, IssueError> {
    let spki = spki::SubjectPublicKeyInfoRef::from_der(spki_der).map_err(enc)?;
    Ok(spki.subject_public_key.raw_bytes().to_vec())
}

/// The DER AlgorithmIdentifier of a signature scheme.
pub fn algorithm_identifier(scheme: Scheme) -> Vec<u8> {
    // RSA PKCS#1 v1.5 identifiers carry NULL parameters; ECDSA ones none (RFC 5758).
    let rsa = |oid: &str| {
        derw::seq(&[
            &derw::oid(&ObjectIdentifier::new_unwrap(oid)),
            &[0x05, 0x00],
        ])
    };
    let ecdsa = |oid: &str| derw::seq(&[&derw::oid(&ObjectIdentifier::new_unwrap(oid))]);
    match scheme {
        Scheme::RsaPkcs1(Hash::Sha256) => rsa("1.2.840.113549.1.1.11"),
        Scheme::RsaPkcs1(Hash::Sha384) => rsa("1.2.840.113549.1.1.12"),
        Scheme::RsaPkcs1(Hash::Sha512) => rsa("1.2.840.113549.1.1.13"),
        Scheme::Ecdsa(Hash::Sha256) => ecdsa("1.2.840.10045.4.3.2"),
        Scheme::Ecdsa(Hash::Sha384) => ecdsa("1.2.840.10045.4.3.3"),
        Scheme::Ecdsa(Hash::Sha512) => ecdsa("1.2.840.10045.4.3.4"),
        Scheme::Ed25519 => ecdsa("1.3.101.112"),
        Scheme::RsaPss(hash) => {
            // RSASSA-PSS-params as the Baseline Requirements (7.1.3.2.1) spell them:
            // hash with NULL parameters, MGF1 with the same hash, salt = hash length.
            let hash_oid = ObjectIdentifier::new_unwrap(match hash {
                Hash::Sha256 => "2.16.840.1.101.3.4.2.1",
                Hash::Sha384 => "2.16.840.1.101.3.4.2.2",
                Hash::Sha512 => "2.16.840.1.101.3.4.2.3",
            });
            let hash_alg = derw::seq(&[&derw::oid(&hash_oid), &[0x05, 0x00]]);
            let mgf = derw::seq(&[
                &derw::oid(&ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8")),
                &hash_alg,
            ]);
            let params = derw::seq(&[
                &derw::explicit(0, &hash_alg),
                &derw::explicit(1, &mgf),
                &derw::explicit(2, &derw::small_uint(hash.len() as u64)),
            ]);
            derw::seq(&[
                &derw::oid(&ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10")),
                &params,
            ])
        }
    }
}

/// The default scheme for an issuer key.
pub fn default_scheme(kind: KeyKind) -> Scheme {
    match kind {
        KeyKind::Rsa { .. } => Scheme::RsaPkcs1(Hash::Sha256),
        KeyKind::EcP256 => Scheme::Ecdsa(Hash::Sha256),
        KeyKind::EcP384 => Scheme::Ecdsa(Hash::Sha384),
        KeyKind::Ed25519 => Scheme::Ed25519,
    }
}

/// A CA this signer issues under: its HSM key and certificate.
#[derive(Debug, Clone)]
pub struct CaSigner {
    /// Configured CA name.
    pub name: String,
    /// Backend key name.
    pub key: String,
    /// Key kind.
    pub kind: KeyKind,
    /// The CA certificate, DER.
    pub cert_der: Vec<u8>,
    /// Its subject Name, DER exactly as in the certificate.
    pub subject_der: Vec<u8>,
    /// Its subject key identifier (from the certificate, else computed).
    pub key_id: Vec<u8>,
    /// Its notBefore, Unix seconds.
    pub not_before: i64,
    /// Its notAfter, Unix seconds.
    pub not_after: i64,
    /// Its subjectPublicKeyInfo, DER.
    pub spki_der: Vec<u8>,
}

fn time_secs(t: &x509_cert::time::Time) -> i64 {
    t.to_unix_duration().as_secs() as i64
}

impl CaSigner {
    /// Loads a CA certificate and checks that it belongs to the HSM key.
    pub fn new(
        name: &str,
        key: &str,
        cert_der: Vec<u8>,
        backend: &dyn SigningBackend,
    ) -> Result<CaSigner, IssueError> {
        let cert = x509_cert::Certificate::from_der(&cert_der)
            .map_err(|e| IssueError::Issuer(format!("{name}: certificate: {e}")))?;
        let tbs = cert.tbs_certificate();
        let spki_der = tbs.subject_public_key_info().to_der().map_err(enc)?;
        let public = backend.public_key(key)?;
        if public.kind == KeyKind::Ed25519 {
            return Err(IssueError::Issuer(format!(
                "{name}: key {key} is Ed25519: CA keys are RSA or ECDSA (Ed25519 is for the audit log)"
            )));
        }
        if public.spki_der != spki_der {
            return Err(IssueError::Issuer(format!(
                "{name}: the certificate's public key does not match HSM key {key}"
            )));
        }
        let key_id = tbs
            .get_extension::<SubjectKeyIdentifier>()
            .ok()
            .flatten()
            .map(|(_, ski)| ski.0.as_bytes().to_vec())
            .unwrap_or_else(|| {
                key_identifier(tbs.subject_public_key_info().subject_public_key.raw_bytes())
            });
        Ok(CaSigner {
            name: name.to_string(),
            key: key.to_string(),
            kind: public.kind,
            subject_der: tbs.subject().to_der().map_err(enc)?,
            key_id,
            not_before: time_secs(&tbs.validity().not_before),
            not_after: time_secs(&tbs.validity().not_after),
            cert_der,
            spki_der,
        })
    }
}

fn ext(oid: ObjectIdentifier, critical: bool, value: &[u8]) -> Vec<u8> {
    if critical {
        derw::seq(&[
            &derw::oid(&oid),
            &[0x01, 0x01, 0xff],
            &derw::octet_string(value),
        ])
    } else {
        derw::seq(&[&derw::oid(&oid), &derw::octet_string(value)])
    }
}

fn assoc<T: const_oid::AssociatedOid + Encode>(
    value: &T,
    critical: bool,
) -> Result<Vec<u8>, IssueError> {
    Ok(ext(T::OID, critical, &value.to_der().map_err(enc)?))
}

fn uri(s: &str) -> Result<GeneralName, IssueError> {
    Ok(GeneralName::UniformResourceIdentifier(
        Ia5String::new(s).map_err(enc)?,
    ))
}

/// Everything that goes into one TBSCertificate.
pub struct TbsSpec<'a> {
    /// Serial, unsigned big-endian.
    pub serial: &'a [u8],
    /// Signature scheme of the issuer.
    pub scheme: Scheme,
    /// Issuer Name DER.
    pub issuer: &'a [u8],
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// Subject Name DER.
    pub subject: &'a [u8],
    /// Subject SPKI DER.
    pub spki: &'a [u8],
    /// Encoded extensions.
    pub extensions: Vec<Vec<u8>>,
}

/// Encodes a TBSCertificate (v3).
pub fn encode_tbs(spec: &TbsSpec<'_>) -> Result<Vec<u8>, IssueError> {
    let not_before = time::encode(spec.not_before).ok_or_else(|| enc("notBefore out of range"))?;
    let not_after = time::encode(spec.not_after).ok_or_else(|| enc("notAfter out of range"))?;
    let exts: Vec<&[u8]> = spec.extensions.iter().map(Vec::as_slice).collect();
    let mut parts: Vec<Vec<u8>> = vec![
        derw::explicit(0, &derw::small_uint(2)),
        derw::uint(spec.serial),
        algorithm_identifier(spec.scheme),
        spec.issuer.to_vec(),
        derw::seq(&[&not_before, &not_after]),
        spec.subject.to_vec(),
        spec.spki.to_vec(),
    ];
    if !exts.is_empty() {
        parts.push(derw::explicit(3, &derw::seq(&exts)));
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    Ok(derw::seq(&refs))
}

/// Signs a TBS with the CA's key and assembles the certificate; the result
/// is parsed back and its signature verified against the CA's public key.
pub fn sign_tbs(
    backend: &dyn SigningBackend,
    key: &str,
    ca_spki: &[u8],
    scheme: Scheme,
    tbs: &[u8],
) -> Result<Vec<u8>, IssueError> {
    let digest = scheme.hash().digest(tbs);
    let signature = backend.sign_digest(key, scheme, &digest)?;
    let cert = derw::seq(&[
        tbs,
        &algorithm_identifier(scheme),
        &derw::bit_string(&signature),
    ]);
    x509_cert::Certificate::from_der(&cert)
        .map_err(|e| IssueError::Encoding(format!("produced certificate does not parse: {e}")))?;
    verify_signature(ca_spki, scheme, tbs, &signature)?;
    Ok(cert)
}

/// The signature scheme an AlgorithmIdentifier (DER) names, if supported.
pub fn scheme_of(algorithm_der: &[u8]) -> Option<Scheme> {
    [
        Scheme::RsaPkcs1(Hash::Sha256),
        Scheme::RsaPkcs1(Hash::Sha384),
        Scheme::RsaPkcs1(Hash::Sha512),
        Scheme::RsaPss(Hash::Sha256),
        Scheme::RsaPss(Hash::Sha384),
        Scheme::RsaPss(Hash::Sha512),
        Scheme::Ecdsa(Hash::Sha256),
        Scheme::Ecdsa(Hash::Sha384),
    ]
    .into_iter()
    .find(|s| algorithm_identifier(*s) == algorithm_der)
}

/// Checks that `cert_der` is a certificate issued by the CA whose
/// certificate is `issuer_cert_der`: it parses, its issuer is the CA's
/// subject, and its signature verifies with the CA's key. What the signer
/// serves from storage and what a client accepts both pass through here.
pub fn verify_issued(cert_der: &[u8], issuer_cert_der: &[u8]) -> Result<(), String> {
    let cert = x509_cert::Certificate::from_der(cert_der)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let ca = x509_cert::Certificate::from_der(issuer_cert_der)
        .map_err(|e| format!("the issuer certificate does not parse: {e}"))?;
    let issuer = cert
        .tbs_certificate()
        .issuer()
        .to_der()
        .map_err(|e| e.to_string())?;
    let subject = ca
        .tbs_certificate()
        .subject()
        .to_der()
        .map_err(|e| e.to_string())?;
    if issuer != subject {
        return Err("its issuer is not the CA's subject".into());
    }
    let algorithm = cert
        .signature_algorithm()
        .to_der()
        .map_err(|e| e.to_string())?;
    if cert
        .tbs_certificate()
        .signature()
        .to_der()
        .map_err(|e| e.to_string())?
        != algorithm
    {
        return Err("its two signature algorithm fields differ".into());
    }
    let scheme = scheme_of(&algorithm).ok_or("its signature algorithm is not supported")?;
    let spki = ca
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| e.to_string())?;
    let tbs = cert.tbs_certificate().to_der().map_err(|e| e.to_string())?;
    let signature = cert
        .signature()
        .as_bytes()
        .ok_or("its signature has unused bits")?;
    verify_signature(&spki, scheme, &tbs, signature)
        .map_err(|_| "its signature does not verify with the CA's key".to_string())
}

/// Verifies a signature made by the key of `spki_der`.
pub fn verify_signature(
    spki_der: &[u8],
    scheme: Scheme,
    message: &[u8],
    signature: &[u8],
) -> Result<(), IssueError> {
    use ring::signature as rs;
    let bits = subject_public_key_bits(spki_der)?;
    let p384 = spki_der
        .windows(7)
        .any(|w| w == [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]);
    let alg: &dyn rs::VerificationAlgorithm = match (scheme, p384) {
        (Scheme::RsaPkcs1(Hash::Sha256), _) => &rs::RSA_PKCS1_2048_8192_SHA256,
        (Scheme::RsaPkcs1(Hash::Sha384), _) => &rs::RSA_PKCS1_2048_8192_SHA384,
        (Scheme::RsaPkcs1(Hash::Sha512), _) => &rs::RSA_PKCS1_2048_8192_SHA512,
        (Scheme::RsaPss(Hash::Sha256), _) => &rs::RSA_PSS_2048_8192_SHA256,
        (Scheme::RsaPss(Hash::Sha384), _) => &rs::RSA_PSS_2048_8192_SHA384,
        (Scheme::RsaPss(Hash::Sha512), _) => &rs::RSA_PSS_2048_8192_SHA512,
        (Scheme::Ecdsa(Hash::Sha256), false) => &rs::ECDSA_P256_SHA256_ASN1,
        (Scheme::Ecdsa(Hash::Sha384), false) => &rs::ECDSA_P256_SHA384_ASN1,
        (Scheme::Ecdsa(Hash::Sha256), true) => &rs::ECDSA_P384_SHA256_ASN1,
        (Scheme::Ecdsa(Hash::Sha384), true) => &rs::ECDSA_P384_SHA384_ASN1,
        (Scheme::Ecdsa(Hash::Sha512), _) => return Ok(()), // not verifiable with ring; the HSM is trusted here
        (Scheme::Ed25519, _) => &rs::ED25519,
    };
    rs::UnparsedPublicKey::new(alg, &bits)
        .verify(message, signature)
        .map_err(|_| {
            IssueError::Hsm(HsmError::Failed(
                "the HSM's signature does not verify against the CA certificate".into(),
            ))
        })
}

/// What a successful issuance produced.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// Its serial.
    pub serial: Vec<u8>,
    /// Issuing CA name.
    pub issuer: String,
    /// Subject, text.
    pub subject: String,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// The CSR's SHA-256.
    pub csr_fingerprint: [u8; 32],
}

/// Profiles and CAs: everything issuance needs besides the HSM.
pub struct Issuer {
    /// Profiles by name.
    pub profiles: BTreeMap<String, Profile>,
    /// CAs by name.
    pub cas: BTreeMap<String, CaSigner>,
}

fn check_key(policy: &crate::profile::KeyPolicy, key: SubjectKey) -> Result<(), IssueError> {
    match key {
        SubjectKey::Rsa { bits } => {
            if policy.rsa_min_bits == 0 {
                return Err(IssueError::KeyNotAllowed(
                    "RSA keys are not accepted by this profile".into(),
                ));
            }
            if bits < policy.rsa_min_bits {
                return Err(IssueError::WeakKey(format!(
                    "RSA-{bits}; at least {} bits required",
                    policy.rsa_min_bits
                )));
            }
            if bits > policy.rsa_max_bits {
                return Err(IssueError::KeyNotAllowed(format!(
                    "RSA-{bits}; at most {} bits accepted",
                    policy.rsa_max_bits
                )));
            }
        }
        SubjectKey::P256 if !policy.ec_curves.contains(&Curve::P256) => {
            return Err(IssueError::KeyNotAllowed(
                "EC P-256 is not accepted by this profile".into(),
            ))
        }
        SubjectKey::P384 if !policy.ec_curves.contains(&Curve::P384) => {
            return Err(IssueError::KeyNotAllowed(
                "EC P-384 is not accepted by this profile".into(),
            ))
        }
        _ => {}
    }
    Ok(())
}

fn valid_dns(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    name.len() <= 253
        && name.contains('.')
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn check_sans(profile: &Profile, sans: &[San]) -> Result<Vec<GeneralName>, IssueError> {
    if profile.require_san && sans.is_empty() {
        return Err(IssueError::SanNotAllowed(
            "this profile requires at least one SAN".into(),
        ));
    }
    let mut names = Vec::with_capacity(sans.len());
    for san in sans {
        if !profile.san_types.contains(&san.kind()) {
            return Err(IssueError::SanNotAllowed(format!(
                "{:?} names are not allowed by this profile",
                san.kind()
            )));
        }
        let bad = |why: &str| IssueError::SanNotAllowed(format!("{san:?}: {why}"));
        names.push(match san {
            San::Dns(d) => {
                if !valid_dns(d) {
                    return Err(bad("not a valid DNS name"));
                }
                GeneralName::DnsName(
                    Ia5String::new(&d.to_ascii_lowercase()).map_err(|_| bad("not ASCII"))?,
                )
            }
            San::Email(e) => {
                let ok = e
                    .split_once('@')
                    .is_some_and(|(l, d)| !l.is_empty() && valid_dns(d));
                if !ok {
                    return Err(bad("not an e-mail address"));
                }
                GeneralName::Rfc822Name(Ia5String::new(e).map_err(|_| bad("not ASCII"))?)
            }
            San::Ip(ip) => {
                let bytes = match ip {
                    IpAddr::V4(v4) => v4.octets().to_vec(),
                    IpAddr::V6(v6) => v6.octets().to_vec(),
                };
                GeneralName::IpAddress(OctetString::new(bytes).map_err(enc)?)
            }
            San::Uri(u) => {
                if !u.contains("://") || u.chars().any(char::is_whitespace) {
                    return Err(bad("not an absolute URI"));
                }
                GeneralName::UniformResourceIdentifier(
                    Ia5String::new(u).map_err(|_| bad("not ASCII"))?,
                )
            }
        });
    }
    Ok(names)
}

fn key_usage(bits: &[KeyUsageBit]) -> KeyUsage {
    let mut flags = der::flagset::FlagSet::<KeyUsages>::default();
    for b in bits {
        flags |= match b {
            KeyUsageBit::DigitalSignature => KeyUsages::DigitalSignature,
            KeyUsageBit::NonRepudiation => KeyUsages::NonRepudiation,
            KeyUsageBit::KeyEncipherment => KeyUsages::KeyEncipherment,
            KeyUsageBit::DataEncipherment => KeyUsages::DataEncipherment,
            KeyUsageBit::KeyAgreement => KeyUsages::KeyAgreement,
            KeyUsageBit::KeyCertSign => KeyUsages::KeyCertSign,
            KeyUsageBit::CrlSign => KeyUsages::CRLSign,
        };
    }
    KeyUsage(flags)
}

/// Extensions for a profile (and for CA set-up), in a fixed order.
pub struct ExtensionSpec<'a> {
    /// basicConstraints: `Some(path_len)` for a CA (None inside: unlimited).
    pub ca: Option<Option<u8>>,
    /// keyUsage bits.
    pub key_usage: &'a [KeyUsageBit],
    /// extKeyUsage.
    pub eku: &'a [Eku],
    /// SANs.
    pub sans: Vec<GeneralName>,
    /// Whether the subject is empty (then the SAN extension is critical).
    pub empty_subject: bool,
    /// Subject key identifier (None: no extension, as the TLS Baseline
    /// Requirements recommend for subscriber certificates).
    pub ski: Option<Vec<u8>>,
    /// Authority key identifier (None for a self-signed root).
    pub aki: Option<Vec<u8>>,
    /// CRL URLs.
    pub crl_urls: &'a [String],
    /// OCSP URLs.
    pub ocsp_urls: &'a [String],
    /// CA issuer URLs.
    pub ca_issuers_urls: &'a [String],
    /// Policy OIDs.
    pub policies: &'a [String],
}

/// Encodes the extensions.
pub fn encode_extensions(spec: &ExtensionSpec<'_>) -> Result<Vec<Vec<u8>>, IssueError> {
    let mut out = Vec::new();
    if let Some(path_len) = spec.ca {
        out.push(assoc(
            &BasicConstraints {
                ca: true,
                path_len_constraint: path_len,
            },
            true,
        )?);
    } else {
        out.push(assoc(
            &BasicConstraints {
                ca: false,
                path_len_constraint: None,
            },
            true,
        )?);
    }
    out.push(assoc(&key_usage(spec.key_usage), true)?);
    if !spec.eku.is_empty() {
        out.push(assoc(
            &ExtendedKeyUsage(spec.eku.iter().map(|e| e.oid()).collect()),
            false,
        )?);
    }
    if !spec.sans.is_empty() {
        out.push(assoc(
            &SubjectAltName(spec.sans.clone()),
            spec.empty_subject,
        )?);
    }
    if let Some(ski) = &spec.ski {
        out.push(assoc(
            &SubjectKeyIdentifier(OctetString::new(ski.clone()).map_err(enc)?),
            false,
        )?);
    }
    if let Some(aki) = &spec.aki {
        let aki = AuthorityKeyIdentifier {
            key_identifier: Some(OctetString::new(aki.clone()).map_err(enc)?),
            authority_cert_issuer: None,
            authority_cert_serial_number: None,
        };
        out.push(assoc(&aki, false)?);
    }
    if !spec.crl_urls.is_empty() {
        let names = spec
            .crl_urls
            .iter()
            .map(|u| uri(u))
            .collect::<Result<Vec<_>, _>>()?;
        let dp = DistributionPoint {
            distribution_point: Some(DistributionPointName::FullName(names)),
            reasons: None,
            crl_issuer: None,
        };
        out.push(assoc(&CrlDistributionPoints(vec![dp]), false)?);
    }
    if !spec.ocsp_urls.is_empty() || !spec.ca_issuers_urls.is_empty() {
        let mut access = Vec::new();
        for u in spec.ocsp_urls {
            access.push(AccessDescription {
                access_method: ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1"),
                access_location: uri(u)?,
            });
        }
        for u in spec.ca_issuers_urls {
            access.push(AccessDescription {
                access_method: ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.2"),
                access_location: uri(u)?,
            });
        }
        out.push(assoc(&AuthorityInfoAccessSyntax(access), false)?);
    }
    if !spec.policies.is_empty() {
        let mut policies = Vec::new();
        for p in spec.policies {
            let oid = ObjectIdentifier::new(p)
                .map_err(|_| IssueError::Issuer(format!("policy {p} is not an OID")))?;
            policies.push(PolicyInformation {
                policy_identifier: oid,
                policy_qualifiers: None,
            });
        }
        out.push(assoc(&CertificatePolicies(policies), false)?);
    }
    Ok(out)
}

/// Profile-independent rules checked on every TBS before it is signed.
#[allow(clippy::too_many_arguments)]
fn lint(
    profile: &Profile,
    key_usage: &[KeyUsageBit],
    key: SubjectKey,
    serial: &[u8],
    not_before: i64,
    not_after: i64,
    subject: &[(String, String)],
    sans: &[San],
) -> Result<(), IssueError> {
    let fail = |rule: &'static str, message: String| Err(IssueError::Lint { rule, message });
    if serial.is_empty()
        || serial.len() > 20
        || serial[0] & 0x80 != 0
        || serial.iter().all(|&b| b == 0)
    {
        return fail(
            "serial_number",
            "must be positive, non-zero and at most 20 octets".into(),
        );
    }
    if not_after <= not_before {
        return fail("validity_order", "notAfter must follow notBefore".into());
    }
    if key_usage.is_empty() {
        return fail(
            "key_usage_present",
            "a certificate needs key usage bits".into(),
        );
    }
    let ca_bits = key_usage
        .iter()
        .any(|b| matches!(b, KeyUsageBit::KeyCertSign | KeyUsageBit::CrlSign));
    if profile.ca_path_len.is_none() && ca_bits {
        return fail(
            "ee_key_usage",
            "keyCertSign/cRLSign in an end-entity certificate".into(),
        );
    }
    if profile.ca_path_len.is_some() && !key_usage.contains(&KeyUsageBit::KeyCertSign) {
        return fail("ca_key_usage", "a CA certificate needs keyCertSign".into());
    }
    if !matches!(key, SubjectKey::Rsa { .. }) && key_usage.contains(&KeyUsageBit::KeyEncipherment) {
        return fail(
            "ec_key_encipherment",
            "keyEncipherment with an EC key".into(),
        );
    }
    if subject.is_empty() && sans.is_empty() {
        return fail("subject_or_san", "neither a subject nor a SAN".into());
    }
    if profile.rules.is_cabf_serverauth() {
        let max = crate::profile::cabf_max_validity_days(not_before);
        // Validity counts both ends: notAfter - notBefore + 1 second.
        if not_after - not_before + 1 > i64::from(max) * 86_400 {
            return fail(
                "cabf_validity",
                format!(
                    "a TLS certificate whose notBefore is {} may be valid for at most {max} days (BR 6.3.2)",
                    crate::time::rfc3339(not_before)
                ),
            );
        }
        if let Err(why) = profile
            .rules
            .check_subject(subject)
            .and_then(|()| profile.rules.check_values(subject))
        {
            return fail("cabf_subject", why);
        }
        for san in sans {
            if let San::Dns(d) = san {
                if let Some(why) = crate::names::reserved_label(d) {
                    return fail("cabf_dns_label", why);
                }
                if profile.rules == crate::profile::Rules::CabfServerauthEv && d.starts_with("*.") {
                    return fail(
                        "cabf_ev_wildcard",
                        format!("{d}: an EV certificate names no wildcard (EVG 9.2.1)"),
                    );
                }
            }
            match san {
                San::Dns(d) if crate::names::internal_domain(d) => {
                    return fail(
                        "cabf_internal_name",
                        format!("{d} is not under a public suffix (an internal or reserved name)"),
                    )
                }
                San::Ip(ip) if !crate::names::public_ip(ip) => {
                    return fail(
                        "cabf_internal_ip",
                        format!("{ip} is a reserved or internal address"),
                    )
                }
                _ => {}
            }
        }
    }
    if profile.rules.is_cabf_smime() {
        // Validity counts both ends: notAfter - notBefore + 1 second.
        let max = crate::profile::CABF_SMIME_MAX_DAYS;
        if not_after - not_before + 1 > i64::from(max) * 86_400 {
            return fail(
                "cabf_smime_validity",
                format!(
                    "an S/MIME certificate may be valid for at most {max} days (S/MIME BR 6.3.2)"
                ),
            );
        }
        if !key_usage.iter().any(|b| {
            matches!(
                b,
                KeyUsageBit::DigitalSignature
                    | KeyUsageBit::KeyEncipherment
                    | KeyUsageBit::KeyAgreement
            )
        }) {
            return fail(
                "cabf_smime_key_usage",
                "none of the profile's key usage bits suits this key type (S/MIME BR 7.1.2.3 e)"
                    .into(),
            );
        }
        if let Err(why) = profile
            .rules
            .check_subject(subject)
            .and_then(|()| profile.rules.check_values(subject))
        {
            return fail("cabf_smime_subject", why);
        }
        let emails: Vec<&str> = sans
            .iter()
            .filter_map(|s| match s {
                San::Email(e) => Some(e.as_str()),
                _ => None,
            })
            .collect();
        if let Err(why) = profile.rules.check_smime_names(subject, &emails) {
            return fail("cabf_smime_subject", why);
        }
    }
    if profile.extended_key_usage.contains(&Eku::ServerAuth) {
        if sans.is_empty() {
            return fail(
                "server_san_present",
                "a server certificate needs a SAN".into(),
            );
        }
        if (not_after - not_before) > 398 * 86_400 {
            return fail(
                "server_validity",
                "server certificates are valid for at most 398 days".into(),
            );
        }
        for (attr, value) in subject.iter().filter(|(a, _)| a == "CN") {
            let listed = sans.iter().any(|s| match s {
                San::Dns(d) => d == value,
                San::Ip(ip) => ip.to_string() == *value,
                _ => false,
            });
            if !listed {
                return fail(
                    "server_cn_in_san",
                    format!("{attr}={value} is not among the SANs"),
                );
            }
        }
    }
    Ok(())
}

impl Issuer {
    /// The issuer's signature scheme for a profile.
    pub fn scheme(&self, profile: &Profile, ca: &CaSigner) -> Result<Scheme, IssueError> {
        let scheme = match profile.signature {
            None => default_scheme(ca.kind),
            Some(spec) => match spec.scheme {
                SchemeName::Pkcs1 => Scheme::RsaPkcs1(spec.hash),
                SchemeName::Pss => Scheme::RsaPss(spec.hash),
                SchemeName::Ecdsa => Scheme::Ecdsa(spec.hash),
            },
        };
        if !ca.kind.supports(scheme) {
            return Err(IssueError::Issuer(format!(
                "{scheme:?} cannot be made with the {} key of {}",
                ca.kind, ca.name
            )));
        }
        Ok(scheme)
    }

    /// Checks a request against its profile and issues the certificate.
    /// `serial` is chosen by the caller (unique per issuer); `now` is Unix seconds.
    pub fn issue(
        &self,
        backend: &dyn SigningBackend,
        request: &IssueRequest,
        serial: &[u8],
        now: i64,
    ) -> Result<Issued, IssueError> {
        let profile = self
            .profiles
            .get(&request.profile)
            .ok_or_else(|| IssueError::UnknownProfile(request.profile.clone()))?;
        let ca = self.cas.get(&profile.issuer).ok_or_else(|| {
            IssueError::Issuer(format!(
                "profile {} names unknown CA {}",
                request.profile, profile.issuer
            ))
        })?;
        let unverified = Csr::parse(&request.csr)?;
        check_key(&profile.key_types, unverified.key())?;
        let csr = unverified.verify()?;

        for (attr, _) in &request.subject {
            if !profile.subject_attributes.iter().any(|a| a == attr) {
                return Err(IssueError::SubjectNotAllowed(format!(
                    "attribute {attr} is not allowed by profile {}",
                    request.profile
                )));
            }
        }
        for required in &profile.required_subject_attributes {
            if !request.subject.iter().any(|(a, _)| a == required) {
                return Err(IssueError::SubjectNotAllowed(format!(
                    "attribute {required} is required by profile {}",
                    request.profile
                )));
            }
        }
        let subject = profile.rules.order_subject(&request.subject);
        let subject_der =
            name::encode(&subject).map_err(|e| IssueError::SubjectNotAllowed(e.to_string()))?;
        let san_names = check_sans(profile, &request.sans)?;

        let days = request.validity_days.unwrap_or(profile.default_days);
        if days == 0 || days > profile.max_days {
            return Err(IssueError::ValidityTooLong {
                asked: days,
                max: profile.max_days,
            });
        }
        let not_before = now;
        // Never beyond the issuer's own notAfter.
        let not_after = (not_before + i64::from(days) * 86_400 - 1).min(ca.not_after);
        // EC keys cannot encipher: the Baseline Requirements forbid those
        // bits for them. Under the S/MIME rules RSA keys do not agree keys
        // either (a profile for both key types lists key_encipherment and
        // key_agreement; each key gets its own).
        let rsa = matches!(csr.key, SubjectKey::Rsa { .. });
        let key_usage: Vec<KeyUsageBit> = profile
            .key_usage
            .iter()
            .copied()
            .filter(|b| match b {
                KeyUsageBit::KeyEncipherment | KeyUsageBit::DataEncipherment => rsa,
                KeyUsageBit::KeyAgreement => !(rsa && profile.rules.is_cabf_smime()),
                _ => true,
            })
            .collect();
        lint(
            profile,
            &key_usage,
            csr.key,
            serial,
            not_before,
            not_after,
            &subject,
            &request.sans,
        )?;

        let scheme = self.scheme(profile, ca)?;
        let extensions = encode_extensions(&ExtensionSpec {
            ca: profile.ca_path_len.map(Some),
            key_usage: &key_usage,
            eku: &profile.extended_key_usage,
            sans: san_names,
            empty_subject: subject.is_empty(),
            // BR 7.1.2.7.6: NOT RECOMMENDED in TLS subscriber certificates.
            ski: (!profile.rules.is_cabf_serverauth())
                .then(|| key_identifier(&csr.public_key_bits)),
            aki: Some(ca.key_id.clone()),
            crl_urls: &crl_urls(&profile.crl_urls, serial)?,
            ocsp_urls: &profile.ocsp_urls,
            ca_issuers_urls: &profile.ca_issuers_urls,
            policies: &profile.policies,
        })?;
        let tbs = encode_tbs(&TbsSpec {
            serial,
            scheme,
            issuer: &ca.subject_der,
            not_before,
            not_after,
            subject: &subject_der,
            spki: &csr.spki_der,
            extensions,
        })?;
        let der = sign_tbs(backend, &ca.key, &ca.spki_der, scheme, &tbs)?;
        Ok(Issued {
            der,
            serial: serial.to_vec(),
            issuer: ca.name.clone(),
            subject: name::display(&subject),
            not_before,
            not_after,
            csr_fingerprint: csr.fingerprint,
        })
    }
}

/// A fresh serial: the signer's prefix byte, the time in milliseconds
/// (6 octets), then 9 octets from the OS CSPRNG (72 bits: the Baseline
/// Requirements ask for at least 64), positive by construction. The prefix
/// is 1–127 (configuration checks it), so the serial is 16 octets as
/// stored and as encoded. Serials made later sort after earlier ones, so
/// a signer's new records are appended to its repository's tables
/// instead of landing all over them.
pub fn random_serial(prefix: u8) -> Vec<u8> {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    serial_at(prefix, ms, rand::random::<[u8; 9]>())
}

/// The serial [`random_serial`] makes at `ms` with `random`.
pub fn serial_at(prefix: u8, ms: u64, random: [u8; 9]) -> Vec<u8> {
    let mut serial = vec![(prefix & 0x7f).max(1)];
    serial.extend_from_slice(&ms.to_be_bytes()[2..]);
    serial.extend_from_slice(&random);
    serial
}

/// Where a sharded issuer's CRL URL takes the shard's number.
pub const SHARD_PLACEHOLDER: &str = "{shard}";

/// A fresh serial of a certificate in CRL shard `shard`: 17 octets, the
/// prefix, milliseconds since the epoch (6 octets), the shard, then 72
/// random bits. The shard travels in the serial, so every signer (and its
/// twin) puts the certificate's revocation on the shard its CRL
/// distribution point names, whatever shard count is configured later.
pub fn serial_in_shard(prefix: u8, shard: u8) -> Vec<u8> {
    let mut serial = random_serial(prefix);
    serial.insert(7, shard);
    serial
}

/// A fresh serial (as [`serial_in_shard`] makes it) in one of `count`
/// shards (1–256), chosen at random.
pub fn sharded_serial(prefix: u8, count: u16) -> Vec<u8> {
    serial_in_shard(prefix, (rand::random::<u16>() % count.clamp(1, 256)) as u8)
}

/// The CRL shard a serial made by [`serial_in_shard`] belongs to (None for
/// the 16-octet serials of an issuer without shards).
pub fn shard_of(serial: &[u8]) -> Option<u8> {
    (serial.len() == 17).then(|| serial[7])
}

/// A shard's CRL URL: the issuer's URL with the shard's number in place.
pub fn shard_url(template: &str, shard: u8) -> String {
    template.replace(SHARD_PLACEHOLDER, &shard.to_string())
}

/// The profile's CRL URLs for the certificate with `serial`: a sharded URL
/// names the shard the serial carries.
fn crl_urls(urls: &[String], serial: &[u8]) -> Result<Vec<String>, IssueError> {
    urls.iter()
        .map(|u| {
            if !u.contains(SHARD_PLACEHOLDER) {
                return Ok(u.clone());
            }
            shard_of(serial)
                .map(|shard| shard_url(u, shard))
                .ok_or_else(|| {
                    IssueError::Issuer(format!(
                        "{u} names a CRL shard, and serial {} carries none",
                        hex::encode(serial)
                    ))
                })
        })
        .collect()
}

#[cfg(test)]
mod serial_tests {
    use super::*;

    #[test]
    fn serials_are_sixteen_octets_ordered_by_time_and_random_after() {
        let a = serial_at(0x21, 1_796_000_000_000, [0xff; 9]);
        let b = serial_at(0x21, 1_796_000_000_001, [0; 9]);
        assert_eq!((a.len(), b.len()), (16, 16));
        assert!(a < b);
        assert_eq!(a[0], 0x21);
        assert_eq!(serial_at(0, 0, [0; 9])[0], 1);
        assert_eq!(serial_at(0xa1, 0, [0; 9])[0], 0x21);
        let (x, y) = (random_serial(0x21), random_serial(0x21));
        assert_ne!(x[7..], y[7..]);
        assert!(x[1..7] <= y[1..7]);
    }

    #[test]
    fn a_sharded_serial_carries_its_shard_and_its_url_names_it() {
        let s = serial_in_shard(0x21, 200);
        assert_eq!((s.len(), s[0], shard_of(&s)), (17, 0x21, Some(200)));
        assert_eq!(shard_of(&random_serial(0x21)), None);
        assert!((0..100).all(|_| shard_of(&sharded_serial(0x21, 3)) < Some(3)));
        assert_eq!(shard_of(&sharded_serial(0x21, 256)).map(|_| ()), Some(()));
        let urls = vec![
            "http://crl.example.org/sub/{shard}.crl".to_string(),
            "http://crl.example.org/sub.crl".to_string(),
        ];
        assert_eq!(
            crl_urls(&urls, &s).unwrap(),
            [
                "http://crl.example.org/sub/200.crl",
                "http://crl.example.org/sub.crl"
            ]
        );
        assert!(matches!(
            crl_urls(&urls, &random_serial(0x21)),
            Err(IssueError::Issuer(_))
        ));
    }
}
