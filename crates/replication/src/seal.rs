//! Seals: what makes the twin's stream trustworthy when the cable, the
//! switch or a nats-server is not.
//!
//! Each publish round of a signer ends with a seal: the origin, its
//! repository's epoch, the sequence number of the first event, the SHA-256
//! of each event's bytes in order, signed with the origin's replication key
//! in its HSM. The twin applies an event only when a seal it verified with
//! the origin's public key (exchanged at the pair ceremony) names that
//! event's origin, epoch, sequence number and digest. One signature covers
//! a whole round (up to 1024 events), so its cost does not grow with the
//! issuance rate.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use signer_keys::{HsmError, PublicKey, SigningBackend};

/// Domain separation for the signed bytes.
const CONTEXT: &[u8] = b"signer replication seal v1\n";

/// The NATS header that marks a seal on the events subject.
pub const KIND_HEADER: &str = "Signer-Kind";
/// Its value on a seal.
pub const KIND_SEAL: &str = "seal";
/// Its value on a sealed batch: a publish round's events and their seal in
/// one message (what a signer publishes; a lone event or seal is still
/// read, and judged the same way).
pub const KIND_BATCH: &str = "batch";
/// Its value on a sealed batch compressed with LZ4 ([`Batch::compress`]):
/// what a signer publishes once its twin says it reads it.
pub const KIND_BATCH_LZ4: &str = "batch-lz4";

/// Largest batch a compressed message may expand to. A publish round is at
/// most 512 KiB of events plus their seal; anything claiming more is
/// refused before any of it is expanded.
pub const MAX_BATCH_BYTES: usize = 2 << 20;

/// The signed part of a seal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealBody {
    /// The signer whose events these are.
    pub origin: String,
    /// Its repository's epoch.
    pub epoch: u64,
    /// Sequence number of the first event covered.
    pub first: u64,
    /// SHA-256 of each covered event's bytes, in sequence order.
    pub digests: Vec<serde_bytes::ByteBuf>,
}

/// A seal as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// What is signed.
    pub body: SealBody,
    /// The signature over `CONTEXT ‖ msgpack(body)`.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// SHA-256 of an event's bytes as published.
pub fn event_digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn signed_bytes(body: &SealBody) -> Vec<u8> {
    let mut out = CONTEXT.to_vec();
    out.extend_from_slice(&signer_protocol::encode_body(body));
    out
}

impl Seal {
    /// Seals `events` (sequence number, bytes; consecutive) of `origin` in
    /// `epoch` with `key` on `backend`.
    pub fn make(
        backend: &dyn SigningBackend,
        key: &str,
        origin: &str,
        epoch: u64,
        events: &[(u64, Vec<u8>)],
    ) -> Result<Seal, HsmError> {
        let body = SealBody {
            origin: origin.to_string(),
            epoch,
            first: events.first().map_or(0, |(seq, _)| *seq),
            digests: events
                .iter()
                .map(|(_, bytes)| serde_bytes::ByteBuf::from(event_digest(bytes).to_vec()))
                .collect(),
        };
        let public = backend.public_key(key)?;
        let scheme = public.default_scheme();
        let digest = scheme.hash().digest(&signed_bytes(&body));
        let signature = backend.sign_digest(key, scheme, &digest)?;
        Ok(Seal { body, signature })
    }

    /// The seal's wire bytes (msgpack).
    pub fn encode(&self) -> Vec<u8> {
        signer_protocol::encode_body(self)
    }

    /// Reads a seal and checks it: `origin` must be the stream's owner and
    /// the signature must verify with the owner's key.
    pub fn open(bytes: &[u8], origin: &str, key: &PublicKey) -> Result<Seal, String> {
        let seal: Seal =
            signer_protocol::decode_body(bytes).map_err(|e| format!("unreadable seal: {}", e.0))?;
        seal.verify(origin, key)
    }

    /// Checks a seal as [`Seal::open`] does.
    pub fn verify(self, origin: &str, key: &PublicKey) -> Result<Seal, String> {
        let seal = self;
        if seal.body.origin != origin {
            return Err(format!(
                "a seal names origin {:?} on {origin}'s stream",
                seal.body.origin
            ));
        }
        if seal.body.first == 0 || seal.body.digests.iter().any(|d| d.len() != 32) {
            return Err("a seal with sequence 0 or a digest not of 32 bytes".into());
        }
        key.verify(
            key.default_scheme(),
            &signed_bytes(&seal.body),
            &seal.signature,
        )
        .map_err(|e| {
            format!(
                "seal of events {}..{} in epoch {:016x}: {e}",
                seal.body.first,
                seal.last(),
                seal.body.epoch
            )
        })?;
        Ok(seal)
    }

    /// Sequence number of the last event covered.
    pub fn last(&self) -> u64 {
        self.body.first + (self.body.digests.len() as u64).saturating_sub(1)
    }
}

/// A publish round in one message: its events' bytes, in sequence order,
/// and the seal over them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The seal of the round.
    pub seal: Seal,
    /// Each event's bytes, the first being the seal's `first`.
    pub events: Vec<serde_bytes::ByteBuf>,
}

impl Batch {
    /// The batch's wire bytes (msgpack) for `events` sealed by `seal`.
    pub fn encode(seal: &Seal, events: &[(u64, Vec<u8>)]) -> Vec<u8> {
        #[derive(Serialize)]
        struct Out<'a> {
            seal: &'a Seal,
            events: Vec<&'a serde_bytes::Bytes>,
        }
        signer_protocol::encode_body(&Out {
            seal,
            events: events
                .iter()
                .map(|(_, bytes)| serde_bytes::Bytes::new(bytes))
                .collect(),
        })
    }

    /// `encoded` (a batch's wire bytes) as a `batch-lz4` message: the
    /// length of `encoded` as 4 octets little-endian, then an LZ4 block of
    /// it. The seal's digests are over the events' bytes, so compressing
    /// the message changes nothing the twin verifies.
    pub fn compress(encoded: &[u8]) -> Vec<u8> {
        lz4_flex::block::compress_prepend_size(encoded)
    }

    /// The batch's wire bytes from a `batch-lz4` message, refusing one
    /// that claims more than [`MAX_BATCH_BYTES`] or does not expand to
    /// exactly what it claims.
    pub fn decompress(message: &[u8]) -> Result<Vec<u8>, String> {
        let Some((len, block)) = message.split_first_chunk::<4>() else {
            return Err("a compressed batch shorter than its length".into());
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > MAX_BATCH_BYTES {
            return Err(format!(
                "a compressed batch claiming {len} bytes (at most {MAX_BATCH_BYTES})"
            ));
        }
        let out = lz4_flex::block::decompress(block, len)
            .map_err(|e| format!("a compressed batch that does not expand: {e}"))?;
        if out.len() != len {
            return Err(format!(
                "a compressed batch claiming {len} bytes expands to {}",
                out.len()
            ));
        }
        Ok(out)
    }

    /// Reads a batch and checks it: the seal as [`Seal::open`] does, and
    /// each event against the digest the seal gives it. Returns the seal and
    /// the events' bytes.
    pub fn open(
        bytes: &[u8],
        origin: &str,
        key: &PublicKey,
    ) -> Result<(Seal, Vec<Vec<u8>>), String> {
        let batch: Batch = signer_protocol::decode_body(bytes)
            .map_err(|e| format!("unreadable batch: {}", e.0))?;
        let seal = batch.seal.verify(origin, key)?;
        if batch.events.len() != seal.body.digests.len() {
            return Err(format!(
                "a batch of {} events under a seal of {}",
                batch.events.len(),
                seal.body.digests.len()
            ));
        }
        for (i, (event, digest)) in batch.events.iter().zip(&seal.body.digests).enumerate() {
            if event_digest(event).as_slice() != digest.as_slice() {
                return Err(format!(
                    "event {} of the batch of events {}..{} in epoch {:016x} differs from its seal",
                    seal.body.first + i as u64,
                    seal.body.first,
                    seal.last(),
                    seal.body.epoch
                ));
            }
        }
        let events = batch.events.into_iter().map(|e| e.into_vec()).collect();
        Ok((seal, events))
    }
}

/// Domain separation for signed state answers.
const STATE_CONTEXT: &[u8] = b"signer replication state v1\n";

/// A state answer (`signer.<id>.state`), signed with the answering signer's
/// replication key over the asker's nonce and the encoded state: a forged
/// or replayed answer cannot make the asker trim its outbox or show a
/// healthier twin than there is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedState {
    /// The encoded `PeerState` (msgpack).
    #[serde(with = "serde_bytes")]
    pub state: Vec<u8>,
    /// Signature over `STATE_CONTEXT ‖ nonce ‖ state`.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

fn state_bytes(nonce: &[u8], state: &[u8]) -> Vec<u8> {
    let mut out = STATE_CONTEXT.to_vec();
    out.extend_from_slice(nonce);
    out.extend_from_slice(state);
    out
}

impl SignedState {
    /// Signs `state` (encoded) in answer to `nonce`.
    pub fn make(
        backend: &dyn SigningBackend,
        key: &str,
        nonce: &[u8],
        state: Vec<u8>,
    ) -> Result<SignedState, HsmError> {
        let public = backend.public_key(key)?;
        let scheme = public.default_scheme();
        let digest = scheme.hash().digest(&state_bytes(nonce, &state));
        let signature = backend.sign_digest(key, scheme, &digest)?;
        Ok(SignedState { state, signature })
    }

    /// Reads an answer to `nonce` and checks its signature with `key`;
    /// returns the encoded state.
    pub fn open(bytes: &[u8], nonce: &[u8], key: &PublicKey) -> Result<Vec<u8>, String> {
        let signed: SignedState = signer_protocol::decode_body(bytes)
            .map_err(|e| format!("unreadable state answer: {}", e.0))?;
        key.verify(
            key.default_scheme(),
            &state_bytes(nonce, &signed.state),
            &signed.signature,
        )
        .map_err(|e| format!("state answer: {e}"))?;
        Ok(signed.state)
    }
}
