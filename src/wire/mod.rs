//! Bytes ⇄ messages: the frame header, CRC32, every message, an incremental decoder.
//!
//! This module uses nothing else of the crate but the leaves [`crate::names`] (the name
//! rule it shares with `storage`) and [`crate::layout`] (a file's geometry, likewise);
//! otherwise only `std`, `byteorder`, `crc32fast`.
//!
//! # Contract
//!
//! * [`decode_frame`] never panics and never allocates more than the frame it
//!   decodes could hold, whatever the input: every read is length-checked (a
//!   `Truncated` error, not an index panic), every count is checked against a
//!   named maximum and against the payload's length before anything is allocated.
//!   Incomplete input is not an error: it is [`Decoded::NeedMore`].
//! * The header is judged as soon as its bytes arrive: a wrong magic, version or
//!   type is refused as soon as its bytes are in (a stray connection on its second
//!   byte), an oversized length before the payload is waited for. Errors depend
//!   only on the bytes, never on how the stream was split.
//! * [`encode`] refuses every message the decoder would refuse (same error), so
//!   every frame it produces decodes back to an equal message with default
//!   [`Limits`], and [`encoded_len`] is its exact length.
//! * Decoded names and data borrow the input buffer: a data frame is never copied.
//! * Under `cfg(fuzzing)` the CRC is computed but not compared, so fuzzers get
//!   past it.
//!
//! # Frame
//!
//! All integers are big-endian. A stream is a sequence of frames:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | magic `"SH"` (`53 48`) |
//! | 2 | 1 | version, `1` |
//! | 3 | 1 | message type, `1..=11` (table below) |
//! | 4 | 4 | payload length `n` (u32), at most the receiver's `max_payload` (default 1 MiB + 4 KiB) |
//! | 8 | n | payload |
//! | 8 + n | 4 | CRC32 (IEEE, as zlib) of bytes `0 .. 8 + n`, header and payload |
//!
//! # Field encodings
//!
//! | name | encoding |
//! |---|---|
//! | `u8/u16/u32/u64/i64` | big-endian, 1/2/4/8/8 bytes |
//! | bool | 1 byte, `0` or `1`; anything else is refused |
//! | name | u8 length + UTF-8; must pass [`check_name`]: 1..=255 bytes, not `.`/`..`, no `/ \ NUL` or control character |
//! | reason | u16 length (≤ 1024) + UTF-8 |
//! | root | 32 bytes (BLAKE3 root hash) |
//! | secret | 32 bytes (a node's secret, see `NodeSecret`) |
//! | addr | family u8 (`4` or `6`), 4 or 16 address bytes, u16 port |
//! | info (`FileInfo`) | size u64, piece_size u32 (16 KiB..=64 MiB), root; at most `u32::MAX` pieces |
//!
//! # Payloads
//!
//! A payload must be consumed exactly: bytes left over are `TrailingBytes`.
//!
//! | type | message | payload |
//! |---|---|---|
//! | 1 | NodeToTracker | mode u8, then: `0` Hello: name, listen_port u16, secret (32 bytes) · `1` Have: name, info, complete bool · `2` Need: name · `3` Unneed: name · `4` Drop: name, root · `5` Exit: nothing · `6` Synced: nothing |
//! | 2 | TrackerToNode | name, count u16 (≤ 1024), then `count` × (node_name, addr, info, complete bool) |
//! | 3 | SizeInformation | name, size i64, then: size `-1` (Question): flag u8 (`0`/`1`), root if flag is 1 · size ≥ 0 (Answer): piece_size u32, root, bitfield of exactly ⌈pieces/8⌉ bytes, piece 0 in the top bit of byte 0, spare bits zero · other sizes refused |
//! | 4 | FileCommunication | root, piece u32, offset u32, data: the rest (1..=1 MiB) |
//! | 5 | Request | root, piece u32, offset u32, len u32 (1..=1 MiB) |
//! | 6 | Cancel | as Request (downloader → owner: withdrawn; owner → downloader: turned down) |
//! | 7 | HavePiece | root, piece u32 |
//! | 8 | HashRequest | root, first u32, count u32 (1..=32768; `first + count ≤ 2³²`) |
//! | 9 | Hashes | root, first u32, hashes: the rest, 32 bytes each (0..=32768 of them; `first + count ≤ 2³²`; none: the request is turned down, ask another owner) |
//! | 10 | Error | code u8 (1 NotFound, 2 Refused, 3 BadRequest, 4 BadName, 5 Protocol), reason |
//! | 11 | KeepAlive | empty |
//!
//! A 1 MiB data frame costs 52 bytes of framing: 8 header + 40 block header + 4 CRC.
//!
//! # Example: a `HavePiece` frame, byte by byte
//!
//! ```text
//! 53 48 01 07 00 00 00 24      "SH", version 1, type 7, payload 36 bytes
//! ab ab .. ab  (32 bytes)      root
//! 00 00 00 05                  piece 5
//! xx xx xx xx                  CRC32 of the 44 bytes before it
//! ```

mod decode;
mod decoder;
mod encode;
mod error;
mod frame;
mod message;

pub use decode::{decode_frame, decode_payload, Decoded};
pub use decoder::Decoder;
pub use encode::{encode, encode_block_uninit, encode_block_with, encoded_len, BLOCK_HEADER_LEN};
pub use error::WireError;
pub use frame::{check_header, kind, FrameHeader, HeaderStatus, Limits};
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
pub use crate::names::MAX_NAME_LEN;
/// Longest error reason, in bytes.
pub const MAX_REASON_LEN: usize = 1024;
/// Most owners one `TrackerToNode` frame lists.
pub const MAX_OWNERS_PER_REPLY: usize = 1024;
/// Most hashes one `Hashes` frame carries (32 KiB × 32 B = 1 MiB).
pub const MAX_HASHES_PER_FRAME: u32 = 32 << 10;
