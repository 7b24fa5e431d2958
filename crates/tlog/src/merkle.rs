//! The Merkle tree of RFC 9162 §2.1: hashes, inclusion and consistency
//! proofs, and their verification.
//!
//! A tree is read through [`Nodes`]: the hash of any *perfect* subtree,
//! `node(level, index)` covering leaves `index·2^level .. (index+1)·2^level`.
//! A store that keeps those (the repository does, written as leaves are
//! appended) answers any proof with O(log n) reads.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// A leaf's hash: SHA-256(0x00 ‖ leaf).
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(leaf);
    h.finalize().into()
}

/// An interior node's hash: SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Where the hashes of perfect subtrees come from.
pub trait Nodes {
    /// Why a hash could not be read.
    type Error;
    /// The hash of the perfect subtree at `level` (0: a leaf) and `index`.
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error>;
}

/// Why a proof could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError<E> {
    /// The sizes or index asked for do not describe a proof.
    #[error("{0}")]
    Range(String),
    /// The store could not answer.
    #[error("{0}")]
    Store(E),
}

/// The largest power of two smaller than `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// MTH(D[start..end]) for a range the RFC's recursion produces (`start` is
/// a multiple of the largest power of two not above `end - start`).
pub fn subtree<N: Nodes>(nodes: &N, start: u64, end: u64) -> Result<Hash, N::Error> {
    let n = end - start;
    if n == 0 {
        return Ok(empty_root());
    }
    if n.is_power_of_two() {
        return nodes.node(n.trailing_zeros() as u8, start / n);
    }
    let k = split(n);
    let left = nodes.node(k.trailing_zeros() as u8, start / k)?;
    let right = subtree(nodes, start + k, end)?;
    Ok(node_hash(&left, &right))
}

/// The root of the tree of the first `size` leaves.
pub fn root<N: Nodes>(nodes: &N, size: u64) -> Result<Hash, N::Error> {
    subtree(nodes, 0, size)
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves
/// (RFC 9162 §2.1.3.1), leaf side first.
pub fn inclusion_proof<N: Nodes>(
    nodes: &N,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError<N::Error>> {
    if index >= size {
        return Err(ProofError::Range(format!(
            "entry {index} is not in a tree of {size}"
        )));
    }
    let mut proof = Vec::new();
    path(nodes, index, 0, size, &mut proof).map_err(ProofError::Store)?;
    Ok(proof)
}

fn path<N: Nodes>(
    nodes: &N,
    m: u64,
    start: u64,
    end: u64,
    out: &mut Vec<Hash>,
) -> Result<(), N::Error> {
    let n = end - start;
    if n <= 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path(nodes, m, start, start + k, out)?;
        out.push(subtree(nodes, start + k, end)?);
    } else {
        path(nodes, m - k, start + k, end, out)?;
        out.push(subtree(nodes, start, start + k)?);
    }
    Ok(())
}

/// The consistency proof from the tree of `old` leaves to the tree of
/// `new` leaves (RFC 9162 §2.1.4.1).
pub fn consistency_proof<N: Nodes>(
    nodes: &N,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, ProofError<N::Error>> {
    if old > new {
        return Err(ProofError::Range(format!(
            "a tree of {old} cannot be a prefix of a tree of {new}"
        )));
    }
    let mut proof = Vec::new();
    if old == 0 || old == new {
        return Ok(proof);
    }
    subproof(nodes, old, 0, new, true, &mut proof).map_err(ProofError::Store)?;
    Ok(proof)
}

fn subproof<N: Nodes>(
    nodes: &N,
    m: u64,
    start: u64,
    end: u64,
    whole: bool,
    out: &mut Vec<Hash>,
) -> Result<(), N::Error> {
    let n = end - start;
    if m == n {
        if !whole {
            out.push(subtree(nodes, start, end)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(nodes, m, start, start + k, whole, out)?;
        out.push(subtree(nodes, start + k, end)?);
    } else {
        subproof(nodes, m - k, start + k, end, false, out)?;
        out.push(subtree(nodes, start, start + k)?);
    }
    Ok(())
}

/// Checks an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), String> {
    if index >= size {
        return Err(format!("entry {index} is not in a tree of {size}"));
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err("the inclusion proof is too long".into());
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err("the inclusion proof is too short".into());
    }
    if r != *root {
        return Err("the inclusion proof does not lead to the root".into());
    }
    Ok(())
}

/// Checks a consistency proof (RFC 9162 §2.1.4.2): the tree of `old`
/// leaves with root `old_root` is a prefix of the tree of `new` leaves with
/// root `new_root`.
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), String> {
    if old > new {
        return Err(format!("a tree of {old} cannot grow into a tree of {new}"));
    }
    if old == new {
        if !proof.is_empty() {
            return Err("a proof between equal sizes must be empty".into());
        }
        if old_root != new_root {
            return Err(format!("two different roots for size {old}"));
        }
        return Ok(());
    }
    if old == 0 {
        if !proof.is_empty() {
            return Err("a proof from the empty tree must be empty".into());
        }
        return Ok(());
    }
    if proof.is_empty() {
        return Err("the consistency proof is empty".into());
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if s == 0 {
            return Err("the consistency proof is too long".into());
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err("the consistency proof is too short".into());
    }
    if fr != *old_root {
        return Err(format!("the proof does not lead to the root of size {old}"));
    }
    if sr != *new_root {
        return Err(format!("the proof does not lead to the root of size {new}"));
    }
    Ok(())
}

/// Leaf hashes in memory, with the perfect subtrees computed on demand
/// (verifiers that hold every entry, and tests).
pub struct LeafHashes(pub Vec<Hash>);

impl Nodes for LeafHashes {
    type Error = String;
    fn node(&self, level: u8, index: u64) -> Result<Hash, String> {
        let width = 1u64 << level;
        let start = index * width;
        if start + width > self.0.len() as u64 {
            return Err(format!("no subtree at level {level}, index {index}"));
        }
        Ok(perfect(&self.0[start as usize..(start + width) as usize]))
    }
}

fn perfect(leaves: &[Hash]) -> Hash {
    if leaves.len() == 1 {
        return leaves[0];
    }
    let half = leaves.len() / 2;
    node_hash(&perfect(&leaves[..half]), &perfect(&leaves[half..]))
}

/// Builds the perfect-subtree hashes level by level as leaves are
/// appended: after leaf `i` (0-based) it yields every node that leaf
/// completes, as `(level, index, hash)`, level 0 (the leaf) first.
/// `left` returns the hash of an already completed node.
pub fn completed_by<E>(
    index: u64,
    leaf: Hash,
    mut left: impl FnMut(u8, u64) -> Result<Hash, E>,
) -> Result<Vec<(u8, u64, Hash)>, E> {
    let mut out = vec![(0u8, index, leaf)];
    let (mut level, mut i, mut h) = (0u8, index, leaf);
    while i & 1 == 1 {
        let sibling = match out.iter().find(|(l, x, _)| *l == level && *x == i - 1) {
            Some((_, _, s)) => *s,
            None => left(level, i - 1)?,
        };
        h = node_hash(&sibling, &h);
        level += 1;
        i >>= 1;
        out.push((level, i, h));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn the_empty_tree_and_a_known_root() {
        assert_eq!(
            hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // RFC 6962's reference test tree (the leaves of the certificate-
        // transparency test vectors): root of all eight leaves.
        let data: [&[u8]; 8] = [
            b"",
            &[0x00],
            &[0x10],
            &[0x20, 0x21],
            &[0x30, 0x31],
            &[0x40, 0x41, 0x42, 0x43],
            &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            &[
                0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d,
                0x6e, 0x6f,
            ],
        ];
        let tree = LeafHashes(data.iter().map(|d| leaf_hash(d)).collect());
        assert_eq!(
            hex(&root(&tree, 8).unwrap()),
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
        );
        assert_eq!(
            hex(&root(&tree, 1).unwrap()),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        assert_eq!(
            hex(&root(&tree, 3).unwrap()),
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"
        );
    }

    fn hex(h: &Hash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn every_proof_verifies_and_every_altered_one_fails() {
        let all = leaves(33);
        let tree = LeafHashes(all.clone());
        for size in 1..=33u64 {
            let r = root(&tree, size).unwrap();
            assert_eq!(r, reference_root(&all[..size as usize]), "root {size}");
            for index in 0..size {
                let proof = inclusion_proof(&tree, index, size).unwrap();
                verify_inclusion(&all[index as usize], index, size, &proof, &r).unwrap();
                let other = (index + 1) % size;
                if other != index {
                    assert!(
                        verify_inclusion(&all[index as usize], other, size, &proof, &r).is_err()
                    );
                }
                for i in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[i][0] ^= 1;
                    assert!(verify_inclusion(&all[index as usize], index, size, &bad, &r).is_err());
                }
            }
            for old in 0..=size {
                let old_root = root(&tree, old).unwrap();
                let proof = consistency_proof(&tree, old, size).unwrap();
                verify_consistency(old, size, &old_root, &r, &proof)
                    .unwrap_or_else(|e| panic!("{old} → {size}: {e}"));
                if old > 0 && old < size {
                    let mut forged = all[..size as usize].to_vec();
                    forged[(old - 1) as usize][0] ^= 1;
                    let forged_root = reference_root(&forged);
                    assert!(
                        verify_consistency(old, size, &old_root, &forged_root, &proof).is_err()
                    );
                    for i in 0..proof.len() {
                        let mut bad = proof.clone();
                        bad[i][5] ^= 1;
                        assert!(verify_consistency(old, size, &old_root, &r, &bad).is_err());
                    }
                    let mut short = proof.clone();
                    short.pop();
                    assert!(verify_consistency(old, size, &old_root, &r, &short).is_err());
                }
            }
        }
    }

    #[test]
    fn completed_nodes_are_the_perfect_subtrees() {
        let all = leaves(20);
        let tree = LeafHashes(all.clone());
        let mut stored = std::collections::HashMap::new();
        for (i, leaf) in all.iter().enumerate() {
            let made = completed_by::<String>(i as u64, *leaf, |l, x| {
                stored.get(&(l, x)).copied().ok_or("missing".into())
            })
            .unwrap();
            for (l, x, h) in made {
                assert_eq!(h, tree.node(l, x).unwrap());
                stored.insert((l, x), h);
            }
        }
        assert_eq!(stored.len(), 20 + 10 + 5 + 2 + 1);
    }
}
