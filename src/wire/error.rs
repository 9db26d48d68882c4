//! The one error type of the codec: one variant per violation, each naming what was wrong.

use std::fmt;

/// Why a frame could not be decoded or a message could not be encoded.
///
/// Every variant is a protocol violation by whoever produced the bytes (or, from
/// `encode`, a message that would be one); the connection that sent it should be
/// closed. `&'static str` fields name the field or rule concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The first two bytes are not `MAGIC`: not a shoal stream.
    BadMagic([u8; 2]),
    /// The header carries a protocol version this code does not speak.
    BadVersion(u8),
    /// The header carries a message type code that does not exist.
    UnknownType(u8),
    /// The payload length is over the limit (decoder: `Limits::max_payload`; encoder: `DEFAULT_MAX_PAYLOAD`).
    TooLarge {
        /// The payload length announced (or that encoding would need).
        len: usize,
        /// The limit it broke.
        max: usize,
    },
    /// The CRC32 trailer does not match the header and payload.
    BadCrc {
        /// The CRC carried by the frame.
        expected: u32,
        /// The CRC computed over what arrived.
        actual: u32,
    },
    /// The message needs more bytes than its payload has; names the field being read.
    Truncated(&'static str),
    /// The message ended before its payload did: this many bytes were left over.
    TrailingBytes(usize),
    /// A string field is not valid UTF-8; names the field.
    BadUtf8(&'static str),
    /// A file or node name breaks the name rule; says which part of it.
    BadName(&'static str),
    /// A field holds a value outside its range (bad enum or bool byte, zero length, ...).
    BadField(&'static str),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::BadMagic(m) => write!(
                f,
                "bad frame magic {:02x} {:02x} (not a shoal peer)",
                m[0], m[1]
            ),
            WireError::BadVersion(v) => {
                write!(
                    f,
                    "unsupported protocol version {v} (this is version {})",
                    super::VERSION
                )
            }
            WireError::UnknownType(t) => write!(f, "unknown message type {t}"),
            WireError::TooLarge { len, max } => {
                write!(f, "frame payload of {len} bytes is over the limit of {max}")
            }
            WireError::BadCrc { expected, actual } => write!(
                f,
                "frame checksum mismatch: frame says {expected:08x}, content gives {actual:08x}"
            ),
            WireError::Truncated(field) => write!(f, "payload ends inside {field}"),
            WireError::TrailingBytes(n) => write!(f, "{n} unexpected bytes after the message"),
            WireError::BadUtf8(field) => write!(f, "{field} is not valid UTF-8"),
            WireError::BadName(why) => write!(f, "invalid name: {why}"),
            WireError::BadField(what) => write!(f, "invalid field: {what}"),
        }
    }
}

impl std::error::Error for WireError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_says_what_failed() {
        let e = WireError::TooLarge { len: 10, max: 5 };
        assert_eq!(
            e.to_string(),
            "frame payload of 10 bytes is over the limit of 5"
        );
        assert!(WireError::BadMagic(*b"GE").to_string().contains("47 45"));
        assert!(WireError::BadCrc {
            expected: 1,
            actual: 2
        }
        .to_string()
        .contains("00000001"));
    }
}
