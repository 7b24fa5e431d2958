//! Entry points for the fuzz targets in `fuzz/` (and their property-test
//! twins): whatever the bytes, no panic, and what parses behaves.

use crate::crl::{parse, rebuild, CrlDiff, OwnedEntry};
use crate::Csr;

/// A CSR as received from the web application: parsed, key inspected,
/// signature verified (errors are fine, panics are not).
pub fn csr(data: &[u8]) {
    if let Ok(unverified) = Csr::parse(data) {
        let _ = unverified.key();
        let _ = unverified.verify();
    }
}

/// A client's stored CRL (any bytes) with a difference from the signer
/// (taken from the input's tail): rebuilding never panics, and a CRL that
/// parses rebuilds, with nothing changed, into one that parses again with
/// the same entries.
pub fn crl_rebuild(data: &[u8]) {
    // First octet: how many of the following octets describe the difference;
    // the rest is the client's stored CRL.
    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let (tail, old) = rest.split_at(usize::from(len).min(rest.len()));
    let mut added = Vec::new();
    let mut removed = Vec::new();
    for chunk in tail.chunks(6) {
        let serial: Vec<u8> = chunk.iter().skip(1).copied().collect();
        if serial.is_empty() {
            continue;
        }
        if chunk[0] & 1 == 0 {
            removed.push(serial);
        } else {
            added.push(OwnedEntry {
                serial,
                revoked_at: 1_700_000_000 + i64::from(chunk[0]),
                reason: chunk[0] % 11,
                invalidity_date: (chunk[0] & 2 != 0).then_some(1_690_000_000),
            });
        }
    }
    let diff = CrlDiff {
        added,
        removed,
        this_update: 1_700_000_100,
        next_update: 1_700_086_500,
        number: vec![0x01, 0x02],
        signature: vec![0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01],
    };
    let _ = rebuild(old, &diff);
    if let Ok((header, entries)) = parse(old) {
        let same = CrlDiff {
            added: Vec::new(),
            removed: Vec::new(),
            this_update: header.this_update,
            next_update: header.next_update,
            number: header.number.clone(),
            signature: vec![1, 2, 3],
        };
        if let Ok(again) = rebuild(old, &same) {
            let (_, reparsed) = parse(&again).expect("a rebuilt CRL parses");
            assert_eq!(reparsed.len(), {
                let mut serials: Vec<&[u8]> = entries.iter().map(|e| e.serial.as_slice()).collect();
                serials.sort();
                serials.dedup();
                serials.len()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    proptest::proptest! {
        #[test]
        fn csr_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            super::csr(&data);
        }

        #[test]
        fn crl_rebuild_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            super::crl_rebuild(&data);
        }
    }
}
