//! Framing for the serial link: `COBS(content ‖ CRC32(content)) 0x00`.
//!
//! Data flow on the receiving side:
//!
//! ```text
//! bytes ──► Decoder::decode ──► (length check) ──► COBS decode ──► CRC check ──► content
//!                 │                   │                  │              │
//!                 └─ resync at 0x00 ◄─┴── FrameError ◄───┴──────────────┘
//! ```
//!
//! The length is checked before COBS decoding and the CRC before anything
//! looks at the content. After any error the decoder discards everything up
//! to the next `0x00` and starts afresh, so one bad frame costs one frame.
//!
//! ```
//! use signer_frame::{encode, Decoder};
//!
//! let wire = encode(b"hello");
//! let mut decoder = Decoder::new(1024);
//! let mut input = &wire[..];
//! let frame = decoder.decode(&mut input).unwrap().unwrap();
//! assert_eq!(frame, b"hello");
//! assert!(input.is_empty());
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// Length of the CRC trailer inside a frame, in bytes.
pub const CRC_LEN: usize = 4;

/// The frame delimiter.
pub const DELIMITER: u8 = 0x00;

/// Smallest content a frame may carry (a msgpack message is never empty).
pub const MIN_CONTENT: usize = 1;

/// The largest frame content every implementation must accept (protocol minimum).
pub const MIN_MAX_CONTENT: usize = 1024;

/// Why a frame was rejected. Each kind maps to its own wire error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// More bytes arrived before a delimiter than the largest allowed frame can occupy.
    #[error("frame exceeds {max} content bytes ({seen} encoded bytes before the delimiter)")]
    Oversize {
        /// Encoded bytes seen before the delimiter (counting stops at the limit + 1).
        seen: usize,
        /// The content limit in force.
        max: usize,
    },
    /// The bytes between two delimiters are not valid COBS.
    #[error("invalid COBS encoding")]
    Cobs,
    /// Decoded frame is too short to hold content and CRC.
    #[error("frame too short: {len} decoded bytes, need at least {}", MIN_CONTENT + CRC_LEN)]
    TooShort {
        /// Decoded length.
        len: usize,
    },
    /// The CRC trailer does not match the content.
    #[error("CRC mismatch: frame says {received:08x}, content gives {computed:08x}")]
    Crc {
        /// CRC carried by the frame.
        received: u32,
        /// CRC computed over the received content.
        computed: u32,
    },
}

/// CRC-32 (IEEE 802.3, as zlib/PNG: reflected, poly 0xEDB88320, init and
/// final XOR 0xFFFFFFFF) of `content`.
pub fn crc32(content: &[u8]) -> u32 {
    crc32fast::hash(content)
}

/// Encoded length of a frame with `content_len` content bytes, delimiter included, at most.
pub const fn max_frame_len(content_len: usize) -> usize {
    cobs::max_encoding_length(content_len + CRC_LEN) + 1
}

/// Encodes one frame: `COBS(content ‖ CRC32 big-endian) 0x00`.
pub fn encode(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(max_frame_len(content.len()));
    encode_into(content, &mut out);
    out
}

/// Appends one encoded frame (delimiter included) to `out`.
pub fn encode_into(content: &[u8], out: &mut Vec<u8>) {
    let crc = crc32(content).to_be_bytes();
    let start = out.len();
    out.resize(start + max_frame_len(content.len()), 0);
    let mut encoder = cobs::CobsEncoder::new(&mut out[start..]);
    // The buffer is sized by `max_frame_len`, so neither push can run out of room.
    let pushed = encoder.push(content).and_then(|()| encoder.push(&crc));
    debug_assert!(pushed.is_ok());
    let used = encoder.finalize();
    out.truncate(start + used);
    out.push(DELIMITER);
}

/// Counters kept by a [`Decoder`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DecoderStats {
    /// Frames that passed every check.
    pub ok: u64,
    /// Frames rejected for their CRC.
    pub bad_crc: u64,
    /// Frames rejected for invalid COBS.
    pub bad_cobs: u64,
    /// Frames rejected for being too long.
    pub oversize: u64,
    /// Frames rejected for being too short.
    pub too_short: u64,
}

impl DecoderStats {
    /// All rejected frames.
    pub fn bad(&self) -> u64 {
        self.bad_crc + self.bad_cobs + self.oversize + self.too_short
    }
}

/// A streaming frame decoder with a bounded buffer.
///
/// Feed it whatever the link delivered; it returns one frame (or one frame
/// error) at a time and leaves the rest of the input for the next call.
#[derive(Debug)]
pub struct Decoder {
    max_content: usize,
    max_encoded: usize,
    buf: Vec<u8>,
    /// Bytes seen since the last delimiter while discarding an oversize frame.
    discarding: Option<usize>,
    stats: DecoderStats,
}

impl Decoder {
    /// A decoder accepting frames of up to `max_content` content bytes (CRC excluded).
    pub fn new(max_content: usize) -> Self {
        let max_content = max_content.max(MIN_CONTENT);
        Decoder {
            max_content,
            // Encoded bytes before the delimiter, which is not stored.
            max_encoded: max_frame_len(max_content) - 1,
            buf: Vec::new(),
            discarding: None,
            stats: DecoderStats::default(),
        }
    }

    /// The content limit of this decoder.
    pub fn max_content(&self) -> usize {
        self.max_content
    }

    /// Counters since creation.
    pub fn stats(&self) -> DecoderStats {
        self.stats
    }

    /// Bytes buffered towards a frame that has not ended yet.
    pub fn pending(&self) -> usize {
        self.buf.len() + self.discarding.unwrap_or(0)
    }

    /// Drops any partial frame, as after a link reset.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.discarding = None;
    }

    /// Consumes bytes from `input` up to and including the next delimiter
    /// that ends a non-empty frame. Returns `None` when `input` is used up
    /// without completing a frame (the partial frame stays buffered).
    /// Empty frames (a delimiter right after a delimiter) are skipped.
    pub fn decode(&mut self, input: &mut &[u8]) -> Option<Result<Vec<u8>, FrameError>> {
        loop {
            let data = *input;
            if data.is_empty() {
                return None;
            }
            let (chunk, ended) = match data.iter().position(|&b| b == DELIMITER) {
                Some(pos) => (&data[..pos], true),
                None => (data, false),
            };
            *input = &data[chunk.len() + usize::from(ended)..];

            if let Some(seen) = self.discarding.as_mut() {
                *seen = seen.saturating_add(chunk.len());
            } else if self.buf.len() + chunk.len() > self.max_encoded {
                self.discarding = Some(self.buf.len() + chunk.len());
                self.buf.clear();
            } else {
                self.buf.extend_from_slice(chunk);
            }
            if !ended {
                return None;
            }
            if let Some(seen) = self.discarding.take() {
                self.stats.oversize += 1;
                return Some(Err(FrameError::Oversize {
                    seen,
                    max: self.max_content,
                }));
            }
            if self.buf.is_empty() {
                continue;
            }
            let result = self.finish();
            self.buf.clear();
            return Some(result);
        }
    }

    fn finish(&mut self) -> Result<Vec<u8>, FrameError> {
        let mut decoded = vec![0u8; self.buf.len()];
        let len = match cobs::decode(&self.buf, &mut decoded) {
            Ok(report) if report.parsed_size() == self.buf.len() => report.frame_size(),
            _ => {
                self.stats.bad_cobs += 1;
                return Err(FrameError::Cobs);
            }
        };
        decoded.truncate(len);
        if len < MIN_CONTENT + CRC_LEN {
            self.stats.too_short += 1;
            return Err(FrameError::TooShort { len });
        }
        let split = len - CRC_LEN;
        let mut trailer = [0u8; CRC_LEN];
        trailer.copy_from_slice(&decoded[split..]);
        let received = u32::from_be_bytes(trailer);
        decoded.truncate(split);
        let computed = crc32(&decoded);
        if received != computed {
            self.stats.bad_crc += 1;
            return Err(FrameError::Crc { received, computed });
        }
        self.stats.ok += 1;
        Ok(decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(decoder: &mut Decoder, mut input: &[u8]) -> Vec<Result<Vec<u8>, FrameError>> {
        let mut out = Vec::new();
        while let Some(frame) = decoder.decode(&mut input) {
            out.push(frame);
        }
        out
    }

    #[test]
    fn crc_matches_the_standard_check_value() {
        // The CRC-32/ISO-HDLC check value of "123456789".
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn vector_from_protocol_doc() {
        // docs/protocol.md, "Frame test vectors".
        assert_eq!(hex::encode(encode(b"\x01\x02")), "070102b6cc429200");
        assert_eq!(hex::encode(encode(b"\x00\x11\x00")), "01021105ac98fa0200");
    }

    #[test]
    fn round_trip_and_split_input() {
        let wire = [encode(b"one"), encode(b"two")].concat();
        let mut decoder = Decoder::new(64);
        let mut frames = Vec::new();
        for byte in wire.chunks(1) {
            frames.extend(decode_all(&mut decoder, byte));
        }
        assert_eq!(frames, vec![Ok(b"one".to_vec()), Ok(b"two".to_vec())]);
        assert_eq!(decoder.stats().ok, 2);
    }

    #[test]
    fn bad_crc_is_reported_and_the_next_frame_decodes() {
        let mut first = encode(b"payload");
        first[2] ^= 0x40;
        let wire = [first, encode(b"next")].concat();
        let mut decoder = Decoder::new(64);
        let frames = decode_all(&mut decoder, &wire);
        assert!(matches!(frames[0], Err(FrameError::Crc { .. })));
        assert_eq!(frames[1], Ok(b"next".to_vec()));
        assert_eq!(decoder.stats().bad_crc, 1);
    }

    #[test]
    fn oversize_frame_is_discarded_up_to_the_delimiter() {
        let big = encode(&[7u8; 200]);
        let wire = [big, encode(b"small")].concat();
        let mut decoder = Decoder::new(100);
        let frames = decode_all(&mut decoder, &wire);
        assert!(matches!(
            frames[0],
            Err(FrameError::Oversize { max: 100, .. })
        ));
        assert_eq!(frames[1], Ok(b"small".to_vec()));
        assert_eq!(decoder.pending(), 0);
    }

    #[test]
    fn frame_at_exactly_the_limit_is_accepted() {
        let content = vec![0xAB; 254 * 3];
        let mut decoder = Decoder::new(content.len());
        let frames = decode_all(&mut decoder, &encode(&content));
        assert_eq!(frames, vec![Ok(content)]);
    }

    #[test]
    fn short_and_garbage_frames() {
        let mut decoder = Decoder::new(64);
        // 0x05 announces four more bytes, but the frame ends after two.
        let frames = decode_all(&mut decoder, &[0x05, 0x01, 0x02, 0x00]);
        assert_eq!(frames, vec![Err(FrameError::Cobs)]);
        // Valid COBS, but only three decoded bytes.
        let frames = decode_all(&mut decoder, &[0x04, 0x01, 0x02, 0x03, 0x00]);
        assert_eq!(frames, vec![Err(FrameError::TooShort { len: 3 })]);
    }

    #[test]
    fn empty_frames_are_skipped() {
        let wire = [vec![0, 0, 0], encode(b"x"), vec![0]].concat();
        let mut decoder = Decoder::new(64);
        assert_eq!(decode_all(&mut decoder, &wire), vec![Ok(b"x".to_vec())]);
    }

    proptest::proptest! {
        #[test]
        fn round_trip(content in proptest::collection::vec(proptest::num::u8::ANY, 1..2000)) {
            let mut decoder = Decoder::new(2000);
            let wire = encode(&content);
            proptest::prop_assert!(wire.len() <= max_frame_len(content.len()));
            proptest::prop_assert_eq!(wire.iter().filter(|&&b| b == 0).count(), 1);
            proptest::prop_assert_eq!(decode_all(&mut decoder, &wire), vec![Ok(content)]);
        }

        #[test]
        fn random_bytes_never_panic_and_buffer_stays_bounded(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..4000),
            max in 1usize..600,
        ) {
            let mut decoder = Decoder::new(max);
            let mut input = &data[..];
            while let Some(frame) = decoder.decode(&mut input) {
                if let Ok(content) = frame {
                    proptest::prop_assert!(content.len() <= max);
                }
            }
            proptest::prop_assert!(decoder.buf.len() <= max_frame_len(max));
        }

        #[test]
        fn fuzz_entry_point_holds_on_random_input(data in proptest::collection::vec(proptest::num::u8::ANY, 0..3000)) {
            fuzzing::decode_stream(&data);
        }

        #[test]
        fn resyncs_after_garbage(
            garbage in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            content in proptest::collection::vec(proptest::num::u8::ANY, 1..300),
        ) {
            let mut decoder = Decoder::new(300);
            let wire = [garbage, vec![0], encode(&content)].concat();
            let frames = decode_all(&mut decoder, &wire);
            proptest::prop_assert_eq!(frames.last(), Some(&Ok(content)));
        }
    }
}

/// Entry points for the fuzz targets in `fuzz/` (and the property tests):
/// each checks an invariant and panics if it does not hold.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// Decodes arbitrary input with a small limit; every accepted frame must
    /// re-encode to a frame that decodes to the same content, and the buffer
    /// must stay bounded.
    pub fn decode_stream(data: &[u8]) {
        let max = 1 + usize::from(data.first().copied().unwrap_or(0)) * 8;
        let mut decoder = Decoder::new(max);
        let mut input = data;
        while let Some(frame) = decoder.decode(&mut input) {
            if let Ok(content) = frame {
                assert!(content.len() <= max);
                let mut again = Decoder::new(max);
                let wire = encode(&content);
                let mut wire_input = &wire[..];
                assert_eq!(again.decode(&mut wire_input), Some(Ok(content)));
            }
            assert!(decoder.pending() <= max_frame_len(max));
        }
    }
}
