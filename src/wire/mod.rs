//! Bytes ⇄ messages: the frame header, CRC32, every message, an incremental decoder.
//!
//! (Module docs with the byte-layout table: to be written by the wire implementation.)

mod message;

pub use message::*;

/// First two bytes of every frame: tells a shoal stream from a stray connection at once.
pub const MAGIC: [u8; 2] = *b"SH";
/// Protocol version carried in every frame header.
pub const VERSION: u8 = 1;
/// Fixed header: magic (2), version (1), type (1), payload length (4, big-endian).
pub const HEADER_LEN: usize = 8;
/// Trailer: CRC32 (IEEE) over header and payload, big-endian.
pub const TRAILER_LEN: usize = 4;
/// Default largest payload a decoder accepts: a 1 MiB block plus its block header, rounded up.
pub const DEFAULT_MAX_PAYLOAD: usize = (1 << 20) + 4096;
/// Largest block a `Request` may ask for.
pub const MAX_BLOCK_LEN: u32 = 1 << 20;
/// Smallest piece size a `FileInfo` may carry.
pub const MIN_PIECE_SIZE: u32 = 16 << 10;
/// Largest piece size a `FileInfo` may carry.
pub const MAX_PIECE_SIZE: u32 = 64 << 20;
/// Longest file or node name, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Longest error reason, in bytes.
pub const MAX_REASON_LEN: usize = 1024;
/// Most owners one `TrackerToNode` frame lists.
pub const MAX_OWNERS_PER_REPLY: usize = 1024;
/// Most hashes one `Hashes` frame carries (32 KiB × 32 B = 1 MiB).
pub const MAX_HASHES_PER_FRAME: u32 = 32 << 10;
