//! PKCS#10 requests: parsed strictly (DER, or PEM around DER), key described,
//! self-signature verified over the original bytes of the request info.

use const_oid::ObjectIdentifier;
use der::asn1::{AnyRef, BitStringRef, UintRef};
use der::{Decode, Encode, Sequence};
use spki::AlgorithmIdentifierRef;
use x509_cert::request::CertReqInfo;

/// Largest CSR accepted, in bytes (DER or PEM).
pub const MAX_CSR: usize = 64 * 1024;

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const EXTENSION_REQUEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14");
const SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");

/// A directory string's text (UTF8String, PrintableString or IA5String).
fn string_value(value: &der::Any) -> Option<String> {
    use der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
    use der::Tag;
    match der::Tagged::tag(value) {
        Tag::Utf8String => value
            .decode_as::<Utf8StringRef<'_>>()
            .ok()
            .map(|s| s.to_string()),
        Tag::PrintableString => value
            .decode_as::<PrintableStringRef<'_>>()
            .ok()
            .map(|s| s.to_string()),
        Tag::Ia5String => value
            .decode_as::<Ia5StringRef<'_>>()
            .ok()
            .map(|s| s.to_string()),
        _ => None,
    }
}

/// A subject as `[attribute, value]` pairs, in order.
fn subject_pairs(name: &x509_cert::name::Name) -> Result<Vec<(String, String)>, CsrError> {
    let mut pairs = Vec::new();
    for atv in name.iter() {
        let attr = crate::name::by_oid(&atv.oid)
            .map_or_else(|| atv.oid.to_string(), |a| a.short.to_string());
        let value = string_value(&atv.value).ok_or_else(|| {
            CsrError::Malformed(format!("subject {attr}: not a directory string"))
        })?;
        pairs.push((attr, value));
    }
    Ok(pairs)
}

/// The names of a subjectAltName extension value.
fn san_entries(der_value: &[u8]) -> Result<Vec<(String, String)>, CsrError> {
    use x509_cert::ext::pkix::name::GeneralName;
    let names = x509_cert::ext::pkix::SubjectAltName::from_der(der_value)
        .map_err(|e| CsrError::Malformed(format!("subjectAltName: {e}")))?;
    names
        .0
        .iter()
        .map(|n| {
            Ok(match n {
                GeneralName::DnsName(s) => ("dns".to_string(), s.to_string()),
                GeneralName::Rfc822Name(s) => ("email".to_string(), s.to_string()),
                GeneralName::UniformResourceIdentifier(s) => ("uri".to_string(), s.to_string()),
                GeneralName::IpAddress(ip) => {
                    let b = ip.as_bytes();
                    let addr = match b.len() {
                        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(b).unwrap_or_default()),
                        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(b).unwrap_or_default()),
                        _ => {
                            return Err(CsrError::Malformed(
                                "subjectAltName: IP address of neither 4 nor 16 octets".into(),
                            ))
                        }
                    };
                    ("ip".to_string(), addr.to_string())
                }
                other => {
                    return Err(CsrError::Malformed(format!(
                        "subjectAltName: a name of a kind the signer does not issue ({other:?})"
                    )))
                }
            })
        })
        .collect()
}

/// Extensions a CSR may carry, even as critical: the profile decides the
/// certificate's extensions, so these are read and not copied.
pub const KNOWN_EXTENSIONS: &[ObjectIdentifier] = &[
    ObjectIdentifier::new_unwrap("2.5.29.14"), // subjectKeyIdentifier
    ObjectIdentifier::new_unwrap("2.5.29.15"), // keyUsage
    ObjectIdentifier::new_unwrap("2.5.29.17"), // subjectAltName
    ObjectIdentifier::new_unwrap("2.5.29.19"), // basicConstraints
    ObjectIdentifier::new_unwrap("2.5.29.37"), // extKeyUsage
];

/// The subject's public key, as far as policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectKey {
    /// RSA with this many modulus bits.
    Rsa {
        /// Modulus length in bits.
        bits: u32,
    },
    /// ECDSA on P-256.
    P256,
    /// ECDSA on P-384.
    P384,
}

impl std::fmt::Display for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubjectKey::Rsa { bits } => write!(f, "RSA-{bits}"),
            SubjectKey::P256 => f.write_str("EC P-256"),
            SubjectKey::P384 => f.write_str("EC P-384"),
        }
    }
}

/// Why a CSR was refused. Each maps to its own wire status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Not a PKCS#10 request (bad PEM, bad DER, wrong structure, too large).
    #[error("malformed CSR: {0}")]
    Malformed(String),
    /// The self-signature does not verify, or uses an algorithm not accepted.
    #[error("CSR signature: {0}")]
    BadSignature(String),
    /// The key algorithm or curve is not supported at all.
    #[error("unsupported key: {0}")]
    UnsupportedKey(String),
    /// A critical extension the signer does not know.
    #[error("CSR has an unknown critical extension {0}")]
    UnknownCriticalExtension(String),
}

#[derive(Sequence)]
struct RawCsr<'a> {
    info: AnyRef<'a>,
    algorithm: AlgorithmIdentifierRef<'a>,
    signature: BitStringRef<'a>,
}

#[derive(Sequence)]
struct RsaPublicKey<'a> {
    modulus: UintRef<'a>,
    exponent: UintRef<'a>,
}

/// A parsed request whose signature has been verified.
#[derive(Debug, Clone)]
pub struct Csr {
    /// The subject's SubjectPublicKeyInfo, DER (copied into the certificate).
    pub spki_der: Vec<u8>,
    /// The subjectPublicKey bits (for the subject key identifier).
    pub public_key_bits: Vec<u8>,
    /// The key as policy sees it.
    pub key: SubjectKey,
    /// The subject the CSR asks for, RFC 4514 text (informational).
    pub subject: String,
    /// SHA-256 of the whole CSR, for the audit log instead of the CSR.
    pub fingerprint: [u8; 32],
}

fn pem_or_der(input: &[u8]) -> Result<Vec<u8>, CsrError> {
    let text_start = input
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(0);
    if input[text_start..].starts_with(b"-----BEGIN") {
        let (label, der) = der::pem::decode_vec(&input[text_start..])
            .map_err(|e| CsrError::Malformed(format!("PEM: {e}")))?;
        if label != "CERTIFICATE REQUEST" && label != "NEW CERTIFICATE REQUEST" {
            return Err(CsrError::Malformed(format!(
                "PEM label {label}, expected CERTIFICATE REQUEST"
            )));
        }
        Ok(der)
    } else {
        Ok(input.to_vec())
    }
}

fn describe_key(spki: &spki::SubjectPublicKeyInfoRef<'_>) -> Result<SubjectKey, CsrError> {
    if spki.algorithm.oid == RSA_ENCRYPTION {
        let key = RsaPublicKey::from_der(spki.subject_public_key.raw_bytes())
            .map_err(|e| CsrError::Malformed(format!("RSA public key: {e}")))?;
        let m = key.modulus.as_bytes();
        let bits = match m.first() {
            Some(&first) => (m.len() as u32 - 1) * 8 + (8 - first.leading_zeros()),
            None => 0,
        };
        return Ok(SubjectKey::Rsa { bits });
    }
    if spki.algorithm.oid == EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
            .ok_or_else(|| CsrError::UnsupportedKey("EC key without a named curve".into()))?;
        return match curve {
            SECP256R1 => Ok(SubjectKey::P256),
            SECP384R1 => Ok(SubjectKey::P384),
            other => Err(CsrError::UnsupportedKey(format!("curve {other}"))),
        };
    }
    Err(CsrError::UnsupportedKey(format!(
        "algorithm {}",
        spki.algorithm.oid
    )))
}

fn verification_algorithm(
    alg: &ObjectIdentifier,
    key: SubjectKey,
) -> Result<&'static dyn ring::signature::VerificationAlgorithm, CsrError> {
    use ring::signature as rs;
    let alg = alg.to_string();
    Ok(match (alg.as_str(), key) {
        ("1.2.840.113549.1.1.11", SubjectKey::Rsa { .. }) => &rs::RSA_PKCS1_2048_8192_SHA256,
        ("1.2.840.113549.1.1.12", SubjectKey::Rsa { .. }) => &rs::RSA_PKCS1_2048_8192_SHA384,
        ("1.2.840.113549.1.1.13", SubjectKey::Rsa { .. }) => &rs::RSA_PKCS1_2048_8192_SHA512,
        ("1.2.840.10045.4.3.2", SubjectKey::P256) => &rs::ECDSA_P256_SHA256_ASN1,
        ("1.2.840.10045.4.3.3", SubjectKey::P256) => &rs::ECDSA_P256_SHA384_ASN1,
        ("1.2.840.10045.4.3.2", SubjectKey::P384) => &rs::ECDSA_P384_SHA256_ASN1,
        ("1.2.840.10045.4.3.3", SubjectKey::P384) => &rs::ECDSA_P384_SHA384_ASN1,
        ("1.2.840.113549.1.1.5", _) | ("1.2.840.10045.4.1", _) => {
            return Err(CsrError::BadSignature(
                "SHA-1 signatures are not accepted".into(),
            ))
        }
        (other, key) => {
            return Err(CsrError::BadSignature(format!(
                "signature algorithm {other} with a {key} key is not accepted"
            )))
        }
    })
}

/// Parses a CSR (DER or PEM) and checks its structure and extensions; the
/// key is described but the signature is not yet verified (see [`Csr::parse`]).
fn parse_unverified(input: &[u8]) -> Result<(Csr, Vec<u8>, ObjectIdentifier, Vec<u8>), CsrError> {
    if input.len() > MAX_CSR {
        return Err(CsrError::Malformed(format!(
            "{} bytes, more than {MAX_CSR}",
            input.len()
        )));
    }
    if input.is_empty() {
        return Err(CsrError::Malformed("empty".into()));
    }
    let der_bytes = pem_or_der(input)?;
    let raw = RawCsr::from_der(&der_bytes).map_err(|e| CsrError::Malformed(e.to_string()))?;
    // The info exactly as received: strict DER decoding above already refused
    // any other encoding of the same header, so this is the signed byte string.
    let info_der = raw
        .info
        .to_der()
        .map_err(|e| CsrError::Malformed(e.to_string()))?;
    let info = CertReqInfo::from_der(&info_der)
        .map_err(|e| CsrError::Malformed(format!("request info: {e}")))?;
    let spki_der = info
        .public_key
        .to_der()
        .map_err(|e| CsrError::Malformed(e.to_string()))?;
    let spki_ref = spki::SubjectPublicKeyInfoRef::from_der(&spki_der)
        .map_err(|e| CsrError::Malformed(e.to_string()))?;
    let key = describe_key(&spki_ref)?;
    for attr in info.attributes.iter() {
        if attr.oid != EXTENSION_REQUEST {
            continue;
        }
        for value in attr.values.iter() {
            let exts: Vec<x509_cert::ext::Extension> = value
                .decode_as()
                .map_err(|e| CsrError::Malformed(format!("extension request: {e}")))?;
            for ext in exts {
                if ext.critical && !KNOWN_EXTENSIONS.contains(&ext.extn_id) {
                    return Err(CsrError::UnknownCriticalExtension(ext.extn_id.to_string()));
                }
            }
        }
    }
    let signature = raw
        .signature
        .as_bytes()
        .ok_or_else(|| CsrError::Malformed("signature has unused bits".into()))?
        .to_vec();
    let fingerprint = {
        use sha2::Digest;
        sha2::Sha256::digest(&der_bytes).into()
    };
    let csr = Csr {
        public_key_bits: spki_ref.subject_public_key.raw_bytes().to_vec(),
        spki_der,
        key,
        subject: info.subject.to_string(),
        fingerprint,
    };
    Ok((csr, info_der, raw.algorithm.oid, signature))
}

impl Csr {
    /// Parses a CSR and returns it with the signature still to verify, so
    /// policy can refuse a weak key before anything else.
    pub fn parse(input: &[u8]) -> Result<Unverified, CsrError> {
        let (csr, info, algorithm, signature) = parse_unverified(input)?;
        Ok(Unverified {
            csr,
            info,
            algorithm,
            signature,
        })
    }
}

/// The names a CSR asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedNames {
    /// The subject as `[attribute, value]` pairs in order (short names of
    /// [`crate::name::ATTRS`], dotted OIDs for others).
    pub subject: Vec<(String, String)>,
    /// Its subject alternative names: `(dns|email|ip|uri, value)`.
    pub sans: Vec<(String, String)>,
}

/// The subject and subject alternative names a CSR asks for: what a batch
/// of CSRs requests when no web application chose the names. A name the
/// signer cannot issue (a subject value that is not a string, an `otherName`)
/// is an error, so nothing asked for is dropped without a word.
pub fn requested_names(input: &[u8]) -> Result<RequestedNames, CsrError> {
    let der_bytes = pem_or_der(input)?;
    let req = x509_cert::request::CertReq::from_der(&der_bytes)
        .map_err(|e| CsrError::Malformed(e.to_string()))?;
    let mut sans = Vec::new();
    for attr in req
        .info
        .attributes
        .iter()
        .filter(|a| a.oid == EXTENSION_REQUEST)
    {
        for value in attr.values.iter() {
            let exts: Vec<x509_cert::ext::Extension> = value
                .decode_as()
                .map_err(|e| CsrError::Malformed(format!("extension request: {e}")))?;
            for ext in exts.iter().filter(|e| e.extn_id == SUBJECT_ALT_NAME) {
                sans.extend(san_entries(ext.extn_value.as_bytes())?);
            }
        }
    }
    Ok(RequestedNames {
        subject: subject_pairs(&req.info.subject)?,
        sans,
    })
}

/// A parsed CSR whose self-signature has not been checked yet.
#[derive(Debug, Clone)]
pub struct Unverified {
    csr: Csr,
    info: Vec<u8>,
    algorithm: ObjectIdentifier,
    signature: Vec<u8>,
}

impl Unverified {
    /// The key, for policy checks before verification.
    pub fn key(&self) -> SubjectKey {
        self.csr.key
    }

    /// Verifies the self-signature over the request info as received.
    pub fn verify(self) -> Result<Csr, CsrError> {
        let alg = verification_algorithm(&self.algorithm, self.csr.key)?;
        ring::signature::UnparsedPublicKey::new(alg, &self.csr.public_key_bits)
            .verify(&self.info, &self.signature)
            .map_err(|_| CsrError::BadSignature("the self-signature does not verify".into()))?;
        Ok(self.csr)
    }
}
