//! Arbitrary bytes, split in arbitrary chunks, through `Decoder`: never panics, and
//! agrees frame by frame (and on where it stops, and why) with a one-shot loop of
//! `decode_frame` over the whole input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal::wire::{decode_frame, Decoded, Decoder, Limits, DEFAULT_MAX_PAYLOAD};

fuzz_target!(|data: &[u8]| {
    let [a, b, input @ ..] = data else { return };
    // Small limits reach TooLarge and a full decoder buffer; odd bytes keep the default.
    let limits = Limits {
        max_payload: if a & 1 == 1 {
            DEFAULT_MAX_PAYLOAD
        } else {
            usize::from(*a) * 2
        },
    };

    // Reference: one buffer holding everything.
    let mut want = Vec::new();
    let mut rest = input;
    loop {
        match decode_frame(rest, &limits) {
            Ok(Decoded::Frame(m, used)) => {
                assert!(used > 0 && used <= rest.len());
                want.push(format!("{m:?}"));
                rest = &rest[used..];
            }
            Ok(Decoded::NeedMore(n)) => {
                assert!(n > 0);
                break;
            }
            Err(e) => {
                want.push(format!("Err({e:?})"));
                break;
            }
        }
    }

    // The same bytes in chunks whose sizes come from `b` (a tiny LCG).
    let mut got = Vec::new();
    let mut d = Decoder::new(limits);
    let mut seed = u32::from(*b) | 1;
    let mut rest = input;
    'outer: while !rest.is_empty() {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let chunk = 1 + (seed >> 16) as usize % if b & 0x80 != 0 { 4 } else { 300 };
        let mut chunk = &rest[..chunk.min(rest.len())];
        rest = &rest[chunk.len()..];
        while !chunk.is_empty() {
            let took = d.feed(chunk);
            assert!(took <= chunk.len());
            chunk = &chunk[took..];
            let mut progressed = took > 0;
            loop {
                match d.next_frame() {
                    Ok(Some(m)) => {
                        got.push(format!("{m:?}"));
                        progressed = true;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        got.push(format!("Err({e:?})"));
                        break 'outer;
                    }
                }
            }
            // A full buffer always holds a whole frame, so this cannot stall.
            assert!(progressed, "decoder neither took bytes nor gave a frame");
        }
    }
    assert_eq!(got, want);
});
