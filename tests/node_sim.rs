//! Whole swarms below processes: real `node::machine::Node`s and the real `TrackerState`
//! on a simulated network (`sim`), in simulated time, deterministic by seed.

mod sim;

use std::time::Duration;

use proptest::prelude::*;
use shoal::node::rate::{BURST, MIN_BURST};
use sim::*;

#[test]
fn an_owner_and_a_downloader_end_with_identical_bytes() {
    let file = file_bytes((3 << 20) + 12_345, 1);
    let specs = vec![
        owner("alice", access(20.0, 100.0, 5), &file),
        downloader("bob", access(20.0, 100.0, 5)),
    ];
    let mut swarm = Swarm::new(access(100.0, 100.0, 1), specs);
    let done = swarm.run_until(Duration::from_secs(120), |s| {
        downloaded(s, 2, "f.bin") || failed(s, 2).is_some()
    });
    assert!(
        done,
        "no result within 120 simulated seconds: {:?}",
        swarm.net.said
    );
    assert_eq!(failed(&swarm, 2), None);
    let got = std::fs::read(swarm.node_dir(2).join("f.bin")).expect("bob's copy");
    assert!(got == file, "bob's copy differs from alice's file");
    assert_eq!(swarm.nodes[1].report().completed, 1);
    assert!(swarm.net.said[1][0].starts_with("sharing f.bin"));
}

#[test]
fn two_downloaders_of_one_slow_seed_fetch_from_each_other() {
    let file = file_bytes(8 << 20, 2);
    let specs = vec![
        owner("alice", access(10.0, 100.0, 5), &file),
        downloader("bob", access(10.0, 100.0, 5)),
        downloader("carol", access(10.0, 100.0, 5)),
    ];
    let mut swarm = Swarm::new(access(100.0, 100.0, 1), specs);
    let done = swarm.run_until(Duration::from_secs(120), |s| {
        (2..=3).all(|ep| downloaded(s, ep, "f.bin") || failed(s, ep).is_some())
    });
    assert!(
        done,
        "no result within 120 simulated seconds: {:?}",
        swarm.net.said
    );
    assert_same(&swarm, 2, &file);
    assert_same(&swarm, 3, &file);
    // Each partial owner served the other whole pieces the seed did not have to send twice.
    let piece = 256 << 10;
    assert!(
        swarm.net.sent[2] > piece,
        "bob sent {} bytes",
        swarm.net.sent[2]
    );
    assert!(
        swarm.net.sent[3] > piece,
        "carol sent {} bytes",
        swarm.net.sent[3]
    );
    assert!(
        swarm.net.sent[1] < 2 * file.len() as u64,
        "the seed sent {} bytes: everything twice",
        swarm.net.sent[1]
    );
    eprintln!(
        "seed 10 MiB/s, 8 MiB to two downloaders: bob {:.2} s, carol {:.2} s (F/R = 0.80 s); sent: seed {}, bob {}, carol {}",
        swarm.took(2).unwrap_or(f64::NAN),
        swarm.took(3).unwrap_or(f64::NAN),
        swarm.net.sent[1],
        swarm.net.sent[2],
        swarm.net.sent[3]
    );
}

#[test]
fn an_owner_sends_one_piece_after_another_not_two_at_once() {
    // Two replies sharing an uplink both arrive at twice the time one takes; one after the
    // other, the first arrives in half that, and its receiver can forward it that much
    // sooner. So when the first piece is whole at a downloader, the owner has sent little
    // more than that piece (the next one starts as its last bytes leave). Paced by
    // `--max-upload-rate` on a faster link, a block waiting for the one before it to
    // leave must not leave the owner waking to no end while the rate allows it.
    let file = file_bytes(1 << 20, 7);
    let piece = 256u64 << 10;
    for paced in [None, Some(8u64 << 20)] {
        let link = if paced.is_some() { 32.0 } else { 8.0 };
        let specs = vec![
            Spec {
                max_upload_rate: paced,
                ..owner("alice", access(link, 100.0, 1), &file)
            },
            downloader("bob", access(8.0, 100.0, 1)),
            downloader("carol", access(8.0, 100.0, 1)),
        ];
        let mut swarm = Swarm::new(access(100.0, 100.0, 1), specs);
        let pieces = (file.len() as u64 / piece) as u32;
        let first_whole = |s: &Swarm| {
            (2..=3).any(|ep| {
                let (missing, _) = s.nodes[ep - 1].download_demand();
                (missing > 0 && missing < pieces) || downloaded(s, ep, "f.bin")
            })
        };
        let got_one = swarm.run_until(Duration::from_secs(30), |s| {
            first_whole(s) || (2..=3).any(|ep| failed(s, ep).is_some())
        });
        assert!(
            got_one,
            "{paced:?}: no piece within 30 s: {:?}",
            swarm.net.said
        );
        let owner_sent = swarm.net.sent[1];
        assert!(
            paced.is_some() || owner_sent < piece + piece / 2,
            "{paced:?}: the owner had sent {owner_sent} bytes when the first {piece}-byte piece was whole"
        );
        let done = swarm.run_until(Duration::from_secs(60), |s| {
            (2..=3).all(|ep| downloaded(s, ep, "f.bin") || failed(s, ep).is_some())
        });
        assert!(
            done,
            "{paced:?}: no result within 60 s: {:?}",
            swarm.net.said
        );
        assert_same(&swarm, 2, &file);
        assert_same(&swarm, 3, &file);
    }
}

#[test]
fn a_downloader_on_a_slow_link_does_not_hold_the_owner_back_from_a_fast_one() {
    // A block to the slow one takes half a second to drain; the block after it, to the
    // fast one, waits for it only as long as the owner's own uplink would take.
    let file = file_bytes(2 << 20, 9);
    let specs = vec![
        owner("alice", access(8.0, 100.0, 5), &file),
        downloader("slow", access(8.0, 0.5, 5)),
        downloader("fast", access(8.0, 100.0, 5)),
    ];
    let mut swarm = Swarm::new(access(100.0, 100.0, 1), specs);
    let done = swarm.run_until(Duration::from_secs(60), |s| {
        downloaded(s, 3, "f.bin") || failed(s, 3).is_some()
    });
    assert!(done, "no result within 60 s: {:?}", swarm.net.said);
    assert_same(&swarm, 3, &file);
    let took = swarm.took(3).expect("a completion time");
    // F/R is 0.25 s; the slow one alone would take 4 s to take the file in.
    assert!(took < 1.0, "the fast downloader took {took:.2} s");
}

#[test]
fn a_crowd_asking_the_owner_for_hashes_is_sent_to_those_it_answered_first() {
    // 1 MiB in 16 KiB pieces: 2 KiB of hashes each, and the owner answers first asks up to
    // 16 KiB (a 64th of the file) a second: 8 downloaders; the other 16 take the hashes
    // from those, and every copy is whole.
    let file = file_bytes(1 << 20, 8);
    let mut specs = vec![Spec {
        piece_size: 16 << 10,
        ..owner("alice", access(8.0, 32.0, 5), &file)
    }];
    let names = [
        "d01", "d02", "d03", "d04", "d05", "d06", "d07", "d08", "d09", "d10", "d11", "d12", "d13",
        "d14", "d15", "d16", "d17", "d18", "d19", "d20", "d21", "d22", "d23", "d24",
    ];
    specs.extend(names.iter().map(|&n| downloader(n, access(8.0, 32.0, 5))));
    let mut swarm = Swarm::new(access(100.0, 100.0, 1), specs);
    let eps = 2..=names.len() + 1;
    let done = swarm.run_until(Duration::from_secs(120), |s| {
        eps.clone()
            .all(|ep| downloaded(s, ep, "f.bin") || failed(s, ep).is_some())
    });
    assert!(done, "no result within 120 s: {:?}", swarm.net.said);
    for ep in eps {
        assert_same(&swarm, ep, &file);
    }
    let turned_down = swarm.nodes[0].hash_requests_turned_down();
    assert!(
        turned_down >= 16,
        "the owner turned down {turned_down} first hash requests of 24"
    );
}

#[test]
fn an_owner_that_vanishes_mid_download_leaves_the_rest_to_the_other() {
    let file = file_bytes((6 << 20) + 777, 3);
    let specs = vec![
        owner("alice", access(10.0, 100.0, 5), &file),
        owner("dave", access(10.0, 100.0, 20), &file),
        downloader("bob", access(10.0, 100.0, 5)),
    ];
    let mut swarm = Swarm::new(access(100.0, 100.0, 1), specs);
    let third = file.len() as u64 / 3;
    let cut = swarm.run_until(Duration::from_secs(60), |s| s.net.sent[1] > third);
    assert!(
        cut,
        "alice never sent a third of the file: {:?}",
        swarm.net.said
    );
    swarm.kill(1);
    let done = swarm.run_until(Duration::from_secs(120), |s| {
        downloaded(s, 3, "f.bin") || failed(s, 3).is_some()
    });
    assert!(
        done,
        "no result within 120 simulated seconds: {:?}",
        swarm.net.said
    );
    assert_same(&swarm, 3, &file);
    assert!(
        swarm.net.sent[2] > third,
        "dave sent {} bytes",
        swarm.net.sent[2]
    );
}

#[test]
fn completion_time_follows_file_size_over_the_owners_upload_rates() {
    let file = file_bytes(16 << 20, 4);
    let names = ["o1", "o2", "o3", "o4"];
    let rate = 8.0;
    for owners in [1usize, 2, 4] {
        let mut specs: Vec<Spec> = names[..owners]
            .iter()
            .map(|&name| owner(name, access(rate, 100.0, 10), &file))
            .collect();
        specs.push(downloader("dl", access(10.0, 400.0, 10)));
        let mut swarm = Swarm::new(access(100.0, 100.0, 1), specs);
        let ep = owners + 1;
        let done = swarm.run_until(Duration::from_secs(300), |s| {
            downloaded(s, ep, "f.bin") || failed(s, ep).is_some()
        });
        assert!(done, "{owners} owners: no result: {:?}", swarm.net.said);
        assert_same(&swarm, ep, &file);
        let took = swarm.took(ep).expect("a completion time");
        let ideal = file.len() as f64 / (owners as f64 * rate * f64::from(1 << 20));
        eprintln!(
            "{owners} owner(s) at {rate} MiB/s up, 16 MiB: {took:.3} s simulated, F/(N*R) = {ideal:.3} s, ratio {:.2}",
            took / ideal
        );
        // No faster than the links allow; every owner's uplink pulls its weight.
        assert!(took >= ideal, "{took} s beats the links' {ideal} s");
        assert!(
            took < 2.0 * ideal + 1.0,
            "{owners} owners: {took:.3} s against an ideal of {ideal:.3} s"
        );
    }
}

#[test]
fn nodes_back_off_while_the_tracker_is_down_and_re_announce_when_it_returns() {
    let file = file_bytes((2 << 20) + 99, 5);
    let specs = vec![
        owner("alice", access(20.0, 100.0, 5), &file),
        downloader("bob", access(20.0, 100.0, 5)),
    ];
    let mut swarm = Swarm::new(access(100.0, 100.0, 1), specs);
    swarm.kill(0);
    let down_for = Duration::from_secs(8);
    swarm.run_until(down_for, |_| false);
    assert!(!downloaded(&swarm, 2, "f.bin"));
    swarm.command(1, Command::Status);
    let status = swarm.net.said[1].last().cloned().unwrap_or_default();
    assert!(
        status.contains("not connected to the tracker at 10.0.0.1:12340 (retrying)"),
        "{status}"
    );
    // Two nodes retrying with a doubling wait (0.5, 1, 2, 4 s...): a handful of tries each,
    // not a busy loop.
    let tries = swarm.net.connects_to[0];
    assert!(
        (4..=12).contains(&tries),
        "{tries} connects in {down_for:?}"
    );

    swarm.restart_tracker();
    let done = swarm.run_until(Duration::from_secs(60), |s| {
        downloaded(s, 2, "f.bin") || failed(s, 2).is_some()
    });
    assert!(
        done,
        "no result after the tracker returned: {:?}",
        swarm.net.said
    );
    assert_same(&swarm, 2, &file);
    // The restarted tracker learnt everything from the nodes' re-announcements: alice's file,
    // and bob's copy once he had it.
    let owners: Vec<String> = swarm
        .tracker
        .owners_of("f.bin")
        .into_iter()
        .map(|(name, ..)| name)
        .collect();
    assert!(owners.contains(&"alice".to_owned()), "{owners:?}");
    assert!(owners.contains(&"bob".to_owned()), "{owners:?}");
    swarm.command(1, Command::Status);
    let status = swarm.net.said[1].last().cloned().unwrap_or_default();
    assert!(status.contains("connected to the tracker at"), "{status}");
    assert!(!status.contains("not connected"), "{status}");
}

#[test]
fn an_upload_limit_paces_an_owner_below_what_its_link_could_send() {
    let file = file_bytes(4 << 20, 6);
    let limit = 2u64 << 20;
    let specs = vec![
        Spec {
            max_upload_rate: Some(limit),
            ..owner("alice", access(100.0, 100.0, 5), &file)
        },
        downloader("bob", access(100.0, 100.0, 5)),
    ];
    let mut swarm = Swarm::new(access(100.0, 100.0, 1), specs);
    let done = swarm.run_until(Duration::from_secs(120), |s| {
        downloaded(s, 2, "f.bin") || failed(s, 2).is_some()
    });
    assert!(done, "no result: {:?}", swarm.net.said);
    assert_same(&swarm, 2, &file);
    let took = swarm.took(2).expect("a completion time");
    let paced = file.len() as f64 / limit as f64;
    eprintln!("4 MiB from an owner limited to 2 MiB/s on a 100 MiB/s link: {took:.3} s simulated (F/limit = {paced:.1} s)");
    // Unpaced it would take 0.05 s. Paced, all but the bucket's burst (a twentieth of a
    // second) and the last block (sent into debt that is never repaid) wait for tokens.
    assert!(
        took >= 0.7 * paced,
        "{took:.3} s: faster than the limit allows"
    );
    assert!(
        took < paced * 1.5 + 1.0,
        "{took:.3} s: far slower than the limit"
    );
}

#[test]
fn paced_nodes_count_everything_they_send_against_their_rate() {
    // 8 MiB in 16 KiB pieces: 16 KiB of hashes an answer, 12 downloaders asking the one
    // owner and each other, the requests sent back (`Cancel`s) and every downloader's
    // `HavePiece`s to its watchers. Every node is capped at a quarter of its link or less.
    // Hash answers go out at once but are charged, so over any stretch after the first
    // asks (an answer window, 1 s) no node sends more than its cap allows plus the
    // bucket's burst and one block; over a stretch from earlier, the first asks' share
    // may add to it. Uncharged, the owner ran 298 KB ahead, and every node over 100 KB
    // ahead after the first second.
    let file = file_bytes(8 << 20, 9);
    let limit = 1u64 << 20;
    let paced = |spec: Spec| Spec {
        piece_size: 16 << 10,
        max_upload_rate: Some(limit),
        ..spec
    };
    let mut specs = vec![paced(owner("alice", access(64.0, 64.0, 5), &file))];
    let names = [
        "d01", "d02", "d03", "d04", "d05", "d06", "d07", "d08", "d09", "d10", "d11", "d12",
    ];
    specs.extend(
        names
            .iter()
            .map(|&n| paced(downloader(n, access(4.0, 64.0, 5)))),
    );
    let mut swarm = Swarm::new(access(100.0, 100.0, 1), specs);
    let eps = 2..=names.len() + 1;
    let over = |s: &Swarm| {
        eps.clone()
            .all(|ep| downloaded(s, ep, "f.bin") || failed(s, ep).is_some())
    };
    // The bucket's burst (a twentieth of a second, at least 64 KiB), one block and its
    // frame, what a 5 ms sample may miss at either end of a stretch, and a little for the
    // tracker and the `HavePiece`s sent along with a block.
    let step = Duration::from_millis(5);
    let burst = ((limit as f64 * BURST.as_secs_f64()) as u64).max(MIN_BURST);
    let sampling = (limit as f64 * step.as_secs_f64()) as u64;
    let steady_ahead = (burst + (16 << 10) + 64 + sampling + 4096) as i64;
    let first_asks = (file.len() as u64 / 64) as i64;
    let nodes = 1..=names.len() + 1;
    // Per node: how far it is ahead of its cap counted from the start, the least that was
    // (from the start, and from 1 s on), and the most it gained over any stretch since.
    let count = names.len() + 2;
    let (mut lowest, mut lowest_steady) = (vec![0i64; count], vec![i64::MAX; count]);
    let (mut worst_early, mut worst_steady) = (vec![0i64; count], vec![0i64; count]);
    // Bounded: 24,000 steps of 5 ms at most, 120 s of simulated time.
    for _ in 0..24_000 {
        if over(&swarm) {
            break;
        }
        swarm.run_until(step, over);
        let elapsed = swarm.elapsed();
        let allowed = (limit as f64 * elapsed.as_secs_f64()) as i64;
        for ep in nodes.clone() {
            let ahead = swarm.net.sent[ep] as i64 - allowed;
            worst_early[ep] = worst_early[ep].max(ahead - lowest[ep]);
            lowest[ep] = lowest[ep].min(ahead);
            if elapsed > Duration::from_secs(1) {
                lowest_steady[ep] = lowest_steady[ep].min(ahead);
                worst_steady[ep] = worst_steady[ep].max(ahead - lowest_steady[ep]);
            }
        }
    }
    assert!(
        over(&swarm),
        "no result after {:?}: {:?}",
        swarm.elapsed(),
        swarm.net.said
    );
    for ep in eps.clone() {
        assert_same(&swarm, ep, &file);
    }
    eprintln!("most sent beyond the cap over a stretch: any {worst_early:?}; from 1 s on {worst_steady:?}");
    for ep in nodes {
        assert!(
            worst_steady[ep] <= steady_ahead,
            "over a stretch after the first second node {ep} sent {} bytes more than 1 MiB/s allows (burst, a block and the sampling: {steady_ahead})",
            worst_steady[ep]
        );
        assert!(
            worst_early[ep] <= steady_ahead + first_asks,
            "over a stretch node {ep} sent {} bytes more than 1 MiB/s allows (burst, a block and the first asks' share: {})",
            worst_early[ep],
            steady_ahead + first_asks
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    /// Any swarm of honest owners, at any rates and latencies, with one of them perhaps
    /// vanishing part-way, delivers the file intact.
    #[test]
    fn any_swarm_of_honest_owners_delivers_the_file_intact(
        size in 1usize..(3 << 20),
        piece_shift in 16u32..21,
        owners in proptest::collection::vec((1u32..40, 1u64..60), 1..4),
        down in 5u32..200,
        vanish in proptest::option::of(0u64..100),
        seed in any::<u64>(),
    ) {
        let file = file_bytes(size, seed);
        let names = ["o1", "o2", "o3"];
        let mut specs: Vec<Spec> = owners
            .iter()
            .zip(names)
            .map(|(&(up, lat), name)| Spec {
                piece_size: 1 << piece_shift,
                ..owner(name, access(f64::from(up), 100.0, lat), &file)
            })
            .collect();
        specs.push(downloader("dl", access(10.0, f64::from(down), 5)));
        let ep = specs.len();
        let mut swarm = Swarm::new(access(100.0, 100.0, 1), specs);
        if let (Some(percent), true) = (vanish, owners.len() > 1) {
            // The first owner goes once it sent that share of the file.
            let share = size as u64 * percent / 100;
            swarm.run_until(Duration::from_secs(60), |s| s.net.sent[1] > share);
            swarm.kill(1);
        }
        let done = swarm.run_until(Duration::from_secs(300), |s| {
            downloaded(s, ep, "f.bin") || failed(s, ep).is_some()
        });
        prop_assert!(done, "no result: {:?}", swarm.net.said);
        prop_assert_eq!(failed(&swarm, ep), None);
        let got = std::fs::read(swarm.node_dir(ep).join("f.bin")).expect("a downloaded copy");
        prop_assert!(got == file, "the copy differs");
    }
}
