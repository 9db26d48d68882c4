//! The frame envelope: header checks, the CRC32 trailer, the decoder's limits.

use byteorder::{BigEndian, ByteOrder};

use super::{WireError, DEFAULT_MAX_PAYLOAD, HEADER_LEN, MAGIC, TRAILER_LEN, VERSION};

/// Message type codes: the fourth byte of every header.
pub mod kind {
    /// `Message::NodeToTracker`.
    pub const NODE_TO_TRACKER: u8 = 1;
    /// `Message::TrackerToNode`.
    pub const TRACKER_TO_NODE: u8 = 2;
    /// `Message::SizeInformation`.
    pub const SIZE_INFORMATION: u8 = 3;
    /// `Message::FileCommunication`.
    pub const FILE_COMMUNICATION: u8 = 4;
    /// `Message::Request`.
    pub const REQUEST: u8 = 5;
    /// `Message::Cancel`.
    pub const CANCEL: u8 = 6;
    /// `Message::HavePiece`.
    pub const HAVE_PIECE: u8 = 7;
    /// `Message::HashRequest`.
    pub const HASH_REQUEST: u8 = 8;
    /// `Message::Hashes`.
    pub const HASHES: u8 = 9;
    /// `Message::Error`.
    pub const ERROR: u8 = 10;
    /// `Message::KeepAlive`.
    pub const KEEP_ALIVE: u8 = 11;
    /// Highest code in use; codes `1..=LAST` are all defined.
    pub const LAST: u8 = KEEP_ALIVE;
}

/// Limits passed into the decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload accepted; a header announcing more is rejected before the payload arrives.
    pub max_payload: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }
}

impl Limits {
    /// Longest whole frame (header + payload + trailer) these limits allow.
    pub fn max_frame_len(&self) -> usize {
        self.max_payload.saturating_add(HEADER_LEN + TRAILER_LEN)
    }
}

/// A checked frame header: the type is known and the length within the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Message type code (one of [`kind`]).
    pub kind: u8,
    /// Payload length in bytes.
    pub payload_len: usize,
}

impl FrameHeader {
    /// Length of the whole frame this header starts.
    pub fn frame_len(&self) -> usize {
        // Cannot overflow: check_header refused payload lengths whose frame would.
        self.payload_len + HEADER_LEN + TRAILER_LEN
    }
}

/// What the start of a buffer says about the frame there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderStatus {
    /// Fewer than `HEADER_LEN` bytes, all fine so far: at least this many more are needed.
    NeedMore(usize),
    /// A complete, checked header.
    Header(FrameHeader),
}

/// Checks the header at the start of `buf`, rejecting as early as the bytes allow.
///
/// Magic, version and type are checked as soon as their bytes arrive, so a stray
/// connection (an HTTP client, say) is refused on its second byte, and the length is
/// checked against `limits` before any payload is waited for.
pub fn check_header(buf: &[u8], limits: &Limits) -> Result<HeaderStatus, WireError> {
    let have = buf.len().min(HEADER_LEN);
    let h = &buf[..have];
    // Judged once both magic bytes are in, so the error reports what was sent
    // whatever the split of the stream (the fuzzer caught a 1-byte split showing 0).
    if have >= 2 && h[..2] != MAGIC {
        return Err(WireError::BadMagic([h[0], h[1]]));
    }
    if have >= 3 && h[2] != VERSION {
        return Err(WireError::BadVersion(h[2]));
    }
    if have >= 4 && !(1..=kind::LAST).contains(&h[3]) {
        return Err(WireError::UnknownType(h[3]));
    }
    if have < HEADER_LEN {
        return Ok(HeaderStatus::NeedMore(HEADER_LEN - have));
    }
    let len = BigEndian::read_u32(&h[4..8]) as usize;
    // The second test only matters where usize is 32 bits.
    if len > limits.max_payload || len > usize::MAX - HEADER_LEN - TRAILER_LEN {
        return Err(WireError::TooLarge {
            len,
            max: limits.max_payload,
        });
    }
    Ok(HeaderStatus::Header(FrameHeader {
        kind: h[3],
        payload_len: len,
    }))
}

/// Writes a header for a payload of `payload_len` bytes (which the caller has checked fits).
pub(crate) fn put_header(out: &mut Vec<u8>, kind: u8, payload_len: u32) {
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&payload_len.to_be_bytes());
}

/// Checks the trailer of a complete `frame` (header + payload + trailer).
pub(crate) fn check_crc(frame: &[u8]) -> Result<(), WireError> {
    let (body, trailer) = frame.split_at(frame.len() - TRAILER_LEN);
    let expected = BigEndian::read_u32(trailer);
    // One pass over header and payload, straight from the input buffer.
    let actual = crc32fast::hash(body);
    // Under fuzzing the CRC is computed (its cost stays visible) but not compared,
    // so the fuzzer reaches the payload parsers behind it.
    if cfg!(fuzzing) || expected == actual {
        Ok(())
    } else {
        Err(WireError::BadCrc { expected, actual })
    }
}

/// Appends the CRC of `out[start..]` (one whole frame but its trailer).
pub(crate) fn put_crc(out: &mut Vec<u8>, start: usize) {
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_rejected_from_first_wrong_byte() {
        let l = Limits::default();
        assert_eq!(check_header(b"G", &l), Ok(HeaderStatus::NeedMore(7)));
        assert_eq!(check_header(b"SX", &l), Err(WireError::BadMagic(*b"SX")));
        assert_eq!(check_header(b"SH\x02", &l), Err(WireError::BadVersion(2)));
        assert_eq!(
            check_header(b"SH\x01\x00", &l),
            Err(WireError::UnknownType(0))
        );
        assert_eq!(
            check_header(b"SH\x01\x0c", &l),
            Err(WireError::UnknownType(12))
        );
        assert_eq!(check_header(b"", &l), Ok(HeaderStatus::NeedMore(8)));
        assert_eq!(
            check_header(b"SH\x01\x0b", &l),
            Ok(HeaderStatus::NeedMore(4))
        );
    }

    #[test]
    fn length_limit_is_inclusive() {
        let l = Limits { max_payload: 100 };
        let ok = [b'S', b'H', 1, 11, 0, 0, 0, 100];
        assert_eq!(
            check_header(&ok, &l),
            Ok(HeaderStatus::Header(FrameHeader {
                kind: 11,
                payload_len: 100
            }))
        );
        let big = [b'S', b'H', 1, 11, 0, 0, 0, 101];
        assert_eq!(
            check_header(&big, &l),
            Err(WireError::TooLarge { len: 101, max: 100 })
        );
    }
}
