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
    /// Every usage, by its configuration name.
    pub const ALL: [(&'static str, Eku); 6] = [
        ("server_auth", Eku::ServerAuth),
        ("client_auth", Eku::ClientAuth),
        ("code_signing", Eku::CodeSigning),
        ("email_protection", Eku::EmailProtection),
        ("time_stamping", Eku::TimeStamping),
        ("ocsp_signing", Eku::OcspSigning),
    ];

    /// The usage named `name` as in a profile (`server_auth`, …).
    pub fn from_name(name: &str) -> Option<Eku> {
        Eku::ALL.iter().find(|(n, _)| *n == name).map(|(_, e)| *e)
    }

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

/// The rules a profile's certificates are checked against before signing,
/// besides RFC 5280's (which apply to every profile).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rules {
    /// RFC 5280 only: a private PKI.
    #[default]
    Rfc5280,
    /// CA/Browser Forum TLS Baseline Requirements, domain validated
    /// (policy 2.23.140.1.2.1).
    CabfServerauthDv,
    /// … organization validated (2.23.140.1.2.2).
    CabfServerauthOv,
    /// … individual validated (2.23.140.1.2.3).
    CabfServerauthIv,
    /// … extended validation (EV Guidelines; 2.23.140.1.1).
    CabfServerauthEv,
    /// CA/Browser Forum S/MIME Baseline Requirements, mailbox validated,
    /// strict generation (policy 2.23.140.1.5.1.3).
    CabfSmimeMailbox,
    /// … individual validated, strict generation (2.23.140.1.5.4.3).
    CabfSmimeIndividual,
    /// … organization validated, strict generation (2.23.140.1.5.2.3).
    CabfSmimeOrganization,
    /// … sponsor validated, strict generation (2.23.140.1.5.3.3).
    CabfSmimeSponsor,
}

/// The CA/Browser Forum's reserved policy OIDs for TLS certificates.
const CABF_TLS_POLICIES: [&str; 4] = [
    "2.23.140.1.2.1",
    "2.23.140.1.2.2",
    "2.23.140.1.2.3",
    "2.23.140.1.1",
];

/// The CA/Browser Forum's arc of reserved policy OIDs for S/MIME
/// certificates (validation level . generation).
const CABF_SMIME_ARC: &str = "2.23.140.1.5.";

/// anyPolicy (RFC 5280 4.2.1.4).
const ANY_POLICY: &str = "2.5.29.32.0";

/// Longest validity of an S/MIME subscriber certificate under the S/MIME
/// Baseline Requirements (6.3.2), multipurpose and strict generations.
pub const CABF_SMIME_MAX_DAYS: u32 = 825;

/// Longest validity of a TLS subscriber certificate under the Baseline
/// Requirements (7.1.2.7) for a certificate whose notBefore is `not_before`
/// (Unix seconds): 398 days, 200 from 2026-03-15, 100 from 2027-03-15, 47
/// from 2029-03-15.
pub fn cabf_max_validity_days(not_before: i64) -> u32 {
    const SCHEDULE: [(i64, u32); 3] = [
        (1_868_486_400, 47),  // 2029-03-15
        (1_805_068_800, 100), // 2027-03-15
        (1_773_532_800, 200), // 2026-03-15
    ];
    SCHEDULE
        .iter()
        .find(|(from, _)| not_before >= *from)
        .map_or(398, |(_, days)| *days)
}

impl Rules {
    /// The name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Rules::Rfc5280 => "rfc5280",
            Rules::CabfServerauthDv => "cabf_serverauth_dv",
            Rules::CabfServerauthOv => "cabf_serverauth_ov",
            Rules::CabfServerauthIv => "cabf_serverauth_iv",
            Rules::CabfServerauthEv => "cabf_serverauth_ev",
            Rules::CabfSmimeMailbox => "cabf_smime_mailbox",
            Rules::CabfSmimeIndividual => "cabf_smime_individual",
            Rules::CabfSmimeOrganization => "cabf_smime_organization",
            Rules::CabfSmimeSponsor => "cabf_smime_sponsor",
        }
    }

    /// Whether these are the CA/Browser Forum's TLS rules.
    pub fn is_cabf_serverauth(self) -> bool {
        matches!(
            self,
            Rules::CabfServerauthDv
                | Rules::CabfServerauthOv
                | Rules::CabfServerauthIv
                | Rules::CabfServerauthEv
        )
    }

    /// Whether these are the CA/Browser Forum's S/MIME rules.
    pub fn is_cabf_smime(self) -> bool {
        matches!(
            self,
            Rules::CabfSmimeMailbox
                | Rules::CabfSmimeIndividual
                | Rules::CabfSmimeOrganization
                | Rules::CabfSmimeSponsor
        )
    }

    /// Whether an S/MIME level names a person (GN, SN or pseudonym).
    fn names_a_person(self) -> bool {
        matches!(self, Rules::CabfSmimeIndividual | Rules::CabfSmimeSponsor)
    }

    /// The policy OID a certificate under these rules asserts.
    pub fn policy(self) -> Option<&'static str> {
        match self {
            Rules::Rfc5280 => None,
            Rules::CabfServerauthDv => Some(CABF_TLS_POLICIES[0]),
            Rules::CabfServerauthOv => Some(CABF_TLS_POLICIES[1]),
            Rules::CabfServerauthIv => Some(CABF_TLS_POLICIES[2]),
            Rules::CabfServerauthEv => Some(CABF_TLS_POLICIES[3]),
            Rules::CabfSmimeMailbox => Some("2.23.140.1.5.1.3"),
            Rules::CabfSmimeIndividual => Some("2.23.140.1.5.4.3"),
            Rules::CabfSmimeOrganization => Some("2.23.140.1.5.2.3"),
            Rules::CabfSmimeSponsor => Some("2.23.140.1.5.3.3"),
        }
    }

    /// Subject attributes allowed (BR 7.1.2.7.2–7.1.2.7.4; `OU` is
    /// prohibited at every level), and those required.
    fn attributes(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Rules::Rfc5280 => (&[], &[]),
            Rules::CabfServerauthDv => (&["C", "CN"], &[]),
            Rules::CabfServerauthOv => (&["C", "ST", "L", "O", "CN"], &["C", "O"]),
            Rules::CabfServerauthIv => (&["C", "ST", "L", "SN", "GN", "CN"], &["C", "SN", "GN"]),
            // EV Guidelines 9.2.
            Rules::CabfServerauthEv => (
                &[
                    "C",
                    "ST",
                    "L",
                    "postalCode",
                    "street",
                    "O",
                    "serialNumber",
                    "businessCategory",
                    "jurisdictionC",
                    "jurisdictionST",
                    "jurisdictionL",
                    "CN",
                ],
                &[
                    "C",
                    "O",
                    "serialNumber",
                    "businessCategory",
                    "jurisdictionC",
                ],
            ),
            // S/MIME BR 7.1.4.2.2-3, strict: the attributes MAY for the
            // level; every other one SHALL NOT.
            Rules::CabfSmimeMailbox => (&["CN", "serialNumber", "emailAddress"], &[]),
            Rules::CabfSmimeIndividual => (
                &[
                    "CN",
                    "GN",
                    "SN",
                    "pseudonym",
                    "serialNumber",
                    "emailAddress",
                    "title",
                    "L",
                    "ST",
                    "C",
                ],
                &[],
            ),
            Rules::CabfSmimeOrganization => (
                &[
                    "CN",
                    "O",
                    "OU",
                    "organizationIdentifier",
                    "serialNumber",
                    "emailAddress",
                    "L",
                    "ST",
                    "C",
                ],
                &["O", "organizationIdentifier"],
            ),
            Rules::CabfSmimeSponsor => (
                &[
                    "CN",
                    "O",
                    "OU",
                    "organizationIdentifier",
                    "GN",
                    "SN",
                    "pseudonym",
                    "serialNumber",
                    "emailAddress",
                    "title",
                    "L",
                    "ST",
                    "C",
                ],
                &["O", "organizationIdentifier"],
            ),
        }
    }

    /// Whether the subject attributes of an issued certificate satisfy the
    /// rules that depend on their combination (`ST` or `L` with an
    /// identity).
    pub fn check_subject(self, subject: &[(String, String)]) -> Result<(), String> {
        let has = |a: &str| subject.iter().any(|(k, _)| k == a);
        if matches!(
            self,
            Rules::CabfServerauthOv | Rules::CabfServerauthIv | Rules::CabfServerauthEv
        ) && !has("ST")
            && !has("L")
        {
            return Err(
                "an organization, individual or extended validated certificate needs ST or L (BR 7.1.2.7.3-4, EVG 9.2.6)"
                    .into(),
            );
        }
        if self == Rules::CabfServerauthEv {
            const CATEGORIES: [&str; 4] = [
                "Private Organization",
                "Government Entity",
                "Business Entity",
                "Non-Commercial Entity",
            ];
            if let Some((_, v)) = subject
                .iter()
                .find(|(k, v)| k == "businessCategory" && !CATEGORIES.contains(&v.as_str()))
            {
                return Err(format!(
                    "businessCategory {v:?} is none of {} (EVG 9.2.3)",
                    CATEGORIES.join(", ")
                ));
            }
            if has("jurisdictionL") && !has("jurisdictionST") {
                return Err("jurisdictionL needs jurisdictionST (EVG 9.2.4)".into());
            }
        }
        if self.names_a_person() && !has("GN") && !has("SN") && !has("pseudonym") {
            return Err(
                "an individual or sponsor validated S/MIME certificate needs GN, SN or pseudonym (S/MIME BR 7.1.4.2.3)"
                    .into(),
            );
        }
        if self.is_cabf_smime() {
            let country = subject
                .iter()
                .find(|(k, _)| k == "C")
                .map(|(_, v)| v.as_str());
            for (_, v) in subject
                .iter()
                .filter(|(k, _)| k == "organizationIdentifier")
            {
                check_organization_identifier(v, country)?;
            }
        }
        if has("pseudonym") && (has("GN") || has("SN")) {
            return Err("pseudonym may not be combined with GN or SN (S/MIME BR 7.1.4.2.2)".into());
        }
        Ok(())
    }

    /// The subject in the order the certificate carries it: under the TLS
    /// rules the attributes of BR 7.1.4.2's table in the table's order (C,
    /// ST, L, O, SN, GN, CN for those a profile may allow), whatever order
    /// the request gave; otherwise as requested.
    pub fn order_subject(self, subject: &[(String, String)]) -> Vec<(String, String)> {
        let mut ordered = subject.to_vec();
        if self.is_cabf_serverauth() {
            const ORDER: [&str; 11] = [
                "DC",
                "C",
                "ST",
                "L",
                "postalCode",
                "street",
                "O",
                "SN",
                "GN",
                "OU",
                "CN",
            ];
            let rank = |a: &str| ORDER.iter().position(|o| *o == a).unwrap_or(ORDER.len());
            ordered.sort_by_key(|(a, _)| rank(a));
        }
        ordered
    }

    /// Under the CA/Browser Forum's rules: each attribute at most once,
    /// and every value with something significant in it (a letter, a
    /// digit or a symbol; not only punctuation or spaces such as "-" or
    /// ".").
    pub fn check_values(self, subject: &[(String, String)]) -> Result<(), String> {
        if !self.is_cabf_serverauth() && !self.is_cabf_smime() {
            return Ok(());
        }
        for (i, (attr, value)) in subject.iter().enumerate() {
            if subject[..i].iter().any(|(a, _)| a == attr) {
                return Err(format!("{attr} appears more than once"));
            }
            let significant = value
                .chars()
                .any(|c| c.is_alphanumeric() || "$+<=>^`|~".contains(c));
            if !significant {
                return Err(format!(
                    "{attr}={value} has no letter, digit or symbol (an insignificant value)"
                ));
            }
        }
        Ok(())
    }

    /// S/MIME: every mailbox address in the subject is one of the
    /// certificate's rfc822Name SANs (`emails`), and the CN names what the
    /// level allows (a mailbox of the SANs, or for an individual a
    /// pseudonym given in the subject or a name beside GN / SN).
    pub fn check_smime_names(
        self,
        subject: &[(String, String)],
        emails: &[&str],
    ) -> Result<(), String> {
        if !self.is_cabf_smime() {
            return Ok(());
        }
        if emails.is_empty() {
            return Err("an S/MIME certificate needs a mailbox address among its SANs (S/MIME BR 7.1.2.3 h)".into());
        }
        let has = |a: &str| subject.iter().any(|(k, _)| k == a);
        for (attr, value) in subject {
            if (attr == "emailAddress" || value.contains('@')) && !emails.contains(&value.as_str())
            {
                return Err(format!(
                    "{attr}={value} is not among the certificate's email SANs (S/MIME BR 7.1.4.2.1)"
                ));
            }
            if attr == "CN" && !emails.contains(&value.as_str()) {
                let personal = self.names_a_person()
                    && (has("GN")
                        || has("SN")
                        || subject.iter().any(|(k, v)| k == "pseudonym" && v == value));
                let organization = self == Rules::CabfSmimeOrganization
                    && subject.iter().any(|(k, v)| k == "O" && v == value);
                if !personal && !organization {
                    return Err(format!(
                        "CN={value} is neither an email SAN nor, for an individual or a sponsor, a name given in the subject, nor for an organization its O (S/MIME BR 7.1.4.2.2 a)"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Why an `organizationIdentifier` value breaks S/MIME BR 7.1.4.2.2 d: the
/// form `SSSCC[+SP][-REFERENCE]` with a registration scheme the signer
/// knows (NTR, VAT, PSD and LEI with a reference, GOV without), a country
/// the scheme allows (the same as the subject's `C` unless global), a
/// state or province only for NTR and GOV, and an LEI whose check digits
/// hold (ISO 17442).
pub fn check_organization_identifier(value: &str, country: Option<&str>) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "organizationIdentifier {value:?}: {why} (S/MIME BR 7.1.4.2.2 d)"
        ))
    };
    let (head, reference) = match value.split_once('-') {
        Some((h, r)) => (h, Some(r)),
        None => (value, None),
    };
    let (head, sp) = match head.split_once('+') {
        Some((h, sp)) => (h, Some(sp)),
        None => (head, None),
    };
    if head.len() != 5 || !head.is_ascii() {
        return bad("expected a three-letter scheme and a two-letter country");
    }
    let (scheme, cc) = head.split_at(3);
    if sp.is_some_and(|sp| {
        sp.is_empty() || sp.len() > 3 || !sp.bytes().all(|b| b.is_ascii_alphanumeric())
    }) {
        return bad("a state or province is one to three letters or digits");
    }
    if reference.is_some_and(str::is_empty) {
        return bad("an empty reference");
    }
    let iso = crate::name::is_country(cc);
    let (country_ok, sp_allowed, reference_needed) = match scheme {
        "NTR" => (iso, cc != "DE", true),
        "VAT" => (iso || cc == "EL" || cc == "XI", false, true),
        "PSD" => (iso, false, true),
        "LEI" => (cc == "XG", false, true),
        "GOV" => (iso, true, false),
        _ => return bad("the registration scheme is none of NTR, VAT, PSD, LEI, GOV"),
    };
    if !country_ok {
        return bad(&format!("{cc} is not a country the {scheme} scheme allows"));
    }
    if sp.is_some() && !sp_allowed {
        return bad(&format!(
            "the {scheme} scheme takes no state or province here"
        ));
    }
    if reference.is_some() != reference_needed {
        return bad(if reference_needed {
            "the scheme needs a reference"
        } else {
            "the scheme takes no reference"
        });
    }
    if scheme == "LEI" && !reference.is_some_and(lei_valid) {
        return bad("the reference is not a valid LEI (20 characters, ISO 17442 check digits)");
    }
    if let Some(c) = country {
        if cc != "XG" && cc != c {
            return bad(&format!(
                "its country {cc} differs from the subject's C={c}"
            ));
        }
    }
    Ok(())
}

/// ISO 17442: 18 letters or digits and two check digits, the whole read as
/// a number (letters as 10–35) ≡ 1 (mod 97).
fn lei_valid(lei: &str) -> bool {
    if lei.len() != 20
        || !lei
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
        || !lei.as_bytes()[18..].iter().all(u8::is_ascii_digit)
    {
        return false;
    }
    let mut rem: u32 = 0;
    for b in lei.bytes() {
        let v = if b.is_ascii_digit() {
            u32::from(b - b'0')
        } else {
            u32::from(b - b'A') + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
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
    /// The rules certificates are checked against before signing.
    #[serde(default)]
    pub rules: Rules,
}

impl Profile {
    /// Refuses a profile that could only issue certificates its rules
    /// reject: `Err((field, why))`, the field relative to the profile.
    pub fn check_rules(&self) -> Result<(), (&'static str, String)> {
        let rules = self.rules;
        if rules.is_cabf_smime() {
            return self.check_smime_rules();
        }
        if !rules.is_cabf_serverauth() {
            if let Some(p) = self
                .policies
                .iter()
                .find(|p| CABF_TLS_POLICIES.contains(&p.as_str()))
            {
                return Err((
                    "rules",
                    format!("the profile asserts the TLS Baseline Requirements' policy {p}: set rules to the matching cabf_serverauth_* (dv, ov, iv) so its certificates are checked against them"),
                ));
            }
            if let Some(p) = self.policies.iter().find(|p| p.starts_with(CABF_SMIME_ARC)) {
                return Err((
                    "rules",
                    format!("the profile asserts the S/MIME Baseline Requirements' policy {p}: set rules to the matching cabf_smime_* (mailbox, individual) so its certificates are checked against them"),
                ));
            }
            return Ok(());
        }
        if let Some(p) = self.policies.iter().find(|p| p.starts_with(CABF_SMIME_ARC)) {
            return Err((
                "policies",
                format!("{p} is an S/MIME policy: a TLS profile may not assert it"),
            ));
        }
        if self.ca_path_len.is_some() {
            return Err((
                "ca_path_len",
                format!(
                    "{} profiles issue subscriber certificates, not CAs",
                    rules.name()
                ),
            ));
        }
        if !self.extended_key_usage.contains(&Eku::ServerAuth)
            || self
                .extended_key_usage
                .iter()
                .any(|e| !matches!(e, Eku::ServerAuth | Eku::ClientAuth))
        {
            return Err((
                "extended_key_usage",
                "the TLS Baseline Requirements need server_auth, optionally with client_auth, and nothing else (7.1.2.7.10)".into(),
            ));
        }
        if self.key_usage != [KeyUsageBit::DigitalSignature] {
            return Err((
                "key_usage",
                "expected [digital_signature] (BR 7.1.2.7.11; key_encipherment for RSA keys is NOT RECOMMENDED and refused here)".into(),
            ));
        }
        if !self.require_san
            || self.san_types.iter().any(|t| {
                !matches!(t, SanType::Dns | SanType::Ip)
                    || (rules == Rules::CabfServerauthEv && *t == SanType::Ip)
            })
        {
            return Err((
                "san_types",
                "expected dns and/or ip names, with require_san: true (BR 7.1.2.7.12)".into(),
            ));
        }
        self.check_level_attributes()?;
        let policy = self.check_level_policy()?;
        if let Some(other) = self
            .policies
            .iter()
            .find(|p| CABF_TLS_POLICIES.contains(&p.as_str()) && *p != policy)
        {
            return Err((
                "policies",
                format!("{other} is another validation level's policy"),
            ));
        }
        if self.crl_urls.is_empty() && self.ocsp_urls.is_empty() {
            return Err((
                "crl_urls",
                "a subscriber certificate needs a CRL distribution point or an OCSP URL (BR 7.1.2.11.2)".into(),
            ));
        }
        if self.max_days > 398 {
            return Err(("max_days", "at most 398 days (BR 6.3.2)".into()));
        }
        Ok(())
    }

    /// The subject attributes a Forum rule set allows for its level, and
    /// those it requires, against the profile's.
    fn check_level_attributes(&self) -> Result<(), (&'static str, String)> {
        let name = self.rules.name();
        let (allowed, required) = self.rules.attributes();
        if let Some(a) = self
            .subject_attributes
            .iter()
            .chain(&self.required_subject_attributes)
            .find(|a| !allowed.contains(&a.as_str()))
        {
            return Err((
                "subject_attributes",
                format!(
                    "{a} is not allowed in a {name} certificate (allowed: {})",
                    allowed.join(", ")
                ),
            ));
        }
        if let Some(a) = required
            .iter()
            .find(|r| !self.required_subject_attributes.iter().any(|a| a == *r))
        {
            return Err((
                "required_subject_attributes",
                format!("a {name} certificate needs {a}"),
            ));
        }
        Ok(())
    }

    /// The Forum rule set's policy OID is among the profile's; returns it.
    fn check_level_policy(&self) -> Result<&'static str, (&'static str, String)> {
        let policy = self.rules.policy().unwrap_or_default();
        if !self.policies.iter().any(|p| p == policy) {
            return Err((
                "policies",
                format!("{} certificates assert {policy}", self.rules.name()),
            ));
        }
        Ok(policy)
    }

    /// [`Profile::check_rules`] for the S/MIME Baseline Requirements (strict
    /// generation).
    fn check_smime_rules(&self) -> Result<(), (&'static str, String)> {
        let rules = self.rules;
        let name = rules.name();
        if self.ca_path_len.is_some() {
            return Err((
                "ca_path_len",
                format!("{name} profiles issue subscriber certificates, not CAs"),
            ));
        }
        if self.extended_key_usage != [Eku::EmailProtection] {
            return Err((
                "extended_key_usage",
                "the strict S/MIME profiles have email_protection and nothing else (S/MIME BR 7.1.2.3 f)".into(),
            ));
        }
        let allowed_ku = [
            KeyUsageBit::DigitalSignature,
            KeyUsageBit::NonRepudiation,
            KeyUsageBit::KeyEncipherment,
            KeyUsageBit::KeyAgreement,
        ];
        let has = |b: KeyUsageBit| self.key_usage.contains(&b);
        if self.key_usage.iter().any(|b| !allowed_ku.contains(b))
            || !(has(KeyUsageBit::DigitalSignature)
                || has(KeyUsageBit::KeyEncipherment)
                || has(KeyUsageBit::KeyAgreement))
            || (has(KeyUsageBit::NonRepudiation) && !has(KeyUsageBit::DigitalSignature))
        {
            return Err((
                "key_usage",
                "expected digital_signature (with non_repudiation if wanted) for signing and/or key_encipherment (RSA keys) or key_agreement (EC keys) for encryption (S/MIME BR 7.1.2.3 e); each key gets the bits its type can use".into(),
            ));
        }
        if !self.require_san || self.san_types != [SanType::Email] {
            return Err((
                "san_types",
                "expected [email] with require_san: true (S/MIME BR 7.1.2.3 h)".into(),
            ));
        }
        self.check_level_attributes()?;
        if rules.names_a_person()
            && !self
                .subject_attributes
                .iter()
                .any(|a| matches!(a.as_str(), "GN" | "SN" | "pseudonym"))
        {
            return Err((
                "subject_attributes",
                format!("a {name} certificate needs GN, SN or pseudonym: allow at least one"),
            ));
        }
        let policy = self.check_level_policy()?;
        if let Some(other) = self.policies.iter().find(|p| {
            (p.starts_with(CABF_SMIME_ARC) && *p != policy)
                || CABF_TLS_POLICIES.contains(&p.as_str())
                || *p == ANY_POLICY
        }) {
            return Err((
                "policies",
                format!("{other} may not be asserted beside {policy}"),
            ));
        }
        if self.crl_urls.is_empty() {
            return Err((
                "crl_urls",
                "an S/MIME certificate needs a CRL distribution point (S/MIME BR 7.1.2.3 b)".into(),
            ));
        }
        if self.ca_issuers_urls.is_empty() {
            return Err((
                "ca_issuers_urls",
                "an S/MIME certificate carries the issuing CA's certificate URL (S/MIME BR 7.1.2.3 c)".into(),
            ));
        }
        for (field, urls) in [
            ("crl_urls", &self.crl_urls),
            ("ocsp_urls", &self.ocsp_urls),
            ("ca_issuers_urls", &self.ca_issuers_urls),
        ] {
            if let Some(u) = urls.iter().find(|u| !u.starts_with("http://")) {
                return Err((
                    field,
                    format!("{u}: only http:// URLs (S/MIME BR 7.1.2.3 b-c, strict)"),
                ));
            }
        }
        if self.max_days > CABF_SMIME_MAX_DAYS {
            return Err((
                "max_days",
                format!("at most {CABF_SMIME_MAX_DAYS} days (S/MIME BR 6.3.2)"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(k: &str, v: &str) -> (String, String) {
        (k.into(), v.into())
    }

    #[test]
    fn the_tls_rules_put_the_subject_in_the_baseline_requirements_order() {
        let asked = [
            p("CN", "a.example"),
            p("O", "Org"),
            p("L", "X"),
            p("C", "DE"),
        ];
        let ordered = Rules::CabfServerauthOv.order_subject(&asked);
        let names: Vec<&str> = ordered.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(names, ["C", "L", "O", "CN"]);
        // Other rules keep the request's order.
        assert_eq!(Rules::Rfc5280.order_subject(&asked), asked);
        assert_eq!(Rules::CabfSmimeIndividual.order_subject(&asked), asked);
    }

    #[test]
    fn forum_rules_refuse_repeated_attributes_and_insignificant_values() {
        for rules in [Rules::CabfServerauthDv, Rules::CabfSmimeMailbox] {
            assert!(rules.check_values(&[p("CN", "a"), p("CN", "b")]).is_err());
            for value in ["-", ".", " - ", "…"] {
                assert!(rules.check_values(&[p("L", value)]).is_err(), "{value:?}");
            }
            for value in ["Berlin", "7", "Zürich", "$"] {
                rules.check_values(&[p("L", value)]).unwrap();
            }
        }
        Rules::Rfc5280
            .check_values(&[p("OU", "-"), p("OU", "-")])
            .unwrap();
    }

    #[test]
    fn organization_identifiers_follow_the_registration_schemes() {
        for ok in [
            "NTRGB-12345678",
            "NTRUS+CA-C1234567",
            "VATDE-123456789",
            "VATEL-123456789",
            "PSDBE-NBB-1234.567.890",
            "LEIXG-529900T8BM49AURSDO55",
            "GOVUS",
            "GOVUS+CA",
        ] {
            check_organization_identifier(ok, None).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "NTRGB",
            "NTRQQ-1",
            "NTRDE+BY-HRB 1",
            "VATDE+BY-1",
            "LEIXG-529900T8BM49AURSDO56",
            "LEIDE-529900T8BM49AURSDO55",
            "GOVUS-123",
            "XYZDE-1",
            "DE:DE-1",
            "NTRGB+ABCD-1",
            "NTRGB-",
        ] {
            assert!(check_organization_identifier(bad, None).is_err(), "{bad:?}");
        }
        // The country agrees with the subject's C, unless global.
        assert!(check_organization_identifier("NTRGB-1", Some("DE")).is_err());
        check_organization_identifier("LEIXG-529900T8BM49AURSDO55", Some("DE")).unwrap();
    }

    #[test]
    fn smime_names_come_from_the_email_sans_or_the_person() {
        let emails = ["alice@example.org"];
        let mv = Rules::CabfSmimeMailbox;
        mv.check_smime_names(&[p("CN", "alice@example.org")], &emails)
            .unwrap();
        assert!(mv.check_smime_names(&[p("CN", "Alice")], &emails).is_err());
        assert!(mv
            .check_smime_names(&[p("emailAddress", "bob@example.org")], &emails)
            .is_err());
        assert!(mv.check_smime_names(&[], &[]).is_err());
        let iv = Rules::CabfSmimeIndividual;
        iv.check_smime_names(&[p("GN", "Alice"), p("CN", "Alice Lee")], &emails)
            .unwrap();
        iv.check_smime_names(&[p("pseudonym", "Lucky"), p("CN", "Lucky")], &emails)
            .unwrap();
        assert!(iv
            .check_smime_names(&[p("pseudonym", "Lucky"), p("CN", "Other")], &emails)
            .is_err());
        assert!(iv
            .check_smime_names(&[p("GN", "A"), p("title", "x@y.org")], &emails)
            .is_err());
        assert!(iv.check_subject(&[p("C", "DE")]).is_err());
        assert!(iv
            .check_subject(&[p("pseudonym", "L"), p("SN", "Lee")])
            .is_err());
    }
}
