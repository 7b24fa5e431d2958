//! The Merkle vectors of docs/protocol.md §10, checked against this crate.

#![allow(clippy::unwrap_used)]

use signer_tlog::merkle::{self, Hash, LeafHashes};

fn tree() -> LeafHashes {
    let data: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    LeafHashes(data.iter().map(|d| merkle::leaf_hash(&hex(d))).collect())
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn show(proof: &[Hash]) -> String {
    proof
        .iter()
        .map(|h| h.iter().map(|b| format!("{b:02x}")).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The code block that follows `after` in the spec.
fn block(spec: &str, after: &str) -> String {
    let at = spec
        .find(after)
        .unwrap_or_else(|| panic!("no {after:?} in the spec"));
    let rest = &spec[at..];
    let open = rest.find("```\n").unwrap() + 4;
    let close = rest[open..].find("```").unwrap() + open;
    rest[open..close].trim().to_string()
}

#[test]
fn the_proofs_printed_in_the_spec_are_this_crates() {
    let spec = include_str!("../../../docs/protocol.md");
    let t = tree();
    let root8 = merkle::root(&t, 8).unwrap();
    let root3 = merkle::root(&t, 3).unwrap();
    let consistency = merkle::consistency_proof(&t, 3, 8).unwrap();
    let inclusion = merkle::inclusion_proof(&t, 2, 8).unwrap();
    merkle::verify_consistency(3, 8, &root3, &root8, &consistency).unwrap();
    merkle::verify_inclusion(&t.0[2], 2, 8, &inclusion, &root8).unwrap();
    assert_eq!(
        block(spec, "consistency proof from 3 to 8 is"),
        show(&consistency),
        "docs/protocol.md §10: consistency proof 3 → 8"
    );
    assert_eq!(
        block(
            spec,
            "and the inclusion proof of leaf 2 in the tree of 8 is"
        ),
        show(&inclusion),
        "docs/protocol.md §10: inclusion proof of leaf 2"
    );
}
