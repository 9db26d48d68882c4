//! Writes the committed fuzz seed corpus: `cargo run --example fuzz_seeds` (from the repository root).
//!
//! `decode` seeds: two control bytes (odd first byte = default limits; second byte
//! picks chunk sizes) then one valid frame of each type. `roundtrip` seeds: a type
//! selector byte followed by filler the fuzzer mutates from.

use std::fs;
use std::path::Path;

use shoal::wire::*;

fn main() -> std::io::Result<()> {
    let root = [0x5a; 32];
    let info = FileInfo {
        size: 3 * u64::from(MIN_PIECE_SIZE) - 1,
        piece_size: MIN_PIECE_SIZE,
        root,
    };
    let owner = Owner {
        node_name: "ann",
        addr: "127.0.0.1:7000".parse().expect("literal address"),
        info,
        complete: true,
    };
    let samples = [
        Message::NodeToTracker(NodeToTracker::Hello {
            node_name: "ann",
            listen_port: 7000,
            secret: [0x5e; 32],
        }),
        Message::TrackerToNode(TrackerToNode {
            name: "f.bin",
            owners: vec![owner],
        }),
        Message::SizeInformation(SizeInformation::Answer {
            name: "f.bin",
            info,
            have: &[0b1010_0000],
        }),
        Message::FileCommunication(Block {
            root,
            piece: 1,
            offset: 0,
            data: b"some data",
        }),
        Message::Request(BlockRequest {
            root,
            piece: 1,
            offset: 0,
            len: MIN_PIECE_SIZE,
        }),
        Message::Cancel(BlockRequest {
            root,
            piece: 1,
            offset: 0,
            len: MIN_PIECE_SIZE,
        }),
        Message::HavePiece { root, piece: 2 },
        Message::HashRequest {
            root,
            first: 0,
            count: 3,
        },
        Message::Hashes {
            root,
            first: 0,
            hashes: &[1; 96],
        },
        Message::Error {
            code: ErrorCode::NotFound,
            reason: "no such file",
        },
        Message::KeepAlive,
    ];
    let dir = Path::new("fuzz/corpus/decode");
    fs::create_dir_all(dir)?;
    let mut all = vec![1, 0];
    for msg in &samples {
        let mut seed = vec![1, 0x80];
        encode(msg, &mut seed).map_err(std::io::Error::other)?;
        all.extend_from_slice(&seed[2..]);
        fs::write(dir.join(format!("seed-{:02}", msg.type_code())), seed)?;
    }
    fs::write(dir.join("seed-stream"), all)?;
    let dir = Path::new("fuzz/corpus/roundtrip");
    fs::create_dir_all(dir)?;
    for k in 0..kind::LAST {
        let mut seed = vec![k];
        seed.extend((0u8..96).map(|i| i.wrapping_mul(37) ^ k));
        fs::write(dir.join(format!("seed-{:02}", k + 1)), seed)?;
    }
    Ok(())
}
