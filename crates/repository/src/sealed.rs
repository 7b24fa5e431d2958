//! Every stored record carries its own checksum.
//!
//! ```text
//! value = msgpack(record) ‖ CRC-32 (IEEE) of (table name ‖ 0x00 ‖ msgpack), big-endian
//! ```
//!
//! redb checks its pages when a file is opened with the integrity check,
//! but a page can be damaged while the daemon runs, and a byte flipped
//! inside a value that still decodes would be served as if it were true. A
//! record whose checksum fails is reported as [`RepoError::Corrupt`] naming
//! the table, and is never handed out. The table name is part of the
//! checksum, so a value copied into another table does not pass either.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{storage, RepoError};

/// Length of the checksum suffix.
const SUFFIX: usize = 4;

fn crc(table: &str, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(table.as_bytes());
    h.update(&[0]);
    h.update(payload);
    h.finalize()
}

/// Encodes `value` for `table` with its checksum.
pub(crate) fn seal<T: Serialize + ?Sized>(table: &str, value: &T) -> Result<Vec<u8>, RepoError> {
    let mut bytes = rmp_serde::to_vec_named(value).map_err(storage)?;
    let sum = crc(table, &bytes);
    bytes.extend_from_slice(&sum.to_be_bytes());
    Ok(bytes)
}

/// [`seal`] with the fields in order instead of by name (msgpack array):
/// for the records kept by the million (certificates, revocations), smaller
/// and quicker to read. [`open`] reads either form, so records written
/// by name before are read as they are.
pub(crate) fn seal_compact<T: Serialize + ?Sized>(
    table: &str,
    value: &T,
) -> Result<Vec<u8>, RepoError> {
    let mut bytes = rmp_serde::to_vec(value).map_err(storage)?;
    let sum = crc(table, &bytes);
    bytes.extend_from_slice(&sum.to_be_bytes());
    Ok(bytes)
}

/// `bytes` with its checksum for `table`, as they are (no encoding).
pub(crate) fn seal_raw(table: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + SUFFIX);
    out.extend_from_slice(bytes);
    out.extend_from_slice(&crc(table, bytes).to_be_bytes());
    out
}

/// The payload of a sealed value, if its checksum holds.
pub(crate) fn payload<'a>(table: &str, bytes: &'a [u8]) -> Result<&'a [u8], RepoError> {
    let Some(split) = bytes.len().checked_sub(SUFFIX) else {
        return Err(RepoError::Corrupt(format!(
            "{table}: a record of {} bytes is too short to carry its checksum",
            bytes.len()
        )));
    };
    let (payload, sum) = bytes.split_at(split);
    let stored = u32::from_be_bytes([sum[0], sum[1], sum[2], sum[3]]);
    if crc(table, payload) != stored {
        return Err(RepoError::Corrupt(format!(
            "{table}: a record fails its checksum (damaged on disk)"
        )));
    }
    Ok(payload)
}

/// Checks and decodes a value written by [`seal`] for `table`.
pub(crate) fn open<T: DeserializeOwned>(table: &str, bytes: &[u8]) -> Result<T, RepoError> {
    rmp_serde::from_slice(payload(table, bytes)?)
        .map_err(|e| RepoError::Corrupt(format!("{table}: a record does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_single_bit_flip_is_found() {
        let sealed = seal("certs_v1", &("issuer", vec![1u8, 2, 3], 42u64)).unwrap();
        let back: (String, Vec<u8>, u64) = open("certs_v1", &sealed).unwrap();
        assert_eq!(back, ("issuer".into(), vec![1, 2, 3], 42));
        for i in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(
                matches!(
                    open::<(String, Vec<u8>, u64)>("certs_v1", &bad),
                    Err(RepoError::Corrupt(_))
                ),
                "bit {i}"
            );
        }
    }

    #[test]
    fn a_value_moved_to_another_table_fails() {
        let sealed = seal("requests_v1", &"x").unwrap();
        assert!(open::<String>("certs_v1", &sealed).is_err());
        assert!(open::<String>("certs_v1", &[1, 2]).is_err());
    }
}
