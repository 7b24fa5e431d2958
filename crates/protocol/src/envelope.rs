//! Request and response envelopes.
//!
//! ```text
//! request  = [version, id, command, body]              (msgpack array of 4)
//! response = [version, id, status, part, parts, data]  (msgpack array of 6)
//! ```
//!
//! A request's body is one msgpack value embedded in the array. A response's
//! body is msgpack-encoded, cut into `parts` pieces, and each piece travels as
//! the `bin` element `data` of its own frame.

use std::io::Cursor;

use rmp::decode as d;
use rmp::encode as e;

use crate::{Command, Status, VERSION};

/// Largest overhead of a response part's envelope, data excluded:
/// array marker (1) + version (9) + id (9) + status (3) + part (5) + parts (5) + bin header (5).
pub const RESPONSE_OVERHEAD: usize = 37;

/// Why an envelope could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not an array of the right shape, or a field of the wrong type.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// A request whose version and id could be read but whose rest is not
    /// a request: answered with that id, so the client learns it was not
    /// executed.
    #[error("malformed envelope: {what}")]
    MalformedRequest {
        /// What is wrong.
        what: &'static str,
        /// The request id read.
        id: u64,
    },
    /// A well-formed envelope of a protocol version this side does not speak.
    #[error("unsupported protocol version {version}")]
    UnsupportedVersion {
        /// The version the peer sent.
        version: u64,
        /// The request id, so the answer can be matched.
        id: u64,
    },
}

/// A request as read off the wire; the body is still msgpack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// Request id chosen by the client; a retry reuses it.
    pub id: u64,
    /// What is asked for.
    pub command: Command,
    /// The body: exactly one msgpack value.
    pub body: &'a [u8],
}

/// One frame's worth of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponsePart<'a> {
    /// The id of the request answered (0 when the request could not be read).
    pub id: u64,
    /// Outcome.
    pub status: Status,
    /// Index of this part, from 0.
    pub part: u32,
    /// Number of parts (at least 1).
    pub parts: u32,
    /// This part's slice of the msgpack-encoded body.
    pub data: &'a [u8],
}

/// Encodes a request envelope around an already msgpack-encoded body.
pub fn encode_request(id: u64, command: Command, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    // Writing into a Vec cannot fail.
    let _ = e::write_array_len(&mut out, 4);
    let _ = e::write_uint(&mut out, VERSION);
    let _ = e::write_uint(&mut out, id);
    let _ = e::write_uint(&mut out, u64::from(command.0));
    out.extend_from_slice(body);
    out
}

fn read_u64(cursor: &mut Cursor<&[u8]>, what: &'static str) -> Result<u64, EnvelopeError> {
    d::read_int(cursor).map_err(|_| EnvelopeError::Malformed(what))
}

fn read_u16(cursor: &mut Cursor<&[u8]>, what: &'static str) -> Result<u16, EnvelopeError> {
    d::read_int(cursor).map_err(|_| EnvelopeError::Malformed(what))
}

fn read_u32(cursor: &mut Cursor<&[u8]>, what: &'static str) -> Result<u32, EnvelopeError> {
    d::read_int(cursor).map_err(|_| EnvelopeError::Malformed(what))
}

/// Reads the version and id that start every envelope, checking the array length.
fn read_head(
    cursor: &mut Cursor<&[u8]>,
    len: u32,
    what: &'static str,
) -> Result<(u64, u64), EnvelopeError> {
    let n = d::read_array_len(cursor).map_err(|_| EnvelopeError::Malformed(what))?;
    // The first two elements keep their meaning in every protocol version, so
    // a peer speaking another version can still be told so, by id.
    if n < 2 {
        return Err(EnvelopeError::Malformed(what));
    }
    let version = read_u64(cursor, "version is not an unsigned integer")?;
    let id = read_u64(cursor, "id is not an unsigned integer")?;
    if version != VERSION {
        return Err(EnvelopeError::UnsupportedVersion { version, id });
    }
    if n != len {
        return Err(EnvelopeError::Malformed(what));
    }
    Ok((version, id))
}

/// Reads a request envelope. The body is returned as the bytes of its one
/// msgpack value; it is checked when the command decodes it. Once the
/// version and a non-zero id are read, every other defect is reported with
/// that id ([`EnvelopeError::MalformedRequest`]); bytes after the array are
/// such a defect.
pub fn decode_request(content: &[u8]) -> Result<Request<'_>, EnvelopeError> {
    let mut cursor = Cursor::new(content);
    let n = d::read_array_len(&mut cursor)
        .map_err(|_| EnvelopeError::Malformed("request is not an array of 4"))?;
    if n < 2 {
        return Err(EnvelopeError::Malformed("request is not an array of 4"));
    }
    let version = read_u64(&mut cursor, "version is not an unsigned integer")?;
    let id = read_u64(&mut cursor, "id is not an unsigned integer")?;
    if version != VERSION {
        return Err(EnvelopeError::UnsupportedVersion { version, id });
    }
    if id == 0 {
        // Id 0 names a frame the signer could not read (§5.2): a request
        // carrying it is never executed.
        return Err(EnvelopeError::Malformed("request id 0 is reserved"));
    }
    let malformed = |what| EnvelopeError::MalformedRequest { what, id };
    if n != 4 {
        return Err(malformed("request is not an array of 4"));
    }
    let command = Command(
        d::read_int(&mut cursor)
            .map_err(|_| malformed("command is not a 16-bit unsigned integer"))?,
    );
    let at = usize::try_from(cursor.position()).unwrap_or(content.len());
    let body = &content[at.min(content.len())..];
    if body.is_empty() {
        return Err(malformed("request has no body"));
    }
    let len = value_len(body).ok_or_else(|| malformed("the body is not one msgpack value"))?;
    if len != body.len() {
        return Err(malformed("bytes after the request array"));
    }
    Ok(Request { id, command, body })
}

/// The length of the one msgpack value `bytes` starts with; `None` if it
/// is cut short or holds a byte msgpack never uses. Iterative: a value
/// nested as deep as a frame allows takes no stack.
fn value_len(bytes: &[u8]) -> Option<usize> {
    use rmp::Marker as M;
    let mut at = 0usize;
    // Values still to read (a container adds its elements).
    let mut pending: u64 = 1;
    let be = |at: usize, n: usize| -> Option<u64> {
        let b = bytes.get(at..at.checked_add(n)?)?;
        Some(b.iter().fold(0u64, |acc, &x| acc << 8 | u64::from(x)))
    };
    while pending > 0 {
        // Each value takes at least one byte: more pending values than
        // bytes left cannot be a whole value.
        if pending > (bytes.len() - at) as u64 {
            return None;
        }
        pending -= 1;
        let marker = M::from_u8(*bytes.get(at)?);
        at += 1;
        // (bytes of the header after the marker, payload length, elements)
        let (head, payload, elements): (usize, u64, u64) = match marker {
            M::FixPos(_) | M::FixNeg(_) | M::Null | M::True | M::False => (0, 0, 0),
            M::U8 | M::I8 => (1, 0, 0),
            M::U16 | M::I16 => (2, 0, 0),
            M::U32 | M::I32 | M::F32 => (4, 0, 0),
            M::U64 | M::I64 | M::F64 => (8, 0, 0),
            M::FixStr(n) => (0, u64::from(n), 0),
            M::Str8 | M::Bin8 => (1, be(at, 1)?, 0),
            M::Str16 | M::Bin16 => (2, be(at, 2)?, 0),
            M::Str32 | M::Bin32 => (4, be(at, 4)?, 0),
            M::FixArray(n) => (0, 0, u64::from(n)),
            M::Array16 => (2, 0, be(at, 2)?),
            M::Array32 => (4, 0, be(at, 4)?),
            M::FixMap(n) => (0, 0, 2 * u64::from(n)),
            M::Map16 => (2, 0, 2 * be(at, 2)?),
            M::Map32 => (4, 0, 2 * be(at, 4)?),
            M::FixExt1 => (1, 1, 0),
            M::FixExt2 => (1, 2, 0),
            M::FixExt4 => (1, 4, 0),
            M::FixExt8 => (1, 8, 0),
            M::FixExt16 => (1, 16, 0),
            M::Ext8 => (2, be(at, 1)?, 0),
            M::Ext16 => (3, be(at, 2)?, 0),
            M::Ext32 => (5, be(at, 4)?, 0),
            M::Reserved => return None,
        };
        at = at
            .checked_add(head)?
            .checked_add(usize::try_from(payload).ok()?)?;
        if at > bytes.len() {
            return None;
        }
        pending = pending.checked_add(elements)?;
    }
    Some(at)
}

/// Encodes one response part.
pub fn encode_response_part(part: &ResponsePart<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(part.data.len() + RESPONSE_OVERHEAD);
    let data_len = u32::try_from(part.data.len()).unwrap_or(u32::MAX);
    let _ = e::write_array_len(&mut out, 6);
    let _ = e::write_uint(&mut out, VERSION);
    let _ = e::write_uint(&mut out, part.id);
    let _ = e::write_uint(&mut out, u64::from(part.status.0));
    let _ = e::write_uint(&mut out, u64::from(part.part));
    let _ = e::write_uint(&mut out, u64::from(part.parts));
    let _ = e::write_bin_len(&mut out, data_len);
    out.extend_from_slice(part.data);
    out
}

/// Cuts an encoded response body into frame contents of at most
/// `max_content` bytes each.
pub fn encode_response(id: u64, status: Status, body: &[u8], max_content: usize) -> Vec<Vec<u8>> {
    let chunk = max_content.saturating_sub(RESPONSE_OVERHEAD).max(1);
    let pieces: Vec<&[u8]> = if body.is_empty() {
        vec![body]
    } else {
        body.chunks(chunk).collect()
    };
    let parts = u32::try_from(pieces.len()).unwrap_or(u32::MAX);
    pieces
        .iter()
        .zip(0u32..)
        .map(|(data, part)| {
            encode_response_part(&ResponsePart {
                id,
                status,
                part,
                parts,
                data,
            })
        })
        .collect()
}

/// Reads one response part.
pub fn decode_response_part(content: &[u8]) -> Result<ResponsePart<'_>, EnvelopeError> {
    let mut cursor = Cursor::new(content);
    let (_, id) = read_head(&mut cursor, 6, "response is not an array of 6")?;
    let status = Status(read_u16(
        &mut cursor,
        "status is not a 16-bit unsigned integer",
    )?);
    let part = read_u32(&mut cursor, "part is not a 32-bit unsigned integer")?;
    let parts = read_u32(&mut cursor, "parts is not a 32-bit unsigned integer")?;
    if parts == 0 || part >= parts {
        return Err(EnvelopeError::Malformed("part index out of range"));
    }
    let len =
        d::read_bin_len(&mut cursor).map_err(|_| EnvelopeError::Malformed("data is not bin"))?;
    let at = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    match at.checked_add(len) {
        Some(end) if end == content.len() => Ok(ResponsePart {
            id,
            status,
            part,
            parts,
            data: &content[at..end],
        }),
        _ => Err(EnvelopeError::Malformed(
            "data length does not match the frame",
        )),
    }
}
