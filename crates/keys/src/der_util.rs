//! Small DER encodings the HSM layer needs: SubjectPublicKeyInfo from key
//! attributes and ECDSA signatures from raw `r ‖ s`.

use const_oid::ObjectIdentifier;
use der::asn1::{BitString, UintRef};
use der::{Any, Encode, Sequence};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

/// rsaEncryption.
pub const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// id-ecPublicKey.
pub const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// secp256r1.
pub const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// secp384r1.
pub const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// id-Ed25519 (RFC 8410): the algorithm of Ed25519 keys and, in PKCS#11,
/// the curve of an Edwards key.
pub const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

#[derive(Sequence)]
struct RsaPublicKey<'a> {
    modulus: UintRef<'a>,
    public_exponent: UintRef<'a>,
}

/// SubjectPublicKeyInfo of an RSA key from its modulus and exponent (big-endian bytes).
pub fn spki_rsa(modulus: &[u8], exponent: &[u8]) -> der::Result<Vec<u8>> {
    let key = RsaPublicKey {
        modulus: UintRef::new(modulus)?,
        public_exponent: UintRef::new(exponent)?,
    }
    .to_der()?;
    SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: RSA_ENCRYPTION,
            parameters: Some(Any::from(der::asn1::Null)),
        },
        subject_public_key: BitString::from_bytes(&key)?,
    }
    .to_der()
}

/// SubjectPublicKeyInfo of an Ed25519 key (RFC 8410: no parameters).
pub fn spki_ed25519(key: &[u8]) -> der::Result<Vec<u8>> {
    SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: ED25519,
            parameters: None,
        },
        subject_public_key: BitString::from_bytes(key)?,
    }
    .to_der()
}

/// SubjectPublicKeyInfo of an EC key from its curve and uncompressed point.
pub fn spki_ec(curve: ObjectIdentifier, point: &[u8]) -> der::Result<Vec<u8>> {
    SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: EC_PUBLIC_KEY,
            parameters: Some(Any::encode_from(&curve)?),
        },
        subject_public_key: BitString::from_bytes(point)?,
    }
    .to_der()
}

#[derive(Sequence)]
struct EcdsaSigValue<'a> {
    r: UintRef<'a>,
    s: UintRef<'a>,
}

/// `Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` from raw `r ‖ s`
/// (both halves equally long, at most 66 bytes each).
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) || raw.len() > 132 {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    EcdsaSigValue {
        r: UintRef::new(r).ok()?,
        s: UintRef::new(s).ok()?,
    }
    .to_der()
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_der_pads_and_strips() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r needs a leading zero
        raw[63] = 0x01; // s is 1 after stripping zeros
        let der = ecdsa_raw_to_der(&raw).unwrap();
        assert_eq!(&der[..4], &[0x30, 2 + 33 + 3, 0x02, 33]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 0x01, 0x01]);
        assert!(ecdsa_raw_to_der(&[1, 2, 3]).is_none());
    }

    #[test]
    fn p521_sized_signature_uses_long_form_length() {
        let raw = vec![0xffu8; 132];
        let der = ecdsa_raw_to_der(&raw).unwrap();
        assert_eq!(&der[..3], &[0x30, 0x81, 2 * (2 + 67)]);
    }
}
