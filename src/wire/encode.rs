//! Message → frame: `encode`, `encoded_len` and the zero-copy `encode_block_with` / `encode_block_uninit`.
//!
//! The encoder enforces every rule the decoder does, so whatever `encode`
//! accepts decodes back to the same message under default [`Limits`](super::Limits).

use std::mem::MaybeUninit;
use std::net::SocketAddr;

use super::decode::{check_hash_range, check_hashes_range, check_spare_bits, FILE_INFO_LEN};
use super::frame::{kind, put_crc, put_header};
use super::{
    check_name, FileInfo, Message, NodeToTracker, RootHash, SizeInformation, WireError,
    DEFAULT_MAX_PAYLOAD, HEADER_LEN, MAX_BLOCK_LEN, MAX_OWNERS_PER_REPLY, MAX_REASON_LEN,
    TRAILER_LEN,
};

/// Bytes of a `FileCommunication` payload before the data: root, piece, offset.
pub const BLOCK_HEADER_LEN: usize = 32 + 4 + 4;

/// Appends exactly one frame for `msg` to `out`; returns the bytes appended.
///
/// Refuses (with the error the decoder would give) a message that breaks a
/// protocol rule or whose payload is over `DEFAULT_MAX_PAYLOAD`; on error `out`
/// is left as it was.
pub fn encode(msg: &Message<'_>, out: &mut Vec<u8>) -> Result<usize, WireError> {
    let payload_len = payload_len(msg);
    if payload_len > DEFAULT_MAX_PAYLOAD {
        return Err(WireError::TooLarge {
            len: payload_len,
            max: DEFAULT_MAX_PAYLOAD,
        });
    }
    let start = out.len();
    out.reserve(HEADER_LEN + payload_len + TRAILER_LEN);
    // Lossless: payload_len <= DEFAULT_MAX_PAYLOAD < u32::MAX.
    put_header(out, msg.type_code(), payload_len as u32);
    if let Err(e) = put_payload(msg, out) {
        out.truncate(start);
        return Err(e);
    }
    debug_assert_eq!(out.len() - start, HEADER_LEN + payload_len);
    put_crc(out, start);
    Ok(out.len() - start)
}

/// Exact frame length `encode` appends for `msg` (when it accepts it).
pub fn encoded_len(msg: &Message<'_>) -> usize {
    payload_len(msg).saturating_add(HEADER_LEN + TRAILER_LEN)
}

/// Zero-copy data frame: header and block header, then `fill` writes the `len` data
/// bytes in place (a `pread` from disk straight into `out`, say), then the CRC.
///
/// Precondition: `1 <= len <= MAX_BLOCK_LEN` (checked by `debug_assert!`). A frame
/// built with any other length is refused by every decoder, never misread. On
/// error from `fill`, `out` is truncated back to its old length.
pub fn encode_block_with<E>(
    out: &mut Vec<u8>,
    root: &RootHash,
    piece: u32,
    offset: u32,
    len: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
) -> Result<(), E> {
    encode_block_uninit(out, root, piece, offset, len, |area| {
        // Safe code cannot fill uninitialised memory, so the area is zeroed first.
        for b in area.iter_mut() {
            b.write(0);
        }
        // SAFETY: every byte was just written, and MaybeUninit<u8> has the layout of u8.
        let area = unsafe { &mut *(area as *mut [MaybeUninit<u8>] as *mut [u8]) };
        fill(area)?;
        Ok(area)
    })
}

/// As [`encode_block_with`], without zeroing the data area first: `fill` gets it
/// uninitialised and returns it initialised (a `pread` into `MaybeUninit`, say).
///
/// `fill` must return the very slice it was given, fully initialised; if it
/// returns anything else (a bug), the area is zeroed and what it returned is
/// copied in, so the frame is still well formed and nothing unsound happens.
pub fn encode_block_uninit<E>(
    out: &mut Vec<u8>,
    root: &RootHash,
    piece: u32,
    offset: u32,
    len: usize,
    fill: impl for<'a> FnOnce(&'a mut [MaybeUninit<u8>]) -> Result<&'a mut [u8], E>,
) -> Result<(), E> {
    debug_assert!(
        (1..=MAX_BLOCK_LEN as usize).contains(&len),
        "encode_block_uninit: len {len} not in 1..=MAX_BLOCK_LEN"
    );
    let start = out.len();
    let payload_len = BLOCK_HEADER_LEN + len;
    out.reserve(HEADER_LEN + payload_len + TRAILER_LEN);
    put_header(out, kind::FILE_COMMUNICATION, payload_len as u32);
    out.extend_from_slice(root);
    out.extend_from_slice(&piece.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    let data_start = out.len();
    // `reserve` above leaves at least `len + TRAILER_LEN` spare bytes.
    let area = &mut out.spare_capacity_mut()[..len];
    let want = area.as_ptr().cast::<u8>();
    let filled = match fill(area) {
        Ok(filled) => filled,
        Err(e) => {
            out.truncate(start);
            return Err(e);
        }
    };
    if filled.as_ptr() == want && filled.len() == len {
        // SAFETY: `filled` is a `&mut [u8]` over exactly out[data_start..data_start + len]
        // (same start, same length), so those bytes are initialised, and they lie within
        // the capacity reserved above.
        unsafe { out.set_len(data_start + len) };
    } else {
        let copy = filled.to_vec();
        out.resize(data_start + len, 0);
        let n = copy.len().min(len);
        out[data_start..data_start + n].copy_from_slice(&copy[..n]);
    }
    put_crc(out, start);
    Ok(())
}

fn name_len(name: &str) -> usize {
    1 + name.len()
}

fn addr_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 1 + 4 + 2,
        SocketAddr::V6(_) => 1 + 16 + 2,
    }
}

/// Payload length of `msg`, saturating (an over-long message is refused anyway).
fn payload_len(msg: &Message<'_>) -> usize {
    match msg {
        Message::NodeToTracker(m) => {
            1 + match m {
                NodeToTracker::Hello { node_name, .. } => name_len(node_name) + 2 + 32,
                NodeToTracker::Have { name, .. } => name_len(name) + FILE_INFO_LEN + 1,
                NodeToTracker::Need { name } | NodeToTracker::Unneed { name } => name_len(name),
                NodeToTracker::Drop { name, .. } => name_len(name) + 32,
                NodeToTracker::Exit | NodeToTracker::Synced => 0,
            }
        }
        Message::TrackerToNode(t) => t.owners.iter().fold(name_len(t.name) + 2, |n, o| {
            n.saturating_add(name_len(o.node_name) + addr_len(&o.addr) + FILE_INFO_LEN + 1)
        }),
        Message::SizeInformation(SizeInformation::Question { name, root }) => {
            name_len(name) + 8 + 1 + if root.is_some() { 32 } else { 0 }
        }
        Message::SizeInformation(SizeInformation::Answer { name, have, .. }) => {
            (name_len(name) + 8 + 4 + 32).saturating_add(have.len())
        }
        Message::FileCommunication(b) => BLOCK_HEADER_LEN.saturating_add(b.data.len()),
        Message::Request(_) | Message::Cancel(_) => 32 + 4 + 4 + 4,
        Message::HavePiece { .. } => 32 + 4,
        Message::HashRequest { .. } => 32 + 4 + 4,
        Message::Hashes { hashes, .. } => (32usize + 4).saturating_add(hashes.len()),
        Message::Error { reason, .. } => (1usize + 2).saturating_add(reason.len()),
        Message::KeepAlive => 0,
    }
}

fn put_name(out: &mut Vec<u8>, name: &str) -> Result<(), WireError> {
    check_name(name)?;
    // check_name bounds the length by MAX_NAME_LEN = 255.
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

fn put_file_info(out: &mut Vec<u8>, info: &FileInfo) -> Result<(), WireError> {
    info.check()?;
    out.extend_from_slice(&info.size.to_be_bytes());
    out.extend_from_slice(&info.piece_size.to_be_bytes());
    out.extend_from_slice(&info.root);
    Ok(())
}

fn put_addr(out: &mut Vec<u8>, addr: &SocketAddr) -> Result<(), WireError> {
    match addr {
        SocketAddr::V4(a) => {
            out.push(4);
            out.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            // Flow info and scope id mean nothing on another host and are not carried;
            // refusing them keeps encode → decode exact. Callers clear them.
            if a.flowinfo() != 0 || a.scope_id() != 0 {
                return Err(WireError::BadField(
                    "IPv6 flow info or scope id is not carried",
                ));
            }
            out.push(6);
            out.extend_from_slice(&a.ip().octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
    Ok(())
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_payload(msg: &Message<'_>, out: &mut Vec<u8>) -> Result<(), WireError> {
    match msg {
        Message::NodeToTracker(m) => match m {
            NodeToTracker::Hello {
                node_name,
                listen_port,
                secret,
            } => {
                out.push(0);
                put_name(out, node_name)?;
                out.extend_from_slice(&listen_port.to_be_bytes());
                out.extend_from_slice(secret);
            }
            NodeToTracker::Have {
                name,
                info,
                complete,
            } => {
                out.push(1);
                put_name(out, name)?;
                put_file_info(out, info)?;
                out.push(u8::from(*complete));
            }
            NodeToTracker::Need { name } => {
                out.push(2);
                put_name(out, name)?;
            }
            NodeToTracker::Unneed { name } => {
                out.push(3);
                put_name(out, name)?;
            }
            NodeToTracker::Drop { name, root } => {
                out.push(4);
                put_name(out, name)?;
                out.extend_from_slice(root);
            }
            NodeToTracker::Exit => out.push(5),
            NodeToTracker::Synced => out.push(6),
        },
        Message::TrackerToNode(t) => {
            put_name(out, t.name)?;
            if t.owners.len() > MAX_OWNERS_PER_REPLY {
                return Err(WireError::BadField("more than MAX_OWNERS_PER_REPLY owners"));
            }
            // MAX_OWNERS_PER_REPLY fits in a u16.
            out.extend_from_slice(&(t.owners.len() as u16).to_be_bytes());
            for o in &t.owners {
                put_name(out, o.node_name)?;
                put_addr(out, &o.addr)?;
                put_file_info(out, &o.info)?;
                out.push(u8::from(o.complete));
            }
        }
        Message::SizeInformation(SizeInformation::Question { name, root }) => {
            put_name(out, name)?;
            out.extend_from_slice(&(-1i64).to_be_bytes());
            match root {
                None => out.push(0),
                Some(root) => {
                    out.push(1);
                    out.extend_from_slice(root);
                }
            }
        }
        Message::SizeInformation(SizeInformation::Answer { name, info, have }) => {
            put_name(out, name)?;
            if info.size > i64::MAX as u64 {
                return Err(WireError::BadField("size over i64::MAX"));
            }
            put_file_info(out, info)?;
            if have.len() as u64 != info.bitfield_len() {
                return Err(WireError::BadField(
                    "bitfield length does not match piece count",
                ));
            }
            check_spare_bits(info, have)?;
            out.extend_from_slice(have);
        }
        Message::FileCommunication(b) => {
            if b.data.is_empty() || b.data.len() > MAX_BLOCK_LEN as usize {
                return Err(WireError::BadField(
                    "block data length not in 1..=MAX_BLOCK_LEN",
                ));
            }
            out.extend_from_slice(&b.root);
            put_u32(out, b.piece);
            put_u32(out, b.offset);
            out.extend_from_slice(b.data);
        }
        Message::Request(r) | Message::Cancel(r) => {
            if r.len == 0 || r.len > MAX_BLOCK_LEN {
                return Err(WireError::BadField(
                    "request length not in 1..=MAX_BLOCK_LEN",
                ));
            }
            out.extend_from_slice(&r.root);
            put_u32(out, r.piece);
            put_u32(out, r.offset);
            put_u32(out, r.len);
        }
        Message::HavePiece { root, piece } => {
            out.extend_from_slice(root);
            put_u32(out, *piece);
        }
        Message::HashRequest { root, first, count } => {
            check_hash_range(*first, *count)?;
            out.extend_from_slice(root);
            put_u32(out, *first);
            put_u32(out, *count);
        }
        Message::Hashes {
            root,
            first,
            hashes,
        } => {
            if hashes.len() % 32 != 0 {
                return Err(WireError::BadField("hashes length not a multiple of 32"));
            }
            let count = u32::try_from(hashes.len() / 32).unwrap_or(u32::MAX);
            check_hashes_range(*first, count)?;
            out.extend_from_slice(root);
            put_u32(out, *first);
            out.extend_from_slice(hashes);
        }
        Message::Error { code, reason } => {
            if reason.len() > MAX_REASON_LEN {
                return Err(WireError::BadField("reason longer than MAX_REASON_LEN"));
            }
            out.push(*code as u8);
            // MAX_REASON_LEN fits in a u16.
            out.extend_from_slice(&(reason.len() as u16).to_be_bytes());
            out.extend_from_slice(reason.as_bytes());
        }
        Message::KeepAlive => {}
    }
    Ok(())
}
