//! Certificate profiles as configured in YAML.

use serde::Deserialize;
use signer_keys::Hash;

/// Key usage bits a profile may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyUsageBit {
    /// digitalSignature
    DigitalSignature,
    /// nonRepudiation (contentCommitment)
    NonRepudiation,
    /// keyEncipherment
    KeyEncipherment,
    /// dataEncipherment
    DataEncipherment,
    /// keyAgreement
    KeyAgreement,
    /// keyCertSign
    KeyCertSign,
    /// cRLSign
    CrlSign,
}

/// Extended key usages a profile may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Eku {
    /// id-kp-serverAuth
    ServerAuth,
    /// id-kp-clientAuth
    ClientAuth,
    /// id-kp-codeSigning
    CodeSigning,
    /// id-kp-emailProtection
    EmailProtection,
    /// id-kp-timeStamping
    TimeStamping,
    /// id-kp-OCSPSigning
    OcspSigning,
}

impl Eku {
    /// The OID.
    pub fn oid(self) -> const_oid::ObjectIdentifier {
        const_oid::ObjectIdentifier::new_unwrap(match self {
            Eku::ServerAuth => "1.3.6.1.5.5.7.3.1",
            Eku::ClientAuth => "1.3.6.1.5.5.7.3.2",
            Eku::CodeSigning => "1.3.6.1.5.5.7.3.3",
            Eku::EmailProtection => "1.3.6.1.5.5.7.3.4",
            Eku::TimeStamping => "1.3.6.1.5.5.7.3.8",
            Eku::OcspSigning => "1.3.6.1.5.5.7.3.9",
        })
    }
}

/// SAN types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SanType {
    /// dNSName
    Dns,
    /// rfc822Name
    Email,
    /// iPAddress
    Ip,
    /// uniformResourceIdentifier
    Uri,
}

/// Curves a profile may accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Curve {
    /// NIST P-256.
    P256,
    /// NIST P-384.
    P384,
}

fn default_rsa_min() -> u32 {
    2048
}
fn default_rsa_max() -> u32 {
    8192
}

/// Which subject keys a profile accepts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPolicy {
    /// Smallest RSA modulus accepted (default 2048); 0 refuses RSA.
    #[serde(default = "default_rsa_min")]
    pub rsa_min_bits: u32,
    /// Largest RSA modulus accepted (default 8192).
    #[serde(default = "default_rsa_max")]
    pub rsa_max_bits: u32,
    /// EC curves accepted (default: none).
    #[serde(default)]
    pub ec_curves: Vec<Curve>,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        KeyPolicy {
            rsa_min_bits: default_rsa_min(),
            rsa_max_bits: default_rsa_max(),
            ec_curves: vec![Curve::P256, Curve::P384],
        }
    }
}

/// Signature scheme names in configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemeName {
    /// RSASSA-PKCS1-v1_5 (RSA issuers).
    Pkcs1,
    /// RSASSA-PSS (RSA issuers).
    Pss,
    /// ECDSA (EC issuers).
    Ecdsa,
}

/// How certificates under a profile are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureSpec {
    /// Scheme; must suit the issuer's key.
    pub scheme: SchemeName,
    /// Hash.
    pub hash: Hash,
}

fn default_days() -> u32 {
    365
}

/// A certificate profile.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Name of the CA that issues under this profile.
    pub issuer: String,
    /// Validity when the request names none, in days (default 365).
    #[serde(default = "default_days")]
    pub default_days: u32,
    /// Longest validity a request may ask for, in days.
    pub max_days: u32,
    /// Key usage bits (critical extension).
    pub key_usage: Vec<KeyUsageBit>,
    /// Extended key usages (empty: no extension).
    #[serde(default)]
    pub extended_key_usage: Vec<Eku>,
    /// Issue CA certificates: basicConstraints cA=TRUE with this path length
    /// (absent: an end-entity profile).
    #[serde(default)]
    pub ca_path_len: Option<u8>,
    /// Subject keys accepted.
    #[serde(default)]
    pub key_types: KeyPolicy,
    /// Subject attributes a request may use (short names: CN, O, OU, C, L, ST, emailAddress, …).
    pub subject_attributes: Vec<String>,
    /// Subject attributes a request must use.
    #[serde(default)]
    pub required_subject_attributes: Vec<String>,
    /// SAN types a request may use.
    #[serde(default)]
    pub san_types: Vec<SanType>,
    /// Require at least one SAN.
    #[serde(default)]
    pub require_san: bool,
    /// CRL distribution point URLs.
    #[serde(default)]
    pub crl_urls: Vec<String>,
    /// OCSP responder URLs (AIA).
    #[serde(default)]
    pub ocsp_urls: Vec<String>,
    /// CA issuer certificate URLs (AIA).
    #[serde(default)]
    pub ca_issuers_urls: Vec<String>,
    /// Certificate policy OIDs.
    #[serde(default)]
    pub policies: Vec<String>,
    /// Signature; by default PKCS#1 v1.5 with SHA-256 for RSA issuers,
    /// ECDSA with SHA-256 (P-256) or SHA-384 (P-384) for EC issuers.
    #[serde(default)]
    pub signature: Option<SignatureSpec>,
}
