//! The wire codec from the outside: round trips, any split of a stream, bit flips,
//! every rejection with its own error, the frame limit, hand-written frames.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

use proptest::prelude::*;
use shoal::wire::*;

const ROOT: RootHash = [0xab; 32];

fn info(size: u64, piece_size: u32) -> FileInfo {
    FileInfo {
        size,
        piece_size,
        root: ROOT,
    }
}

/// One (small) message of every kind and every variant.
fn samples() -> Vec<Message<'static>> {
    let v6 = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 7001, 0, 0));
    vec![
        Message::NodeToTracker(NodeToTracker::Hello {
            node_name: "ann",
            listen_port: 12345,
            secret: [0x5e; 32],
        }),
        Message::NodeToTracker(NodeToTracker::Have {
            name: "movie.mkv",
            info: info(5 << 20, 1 << 20),
            complete: true,
        }),
        Message::NodeToTracker(NodeToTracker::Need {
            name: "ünïcødé"
        }),
        Message::NodeToTracker(NodeToTracker::Unneed { name: "x" }),
        Message::NodeToTracker(NodeToTracker::Drop {
            name: "old.iso",
            root: [7; 32],
        }),
        Message::NodeToTracker(NodeToTracker::Exit),
        Message::NodeToTracker(NodeToTracker::Synced),
        Message::TrackerToNode(TrackerToNode {
            name: "movie.mkv",
            owners: vec![],
        }),
        Message::TrackerToNode(TrackerToNode {
            name: "movie.mkv",
            owners: vec![
                Owner {
                    node_name: "ann",
                    addr: "127.0.0.1:7000".parse().unwrap(),
                    info: info(5 << 20, 1 << 20),
                    complete: true,
                },
                Owner {
                    node_name: "bob",
                    addr: v6,
                    info: info(0, MIN_PIECE_SIZE),
                    complete: false,
                },
            ],
        }),
        Message::SizeInformation(SizeInformation::Question {
            name: "a",
            root: None,
        }),
        Message::SizeInformation(SizeInformation::Question {
            name: "a",
            root: Some(ROOT),
        }),
        Message::SizeInformation(SizeInformation::Answer {
            name: "a",
            info: info(9 * MIN_PIECE_SIZE as u64 + 1, MIN_PIECE_SIZE),
            have: &[0b1010_1010, 0b1000_0000],
        }),
        Message::SizeInformation(SizeInformation::Answer {
            name: "empty",
            info: info(0, MIN_PIECE_SIZE),
            have: &[],
        }),
        Message::FileCommunication(Block {
            root: ROOT,
            piece: 3,
            offset: 16384,
            data: b"hello, world",
        }),
        Message::Request(BlockRequest {
            root: ROOT,
            piece: 1,
            offset: 0,
            len: MAX_BLOCK_LEN,
        }),
        Message::Cancel(BlockRequest {
            root: ROOT,
            piece: u32::MAX,
            offset: 7,
            len: 1,
        }),
        Message::HavePiece {
            root: ROOT,
            piece: 5,
        },
        Message::HashRequest {
            root: ROOT,
            first: 0,
            count: MAX_HASHES_PER_FRAME,
        },
        Message::Hashes {
            root: ROOT,
            first: 10,
            hashes: &[9; 64],
        },
        Message::Hashes {
            root: ROOT,
            first: 10,
            hashes: &[],
        },
        Message::Error {
            code: ErrorCode::NotFound,
            reason: "no such file",
        },
        Message::Error {
            code: ErrorCode::Protocol,
            reason: "",
        },
        Message::KeepAlive,
    ]
}

fn enc(msg: &Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    let n = encode(msg, &mut out).expect("sample encodes");
    assert_eq!(n, out.len());
    assert_eq!(n, encoded_len(msg));
    out
}

fn dec(buf: &[u8]) -> Result<Decoded<'_>, WireError> {
    decode_frame(buf, &Limits::default())
}

/// A frame with a correct CRC around any payload (for rejection tests).
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![b'S', b'H', 1, kind];
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    let crc = crc32fast::hash(&f);
    f.extend_from_slice(&crc.to_be_bytes());
    f
}

fn decode_err(kind: u8, payload: &[u8]) -> WireError {
    match dec(&frame(kind, payload)) {
        Err(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn name(s: &str) -> Vec<u8> {
    let mut v = vec![s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

fn info_bytes(size: u64, piece_size: u32) -> Vec<u8> {
    let mut v = size.to_be_bytes().to_vec();
    v.extend_from_slice(&piece_size.to_be_bytes());
    v.extend_from_slice(&ROOT);
    v
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

// ---------------------------------------------------------------- round trips

#[test]
fn every_message_kind_round_trips() {
    let mut kinds = std::collections::BTreeSet::new();
    for msg in samples() {
        let bytes = enc(&msg);
        assert_eq!(bytes[3], msg.type_code());
        kinds.insert(msg.type_code());
        match dec(&bytes) {
            Ok(Decoded::Frame(got, used)) => {
                assert_eq!(got, msg);
                assert_eq!(used, bytes.len());
            }
            other => panic!("{msg:?} decoded as {other:?}"),
        }
    }
    assert_eq!(kinds, (1..=kind::LAST).collect());
}

#[test]
fn decode_ignores_bytes_after_the_frame() {
    let mut bytes = enc(&Message::KeepAlive);
    let len = bytes.len();
    bytes.extend_from_slice(b"SH\x01");
    assert_eq!(dec(&bytes), Ok(Decoded::Frame(Message::KeepAlive, len)));
}

#[test]
fn need_more_says_how_many() {
    let bytes = enc(&samples()[1]);
    for cut in 0..bytes.len() {
        let want = if cut < HEADER_LEN {
            HEADER_LEN - cut
        } else {
            bytes.len() - cut
        };
        assert_eq!(dec(&bytes[..cut]), Ok(Decoded::NeedMore(want)), "cut {cut}");
    }
}

#[test]
fn full_size_block_round_trips_and_costs_52_bytes() {
    let data = vec![0x5a; MAX_BLOCK_LEN as usize];
    let msg = Message::FileCommunication(Block {
        root: ROOT,
        piece: 2,
        offset: 0,
        data: &data,
    });
    let bytes = enc(&msg);
    assert_eq!(bytes.len() - data.len(), 52);
    assert_eq!(dec(&bytes), Ok(Decoded::Frame(msg, bytes.len())));
}

#[test]
fn encode_block_with_matches_encode() {
    let msg = Message::FileCommunication(Block {
        root: ROOT,
        piece: 9,
        offset: 32768,
        data: b"in place",
    });
    let mut out = b"prefix".to_vec();
    encode_block_with::<()>(&mut out, &ROOT, 9, 32768, 8, |buf| {
        buf.copy_from_slice(b"in place");
        Ok(())
    })
    .unwrap();
    assert_eq!(&out[..6], b"prefix");
    assert_eq!(&out[6..], &enc(&msg)[..]);
}

#[test]
fn encode_block_with_fill_error_leaves_out_unchanged() {
    let mut out = b"prefix".to_vec();
    let r = encode_block_with(&mut out, &ROOT, 0, 0, 100, |_| Err("disk on fire"));
    assert_eq!(r, Err("disk on fire"));
    assert_eq!(out, b"prefix");
}

// ---------------------------------------------------------------- streams

fn stream() -> (Vec<u8>, Vec<Message<'static>>) {
    let msgs = samples();
    let mut bytes = Vec::new();
    for m in &msgs {
        encode(m, &mut bytes).unwrap();
    }
    (bytes, msgs)
}

/// Feeds `chunks` through a Decoder, collecting every frame.
fn through_decoder<'c>(chunks: impl IntoIterator<Item = &'c [u8]>) -> Vec<String> {
    let mut d = Decoder::new(Limits::default());
    let mut got = Vec::new();
    for mut chunk in chunks {
        while !chunk.is_empty() {
            let n = d.feed(chunk);
            chunk = &chunk[n..];
            while let Some(m) = d.next_frame().expect("valid stream") {
                got.push(format!("{m:?}"));
            }
        }
    }
    assert_eq!(d.buffered(), 0);
    got
}

#[test]
fn every_split_of_a_stream_yields_exactly_the_frames() {
    let (bytes, msgs) = stream();
    let want: Vec<String> = msgs.iter().map(|m| format!("{m:?}")).collect();
    for at in 0..=bytes.len() {
        let (a, b) = bytes.split_at(at);
        assert_eq!(through_decoder([a, b]), want, "split at {at}");
    }
    assert_eq!(through_decoder(bytes.chunks(1)), want);
    assert_eq!(through_decoder(bytes.chunks(7)), want);
}

#[test]
fn decoder_never_holds_more_than_one_max_frame() {
    let limits = Limits { max_payload: 100 };
    let mut d = Decoder::new(limits);
    let (bytes, _) = stream();
    assert_eq!(d.feed(&bytes), 112);
    assert_eq!(d.feed(&bytes), 0);
    // The first frame (a Hello) comes out and frees room.
    assert!(matches!(d.next_frame(), Ok(Some(_))));
    assert!(d.feed(&bytes[112..]) > 0);
}

#[test]
fn decoder_stays_failed() {
    let mut d = Decoder::new(Limits::default());
    assert_eq!(d.feed(b"GET / HTTP/1.1\r\n"), 16);
    assert_eq!(d.next_frame(), Err(WireError::BadMagic(*b"GE")));
    assert!(d.is_failed());
    assert_eq!(d.feed(&enc(&Message::KeepAlive)), 0);
    assert_eq!(d.next_frame(), Err(WireError::BadMagic(*b"GE")));
}

// ---------------------------------------------------------------- corruption

#[test]
fn every_single_bit_flip_is_caught() {
    for msg in samples() {
        let bytes = enc(&msg);
        for bit in 0..bytes.len() * 8 {
            let mut f = bytes.clone();
            f[bit / 8] ^= 1 << (bit % 8);
            match dec(&f) {
                Err(_) => {}
                // A longer length field waits for more bytes; with them, the CRC fails.
                Ok(Decoded::NeedMore(n)) if (4..8).contains(&(bit / 8)) => {
                    f.resize(f.len() + n, 0);
                    assert!(dec(&f).is_err(), "{msg:?} bit {bit}");
                }
                other => panic!("{msg:?} with bit {bit} flipped gave {other:?}"),
            }
        }
    }
}

#[test]
fn header_errors_come_from_the_header_alone() {
    assert_eq!(dec(b"GET / HT"), Err(WireError::BadMagic(*b"GE")));
    assert_eq!(dec(b"\x16"), Ok(Decoded::NeedMore(7)));
    assert_eq!(dec(b"\x16\x03"), Err(WireError::BadMagic([0x16, 3])));
    assert_eq!(dec(b"SH\x00"), Err(WireError::BadVersion(0)));
    assert_eq!(dec(b"SH\x01\x00"), Err(WireError::UnknownType(0)));
    assert_eq!(dec(b"SH\x01\x0c"), Err(WireError::UnknownType(12)));
    assert_eq!(dec(b"SH\x01\xff\x00"), Err(WireError::UnknownType(255)));
}

#[test]
fn frame_limit_at_the_boundary() {
    let limits = Limits { max_payload: 140 };
    let data = [1u8; 100];
    let msg = Message::FileCommunication(Block {
        root: ROOT,
        piece: 0,
        offset: 0,
        data: &data,
    });
    let ok = enc(&msg);
    assert_eq!(ok.len(), HEADER_LEN + 140 + TRAILER_LEN);
    assert_eq!(
        decode_frame(&ok, &limits),
        Ok(Decoded::Frame(msg, ok.len()))
    );
    let big = frame(kind::FILE_COMMUNICATION, &[1u8; 141]);
    // Eight header bytes are enough to refuse it.
    assert_eq!(
        decode_frame(&big[..HEADER_LEN], &limits),
        Err(WireError::TooLarge { len: 141, max: 140 })
    );
    let huge = [b'S', b'H', 1, 4, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(
        dec(&huge),
        Err(WireError::TooLarge {
            len: u32::MAX as usize,
            max: DEFAULT_MAX_PAYLOAD
        })
    );
}

#[test]
fn bad_crc_is_reported_with_both_values() {
    let mut f = enc(&Message::KeepAlive);
    let last = f.len() - 1;
    f[last] ^= 1;
    assert_eq!(
        dec(&f),
        Err(WireError::BadCrc {
            expected: 0x75e3_f2e6 ^ 1,
            actual: 0x75e3_f2e6
        })
    );
}

// ---------------------------------------------------------------- payload rejections

#[test]
fn truncated_and_trailing_payloads() {
    let req = cat(&[&ROOT, &[0, 0, 0, 1], &[0; 4], &[0, 0, 0, 9]]);
    assert_eq!(
        decode_err(kind::REQUEST, &req[..43]),
        WireError::Truncated("length")
    );
    assert_eq!(
        decode_err(kind::REQUEST, &cat(&[&req, &[0]])),
        WireError::TrailingBytes(1)
    );
    assert_eq!(
        decode_err(kind::KEEP_ALIVE, &[0, 0]),
        WireError::TrailingBytes(2)
    );
    assert_eq!(
        decode_err(kind::HAVE_PIECE, &ROOT[..10]),
        WireError::Truncated("root hash")
    );
    assert_eq!(
        decode_err(kind::NODE_TO_TRACKER, &[]),
        WireError::Truncated("mode")
    );
    assert_eq!(
        decode_err(kind::NODE_TO_TRACKER, &[2, 5, b'a']),
        WireError::Truncated("file name")
    );
    assert_eq!(
        decode_err(kind::NODE_TO_TRACKER, &cat(&[&[5], &[0]])),
        WireError::TrailingBytes(1)
    );
}

#[test]
fn bad_utf8_and_bad_names() {
    assert_eq!(
        decode_err(kind::NODE_TO_TRACKER, &[2, 2, 0xc3, 0x28]),
        WireError::BadUtf8("file name")
    );
    for (bad, why) in [
        ("", "empty"),
        (".", "`.` or `..`"),
        ("..", "`.` or `..`"),
        ("a/b", "contains '/'"),
        ("..\\x", "contains '\\'"),
        ("a\0", "contains NUL"),
        ("a\x1b[31m", "contains a control character"),
        ("a\u{85}", "contains a control character"),
    ] {
        let payload = cat(&[&[2], &name(bad)]);
        assert_eq!(
            decode_err(kind::NODE_TO_TRACKER, &payload),
            WireError::BadName(why),
            "{bad:?}"
        );
        // The encoder refuses the same names.
        let mut out = vec![1, 2, 3];
        let msg = Message::NodeToTracker(NodeToTracker::Need { name: bad });
        assert_eq!(encode(&msg, &mut out), Err(WireError::BadName(why)));
        assert_eq!(out, [1, 2, 3], "out untouched on error");
    }
    assert_eq!(
        check_name(&"n".repeat(MAX_NAME_LEN + 1)),
        Err(WireError::BadName("longer than 255 bytes"))
    );
    assert_eq!(check_name(&"n".repeat(MAX_NAME_LEN)), Ok(()));
    assert_eq!(check_name("..."), Ok(()));
    assert_eq!(check_name(".hidden"), Ok(()));
}

#[test]
fn bad_enum_and_bool_bytes() {
    let bf = |what| WireError::BadField(what);
    assert_eq!(
        decode_err(kind::NODE_TO_TRACKER, &[7]),
        bf("unknown NodeToTracker mode")
    );
    let have = cat(&[&[1], &name("f"), &info_bytes(1, MIN_PIECE_SIZE), &[2]]);
    assert_eq!(
        decode_err(kind::NODE_TO_TRACKER, &have),
        bf("bool byte not 0 or 1")
    );
    for code in [0, 6, 255] {
        assert_eq!(
            decode_err(kind::ERROR, &[code, 0, 0]),
            bf("unknown error code")
        );
    }
    let q = cat(&[&name("f"), &(-1i64).to_be_bytes(), &[2]]);
    assert_eq!(
        decode_err(kind::SIZE_INFORMATION, &q),
        bf("root flag not 0 or 1")
    );
    let neg = cat(&[&name("f"), &(-2i64).to_be_bytes()]);
    assert_eq!(
        decode_err(kind::SIZE_INFORMATION, &neg),
        bf("negative size other than -1")
    );
    let owner = cat(&[
        &name("f"),
        &[0, 1],
        &name("ann"),
        &[5, 1, 2, 3, 4, 0, 80],
        &info_bytes(1, MIN_PIECE_SIZE),
        &[1],
    ]);
    assert_eq!(
        decode_err(kind::TRACKER_TO_NODE, &owner),
        bf("address family not 4 or 6")
    );
}

#[test]
fn file_info_rules() {
    let have = |size: u64, piece: u32| cat(&[&[1], &name("f"), &info_bytes(size, piece), &[1]]);
    let decodes = |p: &[u8]| matches!(dec(&frame(1, p)), Ok(Decoded::Frame(..)));
    assert!(decodes(&have(0, MIN_PIECE_SIZE)));
    assert!(decodes(&have(1, MAX_PIECE_SIZE)));
    assert_eq!(
        decode_err(1, &have(1, MIN_PIECE_SIZE - 1)),
        WireError::BadField("piece size out of range")
    );
    assert_eq!(
        decode_err(1, &have(1, MAX_PIECE_SIZE + 1)),
        WireError::BadField("piece size out of range")
    );
    // Exactly u32::MAX pieces is fine, one byte more is not.
    let max = u64::from(u32::MAX) * u64::from(MIN_PIECE_SIZE);
    assert!(decodes(&have(max, MIN_PIECE_SIZE)));
    assert_eq!(
        decode_err(1, &have(max + 1, MIN_PIECE_SIZE)),
        WireError::BadField("more than u32::MAX pieces")
    );
    assert_eq!(
        decode_err(1, &have(u64::MAX, MIN_PIECE_SIZE)),
        WireError::BadField("more than u32::MAX pieces")
    );
}

#[test]
fn owner_count_is_bounded_before_allocation() {
    let too_many = cat(&[&name("f"), &(MAX_OWNERS_PER_REPLY as u16 + 1).to_be_bytes()]);
    assert_eq!(
        decode_err(kind::TRACKER_TO_NODE, &too_many),
        WireError::BadField("more than MAX_OWNERS_PER_REPLY owners")
    );
    // A count the payload cannot hold is a truncation, not a big allocation.
    let short = cat(&[&name("f"), &(MAX_OWNERS_PER_REPLY as u16).to_be_bytes()]);
    assert_eq!(
        decode_err(kind::TRACKER_TO_NODE, &short),
        WireError::Truncated("owner name")
    );
}

#[test]
fn bitfield_rules() {
    // 10 pieces: 2 bytes, 6 spare bits.
    let answer = |bits: &[u8]| {
        cat(&[
            &name("f"),
            &info_bytes(10 * u64::from(MIN_PIECE_SIZE), MIN_PIECE_SIZE),
            bits,
        ])
    };
    assert!(matches!(
        dec(&frame(3, &answer(&[0xff, 0xc0]))),
        Ok(Decoded::Frame(..))
    ));
    assert_eq!(
        decode_err(3, &answer(&[0xff, 0xe0])),
        WireError::BadField("bitfield spare bits not zero")
    );
    assert_eq!(
        decode_err(3, &answer(&[0xff])),
        WireError::Truncated("bitfield")
    );
    assert_eq!(
        decode_err(3, &answer(&[0xff, 0, 0])),
        WireError::TrailingBytes(1)
    );
}

#[test]
fn length_and_count_fields() {
    let bf = |what| WireError::BadField(what);
    let req = |len: u32| cat(&[&ROOT, &[0; 8], &len.to_be_bytes()]);
    for len in [0, MAX_BLOCK_LEN + 1] {
        for k in [kind::REQUEST, kind::CANCEL] {
            assert_eq!(
                decode_err(k, &req(len)),
                bf("request length not in 1..=MAX_BLOCK_LEN")
            );
        }
    }
    let hreq = |first: u32, count: u32| cat(&[&ROOT, &first.to_be_bytes(), &count.to_be_bytes()]);
    assert_eq!(
        decode_err(kind::HASH_REQUEST, &hreq(0, 0)),
        bf("hash count not in 1..=MAX_HASHES_PER_FRAME")
    );
    assert_eq!(
        decode_err(kind::HASH_REQUEST, &hreq(0, MAX_HASHES_PER_FRAME + 1)),
        bf("hash count not in 1..=MAX_HASHES_PER_FRAME")
    );
    assert_eq!(
        decode_err(kind::HASH_REQUEST, &hreq(u32::MAX, 2)),
        bf("hash range past the last piece index")
    );
    assert!(matches!(
        dec(&frame(kind::HASH_REQUEST, &hreq(u32::MAX, 1))),
        Ok(Decoded::Frame(..))
    ));
    let hashes = |n: usize| cat(&[&ROOT, &[0; 4], &vec![7; n]]);
    assert_eq!(
        decode_err(kind::HASHES, &hashes(33)),
        bf("hashes length not a multiple of 32")
    );
    // No hashes at all is a turn-down, not a malformed frame.
    assert!(matches!(
        dec(&frame(kind::HASHES, &hashes(0))),
        Ok(Decoded::Frame(Message::Hashes { hashes, .. }, _)) if hashes.is_empty()
    ));
    assert_eq!(
        decode_err(kind::FILE_COMMUNICATION, &cat(&[&ROOT, &[0; 8]])),
        bf("block data length not in 1..=MAX_BLOCK_LEN")
    );
    let over = cat(&[&ROOT, &[0; 8], &vec![0; MAX_BLOCK_LEN as usize + 1]]);
    assert_eq!(
        decode_err(kind::FILE_COMMUNICATION, &over),
        bf("block data length not in 1..=MAX_BLOCK_LEN")
    );
    let reason = "r".repeat(MAX_REASON_LEN + 1);
    let err = cat(&[
        &[1],
        &(reason.len() as u16).to_be_bytes(),
        reason.as_bytes(),
    ]);
    assert_eq!(
        decode_err(kind::ERROR, &err),
        bf("reason longer than MAX_REASON_LEN")
    );
}

#[test]
fn encoder_refuses_what_the_decoder_refuses() {
    let bf = |what| Err(WireError::BadField(what));
    let mut out = Vec::new();
    let scoped = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 1, 0, 3));
    let owners = |addr, info| {
        Message::TrackerToNode(TrackerToNode {
            name: "f",
            owners: vec![Owner {
                node_name: "n",
                addr,
                info,
                complete: true,
            }],
        })
    };
    assert_eq!(
        encode(&owners(scoped, info(1, MIN_PIECE_SIZE)), &mut out),
        bf("IPv6 flow info or scope id is not carried")
    );
    let v4: SocketAddr = "10.0.0.1:5".parse().unwrap();
    assert_eq!(
        encode(&owners(v4, info(1, 3)), &mut out),
        bf("piece size out of range")
    );
    let many = Message::TrackerToNode(TrackerToNode {
        name: "f",
        owners: vec![
            Owner {
                node_name: "n",
                addr: v4,
                info: info(1, MIN_PIECE_SIZE),
                complete: true
            };
            MAX_OWNERS_PER_REPLY + 1
        ],
    });
    assert_eq!(
        encode(&many, &mut out),
        bf("more than MAX_OWNERS_PER_REPLY owners")
    );
    let answer = |size, have| {
        Message::SizeInformation(SizeInformation::Answer {
            name: "f",
            info: info(size, MIN_PIECE_SIZE),
            have,
        })
    };
    assert_eq!(
        encode(&answer(1, &[]), &mut out),
        bf("bitfield length does not match piece count")
    );
    assert_eq!(
        encode(&answer(1, &[0x40]), &mut out),
        bf("bitfield spare bits not zero")
    );
    assert_eq!(
        encode(&answer(u64::MAX, &[]), &mut out),
        bf("size over i64::MAX")
    );
    let reason = "r".repeat(MAX_REASON_LEN + 1);
    assert_eq!(
        encode(
            &Message::Error {
                code: ErrorCode::Refused,
                reason: &reason
            },
            &mut out
        ),
        bf("reason longer than MAX_REASON_LEN")
    );
    let big = vec![0; DEFAULT_MAX_PAYLOAD];
    assert_eq!(
        encode(
            &Message::Hashes {
                root: ROOT,
                first: 0,
                hashes: &big
            },
            &mut out
        ),
        Err(WireError::TooLarge {
            len: DEFAULT_MAX_PAYLOAD + 36,
            max: DEFAULT_MAX_PAYLOAD
        })
    );
    assert!(out.is_empty());
}

// ---------------------------------------------------------------- hand-written frames

#[test]
fn hand_written_have_piece_frame() {
    #[rustfmt::skip]
    let bytes: &[u8] = &[
        0x53, 0x48, 0x01, 0x07, 0x00, 0x00, 0x00, 0x24, // "SH", v1, HavePiece, 36 bytes
        0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, // root (32 bytes)
        0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab,
        0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab,
        0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab,
        0x00, 0x00, 0x00, 0x05,                         // piece 5
        0x8b, 0x44, 0x82, 0x61,                         // CRC32
    ];
    let msg = Message::HavePiece {
        root: ROOT,
        piece: 5,
    };
    assert_eq!(dec(bytes), Ok(Decoded::Frame(msg.clone(), bytes.len())));
    assert_eq!(enc(&msg), bytes);
}

#[test]
fn hand_written_hello_and_keepalive_frames() {
    #[rustfmt::skip]
    let hello: &[u8] = &[
        0x53, 0x48, 0x01, 0x01, 0x00, 0x00, 0x00, 0x27, // "SH", v1, NodeToTracker, 39 bytes
        0x00,                                           // mode Hello
        0x03, b'a', b'n', b'n',                         // name "ann"
        0x30, 0x39,                                     // listen port 12345
        0x5e, 0x5e, 0x5e, 0x5e, 0x5e, 0x5e, 0x5e, 0x5e, // secret (32 bytes)
        0x5e, 0x5e, 0x5e, 0x5e, 0x5e, 0x5e, 0x5e, 0x5e,
        0x5e, 0x5e, 0x5e, 0x5e, 0x5e, 0x5e, 0x5e, 0x5e,
        0x5e, 0x5e, 0x5e, 0x5e, 0x5e, 0x5e, 0x5e, 0x5e,
        0x54, 0xb0, 0x0e, 0xa6,                         // CRC32
    ];
    let msg = Message::NodeToTracker(NodeToTracker::Hello {
        node_name: "ann",
        listen_port: 12345,
        secret: [0x5e; 32],
    });
    assert_eq!(enc(&msg), hello);
    let keepalive = [0x53, 0x48, 0x01, 0x0b, 0, 0, 0, 0, 0x75, 0xe3, 0xf2, 0xe6];
    assert_eq!(enc(&Message::KeepAlive), keepalive);
}

// ---------------------------------------------------------------- properties

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn leak_bytes(v: Vec<u8>) -> &'static [u8] {
    Box::leak(v.into_boxed_slice())
}

fn valid_name() -> impl Strategy<Value = &'static str> {
    "[^/\\\\]{1,40}"
        .prop_filter("valid name", |s| check_name(s).is_ok())
        .prop_map(leak)
}

fn any_name() -> impl Strategy<Value = &'static str> {
    prop_oneof![valid_name(), ".{0,300}".prop_map(leak)]
}

fn root() -> impl Strategy<Value = RootHash> {
    any::<[u8; 32]>()
}

fn file_info() -> impl Strategy<Value = FileInfo> {
    (
        MIN_PIECE_SIZE..=MAX_PIECE_SIZE,
        0..=u64::from(u32::MAX),
        root(),
    )
        .prop_flat_map(|(piece_size, pieces, root)| {
            let max = pieces * u64::from(piece_size);
            (0..=max).prop_map(move |size| FileInfo {
                size,
                piece_size,
                root,
            })
        })
}

fn small_file_info() -> impl Strategy<Value = FileInfo> {
    (MIN_PIECE_SIZE..=MAX_PIECE_SIZE, 0u64..3000, root()).prop_flat_map(
        |(piece_size, pieces, root)| {
            let max = pieces * u64::from(piece_size);
            (0..=max).prop_map(move |size| FileInfo {
                size,
                piece_size,
                root,
            })
        },
    )
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        any::<([u8; 4], u16)>().prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        any::<([u8; 16], u16)>().prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ]
}

fn block_request() -> impl Strategy<Value = BlockRequest> {
    (root(), any::<u32>(), any::<u32>(), 1..=MAX_BLOCK_LEN).prop_map(
        |(root, piece, offset, len)| BlockRequest {
            root,
            piece,
            offset,
            len,
        },
    )
}

fn valid_message() -> impl Strategy<Value = Message<'static>> {
    let owner = (valid_name(), addr(), file_info(), any::<bool>()).prop_map(
        |(node_name, addr, info, complete)| Owner {
            node_name,
            addr,
            info,
            complete,
        },
    );
    let answer = (valid_name(), small_file_info(), any::<u64>()).prop_map(|(name, info, seed)| {
        let mut have: Vec<u8> = (0..info.bitfield_len())
            .map(|i| (seed.rotate_left(i as u32) & 0xff) as u8)
            .collect();
        let used = info.piece_count() % 8;
        if let (Some(last), true) = (have.last_mut(), used != 0) {
            *last &= !(0xffu8 >> used);
        }
        Message::SizeInformation(SizeInformation::Answer {
            name,
            info,
            have: leak_bytes(have),
        })
    });
    prop_oneof![
        (valid_name(), any::<u16>(), any::<[u8; 32]>()).prop_map(
            |(node_name, listen_port, secret)| {
                Message::NodeToTracker(NodeToTracker::Hello {
                    node_name,
                    listen_port,
                    secret,
                })
            }
        ),
        (valid_name(), file_info(), any::<bool>()).prop_map(|(name, info, complete)| {
            Message::NodeToTracker(NodeToTracker::Have {
                name,
                info,
                complete,
            })
        }),
        valid_name().prop_map(|name| Message::NodeToTracker(NodeToTracker::Need { name })),
        valid_name().prop_map(|name| Message::NodeToTracker(NodeToTracker::Unneed { name })),
        (valid_name(), root())
            .prop_map(|(name, root)| Message::NodeToTracker(NodeToTracker::Drop { name, root })),
        Just(Message::NodeToTracker(NodeToTracker::Exit)),
        Just(Message::NodeToTracker(NodeToTracker::Synced)),
        (valid_name(), prop::collection::vec(owner, 0..20))
            .prop_map(|(name, owners)| Message::TrackerToNode(TrackerToNode { name, owners })),
        (valid_name(), prop::option::of(root())).prop_map(|(name, root)| {
            Message::SizeInformation(SizeInformation::Question { name, root })
        }),
        answer,
        (
            root(),
            any::<u32>(),
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 1..2000)
        )
            .prop_map(|(root, piece, offset, data)| {
                Message::FileCommunication(Block {
                    root,
                    piece,
                    offset,
                    data: leak_bytes(data),
                })
            }),
        block_request().prop_map(Message::Request),
        block_request().prop_map(Message::Cancel),
        (root(), any::<u32>()).prop_map(|(root, piece)| Message::HavePiece { root, piece }),
        (root(), any::<u32>(), 1..=MAX_HASHES_PER_FRAME)
            .prop_filter("in range", |(_, f, c)| u64::from(*f) + u64::from(*c)
                <= 1 << 32)
            .prop_map(|(root, first, count)| Message::HashRequest { root, first, count }),
        (root(), 0..u32::MAX - 64, 0usize..64).prop_map(|(root, first, n)| Message::Hashes {
            root,
            first,
            hashes: leak_bytes(vec![n as u8; n * 32]),
        }),
        (1u8..=5, ".{0,100}").prop_map(|(code, reason)| Message::Error {
            code: ErrorCode::from_u8(code).unwrap(),
            reason: leak(reason),
        }),
        Just(Message::KeepAlive),
    ]
}

/// Messages that may break rules: the encoder must refuse them cleanly.
fn maybe_invalid_message() -> impl Strategy<Value = Message<'static>> {
    let info = || {
        (any::<u64>(), any::<u32>(), root()).prop_map(|(size, piece_size, root)| FileInfo {
            size,
            piece_size,
            root,
        })
    };
    prop_oneof![
        valid_message(),
        (any_name(), info(), any::<bool>()).prop_map(|(name, info, complete)| {
            Message::NodeToTracker(NodeToTracker::Have {
                name,
                info,
                complete,
            })
        }),
        (
            any_name(),
            info(),
            prop::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(name, info, have)| Message::SizeInformation(
                SizeInformation::Answer {
                    name,
                    info,
                    have: leak_bytes(have),
                }
            )),
        (root(), any::<u32>(), any::<u32>(), 0..=MAX_BLOCK_LEN + 1).prop_map(
            |(root, piece, offset, len)| Message::Request(BlockRequest {
                root,
                piece,
                offset,
                len
            })
        ),
        (root(), any::<u32>(), any::<u32>())
            .prop_map(|(root, first, count)| Message::HashRequest { root, first, count }),
        (
            root(),
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..100)
        )
            .prop_map(|(root, first, h)| Message::Hashes {
                root,
                first,
                hashes: leak_bytes(h),
            }),
        (1u8..=5, ".{0,1100}").prop_map(|(code, reason)| Message::Error {
            code: ErrorCode::from_u8(code).unwrap(),
            reason: leak(reason),
        }),
    ]
}

proptest! {
    #[test]
    fn valid_messages_round_trip(msg in valid_message()) {
        let mut out = vec![0xee];
        let n = encode(&msg, &mut out).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(n, encoded_len(&msg));
        prop_assert_eq!(out.len(), n + 1);
        prop_assert_eq!(decode_frame(&out[1..], &Limits::default()), Ok(Decoded::Frame(msg, n)));
    }

    #[test]
    fn encode_accepts_only_what_round_trips(msg in maybe_invalid_message()) {
        let mut out = vec![0xee];
        match encode(&msg, &mut out) {
            Ok(n) => {
                prop_assert_eq!(n, encoded_len(&msg));
                prop_assert_eq!(decode_frame(&out[1..], &Limits::default()), Ok(Decoded::Frame(msg, n)));
            }
            Err(_) => prop_assert_eq!(out, vec![0xee]),
        }
    }

    #[test]
    fn random_splits_of_random_streams(
        msgs in prop::collection::vec(valid_message(), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut bytes = Vec::new();
        for m in &msgs {
            encode(m, &mut bytes).unwrap();
        }
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        at.push(0);
        at.push(bytes.len());
        at.sort_unstable();
        let chunks: Vec<&[u8]> = at.windows(2).map(|w| &bytes[w[0]..w[1]]).collect();
        let want: Vec<String> = msgs.iter().map(|m| format!("{m:?}")).collect();
        prop_assert_eq!(through_decoder(chunks), want);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut rest = &bytes[..];
        while let Ok(Decoded::Frame(_, n)) = decode_frame(rest, &Limits { max_payload: 1000 }) {
            prop_assert!(n <= rest.len());
            rest = &rest[n..];
        }
    }
}

/// Regression (found by the decode fuzzer): a bad magic split after its first byte
/// was reported with a 0 in place of the byte still to come.
#[test]
fn errors_do_not_depend_on_the_split() {
    let mut bytes = enc(&Message::KeepAlive);
    bytes.extend_from_slice(&[0x00, 0xf7, 1, 1, 0, 0, 0, 0]);
    let whole = {
        let mut d = Decoder::new(Limits::default());
        d.feed(&bytes);
        assert_eq!(d.next_frame(), Ok(Some(Message::KeepAlive)));
        d.next_frame().map(|_| ())
    };
    let mut d = Decoder::new(Limits::default());
    let mut last = Ok(());
    for b in &bytes {
        d.feed(std::slice::from_ref(b));
        match d.next_frame() {
            Ok(_) => {}
            Err(e) => {
                last = Err(e);
                break;
            }
        }
    }
    assert_eq!(whole, last);
    assert_eq!(last, Err(WireError::BadMagic([0x00, 0xf7])));
}
