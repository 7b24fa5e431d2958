//! The signer wire protocol: envelopes, command bodies and status codes.
//!
//! `docs/protocol.md` is the normative description; this crate implements it.
//!
//! ```text
//! frame content ──► decode_request ──► Request { id, command, body } ──► decode_body::<T>
//! reply body    ──► encode_body ──► encode_response (cut into parts) ──► frame contents
//! ```
//!
//! ```
//! use signer_protocol::{decode_body, decode_request, encode_body, encode_request, msg, Command};
//!
//! let body = encode_body(&msg::Hello { max_frame: 4096, client: "doc".into() });
//! let content = encode_request(7, Command::HELLO, &body);
//! let request = decode_request(&content).unwrap();
//! assert_eq!(request.id, 7);
//! let hello: msg::Hello = decode_body(request.body).unwrap();
//! assert_eq!(hello.max_frame, 4096);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod calls;
mod codes;
mod envelope;
pub mod messages;

pub use calls::{Audit, Call, FactList, Facts, Placement, Retry};
pub use codes::{Command, Status};
pub use envelope::{
    decode_request, decode_response_part, encode_request, encode_response, encode_response_part,
    EnvelopeError, Request, ResponsePart, RESPONSE_OVERHEAD,
};
/// Short alias for the message bodies.
pub use messages as msg;

use serde::{de::DeserializeOwned, Serialize};

/// The protocol version this crate speaks.
pub const VERSION: u64 = 1;

/// Frame content limit assumed for a peer that has not said otherwise (in `hello`).
pub const DEFAULT_MAX_FRAME: u32 = 4096;

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed body: {0}")]
pub struct BodyError(pub String);

/// Encodes a body as msgpack with named fields (maps).
pub fn encode_body<T: Serialize>(body: &T) -> Vec<u8> {
    // Serializing our own plain structs into a Vec does not fail; an empty
    // body would be rejected by the peer, which is the right outcome if it did.
    rmp_serde::to_vec_named(body).unwrap_or_default()
}

/// Decodes a body, requiring that it is exactly one msgpack value.
pub fn decode_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BodyError> {
    let mut cursor = std::io::Cursor::new(bytes);
    let mut de = rmp_serde::Deserializer::new(&mut cursor);
    let value = T::deserialize(&mut de).map_err(|e| BodyError(e.to_string()))?;
    if usize::try_from(cursor.position()).ok() != Some(bytes.len()) {
        return Err(BodyError("trailing bytes after the body".into()));
    }
    Ok(value)
}

/// Why response parts do not fit together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReassemblyError {
    /// A part disagrees with earlier parts on status or part count.
    #[error("part {part} disagrees with earlier parts of response {id}")]
    Inconsistent {
        /// Response id.
        id: u64,
        /// The offending part.
        part: u32,
    },
    /// The response would exceed the caller's size limit.
    #[error("response {id} announces {parts} parts, more than allowed")]
    TooLarge {
        /// Response id.
        id: u64,
        /// Announced part count.
        parts: u32,
    },
}

/// Collects the parts of one response.
#[derive(Debug, Clone)]
pub struct Reassembly {
    id: u64,
    status: Status,
    parts: Vec<Option<Vec<u8>>>,
    received: usize,
}

impl Reassembly {
    /// Starts a reassembly with its first-arriving part, allowing at most `max_parts`.
    pub fn new(part: &ResponsePart<'_>, max_parts: u32) -> Result<Self, ReassemblyError> {
        if part.parts > max_parts {
            return Err(ReassemblyError::TooLarge {
                id: part.id,
                parts: part.parts,
            });
        }
        let count = usize::try_from(part.parts).unwrap_or(usize::MAX);
        let mut this = Reassembly {
            id: part.id,
            status: part.status,
            parts: vec![None; count],
            received: 0,
        };
        this.add(part)?;
        Ok(this)
    }

    /// Adds a part; a part already held is ignored.
    pub fn add(&mut self, part: &ResponsePart<'_>) -> Result<(), ReassemblyError> {
        let index = usize::try_from(part.part).unwrap_or(usize::MAX);
        if part.id != self.id
            || part.status != self.status
            || usize::try_from(part.parts).ok() != Some(self.parts.len())
            || index >= self.parts.len()
        {
            return Err(ReassemblyError::Inconsistent {
                id: self.id,
                part: part.part,
            });
        }
        if self.parts[index].is_none() {
            self.parts[index] = Some(part.data.to_vec());
            self.received += 1;
        }
        Ok(())
    }

    /// The response status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// True once every part is held.
    pub fn is_complete(&self) -> bool {
        self.received == self.parts.len()
    }

    /// Indices of the parts still missing.
    pub fn missing(&self) -> Vec<u32> {
        self.parts
            .iter()
            .zip(0u32..)
            .filter(|(p, _)| p.is_none())
            .map(|(_, i)| i)
            .collect()
    }

    /// The body, once complete.
    pub fn into_body(self) -> Option<Vec<u8>> {
        if !self.is_complete() {
            return None;
        }
        Some(self.parts.into_iter().flatten().flatten().collect())
    }
}

/// Entry points for the fuzz targets in `fuzz/`: each decodes arbitrary
/// bytes and checks that whatever decodes re-encodes to the same bytes.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// A request envelope and the bodies of the built-in commands.
    pub fn request(data: &[u8]) {
        if let Ok(request) = decode_request(data) {
            // Requests are re-encoded canonically; they must decode to the same request.
            let again = encode_request(request.id, request.command, request.body);
            let reparsed = decode_request(&again).expect("re-encoded request decodes");
            assert_eq!(reparsed, request);
            if let Ok(hello) = decode_body::<msg::Hello>(request.body) {
                assert_eq!(
                    decode_body::<msg::Hello>(&encode_body(&hello)).ok(),
                    Some(hello)
                );
            }
            if let Ok(fetch) = decode_body::<msg::FetchParts>(request.body) {
                assert_eq!(
                    decode_body::<msg::FetchParts>(&encode_body(&fetch)).ok(),
                    Some(fetch)
                );
            }
            let _ = decode_body::<msg::Empty>(request.body);
        }
    }

    /// A response part, and the reply bodies a client decodes.
    pub fn response(data: &[u8]) {
        if let Ok(part) = decode_response_part(data) {
            let again = encode_response_part(&part);
            assert_eq!(decode_response_part(&again).ok(), Some(part.clone()));
            if let Ok(mut re) = Reassembly::new(&part, 16) {
                let _ = re.add(&part);
                let _ = re.missing();
            }
            let _ = decode_body::<msg::HealthReply>(part.data);
            let _ = decode_body::<msg::HelloReply>(part.data);
            let _ = decode_body::<msg::ErrorBody>(part.data);
        }
    }
}

#[cfg(test)]
mod tests;
