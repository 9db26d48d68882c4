//! Codec throughput: 1 MiB data frames (bytes/s) and small control frames (frames/s).
//!
//! `cargo bench --bench wire -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shoal::wire::*;

const ROOT: RootHash = [0x42; 32];
const BLOCK: usize = MAX_BLOCK_LEN as usize;

fn data_frames(c: &mut Criterion) {
    let data = vec![0x5au8; BLOCK];
    let mut g = c.benchmark_group("data_1MiB");
    g.throughput(Throughput::Bytes(BLOCK as u64));

    // Baseline in the same run: a bare 1 MiB copy into the reused buffer, what
    // any sender pays to get the bytes into place; the other figures are read
    // as a ratio to it.
    let mut out = Vec::with_capacity(BLOCK + 64);
    g.bench_function("memcpy_baseline", |b| {
        b.iter(|| {
            out.clear();
            out.extend_from_slice(black_box(&data));
            black_box(out.len())
        })
    });

    // The send path: header, a copy standing in for the pread that fills the
    // block, CRC; into a Vec reused across frames as the reactor's write buffer is.
    g.bench_function("encode_block_with", |b| {
        b.iter(|| {
            out.clear();
            encode_block_with::<()>(&mut out, &ROOT, 7, 0, BLOCK, |buf| {
                buf.copy_from_slice(&data);
                Ok(())
            })
            .unwrap();
            black_box(out.len())
        })
    });

    // Framing cost alone: what the send path adds on top of the disk read.
    g.bench_function("encode_block_with_no_fill", |b| {
        b.iter(|| {
            out.clear();
            encode_block_with::<()>(&mut out, &ROOT, 7, 0, BLOCK, |_| Ok(())).unwrap();
            black_box(out.len())
        })
    });

    let mut frame = Vec::new();
    encode_block_with::<()>(&mut frame, &ROOT, 7, 0, BLOCK, |buf| {
        buf.copy_from_slice(&data);
        Ok(())
    })
    .unwrap();
    let limits = Limits::default();
    g.bench_function("decode_frame", |b| {
        b.iter(|| match decode_frame(black_box(&frame), &limits) {
            Ok(Decoded::Frame(Message::FileCommunication(blk), n)) => {
                black_box((blk.data.len(), n))
            }
            _ => unreachable!(),
        })
    });
    g.finish();
}

fn control_frames(c: &mut Criterion) {
    const N: usize = 1000;
    let request = Message::Request(BlockRequest {
        root: ROOT,
        piece: 12,
        offset: 1 << 14,
        len: 1 << 14,
    });
    let have = Message::HavePiece {
        root: ROOT,
        piece: 12,
    };
    let limits = Limits::default();
    let mut g = c.benchmark_group("control");
    g.throughput(Throughput::Elements(N as u64));
    for (name, msg) in [("request", &request), ("have_piece", &have)] {
        // A batch of N frames into one reused buffer, as a busy connection's writes are.
        let mut out = Vec::with_capacity(N * encoded_len(msg));
        g.bench_function(format!("encode_{name}"), |b| {
            b.iter(|| {
                out.clear();
                for _ in 0..N {
                    encode(black_box(msg), &mut out).unwrap();
                }
                black_box(out.len())
            })
        });
        let mut stream = Vec::new();
        for _ in 0..N {
            encode(msg, &mut stream).unwrap();
        }
        g.bench_function(format!("decode_{name}"), |b| {
            b.iter(|| {
                let mut rest = black_box(&stream[..]);
                let mut n = 0;
                while let Ok(Decoded::Frame(m, used)) = decode_frame(rest, &limits) {
                    black_box(&m);
                    rest = &rest[used..];
                    n += 1;
                }
                assert_eq!(n, N);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, data_frames, control_frames);
criterion_main!(benches);
