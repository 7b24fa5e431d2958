//! A sealed batch as the twin reads it, with keys in SoftHSM2: a batch
//! opens only whole, under its origin's key and name, with every event the
//! one its seal names.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use sha2::Digest as _;
use signer_hsm::{
    KeyGenerator, KeyKind, KeySpec, PinSource, Pkcs11Backend, SigningBackend, TokenConfig,
    TokenSelector,
};
use signer_replication::seal::{Batch, Seal};
use signer_testsupport::{SoftHsm, SOFTHSM_MODULE};

#[test]
fn a_batch_opens_only_whole_under_its_origins_key() {
    let hsm = SoftHsm::new("batch");
    std::env::set_var("SOFTHSM2_CONF", &hsm.conf);
    let token = TokenConfig {
        module: SOFTHSM_MODULE.into(),
        token: TokenSelector::Label(hsm.label.clone()),
        pin: PinSource::File(hsm.pin_file()),
    };
    let admin = Pkcs11Backend::open(token.clone(), Vec::new(), 1).unwrap();
    let keys: Vec<KeySpec> = ["repl-a", "repl-b"]
        .iter()
        .map(|label| {
            admin.generate(KeyKind::EcP256, label).unwrap();
            KeySpec {
                name: label.to_string(),
                label: Some(label.to_string()),
                id: None,
            }
        })
        .collect();
    let backend = Pkcs11Backend::open(token, keys, 1).unwrap();
    let (key_a, key_b) = (
        backend.public_key("repl-a").unwrap(),
        backend.public_key("repl-b").unwrap(),
    );
    let events: Vec<(u64, Vec<u8>)> = (7..10).map(|seq| (seq, vec![seq as u8; 40])).collect();
    let seal = Seal::make(&backend, "repl-a", "signer-a", 0x5eed, &events).unwrap();
    let bytes = Batch::encode(&seal, &events);

    // As made: the seal and the events' bytes, in order.
    let (opened, got) = Batch::open(&bytes, "signer-a", &key_a).unwrap();
    assert_eq!((opened.body.first, opened.last()), (7, 9));
    assert_eq!(
        got,
        events.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>()
    );

    let refused = |bytes: &[u8], origin: &str, key, words: &str| {
        let err = Batch::open(bytes, origin, key).unwrap_err();
        assert!(err.contains(words), "{words:?} in {err}");
    };
    // Someone else's key, someone else's stream.
    refused(&bytes, "signer-a", &key_b, "seal of events 7..9");
    refused(&bytes, "signer-b", &key_a, "names origin \"signer-a\"");
    // Sealed by the twin's own key under A's name (a stolen NATS seat and
    // the wrong key): not A's.
    let by_b = Seal::make(&backend, "repl-b", "signer-a", 0x5eed, &events).unwrap();
    refused(
        &Batch::encode(&by_b, &events),
        "signer-a",
        &key_a,
        "seal of events",
    );
    // An event altered, one left out, one added.
    let mut altered = events.clone();
    altered[1].1[0] ^= 1;
    refused(
        &Batch::encode(&seal, &altered),
        "signer-a",
        &key_a,
        "event 8 of the batch",
    );
    refused(
        &Batch::encode(&seal, &events[..2]),
        "signer-a",
        &key_a,
        "a batch of 2 events under a seal of 3",
    );
    let mut more = events.clone();
    more.push((10, vec![10; 40]));
    refused(
        &Batch::encode(&seal, &more),
        "signer-a",
        &key_a,
        "a batch of 4 events under a seal of 3",
    );
    // Absent, cut short, or not a batch at all.
    refused(b"", "signer-a", &key_a, "unreadable batch");
    refused(
        &bytes[..bytes.len() / 2],
        "signer-a",
        &key_a,
        "unreadable batch",
    );
    refused(&seal.encode(), "signer-a", &key_a, "unreadable batch");
    // A replay is the same batch: it opens, and the twin skips what it has
    // applied (sequence numbers), which tests/twin_forgery.rs shows.
    assert!(Batch::open(&bytes, "signer-a", &key_a).is_ok());

    // Compressed (`batch-lz4`), it expands to the same bytes and is judged
    // the same way: compression is outside what the seal vouches for.
    let packed = Batch::compress(&bytes);
    assert_eq!(Batch::decompress(&packed).unwrap(), bytes);
    let altered_packed = Batch::compress(&Batch::encode(&seal, &altered));
    refused(
        &Batch::decompress(&altered_packed).unwrap(),
        "signer-a",
        &key_a,
        "event 8 of the batch",
    );
    // Someone else's, compressed: the same refusals.
    let by_b_packed = Batch::compress(&Batch::encode(&by_b, &events));
    refused(
        &Batch::decompress(&by_b_packed).unwrap(),
        "signer-a",
        &key_a,
        "seal of events",
    );
    refused(
        &Batch::decompress(&packed).unwrap(),
        "signer-b",
        &key_a,
        "names origin \"signer-a\"",
    );
    // A lone seal compressed is no batch.
    refused(
        &Batch::decompress(&Batch::compress(&seal.encode())).unwrap(),
        "signer-a",
        &key_a,
        "unreadable batch",
    );
}

#[test]
fn a_compressed_batch_expands_only_to_what_it_claims_within_the_limit() {
    // Rounds of real events shrink (names, extensions and field names
    // repeat from one certificate to the next).
    let round: Vec<u8> = (0..256u32)
        .flat_map(|i| {
            let mut e = b"\x8a\xa6origin\xa8signer-a\xa3seq".to_vec();
            e.extend_from_slice(&i.to_be_bytes());
            e.extend_from_slice(&[0x30, 0x82, 0x02, 0x10]);
            e.extend_from_slice(&sha2::Sha256::digest(i.to_be_bytes()));
            e.extend_from_slice(b"CN=Example Sub CA,O=Example,C=DE; server profile; ocsp, crl");
            e
        })
        .collect();
    let packed = Batch::compress(&round);
    assert!(
        packed.len() * 2 < round.len(),
        "{} of {}",
        packed.len(),
        round.len()
    );
    assert_eq!(Batch::decompress(&packed).unwrap(), round);

    let refused = |message: &[u8], words: &str| {
        let err = Batch::decompress(message).unwrap_err();
        assert!(err.contains(words), "{words:?} in {err}");
    };
    // Absent or shorter than its length.
    refused(b"", "shorter than its length");
    refused(b"\x10\x00\x00", "shorter than its length");
    // A bomb: a few bytes claiming far more than a round can be. Refused
    // before anything is expanded.
    let mut bomb = (64u32 << 20).to_le_bytes().to_vec();
    bomb.extend_from_slice(&packed[4..]);
    refused(&bomb, "claiming 67108864 bytes (at most 2097152)");
    // Claiming more or less than it expands to, or no LZ4 block at all.
    let mut more = ((round.len() + 1) as u32).to_le_bytes().to_vec();
    more.extend_from_slice(&packed[4..]);
    assert!(Batch::decompress(&more).is_err());
    let mut less = ((round.len() - 1) as u32).to_le_bytes().to_vec();
    less.extend_from_slice(&packed[4..]);
    assert!(Batch::decompress(&less).is_err());
    refused(&[16, 0, 0, 0, 0xff, 0xff, 0xff], "does not expand");
    // Cut short.
    assert!(Batch::decompress(&packed[..packed.len() / 2]).is_err());
}
