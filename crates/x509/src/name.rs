//! Distinguished names: built from `(attribute, value)` pairs with the string
//! types RFC 5280 and the Baseline Requirements expect.

use const_oid::ObjectIdentifier;

use crate::derw;

/// An attribute the signer can put in a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Short name used in requests and profiles (`CN`, `O`, …).
    pub short: &'static str,
    /// Its OID.
    pub oid: ObjectIdentifier,
    /// Upper bound on the value length (RFC 5280 appendix A).
    pub max_len: usize,
    /// String type: 0x0c UTF8String, 0x13 PrintableString, 0x16 IA5String.
    pub tag: u8,
}

const fn attr(short: &'static str, oid: &str, max_len: usize, tag: u8) -> Attr {
    Attr {
        short,
        oid: ObjectIdentifier::new_unwrap(oid),
        max_len,
        tag,
    }
}

/// Every attribute known, with its encoding.
pub const ATTRS: &[Attr] = &[
    attr("CN", "2.5.4.3", 64, 0x0c),
    attr("SN", "2.5.4.4", 64, 0x0c),
    attr("serialNumber", "2.5.4.5", 64, 0x13),
    attr("C", "2.5.4.6", 2, 0x13),
    attr("L", "2.5.4.7", 128, 0x0c),
    attr("ST", "2.5.4.8", 128, 0x0c),
    attr("street", "2.5.4.9", 128, 0x0c),
    attr("O", "2.5.4.10", 64, 0x0c),
    attr("OU", "2.5.4.11", 64, 0x0c),
    attr("postalCode", "2.5.4.17", 40, 0x0c),
    attr("title", "2.5.4.12", 64, 0x0c),
    attr("GN", "2.5.4.42", 64, 0x0c),
    attr("pseudonym", "2.5.4.65", 128, 0x0c),
    attr("businessCategory", "2.5.4.15", 128, 0x0c),
    attr("organizationIdentifier", "2.5.4.97", 64, 0x0c),
    attr("jurisdictionL", "1.3.6.1.4.1.311.60.2.1.1", 128, 0x0c),
    attr("jurisdictionST", "1.3.6.1.4.1.311.60.2.1.2", 128, 0x0c),
    attr("jurisdictionC", "1.3.6.1.4.1.311.60.2.1.3", 2, 0x13),
    attr("emailAddress", "1.2.840.113549.1.9.1", 255, 0x16),
];

/// Whether `code` is an assigned ISO 3166-1 alpha-2 country code.
pub fn is_country(code: &str) -> bool {
    COUNTRIES.binary_search(&code).is_ok()
}

/// Looks an attribute up by short name (case-sensitive, as configured).
pub fn lookup(short: &str) -> Option<&'static Attr> {
    ATTRS.iter().find(|a| a.short == short)
}

/// Looks an attribute up by OID.
pub fn by_oid(oid: &ObjectIdentifier) -> Option<&'static Attr> {
    ATTRS.iter().find(|a| &a.oid == oid)
}

/// Why a name cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Attribute not known to the signer.
    #[error("unknown subject attribute {0}")]
    UnknownAttribute(String),
    /// Value empty, too long, or not representable in its string type.
    #[error("subject attribute {attr}: {why}")]
    BadValue {
        /// Attribute short name.
        attr: String,
        /// What is wrong.
        why: String,
    },
}

/// The assigned ISO 3166-1 alpha-2 codes (with XK, which the CA/Browser
/// Forum's linters accept), sorted; `XX` (unknown) is accepted beside them.
const COUNTRIES: [&str; 250] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "XK", "YE", "YT", "ZA", "ZM", "ZW",
];

fn printable(c: char) -> bool {
    c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c)
}

/// Encodes a Name: one attribute per RDN, in the order given.
pub fn encode(pairs: &[(String, String)]) -> Result<Vec<u8>, NameError> {
    let mut rdns = Vec::with_capacity(pairs.len());
    for (short, value) in pairs {
        let a = lookup(short).ok_or_else(|| NameError::UnknownAttribute(short.clone()))?;
        let bad = |why: &str| NameError::BadValue {
            attr: short.clone(),
            why: why.into(),
        };
        if value.is_empty() || value.trim() != value {
            return Err(bad("empty or with leading/trailing space"));
        }
        if value.chars().count() > a.max_len {
            return Err(bad(&format!("longer than {} characters", a.max_len)));
        }
        if value.chars().any(char::is_control) {
            return Err(bad("contains control characters"));
        }
        match a.tag {
            0x13 if !value.chars().all(printable) => return Err(bad("not a PrintableString")),
            0x16 if !value.is_ascii() => return Err(bad("not ASCII")),
            _ => {}
        }
        let country = matches!(a.short, "C" | "jurisdictionC");
        if country && !(value.len() == 2 && value.chars().all(|c| c.is_ascii_uppercase())) {
            return Err(bad("expected a two-letter ISO 3166 code in capitals"));
        }
        if country && value != "XX" && COUNTRIES.binary_search(&value.as_str()).is_err() {
            return Err(bad(&format!(
                "{value} is not an assigned ISO 3166-1 country code (XX for unknown)"
            )));
        }
        let atv = derw::seq(&[&derw::oid(&a.oid), &derw::tlv(a.tag, value.as_bytes())]);
        rdns.push(derw::set(&[&atv]));
    }
    let parts: Vec<&[u8]> = rdns.iter().map(Vec::as_slice).collect();
    Ok(derw::seq(&parts))
}

/// Parses a distinguished name written by RFC 4514's rules (the form
/// `openssl x509 -nameopt RFC2253` prints): the most specific RDN first
/// (`CN=www.example.org,O=Example\, Inc.,C=DE`), `\` escapes for `,`, `+`,
/// `"`, `\`, `<`, `>`, `;`, leading `#` or space and trailing space, and
/// `\XX` hex pairs. Returns `(attribute, value)` pairs in encoding order
/// (`C`, `O`, `CN` for that example), as [`encode`] and the protocol take
/// them. Attributes are the short names of [`ATTRS`] (`GN`, `givenName`,
/// `emailAddress`, `email` and dotted OIDs of those are accepted);
/// multi-valued RDNs (`+`) and hex-encoded values (`#…`) are refused.
pub fn parse_rfc4514(text: &str) -> Result<Vec<(String, String)>, String> {
    use std::str::FromStr;
    if text.trim().is_empty() {
        return Err("the subject is empty".into());
    }
    let name = x509_cert::name::Name::from_str(text).map_err(|e| {
        format!("{text:?} is not a distinguished name by RFC 4514 (ATTR=value,…; escape a comma in a value as \\,): {e}")
    })?;
    let mut pairs = Vec::new();
    for rdn in name.iter_rdn() {
        let atvs: Vec<_> = rdn.iter().collect();
        if atvs.len() != 1 {
            return Err(format!(
                "{rdn}: a multi-valued RDN (joined with +) is not supported; escape a literal + as \\+"
            ));
        }
        let atv = atvs[0];
        let attr = by_oid(&atv.oid)
            .ok_or_else(|| format!("{rdn}: attribute {} is not one the signer issues", atv.oid))?;
        let value = std::str::from_utf8(atv.value.value())
            .ok()
            .filter(|_| {
                use der::{Tag, Tagged};
                matches!(
                    atv.value.tag(),
                    Tag::Utf8String | Tag::PrintableString | Tag::Ia5String
                )
            })
            .ok_or_else(|| format!("{rdn}: give the value as text, not hex-encoded DER"))?;
        pairs.push((attr.short.to_string(), value.to_string()));
    }
    Ok(pairs)
}

/// Text form `CN=a, O=b` of `(attribute, value)` pairs, for logs and records.
pub fn display(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4514_subjects_with_escapes_come_out_in_encoding_order() {
        let pairs = parse_rfc4514(r"CN=www.example.org,O=Example\, Inc.,C=DE").unwrap();
        assert_eq!(
            pairs,
            [
                p("C", "DE"),
                p("O", "Example, Inc."),
                p("CN", "www.example.org")
            ]
        );
        assert_eq!(
            parse_rfc4514(r"CN=a\+b \3D c,emailAddress=x@example.org").unwrap(),
            [p("emailAddress", "x@example.org"), p("CN", "a+b = c")]
        );
        assert_eq!(
            parse_rfc4514("givenName=Ann,2.5.4.4=Lee").unwrap(),
            [p("SN", "Lee"), p("GN", "Ann")]
        );
        for bad in ["", "CN", "CN=a+O=b", "CN=#0403616263", "1.2.3.4=x", "XX=y"] {
            assert!(parse_rfc4514(bad).is_err(), "{bad:?}");
        }
        // What it parses, the encoder takes.
        encode(&parse_rfc4514(r"CN=Example\, Inc. Root,O=Example\, Inc.").unwrap()).unwrap();
    }

    fn p(k: &str, v: &str) -> (String, String) {
        (k.into(), v.into())
    }

    #[test]
    fn encodes_with_the_right_string_types() {
        let der = encode(&[p("C", "DE"), p("CN", "ä.example")]).unwrap();
        let name = <x509_cert::name::Name as der::Decode>::from_der(&der).unwrap();
        assert_eq!(name.to_string(), "CN=ä.example,C=DE");
        assert!(der.windows(4).any(|w| w == [0x13, 0x02, b'D', b'E']));
    }

    #[test]
    fn rejects_bad_values() {
        assert!(matches!(
            encode(&[p("XX", "a")]),
            Err(NameError::UnknownAttribute(_))
        ));
        assert!(encode(&[p("C", "Germany")]).is_err());
        // Two capitals that no country has: refused (the CA/Browser
        // Forum's linters reject them); XX stands for unknown.
        for unassigned in ["QQ", "AA", "ZZ", "UK", "EU"] {
            assert!(encode(&[p("C", unassigned)]).is_err(), "{unassigned}");
        }
        for assigned in ["DE", "GB", "XK", "XX", "AD", "ZW"] {
            encode(&[p("C", assigned)]).unwrap();
        }
        assert!(COUNTRIES.windows(2).all(|w| w[0] < w[1]), "sorted");
        assert!(encode(&[p("CN", "")]).is_err());
        assert!(encode(&[p("CN", " padded")]).is_err());
        assert!(encode(&[p("CN", &"x".repeat(65))]).is_err());
        assert!(encode(&[p("serialNumber", "a_b")]).is_err());
        assert!(encode(&[p("emailAddress", "ü@example.org")]).is_err());
    }
}
