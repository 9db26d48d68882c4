//! Frame → message: `decode_frame` and the payload parsers behind it.
//!
//! Parsing reads through [`Reader`], whose every accessor checks the remaining
//! length first and returns `Truncated` instead of indexing past the end: no
//! input can make this module panic. The only allocation is the owner list,
//! whose capacity is bounded by what the payload can actually hold.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use byteorder::{BigEndian, ByteOrder};

use super::frame::{check_crc, check_header, kind, HeaderStatus};
use super::{
    check_name, Block, BlockRequest, ErrorCode, FileInfo, Limits, Message, NodeToTracker, Owner,
    RootHash, SizeInformation, TrackerToNode, WireError, HEADER_LEN, MAX_BLOCK_LEN,
    MAX_HASHES_PER_FRAME, MAX_OWNERS_PER_REPLY, MAX_REASON_LEN,
};

/// Result of trying to decode one frame at the start of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// One whole frame: the message (borrowing the buffer) and the bytes it used.
    Frame(Message<'a>, usize),
    /// The frame is not all there yet: at least this many more bytes are needed.
    NeedMore(usize),
}

/// Decodes the frame at the start of `buf`, if it is all there.
///
/// Checks the header as soon as its bytes are present (so a stray or oversized
/// frame is refused before its payload arrives), then the CRC, then the payload.
/// Names and data in the message borrow from `buf`. Bytes after the frame are left
/// alone; the caller advances by the returned count.
pub fn decode_frame<'a>(buf: &'a [u8], limits: &Limits) -> Result<Decoded<'a>, WireError> {
    let header = match check_header(buf, limits)? {
        HeaderStatus::NeedMore(n) => return Ok(Decoded::NeedMore(n)),
        HeaderStatus::Header(h) => h,
    };
    let total = header.frame_len();
    let Some(frame) = buf.get(..total) else {
        return Ok(Decoded::NeedMore(total - buf.len()));
    };
    check_crc(frame)?;
    let payload = &frame[HEADER_LEN..HEADER_LEN + header.payload_len];
    let msg = decode_payload(header.kind, payload)?;
    Ok(Decoded::Frame(msg, total))
}

/// Parses a payload whose CRC has been checked, as a message of type `kind`.
pub fn decode_payload(kind: u8, payload: &[u8]) -> Result<Message<'_>, WireError> {
    let mut r = Reader { rest: payload };
    let msg = match kind {
        kind::NODE_TO_TRACKER => Message::NodeToTracker(node_to_tracker(&mut r)?),
        kind::TRACKER_TO_NODE => Message::TrackerToNode(tracker_to_node(&mut r)?),
        kind::SIZE_INFORMATION => Message::SizeInformation(size_information(&mut r)?),
        kind::FILE_COMMUNICATION => {
            let (root, piece, offset) = (r.root()?, r.u32("piece")?, r.u32("offset")?);
            let data = r.take_rest();
            if data.is_empty() || data.len() > MAX_BLOCK_LEN as usize {
                return Err(WireError::BadField(
                    "block data length not in 1..=MAX_BLOCK_LEN",
                ));
            }
            Message::FileCommunication(Block {
                root,
                piece,
                offset,
                data,
            })
        }
        kind::REQUEST => Message::Request(block_request(&mut r)?),
        kind::CANCEL => Message::Cancel(block_request(&mut r)?),
        kind::HAVE_PIECE => Message::HavePiece {
            root: r.root()?,
            piece: r.u32("piece")?,
        },
        kind::HASH_REQUEST => {
            let (root, first, count) = (r.root()?, r.u32("first")?, r.u32("count")?);
            check_hash_range(first, count)?;
            Message::HashRequest { root, first, count }
        }
        kind::HASHES => {
            let (root, first) = (r.root()?, r.u32("first")?);
            let hashes = r.take_rest();
            if hashes.len() % 32 != 0 {
                return Err(WireError::BadField("hashes length not a multiple of 32"));
            }
            check_hashes_range(first, (hashes.len() / 32) as u32)?;
            Message::Hashes {
                root,
                first,
                hashes,
            }
        }
        kind::ERROR => {
            let code = ErrorCode::from_u8(r.u8("error code")?)
                .ok_or(WireError::BadField("unknown error code"))?;
            let len = r.u16("reason length")? as usize;
            if len > MAX_REASON_LEN {
                return Err(WireError::BadField("reason longer than MAX_REASON_LEN"));
            }
            let reason = utf8(r.bytes(len, "reason")?, "reason")?;
            Message::Error { code, reason }
        }
        kind::KEEP_ALIVE => Message::KeepAlive,
        other => return Err(WireError::UnknownType(other)),
    };
    if !r.rest.is_empty() {
        return Err(WireError::TrailingBytes(r.rest.len()));
    }
    Ok(msg)
}

/// Checks a hash count and that `first .. first + count` stays within u32 piece indices.
pub(crate) fn check_hash_range(first: u32, count: u32) -> Result<(), WireError> {
    if count == 0 || count > MAX_HASHES_PER_FRAME {
        return Err(WireError::BadField(
            "hash count not in 1..=MAX_HASHES_PER_FRAME",
        ));
    }
    if u64::from(first) + u64::from(count) > 1 << 32 {
        return Err(WireError::BadField("hash range past the last piece index"));
    }
    Ok(())
}

/// The range of a `Hashes` answer: as a request's, except that it may be empty (the
/// request is turned down: ask another owner).
pub(crate) fn check_hashes_range(first: u32, count: u32) -> Result<(), WireError> {
    if count == 0 {
        return Ok(());
    }
    check_hash_range(first, count)
}

fn node_to_tracker<'a>(r: &mut Reader<'a>) -> Result<NodeToTracker<'a>, WireError> {
    Ok(match r.u8("mode")? {
        0 => NodeToTracker::Hello {
            node_name: r.name("node name")?,
            listen_port: r.u16("listen port")?,
            secret: r.array32("node secret")?,
        },
        1 => NodeToTracker::Have {
            name: r.name("file name")?,
            info: r.file_info()?,
            complete: r.bool("complete")?,
        },
        2 => NodeToTracker::Need {
            name: r.name("file name")?,
        },
        3 => NodeToTracker::Unneed {
            name: r.name("file name")?,
        },
        4 => NodeToTracker::Drop {
            name: r.name("file name")?,
            root: r.root()?,
        },
        5 => NodeToTracker::Exit,
        6 => NodeToTracker::Synced,
        _ => return Err(WireError::BadField("unknown NodeToTracker mode")),
    })
}

/// Smallest encoded owner: 1-byte name, IPv4 address, file info, flag.
pub(crate) const MIN_OWNER_LEN: usize = (1 + 1) + (1 + 4 + 2) + FILE_INFO_LEN + 1;
/// Encoded `FileInfo`: size, piece size, root.
pub(crate) const FILE_INFO_LEN: usize = 8 + 4 + 32;

fn tracker_to_node<'a>(r: &mut Reader<'a>) -> Result<TrackerToNode<'a>, WireError> {
    let name = r.name("file name")?;
    let count = r.u16("owner count")? as usize;
    if count > MAX_OWNERS_PER_REPLY {
        return Err(WireError::BadField("more than MAX_OWNERS_PER_REPLY owners"));
    }
    // Never trust the count for the allocation: the payload bounds it too.
    let mut owners = Vec::with_capacity(count.min(r.rest.len() / MIN_OWNER_LEN));
    for _ in 0..count {
        owners.push(Owner {
            node_name: r.name("owner name")?,
            addr: r.socket_addr()?,
            info: r.file_info()?,
            complete: r.bool("complete")?,
        });
    }
    Ok(TrackerToNode { name, owners })
}

fn size_information<'a>(r: &mut Reader<'a>) -> Result<SizeInformation<'a>, WireError> {
    let name = r.name("file name")?;
    let size = r.u64("size")? as i64;
    if size == -1 {
        let root = match r.u8("root flag")? {
            0 => None,
            1 => Some(r.root()?),
            _ => return Err(WireError::BadField("root flag not 0 or 1")),
        };
        return Ok(SizeInformation::Question { name, root });
    }
    if size < 0 {
        return Err(WireError::BadField("negative size other than -1"));
    }
    let info = FileInfo {
        size: size as u64,
        piece_size: r.u32("piece size")?,
        root: r.root()?,
    };
    info.check()?;
    // bitfield_len() <= 2^29 after check, so the cast is lossless even on 32-bit targets.
    let have = r.bytes(info.bitfield_len() as usize, "bitfield")?;
    check_spare_bits(&info, have)?;
    Ok(SizeInformation::Answer { name, info, have })
}

/// Checks that the bits past the last piece are zero, so every bitfield has one encoding.
pub(crate) fn check_spare_bits(info: &FileInfo, have: &[u8]) -> Result<(), WireError> {
    let used = (info.piece_count() % 8) as u32;
    if let (Some(&last), true) = (have.last(), used != 0) {
        if last & (0xff >> used) != 0 {
            return Err(WireError::BadField("bitfield spare bits not zero"));
        }
    }
    Ok(())
}

fn block_request(r: &mut Reader<'_>) -> Result<BlockRequest, WireError> {
    let req = BlockRequest {
        root: r.root()?,
        piece: r.u32("piece")?,
        offset: r.u32("offset")?,
        len: r.u32("length")?,
    };
    if req.len == 0 || req.len > MAX_BLOCK_LEN {
        return Err(WireError::BadField(
            "request length not in 1..=MAX_BLOCK_LEN",
        ));
    }
    Ok(req)
}

fn utf8<'a>(b: &'a [u8], field: &'static str) -> Result<&'a str, WireError> {
    std::str::from_utf8(b).map_err(|_| WireError::BadUtf8(field))
}

/// A cursor over a payload; every read checks the length first.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        if self.rest.len() < n {
            return Err(WireError::Truncated(field));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn take_rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.bytes(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(BigEndian::read_u16(self.bytes(2, field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(BigEndian::read_u32(self.bytes(4, field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(BigEndian::read_u64(self.bytes(8, field)?))
    }

    fn bool(&mut self, field: &'static str) -> Result<bool, WireError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::BadField("bool byte not 0 or 1")),
        }
    }

    fn root(&mut self) -> Result<RootHash, WireError> {
        self.array32("root hash")
    }

    fn array32(&mut self, field: &'static str) -> Result<[u8; 32], WireError> {
        let mut bytes = [0; 32];
        bytes.copy_from_slice(self.bytes(32, field)?);
        Ok(bytes)
    }

    fn name(&mut self, field: &'static str) -> Result<&'a str, WireError> {
        let len = self.u8(field)? as usize;
        let name = utf8(self.bytes(len, field)?, field)?;
        check_name(name)?;
        Ok(name)
    }

    fn file_info(&mut self) -> Result<FileInfo, WireError> {
        let info = FileInfo {
            size: self.u64("size")?,
            piece_size: self.u32("piece size")?,
            root: self.root()?,
        };
        info.check()?;
        Ok(info)
    }

    fn socket_addr(&mut self) -> Result<SocketAddr, WireError> {
        Ok(match self.u8("address family")? {
            4 => {
                let mut ip = [0; 4];
                ip.copy_from_slice(self.bytes(4, "IPv4 address")?);
                SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), self.u16("port")?))
            }
            6 => {
                let mut ip = [0; 16];
                ip.copy_from_slice(self.bytes(16, "IPv6 address")?);
                SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(ip),
                    self.u16("port")?,
                    0,
                    0,
                ))
            }
            _ => return Err(WireError::BadField("address family not 4 or 6")),
        })
    }
}
