//! An arbitrary message that `encode` accepts decodes to itself, using exactly the
//! encoded length; one it refuses leaves the output untouched.
#![no_main]

use std::net::SocketAddr;

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use shoal::wire::*;

/// An arbitrary message borrowing its names and data from the fuzz input.
/// (Only `Owner`s are owned, in the Vec `TrackerToNode` needs.)
fn message<'a>(u: &mut Unstructured<'a>) -> Result<Message<'a>> {
    Ok(match u.int_in_range(1..=kind::LAST)? {
        kind::NODE_TO_TRACKER => Message::NodeToTracker(match u.int_in_range(0..=6)? {
            0 => NodeToTracker::Hello {
                node_name: u.arbitrary()?,
                listen_port: u.arbitrary()?,
                secret: u.arbitrary()?,
            },
            1 => NodeToTracker::Have {
                name: u.arbitrary()?,
                info: info(u)?,
                complete: u.arbitrary()?,
            },
            2 => NodeToTracker::Need {
                name: u.arbitrary()?,
            },
            3 => NodeToTracker::Unneed {
                name: u.arbitrary()?,
            },
            4 => NodeToTracker::Drop {
                name: u.arbitrary()?,
                root: u.arbitrary()?,
            },
            5 => NodeToTracker::Exit,
            _ => NodeToTracker::Synced,
        }),
        kind::TRACKER_TO_NODE => {
            let name = u.arbitrary()?;
            let mut owners = Vec::new();
            for _ in 0..u.int_in_range(0..=8)? {
                owners.push(Owner {
                    node_name: u.arbitrary()?,
                    addr: addr(u)?,
                    info: info(u)?,
                    complete: u.arbitrary()?,
                });
            }
            Message::TrackerToNode(TrackerToNode { name, owners })
        }
        kind::SIZE_INFORMATION => Message::SizeInformation(if u.arbitrary()? {
            SizeInformation::Question {
                name: u.arbitrary()?,
                root: u.arbitrary()?,
            }
        } else {
            SizeInformation::Answer {
                name: u.arbitrary()?,
                info: info(u)?,
                have: u.arbitrary()?,
            }
        }),
        kind::FILE_COMMUNICATION => Message::FileCommunication(Block {
            root: u.arbitrary()?,
            piece: u.arbitrary()?,
            offset: u.arbitrary()?,
            data: u.arbitrary()?,
        }),
        kind::REQUEST => Message::Request(request(u)?),
        kind::CANCEL => Message::Cancel(request(u)?),
        kind::HAVE_PIECE => Message::HavePiece {
            root: u.arbitrary()?,
            piece: u.arbitrary()?,
        },
        kind::HASH_REQUEST => Message::HashRequest {
            root: u.arbitrary()?,
            first: u.arbitrary()?,
            count: u.arbitrary()?,
        },
        kind::HASHES => Message::Hashes {
            root: u.arbitrary()?,
            first: u.arbitrary()?,
            hashes: u.arbitrary()?,
        },
        kind::ERROR => Message::Error {
            code: ErrorCode::from_u8(u.int_in_range(1..=5)?).unwrap_or(ErrorCode::Protocol),
            reason: u.arbitrary()?,
        },
        _ => Message::KeepAlive,
    })
}

/// Mostly valid layouts (else the encoder refuses nearly everything), sometimes raw.
fn info(u: &mut Unstructured<'_>) -> Result<FileInfo> {
    let root = u.arbitrary()?;
    if u.ratio(1, 8)? {
        return Ok(FileInfo {
            size: u.arbitrary()?,
            piece_size: u.arbitrary()?,
            root,
        });
    }
    let piece_size = u.int_in_range(MIN_PIECE_SIZE..=MAX_PIECE_SIZE)?;
    let pieces = u64::from(u.int_in_range(0..=64u32)?);
    let size =
        (pieces * u64::from(piece_size)).saturating_sub(u.int_in_range(0..=u64::from(piece_size))?);
    Ok(FileInfo {
        size,
        piece_size,
        root,
    })
}

fn addr(u: &mut Unstructured<'_>) -> Result<SocketAddr> {
    Ok(if u.arbitrary()? {
        SocketAddr::from((u.arbitrary::<[u8; 4]>()?, u.arbitrary::<u16>()?))
    } else {
        SocketAddr::from((u.arbitrary::<[u8; 16]>()?, u.arbitrary::<u16>()?))
    })
}

fn request(u: &mut Unstructured<'_>) -> Result<BlockRequest> {
    Ok(BlockRequest {
        root: u.arbitrary()?,
        piece: u.arbitrary()?,
        offset: u.arbitrary()?,
        len: u.arbitrary()?,
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(msg) = message(&mut u) else { return };
    let mut out = b"prefix".to_vec();
    match encode(&msg, &mut out) {
        Ok(n) => {
            assert_eq!(n, out.len() - 6);
            assert_eq!(n, encoded_len(&msg));
            match decode_frame(&out[6..], &Limits::default()) {
                Ok(Decoded::Frame(got, used)) => {
                    assert_eq!(got, msg);
                    assert_eq!(used, n);
                }
                other => panic!("{msg:?} encoded, then decoded as {other:?}"),
            }
        }
        Err(_) => assert_eq!(out, b"prefix"),
    }
});
