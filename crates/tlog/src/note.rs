//! Checkpoints as C2SP signed notes (c2sp.org/signed-note,
//! c2sp.org/tlog-checkpoint) and witness cosignatures
//! (c2sp.org/tlog-cosignature, `cosignature/v1`), Ed25519.
//!
//! ```text
//! signer-a.example/audit          ← origin
//! 18234                           ← tree size
//! X0p8…=                          ← root hash, base64
//!                                 ← blank line
//! — signer-a.example/audit <base64(key ID ‖ Ed25519 signature)>
//! — signer-b.example/witness <base64(key ID ‖ timestamp ‖ Ed25519 signature)>
//! ```
//!
//! Signing is the caller's (the key is in the HSM): it gets the message and
//! returns the 64-byte signature.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::merkle::Hash;

/// Signature type byte of a log's own Ed25519 signature.
pub const TYPE_ED25519: u8 = 0x01;
/// Signature type byte of a timestamped Ed25519 witness cosignature.
pub const TYPE_COSIGNATURE: u8 = 0x04;

/// Largest note accepted (text and signatures).
pub const MAX_NOTE: usize = 16 * 1024;

/// A tree head: the three lines of a checkpoint's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name (a schema-less URL, no spaces or `+`).
    pub origin: String,
    /// Number of entries.
    pub size: u64,
    /// Merkle root of those entries.
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: origin, size, base64 root, each ending in a newline.
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Parses a note text (extension lines are refused: this log writes none).
    pub fn parse_text(text: &str) -> Result<Checkpoint, String> {
        let body = text
            .strip_suffix('\n')
            .ok_or("a checkpoint text ends with a newline")?;
        let lines: Vec<&str> = body.split('\n').collect();
        if lines.len() != 3 {
            return Err(format!(
                "a checkpoint has 3 lines (origin, size, root), this has {}",
                lines.len()
            ));
        }
        let origin = lines[0];
        check_name(origin).map_err(|e| format!("origin: {e}"))?;
        let size_text = lines[1];
        if size_text.is_empty()
            || !size_text.bytes().all(|b| b.is_ascii_digit())
            || (size_text.len() > 1 && size_text.starts_with('0'))
        {
            return Err(format!("size {size_text:?} is not a decimal number"));
        }
        let size = size_text
            .parse()
            .map_err(|_| format!("size {size_text:?} is too large"))?;
        let root: Hash = B64
            .decode(lines[2])
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| format!("root {:?} is not a base64 SHA-256 hash", lines[2]))?;
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
        })
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c == '+' || c.is_control())
    {
        return Err(format!(
            "{name:?} contains a space, a + or a control character"
        ));
    }
    Ok(())
}

/// An Ed25519 public key with the name it signs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    /// Key name (a log's origin, or a witness's name).
    pub name: String,
    /// Signature type: [`TYPE_ED25519`] or [`TYPE_COSIGNATURE`].
    pub kind: u8,
    /// The 32-byte Ed25519 public key.
    pub key: [u8; 32],
}

impl Verifier {
    /// A verifier for `name` and `key` of signature type `kind`.
    pub fn new(name: &str, kind: u8, key: [u8; 32]) -> Result<Verifier, String> {
        check_name(name).map_err(|e| format!("key name: {e}"))?;
        if kind != TYPE_ED25519 && kind != TYPE_COSIGNATURE {
            return Err(format!(
                "signature type {kind:#04x} is not one this log uses"
            ));
        }
        Ok(Verifier {
            name: name.to_string(),
            kind,
            key,
        })
    }

    /// SHA-256(name ‖ 0x0A ‖ type ‖ key)[:4].
    pub fn key_id(&self) -> [u8; 4] {
        let mut h = Sha256::new();
        h.update(self.name.as_bytes());
        h.update([b'\n', self.kind]);
        h.update(self.key);
        let d = h.finalize();
        [d[0], d[1], d[2], d[3]]
    }

    /// The verifier key string: `name+keyid(hex)+base64(type ‖ key)`.
    pub fn vkey(&self) -> String {
        let mut material = vec![self.kind];
        material.extend_from_slice(&self.key);
        format!(
            "{}+{}+{}",
            self.name,
            self.key_id()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            B64.encode(material)
        )
    }

    /// Parses a verifier key string, checking its key ID.
    pub fn from_vkey(text: &str) -> Result<Verifier, String> {
        let text = text.trim();
        // Names have no `+`; the base64 key material may.
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(id), Some(material)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err("a verifier key is name+keyid+base64".into());
        };
        let material = B64
            .decode(material)
            .map_err(|_| "the key material is not base64".to_string())?;
        let (&kind, key) = material.split_first().ok_or("the key material is empty")?;
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| "an Ed25519 key has 32 bytes".to_string())?;
        let v = Verifier::new(name, kind, key)?;
        let want: String = v.key_id().iter().map(|b| format!("{b:02x}")).collect();
        if id != want {
            return Err(format!(
                "key ID {id} does not match the key (expected {want})"
            ));
        }
        Ok(v)
    }

    fn verify_raw(&self, message: &[u8], signature: &[u8]) -> Result<(), String> {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, self.key)
            .verify(message, signature)
            .map_err(|_| format!("the signature of {} does not verify", self.name))
    }
}

/// The message a `cosignature/v1` signs.
pub fn cosigned_message(checkpoint_text: &str, timestamp: u64) -> String {
    format!("cosignature/v1\ntime {timestamp}\n{checkpoint_text}")
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLine {
    /// Key name.
    pub name: String,
    /// Key ID (first four bytes).
    pub key_id: [u8; 4],
    /// The rest: the signature (for cosignatures, timestamp first).
    pub signature: Vec<u8>,
}

impl SignatureLine {
    /// Parses one line `— <name> <base64(key ID ‖ signature)>` (without its
    /// newline).
    pub fn parse(line: &str) -> Result<SignatureLine, String> {
        let rest = line
            .strip_prefix("— ")
            .ok_or_else(|| format!("{line:?} is not a signature line"))?;
        let (name, sig) = rest
            .split_once(' ')
            .ok_or_else(|| format!("{line:?} is not a signature line"))?;
        check_name(name)?;
        let bytes = B64
            .decode(sig)
            .map_err(|_| format!("the signature of {name} is not base64"))?;
        if bytes.len() < 5 {
            return Err(format!("the signature of {name} is too short"));
        }
        Ok(SignatureLine {
            name: name.to_string(),
            key_id: [bytes[0], bytes[1], bytes[2], bytes[3]],
            signature: bytes[4..].to_vec(),
        })
    }

    /// The line, newline included.
    pub fn render(&self) -> String {
        let mut bytes = self.key_id.to_vec();
        bytes.extend_from_slice(&self.signature);
        format!("— {} {}\n", self.name, B64.encode(bytes))
    }
}

/// A checkpoint with its signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// The tree head.
    pub checkpoint: Checkpoint,
    /// Signature lines in order.
    pub signatures: Vec<SignatureLine>,
}

impl SignedCheckpoint {
    /// Signs `checkpoint` as the log: `sign` gets the note text and returns
    /// the Ed25519 signature.
    pub fn sign<E>(
        checkpoint: Checkpoint,
        log: &Verifier,
        sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
    ) -> Result<SignedCheckpoint, E> {
        let signature = sign(checkpoint.text().as_bytes())?;
        Ok(SignedCheckpoint {
            checkpoint,
            signatures: vec![SignatureLine {
                name: log.name.clone(),
                key_id: log.key_id(),
                signature,
            }],
        })
    }

    /// The note: text, blank line, signature lines.
    pub fn render(&self) -> String {
        let mut out = self.checkpoint.text();
        out.push('\n');
        for s in &self.signatures {
            out.push_str(&s.render());
        }
        out
    }

    /// Parses a note (not yet verified).
    pub fn parse(note: &str) -> Result<SignedCheckpoint, String> {
        if note.len() > MAX_NOTE {
            return Err(format!("a note of {} bytes is too large", note.len()));
        }
        if note.chars().any(|c| c.is_control() && c != '\n') {
            return Err("a note contains a control character".into());
        }
        let (text, sigs) = note
            .rsplit_once("\n\n")
            .ok_or("a note has a blank line before its signatures")?;
        let checkpoint = Checkpoint::parse_text(&format!("{text}\n"))?;
        let sigs = sigs
            .strip_suffix('\n')
            .ok_or("a note ends with a newline")?;
        let signatures = sigs
            .split('\n')
            .map(SignatureLine::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if signatures.is_empty() || signatures.len() > 16 {
            return Err(format!(
                "a note has 1 to 16 signatures, this has {}",
                signatures.len()
            ));
        }
        Ok(SignedCheckpoint {
            checkpoint,
            signatures,
        })
    }

    fn line_of(&self, v: &Verifier) -> Option<&SignatureLine> {
        self.signatures
            .iter()
            .find(|s| s.name == v.name && s.key_id == v.key_id())
    }

    /// Checks the log's own signature (`log`, type [`TYPE_ED25519`]).
    pub fn verify_log(&self, log: &Verifier) -> Result<(), String> {
        if self.checkpoint.origin != log.name {
            return Err(format!(
                "the checkpoint is of log {:?}, not {:?}",
                self.checkpoint.origin, log.name
            ));
        }
        let line = self
            .line_of(log)
            .ok_or_else(|| format!("no signature of {} on the checkpoint", log.name))?;
        log.verify_raw(self.checkpoint.text().as_bytes(), &line.signature)
    }

    /// Adds a witness's cosignature made at `timestamp`: `sign` gets the
    /// `cosignature/v1` message and returns the Ed25519 signature.
    pub fn cosign<E>(
        &mut self,
        witness: &Verifier,
        timestamp: u64,
        sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
    ) -> Result<SignatureLine, E> {
        let message = cosigned_message(&self.checkpoint.text(), timestamp);
        let mut signature = timestamp.to_be_bytes().to_vec();
        signature.extend(sign(message.as_bytes())?);
        let line = SignatureLine {
            name: witness.name.clone(),
            key_id: witness.key_id(),
            signature,
        };
        self.add(line.clone());
        Ok(line)
    }

    /// Adds a signature line (replacing one by the same key).
    pub fn add(&mut self, line: SignatureLine) {
        self.signatures
            .retain(|s| !(s.name == line.name && s.key_id == line.key_id));
        self.signatures.push(line);
    }

    /// Checks the cosignature of `witness` (type [`TYPE_COSIGNATURE`]);
    /// returns its timestamp.
    pub fn verify_cosignature(&self, witness: &Verifier) -> Result<u64, String> {
        let line = self
            .line_of(witness)
            .ok_or_else(|| format!("no cosignature of {} on the checkpoint", witness.name))?;
        verify_cosignature_line(&self.checkpoint, witness, line)
    }
}

/// Checks one cosignature line against a checkpoint; returns its timestamp.
pub fn verify_cosignature_line(
    checkpoint: &Checkpoint,
    witness: &Verifier,
    line: &SignatureLine,
) -> Result<u64, String> {
    if line.name != witness.name || line.key_id != witness.key_id() {
        return Err(format!("the cosignature is not {}'s", witness.name));
    }
    if line.signature.len() != 8 + 64 {
        return Err(format!(
            "the cosignature of {} has a wrong length",
            witness.name
        ));
    }
    let mut t = [0u8; 8];
    t.copy_from_slice(&line.signature[..8]);
    let timestamp = u64::from_be_bytes(t);
    if timestamp > i64::MAX as u64 {
        return Err("the cosignature's time is out of range".into());
    }
    let message = cosigned_message(&checkpoint.text(), timestamp);
    witness.verify_raw(message.as_bytes(), &line.signature[8..])?;
    Ok(timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn key() -> Ed25519KeyPair {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn pubkey(k: &Ed25519KeyPair) -> [u8; 32] {
        k.public_key().as_ref().try_into().unwrap()
    }

    #[test]
    fn a_signed_and_cosigned_checkpoint_round_trips_and_verifies() {
        let (log_key, w_key) = (key(), key());
        let log = Verifier::new("signer-a.example/audit", TYPE_ED25519, pubkey(&log_key)).unwrap();
        let witness =
            Verifier::new("signer-b.example/witness", TYPE_COSIGNATURE, pubkey(&w_key)).unwrap();
        let cp = Checkpoint {
            origin: log.name.clone(),
            size: 18234,
            root: [7; 32],
        };
        let mut signed = SignedCheckpoint::sign(cp.clone(), &log, |m| {
            Ok::<_, ()>(log_key.sign(m).as_ref().to_vec())
        })
        .unwrap();
        signed
            .cosign(&witness, 1_790_000_000, |m| {
                Ok::<_, ()>(w_key.sign(m).as_ref().to_vec())
            })
            .unwrap();
        let note = signed.render();
        assert!(note.starts_with("signer-a.example/audit\n18234\n"));
        let parsed = SignedCheckpoint::parse(&note).unwrap();
        assert_eq!(parsed, signed);
        parsed.verify_log(&log).unwrap();
        assert_eq!(parsed.verify_cosignature(&witness).unwrap(), 1_790_000_000);
        // Verifier keys round-trip, whatever characters the base64 holds.
        assert_eq!(Verifier::from_vkey(&log.vkey()).unwrap(), log);
        for i in 0..=255u8 {
            let v = Verifier::new("a.example/log", TYPE_ED25519, [i; 32]).unwrap();
            assert_eq!(Verifier::from_vkey(&v.vkey()).unwrap(), v, "{}", v.vkey());
        }
        assert_eq!(Verifier::from_vkey(&witness.vkey()).unwrap(), witness);
        let mut bad = log.vkey();
        bad.replace_range(log.name.len() + 1..log.name.len() + 2, "z");
        assert!(Verifier::from_vkey(&bad).is_err());
        // A changed size, root or origin fails; so does someone else's key.
        for (from, to) in [
            ("18234", "18235"),
            ("signer-a.example/audit\n", "signer-c.example/audit\n"),
        ] {
            let altered = note.replacen(from, to, 1);
            let p = SignedCheckpoint::parse(&altered).unwrap();
            assert!(p.verify_log(&log).is_err(), "{to}");
        }
        let other = Verifier::new(&log.name, TYPE_ED25519, pubkey(&key())).unwrap();
        assert!(parsed.verify_log(&other).is_err());
        // A cosignature moved to another checkpoint fails.
        let mut moved = parsed.clone();
        moved.checkpoint.size += 1;
        assert!(moved.verify_cosignature(&witness).is_err());
    }

    #[test]
    fn malformed_notes_are_refused_by_cause() {
        for (note, words) in [
            ("a\n1\nAAAA\n", "blank line"),
            (
                "a\n01\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n— a AAAAAAAA\n",
                "not a decimal",
            ),
            (
                "a b\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n— a AAAAAAAA\n",
                "origin",
            ),
            ("a\n1\nAAAA\n\n— a AAAAAAAA\n", "not a base64 SHA-256"),
            (
                "a\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\nx\n\n— a AAAAAAAA\n",
                "3 lines",
            ),
            (
                "a\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n- a AAAAAAAA\n",
                "not a signature line",
            ),
            (
                "a\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n— a AAAA\n",
                "too short",
            ),
        ] {
            let e = SignedCheckpoint::parse(note).unwrap_err();
            assert!(e.contains(words), "{note:?}: {e}");
        }
    }
}
