//! A minimal DER writer: tag-length-value with definite, minimal lengths.
//! Enough for certificates and CRLs, whose structure we encode ourselves.

use const_oid::ObjectIdentifier;

/// Appends the DER length octets of `len`.
pub fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// Length of the header (tag + length octets) for `len` content bytes.
pub fn header_len(len: usize) -> usize {
    1 + if len < 0x80 {
        1
    } else {
        1 + (usize::BITS as usize / 8 - len.leading_zeros() as usize / 8)
    }
}

/// One TLV.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    push_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// SEQUENCE of already encoded parts.
pub fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// SET of already encoded parts (DER sorts SET OF elements; callers pass one
/// element per RDN, as certificates almost always have).
pub fn set(parts: &[&[u8]]) -> Vec<u8> {
    let mut sorted: Vec<&[u8]> = parts.to_vec();
    sorted.sort();
    tlv(0x31, &sorted.concat())
}

/// OBJECT IDENTIFIER.
pub fn oid(oid: &ObjectIdentifier) -> Vec<u8> {
    tlv(0x06, oid.as_bytes())
}

/// INTEGER from unsigned big-endian bytes (leading zeros stripped, a zero
/// byte added where the high bit is set).
pub fn uint(bytes: &[u8]) -> Vec<u8> {
    let start = bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    let bytes = if bytes.is_empty() {
        &[0u8][..]
    } else {
        &bytes[start..]
    };
    let mut content = Vec::with_capacity(bytes.len() + 1);
    if bytes[0] & 0x80 != 0 {
        content.push(0);
    }
    content.extend_from_slice(bytes);
    tlv(0x02, &content)
}

/// INTEGER from a small non-negative number.
pub fn small_uint(n: u64) -> Vec<u8> {
    uint(&n.to_be_bytes())
}

/// BIT STRING with no unused bits.
pub fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(bytes.len() + 1);
    content.push(0);
    content.extend_from_slice(bytes);
    tlv(0x03, &content)
}

/// OCTET STRING.
pub fn octet_string(bytes: &[u8]) -> Vec<u8> {
    tlv(0x04, bytes)
}

/// Context-specific constructed `[n]` (EXPLICIT wrapping).
pub fn explicit(n: u8, content: &[u8]) -> Vec<u8> {
    tlv(0xa0 | n, content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        for len in [0usize, 1, 127, 128, 255, 256, 65535, 65536, 1 << 24] {
            let mut out = Vec::new();
            push_len(&mut out, len);
            assert_eq!(out.len() + 1, header_len(len), "{len}");
        }
        assert_eq!(uint(&[0x00, 0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(uint(&[0, 0, 1]), vec![0x02, 0x01, 0x01]);
        assert_eq!(small_uint(0), vec![0x02, 0x01, 0x00]);
    }
}
